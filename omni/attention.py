"""Attention over the rows of one pass, by the implementation that measured fastest for its
length and device: written out (einsum), in blocks of queries with a written-out backward (a CPU
with long sequences), or `jax.nn.dot_product_attention` (XLA's, or cuDNN's flash attention on a
GPU, which takes each row's keys as a length: `valid_tokens_first`). omni.transformer calls
`attend_rows` once per pass inside every layer.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from omni.nn import matmul, transposed
from omni.parallel import logical_to_spec, multi_device_mesh

MASK_VALUE = -1e9  # finite, so a row with every key masked gives a uniform softmax, never NaN

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
