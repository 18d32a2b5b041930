"""Batches to time a step on: one of the configured data with the assets a training run fits, or
a synthetic one that needs no tokenizer. Both come as the sub-batches of the configured mixture."""
from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import numpy as np

from omni.data import pipeline
from omni.data.records import open_split
from omni.run.assets import load_or_fit_assets
from omni.run.capacity import with_token_capacity


def real_data(config):
    """The configured data (the embedded default set unless data.path is given) and the assets
    training would use: the BPE tokenizer and every modality's fitted asset (e.g. the smell SVD
    basis), fitted here exactly as a run fits them, in a scratch workdir; and the config with its
    mixture and text lengths resolved on them, as a run resolves them."""
    source = open_split(pipeline.resolve_data_dir(config), "train")
    config, _ = pipeline.with_resolved_mixture(config, source)
    with tempfile.TemporaryDirectory(prefix="omni-bench-") as workdir:
        assets, _ = load_or_fit_assets(config, Path(workdir), None, source)
    config = pipeline.with_text_lengths(config, source, assets)
    return with_token_capacity(config, source, assets), source, assets


def real_batch(config, setup, source, assets):
    """The first training batch of the data, on the setup's devices."""
    local, _ = next(pipeline.training_batches(source, config, assets))
    return jax.tree.map(jax.make_array_from_process_local_data, setup.batch_shardings(), local)


def synthetic_batch(config, setup):
    """Random token ids and pixels in the sub-batches of the configured mixture (the data's
    modality sets), every held modality present and every token real: no tokenizer needed."""
    rng = np.random.default_rng(0)
    batch = {}
    for sub, arrays in setup.batch_spec().items():
        batch[sub] = {}
        for key, (shape, dtype) in arrays.items():
            if dtype == np.bool_:
                value = np.ones(shape, np.bool_)
            elif key == "text/ids":
                value = rng.integers(4, config.modalities.text.vocab_size, shape).astype(dtype)
            elif key == "example_id":
                value = np.arange(shape[0], dtype=dtype)
            else:
                value = rng.integers(0, 256, shape).astype(dtype)
            batch[sub][key] = value
    return jax.tree.map(jax.make_array_from_process_local_data, setup.batch_shardings(), batch)
