"""Load a trained run from its workdir: the config it wrote, its state built on this machine's
devices, and the params and assets of its newest complete checkpoint. Evaluation, export and the
scaling tools all start here."""
from __future__ import annotations

from pathlib import Path

import jax

from omni import config as config_lib, parallel
from omni.checkpoint import Checkpoints
from omni.modalities.text import BPETokenizer
from omni.run.setup import build_setup


def load_run(workdir: str | Path):
    """A finished (or running) workdir -> (config, setup, params, assets, step) of its newest
    checkpoint, on a data-parallel mesh of every local device (any mesh restores any checkpoint)."""
    workdir = Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: not found; is {workdir} an omni workdir?")
    config = config_lib.from_json_file(config_path)
    with config.unlocked():
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    mesh = parallel.make_mesh(config_lib.resolve_mesh_shape(config, jax.device_count()))
    checkpoints = Checkpoints(workdir / "checkpoints", keep=1000, async_save=False)
    step = checkpoints.latest_step()
    if step is None:
        raise FileNotFoundError(f"{workdir}/checkpoints: no complete checkpoint")
    setup = build_setup(config, mesh)
    with jax.set_mesh(mesh):
        state = checkpoints.restore_state(step, setup.abstract_state)
    saved = checkpoints.restore_assets(step)
    assets = {**saved, "tokenizer": BPETokenizer.from_json(saved["tokenizer"])}
    checkpoints.close()
    return config, setup, state["params"], assets, step
