"""The model's building blocks, below every modality and the transformer: named parameters
(`param`), the one matmul every product with a weight goes through (`matmul`), and the `Dense` and
`LayerNorm` layers made of them.

These sit in their own foundation module, apart from the `Modality` interface
(omni/modalities/base.py), for two reasons: one concept per file, and a plugin author reading that
interface should not have to read the CPU-specific custom VJP below first. `matmul` is plain
`jnp.einsum` in f32. In a low-precision dtype a product with a weight has a custom VJP: on CPU,
where XLA CPU needs help to run the backward products in bf16 (`_bf16_matmul_f32_out`,
`transposed`, `_weight_gradient`), and on accelerators, to give the weights' gradients in f32
(`_accelerator_matmul`). The measurements behind those choices are in docs/performance.md,
"Measurements behind code choices" and "Numerics on accelerators".

Every parameter carries logical axis names (`out_sharding`), mapped to mesh axes by omni.parallel.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def param(rngs: nnx.Rngs, shape, names: tuple, init: str | float | np.ndarray = "normal",
          scale: float = 0.02):
    """An nnx.Param with logical axis names. init: 'normal' (std=scale), 'zeros', 'ones', a constant
    or an array of the starting values."""
    if isinstance(init, np.ndarray):
        if init.shape != tuple(shape):
            raise ValueError(f"initial values of shape {init.shape} for a parameter of shape {tuple(shape)}")
        value = jnp.asarray(init, jnp.float32)
    elif isinstance(init, (int, float)):
        value = jnp.full(shape, init, jnp.float32)
    elif init == "zeros":
        value = jnp.zeros(shape, jnp.float32)
    elif init == "ones":
        value = jnp.ones(shape, jnp.float32)
    else:
        value = scale * jax.random.normal(rngs.params(), shape, jnp.float32)
    assert len(names) == len(shape), (names, shape)
    # eager_sharding=False: names are metadata only; omni.parallel places the arrays.
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


# Which products `matmul` runs: "cpu" or "accelerator"; None picks by jax.default_backend().
# tests/test_numerics.py sets "accelerator" to compile the accelerator's products on a CPU, where
# the test suite would otherwise never build them.
PATH: str | None = None


def on_cpu_path() -> bool:
    return PATH == "cpu" if PATH else jax.default_backend() == "cpu"


def matmul(x, w, dtype, spec: str, x_rematerialized: bool = False, f32_out: bool = False):
    """einsum in the compute dtype, accumulating in f32 (bf16 inputs use the hardware's bf16 units:
    AMX or AVX512-BF16 on a CPU, tensor cores on a GPU).
    On CPU the f32 result is also what XLA emits fastest, and the backward products of a matmul
    with a weight are bf16 x bf16 -> f32 as well (below). On accelerators a bf16 result halves the
    memory traffic of every activation (the accumulation inside stays f32), unless f32_out: the
    vocabulary logits, whose softmax over 32k entries wants more than bf16's 8 bits. On every
    backend the weight's gradient leaves its product in f32 (`_bf16_matmul_f32_out` on CPU,
    `_accelerator_matmul` elsewhere), so that its sum over the batch shards is f32. x_rematerialized: x is recomputed for the backward pass
    (inside `jax.checkpoint`), which changes the fastest form of the weight's gradient on CPU."""
    if dtype == jnp.float32:
        return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32)
    if not on_cpu_path():
        out_dtype = jnp.dtype(jnp.float32 if f32_out else dtype)
        if _is_batched(spec):  # attention's products: two activations, no weight
            return jnp.einsum(spec, x.astype(dtype), w.astype(dtype), preferred_element_type=out_dtype)
        return _accelerator_matmul(x, w, spec, jnp.dtype(dtype), out_dtype, x.dtype, w.dtype)
    if not _is_batched(spec):
        return _bf16_matmul_f32_out(x, w, spec, jnp.dtype(dtype), x.dtype, w.dtype, x_rematerialized)
    # Batched products (attention's q.k and weights.v): XLA CPU has no BF16 x BF16 = F32 kernel
    # for their backward layouts ("Unsupported element type for DotThunk"), so these keep JAX's
    # own backward. (The smell stem's per-group product fails even so, and stays f32.)
    return jnp.einsum(spec, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _accelerator_matmul(x, w, spec, dtype, out_dtype, x_dtype, w_dtype):
    """jnp.einsum's product and backward on accelerators, except that the weight's gradient is
    emitted in f32. JAX's own transpose gives it in the operand's dtype, bf16, and converts it to
    the f32 parameter's only after: XLA's SPMD partitioner sums the product's partial results
    over the batch shards right where the product is, so the gradient's all-reduce (or
    reduce-scatter under FSDP) ran in bf16 (the HLO: docs/performance.md, "Numerics on
    accelerators"). The backward products stay bf16 x bf16, accumulating in f32: the cotangent
    is cast to bf16 first, that of f32 logits too (JAX's own would multiply the f32 cotangent by
    the bf16 operand, an f32 product)."""
    return jnp.einsum(spec, x.astype(dtype), w.astype(dtype), preferred_element_type=out_dtype)


def _accelerator_fwd(x, w, spec, dtype, out_dtype, x_dtype, w_dtype):
    out = _accelerator_matmul(x, w, spec, dtype, out_dtype, x_dtype, w_dtype)
    return out, (x.astype(dtype), w.astype(dtype))


def _accelerator_bwd(spec, dtype, out_dtype, x_dtype, w_dtype, operands, cotangent):
    x, w = operands
    g = cotangent.astype(dtype)
    x_spec, w_spec, out = _split_spec(spec)
    dx = jnp.einsum(f"{out},{w_spec}->{x_spec}", g, w, preferred_element_type=dtype)
    dw = jnp.einsum(f"{x_spec},{out}->{w_spec}", x, g, preferred_element_type=jnp.float32)
    return dx.astype(x_dtype), dw.astype(w_dtype)


_accelerator_matmul.defvjp(_accelerator_fwd, _accelerator_bwd)


def _split_spec(spec: str) -> tuple[str, str, str]:
    """'x,w->out' -> (x, w, out)."""
    inputs, out = spec.split("->")
    x_spec, w_spec = inputs.split(",")
    return x_spec, w_spec, out


def _is_batched(spec: str) -> bool:
    """Does an index appear in both operands and the result (a batch dimension of the product)?"""
    x_spec, w_spec, out = _split_spec(spec.replace("...", ""))
    return bool(set(x_spec) & set(w_spec) & set(out))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _bf16_matmul_f32_out(x, w, spec, dtype, x_dtype, w_dtype, x_rematerialized):
    """Low-precision operands, f32 result, and the SAME in the backward pass. JAX's own transpose
    of an f32-result einsum multiplies the f32 cotangent by the bf16 operand, which XLA runs as an
    f32 matmul: the backward (2/3 of the FLOPs) then gains nothing from bf16. Here the cotangent
    is cast to the compute dtype first, which halved the forward + backward of the MLP's einsum
    on the CPU where it was measured (docs/performance.md, "Measurements behind code choices")."""
    return jnp.einsum(spec, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def _bf16_matmul_fwd(x, w, spec, dtype, x_dtype, w_dtype, x_rematerialized):
    out = _bf16_matmul_f32_out(x, w, spec, dtype, x_dtype, w_dtype, x_rematerialized)
    return out, (x.astype(dtype), w.astype(dtype))


def _bf16_matmul_bwd(spec, dtype, x_dtype, w_dtype, x_rematerialized, operands, cotangent):
    x, w = operands
    g = cotangent.astype(dtype)
    # Under remat, x is recomputed here (the MLP's GELU, say), and XLA CPU fused that into the
    # copy that transposed x for dw's product; with this barrier that copy, and the step, ran
    # faster. Since dw's product transposes the cotangent there instead (_weight_gradient), the
    # barrier has measured within noise. The figures: docs/performance.md, "Measurements behind
    # code choices".
    x = jax.lax.optimization_barrier(x)
    x_spec, w_spec, out = _split_spec(spec)
    dx = jnp.einsum(f"{out},{w_spec}->{x_spec}", g, w, preferred_element_type=jnp.float32)
    if x_rematerialized:
        dw = _weight_gradient(x, g, spec)
    else:  # XLA's own: see _weight_gradient
        dw = jnp.einsum(f"{x_spec},{out}->{w_spec}", x, g, preferred_element_type=jnp.float32)
    return dx.astype(x_dtype), dw.astype(w_dtype)


def transposed(a):
    """a.T of a matrix, written out row-major. XLA gives `a.T` a column-major layout, and XLA CPU
    runs a bf16 product (with XNNPACK) only on row-major operands, the left one contracting over
    its last dimension: otherwise it converts both operands to f32 first. Through a reshape, XLA
    writes the transpose out. (What that gained: docs/performance.md, "Measurements behind code
    choices".)"""
    return a[None].transpose(0, 2, 1).reshape(a.shape[1], a.shape[0])


def _weight_gradient(x, g, spec: str):
    """dw of einsum(spec, x, w) given the cotangent g, for an x recomputed in the backward pass.
    As matrices, x is [rows, contracted] and g [rows, kept] (rows: x's indices that w lacks), and
    dw sums x outer g over the rows: one product, for which one operand is transposed. Either x,
    giving dw as [contracted, kept] = x.T @ g, or g, giving [kept, contracted] = g.T @ x; this
    picks the one that writes out fewer elements, counting the transpose of dw when its order is
    not w's. XLA's own choice transposes x, and for the MLP's output projection that means the
    recomputed GELU, 4x wider than g: at base's shapes under remat this was faster, per layer and
    for the whole step. Where x is not recomputed, XLA's choice was the faster one, so `matmul`
    uses this only for a rematerialized x. The figures: docs/performance.md, "Measurements behind
    code choices"."""
    x_spec, w_spec, out = _split_spec(spec)
    if "..." in x_spec:
        named = "".join(chr(ord("A") + i) for i in range(x.ndim - len(x_spec) + 3))
        x_spec, out = x_spec.replace("...", named), out.replace("...", named)
    rows = "".join(i for i in x_spec if i not in w_spec)
    contracted = "".join(i for i in x_spec if i in w_spec)
    kept = "".join(i for i in w_spec if i not in x_spec)
    size = dict(zip(x_spec, x.shape)) | dict(zip(out, g.shape))
    count = lambda indices: int(np.prod([size[i] for i in indices]))  # noqa: E731
    x2 = jnp.einsum(f"{x_spec}->{rows}{contracted}", x).reshape(count(rows), count(contracted))
    g2 = jnp.einsum(f"{out}->{rows}{kept}", g).reshape(count(rows), count(kept))
    dw_size = count(contracted) * count(kept)
    if x2.size + dw_size * (w_spec != contracted + kept) <= g2.size + dw_size * (w_spec != kept + contracted):
        first, second = contracted, kept
        dw = jnp.dot(transposed(x2), g2, preferred_element_type=jnp.float32)
    else:
        first, second = kept, contracted
        dw = jnp.dot(transposed(g2), x2, preferred_element_type=jnp.float32)
    if w_spec != first + second and w_spec == second + first:
        dw, first, second = transposed(dw), second, first
    return jnp.einsum(f"{first}{second}->{w_spec}", dw.reshape([size[i] for i in first + second]))


_bf16_matmul_f32_out.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


class Dense(nnx.Module):
    def __init__(self, rngs, d_in: int, d_out: int, names=("embed", "mlp"), scale: float | None = None):
        self.kernel = param(rngs, (d_in, d_out), names, scale=scale if scale is not None else d_in ** -0.5)
        self.bias = param(rngs, (d_out,), (names[1],), init="zeros")

    def __call__(self, x, dtype=jnp.float32):
        return matmul(x, self.kernel[...], dtype, "...i,io->...o") + self.bias[...]


class LayerNorm(nnx.Module):
    def __init__(self, rngs, dim: int):
        self.scale = param(rngs, (dim,), ("embed",), init="ones")
        self.bias = param(rngs, (dim,), ("embed",), init="zeros")

    def __call__(self, x):
        return layer_norm(x, self.scale[...], self.bias[...])


def layer_norm(x, scale, bias, eps: float = 1e-6):
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias
