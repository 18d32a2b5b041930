"""Load a trained run from its workdir: the config it wrote, its model built on this machine's
devices, and the params and assets of its newest complete checkpoint. Evaluation, export and the
scaling tools all start here.

They need the params alone: the optimizer state (Adam's two moments, twice the params) is never
read. `load_run` shards the params over every device (FSDP) rather than copying them whole onto
each, so a model loads wherever its params fit across the devices together; `opened_run` gives
export the params a group at a time, as host arrays, so it never holds the whole model."""
from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator

import jax
import ml_collections

from omni import config as config_lib, parallel, storage
from omni.checkpoint import Checkpoints
from omni.modalities.text import BPETokenizer
from omni.run.bundle import flat_leaves, subtree
from omni.run.setup import Setup, build_setup


@dataclasses.dataclass
class OpenedRun:
    """A workdir's newest checkpoint, open for reading: nothing of its arrays is read yet."""
    config: ml_collections.ConfigDict
    setup: Setup
    step: int
    assets: dict
    checkpoints: Checkpoints

    @property
    def abstract_params(self) -> dict:
        """The params' nested ShapeDtypeStructs, with the FSDP shardings of `setup.mesh`."""
        return self.setup.abstract_state["params"]

    def params(self):
        """Every param, sharded over the devices as training's FSDP axis shards it."""
        with jax.set_mesh(self.setup.mesh):
            return self.checkpoints.restore_params(self.step, self.abstract_params)["params"]

    def param_groups(self, max_bytes: int) -> Iterator[dict]:
        """{"a/b/c": host numpy array} for consecutive groups of the params in sorted key order,
        each group at most `max_bytes` (or a single larger tensor): the host holds one group."""
        flat = flat_leaves(self.abstract_params)
        group: list[str] = []
        size = 0
        for name in sorted(flat):
            nbytes = flat[name].size * flat[name].dtype.itemsize
            if group and size + nbytes > max_bytes:
                yield self._read(group)
                group, size = [], 0
            group.append(name)
            size += nbytes
        if group:
            yield self._read(group)

    def _read(self, names: list[str]) -> dict:
        restored = self.checkpoints.restore_params_to_host(self.step, subtree(self.abstract_params, names))
        return flat_leaves(restored["params"])


@contextlib.contextmanager
def opened_run(workdir) -> Iterator[OpenedRun]:
    """A finished (or running) workdir (local, gs:// or s3://) -> its newest checkpoint, open.
    The mesh is data=1 x fsdp=every device (any mesh restores any checkpoint). The setup's state
    shardings and abstract state still describe the optimizer; nothing of it is ever read."""
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
        saved = checkpoints.restore_assets(step)
        assets = {**saved, "tokenizer": BPETokenizer.from_json(saved["tokenizer"])}
        yield OpenedRun(config, build_setup(config, mesh), step, assets, checkpoints)
    finally:
        checkpoints.close()


def load_run(workdir):
    """A workdir -> (config, setup, params, assets, step) of its newest checkpoint, the params
    sharded over every device (see `opened_run`)."""
    with opened_run(workdir) as run:
        return run.config, run.setup, run.params(), run.assets, run.step
