"""`omni plan`: compile the train step for the configured mesh on abstract inputs, run nothing,
and report per-device memory and FLOPs, so a launch that would not fit fails before it starts,
and which of the compiled step's collectives cross processes (the slow network between nodes)."""
from __future__ import annotations

import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from omni import config as config_lib, parallel
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
        **collectives_report(compiled.as_text(), mesh, config_lib.resolve_mesh_shape(config, jax.device_count()).dcn),
    }


# ----------------------------------------------------------------------------------------------
# Collectives of the compiled step, and which of them cross processes
# ----------------------------------------------------------------------------------------------

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "ragged-all-to-all",
               "collective-permute", "collective-broadcast")
# `%name = SHAPE op(` or `op-start(`; an async op's `-done` half carries no groups and is not counted.
_INSTRUCTION = re.compile(r"%?([\w.\-]+) = (.+?) (" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


def collectives_report(hlo_text: str, mesh, dcn=(1, 1, 1)) -> dict:
    """Counts per kind of collective in the compiled HLO, and the ones whose device groups span
    several processes: the real processes of a multi-process run, else the prod(dcn) processes
    a run with mesh.dcn_data / mesh.dcn_fsdp would have (parallel.granule_of_each_device)."""
    granules = parallel.granule_of_each_device(mesh, dcn)
    counts, crossing = {}, []
    for found in collectives(hlo_text, granules):
        entry = counts.setdefault(found["op"], {"count": 0, "cross_process": 0})
        entry["count"] += 1
        if found["crosses_processes"] is None:
            entry["unknown_groups"] = entry.get("unknown_groups", 0) + 1
        elif found["crosses_processes"]:
            entry["cross_process"] += 1
            crossing.append(f"{found['name']}: {found['op']} {_describe(found['shape'])}")
    return {"processes": len(set(granules)), "collectives": counts, "cross_process_collectives": crossing}


def _describe(shape: str) -> str:
    """`f32[16,128]{1,0}` as is; a combined collective's tuple of arrays as its count and bytes."""
    arrays = re.findall(r"\b([a-z]+)(\d*)[a-z0-9]*\[([\d,]*)\]", shape)
    if len(arrays) <= 1:
        return shape
    total = sum(int(np.prod([int(d) for d in dims.split(",") if d])) * (int(bits) // 8 if bits else 1)
                for _, bits, dims in arrays)
    return f"{len(arrays)} arrays, {total} bytes"


def collectives(hlo_text: str, granules: list[int]) -> list[dict]:
    """Every collective instruction: name, op, shape, and whether one of its device groups holds
    devices of different granules (None: groups in a form not understood)."""
    found = []
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.search(line)
        if not match:
            continue
        name, shape, op = match.groups()
        groups = device_groups(line, len(granules))
        crosses = None if groups is None else any(len({granules[d] for d in group}) > 1 for group in groups)
        found.append({"name": name, "op": op, "shape": shape, "crosses_processes": crosses})
    return found


def device_groups(line: str, num_devices: int) -> list[list[int]] | None:
    """The device groups (positions in the mesh's flat device order) of one collective, from its
    HLO text in any of XLA's forms: `source_target_pairs={{0,1},...}`, `replica_groups={{0,1},...}`
    (`{}`: all devices), the iota form `[2,4]<=[4,2]T(1,0)`, and the mesh-axes form
    `mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) {'axis_0'}` (sub-axes `'a':(1)2`)."""
    if match := re.search(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}", line):
        return [[int(a), int(b)] for a, b in re.findall(r"\{(\d+),(\d+)\}", match.group(1))]
    if match := re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line):
        groups, size, dims, perm = match.groups()
        return _iota(dims, perm).reshape(int(groups), int(size)).tolist()
    if match := re.search(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}", line):
        groups = [[int(d) for d in g.split(",") if d] for g in re.findall(r"\{([\d,]*)\}", match.group(1))]
        return groups or [list(range(num_devices))]
    if "replica_groups=mesh[" in line:
        return _mesh_axes_groups(line[line.index("replica_groups=mesh[") + len("replica_groups=mesh["):])
    return None


def _iota(dims: str, perm: str | None) -> np.ndarray:
    shape = [int(d) for d in dims.split(",")]
    ids = np.arange(int(np.prod(shape))).reshape(shape)
    return ids.transpose([int(p) for p in perm.split(",")]) if perm else ids


def _mesh_axes_groups(text: str) -> list[list[int]] | None:
    """Groups of `'a'=4,'b'=2], device_ids=(...) {'a'}`: devices that differ only along the named
    (sub-)axes of the mesh."""
    axes_text, rest = text.split("]", 1)
    axes = re.findall(r"'([^']+)'=(\d+)", axes_text)
    names, shape = [a for a, _ in axes], [int(s) for _, s in axes]
    ids = np.arange(int(np.prod(shape)))
    if rest.startswith(", device_ids=("):
        inner, depth = "", 1
        for char in rest[len(", device_ids=("):]:
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                break
            inner += char
        rest = rest[len(", device_ids=(") + len(inner) + 1:]
        iota = re.fullmatch(r"\[([\d,]+)\](?:T\(([\d,]+)\))?", inner.strip())
        ids = _iota(*iota.groups()).reshape(-1) if iota else np.array([int(d) for d in re.findall(r"\d+", inner)])
    grouped = re.match(r"\s*\{([^}]*)\}", rest)
    if grouped is None or ids.size != int(np.prod(shape)):
        return None
    ids = ids.reshape(shape)
    spans = [[] for _ in shape]  # per mesh axis, the (pre, size) sub-axes the groups run along
    for name, pre, size in re.findall(r"'([^']+)'(?::\((\d+)\)(\d+))?", grouped.group(1)):
        k = names.index(name)
        spans[k].append((int(pre), int(size)) if pre else (1, shape[k]))
    groups = {}
    for position in np.ndindex(*shape):
        # devices in one group agree on every coordinate digit outside the grouped sub-axes
        key = tuple(i - sum(i // pre % size * pre for pre, size in spans[k]) for k, i in enumerate(position))
        groups.setdefault(key, []).append(int(ids[position]))
    return list(groups.values())
