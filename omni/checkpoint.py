"""Orbax checkpoints: async saves, keep the last N, restore onto the current mesh.

A checkpoint holds the train state (step, params, optimizer state) and the run's assets (the BPE
tokenizer), so every checkpoint is self-contained. The data position is the step itself (see
omni.data.pipeline). Orbax writes each step into a temporary folder and renames it when complete,
so a save killed half-way never looks like a checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    def __init__(self, directory: str | Path, keep: int, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "assets"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, assets: dict, force: bool = False) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), assets=ocp.args.JsonSave(assets)), force=force)

    def restore_assets(self, step: int) -> dict:
        restored = self.manager.restore(step, args=ocp.args.Composite(assets=ocp.args.JsonRestore()))
        return restored["assets"]

    def restore_state(self, step: int, abstract_state):
        """abstract_state: ShapeDtypeStructs carrying the target shardings (any mesh)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
