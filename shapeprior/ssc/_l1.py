"""L1 sparse composition with a sparse gross-error term.

Problem (the form stated in Zhang et al. 2012, with per-coordinate weights
``w = s**2``)::

    min_{x,e}  sum_j w_j (z_j - (D x)_j - e_j)^2 + lam1 ||x||_1 + lam2 ||e||_1

Eliminating ``e`` (``e_j = soft(r_j, lam2 / (2 w_j))``, ``r = z - D x``) leaves
a Huber regression with an L1 penalty in K unknowns. Working in halved units
(``l1 = lam1/2``, ``l2 = lam2/2``) the smooth part is
``h_j(r) = w r^2 / 2`` for ``|r| <= tau_j`` and ``l2 |r| - l2 tau_j / 2``
beyond, ``tau_j = l2 / w_j``.

Solver: semismooth Newton on the outlier set. For a fixed set ``O`` of rows
with ``|r_j| > tau_j`` and their signs, the problem is the Lasso
``0.5 x^T H x - b^T x + l1 ||x||_1`` with::

    H = D^T W D - D_O^T W_O D_O                     (K x K)
    b = D^T W z - D_O^T (W_O z_O - l2 sign(r_O))

solved exactly by feature-sign search (kernels/gram_lasso) on a working set
of atoms (``D^T W D`` cached, H formed only on the working set). The iteration stops
when the outlier set and its signs reproduce themselves, at which point the
KKT conditions of the full problem hold exactly; a backtracking line search
on the true objective keeps every step a descent step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import get_array_module, kernel


@dataclass
class L1Solution:
    x: np.ndarray          # (K,)
    e: np.ndarray          # (n,) gross error per coordinate
    residual: np.ndarray   # (n,) z - D x
    objective: float       # in the stated (un-halved) units
    kkt: float             # relative KKT violation of the full problem
    n_iter: int
    converged: bool


def _lasso_fn(dic):
    """The Gram-Lasso twin for the dictionary's backend."""
    return kernel("gram_lasso", dic.backend)


def soft_threshold(r, tau):
    """Gross-error split ``e = sign(r) max(|r| - tau, 0)``: the minimiser over e of
    ``w (r - e)^2 + lam2 |e|`` with ``tau = lam2 / (2 w)`` (NumPy or CuPy arrays)."""
    xp = get_array_module(r)
    return xp.sign(r) * xp.maximum(xp.abs(r) - tau, 0.0)


def huber_value(r, w, tau, l2, xp=np):
    """Sum of the halved-unit Huber terms (w = 0 rows contribute 0)."""
    a = xp.abs(r)
    inl = a <= tau
    quad = 0.5 * w * r * r
    lin = l2 * a - 0.5 * l2 * xp.where(xp.isfinite(tau), tau, 0.0)  # l2 may be per row
    return float(xp.sum(xp.where(inl, quad, lin)))


def full_objective(z, Dx, x, w, lam1, lam2, xp=np):
    """Objective in the stated units, with the optimal e for this x."""
    r = z - Dx
    tau = _tau(w, 0.5 * lam2, xp)
    e = soft_threshold(r, tau)
    return float(xp.sum(w * (r - e) ** 2) + lam1 * xp.sum(xp.abs(x)) + xp.sum(lam2 * xp.abs(e)))


def _tau(w, l2, xp):
    """Per-row soft threshold l2 / w (inf where w = 0); l2 scalar or (n,)."""
    return xp.where(w > 0, l2 / xp.where(w > 0, w, 1.0), xp.inf)


def _e_and_psi(r, w, tau, xp):
    """Optimal e for residual r and psi = w (r - e) (minus the data gradient
    with respect to D x)."""
    e = soft_threshold(r, tau)
    return e, w * (r - e)


def solve_l1(dic, z, w, lam1, lam2, x0=None, tol=1e-10, max_iter=100, max_add=32):
    """Exact L1 SSC solve for an aligned shape vector.

    Parameters
    ----------
    dic : ShapeDictionary
    z : ndarray, shape (n,)
        Aligned observed shape, flattened (n = N*d).
    w : ndarray, shape (n,)
        Per-coordinate weights (visibility/confidence squared), >= 0.
    lam1 : float
        L1 weight on x (> 0).
    lam2 : float or ndarray, shape (n,)
        L1 weight on e (> 0), scalar or per coordinate (reweighted L1).
    x0 : ndarray, shape (K,), optional
        Warm start.
    max_add : int
        Atoms added to the working set per full-gradient check.

    Notes
    -----
    Working-set form of the semismooth Newton method: the Newton steps only
    use ``H`` restricted to a working set S of atoms (``m |S|^2`` work for m
    outlier rows); atoms outside S are checked with one full pass
    ``D^T psi`` once the outlier set is stable, and violators join S. A cold
    solve costs about two passes over D, a warm one about one.
    """
    xp = dic.xp
    lasso = _lasso_fn(dic)
    K = dic.n_atoms
    l1, l2 = 0.5 * lam1, 0.5 * lam2
    per_row = getattr(l2, "ndim", 0) > 0
    tau = _tau(w, l2, xp)
    GW = dic.weighted_gram(w)
    wz = w * z
    n_pass = 0
    if x0 is None:
        c = dic.DF.T @ wz
        n_pass += 1
        x, _ = lasso(GW, c, l1, None, tol)       # start from the outlier-free fit
        S = xp.flatnonzero(x)
        if S.size == 0:
            S = xp.argsort(-xp.abs(c))[: min(max_add, K)]
    else:
        x = xp.array(x0, dtype=np.float64, copy=True)
        S = xp.flatnonzero(x)
    S = xp.sort(S)

    def F(xS_, r_):
        return huber_value(r_, w, tau, l2, xp) + l1 * float(xp.sum(xp.abs(xS_)))

    DS = dic.DF[:, S]
    xS = x[S]
    r = z - DS @ xS
    f_cur = F(xS, r)
    H = None            # Newton Hessian on S; rebuilt when S changes
    O_prev = None
    converged = False
    kkt = float("inf")
    it = 0
    for it in range(1, max_iter + 1):
        O = xp.abs(r) > tau
        rows = xp.flatnonzero(O)
        sigma = xp.sign(r[rows])
        if H is None:   # new working set
            bS = DS.T @ wz
            H = _hessian(GW, DS, S, w, O, rows, xp)
        else:           # same working set: update by the rows that changed status
            H = _update_hessian(H, DS, w, O, O_prev, xp)
        O_prev = O
        b = _newton_rhs(bS, DS, w, z, rows, sigma, l2[rows] if per_row else l2, xp)
        if not bool(xp.any(xp.diag(H) > 0)):
            # every weighted row an outlier: the Newton model has no curvature
            xn, rn, fn = _mm_step(F, lasso, GW, DS, S, xS, r, z, w, tau, l1, f_cur, tol, xp)
            full_step = False
        else:
            xn, _ = lasso(H, b, l1, xS, tol)
            rn = z - DS @ xn
            fn = F(xn, rn)
            full_step = fn <= f_cur
        if not full_step and fn > f_cur:
            xn, rn, fn = _line_search(F, xS, r, xn, rn, f_cur)
            if xn is None:
                xn, rn, fn = _mm_step(F, lasso, GW, DS, S, xS, r, z, w, tau, l1, f_cur, tol, xp)
        same = bool(xp.array_equal(xp.abs(rn) > tau, O)) and bool(
            xp.array_equal(xp.sign(rn[rows]), sigma))
        xS, r, f_cur = xn, rn, fn
        if not same:
            continue
        # optimal on S (a full Newton step reproduced O), or stalled: check
        # every atom with one pass over D
        scale = max(float(xp.max(xp.abs(bS))) if S.size else 0.0, l1)
        xfull = xp.zeros(K)
        xfull[S] = xS
        kkt, g = _kkt(dic, r, w, tau, xfull, l1, scale, xp)
        n_pass += 1
        outside = xp.ones(K, dtype=bool)
        outside[S] = False
        cand = xp.flatnonzero(outside & (xp.abs(g) - l1 > tol * scale))
        if cand.size == 0:
            converged = full_step or kkt <= 1e3 * tol
            if converged:
                break
            continue
        cand = cand[xp.argsort(-xp.abs(g[cand]))[:max_add]]
        S_new = xp.sort(xp.concatenate([S, cand]))
        x_new = xp.zeros(S_new.size)
        x_new[xp.searchsorted(S_new, S)] = xS
        S, xS = S_new, x_new
        DS = dic.DF[:, S]
        H = None
    x = xp.zeros(K)
    x[S] = xS
    if not converged:
        scale = max(float(xp.max(xp.abs(dic.DF[:, S].T @ wz))) if S.size else 0.0, l1)
        kkt, _ = _kkt(dic, r, w, tau, x, l1, scale, xp)
        converged = kkt <= 1e3 * tol
    e = soft_threshold(r, tau)
    obj = float(xp.sum(w * (r - e) ** 2) + lam1 * xp.sum(xp.abs(x)) + xp.sum(lam2 * xp.abs(e)))
    return L1Solution(x, e, r, obj, kkt, it, converged)


def _hessian(GW, DS, S, w, O, rows, xp):
    """Newton Hessian on the working set S: the weighted Gram of the inlier
    rows, built from whichever row set (outliers or inliers) is smaller."""
    if 2 * rows.size <= DS.shape[0]:
        DO = DS[rows]
        return GW[S][:, S] - DO.T @ (w[rows][:, None] * DO)
    inl = xp.flatnonzero(~O)
    DI = DS[inl]
    return DI.T @ (w[inl][:, None] * DI)


def _update_hessian(H, DS, w, O, O_prev, xp):
    """The Hessian after rows changed inlier/outlier status (rank updates)."""
    add = xp.flatnonzero(O & ~O_prev)
    rem = xp.flatnonzero(O_prev & ~O)
    if add.size:
        Da = DS[add]
        H = H - Da.T @ (w[add][:, None] * Da)
    if rem.size:
        Dm = DS[rem]
        H = H + Dm.T @ (w[rem][:, None] * Dm)
    return H


def _newton_rhs(bS, DS, w, z, rows, sigma, l2r, xp):
    """Right-hand side of the Newton system: outlier rows contribute their
    linear Huber part ``l2 sign(r)`` instead of ``w z``."""
    if not rows.size:
        return bS
    v = xp.zeros(z.shape[0])
    v[rows] = w[rows] * z[rows] - l2r * sigma
    return bS - DS.T @ v


def _line_search(F, xS, r, xn, rn, f_cur):
    """Backtracking along the Newton direction until F does not increase;
    ``(None, None, None)`` when no step down to 1e-6 does."""
    d, dr = xn - xS, rn - r
    t = 0.5
    while t > 1e-6:
        xt, rt = xS + t * d, r + t * dr
        ft = F(xt, rt)
        if ft <= f_cur:
            return xt, rt, ft
        t *= 0.5
    return None, None, None


def _mm_step(F, lasso, GW, DS, S, xS, r, z, w, tau, l1, f_cur, tol, xp):
    """Majorize-minimize block step, for when the Newton model fails (e.g. a
    near-singular H when most rows are outliers): e fixed at soft(r, tau),
    exact Lasso in x on the weighted Gram. It never increases F."""
    e_cur, _ = _e_and_psi(r, w, tau, xp)
    xn, _ = lasso(GW[S][:, S], DS.T @ (w * (z - e_cur)), l1, xS, tol)
    rn = z - DS @ xn
    fn = F(xn, rn)
    if fn > f_cur:
        return xS, r, f_cur
    return xn, rn, fn


def _kkt(dic, r, w, tau, x, l1, scale, xp):
    """Relative KKT violation of the full problem at ``x`` (one pass over D),
    and the data gradient ``g`` for all atoms."""
    _, psi = _e_and_psi(r, w, tau, xp)
    g = -(dic.DF.T @ psi)
    act = x != 0
    viol = xp.where(act, xp.abs(g + l1 * xp.sign(x)), xp.abs(g) - l1)
    return max(float(xp.max(viol)), 0.0) / scale, g
