"""The Beam pipeline of `omni data build`: work items -> array_record shards, streamed.

    Create(work items) | Reshuffle | FlatMap(build_item)

Each work item (a tar shard, a block of manifest lines) is read, checked sample by sample
(omni.data.samples: each modality's decode check) and written by one worker straight into its own
files, one per split (`<split>-<index>.array_record`), with its rejects beside them
(`rejects-<index>.jsonl`), the group ids of its records (`groups-<split>-<index>.npy`, joined into
the split's group index at the end) and a small summary (`done-<index>.json`, which the progress
line counts).
No record ever passes through a shuffle: memory stays at one sample per worker whatever the size
of the dataset, and on the DirectRunner, which holds every shuffled element in memory, that is
what keeps a large build within the machine. The index of the item fixes where its records go in
the split, so the output does not depend on the number of workers or the runner.

Why not TFDS's own Beam writer: it groups every serialized record by output shard
(`GroupByKey`), so the DirectRunner holds the whole dataset in memory. The files written here are
the same TFDS array_record dataset (records serialised by TFDS's serializer, its file names and
dataset_info.json), so `--config.data.path=DIR` and `tfds.builder_from_directory` read them.

Locally the DirectRunner runs `--workers` processes (multi_processing); `--beam-runner` and
`--beam-option KEY=VALUE` choose Flink, Spark, Dataflow or a portable runner instead (their
workers then need omni installed and DIR on a filesystem they share).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os


class _WithoutApitoolsWarning(logging.Filter):
    """Beam's BigQuery client module logs "apitools not found ..." on the root logger when it is
    imported without Beam's GCP extras. omni never uses BigQuery, so that one message is dropped;
    nothing else is."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("apitools not found")


logging.getLogger().addFilter(_WithoutApitoolsWarning())

from array_record.python.array_record_module import ArrayRecordWriter  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402

from omni.data import records, sources  # noqa: E402
from omni.data.parts import DIRECT, part_name  # noqa: E402
from omni.data.rejects import METRICS_NAMESPACE, BuildStopped  # noqa: E402
from omni.data.samples import KEPT, Options  # noqa: E402
from omni.modalities import stored  # noqa: E402

QUIET_LOGGERS = ("apache_beam.runners.common", "apache_beam.runners.portability.local_job_service",
                 "apache_beam.runners.worker.sdk_worker")


def pipeline_options(runner: str | None, workers: int, options: list[str]) -> PipelineOptions:
    """Beam options: the DirectRunner with `workers` processes, or the named runner; every
    `KEY=VALUE` of `options` is passed on as --KEY=VALUE."""
    # deferred (here and below): Apache Beam takes over a second to import, and every `omni`
    # command imports this module through the CLI; only a build needs Beam
    from apache_beam.options.pipeline_options import PipelineOptions

    flags = [f"--runner={runner or DIRECT}"]
    if (runner or DIRECT) in (DIRECT, "BundleBasedDirectRunner"):
        mode = "multi_processing" if workers > 1 else "in_memory"
        flags += [f"--direct_num_workers={workers}", f"--direct_running_mode={mode}",
                  # The workers' INFO lines would drown the progress line, and a bad sample under
                  # --on-error fail reaches the launcher as an exception: no worker traceback too.
                  "--default_sdk_harness_log_level=WARNING",
                  '--sdk_harness_log_level_overrides={"apache_beam.runners.common": "CRITICAL"}']
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise ValueError(f"--beam-option {option!r}: expected KEY=VALUE")
        flags.append(f"--{key.lstrip('-')}={value}")
    return PipelineOptions(flags)


def build_item(item: sources.WorkItem, scratch: str, options: Options, strict: bool):
    """One work item -> its split files, its rejects and its summary (yielded as well)."""
    from apache_beam.metrics import Metrics  # deferred: see pipeline_options

    def count(name: str, value: int = 1):
        Metrics.counter(METRICS_NAMESPACE, name).inc(value)

    encode = records.RecordEncoder()
    scratch = epath.Path(scratch)
    writers, counts, sizes, reasons, groups = {}, {}, {}, {}, {}
    dropped = rejected = 0
    rejects_path = scratch / part_name("rejects", item.index)
    try:
        with rejects_path.open("w") as rejects:
            for outcome in sources.read(item, options):
                dropped += outcome.dropped_fields
                for reject in outcome.rejects:
                    if strict and reject.stops_a_strict_build():
                        raise BuildStopped(dataclasses.replace(reject, detail=reject.detail.removesuffix(KEPT)))
                    rejects.write(reject.line() + "\n")
                    reasons[reject.reason] = reasons.get(reject.reason, 0) + 1
                    count(reject.reason)
                if outcome.record is None:
                    rejected += bool(outcome.rejects)
                    continue
                split = outcome.split
                if split not in writers:
                    writers[split] = ArrayRecordWriter(os.fspath(scratch / part_name("split", item.index, split)),
                                                       "group_size:1")
                record = outcome.record
                if options.preprocess is not None:  # decoded and resized once, here, not every epoch
                    record = stored.preprocess_record(record, options.preprocess)
                data = encode(record)
                writers[split].write(data)
                groups.setdefault(split, []).append(records.group_id(outcome.record.get("group", "")))
                counts[split] = counts.get(split, 0) + 1
                sizes[split] = sizes.get(split, 0) + len(data)
                count("samples")
    finally:
        for writer in writers.values():
            writer.close()
    count("rejected_samples", rejected)
    for split, ids in groups.items():  # this item's slice of the split's group index
        with (scratch / part_name("groups", item.index, split)).open("wb") as f:
            np.save(f, np.asarray(ids, np.int64))
    summary = {"index": item.index, "name": item.name(), "counts": counts, "bytes": sizes,
               "reasons": reasons, "rejected": rejected, "dropped_fields": dropped}
    done = scratch / part_name("done", item.index)
    partial = scratch / (done.name + ".partial")
    partial.write_text(json.dumps(summary))
    partial.rename(done)  # appears whole: the progress line reads it
    yield summary


def run(items: list[sources.WorkItem], scratch: str, options: Options, strict: bool,
        beam_options: PipelineOptions) -> dict[str, int]:
    """Run the pipeline over `items` into `scratch`; returns the Beam counters (reason -> count)
    as the runner reports them (empty where it reports none)."""
    import apache_beam as beam  # deferred: see pipeline_options

    pipeline = beam.Pipeline(options=beam_options)
    _ = (pipeline
         | "WorkItems" >> beam.Create(items)
         | "Spread" >> beam.Reshuffle()
         | "Build" >> beam.FlatMap(build_item, scratch, options, strict))
    # The runner logs a failing DoFn's traceback (its own, and the workers' it relays) before it
    # raises the error; the raised error is enough, and the CLI turns a bad sample into one line.
    quiet = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    try:
        found = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except (NotImplementedError, AttributeError):  # a runner without metrics
        return {}
    counters = {}
    for counter in found["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + int(value or 0)
    return counters
