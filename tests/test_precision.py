"""bf16 compute on CPU: the backward products are bf16 x bf16 -> f32 too (omni.nn.matmul),
with the gradients the f32 formulas give on the bf16-rounded operands, and the whole bf16 train
step compiles and runs on XLA CPU (some batched layouts have no such kernel there)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni import parallel
from omni.bench import synthetic_batch
from omni.nn import matmul
from omni.run.setup import build_setup
from tests.conftest import SMALL_ALL, small_config


def rounded(a):
    return np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32))


@pytest.mark.parametrize("spec,x_shape,w_shape", [
    ("btd,df->btf", (2, 5, 8), (8, 12)),
    ("btd,dhk->bthk", (2, 5, 8), (8, 3, 4)),
    ("bqhk,hkd->bqd", (2, 5, 3, 4), (3, 4, 8)),
    # with x rematerialized, dw's product transposes whichever of x and the cotangent writes out
    # fewer elements:
    ("btf,fd->btd", (2, 50, 16), (16, 4)),  # the cotangent, then dw [d, f] back to [f, d]
    ("bld,vd->blv", (2, 5, 4), (16, 4)),  # x, then dw [d, v] to w's order [v, d]
    ("bld,vd->blv", (2, 50, 4), (3, 4)),  # the cotangent, giving dw in w's order [v, d]
    ("...i,io->...o", (2, 3, 5, 8), (8, 6)),
])
@pytest.mark.parametrize("x_rematerialized", [False, True])
def test_bf16_backward_is_the_f32_formula_on_rounded_operands(spec, x_shape, w_shape, x_rematerialized):
    rng = np.random.default_rng(0)
    x = rng.normal(size=x_shape).astype(np.float32)
    w = rng.normal(size=w_shape).astype(np.float32)
    out_shape = jax.eval_shape(lambda a, b: jnp.einsum(spec, a, b), x, w).shape
    cotangent = rng.normal(size=out_shape).astype(np.float32)

    out, vjp = jax.vjp(lambda a, b: matmul(a, b, jnp.bfloat16, spec, x_rematerialized), x, w)
    dx, dw = vjp(jnp.asarray(cotangent))
    assert out.dtype == dx.dtype == dw.dtype == jnp.float32

    # The reference: the same products in f32 (numpy) on the values rounded to bf16.
    leading = len(x_shape) - len(spec.split(",")[0].replace("...", ""))
    spec = spec.replace("...", "ABCD"[:leading])  # numpy sums no '...' away
    inputs, result = spec.split("->")
    x_spec, w_spec = inputs.split(",")
    xr, wr, gr = rounded(x), rounded(w), rounded(cotangent)
    np.testing.assert_allclose(out, np.einsum(spec, xr, wr), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, np.einsum(f"{result},{w_spec}->{x_spec}", gr, wr), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, np.einsum(f"{x_spec},{result}->{w_spec}", xr, gr), rtol=1e-5, atol=1e-5)
    # ...which is not what the f32 cotangent gives: the backward really ran in bf16.
    assert not np.allclose(dx, np.einsum(f"{result},{w_spec}->{x_spec}", cotangent, wr), rtol=1e-5, atol=1e-5)


def second_step(config) -> dict:
    """The metrics of the second of two steps on one synthetic batch (warmup's lr is 0 at step 0)."""
    mesh = parallel.make_mesh((1, 1, 1))
    setup = build_setup(config, mesh)
    with jax.set_mesh(mesh):
        step = setup.compile_train_step()
        batch = synthetic_batch(config, setup)
        state, _ = step(setup.init_state(), batch, setup.step_args)
        _, metrics = step(state, batch, setup.step_args)
    assert int(metrics["skipped"]) == 0
    return metrics


def test_bf16_train_step_runs_and_tracks_f32():
    """All five modalities, same init and batch: the bf16 step compiles and runs on XLA CPU (the
    smell stem's batched product once failed there), and its loss is within bf16 rounding of the
    f32 step's. On text and images, so is the loss with a bf16 residual stream
    (model.residual_dtype), which does change the numbers (the option takes effect)."""
    from omni.config import load_config
    losses = {}
    for dtype in ("float32", "bfloat16"):
        # one sub-batch holding all five: every stem and the fused pass, in 6 passes instead of 11
        config = load_config(None, [*SMALL_ALL, f"--config.model.dtype={dtype}",
                                    "--config.data.mixture=text+image+audio+video+smell=8"])
        losses[dtype] = float(second_step(config)["loss"])
    assert np.isfinite(losses["bfloat16"])
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=2e-2)

    residual = {}
    for stream in ("float32", "bfloat16"):
        config = small_config("--config.model.dtype=bfloat16", f"--config.model.residual_dtype={stream}",
                              "--config.data.mixture=image+text=8")
        residual[stream] = float(second_step(config)["loss"])
    assert residual["bfloat16"] == pytest.approx(residual["float32"], rel=2e-2)
    assert residual["bfloat16"] != residual["float32"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dots_remat_keeps_the_projection_outputs(dtype, capsys):
    """remat="dots" keeps the outputs of a layer's projections for the backward pass (q, k, v and
    the MLP's input projection at least), in bf16 too, whose CPU matmul is a custom_vjp that JAX's
    own policy does not take for a dot; remat="full" keeps none of them."""
    from flax import nnx
    from jax.ad_checkpoint import print_saved_residuals

    from omni.transformer import Transformer

    def saved_projection_outputs(remat):
        config = small_config(f"--config.model.dtype={dtype}", f"--config.model.remat={remat}",
                              "--config.model.depth=1", "--config.model.scan_layers=false")
        transformer = Transformer(config, nnx.Rngs(0))
        x = jnp.ones((2, 5, config.model.width))
        valid = jnp.ones((2, 5), bool)
        capsys.readouterr()
        print_saved_residuals(lambda h: transformer(h, valid), x)  # one line per saved value
        saved = capsys.readouterr().out.splitlines()
        return [line for line in saved if "dot_general" in line or "custom_vjp_call" in line]

    assert len(saved_projection_outputs("dots")) >= 4
    assert saved_projection_outputs("full") == []
