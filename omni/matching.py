"""Matching (FLAVA's image-text matching, for any pair of modalities) with hard negatives.

For a pair (a, b), the fused transformer sees the concatenation [CLS_a a-tokens, CLS_b b-tokens];
the final-normed hidden state of CLS_a goes through `itm_head` to one logit, "these belong
together". Positives are each example's own (a, b). Negatives are hard, mined as in ALBEF (Li et
al. 2021, section 3.2): for every a_i a b_j drawn with probability softmax_j(s_ij) over the
contrastive similarities s_ij = exp(t) za_i.zb_j (t clamped as omni.contrastive.clamped_scale
does), and for every b_i an a_j the same way. A candidate whose content equals the positive's
(j = i, or an identical caption) is never drawn. The loss is binary cross-entropy over positives
and negatives:
    L = (sum_pos softplus(-l) + sum_neg softplus(l)) / (n_pos + n_neg)
(softplus(-l) = -log sigmoid(l)). Rows where a or b is absent score nothing. With
loss.itm.rows > 0 the passes run on that many of the pair's co-occurring rows (`pack_rows`), not
on the whole batch: in a mixture of modalities a pair co-occurs in only part of it.

Sampling is the Gumbel-max trick, argmax_j (s_ij + g_ij), with g_ij drawn from a key folded with
the GLOBAL indices (i, j): the draw does not depend on how the batch is sharded. On a sharded
batch each device all-gathers the candidates' embeddings, fingerprints and ids (small), scores its
own queries against all of them (b_local x b: the O(batch^2) scores still fall as 1/devices) and
fetches only the winners' tokens, with two all-to-alls (`_take_rows`). The program holds the same
collectives on any number of devices; whole token sequences never circle the devices.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from omni.contrastive import clamped_scale
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


def _gather_candidates(candidates: Candidates, axes):
    """Every device's candidates' embeddings, fingerprints, drawable bits and ids, not their
    tokens: two all-gathers, the integers packed into one."""
    if not axes:
        return candidates.z, candidates.fingerprint, candidates.ok, candidates.ids
    ints = jnp.stack([candidates.fingerprint, candidates.ok.astype(jnp.int32), candidates.ids], axis=1)
    z, ints = (jax.lax.all_gather(x, axes, tiled=True) for x in (candidates.z, ints))
    return z, ints[:, 0], ints[:, 1] > 0, ints[:, 2]


def _take_rows(tokens, valid, picks, axes, shards):
    """tokens[picks], valid[picks] for rows sharded over `axes`, picks (global row indices) sharded
    likewise. Each row's tokens and token-valid bits travel as one flat payload. The first
    all-to-all re-splits the payload by features instead of rows (each device then holds every
    row's 1/shards slice: as many bytes as its own rows), each device takes the rows picked by
    every device's queries from its slice, and the second all-to-all sends each query's picked
    row, whole again, to the device that asked. Each device's tokens leave it once (a ring sent
    them once per hop), and no device holds more than its share of them at a time."""
    if not axes:
        return tokens[picks], valid[picks]
    rows = tokens.shape[0]
    flat = jnp.concatenate([tokens.reshape(rows, -1), valid.reshape(rows, -1).astype(tokens.dtype)], axis=1)
    width, split = flat.shape[1], tokens[0].size
    flat = jnp.pad(flat, ((0, 0), (0, -width % shards)))
    columns = jax.lax.all_to_all(flat, axes, split_axis=1, concat_axis=0, tiled=True)
    taken = columns[jax.lax.all_gather(picks, axes, tiled=True)]
    got = jax.lax.all_to_all(taken, axes, split_axis=0, concat_axis=1, tiled=True)
    return (got[:, :split].reshape(picks.shape + tokens.shape[1:]),
            got[:, split:width].reshape(picks.shape + valid.shape[1:]) > 0)


def _draw(queries, candidates, scale, key, axes=(), shards=1):
    """Each query's best s_ij + g_ij over every candidate of the batch (gathered from all devices
    when sharded: embeddings and ids only), then the winners' tokens."""
    z, fingerprint, ok, ids = _gather_candidates(candidates, axes)
    scores = _block_scores(queries.z, z, scale, key, queries.ids, ids, queries.fingerprint, fingerprint,
                           queries.ok, ok)
    picks = jnp.argmax(scores, axis=1)
    found = jnp.isfinite(jnp.max(scores, axis=1))
    tokens, valid = _take_rows(candidates.tokens, candidates.valid, picks, axes, shards)
    nothing = jnp.logical_not(found).reshape((-1,) + (1,) * (tokens.ndim - 1))
    return jnp.where(nothing, 0, tokens), valid & found[:, None], found, ids[picks]


def sample_negatives(queries: Queries, candidates: Candidates, scale, key):
    """For every query i: the tokens of a candidate j drawn ~ softmax_j(scale z_i.z_j) among the
    allowed j (ok, fingerprint differs from the query's). Returns (tokens [Q, L, D], token-valid
    [Q, L] (empty where nothing was found), found [Q]: a candidate existed, chosen global id [Q]).
    On a batch sharded over the mesh's batch axes each device scores its queries against every
    candidate (b_local x b scores) and fetches only the winners' tokens; the draw equals the
    unsharded one (the same Gumbel noise per global (i, j), the same argmax)."""
    axes = batch_mesh_axes()
    if not axes:
        return _draw(queries, candidates, scale, key)
    spec = P(axes)
    draw = functools.partial(_draw, axes=axes, shards=batch_shards())
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
    scale = jax.lax.stop_gradient(clamped_scale(model.logit_scale[...]))
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
