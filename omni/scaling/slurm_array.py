"""A sweep as one SLURM job array (`omni sweep --runner slurm`), and its status (`omni sweep --status`).

Task i of the array runs `omni sweep --only i`: one grid point, single-process, in its own run
folder out/runs/<name>. The script follows launch/slurm.sbatch's contract: a preemption signal
(`--signal=B:USR1@T`, or `scancel --signal=USR1 --batch`) reaches the script, which passes SIGUSR1
to the task; omni saves a checkpoint and exits 0, and only then does the script requeue its own
task, which resumes from the checkpoint.

Submission uses plain sbatch rather than submitit: the array script is a file the user can read
and rerun by hand, it keeps one signal/requeue contract for training and sweeps, and nothing is
pickled (submitit ships each task as a pickled callable, tied to the submitting Python).

Submitting again submits only the points that have no result.json and are not queued or running,
as an array over those indices; when there are none it submits nothing. Every submission is
recorded in out/slurm_jobs.jsonl, which `--status` reads together with squeue.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

JOBS_FILE = "slurm_jobs.jsonl"

ARRAY_SCRIPT = """#!/usr/bin/env bash
# One SLURM array task per grid point of {sweep_file}; task i runs `omni sweep --only i`.
# Written and submitted by `omni sweep --runner slurm`; submitting again runs only the unfinished
# points. When all tasks are done:  omni scaling fit {out}
#SBATCH --job-name=omni-sweep
#SBATCH --ntasks=1
#SBATCH --requeue
#SBATCH --open-mode=append
{sbatch_lines}
set -uo pipefail
export OMNI_NO_DISTRIBUTED=1   # each task is its own single-process run

preempted=0
on_signal() {{
  preempted=1
  echo "sweep.sbatch: preemption signal; asking grid point $SLURM_ARRAY_TASK_ID to save and stop" >&2
  scancel --signal=USR1 "$SLURM_JOB_ID.0" || true   # not TERM: srun would end the step at once
}}
trap on_signal USR1 TERM

srun --kill-on-bad-exit=1 {omni} sweep --config {sweep_file} --out {out} --only "$SLURM_ARRAY_TASK_ID" &
step_pid=$!
while true; do
  code=0
  wait "$step_pid" || code=$?
  if kill -0 "$step_pid" 2>/dev/null; then continue; fi   # a trapped signal interrupted `wait`
  break
done
if (( preempted && code == 0 )); then
  echo "sweep.sbatch: saved; requeueing task $SLURM_ARRAY_TASK_ID (job $SLURM_JOB_ID)" >&2
  scontrol requeue "$SLURM_JOB_ID" || echo "sweep.sbatch: could not requeue" >&2
fi
exit "$code"
"""

# squeue states of a task that will still run (or is running now).
QUEUED_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


def write_array_script(sweep, sweep_file: Path, out: Path, omni_executable: str) -> Path:
    """out/sweep.sbatch (the config's `sbatch` list: extra #SBATCH lines, e.g. --time, --partition)."""
    extra = "\n".join(f"#SBATCH {line}" for line in sweep.get("sbatch", ()))
    script = out / "sweep.sbatch"
    script.write_text(ARRAY_SCRIPT.format(sweep_file=sweep_file.resolve(), out=out.resolve(),
                                          sbatch_lines=extra, omni=omni_executable))
    script.chmod(0o755)
    return script


def array_spec(indices: list[int], max_parallel: int | None) -> str:
    """`--array` value: ranges of consecutive indices, e.g. [0, 1, 2, 5] -> "0-2,5", then %K."""
    ranges, start = [], None
    for i, index in enumerate(indices):
        if start is None:
            start = index
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            ranges.append(str(start) if start == index else f"{start}-{index}")
            start = None
    spec = ",".join(ranges)
    return f"{spec}%{max_parallel}" if max_parallel else spec


def submissions(out: Path) -> list[dict]:
    path = out / JOBS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """{"JOB_INDEX": squeue state} for the array tasks of these jobs still known to SLURM."""
    if not job_ids or not shutil.which("squeue"):
        return {}
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)],
                         capture_output=True, text=True)
    states = {}
    for line in out.stdout.splitlines():
        task, _, state = line.strip().partition(" ")
        states[task] = state
    return states


def point_states(out: Path, points: list[dict]) -> list[dict]:
    """Per grid point: done (result.json), running, queued, failed (submitted, no longer queued,
    no result), or not submitted; with the job id of its latest submission."""
    latest_job = {}
    for submission in submissions(out):
        for index in submission["indices"]:
            latest_job[index] = submission["job_id"]
    queue = queue_states(sorted(set(latest_job.values())))
    rows = []
    for index, point in enumerate(points):
        job = latest_job.get(index)
        task = f"{job}_{index}" if job else None
        if (out / "runs" / point["name"] / "result.json").exists():
            state = "done"
        elif task in queue:
            state = "running" if queue[task] in RUNNING_STATES else "queued"
        elif job:
            state = "failed"
        else:
            state = "not submitted"
        rows.append({"index": index, "name": point["name"], "state": state, "job": task,
                     **({"squeue": queue[task]} if task in queue else {})})
    return rows


def submit_unfinished(script: Path, out: Path, points: list[dict], max_parallel: int | None) -> dict:
    """sbatch the points that are neither done nor queued/running, as one array; record it."""
    rows = point_states(out, points)
    todo = [r["index"] for r in rows if r["state"] in ("failed", "not submitted")]
    summary = {"script": str(script), "points": len(points),
               "done": sum(r["state"] == "done" for r in rows),
               "in_queue": sum(r["state"] in ("queued", "running") for r in rows)}
    if not todo:
        return {**summary, "submitted": None, "array": None}
    spec = array_spec(todo, max_parallel)
    (out / "logs").mkdir(exist_ok=True)
    result = subprocess.run(["sbatch", "--parsable", f"--array={spec}", f"--chdir={out.resolve()}",
                             f"--output={(out / 'logs').resolve()}/%A_%a.log", str(script)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"sbatch {script} --array={spec} failed: {result.stderr.strip()}")
    job_id = result.stdout.strip().split(";")[0]
    with open(out / JOBS_FILE, "a") as f:
        f.write(json.dumps({"job_id": job_id, "indices": todo, "array": spec, "time": time.time()}) + "\n")
    return {**summary, "submitted": job_id, "array": spec}
