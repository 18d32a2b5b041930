"""`omni data build SOURCE... --out DIR`: a user's data -> the omni dataset format, through Beam.

The one build path for user data (the embedded default dataset keeps its own small writer in
omni.data.records). Sources are expanded into work items (omni.data.sources), the Beam pipeline
writes each item's records straight to array_record files (omni.data.beam_build), and this module
puts the files in their TFDS places in item order, writes dataset_info.json, gathers the rejects
into DIR/rejects.jsonl and returns the summary the CLI prints as one JSON line.

A rebuild into the same DIR replaces the dataset there only once the new one is complete.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback

import numpy as np
from etils import epath

from omni import storage
from omni.data import beam_build, records
from omni.data.parts import DIRECT, part_name
from omni.data.progress import Progress
from omni.data.rejects import BuildStopped, Reject
from omni.data.samples import EXTENSIONS, SPLIT_NAME, Options
from omni.data.sources import work_items
from omni.errors import ManifestError
from omni.modalities import registry, stored

PRINTED_REJECTS = 200  # rejects echoed on stderr; all of them are in DIR/rejects.jsonl


def _stopped(error: Exception) -> Reject | None:
    """The BuildStopped inside a runner's error, if that is what ended the pipeline."""
    if isinstance(error, BuildStopped):
        return error.reject
    return BuildStopped.find("".join(traceback.format_exception(error)))


def _place_shards(scratch: epath.Path, dataset: epath.Path, summaries: list[dict]) -> dict:
    """Move each item's split files, in item order, to their TFDS names; -> split -> (lengths, bytes)."""
    splits: dict[str, list[tuple[int, int, int]]] = {}
    for summary in summaries:
        for split, count in summary["counts"].items():
            splits.setdefault(split, []).append((summary["index"], count, summary["bytes"][split]))
    version_dir = epath.Path(dataset) / records.DATASET_NAME / "1.0.0"
    version_dir.mkdir(parents=True, exist_ok=True)
    for split, parts in splits.items():
        for position, (index, _, _) in enumerate(parts):
            source = scratch / part_name("split", index, split)
            source.rename(records.shard_path(version_dir, split, position, len(parts)))
        _join_group_index(scratch, version_dir, split, parts)
    return {split: ([count for _, count, _ in parts], sum(size for _, _, size in parts))
            for split, parts in splits.items()}


def _join_group_index(scratch: epath.Path, version_dir: epath.Path, split: str, parts) -> None:
    """The items' group ids, in item order, into the split's group index (a .npy file written as
    a stream, item by item: the build's memory does not grow with the dataset)."""
    total = sum(count for _, count, _ in parts)
    with (version_dir / records.GROUP_INDEX.format(split=split)).open("wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": np.dtype(np.int64).str, "fortran_order": False,
                                                   "shape": (total,)})
        for item, _, _ in parts:
            path = scratch / part_name("groups", item, split)
            with path.open("rb") as f:
                out.write(np.load(f).astype(np.int64).tobytes())
            path.unlink()


def _gather_rejects(scratch: epath.Path, summaries: list[dict], out: epath.Path, log) -> None:
    """Concatenate the items' rejects in item order into out/rejects.jsonl; echo the first ones."""
    printed = total = 0
    with (out / "rejects.jsonl").open("w") as gathered:
        for summary in summaries:
            part = scratch / part_name("rejects", summary["index"])
            with part.open("r") as lines:
                for line in lines:
                    gathered.write(line)
                    total += 1
                    if printed < PRINTED_REJECTS:
                        reject = Reject(**json.loads(line))
                        log(("skipped: " if not reject.kept else "") + reject.message())
                        printed += 1
    if total > printed:
        log(f"... {total - printed:,} more in {out / 'rejects.jsonl'}")


def _build_and_upload(sources, url: str, log, **options) -> dict:
    """--out gs://... or s3://...: array_record writes local files only, so the dataset is built
    in a local temporary folder (under $TMPDIR) and then copied up (records.upload_dataset: the
    old dataset_info.json goes first, the new one last). The Beam workers must therefore share
    this machine's filesystem (the DirectRunner's do). rejects.jsonl goes up even when the build
    fails, and error messages name the URL, not the temporary folder."""
    runner = options.get("beam_runner")
    if runner not in (None, DIRECT, "DirectRunner"):
        log(f"omni data build: --out {url}: the build runs into a local folder of this machine and is "
            f"copied up after; {runner}'s workers must be able to write there")
    local = tempfile.mkdtemp(prefix="omni-data-build-")
    try:
        try:
            summary = build(sources, local, log=log, **options)
        except Exception as e:
            rejects = os.path.join(local, "rejects.jsonl")
            if os.path.exists(rejects):
                try:
                    with open(rejects, "rb") as f:
                        (storage.path(url) / "rejects.jsonl").write_bytes(f.read())
                except Exception as upload:  # noqa: BLE001 - the build's own error matters more
                    log(f"omni data build: could not copy rejects.jsonl to {url}: {upload}")
            if isinstance(e, ManifestError):
                raise ManifestError(str(e).replace(local, url)) from None
            raise
        log(f"omni data build: copying the dataset to {url}")
        records.upload_dataset(local, url)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return {**summary, "out": url}


def build(sources, out_dir, *, workers: int | None = None, split: str | None = None,
          on_error: str = "skip", test_fraction: float = 0.1, beam_runner: str | None = None,
          beam_options=(), extensions: dict | None = None, progress_every: float = 5.0, log=None,
          preprocess_for=None) -> dict:
    """Build the dataset of `sources` (paths, globs, brace ranges) into out_dir; -> the summary.
    on_error: "skip" (reject bad samples, go on) or "fail" ("raise": its older name) to stop at
    the first bad sample with a ManifestError naming it. preprocess_for: a config whose media
    shapes the records store already decoded (omni.modalities.stored), or None for the files."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if storage.is_remote(out_dir):
        return _build_and_upload(sources, os.fspath(out_dir).rstrip("/"), log, workers=workers, split=split,
                                 on_error=on_error, test_fraction=test_fraction, beam_runner=beam_runner,
                                 beam_options=beam_options, extensions=extensions,
                                 progress_every=progress_every, preprocess_for=preprocess_for)
    if on_error not in ("skip", "fail", "raise"):
        raise ValueError(f"on_error must be skip or fail, got {on_error!r}")
    if split is not None and not SPLIT_NAME.fullmatch(split):
        raise ValueError(f"--split {split!r}: a split is a name (letters, digits and _, starting with a letter)")
    sources = [str(sources)] if isinstance(sources, (str, os.PathLike)) else [str(s) for s in sources]
    options = Options(test_fraction=test_fraction, split=split, extensions=dict(extensions or EXTENSIONS),
                      preprocess=preprocess_for)
    unknown = sorted({m for m in options.extensions.values() if m != "meta" and m not in registry.MODALITIES})
    if unknown:
        raise ValueError(f"extension map names unknown modality(ies) {', '.join(unknown)} "
                         f"(known: meta, {', '.join(registry.MODALITIES)})")
    items = work_items(sources)
    # More workers than work items would only start idle processes.
    workers = max(1, min(int(workers or os.cpu_count() or 1), len(items)))
    beam_flags = beam_build.pipeline_options(beam_runner, workers, list(beam_options))
    out = epath.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scratch = out / f".build-{os.getpid()}"
    if scratch.exists():
        scratch.rmtree()
    scratch.mkdir()
    started = time.monotonic()
    try:
        with Progress(scratch, len(items), progress_every, log):
            try:
                counters = beam_build.run(items, os.fspath(scratch), options, on_error != "skip", beam_flags)
            except Exception as e:  # noqa: BLE001 - a runner wraps the worker's error in its own
                reject = _stopped(e)
                if reject is None:
                    raise
                raise ManifestError(reject.message()) from None
        seconds = time.monotonic() - started
        summaries = [json.loads((scratch / part_name("done", item.index)).read_text()) for item in items]
        _gather_rejects(scratch, summaries, out, log)
        if not any(summary["counts"] for summary in summaries):
            raise ManifestError(f"{' '.join(sources)}: no usable records (see {out / 'rejects.jsonl'})")
        splits = _place_shards(scratch, scratch / "dataset", summaries)
        records.write_metadata(scratch / "dataset", splits)
        if preprocess_for is not None:
            stored.write_spec(scratch / "dataset" / records.DATASET_NAME / "1.0.0", preprocess_for)
        final = out / records.DATASET_NAME
        if final.exists():
            final.rmtree()
        (scratch / "dataset" / records.DATASET_NAME).rename(final)
    finally:
        if scratch.exists():
            scratch.rmtree()
    reasons: dict[str, int] = {}
    for summary in summaries:
        for reason, count in summary["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    samples = sum(sum(lengths) for lengths, _ in splits.values())
    rejected = sum(summary["rejected"] for summary in summaries)
    return {"out": os.fspath(out), "splits": {name: sum(lengths) for name, (lengths, _) in splits.items()},
            "samples": samples, "rejected": rejected, "skipped_lines": rejected,
            "dropped_fields": sum(summary["dropped_fields"] for summary in summaries),
            "rejects": dict(sorted(reasons.items())), "beam_counters": dict(sorted(counters.items())),
            "shards": len(items), "workers": workers, "runner": beam_runner or DIRECT,
            "seconds": round(seconds, 2), "samples_per_s": round(samples / max(seconds, 1e-9), 1)}
