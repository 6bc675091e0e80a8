"""Newton systems of the batched SSC-L1 solve (``shapeprior.ssc._batched``).

For each shape m of a batch, with its outlier rows ``O_m`` and working set
of atoms ``S_m`` (both padded: row index ``n`` and atom index ``K`` mean
"none")::

    H[m]  = GW[S_m, S_m] - D[O_m, S_m]^T diag(w[O_m]) D[O_m, S_m]     (s, s)
    bc[m] = D[O_m, S_m]^T v[m]                                         (s,)

with 1 on the diagonal of a padded slot (and 0 elsewhere in its row and
column), so that the padded system solves to 0 there. Only the outlier rows
are read: ``o s`` entries of D per shape instead of the ``n s`` of its
working set's columns.

Three twins:

* :func:`outlier_hessian_numpy` -- array reference (NumPy or CuPy): one
  gather of ``D[O, S]`` per shape (memory ``M o s``), batched products;
* :func:`outlier_hessian_numba` -- CPU, one shape per thread;
* :func:`outlier_hessian_cupy` -- CUDA raw kernel (``outlier_hessian.cu``):
  one block row per shape, the outlier rows in tiles through shared memory,
  nothing of size ``M o s`` in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

try:
    import numba
except Exception:  # pragma: no cover
    numba = None

_CU_SOURCE = Path(__file__).with_name("outlier_hessian.cu")
_THREADS = 256
#: largest working set of the CUDA kernel (its tile of _TR rows of s doubles
#: stays within the 48 KiB of shared memory a block gets without opting in)
_MAX_S = 256
_TR = 16


def _xp(a):
    return np if type(a).__module__.startswith("numpy") else __import__("cupy")


def outlier_hessian_numpy(D, GW, w, Oidx, Sidx, v):
    """Reference (NumPy or CuPy arrays).

    Parameters
    ----------
    D : array, shape (n, K)
    GW : array, shape (K, K)
        ``D^T diag(w) D``.
    w : array, shape (n,)
    Oidx : integer array, shape (M, o)
        Outlier rows of each shape, padded with ``n``.
    Sidx : integer array, shape (M, s)
        Working-set atoms of each shape, padded with ``K``.
    v : array, shape (M, o)
        Per outlier row value summed into ``bc`` (0 on padding).

    Returns
    -------
    H : array, shape (M, s, s)
    bc : array, shape (M, s)
    """
    xp = _xp(D)
    n, K = D.shape
    s = Sidx.shape[1]
    Dp = xp.zeros((n + 1, K + 1))
    Dp[:n, :K] = D
    Gp = xp.zeros((K + 1, K + 1))
    Gp[:K, :K] = GW
    wp = xp.concatenate([w, xp.zeros(1)])
    DO = Dp[Oidx[:, :, None], Sidx[:, None, :]]                  # (M, o, s)
    DOt = xp.swapaxes(DO, 1, 2)
    H = Gp[Sidx[:, :, None], Sidx[:, None, :]] - xp.matmul(DOt, DO * wp[Oidx][:, :, None])
    H += (Sidx == K)[:, :, None] * xp.eye(s)[None]
    bc = xp.matmul(DOt, v[:, :, None])[:, :, 0]
    return H, bc


if numba is not None:
    @numba.njit(parallel=True, cache=True)
    def _outlier_hessian_numba(D, GW, w, Oidx, Sidx, v, H, bc):
        n, K = D.shape
        M, o = Oidx.shape
        s = Sidx.shape[1]
        for i in numba.prange(M):
            row_s = np.empty(s)
            for a in range(s):
                ca = Sidx[i, a]
                for b in range(s):
                    cb = Sidx[i, b]
                    if ca < K and cb < K:
                        H[i, a, b] = GW[ca, cb]
                    else:
                        H[i, a, b] = 1.0 if a == b else 0.0
                bc[i, a] = 0.0
            for r in range(o):
                row = Oidx[i, r]
                if row >= n:
                    continue
                wr = w[row]
                vr = v[i, r]
                for a in range(s):
                    ca = Sidx[i, a]
                    row_s[a] = D[row, ca] if ca < K else 0.0
                for a in range(s):
                    da = row_s[a]
                    if da == 0.0:
                        continue
                    bc[i, a] += da * vr
                    t = wr * da
                    for b in range(s):
                        H[i, a, b] -= t * row_s[b]


def outlier_hessian_numba(D, GW, w, Oidx, Sidx, v):
    """Numba twin of :func:`outlier_hessian_numpy` (NumPy arrays)."""
    if numba is None:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    M, s = Sidx.shape
    H = np.empty((M, s, s))
    bc = np.empty((M, s))
    _outlier_hessian_numba(np.ascontiguousarray(D, dtype=np.float64),
                           np.ascontiguousarray(GW, dtype=np.float64),
                           np.ascontiguousarray(w, dtype=np.float64),
                           np.ascontiguousarray(Oidx, dtype=np.int64),
                           np.ascontiguousarray(Sidx, dtype=np.int64),
                           np.ascontiguousarray(v, dtype=np.float64), H, bc)
    return H, bc


_KERNELS = {}


def outlier_hessian_cupy(D, GW, w, Oidx, Sidx, v):
    """CUDA twin of :func:`outlier_hessian_numpy` (CuPy arrays). Working sets of
    more than ``_MAX_S`` atoms go to the reference."""
    import cupy as cp

    M, s = Sidx.shape
    if s > _MAX_S:
        return outlier_hessian_numpy(D, GW, w, Oidx, Sidx, v)
    if "f" not in _KERNELS:
        _KERNELS["f"] = cp.RawModule(code=_CU_SOURCE.read_text()).get_function(
            "outlier_hessian")
    n, K = D.shape
    o = Oidx.shape[1]
    H = cp.empty((M, s, s))
    bc = cp.empty((M, s))
    grid = (M, (s * s + _THREADS - 1) // _THREADS)
    _KERNELS["f"](grid, (_THREADS,),
                  (cp.ascontiguousarray(D, dtype=cp.float64),
                   cp.ascontiguousarray(GW, dtype=cp.float64),
                   cp.ascontiguousarray(w, dtype=cp.float64),
                   cp.ascontiguousarray(Oidx, dtype=cp.int64),
                   cp.ascontiguousarray(Sidx, dtype=cp.int64),
                   cp.ascontiguousarray(v, dtype=cp.float64), H, bc,
                   np.int32(n), np.int32(K), np.int32(o), np.int32(s)),
                  shared_mem=_TR * s * 8)
    return H, bc
