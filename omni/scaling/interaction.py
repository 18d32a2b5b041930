"""Two-modality mixtures: the bi-modal scaling law of Aghajanyan et al. 2023, "Scaling Laws for
Generative Mixed-Modal Language Models", section 3 (the equation after their uni-modal
Chinchilla form; this file called it eq. 3, a number not re-checked against the PDF from here,
so the form is quoted in full). A model trained on modalities i and j with N parameters on
D_i + D_j tokens has
    L(N, D_i, D_j) = [L_i(N, D_i) + L_j(N, D_j)] / 2  - C_ij + beta_ij / N^alpha_ij
                     + gamma_ij / (|D_i| + |D_j|)^alpha_ij
where L_i, L_j are the uni-modal laws (Chinchilla form, fitted on runs that saw only one
modality, each at its own token count D_i), C_ij the maximal synergy, beta_ij / N^alpha_ij the
competition for capacity and gamma_ij / |D|^alpha_ij the competition in optimisation. Checked
against that form: the mean of the two uni-modal laws, the data term on the sum of both token
counts, one exponent alpha_ij shared by the N and D terms (`shared_exponent=False` fits its own
data exponent, not in the paper). The interaction term
    I_ij(N, D) = -C_ij + beta_ij / N^alpha_ij + gamma_ij / D^alpha_ij
is > 0 where the modalities compete (the mixed model is worse than the average of the two
uni-modal ones) and < 0 where they help each other; the "competition barrier" is the scale where
I_ij = 0. Here the mixed loss is the mean of the two per-modality losses of the mixed run, and the
fit is on log L_ij with the same Huber loss as the law's (omni.scaling.law), the uni-modal laws
held fixed. tests/test_scaling.py fits synthetic runs made from this equation, with known
competition and known synergy, and recovers the term's sign and size.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from omni.scaling.law import Law
from omni.scaling.optimise import HUBER_DELTA, huber, minimise, percentiles, single_threaded_blas


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
        from scipy.optimize import brentq  # deferred: slow to import
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
    value = scale * huber(r, delta).sum()
    dr = scale * np.clip(r, -delta, delta) / safe * (pred > floor)
    grad = [-np.sum(dr), np.sum(dr * t1), np.sum(dr * t2), -np.sum(dr * t1 * log_n)]
    if shared:
        grad[3] += -np.sum(dr * t2 * log_dsum)
    else:
        grad.append(-np.sum(dr * t2 * log_dsum))
    return value, np.array(grad)


@single_threaded_blas
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
        return minimise(_interaction_objective, starts,
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
        lo, hi = percentiles(level)
        out["intervals"] = {k: [float(np.percentile([s[k] for s in samples], lo)),
                                float(np.percentile([s[k] for s in samples], hi))] for k in samples[0]} if samples else {}
        out["bootstrap"] = {"n": int(bootstrap), "level": level, "failed": int(bootstrap) - len(samples)}
    return out
