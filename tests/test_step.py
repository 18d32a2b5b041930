"""The compiled train step: a non-finite loss skips the update (and is counted), a finite one
applies it; the step compiles once for every mix of present modalities, and once for runs that
differ only in seed, learning rate or length."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from omni import parallel
from omni.bench import synthetic_batch
from omni.run.setup import build_setup, learning_rate, step_arguments
from tests.conftest import small_config


@pytest.fixture(scope="module")
def compiled():
    config = small_config()
    mesh = parallel.make_mesh((1, 1, 1))
    setup = build_setup(config, mesh)
    return setup, setup.compile_train_step(), synthetic_batch(config, setup)


def copy(tree):
    return jax.tree.map(jnp.array, tree)


def test_non_finite_step_is_skipped_and_counted(compiled):
    setup, step, batch = compiled
    state = setup.init_state()
    state["params"]["logit_scale"] = jnp.array(jnp.nan)   # poisons the contrastive loss (inf is clamped to 100)
    before = copy(state["params"])
    new_state, metrics = step(state, batch, setup.step_args)
    assert int(metrics["skipped"]) == 1 and int(new_state["bad_steps"]) == 1
    assert int(new_state["step"]) == 1                     # the data still moves on
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), new_state["params"], before)
    new_state, metrics = step(new_state, batch, setup.step_args)
    assert int(new_state["bad_steps"]) == 2


def test_finite_step_updates_and_resets_the_count(compiled):
    setup, step, batch = compiled
    state, _ = step(setup.init_state(), batch, setup.step_args)   # the first step's warmup learning rate is 0
    state["bad_steps"] = jnp.array(3, jnp.int32)
    before = copy(state["params"])
    new_state, metrics = step(state, batch, setup.step_args)
    assert int(metrics["skipped"]) == 0 and int(new_state["bad_steps"]) == 0
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new_state["params"], before))
    assert any(changed)


def test_one_compile_for_every_modality_mix(compiled):
    setup, step, batch = compiled
    state, _ = step(setup.init_state(), batch, setup.step_args)
    compiled_before = step._cache_size()
    for text, image in ((True, True), (True, False), (False, True)):
        mixed = {name: dict(sub) for name, sub in batch.items()}
        for sub in mixed.values():  # each sub-batch switches off what it holds
            for key, on in (("text/present", text), ("image/present", image)):
                if key in sub:
                    sub[key] = jnp.full_like(sub[key], on)
        state, _ = step(state, mixed, setup.step_args)
    assert step._cache_size() == compiled_before


@pytest.mark.parametrize("steps,warmup,min_lr_ratio", [(600, 60, 0.1), (3, 10, 0.1), (7, 0, 0.3), (400, 30, 0.0)])
def test_learning_rate_is_optax_warmup_cosine(steps, warmup, min_lr_ratio):
    """The traced schedule against optax's own, at every step and past the end. Not bit for bit:
    XLA folds optax's constants (count * (pi / decay) for pi * count / decay), which the traced
    numbers cannot be; they agree to float32 rounding (about one unit in the last place)."""
    config = small_config(f"--config.train.steps={steps}", f"--config.train.warmup_steps={warmup}",
                          "--config.train.lr=0.002", f"--config.train.min_lr_ratio={min_lr_ratio}")
    ramp = min(warmup, steps // 2)  # short runs still decay (omni.run.setup.step_arguments)
    reference = optax.warmup_cosine_decay_schedule(0.0, 0.002, ramp, max(steps, ramp + 1), 0.002 * min_lr_ratio)
    counts = jnp.arange(steps + 5, dtype=jnp.int32)
    want = np.asarray(jax.jit(jax.vmap(reference))(counts))
    got = np.asarray(jax.jit(jax.vmap(learning_rate, (0, None)))(counts, step_arguments(config)))
    # 1e-6 of the peak: where the cosine nears a floor of 0, a rounding of its cancellation is
    # large relative to the tiny value but not to the learning rates around it
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * 0.002)
    assert got[-1] == pytest.approx(0.002 * min_lr_ratio, rel=1e-6, abs=1e-6 * 0.002)


def test_runs_differing_in_seed_lr_or_length_share_one_program():
    """The persistent compilation cache keys on the program: seed and schedule are arguments, so
    these three runs lower to the same text, while a different batch size does not."""
    def lowered_text(*overrides):
        config = small_config(*overrides)
        setup = build_setup(config, parallel.make_mesh((1, 1, 1)))
        return setup.compile_train_step().lower(
            setup.abstract_state, synthetic_batch(config, setup), setup.step_args).as_text()

    base = lowered_text()
    assert lowered_text("--config.train.steps=17", "--config.train.lr=0.05", "--config.train.seed=3",
                        "--config.train.warmup_steps=2", "--config.train.min_lr_ratio=0.5") == base
    assert lowered_text("--config.train.batch_size=16") != base
