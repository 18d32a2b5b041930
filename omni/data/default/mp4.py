"""Small h264 mp4 clips as bytes: how the default dataset stores its video, and how tests read it."""
from __future__ import annotations

import io
from fractions import Fraction

import numpy as np


def encode_mp4(frames: np.ndarray, fps: float = 8, gop: int = 2, crf: int = 16) -> bytes:
    """(T, H, W, 3) uint8 RGB frames (H, W even) -> h264 (libx264, yuv420p) mp4 bytes with a
    keyframe every `gop` frames and no B-frames. Single-threaded, so the bytes are reproducible."""
    import av  # deferred: slow to import
    frames = np.asarray(frames, np.uint8)
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"encode_mp4: frame size {width}x{height} must be even for yuv420p")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.options = {
            "crf": str(crf), "preset": "medium", "g": str(gop), "keyint_min": str(gop),
            "sc_threshold": "0", "bframes": "0", "threads": "1", "flags": "+bitexact"}
        for pixels in frames:
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def decode_mp4(data: bytes, keyframes_only: bool = False) -> np.ndarray:
    """mp4 bytes -> (T, H, W, 3) uint8 RGB (all frames, or only keyframes)."""
    import av  # deferred: slow to import
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        if keyframes_only:
            stream.codec_context.skip_frame = "NONKEY"
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)
