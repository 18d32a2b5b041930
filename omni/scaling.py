"""Scaling laws: run a grid of trainings (`omni sweep`), fit L(N, D) to them (`omni scaling fit`).

The law (Hoffmann et al. 2022, "Chinchilla", approach 3)
----------------------------------------------------------
    L(N, D) = E + A / N^alpha + B / D^beta

N = non-embedding parameters, D = training tokens. With a = log A, b = log B, e = log E the
prediction in log space is  log L = logsumexp(a - alpha log N, b - beta log D, e); the fit
minimises the Huber loss (delta = 1e-3) between that and the observed log L with L-BFGS-B,
started from a grid of points (Chinchilla's grid: a, b in {0, 5, .., 25}, e in {-1, -.5, .., 1},
alpha, beta in {0, .5, .., 2}); the best of the local optima is kept. Every grid point is scored
first (cheap, vectorised) and L-BFGS runs from the `top_k` best (None = all of them). The
objective is divided by delta^2 (same minimiser) so that L-BFGS-B's stopping tolerances act on
numbers of order one: an unscaled Huber sum is ~1e-5 and meets them long before the optimum.
Exponents are bounded to [0, 10]. Confidence intervals: bootstrap over runs (resample with
replacement, refit warm-started from the best fit and the best grid points, percentile intervals).

Compute-optimal allocation for C = 6 N D (minimise L subject to the budget, closed form):
    N_opt(C) = G (C/6)^(beta/(alpha+beta)),  D_opt(C) = G^-1 (C/6)^(alpha/(alpha+beta)),
    G = (alpha A / (beta B))^(1/(alpha+beta));  the frontier is L(N_opt(C), D_opt(C)).

Two-modality mixtures (Aghajanyan et al. 2023, "Scaling Laws for Generative Mixed-Modal Language
Models", eq. 3): a model trained on modalities i and j with N parameters on D_i + D_j tokens has
    L_ij(N, D_i, D_j) = [L_i(N, D_i) + L_j(N, D_j)] / 2  - C_ij + beta_ij / N^alpha_ij
                        + gamma_ij / (D_i + D_j)^alpha_ij
where L_i, L_j are the unimodal laws (fitted on runs that saw only one modality), C_ij the
maximal synergy, beta_ij / N^alpha_ij the competition for capacity and gamma_ij / |D|^alpha_ij the
competition in optimisation. The data exponent is tied to alpha_ij by default, as the paper's
equation is written; `shared_exponent=False` fits its own exponent. The interaction term
    I_ij(N, D) = -C_ij + beta_ij / N^alpha_ij + gamma_ij / D^alpha_ij
is > 0 where the modalities compete (the mixed model is worse than the average of the two
unimodal ones) and < 0 where they help each other; the "competition barrier" is the scale where
I_ij = 0. Here the mixed loss is the mean of the two per-modality losses of the mixed run, and the
fit is on log L_ij with the same Huber loss, the unimodal laws held fixed.

Sweeps
------
A sweep config (configs/scaling/*.py, `get_config()` like any config) names a base config,
common overrides, and a grid: axes of named override lists; every combination is one run, in
out/runs/<name>. A run whose result.json exists is finished and never rerun; a run interrupted
half-way resumes from its last checkpoint (omni.train does that). See configs/scaling/tiny_sweep.py.

What the numbers are, in omni
-----------------------------
N   parameters minus the embedding tables (tree keys containing tokens, positions, rows, cols:
    the text token table -- tied to the output layer -- and the text / image position tables).
D   token positions processed: steps x batch x tokens per example summed over the modalities
    (padding and absent modalities included: the model computes on them), and per modality.
C   C_6ND = 6 N D (what the law's compute-optimal formula uses); C_analytic =
    omni.train.model_flops_per_step x steps (unimodal + fused passes, attention, heads);
    C_xla = XLA's cost analysis of the compiled step x steps (see compiled_step_flops).
L   the final checkpoint's loss on `eval_batches` batches of the held-out split, encoded like
    training batches (see heldout_losses); with eval_batches = 0, the final training row.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HUBER_DELTA = 1e-3
# Chinchilla's grid of starting points (Hoffmann et al. 2022, appendix D.2).
CHINCHILLA_GRID = {
    "a": np.arange(0.0, 30.0, 5.0),
    "b": np.arange(0.0, 30.0, 5.0),
    "e": np.arange(-1.0, 1.5, 0.5),
    "alpha": np.arange(0.0, 2.5, 0.5),
    "beta": np.arange(0.0, 2.5, 0.5),
}
PARAM_ORDER = ("a", "b", "e", "alpha", "beta")
# Parameter-tree keys that hold embeddings: token tables and positional tables (text tokens and
# positions, image row/column position tables). Their parameters are excluded from N.
EMBEDDING_KEYS = ("tokens", "positions", "rows", "cols")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ==============================================================================================
# The law and its fit
# ==============================================================================================

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


def _huber(r, delta):
    absr = np.abs(r)
    return np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))


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
    value = scale * _huber(r, delta).sum()
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
    return _huber(lse - log_l[None], delta).sum(axis=1) / delta ** 2


# Exponents are kept non-negative (a law whose loss grows with N or D is not a scaling law);
# log-coefficients are free.
_LAW_BOUNDS = [(None, None), (None, None), (None, None), (0.0, 10.0), (0.0, 10.0)]
_LBFGS_OPTIONS = {"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9, "maxcor": 20}


def _single_threaded_blas(fn):
    """L-BFGS-B's tiny matrix products are several times slower with a BLAS thread pool than on
    one thread (the pool's start-up dominates), so fits run with BLAS limited to one thread."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return fn(*args, **kwargs)
        import scipy.optimize  # noqa: F401 -- load its BLAS before limiting the pools
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)
    return wrapper


def _minimise(objective, starts, args, bounds):
    from scipy.optimize import minimize
    best = None
    for x0 in starts:
        result = minimize(objective, np.asarray(x0, float), args=args, jac=True, method="L-BFGS-B",
                          bounds=bounds, options=_LBFGS_OPTIONS)
        if np.isfinite(result.fun) and (best is None or result.fun < best.fun):
            best = result
    return best


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
                lo, hi = _percentiles(self.bootstrap["level"])
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


def _percentiles(level: float) -> tuple[float, float]:
    tail = 100.0 * (1.0 - level) / 2.0
    return tail, 100.0 - tail


def _derived(x) -> dict:
    law = Law.from_vector(x)
    return {**law.to_dict(), "n_exponent": law.n_exponent, "d_exponent": law.d_exponent}


@_single_threaded_blas
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
    best = _minimise(_law_objective, starts, (log_n, log_d, log_l, delta), _LAW_BOUNDS)
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
            result = _minimise(_law_objective, warm, (log_n[idx], log_d[idx], log_l[idx], delta), _LAW_BOUNDS)
            if result is None:
                failed += 1
                continue
            samples.append(result.x)
        fit.samples = np.array(samples).reshape(-1, 5)
        fit.bootstrap = {"n": int(bootstrap), "level": level, "failed": failed}
        if len(samples):
            derived = [_derived(x) for x in samples]
            lo, hi = _percentiles(level)
            for key in derived[0]:
                values = np.array([d[key] for d in derived], float)
                values = values[np.isfinite(values)]
                if len(values):
                    fit.intervals[key] = [float(np.percentile(values, lo)), float(np.percentile(values, hi))]
    return fit


# ==============================================================================================
# Two-modality interaction (Aghajanyan et al. 2023)
# ==============================================================================================

@dataclasses.dataclass(frozen=True)
class Interaction:
    """I(N, D) = -C + beta / N^alpha + gamma / D^alpha_d, D = D_i + D_j (alpha_d = alpha in the paper)."""
    C: float
    beta: float
    alpha: float
    gamma: float
    alpha_d: float

    def term(self, N, D):
        N, D = np.asarray(N, float), np.asarray(D, float)
        return -self.C + self.beta * N ** -self.alpha + self.gamma * D ** -self.alpha_d

    def mixed_loss(self, law_i: Law, law_j: Law, N, D_i, D_j):
        D_i, D_j = np.asarray(D_i, float), np.asarray(D_j, float)
        return 0.5 * (law_i(N, D_i) + law_j(N, D_j)) + self.term(N, D_i + D_j)

    def barrier(self, tokens_per_param: float) -> float | None:
        """N at which I(N, r N) = 0 (competition turns into synergy) for D = r N; None if never."""
        if self.C <= 0:
            return None
        from scipy.optimize import brentq
        f = lambda log_n: self.term(math.exp(log_n), tokens_per_param * math.exp(log_n))  # noqa: E731
        lo, hi = math.log(1.0), math.log(1e30)
        if f(lo) * f(hi) > 0:
            return None
        return float(math.exp(brentq(f, lo, hi)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _interaction_unpack(x, shared):
    if shared:
        c, b, g, alpha = x
        return c, b, g, alpha, alpha
    return tuple(x)


def _interaction_objective(x, log_n, log_dsum, base, log_l, delta, shared):
    c, b, g, alpha, alpha_d = _interaction_unpack(x, shared)
    t1 = np.exp(np.minimum(b - alpha * log_n, 500.0))
    t2 = np.exp(np.minimum(g - alpha_d * log_dsum, 500.0))
    pred = base - c + t1 + t2
    floor = 1e-9
    safe = np.maximum(pred, floor)
    r = np.log(safe) - log_l
    scale = 1.0 / delta ** 2
    value = scale * _huber(r, delta).sum()
    dr = scale * np.clip(r, -delta, delta) / safe * (pred > floor)
    grad = [-np.sum(dr), np.sum(dr * t1), np.sum(dr * t2), -np.sum(dr * t1 * log_n)]
    if shared:
        grad[3] += -np.sum(dr * t2 * log_dsum)
    else:
        grad.append(-np.sum(dr * t2 * log_dsum))
    return value, np.array(grad)


@_single_threaded_blas
def fit_interaction(N, D_i, D_j, L_mixed, law_i: Law, law_j: Law, delta: float = HUBER_DELTA,
                    shared_exponent: bool = True, bootstrap: int = 0, level: float = 0.95,
                    seed: int = 0, top_k: int = 24) -> dict:
    """Fit the Aghajanyan et al. interaction term to mixed runs (module docstring), unimodal laws
    held fixed. L-BFGS-B runs from the top_k best points of a small grid of starts.
    Returns {"interaction": Interaction, "objective": .., "intervals": {..}, ..}."""
    N, D_i, D_j, L_mixed = (np.asarray(v, float).ravel() for v in (N, D_i, D_j, L_mixed))
    log_n, log_dsum, log_l = np.log(N), np.log(D_i + D_j), np.log(L_mixed)
    base = 0.5 * (law_i(N, D_i) + law_j(N, D_j))
    spread = float(np.max(np.abs(L_mixed - base))) + 1e-3
    grid = [np.array([-spread, 0.0, spread]), np.arange(-5.0, 16.0, 5.0), np.arange(-5.0, 16.0, 5.0),
            np.array([0.1, 0.3, 0.6, 1.0])]
    if not shared_exponent:
        grid.append(np.array([0.1, 0.3, 0.6, 1.0]))
    starts = np.array(list(itertools.product(*grid)))
    args = (log_n, log_dsum, base, log_l, delta, shared_exponent)
    scores = np.array([_interaction_objective(x, *args)[0] for x in starts])
    starts = starts[np.argsort(scores, kind="stable")[:top_k]]
    bounds = [(None, None), (None, None), (None, None), (1e-3, 5.0)] + ([] if shared_exponent else [(1e-3, 5.0)])

    def run(idx, starts):
        return _minimise(_interaction_objective, starts,
                         (log_n[idx], log_dsum[idx], base[idx], log_l[idx], delta, shared_exponent), bounds)

    everything = np.arange(len(N))
    best = run(everything, starts)

    def as_interaction(x):
        c, b, g, alpha, alpha_d = _interaction_unpack(x, shared_exponent)
        return Interaction(C=float(c), beta=math.exp(b), alpha=float(alpha), gamma=math.exp(g), alpha_d=float(alpha_d))

    out = {"interaction": as_interaction(best.x), "objective": float(best.fun * delta ** 2), "runs": len(N),
           "shared_exponent": shared_exponent}
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(int(bootstrap)):
            result = run(rng.integers(0, len(N), len(N)), [best.x])
            if result is not None:
                samples.append(as_interaction(result.x).to_dict())
        lo, hi = _percentiles(level)
        out["intervals"] = {k: [float(np.percentile([s[k] for s in samples], lo)),
                                float(np.percentile([s[k] for s in samples], hi))] for k in samples[0]} if samples else {}
        out["bootstrap"] = {"n": int(bootstrap), "level": level, "failed": int(bootstrap) - len(samples)}
    return out


# ==============================================================================================
# Sweeps
# ==============================================================================================

def load_sweep(path) -> "ml_collections.ConfigDict":  # noqa: F821
    from omni import config as config_lib
    return config_lib.load_config(path)


def grid_points(sweep) -> list[dict]:
    """Every combination of the grid's axes -> {"name", "point": {axis: value}, "overrides": [...]}.

    sweep.grid: {axis: {value_name: [override, ...]}}; sweep.axes (optional) orders the axes
    (ConfigDict sorts keys). Values are taken in name order, so zero-pad numbers in names.
    An override `--sweep.modalities=text,image` keeps only those modalities of the base config.
    """
    grid = sweep.grid
    axes = list(sweep.get("axes", None) or sorted(grid.keys()))
    unknown = set(grid.keys()) - set(axes)
    if unknown:
        raise ValueError(f"sweep.axes does not list grid axes {sorted(unknown)}")
    values = [sorted(grid[axis].keys()) for axis in axes]
    common = list(sweep.get("overrides", []) or [])
    points = []
    for combination in itertools.product(*values):
        overrides = list(common)
        for axis, value in zip(axes, combination):
            overrides += list(grid[axis][value])
        points.append({"name": "-".join(combination), "point": dict(zip(axes, combination)),
                       "overrides": overrides})
    return points


def _resolve_base(sweep, sweep_file: Path) -> str:
    """sweep.base as given (a path, or a name in configs/), or a file beside the sweep config."""
    base = str(sweep.base)
    beside = Path(sweep_file).resolve().parent / base
    return str(beside) if not Path(base).exists() and beside.exists() else base


def build_run_config(base: str, overrides: list[str]):
    """The run's config: base + `--config.*` overrides; `--sweep.modalities=a,b` restricts the
    modalities (and zeroes the objectives that need a dropped one)."""
    from omni import config as config_lib
    from omni.modalities import registry

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


def non_embedding_params(params) -> tuple[int, int]:
    """(non-embedding parameters, all parameters) of a params tree (arrays or ShapeDtypeStructs)."""
    import jax
    total = embedding = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        size = int(np.prod(leaf.shape))
        total += size
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if any(word in name for name in names for word in EMBEDDING_KEYS):
            embedding += size
    return total - embedding, total


def _mesh_and_setup(config):
    import jax
    from omni import config as config_lib, parallel
    from omni.train import build_setup
    mesh = parallel.make_mesh(config_lib.resolve_mesh_shape(config, jax.device_count()))
    return mesh, build_setup(config, mesh)


def compiled_step_flops(config) -> dict:
    """FLOPs per step from XLA's cost analysis of the compiled train step (the step train() runs:
    same function, shardings, donation; compiled from abstract inputs, nothing executed).

    XLA counts a while loop's body once, so with model.scan_layers the compiled count misses
    (depth - 1) layers; for that case the pre-optimisation HLO of the same step with the layers
    unrolled is also counted (lowered only, not compiled: cheap)."""
    import jax
    import jax.numpy as jnp
    from omni.train import batch_spec

    def abstract_batch(setup):
        shardings = setup.batch_shardings()
        return {k: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=shardings[k])
                for k, (shape, dtype) in batch_spec(setup.config).items()}

    def flops_of(analysis):
        if isinstance(analysis, (list, tuple)):
            analysis = analysis[0] if analysis else {}
        value = (analysis or {}).get("flops")
        return float(value) if value is not None and value >= 0 else None

    out = {}
    mesh, setup = _mesh_and_setup(config)
    with jax.set_mesh(mesh):
        lowered = setup.compile_train_step().lower(setup.abstract_state, abstract_batch(setup))
        out["xla_flops_per_step"] = flops_of(lowered.compile().cost_analysis())
    if config.model.get("scan_layers", False) and int(config.model.depth) > 1:
        unrolled = config.copy_and_resolve_references()
        with unrolled.unlocked():
            unrolled.model.scan_layers = False
        mesh, setup = _mesh_and_setup(unrolled)
        with jax.set_mesh(mesh):
            lowered = setup.compile_train_step().lower(setup.abstract_state, abstract_batch(setup))
            out["hlo_unrolled_flops_per_step"] = flops_of(lowered.cost_analysis())
        out["xla_note"] = ("model.scan_layers: XLA counts the scanned layer once; "
                           "hlo_unrolled_flops_per_step counts every layer (pre-optimisation HLO)")
    return out


def heldout_losses(workdir, split: str, batches: int, config=None) -> dict | None:
    """Losses of the run's final checkpoint on `batches` batches of the held-out split, encoded
    exactly like training batches (same batch size, modality dropout, masking rates; fixed masking
    keys). Returns {"loss/<objective>": mean, ..., "loss": weighted sum} or None without the split.

    An objective with nothing to score in a batch reports exactly 0 there; such batches are left
    out of that objective's mean. `loss` is recomputed as sum(weight * mean) over the objectives."""
    import jax
    from flax import nnx
    from omni import objectives
    from omni.data import pipeline
    from omni.data.records import open_split, split_names
    from omni.evaluate import load_run

    run_config, setup, params, assets, _ = load_run(workdir)
    config = config or run_config
    data_dir = pipeline.resolve_data_dir(config)
    if split not in split_names(data_dir):
        return None
    source = open_split(data_dir, split)
    eval_config = config.copy_and_resolve_references()
    with eval_config.unlocked():
        eval_config.train.steps = int(batches)
        eval_config.mesh.data, eval_config.mesh.fsdp, eval_config.mesh.tensor = -1, 1, 1
    graphdef = setup.graphdef
    loss_fn = jax.jit(lambda p, batch, rng: objectives.total_loss(nnx.merge(graphdef, p), batch, rng, eval_config)[1])
    shardings = setup.batch_shardings()
    key = jax.random.key(int(config.train.seed) + 7919)
    sums, counts = {}, {}
    with jax.set_mesh(setup.mesh):
        for i, (local, _) in enumerate(pipeline.training_batches(source, eval_config, assets)):
            batch = {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in local.items()}
            metrics = jax.device_get(loss_fn(params, batch, jax.random.fold_in(key, i)))
            for name, value in metrics.items():
                value = float(value)
                if name.startswith("loss/") and value != 0.0 and math.isfinite(value):
                    sums[name] = sums.get(name, 0.0) + value
                    counts[name] = counts.get(name, 0) + 1
    out = {name: sums[name] / counts[name] for name in sums}
    weights = {name: float(config.loss[name].weight) for name in config.loss}
    out["loss"] = sum(w * out[f"loss/{name}"] for name, w in weights.items() if w > 0 and f"loss/{name}" in out)
    out["batches"] = int(batches)
    return out


@contextlib.contextmanager
def persistent_compilation_cache(directory: Path):
    """Use a JAX persistent compilation cache in `directory` (unless one is already configured),
    so that compiling the step for its cost analysis and train()'s own compile of the same step
    cost one compile, and a resumed sweep recompiles nothing."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc
    if jax.config.jax_compilation_cache_dir:
        yield
        return
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    previous = {name: getattr(jax.config, name) for name in names}
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    cc.reset_cache()
    try:
        yield
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)
        cc.reset_cache()


def _tokenizer_key(config) -> str:
    from omni.data import pipeline
    text = f"{Path(pipeline.resolve_data_dir(config)).resolve()}|{config.modalities.text.vocab_size}" \
        if "text" in config.modalities else ""
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _plain(value):
    """JSON-safe: numpy scalars -> Python, NaN / inf -> None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_plain(data), indent=2, sort_keys=True, allow_nan=False))
    os.replace(tmp, path)


def last_training_row(workdir) -> dict:
    """The training row (one with `loss`) of the highest step in workdir/metrics.jsonl."""
    path = Path(workdir) / "metrics.jsonl"
    best: dict = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if "loss" in row and row.get("step", -1) >= best.get("step", -1):
                best = row
    return best


def run_one(name: str, overrides: list[str], base: str, run_dir: Path, sweep, shared_dir: Path,
            point: dict | None = None) -> dict:
    """Train one grid point (resuming if interrupted) and write run_dir/result.json."""
    import jax
    from omni.modalities import registry
    from omni.train import model_flops_per_step, train

    config = build_run_config(base, overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    # One tokenizer for the whole sweep (same data, same vocabulary): text losses stay comparable
    # across runs and it is trained once.
    if "text" in config.modalities:
        shared_tokenizer = shared_dir / f"tokenizer-{_tokenizer_key(config)}.json"
        if shared_tokenizer.exists() and not (run_dir / "tokenizer.json").exists() \
                and not (run_dir / "checkpoints").exists():
            shutil.copyfile(shared_tokenizer, run_dir / "tokenizer.json")

    if "text" not in config.modalities and not (run_dir / "tokenizer.json").exists():
        # omni.train always loads or trains a tokenizer, and training one needs modalities.text:
        # a run without text gets a placeholder (byte-level symbols only), never used.
        from omni.modalities.text import SPECIAL_TOKENS, BPETokenizer
        BPETokenizer.train(["placeholder"], len(SPECIAL_TOKENS) + 257).save(run_dir / "tokenizer.json")

    started = time.perf_counter()
    _, setup = _mesh_and_setup(config)
    n_non_embedding, n_total = non_embedding_params(setup.abstract_state["params"])
    xla = {}
    if sweep.get("cost_analysis", True):
        try:
            xla = compiled_step_flops(config)
        except Exception as e:  # noqa: BLE001 -- optional: a failure must not lose the run
            xla = {"xla_error": f"{type(e).__name__}: {e}"}
    last = train(config, run_dir)
    train_s = time.perf_counter() - started

    if "text" in config.modalities and (run_dir / "tokenizer.json").exists():
        shared_tokenizer = shared_dir / f"tokenizer-{_tokenizer_key(config)}.json"
        if not shared_tokenizer.exists():
            shutil.copyfile(run_dir / "tokenizer.json", shared_tokenizer)

    steps, batch = int(config.train.steps), int(config.train.batch_size)
    tokens_per_modality = {m: batch * int(registry.get(m).num_tokens(config)) * steps for m in config.modalities}
    D = sum(tokens_per_modality.values())
    flops_per_step = model_flops_per_step(config)
    # The last training row of metrics.jsonl (train() returns nothing new when it resumes a run
    # that had already finished training). An objective that had nothing to score reports
    # exactly 0 (e.g. mmm in a one-modality run): left out.
    row = last_training_row(run_dir) or last
    train_row = {k: float(v) for k, v in row.items()
                 if k == "loss" or (k.startswith("loss/") and float(v) != 0.0)}

    eval_batches = int(sweep.get("eval_batches", 0) or 0)
    held_out = None
    if eval_batches > 0 and jax.process_count() == 1:
        held_out = heldout_losses(run_dir, str(config.eval.split), eval_batches, config)
    from_train_row = []
    if held_out is not None:
        losses = {k: v for k, v in held_out.items() if k == "loss" or k.startswith("loss/")}
        source = f"held-out split '{config.eval.split}', {eval_batches} batches of {batch}"
        # An objective that had nothing to score in any held-out batch (e.g. mlm when the split
        # holds only pairs and no batch dropped a modality) keeps its final training value.
        from_train_row = sorted(k for k in train_row if k not in losses)
        losses.update({k: train_row[k] for k in from_train_row})
        if from_train_row:
            losses["loss"] = sum(float(config.loss[name].weight) * losses[f"loss/{name}"] for name in config.loss
                                 if float(config.loss[name].weight) > 0 and f"loss/{name}" in losses)
    else:
        losses = train_row
        source = "final training row of metrics.jsonl (no held-out loss)"
    per_modality = {m: losses.get(f"loss/{registry.get(m).objective}") for m in config.modalities}

    result = {
        "name": name, "point": dict(point or {}), "overrides": list(overrides), "modalities": sorted(config.modalities.keys()),
        "width": int(config.model.width), "depth": int(config.model.depth),
        "N": n_non_embedding, "N_total": n_total,
        "steps": steps, "batch_size": batch, "D": D, "D_per_modality": tokens_per_modality,
        "C_6ND": 6.0 * n_non_embedding * D,
        "C_analytic": flops_per_step * steps, "analytic_flops_per_step": flops_per_step,
        **{k: v for k, v in xla.items()},
        "loss": losses.get("loss"), "losses": losses, "loss_per_modality": per_modality,
        "loss_source": source, "losses_from_train_row": from_train_row, "final_train_losses": train_row,
        "wall_s": time.perf_counter() - started, "train_s": train_s,
    }
    if xla.get("xla_flops_per_step") is not None:
        result["C_xla"] = xla["xla_flops_per_step"] * steps
    if xla.get("hlo_unrolled_flops_per_step") is not None:
        result["C_hlo_unrolled"] = xla["hlo_unrolled_flops_per_step"] * steps
    _write_json(run_dir / "result.json", result)
    return result


def load_results(directory) -> list[dict]:
    """Every result.json under directory/runs (or anywhere under directory), by name."""
    directory = Path(directory)
    files = sorted((directory / "runs").glob("*/result.json")) or sorted(directory.rglob("result.json"))
    return [json.loads(f.read_text()) for f in files]


CSV_COLUMNS = ["name", "modalities", "width", "depth", "N", "N_total", "steps", "batch_size", "D",
               "C_6ND", "C_analytic", "C_xla", "C_hlo_unrolled", "loss"]


def write_runs_csv(results: list[dict], path) -> Path:
    path = Path(path)
    loss_keys = sorted({k for r in results for k in r.get("losses", {}) if k != "loss"})
    point_keys = sorted({k for r in results for k in r.get("point", {})} - set(CSV_COLUMNS))
    columns = CSV_COLUMNS[:1] + point_keys + CSV_COLUMNS[1:] + loss_keys + ["loss_source", "wall_s"]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in results:
            row = {**r.get("point", {}), **r, **{k: v for k, v in r.get("losses", {}).items() if k != "loss"}}
            row["modalities"] = "+".join(r.get("modalities", []))
            writer.writerow(row)
    os.replace(tmp, path)
    return path


SLURM_ARRAY_SCRIPT = """#!/usr/bin/env bash
# One SLURM array task per grid point of {sweep_file}; each runs `omni sweep --only INDEX`.
# A finished point is skipped, so resubmitting this script continues an interrupted sweep.
# When all tasks are done:  omni scaling fit {out}
#SBATCH --job-name=omni-sweep
#SBATCH --array=0-{last}
#SBATCH --ntasks=1
{sbatch_lines}
set -euo pipefail
export OMNI_NO_DISTRIBUTED=1   # each task is its own single-process run
omni sweep --config {sweep_file} --out {out} --only "$SLURM_ARRAY_TASK_ID"
"""


def write_slurm_array(sweep, sweep_file: Path, out: Path, count: int) -> Path:
    """out/sweep.sbatch: a job array with one task per grid point (sweep.sbatch = extra #SBATCH lines)."""
    extra = "\n".join(f"#SBATCH {line}" for line in sweep.get("sbatch", ()))
    script = out / "sweep.sbatch"
    script.write_text(SLURM_ARRAY_SCRIPT.format(sweep_file=sweep_file.resolve(), out=out.resolve(),
                                                last=count - 1, sbatch_lines=extra))
    script.chmod(0o755)
    return script


def run_sweep(sweep_config_path, out_dir, only: int | None = None) -> dict:
    """Run the grid points of the sweep config into out_dir/runs/<name>, skipping those whose
    result.json exists, and write out_dir/runs.csv. runner="local": all of them, one after
    another, here. runner="slurm": write out_dir/sweep.sbatch (a job array whose task i runs
    `omni sweep --only i`) and submit it with sbatch when sbatch is on PATH. `only`: just that
    grid point, here (what each array task does). Returns a summary."""
    from omni import parallel

    sweep_file = _sweep_file(sweep_config_path)
    sweep = load_sweep(sweep_file)
    runner = str(sweep.get("runner", "local"))
    if runner not in ("local", "slurm"):
        raise ValueError(f"{sweep_file}: runner '{runner}': use local or slurm")
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    base = _resolve_base(sweep, sweep_file)
    points = grid_points(sweep)
    if only is None:
        shutil.copyfile(sweep_file, out / "sweep_config.py")
    if runner == "slurm" and only is None:
        script = write_slurm_array(sweep, sweep_file, out, len(points))
        submitted = None
        if shutil.which("sbatch"):
            submitted = subprocess.run(["sbatch", str(script)], capture_output=True, text=True,
                                       check=True).stdout.strip()
        return {"out": str(out), "runs": len(points), "script": str(script), "submitted": submitted}
    if only is not None:
        if not 0 <= only < len(points):
            raise ValueError(f"--only {only}: the sweep has grid points 0..{len(points) - 1}")
        points = [points[only]]
    parallel.maybe_initialize_distributed()
    trained, skipped = [], []
    cache = persistent_compilation_cache(out / "jax_cache") if sweep.get("compilation_cache", True) \
        else contextlib.nullcontext()
    with cache:
        for i, point in enumerate(points):
            run_dir = out / "runs" / point["name"]
            result_file = run_dir / "result.json"
            if result_file.exists():
                recorded = json.loads(result_file.read_text())
                if recorded.get("overrides") != point["overrides"]:
                    log(f"[sweep] {point['name']}: result.json was made with other overrides; kept "
                        "(delete it to rerun)")
                skipped.append(point["name"])
                log(f"[sweep] {i + 1}/{len(points)} {point['name']}: finished before, skipped")
                continue
            log(f"[sweep] {i + 1}/{len(points)} {point['name']}: {' '.join(point['overrides'])}")
            run_one(point["name"], point["overrides"], base, run_dir, sweep, out, point["point"])
            trained.append(point["name"])
            if only is None:  # array tasks run at once: leave runs.csv to `omni scaling fit`
                write_runs_csv(load_results(out), out / "runs.csv")
    results = load_results(out)
    csv_path = write_runs_csv(results, out / "runs.csv")
    return {"out": str(out), "runs": len(points), "trained": trained, "skipped": skipped,
            "csv": str(csv_path)}


def _sweep_file(path) -> Path:
    from omni import config as config_lib
    return config_lib.resolve_config_path(str(path))


# ==============================================================================================
# Fitting a sweep directory, and its plots
# ==============================================================================================

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


def _column(results, key):
    return np.array([r["losses"][key] if key.startswith("loss") else r[key] for r in results], float)


def _holdout(results: list[dict], target: str, **fit_kwargs) -> dict | None:
    """Fit on all runs but the largest (by C = 6ND, then N); predict the largest.
    fit_kwargs go to fit_law (e.g. extra_starts=[the full fit], top_k=8)."""
    if len(results) < 6:
        return None
    largest = max(range(len(results)), key=lambda i: (results[i]["C_6ND"], results[i]["N"]))
    rest = [r for i, r in enumerate(results) if i != largest]
    fit = fit_law(_column(rest, "N"), _column(rest, "D"), _column(rest, target), **fit_kwargs)
    run = results[largest]
    predicted = float(fit.law(run["N"], run["D"]))
    observed = float(run["losses"][target])
    return {"run": run["name"], "N": run["N"], "D": run["D"], "predicted": predicted, "observed": observed,
            "relative_error": abs(predicted - observed) / observed, "law": fit.law.to_dict()}


def _compute_grid(results) -> np.ndarray:
    c = _column(results, "C_6ND")
    lo, hi = math.floor(math.log10(c.min())), math.ceil(math.log10(c.max())) + 2
    return np.logspace(lo, hi, hi - lo + 1)


def fit_dir(directory, bootstrap: int = 200, level: float = 0.95, min_runs: int = 5, plots: bool = True,
            seed: int = 0) -> dict:
    """Fit the law to every result.json in directory: total loss and each objective's loss, per
    group of runs with the same modalities; interactions where unimodal and mixed groups exist.
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
        ratio = _column(runs, "C_analytic") / _column(runs, "C_6ND")
        entry["C_analytic_over_6ND"] = {"median": float(np.median(ratio)), "min": float(ratio.min()),
                                        "max": float(ratio.max())}
        fits[group] = {}
        for target in _targets(runs):
            fit = fit_law(_column(runs, "N"), _column(runs, "D"), _column(runs, target),
                          bootstrap=bootstrap, level=level, seed=seed)
            fits[group][target] = fit
            info = fit.to_dict()
            info["compute_optimal"] = fit.compute_optimal_table(_compute_grid(runs))
            predicted = fit.law(_column(runs, "N"), _column(runs, "D"))
            observed = _column(runs, target)
            info["max_relative_error"] = float(np.max(np.abs(predicted - observed) / observed))
            holdout = _holdout(runs, target, extra_starts=[fit.law.vector()], top_k=8)
            if holdout is not None:
                info["holdout_largest"] = holdout
            entry["fits"][target] = info
        out["groups"][group] = entry
    if fits:
        out["main"] = max(fits, key=lambda g: (len(groups[g]), g.count("+")))
    out["interactions"] = _fit_interactions(groups, bootstrap=bootstrap, level=level, seed=seed,
                                            min_runs=min_runs)
    if plots and fits:
        out["plots"] = make_plots(directory, groups[out["main"]], fits[out["main"]])
    _write_json(directory / "fit.json", out)
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
            laws[name] = fit_law(_column(uni, "N"), [r["D_per_modality"][name] for r in uni], losses).law
        if skip:
            out[group] = {"skipped": skip}
            continue
        mixed = np.array([np.mean([r["loss_per_modality"][n] for n in names]) for r in runs], float)
        result = fit_interaction(_column(runs, "N"), [r["D_per_modality"][names[0]] for r in runs],
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


def make_plots(directory: Path, runs: list[dict], fits: dict[str, Fit]) -> list[str]:
    """loss_vs_compute.png (runs, fitted frontier, empirical frontier), isoflop.png (fitted loss
    along N at fixed C, with the optimum), fitted_vs_observed.png (one panel per target)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    N, D, C = _column(runs, "N"), _column(runs, "D"), _column(runs, "C_6ND")
    written = []

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    law = fits["loss"].law if "loss" in fits else next(iter(fits.values())).law
    target = "loss" if "loss" in fits else next(iter(fits))
    L = _column(runs, target)
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
        observed = _column(runs, name)
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


def load_fit(directory, target: str = "loss", group: str | None = None) -> Law:
    """The fitted law of `target` from directory/fit.json (main group unless named)."""
    data = json.loads((Path(directory) / "fit.json").read_text())
    fit = data["groups"][group or data["main"]]["fits"][target]
    return Law(E=fit["E"], A=fit["A"], B=fit["B"], alpha=fit["alpha"], beta=fit["beta"])


# ==============================================================================================
# Command-line glue (wired into omni.cli as `omni sweep` and `omni scaling fit`)
# ==============================================================================================

def cli_sweep(config_path, out, only: int | None = None) -> dict:
    """`omni sweep --config PATH --out DIR [--only I]`: run the grid; returns the summary (print as JSON)."""
    return run_sweep(config_path, out, only=only)


def cli_fit(directory, **fit_kwargs) -> dict:
    """`omni scaling fit DIR`: fit, write fit.json / runs.csv / PNGs; returns a short summary.
    fit_kwargs go to fit_dir (bootstrap, level, min_runs, plots)."""
    data = fit_dir(directory, **fit_kwargs)
    summary = {"dir": str(directory), "fit": str(Path(directory) / "fit.json"), "plots": data.get("plots", []),
               "main": data.get("main"), "laws": {}}
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
