"""A resume that would read other examples than the checkpointed run is refused in one line.

A checkpoint stores only the step; which examples step k reads follows from train.batch_size,
data.mixture (rows per modality set), data.group_size and train.seed. Changing one of them on
resume would silently shift the data position, so omni.train.guards refuses it, naming the key,
both values and what to do; compute-only keys still change freely."""
import json

import pytest

from omni import config as config_lib
from omni.errors import ConfigError
from omni.train.guards import POSITION_KEYS, check_resume_compatible
from tests.conftest import small_config

ROWS = "--config.data.mixture=image+text=6,text=2"


def checkpointed_run(folder, *overrides):
    """A workdir as a run with `overrides` leaves it: config.json and a checkpoints folder."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.json").write_text(config_lib.to_json(small_config(ROWS, *overrides)))
    return folder


@pytest.mark.parametrize("key, old, new", [
    ("train.batch_size", "8", "16"),
    ("data.mixture", "image+text=6,text=2", "image+text=4,text=4"),
    ("data.group_size", "0", "4"),
    ("train.seed", "0", "3"),
])
def test_a_changed_data_position_key_is_refused(tmp_path, key, old, new):
    workdir = checkpointed_run(tmp_path, f"--config.{key}={old}")
    mixture = ["--config.data.mixture=image+text=12,text=4"] if key == "train.batch_size" else []
    with pytest.raises(ConfigError) as caught:
        check_resume_compatible(small_config(ROWS, f"--config.{key}={new}", *mixture), workdir)
    message = str(caught.value)
    assert "\n" not in message
    assert f"{key}={old!r}" in message or f"{key}={int(old)!r}" in message, message
    assert f"this config has {key}=" in message and new in message.split("this config has")[1]
    assert "shift the data position" in message and f"--config.{key}=" in message and "--workdir" in message


def test_the_same_order_and_compute_only_changes_resume(tmp_path):
    workdir = checkpointed_run(tmp_path)
    check_resume_compatible(small_config(ROWS), workdir)
    check_resume_compatible(small_config(ROWS, "--config.train.steps=999", "--config.model.dtype=bfloat16",
                                         "--config.train.lr=0.1", "--config.data.num_threads=4"), workdir)


def test_a_workdir_from_before_a_key_existed_still_resumes(tmp_path):
    """config.json written before data.group_size existed: nothing to compare it with."""
    workdir = checkpointed_run(tmp_path)
    saved = json.loads((workdir / "config.json").read_text())
    del saved["data"]["group_size"]
    (workdir / "config.json").write_text(json.dumps(saved))
    check_resume_compatible(small_config(ROWS, "--config.data.group_size=4"), workdir)
    assert set(POSITION_KEYS) >= {"train.batch_size", "data.mixture"}


def test_train_refuses_a_changed_batch_size_before_compiling(tmp_path, default_data):
    """Through `train` itself: the mixture resolved from the data as the first run resolved it, so
    the batch size alone differs, and the error comes before any checkpoint is touched."""
    from omni.data import pipeline
    from omni.train import train

    first, _ = pipeline.with_resolved_mixture(small_config("--config.train.steps=2"))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text(config_lib.to_json(first))
    with pytest.raises(ConfigError, match="train.batch_size=8, but this config has train.batch_size=16"):
        train(small_config("--config.train.steps=2", "--config.train.batch_size=16"), tmp_path)
    assert list((tmp_path / "checkpoints").iterdir()) == []
    assert json.loads((tmp_path / "config.json").read_text())["train"]["batch_size"] == 8
