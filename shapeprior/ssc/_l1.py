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

solved exactly by feature-sign search (kernels/gram_lasso). ``D^T W D`` is
cached; H is updated by the rows that changed status. The iteration stops
when the outlier set and its signs reproduce themselves, at which point the
KKT conditions of the full problem hold exactly; a backtracking line search
on the true objective keeps every step a descent step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shapeprior_kernels import gram_lasso_numba, gram_lasso_xp, soft_threshold_xp


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
    if dic.backend == "numba":
        return gram_lasso_numba
    return gram_lasso_xp


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
    e = soft_threshold_xp(r, tau)
    return float(xp.sum(w * (r - e) ** 2) + lam1 * xp.sum(xp.abs(x)) + xp.sum(lam2 * xp.abs(e)))


def _tau(w, l2, xp):
    """Per-row soft threshold l2 / w (inf where w = 0); l2 scalar or (n,)."""
    return xp.where(w > 0, l2 / xp.where(w > 0, w, 1.0), xp.inf)


def kkt_violation(dic, c, GW, x, r, w, tau, l1):
    """Largest violation of the full problem's optimality conditions,
    relative to ``max(|D^T W z|_inf, l1)``."""
    xp = dic.xp
    e = soft_threshold_xp(r, tau)
    rows = xp.flatnonzero(e)
    grad = -(c - GW @ x)
    if rows.size:
        grad = grad + dic.D[rows].T @ (w[rows] * e[rows])
    act = x != 0
    v_act = xp.abs(grad + l1 * xp.sign(x))
    v_zero = xp.maximum(xp.abs(grad) - l1, 0.0)
    v = xp.where(act, v_act, v_zero)
    scale = max(float(xp.max(xp.abs(c))), l1, 1e-300)
    return float(xp.max(v)) / scale if v.size else 0.0


def solve_l1(dic, z, w, lam1, lam2, x0=None, tol=1e-10, max_iter=100):
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
    """
    xp = dic.xp
    lasso = _lasso_fn(dic)
    l1, l2 = 0.5 * lam1, 0.5 * lam2
    tau = _tau(w, l2, xp)
    GW = dic.weighted_gram(w)
    c = dic.DF.T @ (w * z)
    if x0 is None:
        x, _ = lasso(GW, c, l1, None, tol)
    else:
        x = xp.array(x0, dtype=np.float64, copy=True)
    r = z - dic.matvec(x)

    def F(x_, r_):
        return huber_value(r_, w, tau, l2, xp) + l1 * float(xp.sum(xp.abs(x_)))

    f_cur = F(x, r)
    O_prev = xp.zeros(z.shape[0], dtype=bool)
    H = GW.copy()
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        O = xp.abs(r) > tau
        sigma = xp.sign(r) * O
        # incremental update of H for rows that changed status
        add = xp.flatnonzero(O & ~O_prev)
        rem = xp.flatnonzero(O_prev & ~O)
        n_out = int(xp.count_nonzero(O))
        if add.size + rem.size > n_out:
            rows = xp.flatnonzero(O)
            Dr = dic.D[rows]
            H = GW - Dr.T @ (w[rows][:, None] * Dr)
        else:
            if add.size:
                Da = dic.D[add]
                H = H - Da.T @ (w[add][:, None] * Da)
            if rem.size:
                Dm = dic.D[rem]
                H = H + Dm.T @ (w[rem][:, None] * Dm)
        O_prev = O
        rows = xp.flatnonzero(O)
        if rows.size:
            l2r = l2[rows] if getattr(l2, "ndim", 0) else l2
            b = c - dic.D[rows].T @ (w[rows] * z[rows] - l2r * sigma[rows])
        else:
            b = c
        xn, _ = lasso(H, b, l1, x, tol)
        rn = z - dic.matvec(xn)
        fn = F(xn, rn)
        full_step = fn <= f_cur
        if not full_step:
            # backtrack along the Newton direction
            d, dr = xn - x, rn - r
            t = 0.5
            while t > 1e-6:
                xt, rt = x + t * d, r + t * dr
                ft = F(xt, rt)
                if ft <= f_cur:
                    xn, rn, fn = xt, rt, ft
                    break
                t *= 0.5
            else:
                # Newton model failed (e.g. a near-singular H when most rows
                # are outliers): take the majorize-minimize block step
                # instead -- e fixed at soft(r, tau), exact Lasso in x on the
                # full weighted Gram -- which never increases F
                e = soft_threshold_xp(r, tau)
                rows_e = xp.flatnonzero(e)
                ce = c - dic.D[rows_e].T @ (w[rows_e] * e[rows_e]) if rows_e.size else c
                xn, _ = lasso(GW, ce, l1, x, tol)
                rn = z - dic.matvec(xn)
                fn = F(xn, rn)
                if fn >= f_cur:
                    break  # no descent possible: numerically at the optimum
        same = bool(xp.array_equal(xp.abs(rn) > tau, O)) and bool(
            xp.array_equal(xp.sign(rn) * O, sigma))
        x, r, f_cur = xn, rn, fn
        if same and full_step:  # a full Newton step that reproduces O: exact optimum
            converged = True
            break
    kkt = kkt_violation(dic, c, GW, x, r, w, tau, l1)
    converged = (converged and kkt <= 1e-6) or kkt <= 1e3 * tol
    e = soft_threshold_xp(r, tau)
    obj = float(xp.sum(w * (r - e) ** 2) + lam1 * xp.sum(xp.abs(x)) + xp.sum(lam2 * xp.abs(e)))
    return L1Solution(x, e, r, obj, kkt, it, converged)
