"""Contrastive losses between two modalities' embeddings, plain and sharded.

  * SigLIP (Zhai et al. 2023): every (i, j) is its own binary pair-or-not decision.
  * InfoNCE (CLIP, Radford et al. 2021): a softmax over the batch, each way. The softmax weighs a
    negative by how close it already is, so the loss keeps pushing the hardest negatives apart
    (Wang & Liu 2021, "Understanding the behaviour of contrastive loss").

The logit scale is exp(t) with t clamped at log(100), as CLIP clamps it (`clamped_scale`).

On a batch sharded across devices each device all-gathers the other side's embeddings (small:
[batch, dim]) and scores its own rows against every column: its logits are b_local x b, so memory
for the O(batch^2) similarities still falls as 1/devices, and the program holds the same few
collectives on any number of devices (an all-gather of one side, a few sums; their transposes in
the backward). A ring of `ppermute` hops unrolled per device grew the program with the device
count; docs/performance.md ("Contrastive and matching losses on many devices") has the figures.
The sharded losses equal the plain loss on the gathered batch (tests/contrastive_worker.py).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from omni.parallel import batch_mesh_axes

MASKED = -1e9  # the logit of an invalid pair: finite, so that masked rows keep finite gradients
MAX_LOG_SCALE = math.log(100.0)  # CLIP's clamp: the logit scale exp(t) never exceeds 100


def clamped_scale(logit_scale):
    """exp(t) for t clamped at log(100) (CLIP, Radford et al. 2021, section 2.5): a larger scale
    makes the softmax/sigmoid so sharp that training turns unstable. Above the clamp the scale is
    exactly 100 and t gets no gradient."""
    return jnp.exp(jnp.minimum(logit_scale, MAX_LOG_SCALE))


def masked_mean(values, valid):
    """Mean of `values` over the valid rows; exactly 0 (zero gradient) when none is valid."""
    total = jnp.sum(jnp.where(valid, values, 0.0))
    return total / jnp.maximum(jnp.sum(valid), 1)


def _siglip_sum(za, zb, logit_scale, logit_bias, valid_a, valid_b, first=0):
    """sum of log sigmoid(label * logit) over the valid pairs of rows za against columns zb, where
    row i's positive is column first + i (label +1) and every other column a negative (-1)."""
    logits = clamped_scale(logit_scale) * (za @ zb.T) + logit_bias
    positive = jnp.arange(za.shape[0])[:, None] + first == jnp.arange(zb.shape[0])[None, :]
    pair_valid = valid_a[:, None] & valid_b[None, :]
    return jnp.sum(jnp.where(pair_valid, jax.nn.log_sigmoid(jnp.where(positive, logits, -logits)), 0.0))


def siglip_loss(za, zb, logit_scale, logit_bias, valid):
    """Sigmoid loss of Zhai et al. (2023), eq. 1:
    loss = -1/n * sum_ij log sigmoid(label_ij * (exp(t) za_i.zb_j + b)), label = +1 on the diagonal,
    -1 elsewhere, over rows and columns that are valid; n = number of valid rows."""
    total = _siglip_sum(za, zb, logit_scale, logit_bias, valid, valid)
    return -total / jnp.maximum(jnp.sum(valid), 1)


def _infonce_logits(za, zb, scale, valid_a, valid_b):
    """scale * za.zb^T, with MASKED where a row or a column is invalid."""
    return jnp.where(valid_a[:, None] & valid_b[None, :], scale * (za @ zb.T), MASKED)


def infonce_loss(za, zb, logit_scale, valid):
    """CLIP's symmetric softmax cross-entropy over valid rows/columns, averaged over both
    directions: 1/n sum_i [lse_j(s za_i.zb_j) + lse_j(s za_j.zb_i)] / 2 - s za_i.zb_i, s = exp(t)."""
    logits = _infonce_logits(za, zb, clamped_scale(logit_scale), valid, valid)
    diagonal = jnp.diagonal(logits)
    a_to_b = jax.nn.logsumexp(logits, axis=1) - diagonal
    b_to_a = jax.nn.logsumexp(logits, axis=0) - diagonal
    return masked_mean(0.5 * (a_to_b + b_to_a), valid)


def _on_batch_shards(local, axes, *args):
    """`local(axes, za, zb, valid, *scalars)` on each device's rows of the batch -> one replicated
    scalar."""
    rows, scalars = P(axes), (P(),) * (len(args) - 3)
    return jax.shard_map(lambda *a: local(axes, *a), in_specs=(rows, rows, rows, *scalars), out_specs=P(),
                         check_vma=False)(*args)


def _gather(axes, *xs):
    """Every device's rows of each x, in global order, and where this device's rows start."""
    gathered = [jax.lax.all_gather(x, axes, tiled=True) for x in xs]
    return gathered, jax.lax.axis_index(axes) * xs[0].shape[0]


def _siglip_local(axes, za, zb, valid, t, bias):
    (zb_all, valid_all), first = _gather(axes, zb, valid)
    total = jax.lax.psum(_siglip_sum(za, zb_all, t, bias, valid, valid_all, first), axes)
    return -total / jnp.maximum(jax.lax.psum(jnp.sum(valid), axes), 1)


def siglip_loss_sharded(za, zb, logit_scale, logit_bias, valid):
    """`siglip_loss` on a batch sharded over the mesh's batch axes: each device scores its own rows
    against every device's b-side embeddings (gathered); the sums meet in one psum."""
    axes = batch_mesh_axes()
    if not axes:
        return siglip_loss(za, zb, logit_scale, logit_bias, valid)
    return _on_batch_shards(_siglip_local, axes, za, zb, valid, logit_scale, logit_bias)


def _infonce_local(axes, za, zb, valid, t):
    (zb_all, valid_all), first = _gather(axes, zb, valid)
    logits = _infonce_logits(za, zb_all, clamped_scale(t), valid, valid_all)      # [b_local, b]
    rows = jnp.arange(za.shape[0])
    positive = logits[rows, first + rows]
    a_to_b = jax.nn.logsumexp(logits, axis=1) - positive
    # b -> a: a column's logsumexp runs over the rows of every device. Shift each column by its
    # max over all devices, sum exp over the local rows, and reduce-scatter the sums: each device
    # gets the full sums of its own columns (those of its own rows' positives).
    top = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(logits, axis=0)), axes)
    sums = jax.lax.psum_scatter(jnp.sum(jnp.exp(logits - top), axis=0), axes, tiled=True)
    b_to_a = jnp.log(sums) + jax.lax.dynamic_slice_in_dim(top, first, za.shape[0]) - positive
    total = jax.lax.psum(jnp.sum(jnp.where(valid, 0.5 * (a_to_b + b_to_a), 0.0)), axes)
    return total / jnp.maximum(jax.lax.psum(jnp.sum(valid), axes), 1)


def infonce_loss_sharded(za, zb, logit_scale, valid):
    """`infonce_loss` on a batch sharded over the mesh's batch axes: each device scores its a-rows
    against every b (gathered), which gives the a -> b terms of its rows; the b -> a terms' column
    sums come home with one reduce-scatter. Every similarity is computed once."""
    axes = batch_mesh_axes()
    if not axes:
        return infonce_loss(za, zb, logit_scale, valid)
    return _on_batch_shards(_infonce_local, axes, za, zb, valid, logit_scale)
