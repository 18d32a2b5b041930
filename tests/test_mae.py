"""MAE's visible-only encoder (omni/mae.py, `model.mae`): the encoder never sees the masked patches,
masks the same patches as the mask-token way for the same keys, trains its decoder, and costs
fewer FLOPs than the mask-token way."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from omni import flops, mae, objectives, parallel
from omni.bench import synthetic_batch
from omni.config import load_config
from omni.errors import ConfigError
from omni.modalities import registry
from omni.modalities.image import unpatchify
from omni.model import Omni
from omni.run.setup import build_setup
from omni.validation import validate
from tests.conftest import MODEL_SMALL, small_config

# small_config's width is 32: a decoder half as wide, as tiny's 64 is half of its 128
MAE = ["--config.model.mae=true", "--config.model.decoder_width=16"]


@pytest.fixture(scope="module")
def model():
    config = small_config(*MAE)
    return config, Omni(config, nnx.Rngs(params=0))


def make_batch(config, seed):
    rng = np.random.default_rng(seed)
    b, length, size = config.train.batch_size, config.modalities.text.max_len, config.modalities.image.size
    return {"text/ids": rng.integers(4, config.modalities.text.vocab_size, (b, length)).astype(np.int32),
            "text/present": np.ones(b, bool),
            "image/pixels": rng.integers(0, 256, (b, size, size, 3)).astype(np.uint8),
            "image/present": np.ones(b, bool), "example_id": np.arange(b, dtype=np.uint32)}


def encoder_and_decoder(model, batch):
    """The fused pass over masked text and visible-only image (as objectives.masked_passes builds it) -> (the
    encoder's states of the visible image tokens, the decoder's predictions, the image's patches)."""
    names = model.modality_names
    blocks = {}
    for name in names:
        keys = objectives.row_keys(jax.random.key(0), batch, names.index(name))
        blocks[name] = objectives.masked_block(model, name, batch, keys, batch[f"{name}/present"])[0]
    keys = objectives.row_keys(jax.random.key(0), batch, names.index("image"))
    patches = model.stems["image"].visible_embed(batch, keys, model.dtype)
    hidden = model.fused(blocks)["image"]
    prediction = model.decoders["image"].predict(hidden, patches, batch["image/present"], model.dtype)
    return hidden, prediction, patches


def with_patches_changed(config, batch, where):
    """`batch` with new pixels in the patches where `where` [B, N] is true, and nowhere else."""
    patch, size = config.modalities.image.patch, config.modalities.image.size
    per_pixel = unpatchify(jnp.broadcast_to(jnp.asarray(where, jnp.float32)[..., None], (*where.shape, patch * patch * 3)),
                           patch, size, size)
    noise = np.random.default_rng(7).integers(0, 256, batch["image/pixels"].shape).astype(np.uint8)
    return {**batch, "image/pixels": np.where(np.asarray(per_pixel) > 0, noise, batch["image/pixels"])}


def test_encoder_and_decoder_input_ignore_the_masked_patches(model):
    config, omni = model
    batch = make_batch(config, 0)
    hidden, prediction, patches = encoder_and_decoder(omni, batch)
    masked = np.asarray(patches.picked) > 0
    assert hidden.shape[1] == masked.shape[1] - masked[0].sum()  # the visible tokens only

    other = with_patches_changed(config, batch, masked)
    assert np.any(other["image/pixels"] != batch["image/pixels"])
    hidden_2, prediction_2, patches_2 = encoder_and_decoder(omni, other)
    np.testing.assert_array_equal(hidden_2, hidden)
    np.testing.assert_array_equal(prediction_2, prediction)  # the decoder's input, and so its output
    assert not np.allclose(patches_2.target, patches.target)  # ... while the targets did change

    one_visible = np.zeros_like(masked)
    one_visible[0, np.flatnonzero(~masked[0])[0]] = True
    hidden_3, prediction_3, _ = encoder_and_decoder(omni, with_patches_changed(config, batch, one_visible))
    assert not np.allclose(hidden_3[0], hidden[0])
    assert not np.allclose(prediction_3[0], prediction[0])


def video_config():
    return load_config(None, [*MODEL_SMALL, "--config.modalities=text,video",
                              "--config.modalities.video.num_frames=2", *MAE])


@pytest.mark.parametrize("name", ["image", "video"])
def test_the_same_patches_are_masked_both_ways(model, name):
    config = model[0] if name == "image" else video_config()
    stem = registry.get(name).make_stem(config, nnx.Rngs(params=1))
    b = 8
    rng = np.random.default_rng(3)
    if name == "image":
        inputs = {"image/pixels": rng.integers(0, 256, (b, 16, 16, 3)).astype(np.uint8)}
    else:  # some second frames absent: their patches are invalid
        inputs = {"video/frames": rng.integers(0, 256, (b, 2, 16, 16, 3)).astype(np.uint8),
                  "video/frame_present": np.array([[True, i % 3 > 0] for i in range(b)])}
    keys = jax.random.split(jax.random.key(5), b)
    tokens, valid, target, picked = stem.masked_embed(inputs, keys, jnp.float32)
    patches = stem.visible_embed(inputs, keys, jnp.float32)
    keep = patches.tokens.shape[1]
    assert keep == mae.visible_count(config, name) == tokens.shape[1] - int(round(stem.mask_ratio * tokens.shape[1]))
    np.testing.assert_array_equal(patches.picked, picked)
    np.testing.assert_array_equal(patches.target, target)
    np.testing.assert_array_equal(patches.patch_valid, valid)
    order = np.asarray(patches.order)
    np.testing.assert_array_equal(np.take_along_axis(np.asarray(picked), order, axis=1),
                                  np.repeat([[0.0] * keep + [1.0] * (order.shape[1] - keep)], b, axis=0))
    visible = order[:, :keep]
    assert np.all(np.diff(visible, axis=1) > 0)  # visible patches in patch order
    # the visible tokens are masked_embed's tokens at those patches: the same projection and positions
    np.testing.assert_allclose(patches.tokens, np.take_along_axis(np.asarray(tokens), visible[..., None], axis=1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(patches.valid, np.take_along_axis(np.asarray(valid), visible, axis=1))


def test_train_step_runs_and_the_decoder_learns(model):
    config, omni = model
    setup = build_setup(config, parallel.make_mesh((1, 1, 1)))
    batch = synthetic_batch(config, setup)
    step = setup.compile_train_step()
    state, metrics = step(setup.init_state(), batch, setup.step_args)
    state, metrics = step(state, batch, setup.step_args)
    assert int(metrics["skipped"]) == 0 and np.isfinite(float(metrics["loss"]))

    graphdef, params = nnx.split(omni)

    def loss(p):
        return objectives.total_loss(nnx.merge(graphdef, p), make_batch(config, 1), jax.random.key(0), config)[0]

    grads = nnx.to_pure_dict(jax.jit(jax.grad(loss))(params))  # jitted: eager would take tens of seconds
    norms = jax.tree.map(lambda g: float(jnp.sum(jnp.abs(g))), grads)
    decoder = norms["decoders"]["image"]
    for key in ("embed", "head", "norm"):
        assert all(v > 0 for v in jax.tree.leaves(decoder[key])), key
    assert all(v > 0 for v in jax.tree.leaves(decoder["blocks"]))
    assert decoder["mask_token"] > 0 and all(v > 0 for v in jax.tree.leaves(decoder["positions"]))
    assert norms["stems"]["image"]["proj"]["kernel"] > 0
    # the mask-token way's own pieces are not used for the image any more
    assert norms["stems"]["image"]["mask_token"] == 0 and norms["stems"]["image"]["head"]["kernel"] == 0


def test_fewer_fused_pass_flops_at_tiny_image_shapes():
    tiny = ["--config.modalities=text,image"]
    off, on = load_config(None, tiny), load_config(None, [*tiny, "--config.model.mae=true"])
    work = flops.StepWork(on)
    patches = registry.get("image").num_tokens(on)
    assert work.fused_tokens("image", 1 + patches, 1) == 1 + mae.visible_count(on, "image") == 1 + patches // 4
    for sets in ([(("image",), 64)], [(("text", "image"), 64)]):
        assert flops.StepWork(on).slot_flops(sets) < flops.StepWork(off).slot_flops(sets)


def test_real_work_counts_the_visible_encoder(model):
    """On a batch with every token present, the real FLOPs (inside the step) are the slot FLOPs."""
    config, omni = model
    batch = make_batch(config, 2)
    real = flops.real_work(omni, {"all": batch}, config)["real_flops"]
    slots = flops.StepWork(config).slot_flops([(("text", "image"), config.train.batch_size)])
    np.testing.assert_allclose(float(real), slots, rtol=1e-6)


@pytest.mark.parametrize("override, key", [
    ("--config.model.decoder_depth=0", "model.decoder_depth"),
    ("--config.model.decoder_width=-8", "model.decoder_width"),
    ("--config.loss.mim.mask_ratio=0.99", "loss.mim.mask_ratio"),
])
def test_bad_decoder_settings_are_named(override, key):
    with pytest.raises(ConfigError, match=key):
        validate(small_config(*MAE, override), 1)
    validate(small_config(override), 1)  # with model.mae off they are unused, and accepted
