"""The repo's own launch/slurm.sbatch on a real one-machine SLURM cluster (tests/slurm_cluster.py):
two tasks train as one jax.distributed run, a preempted job saves, requeues itself and resumes
exactly, and a dead task fails the job. Without slurm-wlm and munge (or root) these tests skip,
unless OMNI_REQUIRE_SLURM=1 (set by .ci/run), where they fail."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MODEL_SMALL, REPO, SMALL, omni_command
from tests.slurm_cluster import SlurmCluster, missing_binaries

STEPS = 30
RUN = SMALL + [f"--config.train.steps={STEPS}", "--config.train.log_every=1", "--config.train.eval_every=0",
               "--config.train.checkpoint_every=100000"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = (f"SLURM binaries missing: {', '.join(missing_binaries())}" if missing_binaries()
              else "the SLURM daemons must start as root" if os.geteuid() != 0 else None)
    if reason:
        if os.environ.get("OMNI_REQUIRE_SLURM") == "1":
            pytest.fail(f"OMNI_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()


def submit(slurm, workdir: Path, *sbatch_options, args=RUN) -> str:
    venv = Path(sys.executable).parent.parent
    out = slurm.run("sbatch", "--parsable", f"--chdir={REPO}", f"--output={workdir}.log", *sbatch_options,
                    str(REPO / "launch" / "slurm.sbatch"), "--workdir", str(workdir), *args,
                    env=dict(slurm.env, OMNI_VENV=str(venv)))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}  # the last row of a step wins


def wait_for_steps(workdir: Path, count: int, slurm, job_id: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not (workdir / "metrics.jsonl").exists() or len(losses(workdir)) < count:
        state = slurm.job(job_id).get("JobState")
        assert time.time() < deadline and state in ("PENDING", "RUNNING", "CONFIGURING"), \
            (state, Path(f"{workdir}.log").read_text()[-3000:] if Path(f"{workdir}.log").exists() else "")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def uninterrupted(slurm, tmp_path_factory):
    """The reference: a 2-task job that runs to the end."""
    workdir = tmp_path_factory.mktemp("sbatch") / "uninterrupted"
    job = submit(slurm, workdir, "--nodes=1", "--ntasks=2")
    info = slurm.wait_for_state(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
    assert info["JobState"] == "COMPLETED", Path(f"{workdir}.log").read_text()[-3000:]
    return workdir


def test_two_tasks_train_as_one_run_and_match_one_process(uninterrupted, tmp_path):
    log = Path(f"{uninterrupted}.log").read_text()
    assert "2 process(es)" in log
    one = tmp_path / "one"
    out = subprocess.run(omni_command("train", "--workdir", str(one), *RUN), capture_output=True, text=True,
                         timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1 process(es)" in out.stderr
    two, single = losses(uninterrupted), losses(one)
    assert sorted(two) == list(range(1, STEPS + 1))
    for step in (1, STEPS // 2, STEPS):
        assert abs(two[step] - single[step]) <= 1e-5 * abs(single[step]), (step, two[step], single[step])


def test_preempted_job_saves_requeues_and_resumes_exactly(slurm, uninterrupted, tmp_path):
    workdir = tmp_path / "preempted"
    job = submit(slurm, workdir, "--nodes=1", "--ntasks=2", "--requeue", "--signal=B:USR1@5")
    wait_for_steps(workdir, 3, slurm, job)
    # What --signal=B:USR1 sends ahead of the time limit, sent now.
    assert slurm.run("scancel", "--signal=USR1", "--batch", job).returncode == 0
    deadline = time.time() + 180
    while slurm.job(job).get("Restarts", "0") == "0":
        assert time.time() < deadline, (slurm.job(job), Path(f"{workdir}.log").read_text()[-3000:])
        time.sleep(0.5)
    log = Path(f"{workdir}.log").read_text()
    saved = sorted({int(line.rsplit("step ", 1)[1].split(";")[0]) for line in log.splitlines()
                    if "preemption signal: saved a checkpoint at step" in line})
    assert len(saved) == 1 and saved[0] < STEPS, log[-3000:]
    # A requeued job waits about 2 minutes to become eligible; start it now, once the first run's
    # processes are gone (started sooner, slurmd refuses it: "Job credential revoked").
    slurm.wait_for_state(job, {"PENDING"}, timeout=120)
    deadline = time.time() + 120
    while task_pids(workdir) or step_daemons(job):
        assert time.time() < deadline, slurm.job(job)
        time.sleep(0.5)
    time.sleep(2)  # slurmd's own cleanup of the finished run
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    info = slurm.wait_for_state(job, {"COMPLETED", "FAILED", "CANCELLED"})
    log = Path(f"{workdir}.log").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, log[-3000:], slurm.logs())
    assert f"resumed from step {saved[0]}" in log
    expected, got = losses(uninterrupted), losses(workdir)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert [got[s] for s in sorted(got)] == [expected[s] for s in sorted(expected)]  # bitwise on CPU
    assert_same_final_params(uninterrupted, workdir)


def assert_same_final_params(a: Path, b: Path) -> None:
    code = ("import sys, json, numpy as np, jax; from omni.run.load import load_run; "
            "p = [jax.tree.leaves(jax.device_get(load_run(w)[2])) for w in sys.argv[1:]]; "
            "print(json.dumps([len(p[0]), all(np.array_equal(x, y) for x, y in zip(*p))]))")
    out = subprocess.run([sys.executable, "-c", code, str(a), str(b)], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    count, equal = json.loads(out.stdout.strip().splitlines()[-1])
    assert count > 10 and equal


def task_pids(workdir: Path) -> list[int]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,comm=,args="], capture_output=True, text=True).stdout
    # The tasks are python processes (the venv's `omni` script); srun and the batch script, whose
    # command lines hold the same arguments, are not.
    return [int(line.split()[0]) for line in out.splitlines()
            if (line.split()[1] == "omni" or line.split()[1].startswith("python")) and f"--workdir {workdir}" in line]


def step_daemons(job_id: str) -> list[str]:
    """slurmstepd processes still serving the job (their command line names it: `[JOB.batch]`)."""
    out = subprocess.run(["ps", "-ww", "-eo", "args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.startswith("slurmstepd") and f"[{job_id}." in line]


def test_a_dead_task_fails_the_job(slurm, tmp_path):
    workdir = tmp_path / "killed"
    job = submit(slurm, workdir, "--nodes=1", "--ntasks=2")  # RUN as before: its compiled step is cached
    wait_for_steps(workdir, 3, slurm, job)
    pids = task_pids(workdir)
    assert len(pids) == 2, pids
    os.kill(pids[1], signal.SIGKILL)
    killed_at = time.time()
    info = slurm.wait_for_state(job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)
    assert info["JobState"] == "FAILED", info
    assert time.time() - killed_at <= 60
    assert not task_pids(workdir)


def test_a_half_slurm_shell_runs_one_process_with_a_note():
    """ssh into an allocated node: SLURM_JOB_ID is set, the srun task variables are not. JAX's
    detection would fail half-way (jax issue 30073); omni runs one process and says why."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    code = ("from omni import parallel; parallel.maybe_initialize_distributed(); import jax; "
            "print(jax.distributed.is_initialized(), jax.process_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env=dict(env, SLURM_JOB_ID="4242"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "1"]
    assert "SLURM_JOB_ID is set but not SLURM_STEP_NODELIST" in out.stderr and "one process" in out.stderr


def sweep_file_2x2(tmp_path: Path) -> Path:
    """A 2x2 tiny sweep (two widths x two budgets) of text-only runs, submitted as a job array. The
    long budget is long enough to be preempted half-way: these runs logged 95-155 steps/s in CI,
    and 40 steps once ended before the signal that came after the 5th reached them."""
    common = [*MODEL_SMALL, "--config.modalities=text", "--config.train.eval_every=0",
              "--config.train.log_every=1", "--config.train.checkpoint_every=100"]
    path = tmp_path / "sweep_2x2.py"
    path.write_text(
        "import ml_collections\n"
        "def get_config():\n"
        "    c = ml_collections.ConfigDict()\n"
        f"    c.base = {str(REPO / 'configs' / 'tiny.py')!r}\n"
        "    c.runner = 'local'\n"
        f"    c.overrides = {common!r}\n"
        "    c.grid = ml_collections.ConfigDict()\n"
        "    c.grid.size = {'w16': ['--config.model.width=16', '--config.model.embed_dim=16'], 'w32': []}\n"
        "    c.grid.budget = {'s02': ['--config.train.steps=2'], 's400': ['--config.train.steps=400']}\n"
        "    c.axes = ('size', 'budget')\n"
        "    c.eval_batches = 0\n"
        "    c.cost_analysis = False\n"
        "    return c\n")
    return path


def sweep_cli(slurm, *args) -> dict:
    out = subprocess.run(omni_command("sweep", *args), capture_output=True, text=True, timeout=120, cwd=REPO,
                         env=slurm.env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def wait_for_sweep(slurm, out: Path, timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = sweep_cli(slurm, "--status", str(out))
        if not {"queued", "running"} & set(status["counts"]):
            return status
        time.sleep(2)
    raise AssertionError(f"sweep still in the queue after {timeout} s: {status}")


def test_a_sweep_runs_as_one_job_array_and_resubmits_only_unfinished_points(slurm, tmp_path, default_data):
    sweep_file, out = sweep_file_2x2(tmp_path), tmp_path / "sweep"
    first = sweep_cli(slurm, "--config", str(sweep_file), "--out", str(out), "--runner", "slurm",
                      "--max-parallel", "2")
    assert first["array"] == "0-3%2" and first["submitted"], first
    status = wait_for_sweep(slurm, out)
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((out / "logs").glob("*.log")))
    assert status["counts"] == {"done": 4}, (status, logs)
    assert [p["job"] for p in status["points"]] == [f"{first['submitted']}_{i}" for i in range(4)]
    for point in status["points"]:
        result = json.loads((out / "runs" / point["name"] / "result.json").read_text())
        assert result["steps"] == int(point["name"].split("-s")[-1]) and result["loss"] > 0

    # Submitting the finished sweep again submits nothing.
    again = sweep_cli(slurm, "--config", str(sweep_file), "--out", str(out), "--runner", "slurm")
    assert again["submitted"] is None and again["done"] == 4, again

    # A point whose run is gone (its task failed) is the only one submitted again; preempted
    # half-way, it saves, requeues itself and resumes.
    shutil.rmtree(out / "runs" / "w32-s400")
    assert sweep_cli(slurm, "--status", str(out))["points"][3]["state"] == "failed"
    third = sweep_cli(slurm, "--config", str(sweep_file), "--out", str(out), "--runner", "slurm")
    assert third["array"] == "3" and third["submitted"] not in (None, first["submitted"]), third
    task = f"{third['submitted']}_3"
    run = out / "runs" / "w32-s400"
    wait_for_steps(run, 5, slurm, task)
    assert slurm.run("scancel", "--signal=USR1", "--batch", task).returncode == 0
    info = slurm.wait_for_state(task, {"PENDING"}, timeout=120)   # requeued after its save
    assert int(info["Restarts"]) == 1, info
    # As above: start the requeued task at once, when the first run's processes are gone.
    deadline = time.time() + 120
    while step_daemons(info["JobId"]) or any(f"--out {out} --only 3" in line for line in
                                              subprocess.run(["ps", "-ww", "-eo", "args="], capture_output=True,
                                                             text=True).stdout.splitlines()):
        assert time.time() < deadline, slurm.job(task)
        time.sleep(0.5)
    time.sleep(2)
    slurm.run("scontrol", "update", f"JobId={task}", "StartTime=now")
    status = wait_for_sweep(slurm, out)
    log = (out / "logs" / f"{third['submitted']}_3.log").read_text()
    assert status["counts"] == {"done": 4}, (status, log[-3000:])
    assert status["points"][3]["job"] == task
    assert "saved a checkpoint at step" in log and "resumed from step" in log, log[-3000:]
    assert sorted(losses(run)) == list(range(1, 401))
    assert len((out / "slurm_jobs.jsonl").read_text().splitlines()) == 2
