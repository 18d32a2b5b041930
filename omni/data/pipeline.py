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

grain runs the per-batch work (read, decode, tokenize, resize) ahead of the step: in data.workers
worker processes, each building whole batches (decoding scales with the host's cores, not one
GIL), or with data.workers 0 on threads of this process. Media that `omni data build
--preprocess-for` stored already decoded (omni.modalities.stored) are only read back. A
missing or undecodable field becomes all-zero with presence off (skip and count, or raise, per
config.data.on_error). Evaluation batches stay flat: every asked-for modality, with presence bits.
"""
from __future__ import annotations

import os
from pathlib import Path

import grain
import jax
from absl import flags as absl_flags
import numpy as np
import threadpoolctl

from omni import storage
from omni.data import mixture, set_index
from omni.data.default import ensure_default_dataset
from omni.data.order import SubsetOrder
from omni.data.records import open_split
from omni.errors import DataError
from omni.modalities import registry, stored


def resolve_data_dir(config):
    """config.data.path as a folder: a pathlib.Path when local, an epath.Path for `gs://...` or
    `s3://...` (omni.storage; records.open_split reads a copy of it in the local cache), the
    embedded default dataset when empty."""
    if not config.data.path:
        return ensure_default_dataset()
    return storage.path(config.data.path) if storage.is_remote(config.data.path) else Path(config.data.path)


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
                    arrays.update(stored.encode(modality, value, self.config, self.assets))
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
    return mixture.resolve(config, set_index.set_counts(set_index.records_of_sets(source, configured), configured))


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
    sets = set_index.records_of_sets(source, configured)
    longest, lengths = int(config.modalities.text.max_len), []
    for sub in mixture_of(config, source).sub_batches:
        if "text" not in sub.modalities:
            continue
        indices = sets.get(mixture.mask_of(sub.modalities, configured), np.zeros(0, np.int64))
        spaced = np.linspace(0, len(indices) - 1, min(sample, len(indices))).astype(int)
        picked = indices[spaced] if len(indices) else []
        counts = [len(assets["tokenizer"].encode(source[int(i)]["text"])) for i in picked]
        needed = int(np.ceil(np.percentile(counts, coverage))) if counts else longest
        lengths.append(f"{sub.name}={min(longest, max(2, -(-needed // 2) * 2))}")
    config = config.copy_and_resolve_references()
    config.data.text_lengths = ",".join(lengths)
    return config


class BatchReader:
    """Step -> (this process's batch {set: arrays}, problems). A plain object (no closure), so that
    grain can pickle it into worker processes, each of which then builds whole batches."""

    def __init__(self, source, plans, processes: int, process: int):
        self.source, self.plans = source, plans
        self.processes, self.process = processes, process

    def __call__(self, step: int):
        batch, problems = {}, []
        for sub, stream, order, encode in self.plans:
            local = sub.rows // self.processes
            first = step * sub.rows + self.process * local
            rows = []
            positions = range(first, first + local)
            for position, record in zip(positions, order.records(np.arange(first, first + local))):
                arrays, issues = encode(self.source[int(record)], position, stream)
                arrays["example_id"] = example_id(stream, position)
                rows.append(arrays)
                problems.extend(issues)
            batch[sub.name] = stack(rows)
        return batch, problems


def batch_plans(source, config, assets) -> list:
    """[(sub-batch, seed stream, order, encoder)] per set of the mixture."""
    configured = list(config.modalities.keys())
    sets = set_index.records_of_sets(source, configured)
    resolved = mixture.resolve(config, set_index.set_counts(sets, configured))
    mixture.check_divides(resolved, 1, jax.process_count())
    lengths = mixture.text_lengths(config, resolved)
    group_size = int(config.data.get("group_size", 0))
    groups = source.groups() if group_size > 1 else None
    plans = []
    for sub in resolved.sub_batches:
        indices = sets.get(mixture.mask_of(sub.modalities, configured), np.zeros(0, np.int64))
        if len(indices) == 0:
            held = ", ".join(mixture.set_name(s) or "(none)" for s in set_index.set_counts(sets, configured))
            raise DataError(f"data.mixture gives {sub.rows} rows to {sub.name}, but the training split "
                            f"{source.path} holds no record of that set (it holds: {held})")
        stream = mixture.stream_of(sub.modalities)
        order = SubsetOrder(indices, int(config.train.seed), stream, groups, group_size)
        encoder = ExampleEncoder(mixture.sub_batch_config(config, sub, lengths), assets, train=True,
                                 modalities=sub.modalities)
        plans.append((sub, stream, order, encoder))
    return plans


def decode_workers(config) -> int:
    """data.workers: worker processes that build batches (0: this process, on data.num_threads
    threads; -1: one per core of this host but one, which the step's own host work keeps)."""
    workers = int(config.data.get("workers", 0))
    return max(1, (os.cpu_count() or 2) - 1) if workers < 0 else workers


def one_blas_thread(worker_index: int, worker_count: int) -> None:
    """grain's worker init: numpy's BLAS on one thread. The workers are the parallelism; with
    OpenBLAS's default of a thread per core, each worker's small products (mel filterbanks, the
    smell basis) fought every other worker for the cores, and one worker built half the batches
    that one thread of the parent did (docs/data.md, "Host input")."""
    threadpoolctl.threadpool_limits(1)


def training_batches(source, config, assets, start_step: int = 0):
    """Iterator over (local numpy batch {set: arrays}, problems) for steps start_step .. train.steps-1,
    in step order whether one process builds them or data.workers processes do."""
    try:
        stored.check_spec(source.path, config)
    except ValueError as e:
        raise DataError(str(e)) from None
    reader = BatchReader(source, batch_plans(source, config, assets), jax.process_count(), jax.process_index())
    dataset = grain.MapDataset.range(start_step, int(config.train.steps)).map(reader)
    workers = decode_workers(config)
    if workers:
        # grain hands worker w the steps w, w + W, ... and reads their batches back in step order.
        # grain 0.2.18 reads an absl flag there that only an absl app has parsed (google/grain
        # #1355, fixed after that release); omni has no absl flags, so their defaults are theirs.
        if not absl_flags.FLAGS.is_parsed():
            absl_flags.FLAGS.mark_as_parsed()
        # Within a worker, one thread: the workers are the parallelism (grain's default of 16
        # threads per worker, each prefetching, only fought over the cores).
        in_worker = grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)
        options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=int(config.data.prefetch))
        return iter(dataset.to_iter_dataset(in_worker).mp_prefetch(options, worker_init_fn=one_blas_thread))
    options = grain.ReadOptions(num_threads=int(config.data.num_threads),
                                prefetch_buffer_size=int(config.data.prefetch))
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
