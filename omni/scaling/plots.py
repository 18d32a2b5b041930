"""The plots of a fitted sweep: loss against compute with the fitted and empirical frontiers,
iso-FLOP curves of the fitted law, and fitted against observed loss."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from omni.scaling.law import Fit
from omni.scaling.results import column


def make_plots(directory: Path, runs: list[dict], fits: dict[str, Fit]) -> list[str]:
    """loss_vs_compute.png (runs, fitted frontier, empirical frontier), isoflop.png (fitted loss
    along N at fixed C, with the optimum), fitted_vs_observed.png (one panel per target)."""
    import matplotlib  # deferred: slow to import
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    N, D, C = column(runs, "N"), column(runs, "D"), column(runs, "C_6ND")
    written = []

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    law = fits["loss"].law if "loss" in fits else next(iter(fits.values())).law
    target = "loss" if "loss" in fits else next(iter(fits))
    L = column(runs, target)
    sc = ax.scatter(C, L, c=np.log10(N), cmap="viridis", zorder=3)
    fig.colorbar(sc, ax=ax, label="log10 N (non-embedding)")
    grid = np.logspace(math.log10(C.min()) - 0.3, math.log10(C.max()) + 1.0, 200)
    ax.plot(grid, law.frontier(grid), "k-", label="fitted frontier L(N_opt(C), D_opt(C))")
    order = np.argsort(C)
    best, envelope = np.inf, []
    for i in order:
        best = min(best, L[i])
        envelope.append(best)
    ax.step(C[order], envelope, "r--", where="post", label="empirical frontier (best so far)")
    ax.set(xscale="log", yscale="log", xlabel="training compute C = 6ND (FLOPs)", ylabel=target,
           title="loss vs compute")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / "loss_vs_compute.png", dpi=120)
    plt.close(fig)
    written.append("loss_vs_compute.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    budgets = np.logspace(math.log10(C.min()), math.log10(C.max()), 4)
    cmap = plt.get_cmap("plasma")
    for k, c in enumerate(budgets if not law.degenerate else []):
        n_opt, _ = law.compute_optimal(c)
        ns = np.logspace(math.log10(n_opt) - 1.0, math.log10(n_opt) + 1.0, 200)
        color = cmap(k / max(len(budgets) - 1, 1))
        ax.plot(ns, law(ns, c / (6 * ns)), color=color, label=f"C = {c:.2g}")
        ax.plot([n_opt], [law.frontier(c)], "o", color=color, markeredgecolor="k")
    ax.scatter(N, L, c=np.log10(C), cmap=cmap, vmin=math.log10(budgets[0]), vmax=math.log10(budgets[-1]),
               s=18, marker="x", label="runs (colour: their C)", zorder=3)
    optima = law.frontier(budgets) if not law.degenerate else L
    low, high = min(L.min(), np.nanmin(optima)), max(L.max(), np.nanmax(optima))
    ax.set_ylim(low / 1.1, high * 1.3)
    ax.set(xscale="log", yscale="log", xlabel="N (non-embedding parameters)", ylabel=target,
           title="iso-FLOP curves of the fitted law (dots: optimum)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / "isoflop.png", dpi=120)
    plt.close(fig)
    written.append("isoflop.png")

    names = list(fits)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        observed = column(runs, name)
        predicted = fits[name].law(N, D)
        ax.scatter(observed, predicted, c=np.log10(C), cmap="viridis")
        lo, hi = min(observed.min(), predicted.min()), max(observed.max(), predicted.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set(xlabel=f"observed {name}", ylabel="fitted", title=name)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(directory / "fitted_vs_observed.png", dpi=120)
    plt.close(fig)
    written.append("fitted_vs_observed.png")
    return written


def approach2_plot(directory: Path, checks: dict, fits: dict[str, Fit]) -> list[str]:
    """approach2.png: per target, the IsoFLOP slices with their parabolas in log N (left), and
    N_opt against C from approach 2 (slice minima, fitted power law) and approach 3 (right)."""
    import matplotlib  # deferred: slow to import
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t in checks["approach2"] if checks["approach2"][t].get("slices")]
    if not targets:
        return []
    fig, axes = plt.subplots(len(targets), 2, figsize=(10.5, 3.4 * len(targets)), squeeze=False)
    cmap = plt.get_cmap("plasma")
    for row, target in zip(axes, targets):
        a2 = checks["approach2"][target]
        slices = a2["slices"]
        for k, s in enumerate(slices):
            color = cmap(k / max(len(slices) - 1, 1))
            row[0].scatter(s["N"], s["losses"], color=color, s=16, label=f"C = {s['C']:.2g}")
            if s.get("ok"):
                xs = np.linspace(math.log(min(s["N"])) - 0.3, math.log(max(s["N"])) + 0.3, 100)
                row[0].plot(np.exp(xs), np.polyval(s["coefficients"], xs), color=color, lw=1)
                row[0].plot([s["N_opt"]], [s["L_opt"]], "o", color=color, markeredgecolor="k")
        row[0].set(xscale="log", xlabel="N", ylabel=target, title=f"{target}: IsoFLOP parabolas")
        row[0].legend(fontsize=7)
        good = [s for s in slices if s.get("ok")]
        cs = np.array([s["C"] for s in slices])
        grid = np.logspace(math.log10(cs.min()) - 0.3, math.log10(cs.max()) + 0.5, 50)
        if good:
            row[1].plot([s["C"] for s in good], [s["N_opt"] for s in good], "ko", label="approach 2: slice minima")
        if a2.get("a") is not None:
            row[1].plot(grid, a2["k"] * grid ** a2["a"], "k-", label=f"approach 2: a = {a2['a']:.2f}")
        key = "loss" if target == "total" else f"loss/{target}"
        law = fits[key].law if key in fits else None
        if law is not None and not law.degenerate:
            row[1].plot(grid, law.compute_optimal(grid)[0], "r--", label=f"approach 3: a = {law.n_exponent:.2f}")
        row[1].set(xscale="log", yscale="log", xlabel="C = 6ND", ylabel="N_opt", title=f"{target}: N_opt(C)")
        row[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(directory) / "approach2.png", dpi=110)
    plt.close(fig)
    return ["approach2.png"]
