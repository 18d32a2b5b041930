"""`omni eval <task>`: load a run's newest checkpoint, evaluate it on a dataset split, write
WORKDIR/eval/<task>-<...>.json and return the result. Each takes `run`, an already loaded
load_run(workdir) tuple, so that tests can skip reloading."""
from __future__ import annotations

from pathlib import Path

import jax

from omni.data import pipeline
from omni.data.records import open_split
from omni.eval.paired import paired_compositional
from omni.eval.probe import linear_probe
from omni.eval.rerank import retrieval_with_rerank
from omni.eval.results import write_result
from omni.eval.retrieval import retrieval
from omni.eval.robustness import missing_modality
from omni.eval.zeroshot import DEFAULT_TEMPLATE, zeroshot
from omni.run.load import load_run


def _open(config, data, split):
    return open_split(data or pipeline.resolve_data_dir(config), split)


def cli_retrieval(workdir, data, split, query, target, max_examples=None, run=None, rerank=0) -> dict:
    """`omni eval retrieval --workdir DIR [--data DIR] [--split test] --query M --target M
    [--rerank K]`: writes WORKDIR/eval/retrieval-<split>-<query>-<target>[-rerankK].json, returns
    the result. With K > 0 the matching head re-orders each query's contrastive top K."""
    config, setup, params, assets, step = run or load_run(workdir)
    source = _open(config, data, split)
    with jax.set_mesh(setup.mesh):
        if rerank:
            result = retrieval_with_rerank(setup, params, source, config, assets, query, target, rerank,
                                           max_examples)
        else:
            result = retrieval(setup, params, source, config, assets, query, target, max_examples)
    suffix = f"-rerank{rerank}" if rerank else ""
    write_result(workdir, f"retrieval-{split}-{query}-{target}{suffix}", result, step=step)
    return result


def cli_linear_probe(workdir, data=None, modality="image", train_split="train", split="test",
                     max_examples=None, max_train=None, run=None) -> dict:
    """`omni eval linear_probe --workdir DIR [--data DIR] --modality M [--train-split train]
    [--split test]`: writes WORKDIR/eval/linear_probe-<split>-<modality>.json, returns the result."""
    config, setup, params, assets, step = run or load_run(workdir)
    train_source, test_source = _open(config, data, train_split), _open(config, data, split)
    with jax.set_mesh(setup.mesh):
        result = linear_probe(setup, params, train_source, test_source, config, assets, modality,
                              max_train, max_examples)
    write_result(workdir, f"linear_probe-{split}-{modality}", result, step)
    return result


def cli_paired(workdir, pairs, run=None) -> dict:
    """`omni eval paired --workdir DIR --pairs FILE`: writes WORKDIR/eval/paired-<file stem>.json."""
    config, setup, params, assets, step = run or load_run(workdir)
    with jax.set_mesh(setup.mesh):
        result = paired_compositional(setup, params, config, assets, pairs)
    write_result(workdir, f"paired-{Path(pairs).stem}", result, step)
    return result


def cli_robustness(workdir, data=None, split="test", modalities=None, template=None, fusion="early",
                   max_examples=None, run=None) -> dict:
    """`omni eval robustness --workdir DIR [--data DIR] [--split test] [--modalities image,text]
    [--template T ...] [--fusion early|late]`: writes WORKDIR/eval/robustness-<split>-<fusion>.json."""
    config, setup, params, assets, step = run or load_run(workdir)
    if isinstance(modalities, str):
        modalities = [m.strip() for m in modalities.split(",") if m.strip()]
    source = _open(config, data, split)
    with jax.set_mesh(setup.mesh):
        result = missing_modality(setup, params, source, config, assets, modalities or None,
                                  template or DEFAULT_TEMPLATE, fusion, max_examples)
    write_result(workdir, f"robustness-{split}-{fusion}", result, step)
    return result


def cli_zeroshot(workdir, data=None, split="test", modality="image", template=None, max_examples=None,
                 run=None) -> dict:
    """`omni eval zeroshot` with one or several --template: writes WORKDIR/eval/zeroshot-<split>-<modality>.json."""
    config, setup, params, assets, step = run or load_run(workdir)
    source = _open(config, data, split)
    with jax.set_mesh(setup.mesh):
        result = zeroshot(setup, params, source, config, assets, modality, template or DEFAULT_TEMPLATE,
                          max_examples)
    write_result(workdir, f"zeroshot-{split}-{modality}", result, step)
    return result
