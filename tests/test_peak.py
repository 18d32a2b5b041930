"""The peak that MFU divides by (omni.peak) is at least what the model's own matmul reaches on a
model-shaped product in the same process, so the MFU of a matmul-only workload cannot read
above 1. (That two processes agree within 20% is measured by hand on an idle machine,
docs/performance.md "The peak MFU divides by": under this suite's parallel workers the other
worker's load would decide it.)"""
import statistics

import jax
import numpy as np
import pytest

from omni.peak import measure_peak_flops, model_matmul, timed

# openclip_small's MLP input projection: 32 examples x 65 tokens of width 512, into 2048
MODEL_SHAPE = (32 * 65, 512, 2048)


def model_shaped_flops_per_s(dtype: str, times: int = 5) -> float:
    """FLOP/s of omni.nn.matmul on MODEL_SHAPE, as a few training steps would see it: compiled and
    run once, then the median of `times` calls."""
    m, k, n = MODEL_SHAPE
    rng = np.random.default_rng(1)
    x = jax.numpy.asarray(rng.standard_normal((m, k), np.float32), dtype)
    w = jax.numpy.asarray(rng.standard_normal((k, n), np.float32), dtype)
    f = model_matmul(dtype)
    f(x, w).block_until_ready()
    return 2 * m * k * n / statistics.median(timed(f, x, w) for _ in range(times))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_the_peak_is_at_least_a_model_shaped_product(dtype):
    # Timed before and after the peak: for the peak to fall below both, the machine would have to
    # be busy all through the peak's measurement and idle on both sides of it.
    before = model_shaped_flops_per_s(dtype)
    peak = measure_peak_flops(dtype, cpu_measure_s=1.0)
    after = model_shaped_flops_per_s(dtype)
    assert peak >= min(before, after), (peak, before, after)
