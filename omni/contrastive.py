"""Contrastive losses between two modalities' embeddings, plain and sharded.

  * SigLIP (Zhai et al. 2023): every (i, j) is its own binary pair-or-not decision.
  * InfoNCE (CLIP, Radford et al. 2021): a softmax over the batch, each way. The softmax weighs a
    negative by how close it already is, so the loss keeps pushing the hardest negatives apart
    (Wang & Liu 2021, "Understanding the behaviour of contrastive loss").

On a batch sharded across devices neither loss gathers the global similarity matrix: each
device scores its own rows against the chunks of the other side that visit it around the device
ring (`ppermute`), so memory per device stays O(b_local^2) and the result equals the plain loss
on the gathered batch (tests/contrastive_worker.py checks both on an 8-device mesh).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from omni.parallel import batch_mesh_axes

MASKED = -1e9  # the logit of an invalid pair: finite, so that masked rows keep finite gradients


def masked_mean(values, valid):
    """Mean of `values` over the valid rows; exactly 0 (zero gradient) when none is valid."""
    total = jnp.sum(jnp.where(valid, values, 0.0))
    return total / jnp.maximum(jnp.sum(valid), 1)


def siglip_loss(za, zb, logit_scale, logit_bias, valid):
    """Sigmoid loss of Zhai et al. (2023), eq. 1:
    loss = -1/n * sum_ij log sigmoid(label_ij * (exp(t) za_i.zb_j + b)), label = +1 on the diagonal,
    -1 elsewhere, over rows and columns that are valid; n = number of valid rows."""
    total = _siglip_block_sum(za, zb, logit_scale, logit_bias, valid, valid, diagonal=True)
    return -total / jnp.maximum(jnp.sum(valid), 1)


def _infonce_logits(za, zb, scale, valid_a, valid_b):
    """scale * za.zb^T, with MASKED where a row or a column is invalid."""
    return jnp.where(valid_a[:, None] & valid_b[None, :], scale * (za @ zb.T), MASKED)


def infonce_loss(za, zb, logit_scale, valid):
    """CLIP's symmetric softmax cross-entropy over valid rows/columns, averaged over both
    directions: 1/n sum_i [lse_j(s za_i.zb_j) + lse_j(s za_j.zb_i)] / 2 - s za_i.zb_i, s = exp(t)."""
    logits = _infonce_logits(za, zb, jnp.exp(logit_scale), valid, valid)
    diagonal = jnp.diagonal(logits)
    a_to_b = jax.nn.logsumexp(logits, axis=1) - diagonal
    b_to_a = jax.nn.logsumexp(logits, axis=0) - diagonal
    return masked_mean(0.5 * (a_to_b + b_to_a), valid)


def _ring(axes):
    """Number of batch shards and the ring permutation that passes a chunk to the next shard."""
    mesh = jax.sharding.get_abstract_mesh()
    shards = 1
    for a in axes:
        shards *= mesh.shape[a]
    return shards, [(i, (i + 1) % shards) for i in range(shards)]


def _siglip_block_sum(za, zb, logit_scale, logit_bias, valid_a, valid_b, diagonal: bool):
    """sum of log sigmoid(label * logit) over valid pairs of one block of the similarity matrix."""
    logits = jnp.exp(logit_scale) * (za @ zb.T) + logit_bias
    labels = 2.0 * jnp.eye(za.shape[0]) - 1.0 if diagonal else -jnp.ones_like(logits)
    pair_valid = valid_a[:, None] & valid_b[None, :]
    return jnp.sum(jnp.where(pair_valid, jax.nn.log_sigmoid(labels * logits), 0.0))


def siglip_loss_chunked(za, zb, logit_scale, logit_bias, valid):
    """`siglip_loss` on a sharded batch (the SigLIP paper's chunked scheme): each device scores its
    own rows against its own columns (the positives), then passes its b-side chunk around the ring
    n-1 times and scores the negatives of each visiting chunk."""
    axes = batch_mesh_axes()
    if not axes:
        return siglip_loss(za, zb, logit_scale, logit_bias, valid)
    shards, ring = _ring(axes)

    def local(za, zb, valid_a, valid_b, t, b):
        total = _siglip_block_sum(za, zb, t, b, valid_a, valid_b, diagonal=True)
        for _ in range(shards - 1):
            zb, valid_b = jax.lax.ppermute((zb, valid_b), axes, ring)
            total += _siglip_block_sum(za, zb, t, b, valid_a, valid_b, diagonal=False)
        total = jax.lax.psum(total, axes)
        count = jax.lax.psum(jnp.sum(valid_a), axes)
        return -total / jnp.maximum(count, 1)

    rows = P(axes)
    return jax.shard_map(local, in_specs=(rows, rows, rows, rows, P(), P()), out_specs=P(),
                         check_vma=False)(za, zb, valid, valid, logit_scale, logit_bias)


def infonce_loss_chunked(za, zb, logit_scale, valid):
    """`infonce_loss` on a sharded batch. Each device keeps its a-rows and sends its b-chunk around
    the ring. A visiting block [local a x visiting b] adds to two running logsumexps: the local
    rows' (a -> b) and the visiting columns' (b -> a), which travels with its chunk. After n-1
    hops one more hop brings every column's logsumexp back to the device that owns it."""
    axes = batch_mesh_axes()
    if not axes:
        return infonce_loss(za, zb, logit_scale, valid)
    shards, ring = _ring(axes)

    def local(za, zb, valid_a, valid_b, t):
        scale = jnp.exp(t)
        own = _infonce_logits(za, zb, scale, valid_a, valid_b)
        diagonal = jnp.diagonal(own)
        rows_lse = jax.nn.logsumexp(own, axis=1)
        cols_lse = jax.nn.logsumexp(own, axis=0)
        for _ in range(shards - 1):
            zb, valid_b, cols_lse = jax.lax.ppermute((zb, valid_b, cols_lse), axes, ring)
            visiting = _infonce_logits(za, zb, scale, valid_a, valid_b)
            rows_lse = jnp.logaddexp(rows_lse, jax.nn.logsumexp(visiting, axis=1))
            cols_lse = jnp.logaddexp(cols_lse, jax.nn.logsumexp(visiting, axis=0))
        if shards > 1:
            cols_lse = jax.lax.ppermute(cols_lse, axes, ring)  # home again
        per_row = 0.5 * (rows_lse + cols_lse) - diagonal
        total = jax.lax.psum(jnp.sum(jnp.where(valid_a, per_row, 0.0)), axes)
        count = jax.lax.psum(jnp.sum(valid_a), axes)
        return total / jnp.maximum(count, 1)

    rows = P(axes)
    return jax.shard_map(local, in_specs=(rows, rows, rows, rows, P()), out_specs=P(),
                         check_vma=False)(za, zb, valid, valid, logit_scale)
