"""The checks that say whether a group's fitted laws can be trusted (`omni scaling fit`): for the
total loss and each objective,
  * holdout: the largest run (largest C = 6ND) predicted by a law fitted on the other runs;
  * approach 2 against approach 3: the compute-optimal exponent a of N_opt ∝ C^a from IsoFLOP
    parabolas (omni.scaling.approach2) and from the parametric fit, a = beta / (alpha + beta)
    (Hoffmann et al. 2022, eq. 4), each with a bootstrap interval; they agree when the intervals
    overlap and every IsoFLOP minimum lies inside its slice's sizes (else `agree` is null);
  * leave-one-out: how the law moves when each run is left out (omni.scaling.loo);
  * noise: the spread of the losses over seeds at a repeated point, and the held-out evaluation's
    standard error, to set the prediction errors against.
"""
from __future__ import annotations

import math

import numpy as np

from omni.scaling.approach2 import fit_approach2
from omni.scaling.law import Fit
from omni.scaling.loo import holdout, largest_index, leave_one_out
from omni.scaling.results import column


def short_name(target: str) -> str:
    """'loss' -> 'total', 'loss/mlm' -> 'mlm'."""
    return "total" if target == "loss" else target.split("/", 1)[1]


def seed_noise(runs: list[dict], targets: list[str]) -> dict:
    """Runs with the same N and token slots D_slots (seeds of one point: D in real tokens moves a
    little with the examples each seed draws): per target the mean, the standard
    deviation over them (ddof 1) and that relative to the mean; plus the median held-out
    standard error of each target's mean over evaluation batches, relative to the loss."""
    by_point: dict[tuple, list[dict]] = {}
    for r in runs:
        by_point.setdefault((r["N"], r.get("D_slots", r["D"])), []).append(r)
    out = {}
    repeated = [group for group in by_point.values() if len(group) >= 2]
    if repeated:
        group = max(repeated, key=len)
        out["seeds"] = {"runs": [r["name"] for r in group], "N": group[0]["N"], "D": group[0]["D"]}
        for target in targets:
            values = column(group, target)
            std = float(np.std(values, ddof=1))
            out["seeds"][short_name(target)] = {"mean": float(values.mean()), "std": std,
                                                "relative_std": std / float(values.mean())}
    sem = {}
    for target in targets:
        rel = [r["heldout_sem"][target] / r["losses"][target] for r in runs
               if (r.get("heldout_sem") or {}).get(target) and r["losses"].get(target)]
        if rel:
            sem[short_name(target)] = float(np.median(rel))
    if sem:
        out["eval_relative_sem_median"] = sem
    return out


def _agree(a2: dict, a3: dict) -> dict:
    i2, i3 = a2.get("a_interval"), a3.get("a_interval")
    if a2.get("a") is None or a3.get("a") is None or not i2 or not i3:
        return {"agree": None, "reason": "an exponent or interval is missing"}
    outside = [s["C"] for s in a2.get("slices", []) if s.get("ok") and not s.get("interior")]
    if outside:
        # a parabola minimum outside the sampled sizes is an extrapolation: no test of approach 3
        return {"agree": None, "difference": a2["a"] - a3["a"],
                "reason": f"approach 2's minimum lies outside the sampled sizes at C = {outside}"}
    overlap = max(i2[0], i3[0]) <= min(i2[1], i3[1])
    return {"agree": bool(overlap), "difference": a2["a"] - a3["a"],
            "rule": "the two bootstrap intervals overlap"}


def check_group(runs: list[dict], fits: dict[str, Fit], bootstrap: int = 200, level: float = 0.95,
                seed: int = 0, loo: bool = True) -> dict:
    """All the checks above for one group's runs and its fits (target -> Fit). Keys by short
    target name ('total', '<objective>')."""
    N, D, C = column(runs, "N"), column(runs, "D"), column(runs, "C_6ND")
    names = [r["name"] for r in runs]
    largest = largest_index(N, C)
    out = {"holdout": {}, "holdout_detail": {}, "approach2": {}, "approach3": {}, "agreement": {},
           "leave_one_out": {}, "largest_run": names[largest]}
    for target, fit in fits.items():
        name = short_name(target)
        L = column(runs, target)
        if len(runs) >= 6:
            detail = holdout(N, D, L, largest, top_k=8)   # cold starts only: the full fit saw the run
            out["holdout"][name] = detail["relative_error"]
            out["holdout_detail"][name] = detail
        # every run (a run alone at its compute, like the largest, forms no slice)
        a2 = fit_approach2(N, C, L, bootstrap=bootstrap, level=level, seed=seed)
        interval = fit.intervals.get("n_exponent")
        a3 = {"a": fit.law.n_exponent if math.isfinite(fit.law.n_exponent) else None, "a_interval": interval,
              "alpha": fit.law.alpha, "beta": fit.law.beta,
              "alpha_interval": fit.intervals.get("alpha"), "beta_interval": fit.intervals.get("beta"),
              "method": "a = beta / (alpha + beta) of the parametric fit on all runs (Hoffmann et al. eq. 4)"}
        out["approach2"][name], out["approach3"][name] = a2, a3
        out["agreement"][name] = _agree(a2, a3)
        if loo:
            # warm-started from the full fit: this measures how far one run moves the law
            out["leave_one_out"][name] = leave_one_out(N, D, L, names, top_k=0, extra_starts=[fit.law.vector()])
    out["noise"] = seed_noise(runs, list(fits))
    return out


def summary(checks: dict) -> dict:
    """The short form `omni scaling fit` prints: holdout errors; approach2 / approach3 as
    {"a", "a_interval", "agree"} for the total at the top and per objective under "objectives";
    leave-one-out ranges; noise."""
    def short(entry, agreement):
        return {"a": entry.get("a"), "a_interval": entry.get("a_interval"), "agree": agreement.get("agree")}

    out = {"holdout": checks["holdout"], "largest_run": checks["largest_run"]}
    for approach in ("approach2", "approach3"):
        block = checks[approach]
        total = block.get("total", {})
        out[approach] = {**short(total, checks["agreement"].get("total", {})),
                         "objectives": {k: short(v, checks["agreement"].get(k, {}))
                                        for k, v in block.items() if k != "total"}}
    out["agree"] = {k: v.get("agree") for k, v in checks["agreement"].items()}
    out["leave_one_out"] = {k: {"range": v["range"], "max_relative_error": v["max_relative_error"],
                                "median_relative_error": v["median_relative_error"]}
                            for k, v in checks["leave_one_out"].items()}
    out["noise"] = checks["noise"]
    return out
