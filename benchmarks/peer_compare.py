"""Side by side with OpenCLIP on this machine: alternate the peer's timed training step and
`omni bench` of configs/openclip_small.py (f32 and bf16), several rounds, in one run, and report
images/s and their ratios per round (alternating keeps a noisy machine fair to both).

    python benchmarks/peer_compare.py --peer-venv /tmp/peer [--rounds 3]

The peer's venv recipe is in ../shared/tools/peer_openclip_step.py (outside this repo); without it
this exits 2. It lives outside the installed package because it runs that script; see docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEER_SCRIPT = REPO.parent / "shared" / "tools" / "peer_openclip_step.py"
SHAPE = ["--width", "384", "--depth", "6", "--heads", "6", "--patch", "16", "--image-size", "128",
         "--text-width", "384", "--text-depth", "6", "--text-heads", "6", "--context-length", "64",
         "--vocab", "49408", "--embed-dim", "384", "--batch", "32", "--loss", "siglip", "--threads", "2"]


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def run_peer(python: Path, steps: int) -> float:
    out = subprocess.run([str(python), str(PEER_SCRIPT), *SHAPE, "--steps", str(steps)],
                         capture_output=True, text=True, check=True)
    return _last_json(out.stdout)["images_per_s"]


def run_omni(dtype: str, steps: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "omni.cli", "bench", "--config",
                          str(REPO / "configs" / "openclip_small.py"), "--synthetic", "--steps", str(steps),
                          f"--config.model.dtype={dtype}"], capture_output=True, text=True, check=True)
    return _last_json(out.stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-venv", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    python = Path(args.peer_venv) / "bin" / "python"
    if not python.exists() or not PEER_SCRIPT.exists():
        print(f"peer_compare: need {python} and {PEER_SCRIPT}", file=sys.stderr)
        return 2
    rounds = []
    for i in range(args.rounds):
        peer = run_peer(python, args.steps)
        f32 = run_omni("float32", args.steps)
        bf16 = run_omni("bfloat16", args.steps)
        row = {"round": i, "openclip_images_per_s": peer,
               "omni_f32_images_per_s": f32["examples_per_s"], "omni_bf16_images_per_s": bf16["examples_per_s"],
               "omni_f32_mfu": f32["mfu"], "omni_bf16_mfu": bf16["mfu"],
               "ratio_f32": f32["examples_per_s"] / peer, "ratio_bf16": bf16["examples_per_s"] / peer}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rounds.append(row)
    summary = {"rounds": rounds,
               "median_ratio_f32": statistics.median(r["ratio_f32"] for r in rounds),
               "median_ratio_bf16": statistics.median(r["ratio_bf16"] for r in rounds)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
