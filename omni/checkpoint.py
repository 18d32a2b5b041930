"""Orbax checkpoints: async saves, keep the last N, restore onto the current mesh.

A checkpoint holds the train state (step, params, optimizer state) and the run's assets (the BPE
tokenizer), so every checkpoint is self-contained. The data position is the step itself (see
omni.data.pipeline). Orbax writes each step into a temporary folder and renames it when complete,
so a save killed half-way never looks like a checkpoint; on an object store, which has no rename,
it writes in place and marks the step complete with a commit_success.txt written last.

The directory may be local, `gs://bucket/...` or `s3://bucket/...` (omni.storage). Orbax 0.12's
tensorstore specs know local paths and gs:// only (`build_kvstore_tspec` in
orbax/checkpoint/_src/serialization/tensorstore_utils.py), and tensorstore's s3 driver reads its
endpoint from the spec, not from AWS_ENDPOINT_URL (an s3 kvstore without `endpoint` waits on
amazonaws.com, which a local server never answers). `_teach_orbax_s3` fills both gaps from the
AWS variables; `_tensorstore_gcs_endpoint` points tensorstore's gcs driver, which reads
TENSORSTORE_GCS_HTTP_URL, at STORAGE_EMULATOR_HOST when that is set.

Evaluation and export restore the params alone (`restore_params`): orbax's partial restore reads
only the params' arrays, never the optimizer's moments (two more copies of every weight).
"""
from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.serialization import tensorstore_utils  # internals, for s3 (see above)

from omni import storage


class Checkpoints:
    def __init__(self, directory, keep: int, async_save: bool = True):
        self.directory = storage.path(directory)
        _reach_object_stores()
        atomicity = None
        if os.fspath(self.directory).startswith("s3://"):
            atomicity = ocp.options.AtomicityOptions(mode=ocp.options.AtomicityMode.COMMIT_FILE)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True, atomicity_options=atomicity)
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

    def restore_params(self, step: int, abstract_params):
        """The params alone, as the tree {"params": ...}, onto the shardings `abstract_params`
        carries: orbax's partial restore leaves the step, the optimizer state and every other
        entry of the checkpoint unread."""
        item = {"params": abstract_params}
        restore_args = jax.tree.map(lambda leaf: ocp.ArrayRestoreArgs(sharding=leaf.sharding), item)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True)))
        return restored["state"]

    def restore_params_to_host(self, step: int, abstract_params):
        """Some of the params, as host numpy arrays in the tree {"params": ...}: `abstract_params`
        may hold any subset of the params' leaves (nested dicts of ShapeDtypeStructs). Export reads
        the model a few tensors at a time this way, so neither the host nor a device ever holds
        all of it, and nothing is placed on a device."""
        item = {"params": abstract_params}
        restore_args = jax.tree.map(lambda leaf: ocp.RestoreArgs(restore_type=np.ndarray, dtype=leaf.dtype), item)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True)))
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# ==============================================================================================
# Object stores for orbax and tensorstore
# ==============================================================================================

def _reach_object_stores() -> None:
    """Idempotent: let orbax's arrays reach s3:// and a GCS emulator (see the module's note)."""
    _tensorstore_gcs_endpoint()
    _teach_orbax_s3()


def _tensorstore_gcs_endpoint() -> None:
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator and "TENSORSTORE_GCS_HTTP_URL" not in os.environ:
        os.environ["TENSORSTORE_GCS_HTTP_URL"] = emulator if "://" in emulator else f"http://{emulator}"


def s3_kvstore(spec):
    """A tensorstore kvstore spec (nested) with each gcs driver made s3 on the same bucket and
    path, with the endpoint and region of the AWS variables when they are set."""
    if isinstance(spec, list):
        return [s3_kvstore(s) for s in spec]
    if not isinstance(spec, dict):
        return spec
    if spec.get("driver") not in ("gcs", "gcs_grpc"):
        return {key: s3_kvstore(value) for key, value in spec.items()}
    out = {**spec, "driver": "s3"}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint:
        out["endpoint"] = endpoint
        out["aws_region"] = region or "us-east-1"  # a custom endpoint needs one; any does locally
    elif region:
        out["aws_region"] = region
    return out


def _teach_orbax_s3() -> None:
    """Wrap orbax's one builder of kvstore specs so that an s3:// directory gets the spec of the
    same gs:// directory (ocdbt layout, process subfolders and all), with its gcs driver made s3.
    Every orbax reader and writer of arrays calls the builder through the module's attribute."""
    build = tensorstore_utils.build_kvstore_tspec
    if getattr(build, "omni_s3", False):
        return

    def build_kvstore_tspec(directory, name=None, **kwargs):
        text = os.fspath(directory)
        if text.startswith("s3://"):
            return s3_kvstore(build("gs://" + text[len("s3://"):], name, **kwargs))
        return build(directory, name, **kwargs)

    build_kvstore_tspec.omni_s3 = True
    tensorstore_utils.build_kvstore_tspec = build_kvstore_tspec
