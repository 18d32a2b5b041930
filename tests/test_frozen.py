"""A configured modality that no sub-batch holds: its parameters and optimizer slots leave the
step exactly as they entered it (no gradient reaches them, and no weight decay shrinks them),
while everything the step does train moves (omni.run.frozen)."""
import jax
import numpy as np

from omni import parallel
from omni.config import load_config
from omni.bench import synthetic_batch
from omni.run.frozen import _collect, frozen_mask
from omni.run.setup import build_setup
from tests.conftest import SMALL_ALL


def test_an_absent_modality_is_left_as_it_was_and_the_rest_trains():
    config = load_config(None, SMALL_ALL + ["--config.modalities=text,image,smell",
                                            "--config.data.mixture=image+text=4,text=4",
                                            "--config.train.weight_decay=0.5"])  # a decay one step shows
    setup = build_setup(config, parallel.make_mesh((1, 1, 1)))
    step = setup.compile_train_step()
    state = setup.init_state()
    before = jax.tree.map(np.asarray, state)
    batch = synthetic_batch(config, setup)
    after, _ = step(step(state, batch, setup.step_args)[0], batch, setup.step_args)  # the first step's lr is 0
    after = jax.tree.map(np.asarray, after)
    frozen = frozen_mask(before["params"], ["smell"])
    assert sum(jax.tree.leaves(frozen)) >= 3  # the smell stem's leaves and its projection
    params_def = jax.tree.structure(before["params"])
    pairs = [(before["params"], after["params"])] + list(zip(_collect(before["opt_state"], params_def),
                                                              _collect(after["opt_state"], params_def)))
    assert len(pairs) == 3  # the params, Adam's mu and nu
    for old_tree, new_tree in pairs:
        for old, new, is_frozen in zip(jax.tree.leaves(old_tree), jax.tree.leaves(new_tree), jax.tree.leaves(frozen)):
            if is_frozen:
                np.testing.assert_array_equal(new, old)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(before["params"])]
    still = [path for path, o, n, f in zip(paths, jax.tree.leaves(before["params"]), jax.tree.leaves(after["params"]),
                                           jax.tree.leaves(frozen)) if not f and np.array_equal(o, n)]
    assert still == ["['logit_bias']"], still  # InfoNCE has no bias: only SigLIP trains it
