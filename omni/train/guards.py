"""Guards that stop a run early with one clear line instead of failing deep inside: a resume with a
config of another shape or another data order, and a streak of non-finite steps."""
from __future__ import annotations

import json

import jax
import numpy as np

from omni import config as config_lib
from omni.errors import ConfigError
from omni.modalities import registry
from omni.run.assets import log


# Sections that decide the shapes of the checkpointed state: they must not change on resume.
SHAPE_SECTIONS = ("model", "modalities")
# Keys that decide which example sits at position k of the training order, and so which examples
# step s reads (omni.data.pipeline: a set's positions step * rows ... + rows, drawn from
# (seed, set, position), grouped into runs of group_size). A checkpoint stores only the step, so a
# resume with another value of one of them would silently read other examples than the
# checkpointed run would have: a shifted position, repeats and skips. data.mixture is compared as
# config.json holds it: resolved to rows per modality set, so a changed batch size, a changed
# weighting or changed data proportions all show there.
POSITION_KEYS = ("train.batch_size", "data.mixture", "data.group_size", "train.seed")


def flat(tree, prefix="") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def check_resume_compatible(config, workdir) -> None:
    """Resuming a workdir with a config of another shape would fail deep inside the restore, and
    one with another data order would read other examples without a word; say which key differs
    instead, before anything compiles. workdir: a local path or an epath (gs://, s3://)."""
    saved_path = workdir / "config.json"
    if not saved_path.exists() or not (workdir / "checkpoints").exists():
        return
    saved = json.loads(saved_path.read_text())
    current = json.loads(config_lib.to_json(config))
    check_same_shapes(saved, current, workdir)
    check_same_data_order(flat(saved), flat(current), workdir)


def check_same_data_order(saved: dict, current: dict, workdir) -> None:
    """Refuse a changed POSITION_KEYS value. A key the saved config.json lacks (a workdir from
    before the key existed) is not compared: there is nothing to compare it with."""
    for key in POSITION_KEYS:
        if key in saved and saved[key] != current.get(key):
            raise ConfigError(
                f"{workdir} holds checkpoints of a run with {key}={saved[key]!r}, but this config has "
                f"{key}={current.get(key)!r}: resuming would shift the data position (a checkpoint stores "
                f"only the step, and {key} decides which examples step k reads); resume with "
                f"--config.{key}={_cli_value(saved[key])}, or start a new --workdir")


def _cli_value(value) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"'{text}'" if any(c in text for c in " ,=+") else text


def check_same_shapes(saved: dict, current: dict, workdir) -> None:
    for section in SHAPE_SECTIONS:
        old, new = flat(saved.get(section, {}), f"{section}."), flat(current.get(section, {}), f"{section}.")
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key) and not key.endswith(("dtype", "remat", "scan_layers", "attention")):
                raise ConfigError(
                    f"{workdir} holds checkpoints of a run with {key}={old.get(key)!r}, but this config has "
                    f"{key}={new.get(key)!r}; use another --workdir (or the same {key})")
    # The matching head exists only when loss.itm.weight > 0 (omni.model.Omni).
    had_head = float(saved.get("loss", {}).get("itm", {}).get("weight", 0.0)) > 0
    if had_head != (float(current["loss"]["itm"]["weight"]) > 0):
        raise ConfigError(f"{workdir} holds checkpoints of a run {'with' if had_head else 'without'} the "
                          "matching head (loss.itm.weight > 0), and this config differs; use another --workdir "
                          "or keep loss.itm.weight on the same side of 0")


class BadStepWatch:
    """Stops the run after train.max_bad_steps consecutive skipped (non-finite) steps, naming the
    objectives (and so the modalities) whose loss was non-finite. It reads the flag of the step
    dispatched BEFORE the current one, which has finished or is about to while the current one
    is queued, so the check never stalls the device. 0 disables it. Skipped steps never touch the
    weights, so every checkpoint holds finite weights."""

    def __init__(self, config, start_step: int):
        self.limit = int(config.train.max_bad_steps)
        self.step = start_step  # the step whose metrics are pending
        self.pending = None
        self.streak = []

    def check(self, metrics, checkpoints) -> None:
        if not self.limit:
            return
        previous, self.pending = self.pending, metrics
        self.step += 1
        if previous is None:
            return
        if not int(previous["skipped"]):
            self.streak = []
            return
        self.streak.append(self.step - 1)
        culprits = [describe_loss(k) for k, v in jax.device_get(previous).items()
                    if k.startswith("loss/") and not np.isfinite(v)]
        log(f"step {self.step - 1}: non-finite {', '.join(culprits) or 'gradients'}; update skipped")
        if len(self.streak) >= self.limit:
            last = checkpoints.latest_step()
            raise FloatingPointError(
                f"steps {self.streak[0]}-{self.streak[-1]}: {len(self.streak)} consecutive steps had a non-finite "
                f"loss or gradient (train.max_bad_steps={self.limit}; non-finite: {', '.join(culprits) or 'gradients only'}); "
                f"stopped. The weights were not updated by those steps"
                + (f"; the last checkpoint is step {last}" if last is not None else ""))


def describe_loss(key: str) -> str:
    """'loss/mam' -> 'loss/mam (audio)'; 'loss/contrastive/audio-text' stays as it is (it names them)."""
    modality = registry.masked_objectives().get(key.split("/", 1)[1])
    return f"{key} ({modality})" if modality else key
