"""The encoder's token compaction (model.token_capacity; omni/transformer.py, omni/run/capacity.py):
the token-wise work runs on the rows that hold valid tokens, and nothing at a valid token changes."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omni.config import load_config
from omni.transformer import Transformer
from tests.conftest import SMALL_ALL
from tests.test_parallel import run_worker


def sequences(seed=0):
    """Three passes of different shapes, about 60% of their tokens valid, the first of each row always."""
    rng = np.random.default_rng(seed)
    out = []
    for rows, length in ((4, 10), (6, 17), (2, 5)):
        valid = rng.random((rows, length)) < 0.6
        valid[:, 0] = True
        out.append((jnp.asarray(rng.standard_normal((rows, length, 32)), jnp.float32), jnp.asarray(valid)))
    return out


def transformer(capacity: float) -> Transformer:
    return Transformer(load_config(None, SMALL_ALL + [f"--config.model.token_capacity={capacity}"]), nnx.Rngs(0))


def loss(model, passes):
    return sum(jnp.sum(jnp.where(v[..., None], out, 0.0) ** 2) for (_, v), out in zip(passes, model.run(passes)))


def test_compacted_passes_equal_the_full_ones_at_every_valid_token():
    passes = sequences()
    full, full_counts = transformer(1.0).run(passes, counts=True)
    compact, counts = transformer(0.75).run(passes, counts=True)
    assert float(counts["encoder_slots"]) == float(full_counts["encoder_rows"]) == 4 * 10 + 6 * 17 + 2 * 5
    assert float(counts["encoder_rows"]) == 120  # 0.75 of 152 slots, rounded up to a multiple of 8
    assert float(counts["encoder_tokens"]) <= 120
    for (_, valid), a, b in zip(passes, full, compact):
        np.testing.assert_allclose(np.asarray(b)[np.asarray(valid)], np.asarray(a)[np.asarray(valid)], rtol=1e-5, atol=1e-5)
    grads = [nnx.state(nnx.grad(loss)(transformer(c), passes)) for c in (1.0, 0.75)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * float(np.abs(a).max()))


def test_a_step_whose_valid_tokens_do_not_fit_runs_every_slot():
    passes = sequences()
    valid_share = sum(float(jnp.sum(v)) for _, v in passes) / 152
    assert valid_share > 0.3
    full = transformer(1.0).run(passes)
    out, counts = transformer(0.3).run(passes, counts=True)
    assert float(counts["encoder_rows"]) == 152
    for (_, valid), a, b in zip(passes, full, out):
        np.testing.assert_allclose(np.asarray(b)[np.asarray(valid)], np.asarray(a)[np.asarray(valid)], rtol=1e-5, atol=1e-5)


def test_measured_capacity_on_an_eight_device_mesh_changes_neither_loss_nor_gradient():
    """The capacity is measured per batch shard of a 2 x 2 x 2 mesh (data, FSDP, tensor) on real
    default data; the step computes fewer rows and gives the same loss and gradient norm as with
    compaction off."""
    runs = run_worker("tests.capacity_worker", "2x2x2")
    compact, full = runs["0"], runs["1.0"]
    assert 0 < compact["capacity"] < 1 and full["capacity"] == 1.0
    assert compact["rows"] < compact["slots"] == full["slots"] == full["rows"]
    assert abs(compact["loss"] - full["loss"]) <= 1e-5 * abs(full["loss"])
    assert abs(compact["grad_norm"] - full["grad_norm"]) <= 1e-5 * full["grad_norm"]


def test_the_fallback_gives_the_full_layouts_gradient():
    passes = sequences()
    assert float(transformer(0.3).run(passes, counts=True)[1]["encoder_rows"]) == 152  # it falls back
    grads = [nnx.state(nnx.grad(loss)(transformer(c), passes)) for c in (1.0, 0.3)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * float(np.abs(a).max()))


def residual_elements(capacity, passes) -> int:
    """Elements of what the backward pass keeps from the forward pass (jax.vjp's residuals)."""
    graphdef, state = nnx.split(transformer(capacity))
    _, backward = jax.vjp(lambda state: loss(nnx.merge(graphdef, state), passes), state)
    return sum(leaf.size for leaf in jax.tree.leaves(backward))


def test_a_compacted_step_keeps_no_activations_of_the_full_layout():
    """Both branches of the cond return the same residuals. The fallback recomputes its layers in
    the backward pass, so the compacted branch does not also return zeros for every activation
    that the full layout would keep: a compacted step keeps less than an uncompacted one."""
    rng = np.random.default_rng(1)
    passes = [(jnp.asarray(rng.standard_normal((8, 96, 32)), jnp.float32), jnp.asarray(rng.random((8, 96)) < 0.4))]
    compact, full = residual_elements(0.5, passes), residual_elements(1.0, passes)
    assert compact < full, (compact, full)
