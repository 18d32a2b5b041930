"""Speed and peak memory of `omni data build` at scale (numbers for docs/data.md, not a test).

Makes N image+text samples (distinct ~7 KB PNGs, 48x48 noise, with captions) as a manifest and
image files, or as WebDataset shards of 1,000 samples, then builds them with `omni data build`
under `/usr/bin/time -f %M` for each worker count asked, and prints one JSON line per build:

    python benchmarks/data_build_scale.py --samples 10000 --format manifest --workers 1 2
    python benchmarks/data_build_scale.py --samples 100000 --format manifest --workers 1

`peak_rss_mb` is GNU time's %M: the largest resident set of any single process of the build (the
launcher, or one DirectRunner worker), not their sum. The data is made once under --root and
reused; each build writes a fresh dataset.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

SHARD_SAMPLES = 1000
COLOURS = ("red", "green", "blue", "yellow", "black", "white")


def png(rng) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()  # ~7 KB: noise does not compress


def make(root: Path, samples: int, fmt: str) -> list[str]:
    """Write the samples once (a `.complete` marker says they are whole); -> the build's sources."""
    folder = root / f"{fmt}-{samples}"
    sources = ([str(folder / "manifest.jsonl")] if fmt == "manifest" else
               [str(folder / f"{{00000..{(samples - 1) // SHARD_SAMPLES:05d}}}.tar")])
    if (folder / ".complete").exists():
        return sources
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    if fmt == "manifest":
        (folder / "img").mkdir()
        with open(folder / "manifest.jsonl", "w") as manifest:
            for i in range(samples):
                name = f"img/{i:07d}.png"
                (folder / name).write_bytes(png(rng))
                manifest.write(json.dumps({"id": f"s{i}", "text": f"a {COLOURS[i % 6]} noise picture number {i}",
                                           "image": name}) + "\n")
    else:
        import webdataset
        for shard in range((samples - 1) // SHARD_SAMPLES + 1):
            with webdataset.TarWriter(str(folder / f"{shard:05d}.tar")) as sink:
                for i in range(shard * SHARD_SAMPLES, min(samples, (shard + 1) * SHARD_SAMPLES)):
                    sink.write({"__key__": f"{i:07d}", "png": png(rng),
                                "txt": f"a {COLOURS[i % 6]} noise picture number {i}"})
    (folder / ".complete").touch()
    return sources


def run(sources: list[str], out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    omni = Path(sys.executable).with_name("omni")
    command = ["/usr/bin/time", "-f", "%M", str(omni), "data", "build", *sources, "--out", str(out),
               "--workers", str(workers)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    peak_kb = int(done.stderr.strip().splitlines()[-1])
    return {"command": " ".join(command), "samples": summary["samples"], "workers": summary["workers"], "shards": summary["shards"],
            "wall_s": round(wall, 1), "samples_per_s_wall": round(summary["samples"] / wall, 1),
            "samples_per_s_pipeline": summary["samples_per_s"], "peak_rss_mb": round(peak_kb / 1024, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--format", choices=["manifest", "webdataset"], default="manifest")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--root", default="/tmp/omni-data-build-bench")
    args = parser.parse_args()
    root = Path(args.root)
    sources = make(root, args.samples, args.format)
    for workers in args.workers:
        print(json.dumps(run(sources, root / f"out-{args.format}-{args.samples}-{workers}", workers)), flush=True)


if __name__ == "__main__":
    main()
