"""Peak host RSS of `omni export` on a config's initial state (docs/reliability.md, "Export's memory").

    python benchmarks/export_memory.py configs/base.py /tmp/base-run /tmp/base-bundle

Makes WORKDIR once (its config, tokenizer and assets fitted as `omni train` fits them, and one
checkpoint of the initial params and Adam moments), then exports it to BUNDLE (which must not
exist) and prints one JSON line: the RSS after the imports, the peak (`getrusage`), both in MiB,
and the params' size. Run the export part in a fresh process each time: the peak is per process.
"""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import jax

from omni import config as config_lib, parallel
from omni.export.bundle import export_bundle
from omni.run.setup import build_setup
from omni.train import loop

MIB = 1 << 20


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def make_initial_run(config_file: str, workdir: Path) -> None:
    """A workdir whose one checkpoint is the config's initial state (what step 0 would save)."""
    config = config_lib.load_config(config_file, [])
    mesh = parallel.make_mesh(config_lib.resolve_mesh_shape(config, jax.device_count()))
    workdir.mkdir(parents=True, exist_ok=True)
    loop.write_config(config, workdir)
    _, _, checkpoints, _, saved_assets = loop.set_up_input(config, workdir)
    with jax.set_mesh(mesh):
        state = build_setup(config, mesh).init_state()
    checkpoints.save(0, state, saved_assets, force=True)
    checkpoints.close()


def main(config_file: str, workdir: str, bundle: str) -> None:
    workdir = Path(workdir)
    if not (workdir / "checkpoints" / "0").exists():
        make_initial_run(config_file, workdir)
        print(f"made {workdir}; run again (a fresh process) to measure the export", file=sys.stderr)
        return
    jax.devices()
    after_imports = rss_mib()
    summary = export_bundle(workdir, bundle)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = summary["files"]["weights.safetensors"] / MIB
    print(json.dumps({"after_imports_mib": round(after_imports), "peak_mib": round(peak),
                      "above_imports_mib": round(peak - after_imports), "weights_mib": round(params, 1),
                      "peak_over_params": round(peak / params, 2),
                      "above_imports_over_params": round((peak - after_imports) / params, 2)}))


if __name__ == "__main__":
    main(*sys.argv[1:])
