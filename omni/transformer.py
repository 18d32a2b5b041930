"""The shared pre-norm transformer of omni.model.Omni (and, at its own width, MAE's decoder).

Layers are stored stacked (leading `layers` axis) and run under `jax.lax.scan`, so compile time
does not grow with depth; `model.remat` picks what the backward pass recomputes. One call runs
several passes at once (`Transformer.run`): the token-wise work of every pass together, attention
per pass (omni.attention).
"""
from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from omni import mup
from omni.attention import attend_rows, attention_implementation, valid_tokens_first
from omni.nn import layer_norm, matmul, param
from omni.parallel import batch_shards, constrain


def dots_with_no_batch_dims_saveable(prim, *avals, **params) -> bool:
    """JAX's policy of that name, seeing through omni's bf16 matmul: that is a custom_vjp call
    (on CPU so that its backward runs in bf16 too, on accelerators so that the weight's gradient
    is f32), which JAX's policy does not take for a dot. Under it, `remat="dots"` saved nothing
    on CPU in bf16, and the backward recomputed every projection of the layer."""
    if prim.name == "custom_vjp_call":
        return any(eqn.primitive is jax.lax.dot_general_p and not eqn.params["dimension_numbers"][1][0]
                   for eqn in params["call_jaxpr"].jaxpr.eqns)
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable(prim, *avals, **params)


REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block
    # save the projections' outputs (and the blocked attention's output), recompute the rest
    "dots": jax.checkpoint_policies.save_from_both_policies(
        dots_with_no_batch_dims_saveable, jax.checkpoint_policies.save_only_these_names("attention")),
}


class Transformer(nnx.Module):
    """`depth` pre-norm blocks (attention + GELU MLP) with parameters stacked on a leading axis."""

    def __init__(self, config, rngs: nnx.Rngs):
        m = config.model
        depth, width, heads = m.depth, m.width, m.heads
        head_dim, hidden = width // heads, width * m.mlp_ratio
        out_scale = width ** -0.5 / (2 * depth) ** 0.5  # GPT-2 style: residual writes shrink with depth
        self.ln1_scale = param(rngs, (depth, width), ("layers", "embed"), init="ones")
        self.ln1_bias = param(rngs, (depth, width), ("layers", "embed"), init="zeros")
        qkv_names = ("layers", "embed", "heads", "head_dim")
        self.wq = param(rngs, (depth, width, heads, head_dim), qkv_names, scale=width ** -0.5)
        self.wk = param(rngs, (depth, width, heads, head_dim), qkv_names, scale=width ** -0.5)
        self.wv = param(rngs, (depth, width, heads, head_dim), qkv_names, scale=width ** -0.5)
        self.wo = param(rngs, (depth, heads, head_dim, width), ("layers", "heads", "head_dim", "embed"),
                        scale=out_scale)
        self.ln2_scale = param(rngs, (depth, width), ("layers", "embed"), init="ones")
        self.ln2_bias = param(rngs, (depth, width), ("layers", "embed"), init="zeros")
        self.w_in = param(rngs, (depth, width, hidden), ("layers", "embed", "mlp"), scale=width ** -0.5)
        self.b_in = param(rngs, (depth, hidden), ("layers", "mlp"), init="zeros")
        self.w_out = param(rngs, (depth, hidden, width), ("layers", "mlp", "embed"), scale=out_scale)
        self.b_out = param(rngs, (depth, width), ("layers", "embed"), init="zeros")
        self.dtype = jnp.dtype(m.dtype)
        # bf16 halves the bytes of the residual adds and layer norms, which are memory-bound on
        # accelerators; layer norm still computes its statistics in f32.
        self.residual_dtype = jnp.dtype(m.get("residual_dtype", "float32"))
        self.remat = m.remat
        self.scan_layers = m.scan_layers
        self.attention = m.attention
        self.attention_scale = mup.attention_scale(config, head_dim)
        # the token rows the token-wise work is computed on, as a share of the passes' slots
        self.token_capacity = float(m.get("token_capacity", 1.0))

    def __call__(self, x, key_valid):
        """x: [B, T, D] f32; key_valid: [B, T] bool (which tokens may be attended to). One pass,
        every slot computed (evaluation, export, matching, MAE's decoder)."""
        return self.run([(x, key_valid)], compact=False)[0]

    def run(self, sequences, counts: bool = False, compact: bool = True):
        """Several passes in one: `sequences` is [(x [B_i, T_i, D], key_valid [B_i, T_i])], each
        its own batch of rows attending only within a row, as `__call__` would run them one by
        one. The token-wise work (layer norms, projections, MLP) runs once per layer over every
        pass's tokens together, and only attention runs per pass: so each weight is read, and
        its gradient made, once per layer rather than once per pass, and a pass of a few rows
        (a smell sub-batch's 9-token rows) still multiplies in a product of useful size.

        Tokens of the passes are joined shard by shard (omni.sub_batches.concat_rows), so that
        under a mesh each device keeps its own rows: h is [shards, tokens per shard, D].

        With model.token_capacity below 1 and `compact`, the token-wise work runs on that share of
        the rows only, holding every valid token (`compacted`); the outputs at valid tokens are
        the same.
        -> the outputs, and with `counts` also {"encoder_tokens": the valid tokens,
        "encoder_rows": the token rows computed, "encoder_slots": every pass's slots}."""
        shards = batch_shards()
        plans, xs, valids = [], [], []  # per pass: (implementation, [B, T], key_valid, lengths, restore)
        for x, key_valid in sequences:
            attention = attention_implementation(self.attention, x.shape[1])
            restore = lengths = None
            valid = key_valid
            if attention in ("xla", "cudnn"):
                x, lengths, restore = valid_tokens_first(x, key_valid)
                valid = jnp.arange(x.shape[1])[None, :] < jnp.sum(key_valid, axis=1, keepdims=True)
            plans.append((attention, x.shape[:2], key_valid, lengths, restore))
            xs.append(x.reshape(shards, -1, x.shape[-1]))
            valids.append(valid.reshape(shards, -1))
        sizes = [x.shape[1] for x in xs]
        h = (jnp.concatenate(xs, axis=1) if len(xs) > 1 else xs[0]).astype(self.residual_dtype)
        valid = jnp.concatenate(valids, axis=1) if len(valids) > 1 else valids[0]
        layers = functools.partial(self._layers, plans=plans, sizes=sizes)
        tokens = h.shape[1]
        share = self.token_capacity if compact and 0 < self.token_capacity < 1 else 1.0  # 0: not measured
        capacity = tokens if share == 1.0 else min(tokens, -(-int(math.ceil(share * tokens)) // 8) * 8)
        if capacity < tokens:
            fits = jnp.all(jnp.sum(valid, axis=1) <= capacity)
            # The fallback keeps nothing for the backward pass and recomputes its layers there:
            # both branches of a cond return the same residuals, so the compacted branch would
            # write zeros for every activation the full layout saves, at every step (what that
            # cost: docs/performance.md). The fallback is the rare step; it pays the recompute.
            h = jax.lax.cond(fits, functools.partial(compacted, layers, valid=valid, capacity=capacity),
                             jax.checkpoint(layers), h)
            rows = jnp.where(fits, capacity, tokens) * shards
        else:
            h, rows = layers(h), tokens * shards
        outputs = []
        for (_, shape, key_valid, _, restore), h_i in zip(plans, split_tokens(h, sizes)):
            h_i = h_i.reshape(*shape, h.shape[-1])
            if restore is not None:  # back to the stems' order, without the padding
                h_i = jnp.take_along_axis(h_i, restore[:, :, None], axis=1)[:, :key_valid.shape[1]]
            outputs.append(h_i.astype(jnp.float32))
        if not counts:
            return outputs
        return outputs, {"encoder_tokens": jnp.sum(valid, dtype=jnp.float32), "encoder_rows": jnp.float32(rows),
                         "encoder_slots": jnp.float32(tokens * shards)}

    def _layers(self, h, plans, sizes, expand=None, shrink=None):
        """Every layer over h [shards, tokens, D]; attention per pass (`plans`, `sizes`). Given
        `expand` and `shrink`, h holds a compacted set of the tokens: attention takes q, k, v
        expanded to the passes' full layout and gives its output back shrunk."""
        weights = {name: var[...] for name, var in vars(self).items() if isinstance(var, nnx.Param)}
        dtype, residual_dtype = self.dtype, self.residual_dtype
        scale, shards = self.attention_scale, h.shape[0]
        project = functools.partial(matmul, dtype=dtype, x_rematerialized=self.remat != "none")
        expand = expand or (lambda a: a)
        shrink = shrink or (lambda a: a)

        def attend(q, k, v):
            """Each pass's attention over its own rows: q, k, v [shards, tokens, heads, hd]."""
            out = []
            for (attention, shape, key_valid, lengths, _), q_i, k_i, v_i in zip(
                    plans, *(split_tokens(expand(a), sizes) for a in (q, k, v))):
                q_i, k_i, v_i = (a.reshape(*shape, *a.shape[2:]) for a in (q_i, k_i, v_i))
                out.append(attend_rows(attention, q_i, k_i, v_i, key_valid, lengths, scale, dtype)
                           .reshape(shards, -1, *q.shape[2:]))
            return shrink(jnp.concatenate(out, axis=1) if len(out) > 1 else out[0])

        def block(h, p):
            h = constrain(h, ("batch", "length", "embed"))
            y = layer_norm(h, p["ln1_scale"], p["ln1_bias"])
            q = project(y, p["wq"], spec="btd,dhk->bthk")
            k = project(y, p["wk"], spec="btd,dhk->bthk")
            v = project(y, p["wv"], spec="btd,dhk->bthk")
            h = h + project(attend(q, k, v), p["wo"], spec="bqhk,hkd->bqd")
            y = layer_norm(h, p["ln2_scale"], p["ln2_bias"])
            y = jax.nn.gelu(project(y, p["w_in"], spec="btd,df->btf") + p["b_in"])
            return (h + project(y, p["w_out"], spec="btf,fd->btd") + p["b_out"]).astype(residual_dtype)

        if self.remat != "none":
            block = jax.checkpoint(block, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan_layers)
        if self.scan_layers:
            return jax.lax.scan(lambda h, p: (block(h, p), None), h, weights)[0]
        for i in range(self.ln1_scale.shape[0]):
            h = block(h, jax.tree.map(lambda a: a[i], weights))
        return h


def compacted(layers, h, valid, capacity: int):
    """`layers` over the `capacity` rows of each shard that hold its valid tokens (valid ones
    first, in order; spare rows take invalid ones), h [shards, tokens, D] -> the same layout:
    at a valid token the value the full layout gives it, at an invalid one that was left out
    zero. Only when every shard's valid tokens fit (the caller's jax.lax.cond)."""
    order = jnp.argsort(~valid, axis=1, stable=True)
    kept = order[:, :capacity]  # [shards, capacity]: the rows the layers compute
    place = jnp.minimum(jnp.argsort(order, axis=1), capacity)  # each token's row; capacity: left out
    shrink = functools.partial(shrink_rows, kept=kept, place=place)
    expand = functools.partial(expand_rows, kept=kept, place=place)
    return expand(layers(shrink(h), expand=expand, shrink=shrink))


def _take_rows(a, index):
    """a [shards, rows, ...] at index [shards, n] -> [shards, n, ...]."""
    return jnp.take_along_axis(a, index.reshape(index.shape + (1,) * (a.ndim - 2)), axis=1)


# shrink and expand are each other's transpose (kept and place are inverse on the kept rows), so
# each one's gradient is the other, a gather: JAX's own transpose of a gather is a scatter-add,
# which ran the compacted base step slower than the full one on the 2-core CPU.
@jax.custom_vjp
def shrink_rows(a, kept, place):
    """The kept rows of a [shards, tokens, ...] -> [shards, capacity, ...]."""
    return _take_rows(a, kept)


@jax.custom_vjp
def expand_rows(a, kept, place):
    """[shards, capacity, ...] back to every token's place; a token left out gets zeros."""
    return _take_rows(jnp.concatenate([a, jnp.zeros_like(a[:, :1])], axis=1), place)


shrink_rows.defvjp(lambda a, kept, place: (shrink_rows(a, kept, place), (kept, place)),
                   lambda saved, g: (expand_rows(g, *saved), None, None))
expand_rows.defvjp(lambda a, kept, place: (expand_rows(a, kept, place), (kept, place)),
                   lambda saved, g: (shrink_rows(g, *saved), None, None))


def split_tokens(h, sizes: list[int]) -> list:
    """[shards, sum(sizes), ...] -> one [shards, size, ...] per pass (the inverse of the join)."""
    bounds = [0, *itertools.accumulate(sizes)]
    return [h[:, lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
