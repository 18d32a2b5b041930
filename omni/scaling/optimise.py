"""The robust multi-start fit shared by the law and the interaction fits: the Huber loss,
L-BFGS-B from several starting points (best local optimum kept), BLAS limited to one thread
while fitting, and percentile intervals for bootstrap resamples."""
from __future__ import annotations

import functools

import numpy as np

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # optional: without it fits run with the default BLAS pools
    threadpool_limits = None

HUBER_DELTA = 1e-3
# ftol 1e-10 / gtol 1e-7 (was 1e-13 / 1e-9): the same fitted law to 5 digits on the cpu_laws runs
# in half the iterations; from a cold start a fit takes ~250 iterations.
LBFGS_OPTIONS = {"maxiter": 2000, "ftol": 1e-10, "gtol": 1e-7, "maxcor": 20}


def huber(r, delta):
    absr = np.abs(r)
    return np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))


def single_threaded_blas(fn):
    """L-BFGS-B's tiny matrix products are several times slower with a BLAS thread pool than on
    one thread (the pool's start-up dominates), so fits run with BLAS limited to one thread."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if threadpool_limits is None:
            return fn(*args, **kwargs)
        import scipy.optimize  # noqa: F401 -- deferred: slow to import; load its BLAS before limiting the pools
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)
    return wrapper


def minimise(objective, starts, args, bounds):
    """L-BFGS-B (objective returns value and gradient) from every start; the best finite result."""
    from scipy.optimize import minimize  # deferred: slow to import
    best = None
    for x0 in starts:
        result = minimize(objective, np.asarray(x0, float), args=args, jac=True, method="L-BFGS-B",
                          bounds=bounds, options=LBFGS_OPTIONS)
        if np.isfinite(result.fun) and (best is None or result.fun < best.fun):
            best = result
    return best


def percentiles(level: float) -> tuple[float, float]:
    """The lower and upper percentiles of a central interval of mass `level`."""
    tail = 100.0 * (1.0 - level) / 2.0
    return tail, 100.0 - tail
