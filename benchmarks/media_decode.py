"""Host decode time per item: a large JPEG decoded whole and in PIL's draft mode (as
`omni.modalities.image.load_image` does), and the default data's video clips through `load_video`
at base's shapes (docs/data.md, "Host input").

    python benchmarks/media_decode.py

Prints milliseconds per item, best of three passes. Run it at two commits to compare a change.
"""
from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

from omni.config import load_config
from omni.data.default import ensure_default_dataset
from omni.data.records import open_split
from omni.modalities import video
from omni.modalities.image import fit_square, load_image


def best_ms(fn, items, passes: int = 3) -> float:
    times = []
    for _ in range(passes):
        started = time.perf_counter()
        for item in items:
            fn(item)
        times.append((time.perf_counter() - started) / len(items) * 1e3)
    return min(times)


def full_decode(data: bytes, size: int) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    img.load()
    return fit_square(img.convert("RGB"), size)


def main() -> None:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize((2048, 1536), Image.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    jpeg = [buffer.getvalue()] * 20
    for size in (224, 384):
        print(f"2048x1536 JPEG -> {size}: whole {best_ms(lambda d: full_decode(d, size), jpeg):.1f} ms, "
              f"draft mode {best_ms(lambda d: load_image(d, size), jpeg):.1f} ms")
    config = load_config("configs/base.py", [])
    source = open_split(ensure_default_dataset(), "train")
    clips = [r["video"] for r in (source[i] for i in range(len(source))) if r.get("video")][:40]
    print(f"default data, {len(clips)} clips at base: {best_ms(lambda c: video.load_video(c, config), clips):.2f} ms/clip")


if __name__ == "__main__":
    main()
