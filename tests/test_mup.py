"""muP's coordinate check: a few Adam steps move the transformer's output activations by the same
amount at every width under muP, and by more at larger widths under the standard parametrisation."""
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
