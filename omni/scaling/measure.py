"""How a sweep's run is measured for the law: the numbers of its result.json, and the functions
that measure N, C_xla and L (omni.scaling.sweep.run_one assembles them with D and C_analytic).

N   parameters minus the embedding tables (tree keys containing tokens, positions, rows, cols:
    the text token table -- tied to the output layer -- and the text / image position tables).
D   present, non-padding tokens processed: steps x the real tokens per step that training logged
    (omni.flops.real_work), so a law carries over between data mixtures; D_slots and
    D_per_modality count the token slots the sub-batches hold (padding included).
C   C_6ND = 6 N D (what the law's compute-optimal formula uses); C_analytic = the real-token
    training FLOPs per step x steps (unimodal + fused passes, attention, heads);
    C_xla = XLA's cost analysis of the compiled step x steps (see compiled_step_flops).
L   the final checkpoint's loss on `eval_batches` batches of the held-out split, encoded like
    training batches (see heldout_losses); with eval_batches = 0, the final training row.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omni import config as config_lib, objectives, parallel
from omni.data import pipeline
from omni.data.records import open_split, split_names
from omni.run.load import load_run
from omni.run.setup import build_setup

# Parameter-tree keys that hold embeddings: token tables and positional tables (text tokens and
# positions, image row/column position tables). Their parameters are excluded from N.
EMBEDDING_KEYS = ("tokens", "positions", "rows", "cols")


def non_embedding_params(params) -> tuple[int, int]:
    """(non-embedding parameters, all parameters) of a params tree (arrays or ShapeDtypeStructs)."""
    total = embedding = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        size = int(np.prod(leaf.shape))
        total += size
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if any(word in name for name in names for word in EMBEDDING_KEYS):
            embedding += size
    return total - embedding, total


def mesh_and_setup(config):
    """The config's device mesh and its Setup (abstract state, compiled step builder)."""
    mesh = parallel.make_mesh(config_lib.resolve_mesh_shape(config, jax.device_count()))
    return mesh, build_setup(config, mesh)


def compiled_step_flops(config) -> dict:
    """FLOPs per step from XLA's cost analysis of the compiled train step (the step train() runs:
    same function, shardings, donation; compiled from abstract inputs, nothing executed).

    XLA counts a while loop's body once, so with model.scan_layers the compiled count misses
    (depth - 1) layers; for that case the pre-optimisation HLO of the same step with the layers
    unrolled is also counted (lowered only, not compiled: cheap)."""

    def abstract_batch(setup):
        shardings = setup.batch_shardings()
        return {sub: {k: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=shardings[sub][k])
                      for k, (shape, dtype) in arrays.items()}
                for sub, arrays in setup.batch_spec().items()}

    def flops_of(analysis):
        if isinstance(analysis, (list, tuple)):
            analysis = analysis[0] if analysis else {}
        value = (analysis or {}).get("flops")
        return float(value) if value is not None and value >= 0 else None

    out = {}
    mesh, setup = mesh_and_setup(config)
    with jax.set_mesh(mesh):
        lowered = setup.compile_train_step().lower(setup.abstract_state, abstract_batch(setup), setup.step_args)
        out["xla_flops_per_step"] = flops_of(lowered.compile().cost_analysis())
    if config.model.get("scan_layers", False) and int(config.model.depth) > 1:
        unrolled = config.copy_and_resolve_references()
        with unrolled.unlocked():
            unrolled.model.scan_layers = False
        mesh, setup = mesh_and_setup(unrolled)
        with jax.set_mesh(mesh):
            lowered = setup.compile_train_step().lower(setup.abstract_state, abstract_batch(setup), setup.step_args)
            out["hlo_unrolled_flops_per_step"] = flops_of(lowered.cost_analysis())
        out["xla_note"] = ("model.scan_layers: XLA counts the scanned layer once; "
                           "hlo_unrolled_flops_per_step counts every layer (pre-optimisation HLO)")
    return out


def heldout_losses(workdir, split: str, batches: int, config=None) -> dict | None:
    """Losses of the run's final checkpoint on `batches` batches of the held-out split, encoded
    exactly like training batches (same batch size, modality dropout, masking rates; fixed masking
    keys). Returns {"loss/<objective>": mean, ..., "loss": weighted sum, "sem": {name: standard error
    of the mean over batches}} or None without the split.

    An objective with nothing to score in a batch reports exactly 0 there; such batches are left
    out of that objective's mean. `loss` is recomputed as sum(weight * mean) over the objectives."""
    run_config, setup, params, assets, _ = load_run(workdir)
    config = config or run_config
    data_dir = pipeline.resolve_data_dir(config)
    if split not in split_names(data_dir):
        return None
    source = open_split(data_dir, split)
    eval_config = config.copy_and_resolve_references()
    with eval_config.unlocked():
        eval_config.train.steps = int(batches)
        eval_config.mesh.data, eval_config.mesh.fsdp, eval_config.mesh.tensor = -1, 1, 1
    graphdef = setup.graphdef
    loss_fn = jax.jit(lambda p, batch, rng: objectives.total_loss(nnx.merge(graphdef, p), batch, rng, eval_config)[1])
    shardings = setup.batch_shardings()
    key = jax.random.key(int(config.train.seed) + 7919)
    values: dict[str, list[float]] = {}
    with jax.set_mesh(setup.mesh):
        for i, (local, _) in enumerate(pipeline.training_batches(source, eval_config, assets)):
            batch = jax.tree.map(jax.make_array_from_process_local_data, shardings, local)
            metrics = jax.device_get(loss_fn(params, batch, jax.random.fold_in(key, i)))
            for name, value in metrics.items():
                value = float(value)
                if (name == "loss" or name.startswith("loss/")) and value != 0.0 and math.isfinite(value):
                    values.setdefault(name, []).append(value)
    out = {name: float(np.mean(v)) for name, v in values.items() if name != "loss"}
    # Standard error of each mean over the batches: the evaluation's own noise (seeds add more).
    sem = {name: float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None for name, v in values.items()}
    weights = {name: float(config.loss[name].weight) for name in config.loss}
    out["loss"] = sum(w * out[f"loss/{name}"] for name, w in weights.items() if w > 0 and f"loss/{name}" in out)
    out["batches"] = int(batches)
    out["sem"] = sem
    return out


def last_training_row(workdir) -> dict:
    """The training row (one with `loss`) of the highest step in workdir/metrics.jsonl."""
    path = Path(workdir) / "metrics.jsonl"
    best: dict = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if "loss" in row and row.get("step", -1) >= best.get("step", -1):
                best = row
    return best
