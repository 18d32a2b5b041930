"""Fitting a sweep directory (`omni scaling fit DIR`): the law per group of runs with the same
modalities and per loss (total and each objective's), a holdout check on the largest run, the
interaction of every two-modality mixture whose unimodal groups exist, and fit.json / runs.csv /
plots; and reading a fitted law back from fit.json.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from omni.scaling.checks import check_group, short_name
from omni.scaling.interaction import fit_interaction
from omni.scaling.law import Fit, Law, fit_law
from omni.scaling.loo import holdout, largest_index
from omni.scaling.optimise import HUBER_DELTA
from omni.scaling.plots import approach2_plot, make_plots
from omni.scaling.results import column, load_results, write_json, write_runs_csv


FIT_STARTS = 8


def _targets(results: list[dict]) -> list[str]:
    """'loss' and every top-level 'loss/<objective>' that all runs report (finite, positive)."""
    keys = None
    for r in results:
        have = {k for k, v in r.get("losses", {}).items()
                if (k == "loss" or (k.startswith("loss/") and k.count("/") == 1))
                and v is not None and math.isfinite(v) and v > 0}
        keys = have if keys is None else keys & have
    keys = keys or set()
    return (["loss"] if "loss" in keys else []) + sorted(k for k in keys if k != "loss")


def holdout_largest(results: list[dict], target: str, **fit_kwargs) -> dict | None:
    """Fit on all runs but the largest (by C = 6ND, then N); predict the largest (fit_kwargs go
    to fit_law). None with fewer than 6 runs."""
    if len(results) < 6:
        return None
    N, C = column(results, "N"), column(results, "C_6ND")
    index = largest_index(N, C)
    detail = holdout(N, column(results, "D"), column(results, target), index, **fit_kwargs)
    return {"run": results[index]["name"], **detail}


def _compute_grid(results) -> np.ndarray:
    c = column(results, "C_6ND")
    lo, hi = math.floor(math.log10(c.min())), math.ceil(math.log10(c.max())) + 2
    return np.logspace(lo, hi, hi - lo + 1)


def fit_dir(directory, bootstrap: int = 200, level: float = 0.95, min_runs: int = 5, plots: bool = True,
            seed: int = 0, loo: bool = True) -> dict:
    """Fit the law to every result.json in directory: total loss and each objective's loss, per
    group of runs with the same modalities, with the checks of omni.scaling.checks (holdout of
    the largest run, approach 2 against approach 3, leave-one-out, noise); interactions where
    unimodal and mixed groups exist.
    Writes directory/fit.json, runs.csv and PNG plots; returns the fit.json content."""
    directory = Path(directory)
    results = [r for r in load_results(directory) if r.get("loss") is not None]
    if not results:
        raise FileNotFoundError(f"{directory}: no result.json with a loss (run `omni sweep` first)")
    write_runs_csv(results, directory / "runs.csv")
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault("+".join(r["modalities"]), []).append(r)
    out = {"law": "L(N, D) = E + A/N^alpha + B/D^beta",
           "method": f"Chinchilla approach 3: Huber(delta={HUBER_DELTA}) on log L, L-BFGS-B from a grid, "
                     f"bootstrap {bootstrap} resamples of runs, {level:.0%} percentile intervals",
           "N": "non-embedding parameters", "D": "token positions processed in training (all modalities)",
           "C": "6 N D; C_analytic / C_6ND per run is in runs.csv",
           "loss_source": sorted({r.get("loss_source", "?") for r in results}),
           "groups": {}}
    fits: dict[str, dict[str, Fit]] = {}
    for group, runs in sorted(groups.items()):
        entry = {"runs": len(runs), "fits": {}}
        n_values, d_values = {r["N"] for r in runs}, {r["D"] for r in runs}
        if len(runs) < min_runs or len(n_values) < 2 or len(d_values) < 2:
            entry["skipped"] = (f"{len(runs)} runs, {len(n_values)} sizes, {len(d_values)} token budgets: "
                                f"need {min_runs} runs with at least 2 of each")
            out["groups"][group] = entry
            continue
        ratio = column(runs, "C_analytic") / column(runs, "C_6ND")
        entry["C_analytic_over_6ND"] = {"median": float(np.median(ratio)), "min": float(ratio.min()),
                                        "max": float(ratio.max())}
        fits[group] = {}
        for target in _targets(runs):
            # L-BFGS from the 8 best grid points (a cold start costs ~270 evaluations); each
            # bootstrap resample refitted from the full fit (warm start, ~10x cheaper)
            fit = fit_law(column(runs, "N"), column(runs, "D"), column(runs, target), top_k=FIT_STARTS,
                          bootstrap=bootstrap, level=level, seed=seed, bootstrap_starts=0)
            fits[group][target] = fit
            info = fit.to_dict()
            info["compute_optimal"] = fit.compute_optimal_table(_compute_grid(runs))
            predicted = fit.law(column(runs, "N"), column(runs, "D"))
            observed = column(runs, target)
            info["max_relative_error"] = float(np.max(np.abs(predicted - observed) / observed))
            entry["fits"][target] = info
        out["groups"][group] = entry
    if fits:
        out["main"] = max(fits, key=lambda g: (len(groups[g]), g.count("+")))
        # the checks (holdout, approach 2 against 3, leave-one-out, noise) for the main group
        entry = out["groups"][out["main"]]
        entry["checks"] = check_group(groups[out["main"]], fits[out["main"]], bootstrap=bootstrap, level=level,
                                      seed=seed, loo=loo)
        for target in fits[out["main"]]:
            detail = entry["checks"]["holdout_detail"].get(short_name(target))
            if detail is not None:
                entry["fits"][target]["holdout_largest"] = {"run": entry["checks"]["largest_run"], **detail}
    out["interactions"] = _fit_interactions(groups, bootstrap=bootstrap, level=level, seed=seed,
                                            min_runs=min_runs)
    if plots and fits:
        main = out["groups"][out["main"]]
        out["plots"] = make_plots(directory, groups[out["main"]], fits[out["main"]]) + \
            approach2_plot(directory, main["checks"], fits[out["main"]])
    write_json(directory / "fit.json", out)
    return out


def _fit_interactions(groups, bootstrap, level, seed, min_runs) -> dict:
    """For every mixed group {i, j} with unimodal groups {i} and {j}: unimodal laws on each
    modality's loss, then the interaction term on the mixed runs' mean per-modality loss."""
    out = {}
    for group, runs in groups.items():
        names = group.split("+")
        if len(names) != 2 or not all(n in groups for n in names):
            continue
        laws, skip = {}, None
        if len(runs) < min_runs:
            out[group] = {"skipped": f"mixed group {group}: {len(runs)} runs, need {min_runs}"}
            continue
        for name in names:
            uni = groups[name]
            losses = np.array([r["loss_per_modality"].get(name) or np.nan for r in uni], float)
            if len(uni) < min_runs:
                skip = f"unimodal group {name}: {len(uni)} runs, need {min_runs}"
                break
            laws[name] = fit_law(column(uni, "N"), [r["D_per_modality"][name] for r in uni], losses).law
        if skip:
            out[group] = {"skipped": skip}
            continue
        mixed = np.array([np.mean([r["loss_per_modality"][n] for n in names]) for r in runs], float)
        result = fit_interaction(column(runs, "N"), [r["D_per_modality"][names[0]] for r in runs],
                                 [r["D_per_modality"][names[1]] for r in runs], mixed,
                                 laws[names[0]], laws[names[1]], bootstrap=bootstrap, level=level, seed=seed)
        interaction = result.pop("interaction")
        terms = []
        for r in runs:
            value = float(interaction.term(r["N"], r["D"]))
            terms.append({"run": r["name"], "N": r["N"], "D": r["D"], "interaction": value,
                          "verdict": "compete" if value > 0 else "help each other"})
        ratio = float(np.median([r["D"] / r["N"] for r in runs]))
        out[group] = {**result, **interaction.to_dict(),
                      "unimodal_laws": {n: law.to_dict() for n, law in laws.items()},
                      "per_run": terms, "barrier_N_at_median_D_over_N": interaction.barrier(ratio),
                      "median_D_over_N": ratio,
                      "formula": "L_ij = (L_i(N,D_i) + L_j(N,D_j))/2 - C + beta/N^alpha + gamma/(D_i+D_j)^alpha_d"}
    return out


def load_fit(directory, target: str = "loss", group: str | None = None) -> Law:
    """The fitted law of `target` from directory/fit.json (main group unless named)."""
    data = json.loads((Path(directory) / "fit.json").read_text())
    fit = data["groups"][group or data["main"]]["fits"][target]
    return Law(E=fit["E"], A=fit["A"], B=fit["B"], alpha=fit["alpha"], beta=fit["beta"])
