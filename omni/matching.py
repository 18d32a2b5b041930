"""Matching (FLAVA's image-text matching, for any pair of modalities) with hard negatives.

For a pair (a, b), the fused transformer sees the concatenation [CLS_a a-tokens, CLS_b b-tokens];
the final-normed hidden state of CLS_a goes through `itm_head` to one logit, "these belong
together". Positives are each example's own (a, b). Negatives are hard, mined as in ALBEF (Li et
al. 2021, section 3.2): for every a_i a b_j drawn with probability softmax_j(s_ij) over the
contrastive similarities s_ij = exp(t) za_i.zb_j, and for every b_i an a_j the same way. A
candidate whose content equals the positive's (j = i, or an identical caption) is never drawn.
The loss is binary cross-entropy over positives and negatives:
    L = (sum_pos softplus(-l) + sum_neg softplus(l)) / (n_pos + n_neg)
(softplus(-l) = -log sigmoid(l)). Rows where a or b is absent score nothing.

Sampling is the Gumbel-max trick, argmax_j (s_ij + g_ij), with g_ij drawn from a key folded with
the GLOBAL indices (i, j): the draw does not depend on how the batch is sharded. On a sharded
batch the candidates' embeddings and tokens travel around the device ring (shard_map + ppermute,
as the chunked SigLIP loss does); each device keeps, per local row, the best candidate so far and
its tokens. Per device that is one local x local score block and the local candidates' tokens
at a time, as for the chunked SigLIP loss: nothing grows with the global batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from omni.modalities.registry import itm_pairs
from omni.parallel import batch_mesh_axes


def content_fingerprint(batch: dict, name: str) -> jax.Array:
    """int32 [B]: a hash of each example's raw inputs of one modality, exact (integer arithmetic,
    wrapping), so identical contents always collide and different ones almost never do."""
    total = jnp.zeros(batch[f"{name}/present"].shape[0], jnp.uint32)
    prefix = f"{name}/"
    for key in sorted(k for k in batch if k.startswith(prefix) and k != f"{name}/present"):
        value = batch[key]
        bits = (jax.lax.bitcast_convert_type(value.astype(jnp.float32), jnp.uint32)
                if jnp.issubdtype(value.dtype, jnp.floating) else value.astype(jnp.uint32))
        flat = bits.reshape(bits.shape[0], -1)
        # An odd multiplier per position (a fixed LCG sequence) makes the sum position-sensitive.
        weights = (jnp.arange(flat.shape[1], dtype=jnp.uint32) * jnp.uint32(2654435761)) | jnp.uint32(1)
        total = total * jnp.uint32(31) + jnp.sum(flat * weights, axis=1, dtype=jnp.uint32)
    return jax.lax.bitcast_convert_type(total, jnp.int32)


def _gumbel_block(key, rows, cols):
    """g[r, c] ~ Gumbel(0, 1) from key folded with the global row and column indices."""
    def one(i, j):
        return jax.random.gumbel(jax.random.fold_in(jax.random.fold_in(key, i), j), ())
    return jax.vmap(lambda i: jax.vmap(lambda j: one(i, j))(cols))(rows)


def _block_scores(za, zb, scale, key, rows, cols, fp_rows, fp_cols, row_ok, col_ok):
    """s_ij + g_ij for one block, -inf where j may not be drawn for i."""
    scores = jax.lax.stop_gradient(scale * (za @ zb.T)) + _gumbel_block(key, rows, cols)
    allowed = row_ok[:, None] & col_ok[None, :] & (fp_rows[:, None] != fp_cols[None, :])
    return jnp.where(allowed, scores, -jnp.inf)


def _nothing_picked(za, tokens_b, valid_b):
    """The running best before any candidate: score -inf, index 0, empty tokens."""
    return (jnp.full(za.shape[0], -jnp.inf), jnp.zeros(za.shape[0], jnp.int32),
            jnp.zeros_like(tokens_b), jnp.zeros_like(valid_b))


def _pick(best, scores, tokens, valid):
    """Fold one block of candidates into the running best (score, index, tokens, token-valid)."""
    score, index, best_tokens, best_valid = best
    j = jnp.argmax(scores, axis=1)
    top = jnp.take_along_axis(scores, j[:, None], axis=1)[:, 0]
    better = top > score
    pick = lambda new, old: jnp.where(better.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)  # noqa: E731
    return (jnp.where(better, top, score), pick(j, index), pick(tokens[j], best_tokens), pick(valid[j], best_valid))


def sample_negatives(za, zb, scale, key, fp, row_ok, col_ok, tokens_b, valid_b, global_rows):
    """For every row i: the tokens of a b_j drawn ~ softmax_j(scale za_i.zb_j) among allowed j
    (col_ok[j], fp[j] != fp[i]). Returns (tokens [B, L, D], token-valid [B, L], found [B]: a
    candidate existed, chosen global index [B])."""
    init = _nothing_picked(za, tokens_b, valid_b)
    scores = _block_scores(za, zb, scale, key, global_rows, global_rows, fp, fp, row_ok, col_ok)
    score, index, tokens, valid = _pick(init, scores, tokens_b, valid_b)
    return tokens, valid, jnp.isfinite(score), global_rows[index]


def sample_negatives_sharded(za, zb, scale, key, fp, row_ok, col_ok, tokens_b, valid_b):
    """`sample_negatives` on a batch sharded over the mesh's batch axes: the candidates circle the
    ring; the draw equals the unsharded one (same Gumbel noise per global (i, j))."""
    axes = batch_mesh_axes()
    rows_global = jnp.arange(za.shape[0], dtype=jnp.int32)
    if not axes:
        return sample_negatives(za, zb, scale, key, fp, row_ok, col_ok, tokens_b, valid_b, rows_global)
    mesh = jax.sharding.get_abstract_mesh()
    shards = 1
    for a in axes:
        shards *= mesh.shape[a]
    ring = [(i, (i + 1) % shards) for i in range(shards)]

    def local(za, zb, fp_rows, row_ok, col_ok, tokens_b, valid_b, rows, scale, key):
        visiting = (zb, fp_rows, col_ok, tokens_b, valid_b, rows)
        best = _nothing_picked(za, tokens_b, valid_b)
        chosen = jnp.zeros(za.shape[0], jnp.int32)
        for step in range(shards):
            if step:
                visiting = jax.lax.ppermute(visiting, axes, ring)
            zb_c, fp_c, ok_c, tokens_c, valid_c, rows_c = visiting
            scores = _block_scores(za, zb_c, scale, key, rows, rows_c, fp_rows, fp_c, row_ok, ok_c)
            before = best[0]
            best = _pick(best, scores, tokens_c, valid_c)
            chosen = jnp.where(best[0] > before, rows_c[best[1]], chosen)
        return best[2], best[3], jnp.isfinite(best[0]), chosen

    spec = P(axes)
    return jax.shard_map(local, in_specs=(spec,) * 8 + (P(), P()), out_specs=(spec,) * 4, check_vma=False)(
        za, zb, fp, row_ok, col_ok, tokens_b, valid_b, rows_global, scale, key)


def matching_logits(model, a, block_a, b, block_b):
    """One fused pass over [a, b] per example -> the matching logit [B] (CLS of a, normed, head)."""
    (xa, va), (xb, vb) = model.sequence(a, *block_a), model.sequence(b, *block_b)
    h = model.encoder(jnp.concatenate([xa, xb], axis=1), jnp.concatenate([va, vb], axis=1))
    return model.itm_head(model.final_norm(h[:, 0]), model.dtype)[:, 0]


def binary_cross_entropy(pos_logits, pos_weight, neg_logits, neg_weight):
    """(sum_pos softplus(-l) + sum_neg softplus(l)) / (n_pos + n_neg); exactly 0 with no rows."""
    total = jnp.sum(jnp.where(pos_weight > 0, jax.nn.softplus(-pos_logits), 0.0)) + \
        jnp.sum(jnp.where(neg_weight > 0, jax.nn.softplus(neg_logits), 0.0))
    return total / jnp.maximum(jnp.sum(pos_weight) + jnp.sum(neg_weight), 1.0)


def matching_losses(model, batch, embeddings, rng, config) -> dict[str, jax.Array]:
    """{"a-b": matching loss} for every trained pair, negatives mined from `embeddings` (the
    contrastive pass's normalised embeddings)."""
    pairs = itm_pairs(config, model.modality_names)
    names = sorted({n for pair in pairs for n in pair})   # only the modalities some pair uses
    tokens = {n: model.stems[n].embed(batch, model.dtype) for n in names}
    present = {n: batch[f"{n}/present"] for n in names}
    fingerprints = {n: content_fingerprint(batch, n) for n in names}
    scale = jax.lax.stop_gradient(jnp.exp(model.logit_scale[...]))
    losses = {}
    for index, (a, b) in enumerate(pairs):
        both = present[a] & present[b]
        key = jax.random.fold_in(rng, 1000 + index)
        neg_b = sample_negatives_sharded(embeddings[a], embeddings[b], scale, jax.random.fold_in(key, 0),
                                         fingerprints[b], both, both, *tokens[b])
        neg_a = sample_negatives_sharded(embeddings[b], embeddings[a], scale, jax.random.fold_in(key, 1),
                                         fingerprints[a], both, both, *tokens[a])
        positive = matching_logits(model, a, (*tokens[a], present[a]), b, (*tokens[b], present[b]))
        with_neg_b = matching_logits(model, a, (*tokens[a], present[a]), b, (neg_b[0], neg_b[1], neg_b[2]))
        with_neg_a = matching_logits(model, a, (neg_a[0], neg_a[1], neg_a[2]), b, (*tokens[b], present[b]))
        weight = both.astype(jnp.float32)
        losses[f"{a}-{b}"] = binary_cross_entropy(
            positive, weight, jnp.concatenate([with_neg_b, with_neg_a]),
            jnp.concatenate([weight * neg_b[2], weight * neg_a[2]]))
    return losses
