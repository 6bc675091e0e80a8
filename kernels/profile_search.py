"""Best profile match along each vertex normal (the learned boundary search).

Input: image samples ``s`` (N, U) along each vertex's normal, ``step`` mm
apart, and a profile model: per-vertex means and variances (N, P) of the
normalised derivative profile of ``P + 1`` samples (Cootes et al.). The
candidate boundary positions are the ``C = U - P`` windows of ``P + 1``
consecutive samples; for window c the profile is ``d / (sum |d| + 1e-6)``
with ``d`` the differences of its samples, and its cost is the mean of
``(profile - mean)^2 / var``. Returns, per vertex, the candidate that
minimises ``cost + penalty`` (the first on ties) and its cost.

* :func:`profile_search_numpy` -- NumPy reference: builds the (N, C, P)
  profile array (the search's largest temporaries);
* :func:`profile_search_numba` -- Numba twin, parallel over vertices, one
  window at a time and no temporaries. Its sums run in order, NumPy's in
  the order its reduction picks: costs agree to rounding (1e-16 relative).
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except Exception:  # pragma: no cover
    numba = None


def _check(samples, mean, var, penalty):
    samples = np.ascontiguousarray(samples, dtype=np.float64)
    mean = np.ascontiguousarray(mean, dtype=np.float64)
    var = np.ascontiguousarray(var, dtype=np.float64)
    penalty = np.ascontiguousarray(penalty, dtype=np.float64)
    if samples.ndim != 2 or mean.ndim != 2 or mean.shape != var.shape \
            or mean.shape[0] != samples.shape[0]:
        raise ValueError(f"samples (N, U), mean and var (N, P) expected, got {samples.shape}, "
                         f"{mean.shape}, {var.shape}")
    n_cand = samples.shape[1] - mean.shape[1]
    if mean.shape[1] < 1 or n_cand < 1 or penalty.shape != (n_cand,):
        raise ValueError(f"{samples.shape[1]} samples per vertex and profiles of "
                         f"{mean.shape[1] + 1} give {n_cand} candidates; penalty has shape "
                         f"{penalty.shape}")
    return samples, mean, var, penalty


def profile_search_numpy(samples, mean, var, penalty):
    """NumPy reference. Returns ``(best (N,) int64, cost (N,) float64)``."""
    samples, mean, var, penalty = _check(samples, mean, var, penalty)
    P = mean.shape[1]
    C = samples.shape[1] - P
    window = np.arange(C)[:, None] + np.arange(P + 1)[None, :]          # (C, P + 1)
    d = np.diff(samples[:, window], axis=-1)                             # (N, C, P)
    prof = d / (np.sum(np.abs(d), axis=-1, keepdims=True) + 1e-6)
    cost = np.sum((prof - mean[:, None, :]) ** 2 / var[:, None, :], axis=2) / P
    best = np.argmin(cost + penalty[None, :], axis=1)
    return best, cost[np.arange(len(samples)), best]


if numba is not None:
    @numba.njit(cache=True, parallel=True)
    def _profile_search_nb(s, mean, var, penalty):  # pragma: no cover - jitted
        N, P = mean.shape
        C = s.shape[1] - P
        best = np.empty(N, dtype=np.int64)
        cost = np.empty(N, dtype=np.float64)
        for n in numba.prange(N):
            d = np.empty(P)
            b, bc, bv = -1, 0.0, 0.0
            for c in range(C):
                norm = 0.0
                for p in range(P):
                    d[p] = s[n, c + p + 1] - s[n, c + p]
                    norm += abs(d[p])
                norm += 1e-6
                k = 0.0
                for p in range(P):
                    e = d[p] / norm - mean[n, p]
                    k += e * e / var[n, p]
                k /= P
                v = k + penalty[c]
                if b < 0 or v < bv:
                    b, bc, bv = c, k, v
            best[n] = b
            cost[n] = bc
        return best, cost


def profile_search_numba(samples, mean, var, penalty):
    """Numba twin of :func:`profile_search_numpy` (costs equal to rounding)."""
    if numba is None:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    return _profile_search_nb(*_check(samples, mean, var, penalty))
