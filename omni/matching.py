"""Matching (FLAVA's image-text matching, for any pair of modalities) with hard negatives.

For a pair (a, b), the fused transformer sees the concatenation [CLS_a a-tokens, CLS_b b-tokens];
the final-normed hidden state of CLS_a goes through `itm_head` to one logit, "these belong
together". Positives are each example's own (a, b). Negatives are hard, mined as in ALBEF (Li et
al. 2021, section 3.2): for every a_i a b_j drawn with probability softmax_j(s_ij) over the
contrastive similarities s_ij = exp(t) za_i.zb_j, and for every b_i an a_j the same way. A
candidate whose content equals the positive's (j = i, or an identical caption) is never drawn.
The loss is binary cross-entropy over positives and negatives:
    L = (sum_pos softplus(-l) + sum_neg softplus(l)) / (n_pos + n_neg)
(softplus(-l) = -log sigmoid(l)). Rows where a or b is absent score nothing. With
loss.itm.rows > 0 the passes run on that many of the pair's co-occurring rows (`pack_rows`), not
on the whole batch: in a mixture of modalities a pair co-occurs in only part of it.

Sampling is the Gumbel-max trick, argmax_j (s_ij + g_ij), with g_ij drawn from a key folded with
the GLOBAL indices (i, j): the draw does not depend on how the batch is sharded. On a sharded
batch the candidates' embeddings and tokens travel around the device ring (shard_map + ppermute,
as the chunked SigLIP loss does); each device keeps, per local row, the best candidate so far and
its tokens. Per device that is one local x local score block and the local candidates' tokens
at a time, as for the chunked SigLIP loss: nothing grows with the global batch.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from omni.modalities.registry import itm_pairs
from omni.parallel import batch_mesh_axes, batch_shards


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


class Queries(NamedTuple):
    """The rows that each need a negative: their embedding, the fingerprint of their positive's
    content (a candidate with the same content is never drawn), whether they score, global ids."""
    z: jax.Array
    fingerprint: jax.Array
    ok: jax.Array
    ids: jax.Array


class Candidates(NamedTuple):
    """The rows a negative is drawn from: embedding, content fingerprint, whether drawable, the
    tokens (and token-valid mask) a drawn negative brings to the fused pass, global ids."""
    z: jax.Array
    fingerprint: jax.Array
    ok: jax.Array
    tokens: jax.Array
    valid: jax.Array
    ids: jax.Array


def _nothing_picked(queries, candidates):
    """The running best before any candidate: score -inf, index 0, empty tokens."""
    n = queries.z.shape[0]
    return (jnp.full(n, -jnp.inf), jnp.zeros(n, jnp.int32),
            jnp.zeros((n,) + candidates.tokens.shape[1:], candidates.tokens.dtype),
            jnp.zeros((n,) + candidates.valid.shape[1:], candidates.valid.dtype))


def _pick(best, scores, tokens, valid):
    """Fold one block of candidates into the running best (score, index, tokens, token-valid)."""
    score, index, best_tokens, best_valid = best
    j = jnp.argmax(scores, axis=1)
    top = jnp.take_along_axis(scores, j[:, None], axis=1)[:, 0]
    better = top > score
    pick = lambda new, old: jnp.where(better.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)  # noqa: E731
    return (jnp.where(better, top, score), pick(j, index), pick(tokens[j], best_tokens), pick(valid[j], best_valid))


def _draw_around_ring(queries, candidates, scale, key, axes=(), shards=1):
    """Every block of candidates visits the queries once (passed around the ring of `shards`
    devices when sharded); the best s_ij + g_ij wins."""
    ring = [(i, (i + 1) % shards) for i in range(shards)]
    best = _nothing_picked(queries, candidates)
    chosen = jnp.zeros(queries.z.shape[0], jnp.int32)
    visiting = candidates
    for step in range(shards):
        if step:
            visiting = jax.lax.ppermute(visiting, axes, ring)
        scores = _block_scores(queries.z, visiting.z, scale, key, queries.ids, visiting.ids,
                               queries.fingerprint, visiting.fingerprint, queries.ok, visiting.ok)
        before = best[0]
        best = _pick(best, scores, visiting.tokens, visiting.valid)
        chosen = jnp.where(best[0] > before, visiting.ids[best[1]], chosen)
    return best[2], best[3], jnp.isfinite(best[0]), chosen


def sample_negatives(queries: Queries, candidates: Candidates, scale, key):
    """For every query i: the tokens of a candidate j drawn ~ softmax_j(scale z_i.z_j) among the
    allowed j (ok, fingerprint differs from the query's). Returns (tokens [Q, L, D], token-valid
    [Q, L], found [Q]: a candidate existed, chosen global id [Q]). On a batch sharded over the
    mesh's batch axes the candidates circle the ring, and the draw equals the unsharded one (the
    same Gumbel noise per global (i, j))."""
    axes = batch_mesh_axes()
    if not axes:
        return _draw_around_ring(queries, candidates, scale, key)
    spec = P(axes)
    draw = functools.partial(_draw_around_ring, axes=axes, shards=batch_shards())
    return jax.shard_map(draw, in_specs=(Queries(*[spec] * 4), Candidates(*[spec] * 6), P(), P()),
                         out_specs=(spec,) * 4, check_vma=False)(queries, candidates, scale, key)


def _first_kept(arrays, keep, rows):
    """The first `rows` rows where `keep` (then rows that are not kept, to fill up), and which of
    them are kept."""
    order = jnp.argsort(jnp.logical_not(keep), stable=True)[:rows]
    return [x[order] for x in arrays], keep[order]


def pack_rows(arrays, keep, rows: int):
    """Each batch shard's first rows/shards rows where `keep`: the matching passes run on a fixed
    `rows` of the batch instead of all of it. In the five-modality mixture a pair co-occurs in a
    fraction of the rows, so this cuts its three fused passes to that fraction. A shard that holds
    more kept rows than its share drops the rest (as a mixture-of-experts layer drops tokens past
    its capacity); only then does the choice depend on the mesh. rows = 0 keeps the batch."""
    if rows <= 0:
        return list(arrays), keep
    axes = batch_mesh_axes()
    if not axes:
        return _first_kept(arrays, keep, rows)
    spec = P(axes)
    local = functools.partial(_first_kept, rows=rows // batch_shards())
    return jax.shard_map(local, in_specs=([spec] * len(arrays), spec), out_specs=([spec] * len(arrays), spec),
                         check_vma=False)(list(arrays), keep)


def matching_logits(model, a, block_a, b, block_b):
    """One fused pass over [a, b] per example -> the matching logit [B] (CLS of a, normed, head)."""
    (xa, va), (xb, vb) = model.sequence(a, *block_a), model.sequence(b, *block_b)
    h = model.encoder(jnp.concatenate([xa, xb], axis=1), jnp.concatenate([va, vb], axis=1))
    return model.itm_head(model.final_norm(h[:, 0]), model.dtype)[:, 0] * model.output_multiplier


def binary_cross_entropy(pos_logits, pos_weight, neg_logits, neg_weight):
    """(sum_pos softplus(-l) + sum_neg softplus(l)) / (n_pos + n_neg); exactly 0 with no rows."""
    total = jnp.sum(jnp.where(pos_weight > 0, jax.nn.softplus(-pos_logits), 0.0)) + \
        jnp.sum(jnp.where(neg_weight > 0, jax.nn.softplus(neg_logits), 0.0))
    return total / jnp.maximum(jnp.sum(pos_weight) + jnp.sum(neg_weight), 1.0)


def matching_losses(model, batch, embeddings, rng, config, pairs=None) -> dict[str, jax.Array]:
    """{"a-b": matching loss} for every trained pair, negatives mined from `embeddings` (the
    contrastive pass's normalised embeddings), on each pair's first loss.itm.rows co-occurring rows.
    pairs: [(index, a, b)] to score (default: every trained pair); the index seeds its draws.
    A row's id for the draws is its `example_id` when the batch has one, else its index."""
    if pairs is None:
        pairs = [(i, a, b) for i, (a, b) in enumerate(itm_pairs(config, model.modality_names))]
    names = sorted({n for _, a, b in pairs for n in (a, b)})   # only the modalities some pair uses
    tokens = {n: model.stems[n].embed(batch, model.dtype) for n in names}
    fingerprints = {n: content_fingerprint(batch, n) for n in names}
    if "example_id" in batch:
        ids = jax.lax.bitcast_convert_type(batch["example_id"], jnp.int32)
    else:
        ids = jnp.arange(batch[f"{names[0]}/present"].shape[0], dtype=jnp.int32) if names else None
    scale = jax.lax.stop_gradient(jnp.exp(model.logit_scale[...]))
    rows = int(config.loss.itm.get("rows", 0))
    losses = {}
    for index, a, b in pairs:
        both = batch[f"{a}/present"] & batch[f"{b}/present"]
        (ta, va, tb, vb, za, zb, fa, fb, own), kept = pack_rows(
            (*tokens[a], *tokens[b], embeddings[a], embeddings[b], fingerprints[a], fingerprints[b], ids),
            both, rows)
        key = jax.random.fold_in(rng, 1000 + index)
        neg_b = sample_negatives(Queries(za, fb, kept, own),
                                 Candidates(embeddings[b], fingerprints[b], both, *tokens[b], ids),
                                 scale, jax.random.fold_in(key, 0))
        neg_a = sample_negatives(Queries(zb, fa, kept, own),
                                 Candidates(embeddings[a], fingerprints[a], both, *tokens[a], ids),
                                 scale, jax.random.fold_in(key, 1))
        positive = matching_logits(model, a, (ta, va, kept), b, (tb, vb, kept))
        with_neg_b = matching_logits(model, a, (ta, va, kept), b, neg_b[:3])
        with_neg_a = matching_logits(model, a, neg_a[:3], b, (tb, vb, kept))
        weight = kept.astype(jnp.float32)
        losses[f"{a}-{b}"] = binary_cross_entropy(
            positive, weight, jnp.concatenate([with_neg_b, with_neg_a]),
            jnp.concatenate([weight * neg_b[2], weight * neg_a[2]]))
    return losses
