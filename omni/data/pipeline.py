"""From records to static-shape numpy batches, deterministically.

Training order is a pure function of (seed, position) (omni.data.order: record perm_e[k mod n] at
global position k, optionally in runs of one group). Batch s holds positions [s*B, (s+1)*B);
process p of P takes its contiguous 1/P of them. So resuming at step s replays exactly what an
uninterrupted run would read, and a checkpoint needs only the step.

grain runs the per-batch work (read, decode, tokenize, resize) on threads and prefetches ahead.
Every batch holds every configured modality at its fixed shape plus a `<name>/present` bit; a
missing or undecodable field becomes all-zero with presence off (skip and count, or raise, per
config.data.on_error).
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from omni.data.default import ensure_default_dataset
from omni.data.order import EpochOrder
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

    def __call__(self, record: dict, position: int) -> tuple[dict, list[str]]:
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
            present = self._modality_dropout(present, position)
        for name in self.names:
            if not present[name]:
                arrays.update(registry.get(name).empty(self.config))
            arrays[f"{name}/present"] = np.bool_(present[name])
        return arrays, problems

    def _modality_dropout(self, present, position):
        """With probability data.modality_dropout, a multimodal example keeps one modality only,
        so the unimodal masked objectives also see paired data (and the model learns to cope
        with a missing modality)."""
        kept = [n for n in self.names if present[n]]
        rng = np.random.default_rng((int(self.config.train.seed), 1, position))
        if len(kept) >= 2 and rng.random() < float(self.config.data.modality_dropout):
            keep = kept[rng.integers(len(kept))]
            return {n: n == keep for n in self.names}
        return present


def stack(rows: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def training_batches(source, config, assets, start_step: int = 0):
    """Iterator over (local numpy batch, problems) for steps start_step .. train.steps-1."""
    global_batch = int(config.train.batch_size)
    processes, process = jax.process_count(), jax.process_index()
    local = global_batch // processes
    group_size = int(config.data.get("group_size", 0))
    groups = source.groups() if group_size > 1 else None
    order = EpochOrder(len(source), int(config.train.seed), groups, group_size)
    encode = ExampleEncoder(config, assets, train=True)

    def make_batch(step: int):
        first = step * global_batch + process * local
        rows, problems = [], []
        for position in range(first, first + local):
            arrays, issues = encode(source[order[position]], position)
            rows.append(arrays)
            problems.extend(issues)
        return stack(rows), problems

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
