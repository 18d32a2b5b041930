"""Load a trained run from its workdir: the config it wrote, its model built on this machine's
devices, and the params and assets of its newest complete checkpoint. Evaluation, export and the
scaling tools all start here.

They need the params alone: the optimizer state (Adam's two moments, twice the params) is never
read, and the params are sharded over every device (FSDP) rather than copied whole onto each, so
a model loads wherever its params fit across the devices together."""
from __future__ import annotations

import json

import jax
import ml_collections

from omni import config as config_lib, parallel, storage
from omni.checkpoint import Checkpoints
from omni.modalities.text import BPETokenizer
from omni.run.setup import build_setup


def load_run(workdir):
    """A finished (or running) workdir (local, gs:// or s3://) -> (config, setup, params, assets,
    step) of its newest checkpoint. The mesh is data=1 x fsdp=every device: each parameter is
    sharded as training's FSDP axis shards it (any mesh restores any checkpoint). The setup's
    state shardings and abstract state still describe the optimizer; nothing of it is restored."""
    workdir = storage.path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: not found; is {workdir} an omni workdir?")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    with config.unlocked():
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, -1, 1
        config.mesh.dcn_data, config.mesh.dcn_fsdp = 1, 1
    mesh = parallel.make_mesh(config_lib.resolve_mesh_shape(config, jax.device_count()))
    checkpoints = Checkpoints(workdir / "checkpoints", keep=1000, async_save=False)
    try:
        step = checkpoints.latest_step()
        if step is None:
            raise FileNotFoundError(f"{workdir / 'checkpoints'}: no complete checkpoint")
        setup = build_setup(config, mesh)
        with jax.set_mesh(mesh):
            params = checkpoints.restore_params(step, setup.abstract_state["params"])["params"]
        saved = checkpoints.restore_assets(step)
    finally:
        checkpoints.close()
    assets = {**saved, "tokenizer": BPETokenizer.from_json(saved["tokenizer"])}
    return config, setup, params, assets, step
