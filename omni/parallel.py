"""Device mesh, logical -> physical axis rules, shardings, and multi-host initialisation.

Parameters and activations are named with *logical* axes (embed, mlp, heads, vocab, batch, ...);
AXIS_RULES maps each to mesh axes of the `data x fsdp x tensor` mesh:
  * batch  -> (data, fsdp): every data-parallel replica and every FSDP shard gets its own examples;
  * embed  -> fsdp: parameters (and so optimizer state) are sharded over fsdp (ZeRO-3 style);
  * mlp, heads, vocab -> tensor: Megatron-style tensor parallelism.
A mesh axis shards at most one dimension of an array: later names only take what earlier ones
left, so a bias named (mlp,) is sharded over tensor AND fsdp while a (embed, mlp) matrix splits
embed over fsdp and mlp over tensor. A dimension that does not divide is replicated instead.
"""
from __future__ import annotations

import math
import os
import sys

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

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


def make_mesh(shape: tuple[int, int, int]) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices, Auto axis types (sharding by the compiler)."""
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(names, shape=None, mesh: Mesh | None = None) -> P:
    """Logical axis names -> PartitionSpec. With shape and mesh, a mesh axis that does not divide
    its dimension (or is already used by an earlier dimension) is dropped: that dim is replicated."""
    used: set[str] = set()
    spec = []
    for i, name in enumerate(names):
        axes = _RULES.get(name) if name is not None else None
        if axes is None:
            spec.append(None)
            continue
        axes = tuple(a for a in axes if a not in used)
        if mesh is not None and shape is not None:
            size = math.prod(mesh.shape[a] for a in axes)
            if size == 0 or shape[i] % size:
                axes = tuple(a for a in axes if shape[i] % mesh.shape[a] == 0)[:1]
        axes = tuple(a for a in axes if mesh is None or mesh.shape[a] > 1)
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*spec)


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
