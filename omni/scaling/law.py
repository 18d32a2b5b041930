"""The scaling law L(N, D) and its fit (Hoffmann et al. 2022, "Chinchilla", approach 3).

    L(N, D) = E + A / N^alpha + B / D^beta                                  (the paper's eq. 2)

N = non-embedding parameters, D = training tokens. With a = log A, b = log B, e = log E the
prediction in log space is  log L = logsumexp(a - alpha log N, b - beta log D, e); the fit
(eq. 3) minimises the Huber loss (delta = 1e-3) between that and the observed log L with L-BFGS-B,
started from a grid of points (Chinchilla's grid: a, b in {0, 5, .., 25}, e in {-1, -.5, .., 1},
alpha, beta in {0, .5, .., 2}); the best of the local optima is kept. Every grid point is scored
first (cheap, vectorised) and L-BFGS runs from the `top_k` best (None = all of them). The
objective is divided by delta^2 (same minimiser) so that L-BFGS-B's stopping tolerances act on
numbers of order one: an unscaled Huber sum is ~1e-5 and meets them long before the optimum.
Exponents are bounded to [0, 10]. Confidence intervals: bootstrap over runs (resample with
replacement, refit warm-started from the best fit and the best grid points, percentile intervals).

Compute-optimal allocation for C = 6 N D (minimise L subject to the budget, eq. 1; closed form, eq. 4):
    N_opt(C) = G (C/6)^(beta/(alpha+beta)),  D_opt(C) = G^-1 (C/6)^(alpha/(alpha+beta)),
    G = (alpha A / (beta B))^(1/(alpha+beta));  the frontier is L(N_opt(C), D_opt(C)).
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from omni.scaling.optimise import HUBER_DELTA, huber, minimise, percentiles, single_threaded_blas

# Chinchilla's grid of starting points (Hoffmann et al. 2022, appendix D.2).
CHINCHILLA_GRID = {
    "a": np.arange(0.0, 30.0, 5.0),
    "b": np.arange(0.0, 30.0, 5.0),
    "e": np.arange(-1.0, 1.5, 0.5),
    "alpha": np.arange(0.0, 2.5, 0.5),
    "beta": np.arange(0.0, 2.5, 0.5),
}
PARAM_ORDER = ("a", "b", "e", "alpha", "beta")


@dataclasses.dataclass(frozen=True)
class Law:
    """L(N, D) = E + A / N^alpha + B / D^beta."""
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    @classmethod
    def from_vector(cls, x) -> "Law":
        a, b, e, alpha, beta = (float(v) for v in x)
        return cls(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)

    def vector(self) -> np.ndarray:
        return np.array([math.log(self.A), math.log(self.B), math.log(self.E), self.alpha, self.beta])

    def __call__(self, N, D):
        N, D = np.asarray(N, float), np.asarray(D, float)
        return self.E + self.A * N ** -self.alpha + self.B * D ** -self.beta

    @property
    def degenerate(self) -> bool:
        """A fit at an exponent's bound 0 (or a vanished term) has no finite compute optimum."""
        return not (self.alpha > 0 and self.beta > 0 and self.A > 0 and self.B > 0)

    @property
    def G(self) -> float:
        if self.degenerate:
            return math.nan
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    @property
    def n_exponent(self) -> float:
        """N_opt grows as C^(beta/(alpha+beta))."""
        return self.beta / (self.alpha + self.beta) if self.alpha + self.beta > 0 else math.nan

    @property
    def d_exponent(self) -> float:
        """D_opt grows as C^(alpha/(alpha+beta))."""
        return self.alpha / (self.alpha + self.beta) if self.alpha + self.beta > 0 else math.nan

    def compute_optimal(self, C):
        """(N_opt, D_opt) minimising L(N, D) subject to 6 N D = C (closed form)."""
        C = np.asarray(C, float)
        n_opt = self.G * (C / 6.0) ** self.n_exponent
        d_opt = (C / 6.0) ** self.d_exponent / self.G
        return n_opt, d_opt

    def frontier(self, C):
        """Loss of the compute-optimal model at compute C: the loss-versus-compute frontier."""
        n_opt, d_opt = self.compute_optimal(C)
        return self(n_opt, d_opt)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _law_objective(x, log_n, log_d, log_l, delta):
    """Huber(logsumexp(a - alpha log N, b - beta log D, e) - log L) / delta^2, and its gradient."""
    a, b, e, alpha, beta = x
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    lse = top + np.log(total)
    weights /= total
    r = lse - log_l
    scale = 1.0 / delta ** 2
    value = scale * huber(r, delta).sum()
    dr = scale * np.clip(r, -delta, delta)
    grad = np.array([
        np.sum(dr * weights[0]), np.sum(dr * weights[1]), np.sum(dr * weights[2]),
        -np.sum(dr * weights[0] * log_n), -np.sum(dr * weights[1] * log_d)])
    return value, grad


def _grid_points(grid: dict) -> np.ndarray:
    return np.array(list(itertools.product(*(np.asarray(grid[k], float) for k in PARAM_ORDER))))


def _grid_scores(points, log_n, log_d, log_l, delta) -> np.ndarray:
    """The objective at every grid point at once (points [P, 5])."""
    a, b, e, alpha, beta = (points[:, i:i + 1] for i in range(5))
    terms = np.stack([a - alpha * log_n[None], b - beta * log_d[None], np.broadcast_to(e, (len(points), len(log_n)))])
    lse = np.logaddexp(np.logaddexp(terms[0], terms[1]), terms[2])
    return huber(lse - log_l[None], delta).sum(axis=1) / delta ** 2


# Exponents are kept non-negative (a law whose loss grows with N or D is not a scaling law);
# log-coefficients are free, except that log E stops at -8 (E = 3e-4, no floor at all for these
# losses): on runs far above their floor the best E is 0, and an unbounded e walked towards
# -infinity for L-BFGS-B's full 2000 iterations from every start (23 s a fit on 7 runs).
E_LOG_FLOOR = -8.0
_LAW_BOUNDS = [(None, None), (None, None), (E_LOG_FLOOR, None), (0.0, 10.0), (0.0, 10.0)]


@dataclasses.dataclass
class Fit:
    """A fitted law, its objective, and (with bootstrap > 0) percentile intervals."""
    law: Law
    objective: float
    n: int
    intervals: dict = dataclasses.field(default_factory=dict)   # name -> [low, high]
    bootstrap: dict = dataclasses.field(default_factory=dict)   # n, level, failed
    samples: np.ndarray | None = None                           # bootstrap laws as vectors [S, 5]

    def compute_optimal_table(self, compute) -> list[dict]:
        """N_opt, D_opt, L_opt at each C, with bootstrap intervals when available."""
        rows = []
        for c in np.atleast_1d(np.asarray(compute, float)):
            n_opt, d_opt = self.law.compute_optimal(c)
            row = {"C": float(c), "N_opt": float(n_opt), "D_opt": float(d_opt), "L_opt": float(self.law.frontier(c))}
            if self.samples is not None and len(self.samples):
                laws = [Law.from_vector(v) for v in self.samples]
                lo, hi = percentiles(self.bootstrap["level"])
                for key, values in (("N_opt", [law.compute_optimal(c)[0] for law in laws]),
                                    ("D_opt", [law.compute_optimal(c)[1] for law in laws]),
                                    ("L_opt", [law.frontier(c) for law in laws])):
                    values = np.asarray(values, float)
                    values = values[np.isfinite(values)]
                    if len(values):
                        row[f"{key}_interval"] = [float(np.percentile(values, lo)), float(np.percentile(values, hi))]
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        law = self.law
        a, b, e = (math.log(v) if v > 0 else -math.inf for v in (law.A, law.B, law.E))
        out = {**law.to_dict(), "a": a, "b": b, "e": e,
               "n_exponent": law.n_exponent, "d_exponent": law.d_exponent, "G": law.G,
               "huber_objective": self.objective, "runs": self.n}
        if self.intervals:
            out["intervals"] = self.intervals
            out["bootstrap"] = self.bootstrap
        return out


def _derived(x) -> dict:
    law = Law.from_vector(x)
    return {**law.to_dict(), "n_exponent": law.n_exponent, "d_exponent": law.d_exponent}


@single_threaded_blas
def fit_law(N, D, L, delta: float = HUBER_DELTA, grid: dict | None = None, top_k: int | None = 32,
            bootstrap: int = 0, level: float = 0.95, seed: int = 0, bootstrap_starts: int = 2,
            extra_starts=()) -> Fit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta, Chinchilla approach 3 (module docstring).

    N, D, L: arrays of non-embedding parameters, tokens and final losses, one per run.
    top_k: L-BFGS-B runs from the top_k best grid points (None: from every grid point), and
    from extra_starts (vectors a, b, e, alpha, beta), if any.
    bootstrap: number of resamples (0: no intervals); level: central interval mass; each
    resample is refitted from the best fit and the bootstrap_starts best grid points.
    """
    N, D, L = (np.asarray(v, float).ravel() for v in (N, D, L))
    keep = np.isfinite(N) & np.isfinite(D) & np.isfinite(L) & (N > 0) & (D > 0) & (L > 0)
    N, D, L = N[keep], D[keep], L[keep]
    if len(L) < 2:
        raise ValueError(f"need at least 2 runs with positive finite N, D, loss to fit a law (got {len(L)})")
    log_n, log_d, log_l = np.log(N), np.log(D), np.log(L)
    points = _grid_points(grid or CHINCHILLA_GRID)
    scores = _grid_scores(points, log_n, log_d, log_l, delta)
    order = np.argsort(scores, kind="stable")
    starts = points[order] if top_k is None else points[order[:top_k]]
    starts = [*(np.asarray(x, float) for x in extra_starts), *starts]
    best = minimise(_law_objective, starts, (log_n, log_d, log_l, delta), _LAW_BOUNDS)
    fit = Fit(law=Law.from_vector(best.x), objective=float(best.fun * delta ** 2), n=len(L))
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        warm = [best.x, *points[order[:bootstrap_starts]]]
        samples, failed = [], 0
        for _ in range(int(bootstrap)):
            idx = rng.integers(0, len(L), len(L))
            if len(np.unique(N[idx])) < 2 or len(np.unique(D[idx])) < 2:
                failed += 1   # a resample with a single N or D cannot identify the law
                continue
            result = minimise(_law_objective, warm, (log_n[idx], log_d[idx], log_l[idx], delta), _LAW_BOUNDS)
            if result is None:
                failed += 1
                continue
            samples.append(result.x)
        fit.samples = np.array(samples).reshape(-1, 5)
        fit.bootstrap = {"n": int(bootstrap), "level": level, "failed": failed}
        if len(samples):
            derived = [_derived(x) for x in samples]
            lo, hi = percentiles(level)
            for key in derived[0]:
                values = np.array([d[key] for d in derived], float)
                values = values[np.isfinite(values)]
                if len(values):
                    fit.intervals[key] = [float(np.percentile(values, lo)), float(np.percentile(values, hi))]
    return fit
