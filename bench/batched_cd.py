"""Experimental: batched Gram Lasso by coordinate descent (kept beside bench_gpu.py,
which measures it; no production path uses it).

Batched Lasso on explicit Gram matrices by cyclic coordinate descent.

Solves B independent problems ``min_x 0.5 x^T H_b x - b_b^T x + lam_b |x|_1``
with ``H`` of shape (B, n, n). Used for many small SSC sub-problems at once
(e.g. one per shape in a batch, or the restricted problems of an active set).

* :func:`batched_gram_cd_numpy` -- NumPy reference, vectorised over the batch;
* :func:`batched_gram_cd_numba` -- Numba twin, parallel over the batch;
* :func:`batched_gram_cd_cupy` -- CUDA raw kernel (``batched_gram_cd.cu``),
  one thread block per problem.

All three run the same sweeps in the same order and stop on the same test
(largest coordinate change <= tol * largest |x|), so they agree to rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

try:
    import numba
except Exception:  # pragma: no cover
    numba = None

_CU_SOURCE = Path(__file__).with_name("batched_gram_cd.cu")


def _check(H, b, lam, x0):
    H = np.ascontiguousarray(H, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    if H.ndim != 3 or H.shape[1] != H.shape[2] or b.shape != H.shape[:2]:
        raise ValueError(f"H must be (B, n, n) and b (B, n); got {H.shape}, {b.shape}")
    lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), (H.shape[0],)).copy()
    x = np.zeros_like(b) if x0 is None else np.array(x0, dtype=np.float64)
    return H, b, lam, x


def batched_gram_cd_numpy(H, b, lam, x0=None, max_sweeps=1000, tol=1e-12):
    """NumPy reference. Returns ``(x (B, n), sweeps (B,))``."""
    H, b, lam, x = _check(H, b, lam, x0)
    B, n = b.shape
    g = np.einsum("bij,bj->bi", H, x) - b
    diag = np.einsum("bii->bi", H)
    sweeps = np.zeros(B, dtype=np.int64)
    running = np.ones(B, dtype=bool)
    for _ in range(max_sweeps):
        if not running.any():
            break
        maxdelta = np.zeros(B)
        for j in range(n):
            hjj = diag[:, j]
            ok = running & (hjj > 0)
            safe = np.where(hjj > 0, hjj, 1.0)
            z = x[:, j] - g[:, j] / safe
            t = lam / safe
            new = np.sign(z) * np.maximum(np.abs(z) - t, 0.0)
            delta = np.where(ok, new - x[:, j], 0.0)
            x[:, j] += delta
            maxdelta = np.maximum(maxdelta, np.abs(delta))
            g += H[:, j, :] * delta[:, None]
        sweeps += running
        done = maxdelta <= tol * np.maximum(np.abs(x).max(axis=1), 1e-300)
        running &= ~done
    return x, sweeps


if numba is not None:

    @numba.njit(parallel=True, cache=True)
    def _cd_numba(H, b, lam, x, max_sweeps, tol, sweeps):  # pragma: no cover
        B, n = b.shape
        for p in numba.prange(B):
            g = np.empty(n)
            for i in range(n):
                acc = -b[p, i]
                for j in range(n):
                    acc += H[p, i, j] * x[p, j]
                g[i] = acc
            s = 0
            while s < max_sweeps:
                maxdelta = 0.0
                maxabs = 0.0
                for j in range(n):
                    hjj = H[p, j, j]
                    if hjj > 0.0:
                        old = x[p, j]
                        z = old - g[j] / hjj
                        t = lam[p] / hjj
                        if z > t:
                            nw = z - t
                        elif z < -t:
                            nw = z + t
                        else:
                            nw = 0.0
                        dl = nw - old
                        x[p, j] = nw
                        maxabs = max(maxabs, abs(nw))
                        maxdelta = max(maxdelta, abs(dl))
                        if dl != 0.0:
                            for i in range(n):
                                g[i] += H[p, j, i] * dl
                s += 1
                if maxdelta <= tol * max(maxabs, 1e-300):
                    break
            sweeps[p] = s
        return x, sweeps


def batched_gram_cd_numba(H, b, lam, x0=None, max_sweeps=1000, tol=1e-12):
    """Numba twin of :func:`batched_gram_cd_numpy`."""
    if numba is None:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    H, b, lam, x = _check(H, b, lam, x0)
    sweeps = np.zeros(b.shape[0], dtype=np.int64)
    x, sweeps = _cd_numba(H, b, lam, x, int(max_sweeps), float(tol), sweeps)
    return x, sweeps


_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        import cupy as cp

        _KERNEL = cp.RawKernel(_CU_SOURCE.read_text(), "batched_gram_cd")
    return _KERNEL


def batched_gram_cd_cupy(H, b, lam, x0=None, max_sweeps=1000, tol=1e-12, threads=128):
    """CUDA version; arrays may be NumPy or CuPy, results are CuPy arrays."""
    import cupy as cp

    H = cp.ascontiguousarray(cp.asarray(H, dtype=cp.float64))
    b = cp.ascontiguousarray(cp.asarray(b, dtype=cp.float64))
    B, n = b.shape
    if H.shape != (B, n, n):
        raise ValueError(f"H must be (B, n, n) and b (B, n); got {H.shape}, {b.shape}")
    lam = cp.ascontiguousarray(cp.broadcast_to(cp.asarray(lam, dtype=cp.float64), (B,)))
    x = cp.zeros_like(b) if x0 is None else cp.array(x0, dtype=cp.float64)
    sweeps = cp.zeros(B, dtype=cp.int32)
    shmem = 2 * n * 8
    if shmem > 48 * 1024:
        raise ValueError(f"n={n} exceeds the shared-memory limit of this kernel (n <= 3072)")
    _kernel()((B,), (threads,), (H, b, lam, x, sweeps, np.int32(n), np.int32(max_sweeps),
                                 np.float64(tol)), shared_mem=shmem)
    return x, sweeps
