"""End to end: a manifest of files written here -> dataset -> training whose loss falls -> eval
commands; and kill -9 / SIGTERM -> resume continues exactly like an uninterrupted run."""
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SMALL, omni_command, small_config

COLORS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
SHAPES = ("square", "bar")


def write_manifest(root: Path) -> Path:
    """48 small images (a coloured square or bar on black) with captions, plus text-only lines."""
    (root / "img").mkdir(parents=True)
    lines = []
    rng = np.random.default_rng(0)
    for i in range(48):
        color = list(COLORS)[i % 4]
        shape = SHAPES[(i // 4) % 2]
        pixels = np.zeros((24, 24, 3), np.uint8)
        r, c = rng.integers(0, 8, 2)
        if shape == "square":
            pixels[r:r + 12, c:c + 12] = COLORS[color]
        else:
            pixels[r:r + 4, :] = COLORS[color]
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        entry = {"id": f"x{i}", "label": color, "text": f"a {color} {shape} on black", "image": f"img/{i}.png"}
        if i % 6 == 0:
            entry["split"] = "test"
        lines.append(json.dumps(entry))
    lines += [json.dumps({"text": f"plain words number {i} about colours"}) for i in range(16)]
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    manifest = write_manifest(root / "files")
    data = root / "data"
    result = subprocess.run(omni_command("data", "build", str(manifest), "--out", str(data)),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    built = json.loads(result.stdout)
    from omni.eval.periodic import PeriodicEvaluator
    from omni.train import train
    config = small_config(f"--config.data.path={data}", "--config.train.steps=80", "--config.train.log_every=5",
                          "--config.train.eval_every=40", "--config.train.checkpoint_every=40",
                          "--config.train.warmup_steps=10")
    workdir = root / "run"
    last = train(config, workdir, evaluator=PeriodicEvaluator())
    return built, workdir, data, last


def read_metrics(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_manifest_build_counts_splits(trained_run):
    from omni.data.manifest import stable_split
    built, _, _, _ = trained_run
    # 8 lines say split=test; the others (ids x<i>, and line-<n> for lines without an id) are
    # assigned by a stable hash.
    unassigned = [f"x{i}" for i in range(48) if i % 6] + [f"line-{n}" for n in range(49, 65)]
    hashed_to_test = sum(stable_split(key, 0.1) == "test" for key in unassigned)
    assert built["splits"]["test"] == 8 + hashed_to_test
    assert built["splits"]["train"] == 64 - 8 - hashed_to_test


def test_loss_falls_and_outputs_exist(trained_run):
    _, workdir, _, last = trained_run
    rows = [r for r in read_metrics(workdir) if "loss" in r]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 16
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2]), losses
    for key in ("loss/mlm", "loss/mim", "loss/mmm", "loss/contrastive", "lr", "step_time_s", "tokens_per_s", "mfu"):
        assert key in rows[-1], key
    evals = [r for r in read_metrics(workdir) if "eval/retrieval/image->text/R@1" in r]
    assert [r["step"] for r in evals] == [40, 80]
    assert (workdir / "config.json").exists() and (workdir / "tokenizer.json").exists()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["40", "80"]
    assert list((workdir / "tensorboard").iterdir())


def test_eval_commands_print_json(trained_run):
    _, workdir, data, _ = trained_run
    out = subprocess.run(omni_command("eval", "retrieval", "--workdir", str(workdir), "--data", str(data),
                                      "--query", "image", "--target", "text"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result) == {"R@1", "R@5", "R@10", "R@1_chance", "R@5_chance", "R@10_chance", "n"} and result["n"] >= 8
    assert 1 / result["n"] <= result["R@1_chance"] < result["R@5_chance"]  # repeated captions all count
    assert 0 <= result["R@1"] <= result["R@5"] <= result["R@10"] <= 1
    # The same number the training loop logged for the final step.
    final = [r for r in read_metrics(workdir) if "eval/retrieval/image->text/R@1" in r][-1]
    assert result["R@1"] == pytest.approx(final["eval/retrieval/image->text/R@1"])
    out = subprocess.run(omni_command("eval", "zeroshot", "--workdir", str(workdir), "--data", str(data),
                                      "--modality", "image", "--template", "a {} square on black"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["classes"] == 4 and result["n"] == json.loads((workdir / "eval" / "retrieval-test-image-text.json")
                                                               .read_text())["n"]
    assert (workdir / "eval" / "zeroshot-test-image.json").exists()


# ------------------------------------------------------------------------------------------------
# Kill and resume
# ------------------------------------------------------------------------------------------------

RESUME_ARGS = SMALL + ["--config.train.steps=400", "--config.train.log_every=1", "--config.train.eval_every=0",
                       "--config.train.checkpoint_every=5", "--config.train.keep_checkpoints=3"]


def start_train(workdir, args):
    """`omni train` in the background. Its stdout is not read while it runs: keep it quiet."""
    return subprocess.Popen(omni_command("train", "--workdir", str(workdir), *args),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def start(workdir):
    return start_train(workdir, RESUME_ARGS)


def wait_for(predicate, process, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"training exited early ({process.returncode}): {process.stderr.read()[-2000:]}")
        time.sleep(0.02)
    process.kill()
    raise AssertionError("timed out")


def complete_checkpoints(workdir):
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def losses_by_step(workdir, skip_rows=0):
    out = {}
    for row in read_metrics(workdir)[skip_rows:]:
        if "loss" in row:
            out[row["step"]] = row["loss"]  # the last occurrence wins (rows after a restart)
    return out


def test_kill_then_resume_matches_uninterrupted_run(tmp_path):
    interrupted = tmp_path / "interrupted"
    process = start(interrupted)
    wait_for(lambda: complete_checkpoints(interrupted), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed_from = max(complete_checkpoints(interrupted))

    # Resume; then preempt it with SIGTERM, which must save where it stands and exit cleanly.
    rows_before = len(read_metrics(interrupted))
    process = start(interrupted)
    wait_for(lambda: max(losses_by_step(interrupted, rows_before) or [0]) >= resumed_from + 3, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0, process.stderr.read()[-2000:]
    assert "preemption signal: saved a checkpoint at step" in process.stderr.read()
    stopped_at = max(losses_by_step(interrupted, rows_before))
    assert max(complete_checkpoints(interrupted)) == stopped_at

    uninterrupted = tmp_path / "uninterrupted"
    process = start(uninterrupted)
    wait_for(lambda: losses_by_step(uninterrupted) and max(losses_by_step(uninterrupted)) >= stopped_at, process)
    process.kill()
    process.wait()

    expected, got = losses_by_step(uninterrupted), losses_by_step(interrupted)
    for step in range(resumed_from + 1, stopped_at + 1):
        assert got[step] == expected[step], (step, got[step], expected[step])
