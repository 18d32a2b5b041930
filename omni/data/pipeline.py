"""From records to static-shape numpy batches, deterministically.

A training batch is one sub-batch per modality set of the mixture (omni.data.mixture):
{set name: {"<modality>/<array>": ..., "<modality>/present": ..., "example_id": ...}}, each with
only its own modalities' arrays. Each set has its own order, a pure function of (seed, position)
(omni.data.order: record perm_e[k mod n] of that set's records, on the set's own seed stream).
Sub-batch s of step t holds its set's positions [t*R_s, (t+1)*R_s); process p of P takes its
contiguous 1/P of them. So resuming at step t replays exactly what an uninterrupted run would read,
whatever the number of processes, and a checkpoint needs only the step. `example_id` names the
example (its set and position) so that its random masks do not depend on which rows it shares a
batch with.

grain runs the per-batch work (read, decode, tokenize, resize) on threads and prefetches ahead. A
missing or undecodable field becomes all-zero with presence off (skip and count, or raise, per
config.data.on_error). Evaluation batches stay flat: every asked-for modality, with presence bits.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from omni.data import mixture
from omni.data.default import ensure_default_dataset
from omni.data.order import SubsetOrder
from omni.data.records import open_split
from omni.errors import DataError
from omni.modalities import registry


def resolve_data_dir(config) -> Path:
    return Path(config.data.path) if config.data.path else ensure_default_dataset()


class ExampleEncoder:
    """One record -> the arrays of every configured modality (or of those asked for) + presence
    bits, and a list of problems (path and reason) for the fields that had to be skipped."""

    def __init__(self, config, assets: dict, train: bool, modalities=None):
        """modalities: the ones to decode (default: every configured one); others are left out
        of the arrays, so evaluating image<->text does not decode audio or video."""
        self.config = config
        self.assets = assets
        self.train = train
        self.names = list(modalities) if modalities is not None else list(config.modalities.keys())

    def __call__(self, record: dict, position: int, stream: int = 0) -> tuple[dict, list[str]]:
        """stream: the seed stream of the record's modality set (its dropout draw's seed)."""
        arrays, problems, present = {}, [], {}
        for name in self.names:
            modality = registry.get(name)
            value = record.get(name)
            present[name] = value not in (None, "", b"")
            if present[name]:
                try:
                    arrays.update(modality.encode(value, self.config, self.assets))
                except (ValueError, OSError) as e:
                    where = f"{record.get('source') or '?'} (id {record.get('id', '?')}), {name}"
                    if self.config.data.on_error == "raise":
                        raise DataError(f"{where}: {e}") from None
                    problems.append(f"{where}: {e}")
                    present[name] = False
            if not present[name]:
                arrays.update(modality.empty(self.config))
        if self.train:
            present = self._modality_dropout(present, position, stream)
        for name in self.names:
            if not present[name]:
                arrays.update(registry.get(name).empty(self.config))
            arrays[f"{name}/present"] = np.bool_(present[name])
        return arrays, problems

    def _modality_dropout(self, present, position, stream):
        """With probability data.modality_dropout, a multimodal example keeps one modality only,
        so the unimodal masked objectives also see paired data (and the model learns to cope
        with a missing modality)."""
        kept = [n for n in self.names if present[n]]
        rng = np.random.default_rng((int(self.config.train.seed), 1, stream, position))
        if len(kept) >= 2 and rng.random() < float(self.config.data.modality_dropout):
            keep = kept[rng.integers(len(kept))]
            return {n: n == keep for n in self.names}
        return present


def stack(rows: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def example_id(stream: int, position: int) -> np.uint32:
    """A 32-bit name of the example at `position` of the set on seed stream `stream`."""
    return np.uint32((stream * 0x9E3779B1 + position) % 2 ** 32)


def mixture_of(config, source=None) -> mixture.Mixture:
    """The config's rows per modality set; an empty data.mixture takes the training split's own
    proportions (reading `source`, or the configured training split)."""
    if config.data.get("mixture"):  # rows or weights given: no need to read the data
        return mixture.resolve(config)
    source = source if source is not None else open_training_split(config)
    configured = list(config.modalities.keys())
    return mixture.resolve(config, mixture.set_counts(mixture.record_sets(source, configured), configured))


def slot_layout(config, resolved=None) -> list[tuple[tuple[str, ...], int, dict]]:
    """[(modalities, rows, {"text": its length})] of the configured mixture: the token slots a
    step computes (omni.flops.StepWork.slot_flops, token_slots_per_step)."""
    resolved = resolved or mixture_of(config)
    lengths = mixture.text_lengths(config, resolved)
    return [(sub.modalities, sub.rows, {"text": lengths[sub.modalities]} if sub.modalities in lengths else {})
            for sub in resolved.sub_batches]


def with_resolved_mixture(config, source=None):
    """The config with data.mixture written out as rows per set, so that config.json, a resumed
    run and every process use the same sub-batches even if the data's proportions change."""
    resolved = mixture_of(config, source)
    config = config.copy_and_resolve_references()
    config.data.mixture = resolved.spec()
    return config, resolved


def with_text_lengths(config, source, assets, sample: int = 1000, coverage: float = 99.0):
    """With data.text_lengths empty or "auto": the config with each sub-batch's text length
    measured on the data, the token count that covers `coverage`% of a sample of up to `sample`
    of its set's texts (evenly spaced: the same every time), rounded up to an even number (cuDNN's
    flash attention takes even lengths) and at most modalities.text.max_len. Needs the run's
    tokenizer (assets)."""
    if "text" not in config.modalities or str(config.data.get("text_lengths", "") or "auto") != "auto":
        return config
    configured = list(config.modalities.keys())
    masks = mixture.record_sets(source, configured)
    longest, lengths = int(config.modalities.text.max_len), []
    for sub in mixture_of(config, source).sub_batches:
        if "text" not in sub.modalities:
            continue
        indices = np.flatnonzero(masks == mixture.mask_of(sub.modalities, configured))
        spaced = np.linspace(0, len(indices) - 1, min(sample, len(indices))).astype(int)
        picked = indices[spaced] if len(indices) else []
        counts = [len(assets["tokenizer"].encode(source[int(i)]["text"])) for i in picked]
        needed = int(np.ceil(np.percentile(counts, coverage))) if counts else longest
        lengths.append(f"{sub.name}={min(longest, max(2, -(-needed // 2) * 2))}")
    config = config.copy_and_resolve_references()
    config.data.text_lengths = ",".join(lengths)
    return config


def training_batches(source, config, assets, start_step: int = 0):
    """Iterator over (local numpy batch {set: arrays}, problems) for steps start_step .. train.steps-1."""
    processes, process = jax.process_count(), jax.process_index()
    configured = list(config.modalities.keys())
    masks = mixture.record_sets(source, configured)
    resolved = mixture.resolve(config, mixture.set_counts(masks, configured))
    mixture.check_divides(resolved, 1, processes)
    lengths = mixture.text_lengths(config, resolved)
    group_size = int(config.data.get("group_size", 0))
    groups = source.groups() if group_size > 1 else None
    plans = []
    for sub in resolved.sub_batches:
        indices = np.flatnonzero(masks == mixture.mask_of(sub.modalities, configured))
        if len(indices) == 0:
            held = ", ".join(mixture.set_name(s) or "(none)" for s in mixture.set_counts(masks, configured))
            raise DataError(f"data.mixture gives {sub.rows} rows to {sub.name}, but the training split "
                            f"{source.path} holds no record of that set (it holds: {held})")
        stream = mixture.stream_of(sub.modalities)
        order = SubsetOrder(indices, int(config.train.seed), stream, groups, group_size)
        encoder = ExampleEncoder(mixture.sub_batch_config(config, sub, lengths), assets, train=True,
                                 modalities=sub.modalities)
        plans.append((sub, stream, order, encoder))

    def make_batch(step: int):
        batch, problems = {}, []
        for sub, stream, order, encode in plans:
            local = sub.rows // processes
            first = step * sub.rows + process * local
            rows = []
            for position in range(first, first + local):
                arrays, issues = encode(source[order[position]], position, stream)
                arrays["example_id"] = example_id(stream, position)
                rows.append(arrays)
                problems.extend(issues)
            batch[sub.name] = stack(rows)
        return batch, problems

    import grain  # imported here so that code which never reads data (bench, export) does not need it

    options = grain.ReadOptions(num_threads=int(config.data.num_threads),
                                prefetch_buffer_size=int(config.data.prefetch))
    dataset = grain.MapDataset.range(start_step, int(config.train.steps)).map(make_batch)
    return iter(dataset.to_iter_dataset(options))


def eval_batches(source, config, assets, batch_size: int, max_examples: int | None = None, modalities=None):
    """Fixed-shape batches over the first max_examples records in order; the last batch is padded
    with absent examples. Yields (batch, number of real rows, records of those rows). Only
    `modalities` (default: all configured) are decoded and present in the batch."""
    encode = ExampleEncoder(config, assets, train=False, modalities=modalities)
    count = len(source) if not max_examples else min(len(source), int(max_examples))
    for start in range(0, count, batch_size):
        records = [source[i] for i in range(start, min(start + batch_size, count))]
        rows = [encode(r, start + j)[0] for j, r in enumerate(records)]
        padding = {k: np.zeros_like(v) for k, v in rows[0].items()}
        rows += [padding] * (batch_size - len(rows))
        yield stack(rows), len(records), records


def corpus_lines(source, limit: int = 200_000):
    """The text of the training split, for training the BPE tokenizer."""
    for i in range(min(len(source), limit)):
        text = source[i].get("text")
        if text:
            yield text


def open_training_split(config):
    return open_split(resolve_data_dir(config), "train")
