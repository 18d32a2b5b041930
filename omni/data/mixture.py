"""Batches by modality set: an example pays only for the modalities it holds.

A record's *modality set* is the configured modalities it holds ("text+image", "text" alone, ...).
A training step is a fixed list of sub-batches, one per set of the mixture, each with a static
number of rows and only its own modalities' arrays, so one compiled step serves the whole mixture
and no example carries the zeros of a modality it lacks (ImageBind's pairs, 4M's per-dataset
modalities).

`data.mixture` sets the rows of each set, as `SET=VALUE` entries joined by commas, a set being
modality names joined by `+` in any order, e.g. "image+text=16,audio+text=8,text=8":
  * integers that add up to train.batch_size are rows;
  * anything else is weights, turned into rows in multiples of `data.rows_multiple`;
  * empty (the default): the training split's own proportions, in multiples of data.rows_multiple.
Rows come in multiples so that every sub-batch divides over the batch shards of a mesh (up to
rows_multiple of them; 0 = auto, `rows_multiple`). A set of the data that gets no rows is counted and reported, never
silently dropped (`Mixture.unused`).

Each record's set comes from the index the build writes beside the records (omni.data.set_index);
without one, the records are read once and the caller is told so.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omni.errors import ConfigError, DataError

SEPARATOR = "+"
MODALITY_INDEX = "modalities-{split}.npz"  # beside dataset_info.json: each record's modalities


@dataclass(frozen=True)
class SubBatch:
    """One modality set of the step and its rows (global, over all processes)."""
    modalities: tuple[str, ...]  # in the config's order
    rows: int

    @property
    def name(self) -> str:
        return set_name(self.modalities)


@dataclass(frozen=True)
class Mixture:
    sub_batches: tuple[SubBatch, ...]
    unused: dict = field(default_factory=dict)  # set name -> records of the split it holds, no rows

    def spec(self) -> str:
        """The `data.mixture` value that gives exactly these rows."""
        return ",".join(f"{s.name}={s.rows}" for s in self.sub_batches)


def set_name(modalities) -> str:
    return SEPARATOR.join(modalities)


def canonical_set(text: str, configured: list[str], key: str = "data.mixture") -> tuple[str, ...]:
    """'image+text' -> ('text', 'image') in the config's order; ConfigError for a name that is
    not configured or appears twice."""
    names = [n.strip() for n in text.split(SEPARATOR)]
    unknown = [n for n in names if n not in configured]
    if unknown or not names or len(set(names)) != len(names):
        raise ConfigError(f"{key}: '{text}' is not a set of configured modalities joined by '{SEPARATOR}' "
                          f"(configured: {', '.join(configured)})")
    return tuple(n for n in configured if n in names)


def parse(text: str, configured: list[str]) -> dict[tuple[str, ...], float]:
    """'image+text=16,text=0.5' -> {('text', 'image'): 16.0, ('text',): 0.5}."""
    entries = {}
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        set_text, _, value = entry.partition("=")
        modalities = canonical_set(set_text, configured)
        try:
            amount = float(value)
        except ValueError:
            raise ConfigError(f"data.mixture: '{entry}' needs SET=ROWS or SET=WEIGHT, e.g. image+text=16") from None
        if amount < 0 or not np.isfinite(amount):
            raise ConfigError(f"data.mixture: '{entry}': rows or weights must be finite and >= 0")
        if modalities in entries:
            raise ConfigError(f"data.mixture: the set {set_name(modalities)} is given twice")
        entries[modalities] = amount
    return entries


def rows_from_weights(weights: dict, batch: int, multiple: int) -> dict:
    """Largest-remainder rounding of batch * weight / sum(weights) to multiples of `multiple`."""
    if batch % multiple:
        raise ConfigError(f"train.batch_size={batch} is not a multiple of data.rows_multiple={multiple}")
    total = sum(weights.values())
    if total <= 0:
        raise ConfigError("data.mixture: every weight is zero")
    units = batch // multiple
    exact = {s: units * w / total for s, w in weights.items()}
    given = {s: int(np.floor(x)) for s, x in exact.items()}
    by_remainder = sorted(exact, key=lambda s: (given[s] - exact[s], set_name(s)))
    for s in by_remainder[:units - sum(given.values())]:
        given[s] += 1
    return {s: u * multiple for s, u in given.items()}


SHARES = 16  # auto rows_multiple leaves at least this many multiples to share out between the sets


def rows_multiple(config) -> int:
    """data.rows_multiple, or with 0 (auto) the largest power of two that divides the batch and
    leaves at least SHARES multiples to share out (tiny's 64: 4; base's 256: 16; a test's 8: 1).
    Sixteen shares keep the default data's five sets within 4 points of its proportions at
    batch 64 (eight gave text 12.5% of the rows for its 19.5% of the records)."""
    given = int(config.data.get("rows_multiple", 0) or 0)
    if given:
        return given
    batch, multiple = int(config.train.batch_size), 1
    while batch % (multiple * 2) == 0 and batch // (multiple * 2) >= SHARES:
        multiple *= 2
    return multiple


def resolve(config, set_counts: dict | None = None) -> Mixture:
    """The mixture of `config`: rows per modality set. `set_counts` (set -> records of the training
    split) gives the default proportions and the report of unused sets; it is needed only when
    data.mixture is empty."""
    configured = list(config.modalities.keys())
    batch = int(config.train.batch_size)
    multiple = rows_multiple(config)
    text = str(config.data.get("mixture", "") or "")
    if text:
        entries = parse(text, configured)
        integral = all(float(v).is_integer() for v in entries.values())
        rows = ({s: int(v) for s, v in entries.items()} if integral and sum(entries.values()) == batch
                else rows_from_weights(entries, batch, multiple))
    elif set_counts:
        rows = rows_from_weights({s: c for s, c in set_counts.items() if s}, batch, multiple)
    else:
        raise ConfigError("data.mixture is empty and there are no training records to take proportions from")
    order = {s: i for i, s in enumerate(sorted(rows, key=lambda s: [configured.index(n) for n in s]))}
    sub_batches = tuple(SubBatch(s, r) for s, r in sorted(rows.items(), key=lambda kv: order[kv[0]]) if r > 0)
    unused = {set_name(s) or "(none)": c for s, c in (set_counts or {}).items()
              if c and (s not in rows or rows[s] == 0)}
    return Mixture(sub_batches, unused)


def text_lengths(config, resolved: Mixture) -> dict[tuple[str, ...], int]:
    """Text tokens per row of each sub-batch that holds text: `data.text_lengths` ("image+text=20,
    text=24"; omni.data.pipeline.with_text_lengths fills it from the data), modalities.text.max_len
    for a set it does not name. A caption set's own length saves the padding of the longest text
    every other set would pay for (the default data's audio captions hold 7 tokens on average,
    its prose 35).
    Under a mesh, every set's rows still split evenly: only the token axis differs."""
    if "text" not in config.modalities:
        return {}
    longest = int(config.modalities.text.max_len)
    given = str(config.data.get("text_lengths", "") or "")
    named = parse(given, list(config.modalities.keys())) if given not in ("", "auto") else {}
    for modalities, length in named.items():
        if not float(length).is_integer() or not 1 <= length <= longest:
            raise ConfigError(f"data.text_lengths: {set_name(modalities)}={length:g} must be a whole number "
                              f"from 1 to modalities.text.max_len={longest}")
    return {s.modalities: int(named.get(s.modalities, longest)) for s in resolved.sub_batches if "text" in s.modalities}


def sub_batch_config(config, sub: SubBatch, lengths: dict):
    """The config a sub-batch's rows are encoded and shaped with: its own text length."""
    if sub.modalities not in lengths or lengths[sub.modalities] == int(config.modalities.text.max_len):
        return config
    config = config.copy_and_resolve_references()
    config.modalities.text.max_len = lengths[sub.modalities]
    return config


def check_divides(mixture: Mixture, shards: int, processes: int) -> None:
    """Every sub-batch must split evenly over the batch shards and the processes."""
    for s in mixture.sub_batches:
        for count, what in ((shards, "batch shards (mesh.data*mesh.fsdp)"), (processes, "processes")):
            if s.rows % count:
                raise ConfigError(f"data.mixture: {s.name} has {s.rows} rows, not divisible by the {count} {what}; "
                                  f"give rows in multiples of {count} (data.mixture or data.rows_multiple)")


# ----------------------------------------------------------------------------------------------
# Which set each record holds
# ----------------------------------------------------------------------------------------------

def held(record: dict, names) -> tuple[str, ...]:
    """The modalities of `names` that a record holds (an empty field is absent)."""
    return tuple(n for n in names if record.get(n) not in (None, "", b""))


def record_sets(source, configured) -> np.ndarray:
    """Per record, a bit mask over `configured` of the modalities it holds (uint32)."""
    path = Path(source.path) / MODALITY_INDEX.format(split=source.split)
    if path.exists():
        with np.load(path) as index:
            masks, names = index["masks"], [str(n) for n in index["names"]]
        if len(masks) != len(source):
            raise DataError(f"{path}: {len(masks)} entries for {len(source)} records of split "
                            f"'{source.split}'; rebuild the dataset")
        out = np.zeros(len(masks), np.uint32)
        for bit, name in enumerate(configured):
            if name in names:
                out |= ((masks >> names.index(name)) & 1).astype(np.uint32) << bit
        return out
    print(f"{source.path}: no modality index for split '{source.split}'; reading the modalities of each "
          f"of its {len(source)} records", file=sys.stderr)
    return np.fromiter((sum(1 << i for i, n in enumerate(configured) if n in held(source[k], configured))
                        for k in range(len(source))), np.uint32)


def mask_of(modalities, configured) -> int:
    return sum(1 << configured.index(n) for n in modalities)


def set_counts(masks: np.ndarray, configured) -> dict[tuple[str, ...], int]:
    values, counts = np.unique(masks, return_counts=True)
    return {tuple(n for i, n in enumerate(configured) if int(v) >> i & 1): int(c) for v, c in zip(values, counts)}



def stream_of(modalities) -> int:
    """A stable 31-bit id of a set's name: the seed stream of that set's order."""
    return int.from_bytes(hashlib.blake2b(set_name(modalities).encode(), digest_size=4).digest(), "little") >> 1
