"""`omni plan`: compile the train step for the configured mesh on abstract inputs, run nothing,
and report per-device memory and FLOPs, so a launch that would not fit fails before it starts."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from omni.bench.setup import mesh_and_setup
from omni.data import pipeline
from omni.flops import model_flops_per_step



def _abstract_batch(setup):
    """The sub-batches of the configured mixture as shapes, dtypes and shardings."""
    shardings = setup.batch_shardings()
    return {sub: {k: jax.ShapeDtypeStruct(shape, dtype, sharding=shardings[sub][k])
                  for k, (shape, dtype) in arrays.items()}
            for sub, arrays in setup.batch_spec().items()}


def _bytes_per_device(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shape)) * jnp.dtype(leaf.dtype).itemsize
    return total


def compiled_flops(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


def plan(config) -> dict:
    """Compile the train step on abstract inputs; report per-device memory and FLOPs."""
    mesh, setup = mesh_and_setup(config)
    started = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = setup.compile_train_step().lower(setup.abstract_state, _abstract_batch(setup), setup.step_args).compile()
    compile_s = time.perf_counter() - started
    memory = compiled.memory_analysis()
    params = _bytes_per_device(setup.abstract_state["params"])
    optimizer = _bytes_per_device(setup.abstract_state["opt_state"])
    temp = int(getattr(memory, "temp_size_in_bytes", 0) or 0)
    arguments = int(getattr(memory, "argument_size_in_bytes", 0) or 0)
    outputs = int(getattr(memory, "output_size_in_bytes", 0) or 0)
    aliased = int(getattr(memory, "alias_size_in_bytes", 0) or 0)
    return {
        "mesh": dict(mesh.shape), "devices": jax.device_count(), "device": jax.devices()[0].device_kind,
        "params_bytes_per_device": params, "optimizer_bytes_per_device": optimizer,
        "activation_bytes_per_device": temp,
        # Donated state is aliased to the output, so it is counted once.
        "total_bytes_per_device": arguments + outputs - aliased + temp,
        # every token slot of the mixture's sub-batches counted as work (real tokens need a batch:
        # `omni bench` reports both)
        "model_flops_per_step": model_flops_per_step(config, pipeline.slot_layout(config)),
        "compiled_flops_per_step_per_device": compiled_flops(compiled),
        # XLA's cost analysis counts a while-loop body once: with scan_layers the compiled figure
        # covers one layer of the stack; plan with --config.model.scan_layers=false to compare.
        "compiled_flops_counts_one_layer": bool(config.model.scan_layers),
        "compile_time_s": compile_s,
    }
