"""Fault injection on real `omni train` processes: SIGTERM at random steps, kill -9 in the middle
of an async checkpoint save, and a run whose steps all turn non-finite. Each must lose no
completed step: the resumed run's losses are bit-identical to an uninterrupted run's."""
import json
import signal
from pathlib import Path

import numpy as np

from tests.conftest import SMALL
from tests.test_train import complete_checkpoints, losses_by_step, read_metrics, start_train, wait_for

STEPS = 16
COMMON = SMALL + [f"--config.train.steps={STEPS}", "--config.train.log_every=1", "--config.train.eval_every=0"]
# Save every step (async), so that a kill -9 can land inside a save.
ARGS = COMMON + ["--config.train.checkpoint_every=1", "--config.train.keep_checkpoints=3"]


def saving_now(workdir) -> bool:
    """An orbax save in flight: its temporary folder exists and has not been renamed to STEP yet."""
    folder = workdir / "checkpoints"
    return folder.exists() and any("tmp" in p.name for p in folder.iterdir())


def assert_no_pickle(*folders):
    """Loading must never execute code from data: no file of a workdir (checkpoints, assets) or of
    the dataset is a pickle (protocol 2+ starts with 0x80 and the protocol number)."""
    from omni.data.default import default_data_dir

    checked = 0
    for folder in (*folders, default_data_dir()):
        for path in Path(folder).rglob("*"):
            if path.is_file():
                head = path.read_bytes()[:2]
                assert not (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5), f"{path} is a pickle"
                checked += 1
    assert checked > 10


def test_sigterm_twice_then_kill_during_save_then_resume_is_exact(tmp_path):
    reference = tmp_path / "reference"
    # checkpoints change no loss: the reference saves once, at its end
    process = start_train(reference, COMMON + [f"--config.train.checkpoint_every={STEPS}"])
    assert process.wait(timeout=600) == 0, process.stderr.read()[-2000:]
    expected = losses_by_step(reference)
    assert sorted(expected) == list(range(1, STEPS + 1))
    assert_no_pickle(reference)

    run = tmp_path / "faulted"
    rng = np.random.default_rng(0)
    stop_at = sorted(rng.choice(np.arange(3, STEPS - 6), size=2, replace=False))
    for target in stop_at:  # preempted twice, at random steps
        rows = len(read_metrics(run))
        process = start_train(run, ARGS)
        wait_for(lambda: max(losses_by_step(run, rows) or [0]) >= target, process, timeout=300)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, process.stderr.read()[-2000:]
        stopped = max(losses_by_step(run, rows))
        assert max(complete_checkpoints(run)) == stopped  # saved exactly where it stood

    # kill -9 while an async save is being written
    rows = len(read_metrics(run))
    process = start_train(run, ARGS)
    wait_for(lambda: len(losses_by_step(run, rows)) >= 1 and saving_now(run), process, timeout=300)
    process.send_signal(signal.SIGKILL)
    process.wait()
    complete = complete_checkpoints(run)
    last_logged = max(losses_by_step(run))
    assert complete and max(complete) <= last_logged

    process = start_train(run, ARGS)
    assert process.wait(timeout=600) == 0, process.stderr.read()[-2000:]
    assert f"resumed from step {max(complete)}" in process.stderr.read()
    got = losses_by_step(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step] == expected[step], (step, got[step], expected[step])


def test_consecutive_non_finite_steps_stop_the_run_with_a_diagnostic(tmp_path):
    """A learning rate of 1e30 blows the weights up after one update; every later step is then
    non-finite, is skipped, and after train.max_bad_steps of them the run stops, naming the
    objectives, with finite weights in its checkpoints."""
    from omni.run.load import load_run

    workdir = tmp_path / "diverged"
    process = start_train(workdir, SMALL + [
        "--config.train.steps=40", "--config.train.lr=1e30", "--config.train.warmup_steps=1",
        "--config.train.max_bad_steps=3", "--config.train.log_every=1", "--config.train.eval_every=0",
        "--config.train.checkpoint_every=1"])
    assert process.wait(timeout=300) == 3
    stderr = process.stderr.read()
    last_line = stderr.strip().splitlines()[-1]
    assert "3 consecutive steps had a non-finite loss or gradient" in last_line, last_line
    assert "loss/mim (image)" in last_line or "loss/mlm (text)" in last_line or "loss/contrastive" in last_line
    rows = [r for r in read_metrics(workdir) if "loss" in r]
    assert rows and rows[-1]["step"] < 40
    _, _, params, _, step = load_run(workdir)
    assert step >= 1
    leaves = [np.asarray(x) for x in __import__("jax").tree.leaves(params)]
    assert all(np.isfinite(x).all() for x in leaves)
    assert sum(r.get("skipped", 0) for r in rows) >= 3
    json.dumps(rows)  # the metrics file holds plain JSON even with non-finite losses
