"""Gross-error split: soft thresholding of residuals, e = sign(r) max(|r| - tau, 0).

This is the closed-form minimiser over e of ``w (r - e)^2 + lam2 |e|`` with
``tau = lam2 / (2 w)`` (``tau = inf`` where w = 0, i.e. unseen points carry no
error). Three twins with identical results:

* :func:`soft_threshold_xp` -- array code (NumPy or CuPy);
* :func:`soft_threshold_numba` -- Numba, parallel;
* :func:`soft_threshold_cupy` -- CuPy ElementwiseKernel.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except Exception:  # pragma: no cover
    numba = None


def soft_threshold_xp(r, tau):
    """Array-level reference: works on NumPy and CuPy arrays."""
    mod = type(r).__module__
    xp = np if mod.startswith("numpy") else __import__("cupy")
    return xp.sign(r) * xp.maximum(xp.abs(r) - tau, 0.0)


if numba is not None:

    @numba.njit(parallel=True, cache=True)
    def _st_numba(r, tau, out):  # pragma: no cover
        for i in numba.prange(r.shape[0]):
            a = abs(r[i]) - tau[i]
            if a > 0.0:
                out[i] = a if r[i] > 0 else -a
            else:
                out[i] = 0.0
        return out


def soft_threshold_numba(r, tau):
    r = np.ascontiguousarray(r, dtype=np.float64).ravel()
    tau = np.ascontiguousarray(np.broadcast_to(tau, r.shape), dtype=np.float64)
    return _st_numba(r, tau, np.empty_like(r))


_EK = None


def soft_threshold_cupy(r, tau):
    global _EK
    import cupy as cp

    if _EK is None:
        _EK = cp.ElementwiseKernel(
            "float64 r, float64 tau", "float64 e",
            "double a = fabs(r) - tau; e = a > 0.0 ? copysign(a, r) : 0.0;",
            "shapeprior_soft_threshold")
    return _EK(cp.asarray(r, dtype=cp.float64), cp.asarray(tau, dtype=cp.float64))
