"""Attention masks: absent modalities and padding change nothing; the fused pass reduces to the
unimodal one when only one modality is present."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from omni import objectives
from omni.model import Omni
from tests.conftest import small_config


@pytest.fixture(scope="module")
def setup():
    config = small_config()
    model = Omni(config, nnx.Rngs(params=0))
    graphdef, state = nnx.split(model)
    return config, graphdef, nnx.to_pure_dict(state)


def make_batch(config, seed, text_present, image_present):
    rng = np.random.default_rng(seed)
    b, length, size = config.train.batch_size, config.modalities.text.max_len, config.modalities.image.size
    ids = rng.integers(4, config.modalities.text.vocab_size, (b, length)).astype(np.int32)
    ids[:, length - 3:] = 0  # padding
    return {
        "text/ids": ids, "text/present": np.asarray(text_present),
        "image/pixels": rng.integers(0, 256, (b, size, size, 3)).astype(np.uint8),
        "image/present": np.asarray(image_present),
    }


def loss_and_grads(setup, batch):
    config, graphdef, params = setup

    def f(p):
        return objectives.total_loss(nnx.merge(graphdef, p), batch, jax.random.key(0), config)

    (loss, metrics), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
    return metrics, grads


def test_absent_modality_content_changes_no_loss_and_no_gradient(setup):
    config = setup[0]
    b = config.train.batch_size
    text_present = np.array([True] * b)
    image_present = np.array([i % 2 == 0 for i in range(b)])   # odd rows: text only
    batch = make_batch(config, 0, text_present, image_present)
    other = dict(batch)
    pixels = batch["image/pixels"].copy()
    pixels[~image_present] = np.random.default_rng(9).integers(0, 256, pixels[~image_present].shape)
    other["image/pixels"] = pixels
    m1, g1 = loss_and_grads(setup, batch)
    m2, g2 = loss_and_grads(setup, other)
    for key in m1:
        assert float(m1[key]) == float(m2[key]), key
    jax.tree.map(lambda a, c: np.testing.assert_array_equal(a, c), g1, g2)
    # And the absent rows really were different inputs: changing a PRESENT row changes the loss.
    third = dict(batch)
    pixels = batch["image/pixels"].copy()
    pixels[0] = 255 - pixels[0]
    third["image/pixels"] = pixels
    m3, _ = loss_and_grads(setup, third)
    assert float(m3["loss"]) != float(m1["loss"])


def test_text_padding_content_changes_nothing(setup):
    config = setup[0]
    b = config.train.batch_size
    batch = make_batch(config, 1, [True] * b, [True] * b)
    other = dict(batch)
    # Writing into padding makes it non-padding, so instead mark a whole text ABSENT and scramble it.
    batch["text/present"] = np.array([i != 3 for i in range(b)])
    other["text/present"] = batch["text/present"]
    ids = batch["text/ids"].copy()
    ids[3] = np.random.default_rng(5).integers(4, 300, ids.shape[1])
    other["text/ids"] = ids
    m1, g1 = loss_and_grads(setup, batch)
    m2, g2 = loss_and_grads(setup, other)
    assert float(m1["loss"]) == float(m2["loss"])
    jax.tree.map(lambda a, c: np.testing.assert_array_equal(a, c), g1, g2)


def test_fully_absent_modality_gets_zero_gradient(setup):
    config = setup[0]
    b = config.train.batch_size
    batch = make_batch(config, 2, [True] * b, [False] * b)
    metrics, grads = loss_and_grads(setup, batch)
    assert float(metrics["loss/contrastive"]) == 0.0 and float(metrics["loss/mim"]) == 0.0
    for leaf in jax.tree.leaves(grads["stems"]["image"]):
        assert float(jnp.abs(leaf).max()) == 0.0
    assert float(jnp.abs(grads["stems"]["text"]["tokens"]).max()) > 0.0


def test_fused_pass_with_one_modality_equals_unimodal_pass(setup):
    config, graphdef, params = setup
    model = nnx.merge(graphdef, params)
    b = config.train.batch_size
    batch = make_batch(config, 3, [True] * b, [False] * b)
    tokens, valid = model.stems["text"].embed(batch, jnp.float32)
    x, v = model.sequence("text", tokens, valid, jnp.ones(b, bool))
    alone = model.final_norm(model.encoder(x, v))[:, 1:]
    image_tokens, image_valid = model.stems["image"].embed(batch, jnp.float32)
    fused = model.fused({"text": (x, v),
                         "image": model.sequence("image", image_tokens, image_valid, jnp.zeros(b, bool))})
    real = np.asarray(valid)
    np.testing.assert_allclose(np.asarray(fused["text"])[real], np.asarray(alone)[real], rtol=1e-5, atol=1e-5)


def test_scan_and_loop_layers_agree():
    config = small_config()
    scan_model = Omni(config, nnx.Rngs(params=0))
    loop_config = small_config("--config.model.scan_layers=false", "--config.model.remat=full")
    loop_model = Omni(loop_config, nnx.Rngs(params=0))
    batch = make_batch(config, 4, [True] * 8, [True] * 8)
    np.testing.assert_allclose(scan_model.embed("image", batch), loop_model.embed("image", batch), rtol=1e-5, atol=1e-6)


def test_siglip_bias_starts_at_the_batch_prior():
    """b0 = -log B: with zero similarity a pair's sigmoid is 1/(B+1), about the 1-in-B share of
    positives; at SigLIP's 32k batch it is the paper's -10 (to within 0.5)."""
    import copy
    import math
    from omni.model import siglip_initial_bias
    config = small_config("--config.loss.contrastive.kind=siglip")
    bias = float(Omni(config, nnx.Rngs(params=0)).logit_bias[...])
    batch = config.train.batch_size
    assert bias == pytest.approx(-math.log(batch))
    assert jax.nn.sigmoid(bias) == pytest.approx(1 / (batch + 1))
    big = copy.deepcopy(config)
    big.train.batch_size = 32768
    assert abs(siglip_initial_bias(big) - (-10.0)) < 0.5


@pytest.mark.parametrize("attention, length", [("xla", 11), ("blocked", 300)])
def test_other_attentions_equal_the_written_out_one(attention, length, monkeypatch):
    """xla: jax.nn.dot_product_attention on each example's valid tokens moved to the front, masked
    by a length (the form cuDNN's flash kernel takes; an odd length is padded). blocked: per
    (example, head) in blocks of queries (300 tokens: 2 blocks of 150, by a smaller tile). Outputs
    and gradients must equal the einsum path's, with invalid tokens scattered through the
    sequence and one example without any valid token."""
    from omni import attention as attention_module
    from omni.transformer import Transformer
    monkeypatch.setattr(attention_module, "TILE_SCORES", 300 * 150)
    assert attention_module.query_block(300) == 150
    config = small_config()
    reference = Transformer(config, nnx.Rngs(params=0))
    library = Transformer(small_config(f"--config.model.attention={attention}"), nnx.Rngs(params=0))
    rng = np.random.default_rng(0)
    batch, width = 3, config.model.width
    x = jnp.asarray(rng.normal(size=(batch, length, width)), jnp.float32)
    valid = rng.random((batch, length)) < 0.6
    valid[0, :] = True
    valid[1, [0, 3, 4, 9]] = False
    valid[2, :] = False  # an absent modality: its outputs are never used, and are not compared
    valid = jnp.asarray(valid)

    def loss(model, x):
        return jnp.sum(jnp.sin(model(x, valid)[:2]))  # only the examples with valid tokens

    outputs = [np.asarray(m(x, valid)[:2]) for m in (reference, library)]
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    grads = [nnx.grad(loss, argnums=(0, 1))(m, x) for m in (reference, library)]
    for got, want in zip(jax.tree.leaves(grads[1]), jax.tree.leaves(grads[0])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # the comparison can fail: without its mask, the written-out path gives other outputs
    unmasked = np.asarray(reference(x, jnp.ones_like(valid))[:2])
    assert not np.allclose(unmasked, outputs[0], rtol=1e-3, atol=1e-3)
