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


def model_matmul(dtype: str):
    """`omni.nn.matmul` of a [m, k] activation by a [k, n] weight in the compute `dtype`, compiled."""
    dt = jnp.dtype(dtype)
    return jax.jit(lambda x, w: matmul(x, w, dt, "ij,jk->ik"))


def timed(f, x, w, calls: int = 1) -> float:
    """Seconds per call of `calls` calls of f(x, w) back to back."""
    start = time.perf_counter()
    for _ in range(calls):
        out = f(x, w)
    out.block_until_ready()
    return (time.perf_counter() - start) / calls


def measure_peak_flops(dtype: str, shapes=None, repeats: int = 10, warmup_s: float = 0.5,
                       cpu_measure_s: float = 2.0) -> float:
    """Peak FLOP/s of `omni.nn.matmul` in the compute dtype: over `shapes`, the best of each one's
    best timing.

    The operands are random (constant ones or zeros can run faster on a GPU than real data does)
    and already in the compute dtype, so the cast inside `matmul` costs nothing. The shapes take
    turns: first for `warmup_s` untimed (a process's first products run below its later ones),
    then timed, round after round, for at least `repeats` rounds and, on a CPU, `cpu_measure_s`.
    Taking turns spreads each shape's timings over the whole measurement, so that a burst of
    other work on the machine cannot spoil all the timings of one shape. An accelerator's 8192^3
    product takes milliseconds, so each of its timings covers 20 calls back to back (one call's
    dispatch and sync would otherwise count against the peak and flatter the MFU)."""
    on_cpu = jax.default_backend() == "cpu"
    shapes = shapes or (CPU_SHAPES if on_cpu else ACCELERATOR_SHAPES)
    calls = 1 if on_cpu else 20
    f = model_matmul(dtype)
    rng = np.random.default_rng(0)
    operands = []
    for m, k, n in shapes:
        x = jnp.asarray(rng.standard_normal((m, k), np.float32), jnp.dtype(dtype))
        w = jnp.asarray(rng.standard_normal((k, n), np.float32), jnp.dtype(dtype))
        f(x, w).block_until_ready()  # compiled here, outside the timings
        operands.append((x, w))
    warm_until = time.perf_counter() + warmup_s
    while time.perf_counter() < warm_until:
        for x, w in operands:
            f(x, w).block_until_ready()
    best = [float("inf")] * len(shapes)
    rounds, measure_until = 0, time.perf_counter() + (cpu_measure_s if on_cpu else 0.0)
    while rounds < repeats or time.perf_counter() < measure_until:
        rounds += 1
        for i, (x, w) in enumerate(operands):
            best[i] = min(best[i], timed(f, x, w, calls))
    return max(2 * m * k * n / t for (m, k, n), t in zip(shapes, best))
