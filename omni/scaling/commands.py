"""Command-line glue, wired into omni.cli as `omni sweep`, `omni scaling fit` and
`omni scaling lr-transfer`."""
from __future__ import annotations

from pathlib import Path

from omni.scaling.checks import summary as checks_summary
from omni.scaling.fit_dir import fit_dir
from omni.scaling.lr_transfer import lr_transfer
from omni.scaling.sweep import run_sweep, sweep_status


def cli_sweep(config_path, out, only: int | None = None, runner: str | None = None,
              max_parallel: int | None = None, status: str | None = None) -> dict:
    """`omni sweep --config PATH --out DIR [--only I] [--runner local|slurm] [--max-parallel K]`:
    run or submit the grid; `omni sweep --status DIR`: where each point is. Returns the summary
    (printed as JSON)."""
    if status is not None:
        return sweep_status(status)
    if not config_path or not out:
        raise ValueError("omni sweep: give --config PATH and --out DIR (or --status DIR)")
    return run_sweep(config_path, out, only=only, runner=runner, max_parallel=max_parallel)


def cli_fit(directory, **fit_kwargs) -> dict:
    """`omni scaling fit DIR`: fit, write fit.json / runs.csv / PNGs; returns a short summary.
    fit_kwargs go to fit_dir (bootstrap, level, min_runs, plots)."""
    data = fit_dir(directory, **fit_kwargs)
    summary = {"dir": str(directory), "fit": str(Path(directory) / "fit.json"), "plots": data.get("plots", []),
               "main": data.get("main"), "laws": {}}
    if data.get("main") and "checks" in data["groups"][data["main"]]:
        summary.update(checks_summary(data["groups"][data["main"]]["checks"]))
    if data.get("main"):
        for target, fit in data["groups"][data["main"]]["fits"].items():
            row = {k: fit[k] for k in ("E", "A", "B", "alpha", "beta")}
            if "intervals" in fit:
                row["intervals"] = {k: fit["intervals"][k] for k in ("E", "A", "B", "alpha", "beta")
                                    if k in fit["intervals"]}
            if "holdout_largest" in fit:
                row["holdout_largest_relative_error"] = fit["holdout_largest"]["relative_error"]
            summary["laws"][target] = row
    for group, entry in data["groups"].items():
        if "skipped" in entry:
            summary.setdefault("skipped", {})[group] = entry["skipped"]
    if data.get("interactions"):
        summary["interactions"] = {g: {k: v for k, v in e.items() if k in ("C", "beta", "alpha", "gamma", "skipped")}
                                   for g, e in data["interactions"].items()}
    return summary


def cli_lr_transfer(directory) -> dict:
    """`omni scaling lr-transfer DIR`: best lr per width under SP and muP; writes
    lr_transfer.json and lr_transfer.png into DIR."""
    return lr_transfer(directory)
