"""The peak that MFU divides by (omni.peak) is timed on the model's own product, omni.nn.matmul,
in the compute dtype. Checked by what it calls, not by timing: a timed comparison with a
model-shaped product measured the machine's other load instead (docs/performance.md, "The peak
MFU divides by", where two processes' peaks are measured on an idle machine)."""
import math

import jax.numpy as jnp
import pytest

from omni import nn, peak


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_the_peak_times_the_models_own_matmul(dtype, monkeypatch):
    calls = []

    def recorded(x, w, compute_dtype, spec, **kwargs):
        calls.append((x.dtype, w.dtype, compute_dtype, spec))
        return nn.matmul(x, w, compute_dtype, spec, **kwargs)

    monkeypatch.setattr(peak, "matmul", recorded)
    shapes = ((64, 32, 48), (96, 16, 32))
    flops = peak.measure_peak_flops(dtype, shapes=shapes, repeats=2, warmup_s=0.0, cpu_measure_s=0.0)
    assert math.isfinite(flops) and flops > 0
    # traced once per shape, with operands already in the compute dtype (so the cast is free)
    assert calls == [(jnp.dtype(dtype), jnp.dtype(dtype), jnp.dtype(dtype), "ij,jk->ik")] * len(shapes)
