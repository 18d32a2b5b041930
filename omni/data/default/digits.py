"""Images with captions: the 1,797 real handwritten digits that scikit-learn ships (`load_digits`,
8x8 scans), each drawn in an ink colour on a background colour in one quadrant of a 32x32 canvas.
Its caption names the digit, the colours and the place, in one of several phrasings, so retrieval
has to read the handwriting AND the colours AND the layout."""
from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

from omni.data.default.vocabulary import COLORS, WORDS

PLACES = {"top left": (0, 0), "top right": (0, 16), "bottom left": (16, 0), "bottom right": (16, 16)}
PHRASINGS = [
    "a {fg} handwritten {word} on a {bg} background, in the {place}",
    "the digit {digit} written in {fg} over {bg}, {place} corner",
    "{place}: a {fg} number {word} on {bg}",
    "a picture of the number {word} in {fg} ink on a {bg} square, placed {place}",
]
COLOUR_WORD = re.compile(r"\b(" + "|".join(COLORS) + r")\b")


def caption_attributes(caption: str) -> tuple[tuple[str, ...], str]:
    """(ink and background colours in caption order, the place) that a digit caption names: what
    the retrieval benchmarks check a ranking's top-1 against."""
    return tuple(COLOUR_WORD.findall(caption)), next(p for p in PLACES if p in caption)


def render_digit(digit_8x8: np.ndarray, fg, bg, place) -> np.ndarray:
    """Real 8x8 scan (0..16 ink) -> 16x16 (bilinear) -> colour blend into a quadrant of 32x32."""
    ink = Image.fromarray((digit_8x8 * (255 / 16)).astype(np.uint8)).resize((16, 16), Image.BILINEAR)
    alpha = np.asarray(ink, np.float32)[..., None] / 255.0
    canvas = np.empty((32, 32, 3), np.float32)
    canvas[:] = bg
    r, c = place
    canvas[r:r + 16, c:c + 16] = alpha * np.asarray(fg, np.float32) + (1 - alpha) * canvas[r:r + 16, c:c + 16]
    return canvas.round().astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def digit_records() -> list[dict]:
    """One record per sklearn digit (id digit-<i>, label = the digit word, image = a 32x32 PNG)."""
    from sklearn.datasets import load_digits  # deferred: slow to import
    digits = load_digits()
    names = list(COLORS)
    records = []
    for i, (image, target) in enumerate(zip(digits.images, digits.target)):
        rng = np.random.default_rng(i)
        fg, bg = rng.choice(len(names), size=2, replace=False)
        place = list(PLACES)[rng.integers(len(PLACES))]
        caption = PHRASINGS[rng.integers(len(PHRASINGS))].format(
            fg=names[fg], bg=names[bg], place=place, word=WORDS[target], digit=int(target))
        pixels = render_digit(image, COLORS[names[fg]], COLORS[names[bg]], PLACES[place])
        records.append({
            "id": f"digit-{i}", "label": WORDS[target], "source": f"sklearn load_digits[{i}]",
            "text": caption, "image": png_bytes(pixels),
        })
    return records
