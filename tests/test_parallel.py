"""Sharding on simulated CPU devices and multi-process runs (each in its own process, so that
XLA_FLAGS can set the device count)."""
import json
import os
import subprocess
import sys

import pytest

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
    deadlocked with the layers' scan: omni.parallel.loop_collectives_are_ordered)."""
    runs = run_worker("tests.mesh_worker", "3", "1x1x1", devices=1)
    runs.update(run_worker("tests.mesh_worker", "3", "8x1x1", "2x4x1", "1x8x1", "2x2x2", devices=8))
    return runs


def test_same_losses_on_every_mesh(mesh_runs):
    reference = mesh_runs["1x1x1"]["losses"]
    assert len(reference) == 3
    for shape, run in mesh_runs.items():
        for got, want in zip(run["losses"], reference):
            assert abs(got - want) <= 1e-5 * abs(want), (shape, run["losses"], reference)


def test_state_bytes_per_device_fall_as_one_over_fsdp(mesh_runs):
    replicated = mesh_runs["8x1x1"]["compiled_argument_bytes"]
    for shape, fsdp in (("2x4x1", 4), ("1x8x1", 8)):
        ratio = mesh_runs[shape]["compiled_argument_bytes"] / replicated
        assert abs(ratio * fsdp - 1) <= 0.10, (shape, ratio)


@pytest.mark.parametrize("kind", ["siglip", "infonce"])
def test_chunked_contrastive_loss_equals_gathered_and_never_all_gathers(contrastive_runs, kind):
    result = contrastive_runs[kind]
    assert abs(result["loss"] - result["reference"]) <= 1e-5 * abs(result["reference"])
    assert result["grad_max_abs_diff"] <= 1e-5
    assert result["collective_permutes"] > 0 and result["all_gathers"] == 0


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
