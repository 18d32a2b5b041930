"""The single early-fusion transformer.

Every modality's stem turns its arrays into tokens; the model prepends that modality's CLS token,
adds its modality-type embedding, and runs ONE shared pre-norm transformer, in two ways:

  * unimodal: each modality's block on its own (same weights, one call per modality). This equals
    a block-diagonal mask over the concatenation, without paying for the masked-out blocks.
    The CLS outputs, projected and L2-normalised, feed the contrastive losses and `embed`.
  * fused: all modalities concatenated, full attention over every present, non-padding token.
    Used on masked inputs for the masked-modelling losses.

Layers are stored stacked (leading `layers` axis) and run under `jax.lax.scan`, so compile time
does not grow with depth; `model.remat` picks what the backward pass recomputes.
"""
from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from omni import mae, mup
from omni.modalities import registry
from omni.nn import Dense, LayerNorm, layer_norm, matmul, param, transposed
from omni.parallel import batch_shards, constrain, logical_to_spec, multi_device_mesh

MASK_VALUE = -1e9  # finite, so a row with every key masked gives a uniform softmax, never NaN


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


# The blocked attention's queries per block: as many as keep a [block, T] tile of f32 scores
# within about 2.5 MB. On the 2-core CPU where this was measured (2 MB of L2 per core), base's
# 793 tokens ran fastest in one block and 1600 tokens in blocks of 400 or fewer; the timings,
# from an earlier machine, are in docs/performance.md, "Measurements behind code choices".
TILE_SCORES = 640_000


def query_block(length: int) -> int:
    """Queries per block for a sequence of `length` tokens, as even as possible: ceil(T / blocks)."""
    blocks = -(-length * length // TILE_SCORES)
    return -(-length // blocks)


def attention_implementation(attention: str, length: int) -> str:
    """`model.attention` -> "einsum" (written out), "blocked", or the implementation of
    `jax.nn.dot_product_attention` ("xla" or "cudnn"). "fused" picks the fastest measured for a
    sequence of `length` tokens: cuDNN's flash attention on a GPU (faster than XLA's on an H100);
    on a CPU, blocks for sequences longer than 256 tokens (base's step ran faster than written
    out, whose [B, heads, T, T] scores fall out of cache at its 793 tokens) and written out for
    shorter ones (openclip_small's 65 tokens ran slower in one block, also after the blocks'
    products were made bf16); written out elsewhere. The timings, from earlier machines:
    docs/performance.md, "Measurements behind code choices"."""
    if attention != "fused":
        return attention
    if jax.default_backend() == "gpu":
        return "cudnn"
    if jax.default_backend() == "cpu" and length > 256:
        return "blocked"
    return "einsum"


def blocked_attention(q, k, v, key_valid, scale, dtype):
    """The written-out attention, one (example, head) at a time in blocks of `query_block(T)`
    queries, recomputing the scores in the backward: on a CPU a [block, T] tile of scores stays
    in cache, where [B, heads, T, T] streams through memory several times. q, k, v: [B, T, heads,
    head_dim]; key_valid: [B, T]. Under a mesh it runs on each device's own examples and heads
    (`shard_map`), since a loop over a sharded axis would gather it."""
    mesh = multi_device_mesh()
    local = functools.partial(_attention_in_blocks, scale=scale, dtype=dtype)
    if mesh is None:
        return local(q, k, v, key_valid)
    per_token = logical_to_spec(("batch", "length", "heads", "head_dim"), q.shape, mesh)
    per_key = logical_to_spec(("batch", "length"), key_valid.shape, mesh)
    return jax.shard_map(local, in_specs=(per_token, per_token, per_token, per_key),
                         out_specs=per_token, check_vma=False)(q, k, v, key_valid)


def _attention_in_blocks(q, k, v, key_valid, scale, dtype):
    batch, length, heads, head_dim = q.shape
    block = query_block(length)
    blocks = -(-length // block)

    def per_head(a):  # [B, T, heads, head_dim] -> [B * heads, T, head_dim]
        return a.transpose(0, 2, 1, 3).reshape(batch * heads, length, head_dim)

    q_blocks = jnp.pad(per_head(q), ((0, 0), (0, blocks * block - length), (0, 0)))
    q_blocks = q_blocks.reshape(batch * heads, blocks, block, head_dim)
    bias = jnp.repeat(jnp.where(key_valid, 0.0, MASK_VALUE), heads, axis=0)  # [B * heads, T]
    out = _per_head_blocks(q_blocks, per_head(k), per_head(v), bias, scale, dtype)
    out = out.reshape(batch, heads, blocks * block, head_dim)[:, :, :length]
    return out.transpose(0, 2, 1, 3)


def _block_probs(q_block, k_head, bias_head, scale, dtype):
    """Attention weights [block, T] of [block, head_dim] queries over one head's [T, head_dim] keys."""
    return jax.nn.softmax(matmul(q_block, k_head, dtype, "qk,tk->qt") * scale + bias_head, axis=-1)


def _one_block(q_block, k_head, v_head, bias_head, scale, dtype):
    """[block, head_dim] queries against one head's [T, head_dim] keys and values."""
    return matmul(_block_probs(q_block, k_head, bias_head, scale, dtype), v_head, dtype, "qt,tk->qk")


def _one_block_backward(q_block, k_head, v_head, bias_head, grad_block, scale, dtype):
    """Gradients of `_one_block` with respect to q, k and v, written out."""
    probs = _block_probs(q_block, k_head, bias_head, scale, dtype)
    grad_probs = matmul(grad_block, v_head, dtype, "qk,tk->qt")
    grad_logits = probs * (grad_probs - jnp.sum(probs * grad_probs, axis=-1, keepdims=True)) * scale
    dq = matmul(grad_logits, k_head, dtype, "qt,tk->qk")
    # dk and dv contract over the queries: the [block, T] tiles are transposed in memory, or
    # XLA CPU runs these products in f32, which was slower (docs/performance.md, "Measurements
    # behind code choices").
    dk = matmul(transposed(grad_logits.astype(dtype)), q_block, dtype, "tq,qk->tk")
    dv = matmul(transposed(probs.astype(dtype)), grad_block, dtype, "tq,qk->tk")
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _per_head_blocks(q_blocks, k, v, bias, scale, dtype):
    """q_blocks [B*heads, blocks, block, hd], k and v [B*heads, T, hd], bias [B*heads, T]. A custom
    VJP keeps only these inputs (a remat policy that saves products without batch dimensions
    would otherwise keep every block's scores) and recomputes each block's scores backward."""
    def one_head(head):
        q_head, k_head, v_head, bias_head = head
        return jax.lax.map(lambda q_block: _one_block(q_block, k_head, v_head, bias_head, scale, dtype),
                           q_head)
    return jax.lax.map(one_head, (q_blocks, k, v, bias))


def _per_head_blocks_forward(q_blocks, k, v, bias, scale, dtype):
    return _per_head_blocks(q_blocks, k, v, bias, scale, dtype), (q_blocks, k, v, bias)


def _per_head_blocks_backward(scale, dtype, inputs, grad_out):
    def one_head(head):
        q_head, k_head, v_head, bias_head, grad_head = head

        def one_block(kv_grads, block):
            q_block, grad_block = block
            dq, dk, dv = _one_block_backward(q_block, k_head, v_head, bias_head, grad_block, scale, dtype)
            return (kv_grads[0] + dk, kv_grads[1] + dv), dq

        zeros = (jnp.zeros_like(k_head), jnp.zeros_like(v_head))
        (dk, dv), dq = jax.lax.scan(one_block, zeros, (q_head, grad_head))
        return dq, dk, dv

    dq, dk, dv = jax.lax.map(one_head, (*inputs, grad_out))
    return dq, dk, dv, None  # the bias is a mask: no gradient


_per_head_blocks.defvjp(_per_head_blocks_forward, _per_head_blocks_backward)


def valid_tokens_first(x, key_valid):
    """Reorder each example's tokens so that its valid ones come first, and pad to an even length:
    x [B, T, D] and key_valid [B, T] -> (reordered x [B, T or T + 1, D], valid counts [B] int32,
    the order that restores x, padding included).

    The blocks are equivariant to token order (the stems added the positions), so the
    transformer may run on the reordered sequence. Then a key mask is a length per example, which
    cuDNN's flash attention applies inside the kernel (given a mask instead, it wants a full
    [B, 1, T, T] bias and its gradient). In training it takes only even lengths: JAX 0.11.2 on an
    H100 refused 197 image tokens ("Unsupported sequence length Q 197, KV 197")."""
    if key_valid.shape[1] % 2:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 0)))
        key_valid = jnp.pad(key_valid, ((0, 0), (0, 1)))  # the added token is masked
    order = jnp.argsort(~key_valid, axis=1, stable=True)
    x = jnp.take_along_axis(x, order[:, :, None], axis=1)
    # at least one key per row: a row with none (an absent modality) attends to a masked token,
    # whose output, like the uniform average that the einsum path gives it, is never used
    counts = jnp.maximum(jnp.sum(key_valid, axis=1), 1).astype(jnp.int32)
    return x, counts, jnp.argsort(order, axis=1)


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

    def __call__(self, x, key_valid):
        """x: [B, T, D] f32; key_valid: [B, T] bool (which tokens may be attended to)."""
        return self.run([(x, key_valid)])[0]

    def run(self, sequences):
        """Several passes in one: `sequences` is [(x [B_i, T_i, D], key_valid [B_i, T_i])], each
        its own batch of rows attending only within a row, as `__call__` would run them one by
        one. The token-wise work (layer norms, projections, MLP) runs once per layer over every
        pass's tokens together, and only attention runs per pass: so each weight is read, and
        its gradient made, once per layer rather than once per pass, and a pass of a few rows
        (a smell sub-batch's 9-token rows) still multiplies in a product of useful size.

        Tokens of the passes are joined shard by shard (omni.sub_batches.concat_rows), so that
        under a mesh each device keeps its own rows: h is [shards, tokens per shard, D]."""
        layers = {name: var[...] for name, var in vars(self).items() if isinstance(var, nnx.Param)}
        dtype, residual_dtype = self.dtype, self.residual_dtype
        scale, shards = self.attention_scale, batch_shards()
        plans = []  # per pass: (implementation, its [B, T] shape, its attention input)
        xs = []
        for x, key_valid in sequences:
            attention = attention_implementation(self.attention, x.shape[1])
            restore = counts = None
            if attention in ("xla", "cudnn"):
                x, counts, restore = valid_tokens_first(x, key_valid)
            plans.append((attention, x.shape[:2], key_valid, counts, restore))
            xs.append(x.reshape(shards, -1, x.shape[-1]))
        sizes = [x.shape[1] for x in xs]
        project = functools.partial(matmul, dtype=dtype, x_rematerialized=self.remat != "none")

        def attend(q, k, v):
            """Each pass's attention over its own rows: q, k, v [shards, tokens, heads, hd]."""
            out = []
            for (attention, shape, key_valid, counts, _), q_i, k_i, v_i in zip(
                    plans, *(split_tokens(a, sizes) for a in (q, k, v))):
                q_i, k_i, v_i = (a.reshape(*shape, *a.shape[2:]) for a in (q_i, k_i, v_i))
                out.append(attend_rows(attention, q_i, k_i, v_i, key_valid, counts, scale, dtype)
                           .reshape(shards, -1, *q.shape[2:]))
            return jnp.concatenate(out, axis=1) if len(out) > 1 else out[0]

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
        h = (jnp.concatenate(xs, axis=1) if len(xs) > 1 else xs[0]).astype(residual_dtype)
        if self.scan_layers:
            h, _ = jax.lax.scan(lambda h, p: (block(h, p), None), h, layers)
        else:
            for i in range(self.ln1_scale.shape[0]):
                h = block(h, jax.tree.map(lambda a: a[i], layers))
        outputs = []
        for (_, shape, key_valid, _, restore), h_i in zip(plans, split_tokens(h, sizes)):
            h_i = h_i.reshape(*shape, h.shape[-1])
            if restore is not None:  # back to the stems' order, without the padding
                h_i = jnp.take_along_axis(h_i, restore[:, :, None], axis=1)[:, :key_valid.shape[1]]
            outputs.append(h_i.astype(jnp.float32))
        return outputs


def split_tokens(h, sizes: list[int]) -> list:
    """[shards, sum(sizes), ...] -> one [shards, size, ...] per pass (the inverse of the join)."""
    bounds = [0, *itertools.accumulate(sizes)]
    return [h[:, lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


def attend_rows(attention, q, k, v, key_valid, counts, scale, dtype):
    """One pass's attention, q, k, v [B, T, heads, head_dim] -> [B, T, heads, head_dim], by
    `attention_implementation`'s choice for its length."""
    if attention == "einsum":
        bias = jnp.where(key_valid, 0.0, MASK_VALUE)[:, None, None, :]  # [B, 1(heads), 1(queries), T]
        logits = matmul(q, k, dtype, "bqhk,bthk->bhqt") * scale + bias
        return matmul(jax.nn.softmax(logits, axis=-1), v, dtype, "bhqt,bthk->bqhk")
    if attention == "blocked":
        return checkpoint_name(blocked_attention(q, k, v, key_valid, scale, dtype), "attention")
    return jax.nn.dot_product_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), scale=scale,
                                        key_value_seq_lengths=counts, implementation=attention)


def build_stems(config, rngs) -> dict:
    """Every configured modality's stem, made in registry order so that a stem may share weights
    with one made before it (video frames reuse the image patchifier)."""
    built = {}
    for name in registry.MODALITIES:
        if name in config.modalities:
            built[name] = registry.get(name).make_stem(config, rngs, built=dict(built))
    return {name: built[name] for name in config.modalities}


class Omni(nnx.Module):
    def __init__(self, config, rngs: nnx.Rngs):
        width = config.model.width
        self.modality_names = tuple(config.modalities.keys())
        self.stems = nnx.Dict(build_stems(config, rngs))
        count = len(self.modality_names)
        self.cls = param(rngs, (count, width), ("modality", "embed"))
        self.type_embed = param(rngs, (count, width), ("modality", "embed"))
        self.encoder = Transformer(config, rngs)
        self.final_norm = LayerNorm(rngs, width)
        self.projections = nnx.Dict({
            n: Dense(rngs, width, config.model.embed_dim, names=("embed", "proj"),
                     scale=mup.readout_init_scale(config, width)) for n in self.modality_names})
        # Contrastive temperature t (logits scale exp(t)) and bias b, learned.
        # SigLIP starts at t = log 10, InfoNCE (CLIP) at t = log(1/0.07) with no bias.
        siglip = config.loss.contrastive.kind == "siglip"
        self.logit_scale = param(rngs, (), (), init=math.log(10.0) if siglip else math.log(1 / 0.07))
        self.logit_bias = param(rngs, (), (), init=siglip_initial_bias(config) if siglip else 0.0)
        self.dtype = jnp.dtype(config.model.dtype)
        self.output_multiplier = mup.output_multiplier(config)
        if "itm" in registry.active_objectives(config):
            # The matching head (omni.matching): fused [a, b] pass, CLS of a -> "belong together" logit.
            self.itm_head = Dense(rngs, width, 1, names=("embed", "logit"), scale=mup.readout_init_scale(config, width))
        if mae.mae_modalities(config):
            # MAE (omni.mae): a light decoder per image-like modality, its layers the encoder's kind
            # at the decoder's width. Built last, so the other parameters start as they do without.
            self.decoders = nnx.Dict({
                n: mae.Decoder(config, rngs, self.stems[n], Transformer(mae.decoder_config(config), rngs))
                for n in mae.mae_modalities(config)})

    def sequence(self, name, tokens, valid, present):
        """Prepend CLS, add the modality-type embedding; valid = token valid AND modality present."""
        i = self.modality_names.index(name)
        batch = tokens.shape[0]
        cls = jnp.broadcast_to(self.cls[...][i], (batch, 1, tokens.shape[-1]))
        x = jnp.concatenate([cls, tokens], axis=1) + self.type_embed[...][i]
        valid = jnp.concatenate([jnp.ones((batch, 1), bool), valid], axis=1) & present[:, None]
        return x, valid

    def embed(self, name, inputs):
        """Unimodal pass on clean inputs -> L2-normalised embedding [B, embed_dim] (f32)."""
        return self.embedding(name, self.encoder(*self.unimodal_sequence(name, inputs)))

    def unimodal_sequence(self, name, inputs):
        """A modality's clean inputs as the unimodal pass's (x, valid): CLS first."""
        tokens, valid = self.stems[name].embed(inputs, self.dtype)
        return self.sequence(name, tokens, valid, jnp.ones(tokens.shape[0], bool))

    def embedding(self, name, hidden):
        """The unimodal pass's hidden states -> the L2-normalised projection of its CLS."""
        z = self.projections[name](self.final_norm(hidden[:, 0]), self.dtype) * self.output_multiplier
        return z * jax.lax.rsqrt(jnp.sum(z * z, axis=-1, keepdims=True) + 1e-12)

    def fused(self, blocks):
        """blocks: name -> (tokens [B, L, D], valid [B, L] incl. presence), for the modalities of
        one sub-batch. One pass over their concatenation (in model order); returns name -> hidden
        states of that modality's tokens (CLS dropped)."""
        x, valid = self.fused_sequence(blocks)
        return self.fused_states(blocks, self.encoder(x, valid))

    def fused_sequence(self, blocks):
        """The fused pass's (x, valid): the blocks concatenated in model order."""
        names = [name for name in self.modality_names if name in blocks]
        return (jnp.concatenate([blocks[n][0] for n in names], axis=1),
                jnp.concatenate([blocks[n][1] for n in names], axis=1))

    def fused_states(self, blocks, hidden):
        """The fused pass's hidden states, final-normed, split back into name -> that modality's
        tokens (CLS dropped)."""
        h = self.final_norm(hidden)
        out, start = {}, 0
        for name in [name for name in self.modality_names if name in blocks]:
            length = blocks[name][0].shape[1]
            out[name] = h[:, start + 1: start + length]
            start += length
        return out


def siglip_initial_bias(config) -> float:
    """b = -log(batch size): the prior log-odds that a pair is a positive (1 pair in B per row).
    SigLIP's b = -10 is this prior at its 32k batch (log 32768 = 10.4). At a small batch, b = -10
    starts positives at a loss of ~10 and negatives at ~0, and Adam moves a scalar by at most ~lr
    per step, so b is still about -10 after a short run: the cheapest way left to raise the
    positives' logits is to pull every embedding together, and smell and its captions did exactly
    that in the default run. docs/evaluation.md has the measurements."""
    return -math.log(max(int(config.train.batch_size), 2))


def count_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
