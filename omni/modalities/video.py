"""Video: a few frames per clip, decoded with PyAV (FFmpeg) on the host and resized/padded to the
config's square resolution; in the model every frame goes through the image patchifier (the same
weights as the image stem when the patch sizes match) with 2-D (row + column) plus temporal
position embeddings, and masked video modelling in the MAE style (a fixed ratio of the clip's
frame patches masked, per-patch normalised pixel targets, loss on masked patches only).

Frame sampling (`modalities.video.strategy`):
  * keyframes: only the stream's key frames are decoded (cheap: no inter-frame prediction), and
    num_frames of them are picked evenly spread over the clip; a clip with fewer key frames gives
    fewer frames, the rest padded and marked absent;
  * uniform: the frames nearest num_frames times evenly spaced over the clip (decodes the clip up
    to the last picked frame).
A clip is opened and demuxed once: its compressed packets (about the file's size, which a record
holds already) give the timestamps and key-frame flags that choose the frames, and then only what
was chosen is decoded (the chosen key packets, or every packet up to the last chosen frame), so
no frame is decoded twice and the decoded clip never sits in memory whole.
"""
from __future__ import annotations

import io

import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from omni.errors import ConfigError
from omni.modalities.base import Modality
from omni.modalities import image
from omni.modalities.image import PIXEL_MEAN, PIXEL_STD, patchify
from omni.modalities.positions import position_params
from omni.nn import Dense

STRATEGIES = ("keyframes", "uniform")


def _open(source):
    """av container from bytes or a path."""
    import av  # imported where used: a device-only run (synthetic bench) needs no PyAV
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ValueError("cannot decode video: empty input")
        return av.open(io.BytesIO(bytes(source)))
    return av.open(str(source))


def _video_stream(container):
    if not container.streams.video:
        raise ValueError("no video stream")
    return container.streams.video[0]


def _timing(stream, packets):
    """(has_pts, key -> seconds): a packet's or frame's key is its pts when every packet has one,
    else (raw elementary streams carry no timestamps) its ordinal, timed by the frame rate."""
    if all(p.pts is not None for p in packets):
        time_base = stream.time_base
        return True, lambda key: float(key * time_base)
    rate = float(stream.guessed_rate or stream.average_rate or 25)
    return False, lambda key: key / rate


def spread(count: int, n: int) -> list[int]:
    """n indices into range(count) evenly spread from the first to the last (all when n >= count;
    the middle one when n == 1). Integer rounding, half up, so indices never collide."""
    if n >= count:
        return list(range(count))
    if n == 1:
        return [(count - 1) // 2]
    return [(2 * i * (count - 1) + n - 1) // (2 * (n - 1)) for i in range(n)]


def _decode_keyframes(stream, packets, num_frames, has_pts, seconds):
    key_ordinals = [i for i, p in enumerate(packets) if p.is_keyframe]
    if not key_ordinals:
        raise ValueError("no key frames in the video stream")
    chosen = [key_ordinals[j] for j in spread(len(key_ordinals), num_frames)]
    fallback = iter([seconds(packets[i].pts if has_pts else i) for i in chosen])
    # Decoders that honour it (H.264, MPEG-4 part 2) then do no work on non-key frames; the
    # other packets are never sent at all. None at the end flushes frames the decoder held back.
    stream.codec_context.skip_frame = "NONKEY"
    frames, times = [], []
    for packet in [packets[i] for i in chosen] + [None]:
        for frame in stream.decode(packet):
            time = next(fallback, None)  # for streams without timestamps
            frames.append(frame)
            times.append(float(frame.pts * stream.time_base) if frame.pts is not None else time)
    if not frames:
        raise ValueError("no decodable key frames in the video stream")
    return frames, times


def _decode_uniform(stream, packets, num_frames, has_pts, seconds):
    # Presentation order is timestamp order (decode order differs when there are B-frames).
    keys = sorted(p.pts for p in packets) if has_pts else list(range(len(packets)))
    times = np.array([seconds(k) for k in keys])
    if num_frames == 1:
        targets = np.array([(times[0] + times[-1]) / 2])
    else:
        targets = np.linspace(times[0], times[-1], num_frames)
    wanted = {keys[i] for i in _nearest(times, targets)}  # a set: a short clip gives no repeats
    frames, stamps = [], []
    ordinal = 0
    for packet in packets + [None]:
        for frame in stream.decode(packet):
            key = frame.pts if has_pts else ordinal
            ordinal += 1
            if key in wanted:
                frames.append(frame)
                stamps.append(seconds(key))
        if len(frames) == len(wanted):
            break  # nothing after the last picked frame needs decoding
    if not frames:
        raise ValueError("no decodable frames in the video stream")
    return frames, stamps


def _nearest(sorted_values, targets):
    """Index of the value nearest each target (ties to the earlier one)."""
    if len(sorted_values) == 1:
        return np.zeros(len(targets), int)
    right = np.clip(np.searchsorted(sorted_values, targets), 1, len(sorted_values) - 1)
    left = right - 1
    take_left = targets - sorted_values[left] <= sorted_values[right] - targets
    return np.where(take_left, left, right)


def sample_frames(source, num_frames: int, strategy: str = "keyframes"):
    """num_frames frames of a clip (bytes or a path) -> (frames uint8 [T, H, W, 3] RGB, timestamps
    in seconds float64 [T]) with T <= num_frames, in time order. ValueError with the reason when
    it is not a decodable video."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown frame sampling strategy '{strategy}' (known: {', '.join(STRATEGIES)})")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    import av
    decode = _decode_keyframes if strategy == "keyframes" else _decode_uniform
    try:
        with _open(source) as container:
            stream = _video_stream(container)
            packets = [p for p in container.demux(stream) if p.size]  # compressed: about the file's size
            if not packets:
                raise ValueError("no decodable frames in the video stream")
            frames, times = decode(stream, packets, num_frames, *_timing(stream, packets))
            # A stream may change resolution midway; every frame takes the first one's.
            width, height = frames[0].width, frames[0].height
            rgb = np.stack([f.to_ndarray(format="rgb24", width=width, height=height) for f in frames])
    except av.FFmpegError as e:  # FFmpeg's own errors: not a media file, truncated, corrupt
        raise ValueError(f"cannot decode video: {e}") from None
    return rgb, np.asarray(times, np.float64)


def fit_square(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> [size, size, 3], resized and padded exactly as images are."""
    return image.fit_square(Image.fromarray(frame), size)


def load_video(data, config):
    """A clip -> (frames uint8 [num_frames, size, size, 3], present bool [num_frames]); frames the
    clip does not have (fewer key frames or frames than num_frames) are zeros, present False."""
    cfg = config.modalities.video
    frames, _ = sample_frames(data, cfg.num_frames, cfg.strategy)
    out = np.zeros((cfg.num_frames, cfg.size, cfg.size, 3), np.uint8)
    present = np.zeros(cfg.num_frames, bool)
    for i, frame in enumerate(frames):
        out[i] = fit_square(frame, cfg.size)
        present[i] = True
    return out, present


class VideoStem(image.ImageStem):
    """An image stem over every frame's patches (with the image stem's own patch projection when
    the patch sizes agree), plus a time embedding; frames that are absent are invalid tokens."""

    def __init__(self, config, rngs: nnx.Rngs, built: dict | None = None):
        cfg = config.modalities.video
        width = config.model.width
        self.patch = cfg.patch
        self.mask_ratio = float(config.loss.mvm.mask_ratio)
        grid = cfg.size // cfg.patch
        patch_dim = cfg.patch * cfg.patch * 3
        image_stem = (built or {}).get("image")
        if image_stem is not None and image_stem.patch == cfg.patch:
            # The same module object, so frames and images train one patchifier (NNX keeps a
            # shared reference as one set of parameters).
            self.proj = image_stem.proj
        else:
            self.proj = Dense(rngs, patch_dim, width, names=("patch", "embed"))
        self.rows, self.cols, self.time = position_params(rngs, config, (grid, grid, cfg.num_frames), width)
        self.init_reconstruction(rngs, config, patch_dim)

    def _patches(self, inputs):
        """[B, T, S, S, 3] uint8 -> [B, T * grid^2, p*p*3] in [0, 1]: frame by frame, each row-major."""
        frames = inputs["video/frames"].astype(jnp.float32) / 255.0
        batch, num_frames, size = frames.shape[:3]
        patches = patchify(frames.reshape(batch * num_frames, size, size, 3), self.patch)
        return patches.reshape(batch, -1, patches.shape[-1])

    def _positions(self):
        """[T * grid^2, width]: time + row + column, in the order of `_patches`."""
        grid = self.rows.shape[0]
        space = (self.rows[...][:, None, :] + self.cols[...][None, :, :]).reshape(grid * grid, -1)
        return (self.time[...][:, None, :] + space[None]).reshape(-1, space.shape[-1])

    def _valid(self, inputs):
        """A patch is valid when its frame is present."""
        present = inputs["video/frame_present"]
        return jnp.repeat(present, self.rows.shape[0] ** 2, axis=1)


class Video(Modality):
    name = "video"
    objective = "mvm"
    file_field = True

    def validate(self, config):
        cfg = config.modalities.video
        if cfg.size % cfg.patch:
            raise ConfigError(f"modalities.video.size={cfg.size} is not divisible by modalities.video.patch={cfg.patch}")
        if not 0.0 <= config.loss.mvm.mask_ratio < 1.0:
            raise ConfigError(f"loss.mvm.mask_ratio={config.loss.mvm.mask_ratio} must be in [0, 1)")
        if cfg.strategy not in STRATEGIES:
            raise ConfigError(f"modalities.video.strategy='{cfg.strategy}' must be one of {', '.join(STRATEGIES)}")
        if cfg.num_frames < 1:
            raise ConfigError(f"modalities.video.num_frames={cfg.num_frames} must be >= 1")

    def num_tokens(self, config):
        cfg = config.modalities.video
        return cfg.num_frames * (cfg.size // cfg.patch) ** 2

    def array_spec(self, config):
        cfg = config.modalities.video
        return {"video/frames": ((cfg.num_frames, cfg.size, cfg.size, 3), np.uint8),
                "video/frame_present": ((cfg.num_frames,), np.bool_)}

    def export_constants(self, config):
        cfg = config.modalities.video
        return {"size": int(cfg.size), "patch": int(cfg.patch), "num_frames": int(cfg.num_frames),
                "strategy": cfg.strategy, "pixel_mean": float(PIXEL_MEAN), "pixel_std": float(PIXEL_STD),
                "recipe": "sample_frames(file, num_frames, strategy) (PyAV); each frame resized like an image "
                          "(longer side = size, aspect kept, padded bottom/right with 0); missing frames zero "
                          "with video/frame_present false; uint8 frames into the program"}

    def stem_flops(self, config):
        patch_dim = config.modalities.video.patch ** 2 * 3
        per_pass = 2 * self.num_tokens(config) * patch_dim * config.model.width
        return per_pass, per_pass  # patch projection in, pixel head out

    def check_bytes(self, data):
        if not data:
            raise ValueError("is empty (0 bytes)")
        sample_frames(data, 1, "keyframes")  # decodes one key frame, or raises ValueError with the reason
        return data

    def encode(self, value, config, assets):
        frames, present = load_video(value, config)
        return {"video/frames": frames, "video/frame_present": present}

    def make_stem(self, config, rngs, built=None):
        return VideoStem(config, rngs, built)
