"""muP learning-rate transfer (`omni scaling lr-transfer DIR`; Yang et al. 2022, "Tensor Programs
V", Figure 1: loss against learning rate, one curve per width, under SP and under muP).

For every (parametrisation, width) the best learning rate is interpolated on the log grid: the
least-squares parabola in log lr through the grid's best point and every point within a factor
2 of it (at least its two neighbours). On a factor-2 grid that is the parabola through three
points, with its vertex at
    log lr* = x_i + h (L_{i-1} - L_{i+1}) / (2 (L_{i-1} - 2 L_i + L_{i+1}))   (equal spacing h),
within half a grid step of x_i; on a grid refined around the optima it averages over the five
points of the same span instead of chasing the noise of the nearest three. A minimum at the end of
the grid is reported as that end (`at_edge`): the grid did not bracket it. How far the best lr
moves across widths is log(max lr* / min lr*) / log(grid factor), in grid steps, and
log2(max lr* / min lr*) in factor-2 steps (`movement_factor2_steps`), the unit of Tensor
Programs V's figures and of a grid refined around the optima. muP at its base
width is the standard model, so a sweep may run that width under SP only; its curve serves both.
A point run with several seeds enters the curve as the mean of its seeds' losses; `seed_spread`
reports their noise (the median over such points of the standard deviation over seeds, relative
to the mean). The yardstick for a movement is `optimum_seed_spread_factor2_steps`: for each curve
run with several seeds, how far apart (log2 max/min) the seeds' own optima lie, the median over
the curves; and `movement_factor2_steps_per_seed` repeats the movement on each seed's curves.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from omni.scaling.results import load_results, write_json


def interpolated_minimum(lrs, losses, window: float = 2.0) -> dict:
    """The best learning rate of one curve: {"lr", "grid_lr", "at_edge", "points"}: the vertex of
    the least-squares parabola over the points within a factor `window` of the grid minimum
    (module docstring), and how many points it used."""
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    order = np.argsort(lrs)
    lrs, losses = lrs[order], np.where(np.isfinite(losses[order]), losses[order], np.inf)
    i = int(np.argmin(losses))
    x = np.log(lrs)
    near = np.abs(x - x[i]) <= math.log(window) * (1 + 1e-6)
    near[max(i - 1, 0): i + 2] = True
    if i == 0 or i == len(lrs) - 1 or not np.all(np.isfinite(losses[near])):
        return {"lr": float(lrs[i]), "grid_lr": float(lrs[i]), "at_edge": i in (0, len(lrs) - 1), "points": 1}
    p2, p1, _ = np.polyfit(x[near], losses[near], 2)
    vertex = -p1 / (2 * p2) if p2 > 0 else x[i]
    vertex = float(np.clip(vertex, x[near].min(), x[near].max()))
    return {"lr": float(math.exp(vertex)), "grid_lr": float(lrs[i]), "at_edge": False, "points": int(near.sum())}


def grid_factor(lrs) -> float:
    """The median ratio of consecutive learning rates of the grid."""
    values = np.unique(np.asarray(lrs, float))
    return float(np.median(values[1:] / values[:-1])) if len(values) > 1 else math.nan


def movement(best_lrs: dict, factor: float) -> float:
    """How far the best learning rate moves across widths, in grid steps."""
    values = [v for v in best_lrs.values() if v]
    return math.log(max(values) / min(values)) / math.log(factor) if len(values) > 1 else 0.0


def optima_per_seed(points) -> dict[int, float]:
    """(lr, loss, seed) triples of one curve -> {seed: that seed's interpolated best lr}, for the
    seeds run at three or more learning rates."""
    by_seed: dict[int, list] = {}
    for lr, loss, seed in points:
        by_seed.setdefault(seed, []).append((lr, loss))
    return {seed: interpolated_minimum(*zip(*pairs))["lr"] for seed, pairs in by_seed.items() if len(pairs) >= 3}


def losses_by_lr(points) -> dict[float, list[float]]:
    """(lr, loss) pairs, one per run (several per lr when seeds repeat it) -> {lr: [losses]}."""
    by_lr: dict[float, list] = {}
    for lr, loss in points:
        by_lr.setdefault(lr, []).append(loss)
    return dict(sorted(by_lr.items()))


def seed_spreads(by_lr: dict) -> list[float]:
    """Per lr run with 2 or more seeds: the standard deviation of its losses over their mean."""
    return [float(np.std(v, ddof=1) / abs(np.mean(v))) for v in by_lr.values()
            if len(v) > 1 and np.all(np.isfinite(v))]


def lr_transfer(directory, target: str = "loss", plot: bool = True) -> dict:
    """Read DIR's runs (lr, width, parametrization, losses from result.json), find each width's
    best lr per parametrisation, write DIR/lr_transfer.json and DIR/lr_transfer.png. Returns
    {"sp": {width: lr}, "mup": {width: lr}, "grid_factor": f, "movement_grid_steps": {...}, ...}."""
    directory = Path(directory)
    results = [r for r in load_results(directory) if r.get("lr") is not None]
    if not results:
        raise FileNotFoundError(f"{directory}: no result.json with an lr (run `omni sweep` on configs/scaling/mup_transfer.py)")
    curves: dict[str, dict[int, list]] = {}
    for r in results:
        loss = r.get("losses", {}).get(target)
        curves.setdefault(r.get("parametrization", "sp"), {}).setdefault(int(r["width"]), []).append(
            (float(r["lr"]), math.nan if loss is None else float(loss), int(r.get("seed") or 0)))
    # At its base width muP is the standard model (tests/test_mup.py), so a sweep may run that
    # width once, under SP: its curve then serves both.
    shared = []
    for r in results:
        base = int(r.get("mup_base_width") or 0)
        if r.get("parametrization") == "mup" and base in curves.get("sp", {}) and base not in curves["mup"]:
            curves["mup"][base] = list(curves["sp"][base])
            shared.append(base)
    factor = grid_factor([r["lr"] for r in results])
    out: dict = {"grid_factor": factor, "target": target}
    details, spreads, optimum_spreads, per_seed = {}, [], [], {}
    for param, widths in sorted(curves.items()):
        out[param], details[param], per_seed[param] = {}, {}, {}
        for width, points in sorted(widths.items()):
            seed_optima = optima_per_seed(points)
            for seed, lr in seed_optima.items():
                per_seed[param].setdefault(seed, {})[str(width)] = lr
            if len(seed_optima) > 1 and (param == "sp" or width not in shared):
                optimum_spreads.append(movement(seed_optima, 2.0))
            by_lr = losses_by_lr((lr, loss) for lr, loss, _ in points)
            lrs, losses = list(by_lr), [float(np.mean(v)) for v in by_lr.values()]
            seeds = [len(v) for v in by_lr.values()]
            if param == "sp" or width not in shared:  # a shared curve is counted once
                spreads += seed_spreads(by_lr)
            best = interpolated_minimum(lrs, losses)
            out[param][str(width)] = best["lr"]
            details[param][str(width)] = {**best, "lrs": lrs, "losses": losses, "seeds": seeds,
                                          "runs_of": "sp" if param == "mup" and width in shared else param}
    out["seed_spread"] = float(np.median(spreads)) if spreads else None
    out["movement_grid_steps"] = {param: movement(out[param], factor) for param in curves}
    out["movement_factor2_steps"] = {param: movement(out[param], 2.0) for param in curves}
    out["movement_factor2_steps_per_seed"] = {
        param: {str(seed): movement(best, 2.0) for seed, best in sorted(seeds.items()) if len(best) == len(curves[param])}
        for param, seeds in per_seed.items()}
    out["optimum_seed_spread_factor2_steps"] = float(np.median(optimum_spreads)) if optimum_spreads else None
    out["mup_base_width_from_sp"] = sorted(set(shared))
    out["at_edge"] = sorted(f"{p}/{w}" for p in details for w, d in details[p].items() if d["at_edge"])
    write_json(directory / "lr_transfer.json", {**out, "curves": details})
    if plot:
        out["plot"] = str(plot_lr_transfer(directory / "lr_transfer.png", details, out["movement_grid_steps"], target))
    return out


def plot_lr_transfer(path: Path, details: dict, moves: dict, target: str) -> Path:
    """One panel per parametrisation: loss against lr per width, the interpolated best lr marked."""
    import matplotlib  # deferred: slow to import
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = sorted(details, key=lambda p: (p != "sp", p))
    fig, axes = plt.subplots(1, len(params), figsize=(5.2 * len(params), 4.2), sharey=True, squeeze=False)
    cmap = plt.get_cmap("viridis")
    finite = [v for p in details.values() for d in p.values() for v in d["losses"] if math.isfinite(v)]
    for ax, param in zip(axes[0], params):
        widths = sorted(details[param], key=int)
        for k, width in enumerate(widths):
            d = details[param][width]
            color = cmap(k / max(len(widths) - 1, 1))
            ax.plot(d["lrs"], d["losses"], "o-", color=color, label=f"width {width}")
            ax.axvline(d["lr"], color=color, ls=":", lw=1)
        ax.set(xscale="log", xlabel="learning rate", ylabel=f"held-out {target}",
               title=f"{param.upper()}: best lr moves {moves[param]:.2f} grid steps")
        ax.legend(fontsize=8)
    if finite:
        low = min(finite)
        axes[0][0].set_ylim(low - 0.05 * abs(low), np.percentile(finite, 90) * 1.05)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
