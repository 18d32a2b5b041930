"""Sharding on simulated CPU devices and multi-process runs (each in its own process, so that
XLA_FLAGS can set the device count)."""
import json
import os
import subprocess
import sys

from types import SimpleNamespace

import numpy as np
import pytest

from omni import parallel
from omni.bench.plan import device_groups
from omni.errors import ConfigError
from tests.conftest import BASE_XLA_FLAGS, REPO

# Eight virtual devices share 2 cores: under load a collective's participants can take longer
# than XLA's default 40 s to meet. A deadlock (devices in different collectives) is not retried:
# it fails the test (omni.parallel.loop_collectives_are_ordered says how omni avoids it).
PATIENT = f" --xla_cpu_collective_call_terminate_timeout_seconds=120 {BASE_XLA_FLAGS}"
EIGHT = "--xla_force_host_platform_device_count=8" + PATIENT


def run_worker(module, *args, devices=8):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}" + PATIENT)
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=900,
                         env=env, cwd=REPO)
    errors = [line for line in out.stderr.splitlines() if line[:1] in "FE" and "Involuntary" not in line]
    assert out.returncode == 0, "\n".join(errors[-20:]) or out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def mesh_args(data, fsdp, tensor):
    return [f"--config.mesh.data={data}", f"--config.mesh.fsdp={fsdp}", f"--config.mesh.tensor={tensor}"]


@pytest.fixture(scope="module")
def mesh_runs():
    """Eight devices as data, FSDP, both, and all three axes (the 1x8x1 and 2x2x2 meshes once
    deadlocked with the layers' scan: omni.parallel.loop_collectives_are_ordered). 2x4x1:2x1 is
    hybrid, its devices grouped as two processes would hold them: data parallel across them, FSDP
    within each."""
    runs = run_worker("tests.mesh_worker", "3", "1x1x1", devices=1)
    runs.update(run_worker("tests.mesh_worker", "3", "8x1x1", "2x4x1:2x1", "1x8x1", "2x2x2", devices=8))
    return runs


def test_same_losses_on_every_mesh(mesh_runs):
    reference = mesh_runs["1x1x1"]["losses"]
    assert len(reference) == 3
    for shape, run in mesh_runs.items():
        for got, want in zip(run["losses"], reference):
            assert abs(got - want) <= 1e-5 * abs(want), (shape, run["losses"], reference)


def test_state_bytes_per_device_fall_as_one_over_fsdp(mesh_runs):
    replicated = mesh_runs["8x1x1"]["compiled_argument_bytes"]
    for shape, fsdp in (("2x4x1:2x1", 4), ("1x8x1", 8)):
        ratio = mesh_runs[shape]["compiled_argument_bytes"] / replicated
        assert abs(ratio * fsdp - 1) <= 0.10, (shape, ratio)


def test_plan_names_the_collectives_that_cross_processes(mesh_runs):
    """On the hybrid mesh the first four devices are one process and the last four the other;
    the gradient reduction over `data` crosses them, FSDP's gathers of the parameters do not.
    One process with no mesh.dcn_* has nothing to cross."""
    hybrid = mesh_runs["2x4x1:2x1"]
    assert hybrid["process_of_each_device"] == [0, 0, 0, 0, 1, 1, 1, 1]
    counts = hybrid["collectives"]
    assert all("unknown_groups" not in entry for entry in counts.values()), counts
    assert counts["all-reduce"]["cross_process"] > 0, counts
    assert counts["all-gather"]["cross_process"] < counts["all-gather"]["count"], counts
    flat = mesh_runs["1x8x1"]["collectives"]
    assert sum(entry["count"] for entry in flat.values()) > 0
    assert all(entry["cross_process"] == 0 for entry in flat.values()), flat


def abstract_params(*overrides):
    """(path, logical names, shape, dtype) of every parameter of the small test model."""
    from flax import nnx
    from omni.model import Omni
    from tests.conftest import small_config
    config = small_config(*overrides)
    model = nnx.eval_shape(lambda: Omni(config, nnx.Rngs(params=0)))
    return [(path, var.get_metadata().get("out_sharding") or (None,) * len(var.shape), var.shape, var.dtype)
            for path, var in nnx.to_flat_state(nnx.state(model))]


def test_a_parameter_the_mesh_would_replicate_is_refused_or_listed_when_allowed(capsys):
    """2 heads on mesh.tensor=4: refused in one line naming the parameter, its shape and the mesh;
    with mesh.allow_replication each replicated parameter is listed with its bytes per device."""
    from jax.sharding import AbstractMesh
    params = abstract_params()
    mesh = AbstractMesh((1, 2, 4), parallel.MESH_AXES)
    with pytest.raises(ConfigError) as refused:
        parallel.parameter_specs(params, mesh)
    assert str(refused.value).startswith(
        "parameter encoder/wk (2, 32, 2, 16) would be replicated on mesh data=1 fsdp=2 tensor=4: "
        "dimension heads=2 over mesh.tensor=4 does not divide")
    specs = parallel.parameter_specs(params, mesh, allow_replication=True)
    listed = [line for line in capsys.readouterr().err.splitlines() if "mesh.allow_replication" in line]
    assert sorted(line.split()[3] for line in listed) == ["encoder/wk", "encoder/wo", "encoder/wq", "encoder/wv"]
    # wq (layers, embed, heads, head_dim) keeps its FSDP split: 2*32*2*16 / 2 floats per device
    assert "encoder/wq (2, 32, 2, 16) replicated (dimension heads=2 over mesh.tensor=4 does not divide): " \
           f"{2 * 32 * 2 * 16 // 2 * 4} bytes per device" in "\n".join(listed)
    assert specs[("encoder", "wq")] == parallel.P(None, "fsdp", None, None)
    assert parallel.parameter_specs(params, AbstractMesh((1, 2, 2), parallel.MESH_AXES))  # 2 heads on 2: fine
    assert not capsys.readouterr().err


def fake_devices(count, process_of, **attributes):
    return [SimpleNamespace(id=i, process_index=process_of(i), platform="cpu", device_kind="cpu",
                            **{k: f(i) for k, f in attributes.items()}) for i in range(count)]


def test_hybrid_grid_gives_each_process_its_own_block():
    """Devices numbered across processes in any order: each process's devices form one block of
    the data axis (dcn_data) or of the fsdp axis (dcn_fsdp); TPU slices take the processes' place."""
    devices = fake_devices(8, lambda i: i % 2)  # process 0 holds the even ids
    grid = parallel.hybrid_device_grid((2, 4, 1), (2, 1, 1), devices)
    assert [[d.process_index for d in row.flat] for row in grid] == [[0] * 4, [1] * 4]
    grid = parallel.hybrid_device_grid((2, 4, 1), (1, 2, 1), devices)
    assert {d.process_index for d in grid[:, :2].flat} == {0} and {d.process_index for d in grid[:, 2:].flat} == {1}
    slices = fake_devices(8, lambda i: i // 2, slice_index=lambda i: i % 2)  # 4 hosts, 2 slices
    grid = parallel.hybrid_device_grid((2, 4, 1), (2, 1, 1), slices)
    assert [{d.slice_index for d in row.flat} for row in grid] == [{0}, {1}]
    with pytest.raises(ConfigError, match=r"mesh.dcn_data\*mesh.dcn_fsdp=4 must equal the number of processes \(2\)"):
        parallel.hybrid_device_grid((4, 2, 1), (4, 1, 1), devices)


def test_one_process_groups_devices_as_the_dcn_keys_would():
    """`omni plan` on one machine: consecutive devices form the processes mesh.dcn_* describes."""
    devices = fake_devices(8, lambda i: 0)
    grid = parallel.hybrid_device_grid((2, 2, 2), (1, 2, 1), devices)
    assert [d.id for d in grid.flat] == [0, 1, 4, 5, 2, 3, 6, 7]
    mesh = SimpleNamespace(devices=grid)
    assert parallel.granule_of_each_device(mesh, (1, 2, 1)) == [0, 0, 1, 1, 0, 0, 1, 1]
    assert parallel.granule_of_each_device(mesh) == [0] * 8


@pytest.mark.parametrize("text, groups", [
    ("replica_groups={{0,1},{2,3}}, to_apply=%add", [[0, 1], [2, 3]]),
    ("replica_groups={}, to_apply=%add", [[0, 1, 2, 3]]),
    ("replica_groups=[2,2]<=[2,2]T(1,0), to_apply=%add", [[0, 2], [1, 3]]),
    ("source_target_pairs={{0,1},{1,2},{2,3},{3,0}}", [[0, 1], [1, 2], [2, 3], [3, 0]]),
    ("replica_groups=mesh['axis_0'=2,'axis_1'=2], device_ids=([2,2]T(1,0)) {'axis_0'}, to_apply=%add",
     [[0, 1], [2, 3]]),
    ("replica_groups=mesh['axis_0'=4] {'axis_0':(2)2}, to_apply=%add", [[0, 2], [1, 3]]),
])
def test_collective_device_groups_in_each_hlo_form(text, groups):
    assert sorted(device_groups(f"%c = f32[4]{{0}} all-reduce(%x), channel_id=1, {text}", 4)) == groups


@pytest.mark.parametrize("kind", ["siglip", "infonce", "matching"])
def test_sharded_losses_equal_unsharded_and_their_collectives_do_not_grow_with_devices(contrastive_runs, kind):
    """The all-gathered contrastive losses and the matching draw on 8 devices equal one device's,
    gradients too, with the same collectives on 2 devices as on 8 (no ring: no collective-permute)."""
    result = contrastive_runs[kind]
    assert abs(result["loss"] - result["reference"]) <= 1e-5 * abs(result["reference"])
    assert result["grad_max_abs_diff"] <= 1e-5
    assert kind != "matching" or (result["same_draw"] and result["found"] == result["rows"])
    ops = result["collectives"]
    assert ops["8"] == ops["2"] and "collective-permute" not in ops["8"], ops


@pytest.fixture(scope="module")
def contrastive_runs():
    return run_worker("tests.contrastive_worker")


def test_blocked_attention_runs_on_each_devices_examples_and_heads():
    """Looping over a sharded batch would gather it: without `shard_map` this program holds 9
    all-gathers."""
    result = run_worker("tests.attention_worker", devices=4)
    assert result["input_shards"] == 4
    assert abs(result["loss"] - result["reference"]) <= 1e-5 * abs(result["reference"])
    assert result["grad_max_abs_diff"] <= 1e-5 * result["grad_max_abs"]
    assert result["all_gathers"] == 0
