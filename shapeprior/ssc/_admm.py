"""Plain ADMM for the L1 SSC problem: the baseline the structured solver is
benchmarked and tested against.

Stacked Lasso in u = [x; e] with penalties (l1, l2) and consensus u = v:
the u-update eliminates e through its diagonal block, so each iteration costs
two passes over D plus a cached K x K Cholesky solve.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from ._l1 import full_objective


def solve_admm(dic, z, w, lam1, lam2, rho=None, rho_x=None, max_iter=20000, tol=1e-8,
               x0=None):
    """Returns ``(x, e, n_iter)`` for the stated objective (un-halved).

    ``rho`` penalises the e block and ``rho_x`` the x block (a diagonal ADMM
    metric): the x block lives on the scale of ``D^T D``, so one shared rho
    would leave ADMM crawling. Defaults: rho = mean(w), rho_x = 0.01 *
    mean(diag(D^T W D)) (best of a sweep over 1e-3..10 x on the benchmark).
    """
    D = np.asarray(dic.D)
    n, K = D.shape
    l1, l2 = 0.5 * lam1, 0.5 * lam2
    if rho is None:
        rho = float(np.mean(w)) if np.any(w > 0) else 1.0
    if rho_x is None:
        rho_x = 0.01 * float(np.mean(np.einsum("ij,i,ij->j", D, w, D)))
    # u = [x; e] update: minimise the smooth part + rho_x/2|x-a|^2 + rho/2|e-b|^2
    wp = w * rho / (w + rho)                   # Schur complement weights
    S = D.T @ (wp[:, None] * D) + rho_x * np.eye(K)
    cf = cho_factor(S)
    vx = np.zeros(K) if x0 is None else np.array(x0, dtype=float)
    ve = np.zeros(n)
    yx = np.zeros(K)
    ye = np.zeros(n)
    it = 0
    for it in range(1, max_iter + 1):
        qx = D.T @ (w * z) + rho_x * (vx - yx)
        qe = w * z + rho * (ve - ye)
        # e = (qe - W D x) / (w + rho); substitute into the x rows
        rhs = qx - D.T @ (w * qe / (w + rho))
        ux = cho_solve(cf, rhs)
        ue = (qe - w * (D @ ux)) / (w + rho)
        vx_old, ve_old = vx, ve
        ax = ux + yx
        ae = ue + ye
        vx = np.sign(ax) * np.maximum(np.abs(ax) - l1 / rho_x, 0.0)
        ve = np.sign(ae) * np.maximum(np.abs(ae) - l2 / rho, 0.0)
        yx += ux - vx
        ye += ue - ve
        prim = np.sqrt(np.sum((ux - vx) ** 2) + np.sum((ue - ve) ** 2))
        dual = np.sqrt(rho_x ** 2 * np.sum((vx - vx_old) ** 2) + rho ** 2 * np.sum((ve - ve_old) ** 2))
        size = max(np.sqrt(np.sum(vx ** 2) + np.sum(ve ** 2)), 1e-12)
        if prim <= tol * size and dual <= tol * size:
            break
    return vx, ve, it


def admm_objective(dic, z, w, lam1, lam2, x):
    return full_objective(z, np.asarray(dic.D) @ x, x, w, lam1, lam2)
