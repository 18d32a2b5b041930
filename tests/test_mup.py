"""muP's coordinate check: a few Adam steps move the transformer's output activations by the same
amount at every width under muP, and by more at larger widths under the standard parametrisation."""
import jax
import pytest

from omni.bench import coordinate_check, coordinate_growth
from tests.conftest import SMALL

WIDTHS = [32, 256]  # head count fixed, so head_dim grows 8x too
ONLY_CONTRASTIVE = ["--config.loss.mlm.weight=0", "--config.loss.mim.weight=0", "--config.loss.mmm.weight=0",
                    "--config.model.mup_base_width=32"]


@pytest.fixture(scope="module")
def growth():
    return {p: coordinate_growth(coordinate_check(WIDTHS, p, base_overrides=SMALL + ONLY_CONTRASTIVE))
            for p in ("sp", "mup")}


def test_standard_parametrisation_blows_up_with_width(growth):
    assert growth["sp"] >= 2.0, growth


def test_mup_stays_flat(growth):
    assert 0.67 <= growth["mup"] <= 1.5, growth


def test_mup_equals_sp_at_the_base_width():
    import jax
    import numpy as np
    from flax import nnx

    from omni.model import Omni
    from tests.conftest import small_config
    from tests.test_model import make_batch
    sp = Omni(small_config(), nnx.Rngs(params=0))
    mup = Omni(small_config("--config.model.parametrization=mup", "--config.model.mup_base_width=32"),
               nnx.Rngs(params=0))
    batch = make_batch(small_config(), 0, [True] * 8, [True] * 8)
    np.testing.assert_allclose(sp.embed("text", batch), mup.embed("text", batch), rtol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(sp)), nnx.to_pure_dict(nnx.state(mup)))


def _mup_config(width: int, *extra):
    from omni.config import load_config
    from tests.conftest import SMALL_ALL
    return load_config(None, [*SMALL_ALL, f"--config.model.width={width}", "--config.model.parametrization=mup",
                              "--config.model.mup_base_width=32", *extra])


def test_hidden_matrices_are_found_by_their_shapes_in_every_stem():
    """At twice the base width, every matrix with two dimensions that grow with the width gets half
    the learning rate: the transformer's, and the audio stem's second conv and frame projection
    (which a list of the transformer's names used to miss); inputs, read-outs and vectors keep it."""
    from flax import nnx

    from omni.model import Omni
    from omni.run.setup import mup_learning_rate_multipliers
    config = _mup_config(64)
    params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Omni(config, nnx.Rngs(params=0)))))
    multipliers = mup_learning_rate_multipliers(config, params)
    halved = {"/".join(key.key for key in path) for path, m in jax.tree_util.tree_leaves_with_path(multipliers)
              if m == 0.5}
    expected = {f"encoder/{w}" for w in ("wq", "wk", "wv", "wo", "w_in", "w_out")} | \
        {"stems/audio/conv2/kernel", "stems/audio/proj/kernel"}
    assert halved == expected


def test_readouts_start_at_the_base_width_std():
    """muP read-outs keep the base width's init std (the mup package's MuReadout); SP's shrinks
    as 1/sqrt(width). Width 128 = 4x the base of 32, 128 x 32 projection kernels."""
    import numpy as np
    from flax import nnx

    from omni.model import Omni
    from tests.conftest import small_config
    for parametrization, expected in (("mup", 32 ** -0.5), ("sp", 128 ** -0.5)):
        model = Omni(small_config("--config.model.width=128", f"--config.model.parametrization={parametrization}",
                                  "--config.model.mup_base_width=32"), nnx.Rngs(params=0))
        for kernel in (model.projections["text"].kernel, model.stems["image"].head.kernel):
            np.testing.assert_allclose(np.std(np.asarray(kernel[...])), expected, rtol=0.05)


@pytest.mark.parametrize("rule", ["width_independent", "with_lr"])
def test_hidden_matrix_decay_per_step_against_the_formula(rule):
    """One AdamW step at the peak learning rate lr on a hidden matrix W (muP multiplier 1/m = 0.5)
    with gradient G: Adam's first step is sign(G), so the update is -lr * (0.5 sign(G) + wd W) when
    the decay is width-independent (the mup package's MuAdamW: lr / m, weight_decay * m), and
    -lr * 0.5 * (sign(G) + wd W) when it is scaled with the Adam step. A vector gets no decay."""
    import jax.numpy as jnp
    import numpy as np

    from omni.run.setup import make_optimizer
    lr, wd = 0.1, 0.05
    config = _mup_config(64, f"--config.train.lr={lr}", f"--config.train.weight_decay={wd}",
                         "--config.train.warmup_steps=0", "--config.train.grad_clip=1e9",
                         f"--config.train.mup_decay={rule}")
    params = {"w": jnp.full((4, 4), 2.0), "b": jnp.full((4,), 2.0)}
    grads = {"w": jnp.full((4, 4), -3.0), "b": jnp.full((4,), 5.0)}
    tx = make_optimizer(config, {"w": 0.5, "b": 1.0})
    updates, _ = tx.update(grads, tx.init(params), params)
    expected_w = -lr * (0.5 * -1.0 + wd * 2.0) if rule == "width_independent" else -lr * 0.5 * (-1.0 + wd * 2.0)
    np.testing.assert_allclose(np.asarray(updates["w"]), expected_w, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(updates["b"]), -lr * 1.0, rtol=1e-5)


def test_an_unknown_decay_rule_names_the_key():
    from omni.config import ConfigError
    from omni.run.setup import make_optimizer
    with pytest.raises(ConfigError, match="train.mup_decay"):
        make_optimizer(_mup_config(64, "--config.train.mup_decay=never"), {"w": 0.5})
