"""A sweep's records: each run's result.json, the runs.csv table of them, and JSON writing
(numpy scalars made plain, NaN / inf as null, written atomically)."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np


def _plain(value):
    """JSON-safe: numpy scalars -> Python, NaN / inf -> None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_plain(data), indent=2, sort_keys=True, allow_nan=False))
    os.replace(tmp, path)


def load_results(directory) -> list[dict]:
    """Every result.json under directory/runs (or anywhere under directory), by name."""
    directory = Path(directory)
    files = sorted((directory / "runs").glob("*/result.json")) or sorted(directory.rglob("result.json"))
    return [json.loads(f.read_text()) for f in files]


CSV_COLUMNS = ["name", "modalities", "width", "depth", "N", "N_total", "steps", "batch_size", "D",
               "C_6ND", "C_analytic", "C_xla", "C_hlo_unrolled", "loss"]


def write_runs_csv(results: list[dict], path) -> Path:
    path = Path(path)
    loss_keys = sorted({k for r in results for k in r.get("losses", {}) if k != "loss"})
    point_keys = sorted({k for r in results for k in r.get("point", {})} - set(CSV_COLUMNS))
    columns = CSV_COLUMNS[:1] + point_keys + CSV_COLUMNS[1:] + loss_keys + ["loss_source", "wall_s"]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in results:
            row = {**r.get("point", {}), **r, **{k: v for k, v in r.get("losses", {}).items() if k != "loss"}}
            row["modalities"] = "+".join(r.get("modalities", []))
            writer.writerow(row)
    os.replace(tmp, path)
    return path


def column(results, key):
    """One field of every result as an array: a loss (key "loss", "loss/<objective>") or a top-level number."""
    return np.array([r["losses"][key] if key.startswith("loss") else r[key] for r in results], float)
