"""Exact Lasso on an explicit Gram matrix by feature-sign active-set search.

Solves ``min_x 0.5 x^T H x - b^T x + lam * ||x||_1`` for a symmetric positive
(semi)definite ``H`` of size K x K (Lee, Battle, Raina & Ng, NIPS 2006). On a
fixed active set and sign pattern the problem is a linear system, so the
method reaches the exact optimum in finitely many steps; it is insensitive to
the strong correlations between training shapes that make coordinate descent
crawl.

Two implementations of one algorithm:

* :func:`gram_lasso_numpy` -- array-level reference written against ``xp``
  (NumPy in CI, CuPy on a GPU);
* :func:`gram_lasso_numba` -- the Numba twin used on the CPU hot path.
"""

from __future__ import annotations

import numpy as np

try:  # Numba is a hard dependency, but keep the reference importable alone
    import numba
except Exception:  # pragma: no cover
    numba = None

_RIDGE = 1e-13


def _xp(a):
    return np if type(a).__module__.startswith("numpy") else __import__("cupy")


def gram_lasso_numpy(H, b, lam, x0=None, tol=1e-10, max_iter=2000):
    """Feature-sign search; array code for NumPy or CuPy.

    Parameters
    ----------
    H : ndarray, shape (K, K)
        Symmetric positive semidefinite.
    b : ndarray, shape (K,)
    lam : float
        L1 weight, > 0.
    x0 : ndarray, shape (K,), optional
        Warm start.
    tol : float
        Relative tolerance on the subgradient optimality conditions.
    max_iter : int
        Cap on atom additions.

    Returns
    -------
    x : ndarray, shape (K,)
    n_iter : int
    """
    xp = _xp(H)
    K = b.shape[0]
    x = xp.zeros(K) if x0 is None else xp.array(x0, dtype=float, copy=True)
    ridge = _RIDGE * float(xp.max(xp.abs(xp.diag(H)))) if K else 0.0
    scale = max(float(xp.max(xp.abs(b))) if K else 0.0, lam)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        g = H @ x - b
        active = x != 0
        viol = xp.where(active, -xp.inf, xp.abs(g) - lam)
        i = int(xp.argmax(viol)) if K else 0
        act_ok = (not bool(xp.any(active))) or float(
            xp.max(xp.abs(g[active] + lam * xp.sign(x[active])))) <= tol * scale
        if K == 0 or (float(viol[i]) <= tol * scale and act_ok):
            break
        theta = xp.sign(x)
        if float(viol[i]) > tol * scale:
            theta[i] = -xp.sign(g[i])
        for _ in range(4 * K + 10):
            A = xp.nonzero(theta)[0]
            HA = H[A][:, A] + ridge * xp.eye(A.size)
            bA = b[A]
            xA = x[A]
            xn = xp.linalg.solve(HA, bA - lam * theta[A])
            if bool(xp.all(xp.sign(xn) == theta[A])):
                x[A] = xn
                break
            d = xn - xA
            cross = (xp.sign(xn) != theta[A]) & (xA != 0) & (d != 0)
            ts = xp.concatenate([(-xA / xp.where(cross, d, 1.0))[cross], xp.ones(1)])
            ts = ts[(ts > 0) & (ts <= 1)]
            pts = xA[None, :] + ts[:, None] * d[None, :]
            f = (0.5 * xp.einsum("ti,ij,tj->t", pts, HA, pts) - pts @ bA
                 + lam * xp.sum(xp.abs(pts), axis=1))
            best = pts[int(xp.argmin(f))]
            tiny = xp.abs(best) <= 1e-15 * (1.0 + xp.max(xp.abs(best)))
            best = xp.where(tiny, 0.0, best)
            x[A] = best
            theta = xp.sign(x)
    return x, n_iter


if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def _fss_numba(H, b, lam, x, tol, max_iter):  # pragma: no cover - jitted
        K = b.shape[0]
        ridge = 0.0
        for k in range(K):
            ridge = max(ridge, abs(H[k, k]))
        ridge *= 1e-13
        scale = lam
        for k in range(K):
            scale = max(scale, abs(b[k]))
        g = np.empty(K)
        theta = np.empty(K)
        n_iter = 0
        for it in range(max_iter):
            n_iter = it + 1
            # g = H x - b using the support only
            for k in range(K):
                g[k] = -b[k]
            for j in range(K):
                if x[j] != 0.0:
                    xj = x[j]
                    for k in range(K):
                        g[k] += H[k, j] * xj
            imax = -1
            vmax = -np.inf
            act_err = 0.0
            for k in range(K):
                if x[k] == 0.0:
                    v = abs(g[k]) - lam
                    if v > vmax:
                        vmax = v
                        imax = k
                else:
                    s = 1.0 if x[k] > 0 else -1.0
                    act_err = max(act_err, abs(g[k] + lam * s))
            add = imax >= 0 and vmax > tol * scale
            if not add and act_err <= tol * scale:
                break
            for k in range(K):
                theta[k] = np.sign(x[k])
            if add:
                theta[imax] = -np.sign(g[imax])
            for _inner in range(4 * K + 10):
                na = 0
                for k in range(K):
                    if theta[k] != 0.0:
                        na += 1
                A = np.empty(na, dtype=np.int64)
                p = 0
                for k in range(K):
                    if theta[k] != 0.0:
                        A[p] = k
                        p += 1
                HA = np.empty((na, na))
                rhs = np.empty(na)
                xA = np.empty(na)
                for p in range(na):
                    for q in range(na):
                        HA[p, q] = H[A[p], A[q]]
                    HA[p, p] += ridge
                    rhs[p] = b[A[p]] - lam * theta[A[p]]
                    xA[p] = x[A[p]]
                xn = np.linalg.solve(HA, rhs)
                consistent = True
                for p in range(na):
                    if np.sign(xn[p]) != theta[A[p]]:
                        consistent = False
                        break
                if consistent:
                    for p in range(na):
                        x[A[p]] = xn[p]
                    break
                # line search over sign-crossing points and the full step
                d = xn - xA
                best_f = np.inf
                best_t = 1.0
                for p in range(na + 1):
                    if p < na:
                        if np.sign(xn[p]) == theta[A[p]] or xA[p] == 0.0 or d[p] == 0.0:
                            continue
                        t = -xA[p] / d[p]
                        if not (t > 0.0 and t <= 1.0):
                            continue
                    else:
                        t = 1.0
                    pt = xA + t * d
                    f = -np.dot(pt, b[A])
                    quad = 0.0
                    for r in range(na):
                        acc = 0.0
                        for c in range(na):
                            acc += HA[r, c] * pt[c]
                        quad += pt[r] * acc
                        f += lam * abs(pt[r])
                    f += 0.5 * quad
                    if f < best_f:
                        best_f = f
                        best_t = t
                pt = xA + best_t * d
                big = 0.0
                for p in range(na):
                    big = max(big, abs(pt[p]))
                for p in range(na):
                    v = pt[p]
                    if abs(v) <= 1e-15 * (1.0 + big):
                        v = 0.0
                    x[A[p]] = v
                for k in range(K):
                    theta[k] = np.sign(x[k])
        return x, n_iter


def gram_lasso_numba(H, b, lam, x0=None, tol=1e-10, max_iter=2000):
    """Numba twin of :func:`gram_lasso_numpy` (same arguments and results)."""
    if numba is None:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    H = np.ascontiguousarray(H, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    x = np.zeros(b.shape[0]) if x0 is None else np.array(x0, dtype=np.float64)
    x, n_iter = _fss_numba(H, b, float(lam), x, float(tol), int(max_iter))
    return x, int(n_iter)


def lasso_objective(H, b, lam, x):
    """``0.5 x^T H x - b^T x + lam ||x||_1``."""
    return float(0.5 * x @ H @ x - b @ x + lam * np.abs(x).sum())
