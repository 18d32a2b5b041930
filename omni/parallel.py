"""Device mesh, logical -> physical axis rules, shardings, and multi-host initialisation.

Parameters and activations are named with *logical* axes (embed, mlp, heads, vocab, batch, ...);
AXIS_RULES maps each to mesh axes of the `data x fsdp x tensor` mesh:
  * batch  -> (data, fsdp): every data-parallel replica and every FSDP shard gets its own examples;
  * embed  -> fsdp: parameters (and so optimizer state) are sharded over fsdp (ZeRO-3 style);
  * mlp, heads, vocab -> tensor: Megatron-style tensor parallelism.
A mesh axis shards at most one dimension of an array: later names only take what earlier ones
left, so a bias named (mlp,) is sharded over tensor AND fsdp while a (embed, mlp) matrix splits
embed over fsdp and mlp over tensor.

A dimension that does not divide its axes is replicated over them. For activations
(`constrain`) that is allowed; a PARAMETER replicated that way costs its full size on every
device of the axis, so `parameter_specs` refuses it unless `mesh.allow_replication` opts in.

The mesh can be hybrid (`make_mesh(shape, dcn)`): the `dcn` part of the data and fsdp axes spans
the slow network between slices or processes (DCN), the rest stays inside one (ICI, NVLink).
"""
from __future__ import annotations

import math
import os
import sys

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from omni.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

AXIS_RULES: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", ("fsdp",)),
    ("mlp", ("tensor", "fsdp")),   # fsdp only where embed did not take it (e.g. MLP biases)
    ("heads", ("tensor",)),
    ("vocab", ("tensor", "fsdp")),
    ("proj", ("fsdp",)),
    ("patch", ("fsdp",)),
    ("head_dim", None),
    ("length", None),
    ("layers", None),
    ("modality", None),
    ("logit", None),
)
_RULES = dict(AXIS_RULES)


# XLA's GPU flags for overlapping collectives with compute, as MaxText sets them for multi-node GPU
# runs (src/MaxText/configs/a3/llama_2_7b/*.sh), each with what it does. launch/slurm.sbatch sets
# them where the job has GPUs, and the JobSet's pods set them (tests/test_launchers.py checks both).
GPU_XLA_FLAGS = (
    ("--xla_gpu_enable_latency_hiding_scheduler=true",
     "schedule compute between each async collective's start and done, so communication overlaps it"),
    ("--xla_gpu_enable_highest_priority_async_stream=true",
     "run collectives on the highest-priority stream, so compute kernels do not hold them back"),
    ("--xla_gpu_all_reduce_combine_threshold_bytes=67108864", "combine all-reduces up to 64 MiB into one NCCL call"),
    ("--xla_gpu_all_gather_combine_threshold_bytes=134217728", "combine all-gathers up to 128 MiB into one"),
    ("--xla_gpu_reduce_scatter_combine_threshold_bytes=67108864", "combine reduce-scatters up to 64 MiB into one"),
    ("--xla_gpu_enable_all_gather_combine_by_dim=false",
     "combine all-gathers even when they gather along different dimensions"),
    ("--xla_gpu_enable_reduce_scatter_combine_by_dim=false",
     "combine reduce-scatters even when they scatter along different dimensions"),
    ("--xla_gpu_enable_pipelined_all_gather=true",
     "in the scanned layer loop, gather the next layer's FSDP shards while this layer computes"),
    ("--xla_gpu_enable_pipelined_reduce_scatter=true",
     "reduce-scatter a layer's gradients while the next layer (backward) computes"),
    ("--xla_gpu_enable_pipelined_all_reduce=true", "the same for all-reduces in the layer loop"),
    ("--xla_gpu_enable_while_loop_double_buffering=true",
     "unroll the layer loop by two with double buffers, so the pipelined collectives have compute to hide behind"),
)

# What JAX needs to detect an srun task (jax/_src/clusters/slurm_cluster.py).
SLURM_TASK_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def maybe_initialize_distributed() -> None:
    """Join a multi-process run when the environment describes one: explicit coordinator
    variables (launch/local.sh, launch/jobset.yaml), or an srun task / TPU VM, which jax detects
    itself. OMNI_NO_DISTRIBUTED=1 keeps a single process (e.g. a one-task SLURM job)."""
    if jax.distributed.is_initialized():
        return
    coordinator = os.environ.get("OMNI_COORDINATOR")
    # A process that dies or hangs stops sending heartbeats; after this many seconds the others
    # are told and exit with an error instead of waiting forever in a collective.
    heartbeat = int(os.environ.get("OMNI_HEARTBEAT_TIMEOUT_S", "20"))
    if coordinator:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=int(os.environ["OMNI_NUM_PROCESSES"]),
            process_id=int(os.environ["OMNI_PROCESS_ID"]),
            heartbeat_timeout_seconds=heartbeat,
        )
    elif os.environ.get("OMNI_NO_DISTRIBUTED") == "1":
        return
    elif "SLURM_JOB_ID" in os.environ:
        missing = [name for name in SLURM_TASK_VARIABLES if name not in os.environ]
        if missing:
            # A shell inside an allocation (ssh to a node, salloc) rather than an srun task: JAX's
            # detection would fail half-way (jax issue 30073), so run one process and say why.
            print(f"omni: SLURM_JOB_ID is set but not {', '.join(missing)} (not an srun task): "
                  "running as one process", file=sys.stderr, flush=True)
            return
        jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat)
    elif "TPU_WORKER_HOSTNAMES" in os.environ:
        jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat)


def batch_mesh_axes() -> tuple[str, ...]:
    """The mesh axes the batch is sharded over in the current mesh context (empty if none)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return ()
    return tuple(a for a in ("data", "fsdp") if a in mesh.axis_names and mesh.shape[a] > 1)


def batch_shards() -> int:
    """How many pieces the batch is split into in the current mesh context (1 if none)."""
    mesh = jax.sharding.get_abstract_mesh()
    return math.prod(mesh.shape[a] for a in batch_mesh_axes())


def loop_collectives_are_ordered(mesh: Mesh) -> bool:
    """Whether collectives inside a while loop run in the same order, relative to the collectives
    outside it, on every device of `mesh`.

    Not on XLA:CPU with sharded parameters. Its runtime launches each thunk as soon as its inputs
    are ready, so a scanned layer stack (a while loop whose body all-gathers the FSDP / tensor
    shards of each layer) and an independent collective outside it (the ring SigLIP's ppermute)
    can start in different orders on different devices. Each then waits in a rendezvous the others
    never reach: on 8 CPU devices `mesh.fsdp=8` deadlocked (4 devices in the all-gather of the
    loop body, 4 in a collective-permute). Data-parallel meshes are safe: their parameters are
    replicated, so the loop holds no collective. OMNI_CPU_SCAN_LAYERS=1 keeps the scan anyway,
    to check whether an XLA version still deadlocks (the reproducer in docs/launch.md).
    """
    if os.environ.get("OMNI_CPU_SCAN_LAYERS") == "1":
        return True
    sharded = mesh.shape.get("fsdp", 1) * mesh.shape.get("tensor", 1) > 1
    return not (sharded and mesh.devices.flat[0].platform == "cpu")


def make_mesh(shape: tuple[int, int, int], dcn: tuple[int, int, int] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices, Auto axis types (sharding by the compiler).

    `dcn`: how many of each axis's positions lie across slices or processes (default: the `dcn`
    of a `config.MeshShape`, else none). With any, the mesh is hybrid (`hybrid_device_grid`)."""
    dcn = tuple(dcn or getattr(shape, "dcn", (1, 1, 1)))
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if math.prod(dcn) == 1:
        return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=axis_types)
    return Mesh(hybrid_device_grid(tuple(shape), dcn, jax.devices()), MESH_AXES, axis_types=axis_types)


def hybrid_device_grid(shape, dcn, devices) -> np.ndarray:
    """Devices laid out as `shape`, in blocks of one granule each (a TPU slice or a process): the
    `dcn` axes step from granule to granule over the slow network, the rest stay within one.

    Granules are the TPU slices where the devices report several (`slice_index`), else the
    processes (GPU and CPU), both through jax's `create_hybrid_device_mesh`. In ONE process the
    granules are what a run with prod(dcn) processes would have: consecutive devices by id, so that
    `omni plan` shows a multi-node run's collectives on one machine."""
    ici = tuple(size // across for size, across in zip(shape, dcn))
    granules = math.prod(dcn)
    slices = {getattr(d, "slice_index", 0) for d in devices}
    processes = {d.process_index for d in devices}
    if len(slices) > 1 or len(processes) > 1:
        by_slice = len(slices) > 1
        found = len(slices) if by_slice else len(processes)
        if found != granules:
            raise ConfigError(
                f"mesh.dcn_data*mesh.dcn_fsdp={granules} must equal the number of "
                f"{'TPU slices' if by_slice else 'processes'} ({found}): each holds one block of the mesh")
        return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=not by_slice)
    ordered = np.asarray(sorted(devices, key=lambda d: d.id), dtype=object)
    grid = ordered.reshape(*dcn, *ici).transpose(0, 3, 1, 4, 2, 5)  # (dcn_d, ici_d, dcn_f, ...)
    return grid.reshape(shape)


def granule_of_each_device(mesh: Mesh, dcn=(1, 1, 1)) -> list[int]:
    """The process (or slice) of every device of `mesh`, in `mesh.devices.flat` order: the real
    one when several processes run, else the one a run with prod(dcn) processes would give it
    (the block of the hybrid grid it sits in)."""
    devices = list(mesh.devices.flat)
    if len({d.process_index for d in devices}) > 1:
        return [d.process_index for d in devices]
    ici = [size // across for size, across in zip(mesh.devices.shape, dcn)]
    index = np.indices(mesh.devices.shape)
    blocks = [index[i] // ici[i] for i in range(len(dcn))]
    return [int(g) for g in np.ravel_multi_index(blocks, tuple(dcn)).flat]


def _spec_and_dropped(names, shape, mesh):
    """logical_to_spec's work: the spec, and for each dimension that did not divide its axes,
    (dimension, axes it would have taken)."""
    used: set[str] = set()
    spec, dropped = [], []
    for i, name in enumerate(names):
        axes = _RULES.get(name) if name is not None else None
        if axes is None:
            spec.append(None)
            continue
        axes = tuple(a for a in axes if a not in used)
        if mesh is not None and shape is not None:
            size = math.prod(mesh.shape[a] for a in axes)
            if size == 0 or shape[i] % size:
                kept = tuple(a for a in axes if shape[i] % mesh.shape[a] == 0)[:1]
                dropped.append((i, tuple(a for a in axes if a not in kept and mesh.shape[a] > 1)))
                axes = kept
        axes = tuple(a for a in axes if mesh is None or mesh.shape[a] > 1)
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*spec), dropped


def logical_to_spec(names, shape=None, mesh: Mesh | None = None) -> P:
    """Logical axis names -> PartitionSpec. With shape and mesh, a mesh axis that does not divide
    its dimension (or is already used by an earlier dimension) is dropped: that dim is replicated.
    Parameters go through `parameter_specs`, which refuses that."""
    return _spec_and_dropped(names, shape, mesh)[0]


def _mesh_text(mesh) -> str:
    return " ".join(f"{axis}={size}" for axis, size in mesh.shape.items())


def parameter_specs(params, mesh, allow_replication: bool = False) -> dict:
    """PartitionSpecs of parameters, refusing any the mesh would silently copy.

    params: (path, logical names, shape, dtype) per parameter. A parameter is replicated when a
    mesh axis its names ask for is used by none of its dimensions (e.g. 12 heads on mesh.tensor=8);
    that raises ConfigError naming it, its shape and the mesh, unless `allow_replication`, which
    logs each such parameter with its bytes per device. Returns {path: spec}."""
    specs = {}
    for path, names, shape, dtype in params:
        spec, dropped = _spec_and_dropped(names, shape, mesh)
        specs[path] = spec
        used = {a for entry in spec if entry for a in ((entry,) if isinstance(entry, str) else entry)}
        missed = [(dim, [a for a in axes if a not in used]) for dim, axes in dropped]
        missed = [(dim, axes) for dim, axes in missed if axes]
        if not missed:
            continue
        name = "/".join(map(str, path)) if isinstance(path, tuple) else str(path)
        where = ", ".join(f"dimension {names[dim]}={shape[dim]} over {'*'.join(f'mesh.{a}' for a in axes)}="
                          f"{math.prod(mesh.shape[a] for a in axes)}" for dim, axes in missed)
        if not allow_replication:
            raise ConfigError(
                f"parameter {name} {tuple(shape)} would be replicated on mesh {_mesh_text(mesh)}: {where} "
                "does not divide; choose mesh sizes that divide it, or set mesh.allow_replication=true")
        per_device = math.prod(_shard_shape(shape, spec, mesh)) * np.dtype(dtype).itemsize
        print(f"omni: mesh.allow_replication: parameter {name} {tuple(shape)} replicated ({where} does not "
              f"divide): {per_device} bytes per device", file=sys.stderr, flush=True)
    return specs


def _shard_shape(shape, spec, mesh) -> tuple[int, ...]:
    out = []
    for size, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else entry
        out.append(size // math.prod(mesh.shape[a] for a in axes))
    return tuple(out)


def multi_device_mesh():
    """The mesh of the current context when it spans several devices, else None."""
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty or mesh.size == 1 else mesh


def constrain(x, names):
    """Sharding constraint on an activation by logical names; a no-op outside a mesh context."""
    mesh = multi_device_mesh()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1)))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Process-local numpy batch -> global jax.Arrays sharded over the batch axes."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
            for k, v in local.items()}
