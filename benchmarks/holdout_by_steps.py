"""Where the scaling law misses: the held-out prediction of the largest run when the law is fitted
only to runs of at least S steps, and the fit's in-sample residuals by run length
(docs/scaling.md, "Why mmm misses").

    python benchmarks/holdout_by_steps.py docs/scaling/cpu_laws_runs.csv

Reads the runs.csv that `omni scaling fit DIR` writes. The fit is omni's own (Chinchilla approach
3, omni/scaling/law.py); the held-out run is the one `omni scaling fit` holds out (largest C, then
N), and it is never fitted. A loss whose error swings with S is not described by one
L = E + A/N^alpha + B/D^beta over the whole range of run lengths. Last, Kaplan et al. 2020's form
(eq. 1.5) fitted the same way, to see whether another law's shape is the fix. And what a sweep
of longer runs would cost: each IsoFLOP slice's compute raised until its shortest run has
LONGER_STEPS steps, priced by the runs' own wall times (`wall_s`).
"""
import csv
import sys

import numpy as np
from scipy.optimize import minimize

from omni.scaling.approach2 import isoflop_slices
from omni.scaling.law import fit_law
from omni.scaling.loo import holdout, largest_index

TARGETS = ("loss", "loss/contrastive", "loss/mim", "loss/mlm", "loss/mmm")
MIN_STEPS = (0, 150, 300, 500)
LONGER_STEPS = 500


def kaplan_log_loss(x, N, D):
    """log L of Kaplan et al. 2020, eq. 1.5: L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D,
    x = (log N_c, log D_c, alpha_N, alpha_D)."""
    log_nc, log_dc, alpha_n, alpha_d = x
    return alpha_d * np.logaddexp(alpha_n / alpha_d * (log_nc - np.log(N)), log_dc - np.log(D))


def kaplan_holdout(N, D, L, index: int) -> float:
    """Relative error of eq. 1.5, fitted (Huber on log L, as omni's law) to all runs but `index`."""
    keep = np.arange(len(L)) != index
    objective = lambda x: np.sum(huber_residual(kaplan_log_loss(x, N[keep], D[keep]) - np.log(L[keep])))
    starts = [(a, b, c, d) for a in (5, 10, 15, 20) for b in (5, 10, 15, 20)
              for c in (0.1, 0.3, 0.7) for d in (0.1, 0.3, 0.7)]
    best = min((minimize(objective, x0, method="L-BFGS-B") for x0 in starts), key=lambda r: r.fun)
    return abs(np.exp(kaplan_log_loss(best.x, N[index], D[index])) / L[index] - 1)


def huber_residual(r, delta: float = 1e-3):
    r = np.abs(r)
    return np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta)) / delta ** 2


def longer_sweep_factor(compute, steps, wall_s, least: int = LONGER_STEPS) -> float:
    """How many times the sweep's wall time grows when every IsoFLOP slice (runs within a factor
    1.25 in C, as approach 2 groups them) scales its compute until its shortest run has `least`
    steps; a run's time is taken as proportional to its steps."""
    grown = sum(wall_s[group].sum() * max(1.0, least / steps[group].min()) for group in isoflop_slices(compute))
    return float(grown / wall_s.sum())


def main(path: str) -> None:
    rows = list(csv.DictReader(open(path)))
    N, D, C, steps = (np.array([float(r[k]) for r in rows]) for k in ("N", "D", "C_6ND", "steps"))
    held = largest_index(N, C)
    print(f"held out: {rows[held]['name']} ({int(steps[held])} steps); relative error of its prediction:")
    print("min steps  runs  " + "  ".join(f"{t.split('/')[-1]:>11s}" for t in TARGETS))
    for least in MIN_STEPS:
        keep = np.flatnonzero((steps >= least) | (np.arange(len(rows)) == held))
        errors = []
        for target in TARGETS:
            L = np.array([float(rows[i][target]) for i in keep])
            index = int(np.flatnonzero(keep == held)[0])
            errors.append(holdout(N[keep], D[keep], L, index)["relative_error"])
        print(f"{least:9d}  {len(keep) - 1:4d}  " + "  ".join(f"{100 * e:10.1f}%" for e in errors))
    others = np.arange(len(rows)) != held
    print("in-sample residual (fitted / observed - 1) of the all-runs fit, by run length:")
    for target in TARGETS:
        L = np.array([float(r[target]) for r in rows])
        law = fit_law(N[others], D[others], L[others]).law
        residual = law(N[others], D[others]) / L[others] - 1
        short = steps[others] < 300
        print(f"  {target:17s} runs under 300 steps: mean |residual| {100 * np.abs(residual[short]).mean():5.1f}%;"
              f" 300 steps and more: {100 * np.abs(residual[~short]).mean():5.1f}%")
    print("Kaplan et al. 2020 eq. 1.5 fitted to all runs but the held-out one: relative error " + ", ".join(
        f"{t.split('/')[-1]} {100 * kaplan_holdout(N, D, np.array([float(r[t]) for r in rows]), held):.1f}%"
        for t in TARGETS))
    wall_s = np.array([float(r["wall_s"]) for r in rows])
    print(f"every slice's shortest run at {LONGER_STEPS} steps or more: the sweep's wall time x"
          f"{longer_sweep_factor(C, steps, wall_s):.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
