"""Each loss against a formula written out here with plain loops on a small input."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from omni.contrastive import MAX_LOG_SCALE, infonce_loss, siglip_loss
from omni.objectives import safe_mean


def _unit_rows(rng, n, d):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def test_siglip_matches_formula_with_invalid_rows():
    rng = np.random.default_rng(0)
    za, zb = _unit_rows(rng, 5, 4), _unit_rows(rng, 5, 4)
    valid = np.array([True, True, False, True, True])
    t, b = math.log(10.0), -10.0
    total, n = 0.0, valid.sum()
    for i in range(5):
        for j in range(5):
            if valid[i] and valid[j]:
                label = 1.0 if i == j else -1.0
                total += _log_sigmoid(label * (math.exp(t) * float(za[i] @ zb[j]) + b))
    expected = -total / n
    got = siglip_loss(jnp.asarray(za), jnp.asarray(zb), t, b, jnp.asarray(valid))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_infonce_matches_formula_with_invalid_rows():
    rng = np.random.default_rng(1)
    za, zb = _unit_rows(rng, 4, 3), _unit_rows(rng, 4, 3)
    valid = np.array([True, False, True, True])
    t = math.log(1 / 0.07)
    idx = [i for i in range(4) if valid[i]]
    logits = {(i, j): math.exp(t) * float(za[i] @ zb[j]) for i in idx for j in idx}
    per_row = []
    for i in idx:
        a_to_b = -logits[i, i] + math.log(sum(math.exp(logits[i, j]) for j in idx))
        b_to_a = -logits[i, i] + math.log(sum(math.exp(logits[j, i]) for j in idx))
        per_row.append(0.5 * (a_to_b + b_to_a))
    got = infonce_loss(jnp.asarray(za), jnp.asarray(zb), t, jnp.asarray(valid))
    np.testing.assert_allclose(float(got), np.mean(per_row), rtol=1e-5)


def test_no_valid_pair_gives_exact_zero_and_zero_gradient():
    rng = np.random.default_rng(2)
    za, zb = jnp.asarray(_unit_rows(rng, 3, 4)), jnp.asarray(_unit_rows(rng, 3, 4))
    none = jnp.zeros(3, bool)
    for loss_fn in (lambda a: siglip_loss(a, zb, 1.0, -10.0, none), lambda a: infonce_loss(a, zb, 1.0, none)):
        value, grad = jax.value_and_grad(loss_fn)(za)
        assert float(value) == 0.0
        assert float(jnp.abs(grad).max()) == 0.0


def test_logit_scale_is_clamped_at_100_as_in_clip():
    """Above log(100) the loss is the loss at log(100), and t gets no gradient; below, it does."""
    rng = np.random.default_rng(3)
    za, zb = jnp.asarray(_unit_rows(rng, 4, 3)), jnp.asarray(_unit_rows(rng, 4, 3))
    valid = jnp.ones(4, bool)
    assert MAX_LOG_SCALE == math.log(100.0)
    t = jnp.float32([math.log(100.0), math.log(100.0) + 1.0, math.log(50.0)])
    for loss_fn in (lambda t: siglip_loss(za, zb, t, -10.0, valid), lambda t: infonce_loss(za, zb, t, valid)):
        (at_clamp, above, below), (_, grad_above, grad_below) = jax.jit(jax.vmap(jax.value_and_grad(loss_fn)))(t)
        assert float(above) == float(at_clamp) and float(grad_above) == 0.0
        assert float(below) != float(at_clamp) and float(grad_below) != 0.0


def test_safe_mean():
    values = jnp.array([1.0, 2.0, 100.0, jnp.nan])
    weights = jnp.array([1.0, 1.0, 0.0, 0.0])
    assert float(safe_mean(values, weights)) == 1.5       # a NaN under zero weight does not leak
    assert float(safe_mean(values, jnp.zeros(4))) == 0.0


def test_mlm_cross_entropy_and_bert_masking():
    from flax import nnx

    from omni.modalities.text import MASK_ID, PAD_ID, TextStem
    from tests.conftest import small_config
    config = small_config()
    stem = TextStem(config, nnx.Rngs(params=0))
    ids = np.full((64, 12), 7, np.int32)
    ids[:, 10:] = PAD_ID
    tokens, valid, target, picked = stem.masked_embed({"text/ids": jnp.asarray(ids)}, jax.random.key(0), jnp.float32)
    picked = np.asarray(picked).astype(bool)
    assert not picked[:, 10:].any()                      # padding is never picked
    assert abs(picked[:, :10].mean() - 0.15) < 0.04       # 15% of real tokens
    # Cross-entropy of the tied output layer, written out.
    hidden = jax.random.normal(jax.random.key(1), (2, 3, config.model.width))
    target = jnp.array([[5, 9, 300], [4, 4, 399]])
    got = stem.reconstruction_loss(hidden, target, jnp.float32)
    h = np.asarray(stem.head_norm(hidden))
    logits = h @ np.asarray(stem.tokens[...]).T + np.asarray(stem.head_bias[...])
    for b in range(2):
        for t in range(3):
            row = logits[b, t].astype(np.float64)
            expected = np.log(np.exp(row - row.max()).sum()) + row.max() - row[int(target[b, t])]
            np.testing.assert_allclose(float(got[b, t]), expected, rtol=1e-4)
    assert MASK_ID != PAD_ID


def test_mlm_80_10_10():
    from flax import nnx

    from omni.modalities.text import MASK_ID, TextStem
    from tests.conftest import small_config
    stem = TextStem(small_config("--config.loss.mlm.mask_rate=1.0"), nnx.Rngs(params=0))
    ids = jnp.full((200, 12), 7, jnp.int32)
    picked_tokens = []

    original = stem._embed_ids
    stem._embed_ids = lambda corrupted: picked_tokens.append(np.asarray(corrupted)) or original(corrupted)
    stem.masked_embed({"text/ids": ids}, jax.random.key(3), jnp.float32)
    corrupted = picked_tokens[0]
    share_mask = (corrupted == MASK_ID).mean()
    share_same = (corrupted == 7).mean()
    assert abs(share_mask - 0.8) < 0.03
    assert abs(share_same - 0.1) < 0.03 + 1 / 400     # 10% kept (+ random draws that hit 7)
    assert abs(1 - share_mask - share_same - 0.1) < 0.03


def test_mim_masks_exact_ratio_and_loss_formula():
    from flax import nnx

    from omni.modalities.image import ImageStem, normalized_patch_targets, patchify
    from tests.conftest import small_config
    config = small_config("--config.modalities.image.size=32")
    stem = ImageStem(config, nnx.Rngs(params=0))
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    tokens, valid, target, masked = stem.masked_embed({"image/pixels": jnp.asarray(pixels)}, jax.random.key(0), jnp.float32)
    assert (np.asarray(masked).sum(axis=1) == round(0.75 * 16)).all()
    np.testing.assert_allclose(target, normalized_patch_targets(patchify(pixels / 255.0, 8)), atol=1e-5)
    hidden = jax.random.normal(jax.random.key(1), (3, 16, config.model.width))
    got = stem.reconstruction_loss(hidden, target, jnp.float32)
    prediction = np.asarray(stem.head(stem.head_norm(hidden)))
    np.testing.assert_allclose(got, ((prediction - np.asarray(target)) ** 2).mean(-1), rtol=1e-5, atol=1e-6)
