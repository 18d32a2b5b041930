"""Chinchilla approach 2: IsoFLOP profiles (Hoffmann et al. 2022, section 3.2 and Figure 3).

For each compute budget C (a slice of runs with the same C = 6 N D and different N), fit a
parabola to the loss as a function of log N,
    L(log N) = p0 + p1 log N + p2 (log N)^2,
whose minimum is the compute-optimal size N_opt(C) = exp(-p1 / (2 p2)) of that budget; then fit
the power law N_opt(C) = k C^a (least squares on log N_opt = log k + a log C) across the slices.
The exponent a is what approach 3 predicts as beta / (alpha + beta) (the paper's eq. 4); the two
are compared in omni.scaling.fit_dir. Interval on a: bootstrap over runs, resampling the runs of
each slice with replacement (so every resample keeps every budget), percentile interval.
"""
from __future__ import annotations

import math

import numpy as np

from omni.scaling.optimise import percentiles


def isoflop_slices(compute, tolerance: float = 1.25) -> list[np.ndarray]:
    """Indices of runs grouped by compute: runs whose C lies within a factor `tolerance` of the
    smallest C of their group share a slice. Sorted by C."""
    compute = np.asarray(compute, float)
    order = np.argsort(compute, kind="stable")
    slices, current = [], [order[0]]
    for i in order[1:]:
        if compute[i] <= compute[current[0]] * tolerance:
            current.append(i)
        else:
            slices.append(np.array(current))
            current = [i]
    slices.append(np.array(current))
    return slices


def parabola_minimum(N, L) -> dict:
    """Fit L = p0 + p1 x + p2 x^2 with x = log N; the minimum's N and L. `interior` says whether
    the minimum lies within the sampled sizes; without curvature (p2 <= 0) there is no minimum."""
    x, y = np.log(np.asarray(N, float)), np.asarray(L, float)
    if len(np.unique(x)) < 3:
        return {"ok": False, "reason": f"{len(np.unique(x))} distinct sizes (need 3)"}
    p2, p1, p0 = np.polyfit(x, y, 2)
    width = float(x.max() - x.min())
    if p2 <= 1e-9 * max(float(np.ptp(y)), 1e-12) / width ** 2:
        return {"ok": False, "reason": "the parabola opens downwards or is flat: no minimum"}
    x_opt = -p1 / (2 * p2)
    if not x.min() - 2 * width <= x_opt <= x.max() + 2 * width:
        return {"ok": False, "reason": "the parabola's minimum lies far outside the sizes: no minimum in reach"}
    return {"ok": True, "N_opt": float(math.exp(x_opt)), "L_opt": float(p0 + p1 * x_opt + p2 * x_opt ** 2),
            "coefficients": [float(p2), float(p1), float(p0)], "interior": bool(x.min() <= x_opt <= x.max())}


def _power_law(C, n_opt) -> tuple[float, float]:
    """(a, k) of N_opt = k C^a by least squares in log-log."""
    a, log_k = np.polyfit(np.log(C), np.log(n_opt), 1)
    return float(a), float(math.exp(log_k))


def _exponent(N, C, L, slices, require: int = 2) -> tuple[float | None, list[dict]]:
    rows = []
    for idx in slices:
        row = {"C": float(np.exp(np.mean(np.log(C[idx])))), "runs": int(len(idx)),
               "N": [float(n) for n in N[idx]], "losses": [float(v) for v in L[idx]],
               **parabola_minimum(N[idx], L[idx])}
        rows.append(row)
    good = [r for r in rows if r["ok"]]
    if len(good) < max(require, 2):
        return None, rows
    a, _ = _power_law([r["C"] for r in good], [r["N_opt"] for r in good])
    return a, rows


def fit_approach2(N, C, L, bootstrap: int = 200, level: float = 0.95, seed: int = 0, min_sizes: int = 3,
                  tolerance: float = 1.25) -> dict:
    """Approach 2 on runs (N, C = 6ND, L): slices of equal C with at least `min_sizes` distinct
    sizes, a parabola per slice, N_opt = k C^a across slices. Returns {"a", "k", "a_interval",
    "slices": [per slice: C, N, N_opt, L_opt, interior], "bootstrap": {...}} or {"a": None, "reason"}."""
    N, C, L = (np.asarray(v, float).ravel() for v in (N, C, L))
    slices = [s for s in isoflop_slices(C, tolerance) if len(np.unique(N[s])) >= min_sizes]
    a, rows = _exponent(N, C, L, slices)
    if a is None:
        return {"a": None, "reason": f"{sum(r['ok'] for r in rows)} IsoFLOP slices with a minimum (need 2)",
                "slices": rows}
    good = [r for r in rows if r["ok"]]
    _, k = _power_law([r["C"] for r in good], [r["N_opt"] for r in good])
    out = {"a": a, "k": k, "slices": rows, "slices_used": len(good),
           "method": "parabola in log N per IsoFLOP slice; N_opt = k C^a by least squares in log-log"}
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        samples, failed = [], 0
        for _ in range(int(bootstrap)):
            resampled = [rng.choice(s, len(s), replace=True) for s in slices]
            # a resample counts only if every slice the estimate used still has a minimum
            value, _ = _exponent(N, C, L, resampled, require=len(good))
            if value is None:
                failed += 1
            else:
                samples.append(value)
        lo, hi = percentiles(level)
        out["a_interval"] = [float(np.percentile(samples, lo)), float(np.percentile(samples, hi))] if samples else None
        out["bootstrap"] = {"n": int(bootstrap), "level": level, "failed": failed,
                            "resampling": "runs within each slice, with replacement"}
    return out
