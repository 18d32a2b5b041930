"""Batches to time a step on: one of the configured data with the assets a training run fits, or
a synthetic one that needs no dataset or tokenizer."""
from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import numpy as np

from omni.data import pipeline
from omni.data.records import open_split
from omni.run.assets import load_or_fit_assets
from omni.run.setup import batch_spec


def real_batch(config, setup):
    """One batch of the configured data (the embedded default set unless data.path is given),
    encoded with the assets training would use: the BPE tokenizer and every modality's fitted
    asset (e.g. the smell SVD basis), fitted here exactly as a run fits them, in a scratch workdir."""
    source = open_split(pipeline.resolve_data_dir(config), "train")
    with tempfile.TemporaryDirectory(prefix="omni-bench-") as workdir:
        assets, _ = load_or_fit_assets(config, Path(workdir), None, source)
    local, _ = next(pipeline.training_batches(source, config, assets))
    shardings = setup.batch_shardings()
    batch = {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in local.items()}
    return batch, source, assets


def synthetic_batch(config, setup):
    """Random token ids and pixels, every modality present: no dataset or tokenizer needed."""
    rng = np.random.default_rng(0)
    shardings = setup.batch_shardings()
    batch = {}
    for key, (shape, dtype) in batch_spec(config).items():
        if dtype == np.bool_:
            value = np.ones(shape, np.bool_)
        elif key == "text/ids":
            value = rng.integers(4, config.modalities.text.vocab_size, shape).astype(dtype)
        else:
            value = rng.integers(0, 256, shape).astype(dtype)
        batch[key] = jax.make_array_from_process_local_data(shardings[key], value)
    return batch
