import io
import wave

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from omni.config import ConfigError, load_config
from omni.modalities.image import ImageStem
from omni.modalities.video import Video, VideoStem, load_video, sample_frames, spread

FPS, GOP = 8, 6

# Options each encoder needs for a key frame exactly every GOP frames. x264 and MPEG-4 both
# insert extra key frames at "scene cuts" (every frame here changes brightness) unless told not
# to; x264 also takes its own keyint over the generic gop_size.
ENCODERS = {
    "h264": ("libx264", "mp4", {"g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0",
                                "x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0"}),
    "mpeg4": ("mpeg4", "mp4", {"g": str(GOP), "sc_threshold": "1000000000"}),
    "vp9": ("libvpx-vp9", "webm", {"g": str(GOP), "keyint_min": str(GOP)}),
}


def brightness(i: int) -> int:
    """Frame i is flat grey at this level, so a decoded frame tells which frame it is."""
    return 20 + 9 * i


def encode_clip(codec="h264", frames=24, width=32, height=32) -> bytes:
    name, container_format, options = ENCODERS[codec]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as out:
        stream = out.add_stream(name, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.gop_size = GOP
        stream.options = options
        for i in range(frames):
            image = np.full((height, width, 3), brightness(i), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def true_keyframe_times(data: bytes) -> list[float]:
    """Ground truth: a full decode, reading each frame's own key-frame flag."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return [float(f.pts * stream.time_base) for f in container.decode(stream) if f.key_frame]


def frame_index(frame: np.ndarray) -> float:
    return (frame.astype(float).mean() - 20) / 9


@pytest.fixture(scope="module")
def clips():
    return {codec: encode_clip(codec) for codec in ENCODERS}


def video_config(*overrides):
    return load_config(None, ["--config.model.width=32", "--config.model.depth=1",
                              "--config.model.heads=2", "--config.model.embed_dim=32", *overrides])


def test_spread_is_even_and_distinct():
    assert spread(4, 10) == [0, 1, 2, 3]
    assert spread(4, 2) == [0, 3]
    assert spread(7, 1) == [3]
    for count in range(2, 40):
        for n in range(2, count):
            picked = spread(count, n)
            assert len(set(picked)) == n and picked[0] == 0 and picked[-1] == count - 1
            ideal = np.linspace(0, count - 1, n)
            assert np.all(np.abs(np.array(picked) - ideal) <= 0.5 + 1e-9)


@pytest.mark.parametrize("codec", list(ENCODERS))
def test_keyframes_are_exactly_the_key_frames(clips, codec):
    data = clips[codec]
    truth = true_keyframe_times(data)
    assert truth == [0.0, 6 / 8, 12 / 8, 18 / 8]  # the encoder honoured the GOP
    frames, times = sample_frames(data, 10, "keyframes")
    assert times.tolist() == truth
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    # The pixels are those of the frames at those times (key frame k*GOP shows brightness(k*GOP)).
    for frame, t in zip(frames, times):
        assert abs(frame_index(frame) - t * FPS) < 0.5
    # Fewer wanted than there are: an evenly spread subset, first and last included.
    _, two = sample_frames(data, 2, "keyframes")
    assert two.tolist() == [truth[0], truth[-1]]
    _, three = sample_frames(data, 3, "keyframes")
    assert three[0] == truth[0] and three[-1] == truth[-1] and three[1] in truth[1:3]
    _, one = sample_frames(data, 1, "keyframes")
    assert one.tolist() == [truth[1]]  # the middle one


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_uniform_spacing_and_content(clips, codec):
    frames, times = sample_frames(clips[codec], 5, "uniform")
    assert frames.shape == (5, 32, 32, 3)
    # Evenly spaced from the first frame (0 s) to the last (23/8 s), within one frame period.
    np.testing.assert_allclose(times, np.linspace(0, 23 / FPS, 5), atol=1 / FPS)
    assert np.all(np.diff(times) > 0)
    for frame, t in zip(frames, times):
        assert abs(frame_index(frame) - t * FPS) < 0.5  # the frame shown at that time


def test_uniform_on_a_short_clip_gives_each_frame_once():
    _, times = sample_frames(encode_clip("h264", frames=3), 8, "uniform")
    assert times.tolist() == [0.0, 1 / 8, 2 / 8]


def test_load_video_pads_missing_frames():
    config = video_config()
    assert config.modalities.video.num_frames == 4 and config.modalities.video.size == 16
    data = encode_clip("h264", frames=12)  # key frames at 0 and 6 only
    frames, present = load_video(data, config)
    assert frames.shape == (4, 16, 16, 3) and frames.dtype == np.uint8
    assert present.tolist() == [True, True, False, False]
    assert (frames[2:] == 0).all()
    assert abs(frame_index(frames[1]) - 6) < 0.5


def test_load_video_keeps_aspect():
    config = video_config()
    frames, present = load_video(encode_clip("h264", frames=6, width=32, height=16), config)
    assert present.tolist() == [True, False, False, False]
    assert (frames[0, :8] > 10).all()  # 32x16 -> 16x8, at the top
    assert (frames[0, 8:] == 0).all()  # padded below


def _wav() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(800, np.int16).tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("strategy", ["keyframes", "uniform"])
def test_bad_inputs_are_value_errors(clips, strategy):
    data = clips["h264"]
    with pytest.raises(ValueError, match="cannot decode video"):
        sample_frames(b"", 4, strategy)
    with pytest.raises(ValueError, match="cannot decode video"):
        sample_frames(data[: len(data) // 2], 4, strategy)  # mp4 cut before its index
    with pytest.raises(ValueError, match="cannot decode video"):
        sample_frames(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes(), 4, strategy)
    with pytest.raises(ValueError, match="no video stream"):
        sample_frames(_wav(), 4, strategy)


def test_prepare_reads_and_checks_the_file(tmp_path, clips):
    (tmp_path / "clip.webm").write_bytes(clips["vp9"])
    (tmp_path / "sound.wav").write_bytes(_wav())
    video = Video()
    assert video.prepare("clip.webm", tmp_path) == clips["vp9"]
    with pytest.raises(ValueError, match="no video stream"):
        video.prepare("sound.wav", tmp_path)
    with pytest.raises(ValueError):
        video.prepare("missing.mp4", tmp_path)
    # A path works as well as bytes.
    _, times = sample_frames(tmp_path / "clip.webm", 10)
    assert len(times) == 4


def test_encode_matches_array_spec(clips):
    config = video_config()
    video = Video()
    video.validate(config)
    arrays = video.encode(clips["mpeg4"], config, {})
    spec = video.array_spec(config)
    assert set(arrays) == set(spec)
    for key, (shape, dtype) in spec.items():
        assert arrays[key].shape == shape and arrays[key].dtype == dtype
    assert arrays["video/frame_present"].all()  # 4 key frames, 4 wanted


@pytest.mark.parametrize("override, key", [
    ("--config.modalities.video.patch=5", "modalities.video.size"),
    ("--config.loss.mvm.mask_ratio=1.0", "loss.mvm.mask_ratio"),
    ("--config.modalities.video.strategy=random", "modalities.video.strategy"),
    ("--config.modalities.video.num_frames=0", "modalities.video.num_frames"),
])
def test_validate_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        Video().validate(video_config(override))


def _inputs(config, batch=3, present_frames=(4, 2, 1)):
    cfg = config.modalities.video
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (batch, cfg.num_frames, cfg.size, cfg.size, 3), np.uint8)
    present = np.arange(cfg.num_frames)[None, :] < np.array(present_frames)[:, None]
    return {"video/frames": jnp.asarray(frames), "video/frame_present": jnp.asarray(present)}


def test_stem_shares_the_image_patchifier():
    config = video_config("--config.modalities.image.patch=8")
    image = ImageStem(config, nnx.Rngs(0))
    stem = Video().make_stem(config, nnx.Rngs(1), built={"image": image})
    assert isinstance(stem, VideoStem) and stem.proj is image.proj
    # As one model the shared projection is one set of parameters, not two.
    both = nnx.Dict({"image": image, "video": stem})
    count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
    assert count(both) == count(image) + count(stem) - count(image.proj)
    # A different patch size cannot share: the stem gets its own.
    other = ImageStem(video_config("--config.modalities.image.patch=4"), nnx.Rngs(0))
    assert Video().make_stem(config, nnx.Rngs(1), built={"image": other}).proj is not other.proj
    assert Video().make_stem(config, nnx.Rngs(1)).proj is not None


def test_stem_shapes_masking_and_gradient():
    config = video_config()
    video = Video()
    stem = video.make_stem(config, nnx.Rngs(0), built={"image": ImageStem(config, nnx.Rngs(1))})
    inputs = _inputs(config)
    num = video.num_tokens(config)
    assert num == 4 * 2 * 2
    tokens, valid = stem.embed(inputs, jnp.float32)
    assert tokens.shape == (3, num, 32)
    # A frame's 4 patches are valid exactly when the frame is present.
    assert valid.sum(axis=1).tolist() == [16, 8, 4]
    assert valid[1].tolist() == [True] * 8 + [False] * 8

    tokens, valid, target, picked = stem.masked_embed(inputs, jax.random.key(0), jnp.float32)
    assert target.shape == (3, num, 8 * 8 * 3)
    assert picked.sum(axis=1).tolist() == [12.0, 12.0, 12.0]  # round(0.75 * 16), every example
    _, _, _, again = stem.masked_embed(inputs, jax.random.key(1), jnp.float32)
    assert not np.array_equal(picked, again)  # a fresh mask per key

    def loss(stem):
        tokens, valid, target, picked = stem.masked_embed(inputs, jax.random.key(0), jnp.float32)
        # A stand-in for the encoder that lets masked positions see the unmasked ones.
        hidden = tokens + jnp.mean(tokens, axis=1, keepdims=True)
        per_token = stem.reconstruction_loss(hidden, target, jnp.float32)
        assert per_token.shape == (3, num)
        weight = picked * valid
        return jnp.sum(per_token * weight) / jnp.sum(weight)

    value, grads = nnx.value_and_grad(loss)(stem)
    assert np.isfinite(value)
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(g).all() for g in leaves)
    assert np.abs(grads.proj.kernel[...]).sum() > 0  # the shared patchifier is trained by video
    assert np.abs(grads.time[...]).sum() > 0
