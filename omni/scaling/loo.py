"""How much one run moves the fitted law: leave each run out in turn, refit L(N, D) (approach 3)
on the rest, and record the refitted parameters, the compute-optimal exponent
a = beta / (alpha + beta) and the error of the refit's prediction of the run left out
(Besiroglu et al. 2024 check Chinchilla's approach 3 the same way: a fit that a single run can
swing is not one to extrapolate from). Also the held-out prediction of the largest run.
"""
from __future__ import annotations

import numpy as np

from omni.scaling.law import Law, fit_law


def leave_one_out(N, D, L, names=None, **fit_kwargs) -> dict:
    """Refit without each run. Returns {"runs": [{name, alpha, beta, E, a, predicted, observed,
    relative_error}], "range": {param: [min, max]}, "max_relative_error", "median_relative_error"}.
    fit_kwargs go to fit_law (no bootstrap here)."""
    N, D, L = (np.asarray(v, float).ravel() for v in (N, D, L))
    names = list(names) if names is not None else [str(i) for i in range(len(L))]
    rows = []
    for i in range(len(L)):
        keep = np.arange(len(L)) != i
        law = fit_law(N[keep], D[keep], L[keep], **fit_kwargs).law
        predicted = float(law(N[i], D[i]))
        rows.append({"name": names[i], "N": float(N[i]), "D": float(D[i]), "alpha": law.alpha, "beta": law.beta,
                     "E": law.E, "A": law.A, "B": law.B, "a": law.n_exponent, "predicted": predicted,
                     "observed": float(L[i]), "relative_error": abs(predicted - L[i]) / L[i]})
    errors = np.array([r["relative_error"] for r in rows])
    spread = {key: [float(min(r[key] for r in rows)), float(max(r[key] for r in rows))]
              for key in ("alpha", "beta", "E", "a")}
    return {"runs": rows, "range": spread, "max_relative_error": float(errors.max()),
            "median_relative_error": float(np.median(errors)),
            "most_influential": max(rows, key=lambda r: r["relative_error"])["name"]}


def largest_index(N, C) -> int:
    """The largest run: the largest C = 6 N D, then the largest N."""
    return max(range(len(C)), key=lambda i: (C[i], N[i]))


def holdout(N, D, L, index: int, **fit_kwargs) -> dict:
    """Fit on every run but `index` and predict it (the fit never sees the run, not even as a start)."""
    N, D, L = (np.asarray(v, float).ravel() for v in (N, D, L))
    keep = np.arange(len(L)) != index
    law: Law = fit_law(N[keep], D[keep], L[keep], **fit_kwargs).law
    predicted = float(law(N[index], D[index]))
    return {"N": float(N[index]), "D": float(D[index]), "predicted": predicted, "observed": float(L[index]),
            "relative_error": abs(predicted - L[index]) / L[index], "law": law.to_dict()}
