"""model.token_capacity = 0 ("auto"): the share of a step's token slots that the encoder's
token-wise work runs on (omni.transformer.Transformer.run), measured on the run's own data.

A step's passes hold padding: text shorter than its sub-batch's length, the modality that
modality dropout switched off, frames a clip lacks. Which share of the slots is real varies from
batch to batch, and more so with fewer rows per batch shard (at base shapes and 4 rows, 0.64 to
0.96 of the slots; at tiny's 64 rows, 0.74 to 0.83: docs/performance.md). So the capacity is
measured: the largest real share of any batch shard in the run's first SAMPLE_BATCHES batches,
plus MARGIN. A later step whose real tokens do not fit runs every slot instead: the same result,
at the uncompacted cost.

Every process measures the same global batches (the data's order is a pure function of the
seed), so all of them compile the same capacity; the result is written into config.json, so a
resumed run keeps it.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omni import config as config_lib, objectives
from omni.data import pipeline
from omni.model import Omni

SAMPLE_BATCHES = 32
MARGIN = 0.02


def batch_shards(config) -> int:
    """How many pieces a batch's rows are split into on the configured mesh (data x fsdp)."""
    data, fsdp, _ = config_lib.resolve_mesh_shape(config, jax.device_count())
    return data * fsdp


def real_shares(config, batches, shards: int) -> np.ndarray:
    """[batches, shards]: the share of each batch shard's encoder token slots that hold valid
    tokens, over the passes the step runs. Only the stems' validity masks are
    computed (their tokens are dead code under jit), so zero parameters do."""
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Omni(config, nnx.Rngs(0))))
    params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)

    @jax.jit
    def shares(params, batch, rng):
        model = nnx.merge(graphdef, params)
        fused, single = objectives.step_passes(model, batch, rng, config)  # as the step runs them
        valid = jnp.concatenate([p.sequence[1].reshape(shards, -1) for p in fused + single], axis=1)
        return jnp.mean(valid, axis=1, dtype=jnp.float32)

    rng = jax.random.key(int(config.train.seed))
    return np.stack([np.asarray(shares(params, batch, jax.random.fold_in(rng, step)))
                     for step, batch in enumerate(batches)])


def with_token_capacity(config, source, assets):
    """With model.token_capacity = 0: the config with it measured on the first SAMPLE_BATCHES
    global training batches (`real_shares`), rounded up to a thousandth, at most 1."""
    if float(config.model.get("token_capacity", 1.0)) != 0:
        return config
    reader = pipeline.BatchReader(source, pipeline.batch_plans(source, config, assets), processes=1, process=0)
    steps = min(SAMPLE_BATCHES, int(config.train.steps))
    shares = real_shares(config, (reader(step)[0] for step in range(steps)), batch_shards(config))
    config = config.copy_and_resolve_references()
    config.model.token_capacity = min(1.0, math.ceil((float(shares.max()) + MARGIN) * 1000) / 1000)
    return config
