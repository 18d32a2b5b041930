"""A sweep config and its grid: which runs a sweep makes, and each run's config.

A sweep config (configs/scaling/*.py, `get_config()` like any config) names a base config,
common overrides, and a grid: axes of named override lists; every combination is one run (or,
with sweep.points, only the listed combinations), in out/runs/<name>. See configs/scaling/tiny_sweep.py.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import ml_collections

from omni import config as config_lib
from omni.modalities import registry


def resolve_sweep_file(path) -> Path:
    """The sweep config's file: a path, or a name in configs/."""
    return config_lib.resolve_config_path(str(path))


def load_sweep(path) -> ml_collections.ConfigDict:
    """The sweep config (its `get_config()`)."""
    return config_lib.load_config(path)


def grid_points(sweep) -> list[dict]:
    """Every combination of the grid's axes -> {"name", "point": {axis: value}, "overrides": [...]}.

    sweep.grid: {axis: {value_name: [override, ...]}}; sweep.axes (optional) orders the axes
    (ConfigDict sorts keys). Values are taken in name order, so zero-pad numbers in names.
    An override `--sweep.modalities=text,image` keeps only those modalities of the base config.
    sweep.points (optional): a list of value-name tuples, one per axis in sweep.axes order, to
    run instead of the full product (e.g. IsoFLOP slices, or a second seed at one point only).
    """
    grid = sweep.grid
    axes = list(sweep.get("axes", None) or sorted(grid.keys()))
    unknown = set(grid.keys()) - set(axes)
    if unknown:
        raise ValueError(f"sweep.axes does not list grid axes {sorted(unknown)}")
    values = [sorted(grid[axis].keys()) for axis in axes]
    common = list(sweep.get("overrides", []) or [])
    combinations = list(itertools.product(*values))
    if sweep.get("points", None):
        combinations = [tuple(str(v) for v in p) for p in sweep.points]
        for combination in combinations:
            bad = [v for axis, v in zip(axes, combination) if v not in grid[axis]]
            if len(combination) != len(axes) or bad:
                raise ValueError(f"sweep.points: {combination} is not one value per axis {axes} (unknown: {bad})")
        if len(set(combinations)) != len(combinations):
            raise ValueError("sweep.points lists a point twice")
    points = []
    for combination in combinations:
        overrides = list(common)
        for axis, value in zip(axes, combination):
            overrides += list(grid[axis][value])
        points.append({"name": "-".join(combination), "point": dict(zip(axes, combination)),
                       "overrides": overrides})
    return points


def resolve_base(sweep, sweep_file: Path) -> str:
    """sweep.base as given (a path, or a name in configs/), or a file beside the sweep config."""
    base = str(sweep.base)
    beside = Path(sweep_file).resolve().parent / base
    return str(beside) if not Path(base).exists() and beside.exists() else base


def build_run_config(base: str, overrides: list[str]):
    """The run's config: base + `--config.*` overrides; `--sweep.modalities=a,b` restricts the
    modalities (and zeroes the objectives that need a dropped one)."""
    keep = None
    config_overrides = []
    for item in overrides:
        if item.startswith("--sweep.modalities="):
            keep = [m.strip() for m in item.split("=", 1)[1].split(",") if m.strip()]
        elif item.startswith("--sweep."):
            raise ValueError(f"unknown sweep override '{item}' (known: --sweep.modalities=a,b)")
        else:
            config_overrides.append(item)
    config = config_lib.load_config(base, config_overrides)
    if keep is not None:
        missing = [m for m in keep if m not in config.modalities]
        if missing:
            raise ValueError(f"--sweep.modalities: {missing} not in the base config's modalities")
        with config.unlocked():
            for name in list(config.modalities.keys()):
                if name not in keep:
                    del config.modalities[name]
                    objective = registry.get(name).objective
                    if objective in config.loss:
                        config.loss[objective].weight = 0.0
            if len(keep) < 2:
                config.loss.contrastive.weight = 0.0
                config.loss.mmm.weight = 0.0
    return config
