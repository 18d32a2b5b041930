"""Evaluation during training: the tasks named in config.eval.tasks, run on config.eval.split
every train.eval_every steps, as flat `eval/<task>/...` metrics. The training loop does not import
this module; the CLI hands it a PeriodicEvaluator."""
from __future__ import annotations

import sys
from pathlib import Path

import jax

from omni.data.records import open_split, split_names
from omni.eval.paired import paired_compositional
from omni.eval.probe import linear_probe
from omni.eval.results import flatten
from omni.eval.retrieval import retrieval_during_training
from omni.eval.robustness import missing_modality
from omni.eval.zeroshot import DEFAULT_TEMPLATE, zeroshot

TASKS = ("retrieval", "zeroshot", "linear_probe", "paired", "robustness")


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def eval_tasks(config) -> list[str]:
    """config.eval.tasks ("retrieval,zeroshot,...", default "retrieval") -> checked task names.
    Call before training starts, so that a typo fails at once and not at the first evaluation."""
    section = config.get("eval") or {}
    raw = section.get("tasks", "retrieval") if hasattr(section, "get") else "retrieval"
    raw = ",".join(raw) if isinstance(raw, (list, tuple)) else str(raw or "")
    tasks = [t.strip() for t in raw.split(",") if t.strip()]
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"eval.tasks: unknown task '{task}' (known: {', '.join(TASKS)})")
    if "paired" in tasks:
        pairs = section.get("pairs", "")
        if not pairs:
            raise ValueError("eval.tasks names 'paired' but eval.pairs (a pairs .jsonl file) is empty")
        if not Path(pairs).is_file():
            raise ValueError(f"eval.pairs: {pairs} does not exist")
    return tasks


def _config_templates(config):
    raw = config.eval.get("templates", "") or ""
    return [t.strip() for t in raw.split("|") if t.strip()] or [DEFAULT_TEMPLATE]


def _split(setup, data_dir, split):
    """The split of data_dir (None if the dataset has none), opened once per Setup."""
    cache = setup.__dict__.setdefault("_eval_sources", {})
    key = (str(data_dir), split)
    if key not in cache:
        cache[key] = open_split(data_dir, split) if split in split_names(data_dir) else None
    return cache[key]


def periodic_evaluations(setup, params, config, assets, data_dir) -> dict[str, float]:
    """Run every task of config.eval.tasks on config.eval.split (linear_probe also reads `train`)
    and return flat metrics, e.g. eval/retrieval/image->text/R@1, eval/zeroshot/image/accuracy,
    eval/linear_probe/image/accuracy, eval/paired/group_score, eval/robustness/accuracy/all.
    A task the data cannot support (fewer than 2 labels, a missing split) is skipped with a note
    on stderr. Optional config keys: eval.templates ("tpl {}|tpl2 {}"), eval.pairs (file),
    eval.probe_train_examples (default 10 x eval.max_examples)."""
    tasks = eval_tasks(config)
    split = config.eval.split
    source = _split(setup, data_dir, split)
    max_examples = config.eval.max_examples
    names = list(config.modalities.keys())
    non_text = [n for n in names if n != "text"]
    templates = _config_templates(config)
    results: dict[str, float] = {}

    def attempt(label, fn):
        try:
            return fn()
        except ValueError as e:
            _log(f"eval {label}: skipped ({e})")
            return None

    for task in tasks:
        if task == "paired":
            result = attempt("paired", lambda: paired_compositional(setup, params, config, assets, config.eval.pairs))
            if result:
                results.update(flatten("eval/paired", result))
            continue
        if source is None:
            _log(f"eval {task}: skipped (no '{split}' split in {data_dir})")
            continue
        if task == "retrieval":
            results.update(retrieval_during_training(setup, params, source, config, assets))
        elif task == "zeroshot":
            for m in non_text:
                result = attempt(f"zeroshot/{m}", lambda: zeroshot(setup, params, source, config, assets, m,
                                                                   templates, max_examples))
                if result:
                    results.update(flatten(f"eval/zeroshot/{m}", result))
        elif task == "linear_probe":
            train_source = _split(setup, data_dir, "train")
            if train_source is None:
                _log(f"eval linear_probe: skipped (no 'train' split in {data_dir})")
                continue
            cap = config.eval.get("probe_train_examples", None) or (10 * max_examples if max_examples else None)
            for m in non_text:
                result = attempt(f"linear_probe/{m}", lambda: linear_probe(
                    setup, params, train_source, source, config, assets, m, cap, max_examples))
                if result:
                    results.update(flatten(f"eval/linear_probe/{m}", result))
        elif task == "robustness":
            result = attempt("robustness", lambda: missing_modality(setup, params, source, config, assets, None,
                                                                    templates, "early", max_examples))
            if result:
                results.update(flatten("eval/robustness", result))
    return results


class PeriodicEvaluator:
    """What the training loop is given to evaluate with (omni.train never imports omni.eval):
    `check(config)` before training, so that a typo in eval.tasks fails at once, and
    `evaluator(setup, params, config, assets, data_dir)` every train.eval_every steps."""

    def check(self, config) -> list[str]:
        """The checked task names of config.eval.tasks (raises ValueError on a bad one)."""
        return eval_tasks(config)

    def __call__(self, setup, params, config, assets, data_dir) -> dict[str, float]:
        """Flat eval/<task>/... metrics of params (see periodic_evaluations)."""
        return periodic_evaluations(setup, params, config, assets, data_dir)
