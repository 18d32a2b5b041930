"""The compiled train step: a non-finite loss skips the update (and is counted), a finite one
applies it; the step compiles once for every mix of present modalities."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni import parallel
from omni.bench import synthetic_batch
from omni.run.setup import build_setup
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
    state["params"]["logit_scale"] = jnp.array(jnp.inf)   # poisons the contrastive loss
    before = copy(state["params"])
    new_state, metrics = step(state, batch)
    assert int(metrics["skipped"]) == 1 and int(new_state["bad_steps"]) == 1
    assert int(new_state["step"]) == 1                     # the data still moves on
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), new_state["params"], before)
    new_state, metrics = step(new_state, batch)
    assert int(new_state["bad_steps"]) == 2


def test_finite_step_updates_and_resets_the_count(compiled):
    setup, step, batch = compiled
    state, _ = step(setup.init_state(), batch)   # the first step's warmup learning rate is 0
    state["bad_steps"] = jnp.array(3, jnp.int32)
    before = copy(state["params"])
    new_state, metrics = step(state, batch)
    assert int(metrics["skipped"]) == 0 and int(new_state["bad_steps"]) == 0
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new_state["params"], before))
    assert any(changed)


def test_one_compile_for_every_modality_mix(compiled):
    setup, step, batch = compiled
    state, _ = step(setup.init_state(), batch)
    compiled_before = step._cache_size()
    for text, image in ((True, True), (True, False), (False, True)):
        mixed = dict(batch)
        mixed["text/present"] = jnp.full_like(batch["text/present"], text)
        mixed["image/present"] = jnp.full_like(batch["image/present"], image)
        state, _ = step(state, mixed)
    assert step._cache_size() == compiled_before
