"""Evaluation results on disk (WORKDIR/eval/<name>.json) and as flat training metrics."""
from __future__ import annotations

import json
import re

import jax
import numpy as np

from omni import storage


def write_result(workdir, name: str, result: dict, step=None):
    """Write result (with "step" first when given) to WORKDIR/eval/<name>.json (process 0 only);
    returns the path. The name may only hold letters, digits, '.', '_', '-' (others become '_').
    workdir: local, gs:// or s3:// (omni.storage)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "result"
    path = storage.path(workdir) / "eval" / f"{safe}.json"
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"step": int(step), **result} if step is not None else result
        path.write_text(json.dumps(payload, indent=2))
    return path


def flatten(prefix: str, result: dict) -> dict[str, float]:
    """Numeric leaves of a result as "<prefix>/<key>[/<subkey>]" floats; counts (n, n_*, classes),
    chance levels and the probe's C and validation curve are left out."""
    skip = {"n", "classes", "chance", "C", "validation", "n_train", "n_val"}
    out = {}
    for key, value in result.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            out.update(flatten(f"{prefix}/{key}", value))
        elif isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = float(value)
    return out
