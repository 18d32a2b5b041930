"""Multi-process runs on one machine: two processes match one, a checkpoint moves between meshes
and process counts, a dead process ends the launcher with its status, and SIGTERM preempts both
processes at one step. (Split from test_parallel.py so the two heavy files run side by side.)"""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import BASE_XLA_FLAGS, REPO, SMALL, omni_command
from tests.test_parallel import EIGHT, PATIENT, mesh_args

RUN = SMALL + ["--config.train.steps=4", "--config.train.log_every=1", "--config.train.eval_every=0",
               "--config.train.checkpoint_every=2", "--config.train.keep_checkpoints=5",
               # each modality set's rows split over 4 batch shards and 2 processes
               "--config.data.mixture=image+text=4,text=4"]


def losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def assert_close(got: dict, want: dict, steps):
    for step in steps:
        assert abs(got[step] - want[step]) <= 1e-5 * abs(want[step]), (step, got, want)


def test_two_processes_match_one_and_resume_on_another_mesh(tmp_path):
    """The two processes on a hybrid mesh (omni.parallel.hybrid_device_grid): data parallel across
    them (mesh.dcn_data=2), FSDP and tensor parallel within each."""
    two = tmp_path / "two_processes"
    hybrid = [*mesh_args(2, 2, 2), "--config.mesh.dcn_data=2"]
    out = subprocess.run([str(REPO / "launch" / "local.sh"), "2", "--devices", "8", "--",
                          *omni_command("train", "--workdir", str(two), *RUN, *hybrid)],
                         capture_output=True, text=True, timeout=600, cwd=REPO,
                         env=dict(os.environ, XLA_FLAGS=PATIENT))
    assert out.returncode == 0, out.stderr[-3000:]
    one = tmp_path / "one_process"
    out = subprocess.run(omni_command("train", "--workdir", str(one), *RUN, *mesh_args(2, 2, 2)),
                         capture_output=True, text=True, timeout=900, cwd=REPO, env=dict(os.environ, XLA_FLAGS=EIGHT))
    assert out.returncode == 0, out.stderr[-3000:]
    assert_close(losses(two), losses(one), range(1, 5))

    # The 2-process checkpoint of step 2 continues on ONE process with a 1x4x1 mesh.
    moved = tmp_path / "moved"
    shutil.copytree(two, moved)
    shutil.rmtree(moved / "checkpoints" / "4")
    (moved / "metrics.jsonl").unlink()
    out = subprocess.run(omni_command("train", "--workdir", str(moved), *RUN, *mesh_args(1, 4, 1)),
                         capture_output=True, text=True, timeout=900, cwd=REPO,
                         env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4" + PATIENT))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from step 2" in out.stderr
    assert sorted(losses(moved)) == [3, 4]
    assert_close(losses(moved), losses(two), (3, 4))


def start_local_launcher(tmp_path, workdir, steps):
    """launch/local.sh with 2 processes of `omni train` in the background; its output in a log."""
    log = open(tmp_path / "launcher.log", "w")
    args = omni_command("train", "--workdir", str(workdir), *SMALL, f"--config.train.steps={steps}",
                        "--config.train.log_every=1", "--config.train.eval_every=0",
                        "--config.train.checkpoint_every=100000")
    env = dict(os.environ, OMNI_HEARTBEAT_TIMEOUT_S="15", XLA_FLAGS=BASE_XLA_FLAGS)
    launcher = subprocess.Popen([str(REPO / "launch" / "local.sh"), "2", "--", *args], env=env, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)
    return launcher, tmp_path / "launcher.log"


def steps_logged(workdir) -> int:
    return len(losses(workdir)) if (workdir / "metrics.jsonl").exists() else 0


def wait_for_steps(workdir, count, launcher, log, timeout=300):
    deadline = time.time() + timeout
    while steps_logged(workdir) < count:
        assert time.time() < deadline and launcher.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)


def workers(launcher) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True)
    return sorted(int(pid) for pid in out.stdout.split())


def test_preempt_one_process_then_resume_then_kill_one(tmp_path):
    """A 2-process run through launch/local.sh, preempted, resumed, then broken:
    1. SIGTERM to ONE process (as a node's preemption notice is): JAX's preemption sync point gives
       both processes the same step, both save it and exit 0, and the launcher exits 0;
    2. the same command resumes from that checkpoint;
    3. SIGKILL to one process: the other is stopped (or stops once the coordination service misses
       the dead one's heartbeats), and the LAUNCHER exits with the killed process's status within
       60 s, so a scheduler never records a dead run as done."""
    workdir = tmp_path / "run"
    launcher, log = start_local_launcher(tmp_path, workdir, steps=100000)
    try:
        wait_for_steps(workdir, 3, launcher, log)
        os.kill(workers(launcher)[1], signal.SIGTERM)
        returncode = launcher.wait(timeout=120)
    finally:
        launcher.kill()
    text = log.read_text()
    assert returncode == 0, text[-3000:]
    saved = [int(line.rsplit("step ", 1)[1].split(";")[0]) for line in text.splitlines()
             if "preemption signal: saved a checkpoint at step" in line]
    assert len(saved) == 2 and saved[0] == saved[1], text[-3000:]  # both processes, one step
    stopped_at = saved[0]
    assert max(losses(workdir)) == stopped_at
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [stopped_at]

    launcher, log = start_local_launcher(tmp_path, workdir, steps=100000)
    try:
        wait_for_steps(workdir, stopped_at + 3, launcher, log)
        assert f"resumed from step {stopped_at}" in log.read_text()
        pids = workers(launcher)
        assert len(pids) == 2
        os.kill(pids[1], signal.SIGKILL)
        killed_at = time.time()
        returncode = launcher.wait(timeout=90)
        elapsed = time.time() - killed_at
    finally:
        launcher.kill()
    assert returncode == 128 + signal.SIGKILL, log.read_text()[-3000:]
    assert elapsed <= 60, elapsed
    assert not workers(launcher)
