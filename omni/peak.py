"""The device's peak FLOP/s, the denominator of MFU (model FLOPs utilisation): measured, in the
process that reports the MFU, by timing products that take the same path as the model's own.

Every product of the model with a weight goes through `omni.nn.matmul`, so the peak does too: on
a CPU in bf16 that is the custom-VJP bf16 x bf16 -> f32 product, elsewhere XLA's dot. A peak
timed on some other product (a `jnp.matmul` of another shape, say) can run slower than the
model's products, and then a step made only of them would read an MFU above 1.
docs/performance.md, "The peak MFU divides by", has the measurements behind the choices here.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from omni.nn import matmul

# (rows, contracted, columns) of the timed products. On a CPU: two squares, and a tall-skinny
# product like the model's projections ([tokens, width] x [width, 4 x width]); the best of them
# is the peak. On an accelerator one product of 8192^3 reaches the peak.
CPU_SHAPES = ((1024, 1024, 1024), (2048, 2048, 2048), (8192, 512, 2048))
ACCELERATOR_SHAPES = ((8192, 8192, 8192),)


def matmul_flops_per_s(f, x, w, calls: int, repeats: int, warmup_s: float, measure_s: float) -> float:
    """FLOP/s of `f(x, w)` (compiled, [m, k] x [k, n]): run it for `warmup_s`, then keep the best
    of at least `repeats` timings (and as many more as fit in `measure_s`), each of `calls` calls
    back to back."""
    f(x, w).block_until_ready()
    warm_until = time.perf_counter() + warmup_s
    while time.perf_counter() < warm_until:
        f(x, w).block_until_ready()
    best, timings = float("inf"), 0
    measure_until = time.perf_counter() + measure_s
    while timings < repeats or time.perf_counter() < measure_until:
        timings += 1
        start = time.perf_counter()
        for _ in range(calls):
            out = f(x, w)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - start) / calls)
    (m, k), n = x.shape, w.shape[1]
    return 2 * m * k * n / best


def model_matmul(dtype: str):
    """`omni.nn.matmul` of a [m, k] activation by a [k, n] weight in the compute `dtype`, compiled."""
    dt = jnp.dtype(dtype)
    return jax.jit(lambda x, w: matmul(x, w, dt, "ij,jk->ik"))


def measure_peak_flops(dtype: str, shapes=None, repeats: int = 3, warmup_s: float = 0.5,
                       cpu_measure_s: float = 2.0) -> float:
    """Peak FLOP/s of `omni.nn.matmul` in the compute dtype: the best over `shapes` of the best
    timing of each.

    The operands are random (constant ones or zeros can run faster on a GPU than real data does)
    and already in the compute dtype, so the cast inside `matmul` costs nothing. A CPU runs the
    products for `warmup_s` in all (split over the shapes) before timing them, because a
    process's first timings run below its later ones, and keeps timing for `cpu_measure_s` in
    all. An accelerator's 8192^3 product takes milliseconds, so each of its timings covers 20
    calls back to back (one call's dispatch and sync would otherwise count against the peak and
    flatter the MFU)."""
    on_cpu = jax.default_backend() == "cpu"
    shapes = shapes or (CPU_SHAPES if on_cpu else ACCELERATOR_SHAPES)
    calls = 1 if on_cpu else 20
    f = model_matmul(dtype)
    best = 0.0
    rng = np.random.default_rng(0)
    for m, k, n in shapes:
        x = jnp.asarray(rng.standard_normal((m, k), np.float32), jnp.dtype(dtype))
        w = jnp.asarray(rng.standard_normal((k, n), np.float32), jnp.dtype(dtype))
        best = max(best, matmul_flops_per_s(f, x, w, calls, repeats, warmup_s / len(shapes),
                                            (cpu_measure_s if on_cpu else 0.0) / len(shapes)))
    return best
