"""Video with captions: a real 8x8 scikit-learn handwritten digit in a colour on a contrasting
background, sliding left / right / up / down across a small canvas ("the digit three moves left");
h264 mp4 with a keyframe every 2 frames, so keyframe sampling sees the motion."""
from __future__ import annotations

import numpy as np

from omni.data.default.mp4 import encode_mp4
from omni.data.default.vocabulary import COLORS, WORDS

DIRECTIONS = ("left", "right", "up", "down")
MOTION_PHRASINGS = [
    "the digit {digit} moves {dir} on a {bg} background",
    "a {fg} handwritten {word} sliding {dir} across {bg}",
    "a {fg} number {word} moving {dir} over a {bg} square",
    "{word}, drawn in {fg}, travels {dir} on {bg}",
    "a clip of a {fg} {word} going {dir} against {bg}",
]


def _luma(rgb) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


def _contrasting_pairs(min_luma_gap: float = 80.0) -> list[tuple[str, str]]:
    return [(fg, bg) for fg in COLORS for bg in COLORS
            if fg != bg and abs(_luma(COLORS[fg]) - _luma(COLORS[bg])) >= min_luma_gap]


def motion_frames(digit_8x8: np.ndarray, direction: str, fg, bg, size: int = 16, frames: int = 8,
                  across: int | None = None) -> np.ndarray:
    """A real 8x8 scan (0..16 ink) at native scale sliding from one edge of a size x size canvas to
    the opposite one (in `direction`) over `frames` frames; `across` = its offset on the other
    axis (default: centred). Returns (frames, size, size, 3) uint8."""
    travel = size - 8
    if travel <= 0:
        raise ValueError("motion_frames: size must exceed 8")
    across = travel // 2 if across is None else int(across)
    steps = np.round(np.linspace(0, travel, frames)).astype(int)
    if direction in ("left", "up"):
        steps = steps[::-1]
    alpha = (np.asarray(digit_8x8, np.float32) / 16.0)[..., None]
    fg, bg = np.asarray(fg, np.float32), np.asarray(bg, np.float32)
    sprite = alpha * fg + (1 - alpha) * bg
    out = np.empty((frames, size, size, 3), np.float32)
    out[:] = bg
    for t, step in enumerate(steps):
        r, c = (across, step) if direction in ("left", "right") else (step, across)
        out[t, r:r + 8, c:c + 8] = sprite
    return out.round().astype(np.uint8)


def motion_clip_records(count: int, size: int = 16, num_frames: int = 4, seed: int = 0) -> list[dict]:
    """`count` clips (id motion-<i>, label = the digit word) of a real sklearn digit moving in one
    of DIRECTIONS, in a high-contrast colour pair; 2 * num_frames frames at 8 fps, keyframe every
    2 frames, so the num_frames keyframes span the motion."""
    from sklearn.datasets import load_digits  # deferred: slow to import
    digits = load_digits()
    pairs = _contrasting_pairs()
    records = []
    for i in range(count):
        rng = np.random.default_rng([seed, 11, i])
        j = int(rng.integers(len(digits.images)))
        direction = DIRECTIONS[i % len(DIRECTIONS)]
        fg, bg = pairs[rng.integers(len(pairs))]
        across = int(rng.integers(0, size - 8 + 1))
        frames = motion_frames(digits.images[j], direction, COLORS[fg], COLORS[bg], size,
                               2 * num_frames, across)
        target = int(digits.target[j])
        caption = MOTION_PHRASINGS[rng.integers(len(MOTION_PHRASINGS))].format(
            digit=target, word=WORDS[target], dir=direction, fg=fg, bg=bg)
        records.append({
            "id": f"motion-{i}", "label": WORDS[target],
            "source": f"sklearn load_digits[{j}] moving {direction}",
            "text": caption, "video": encode_mp4(frames, fps=8, gop=2),
        })
    return records
