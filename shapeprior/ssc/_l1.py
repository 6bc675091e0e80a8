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
of atoms (``D^T W D`` cached, H formed only on the working set). A cold solve
starts from the outlier-free Lasso and then from the exact optimum of the
Newton model whose outlier set is the rows beyond 3 robust standard
deviations of that Lasso's residual, where the Lasso puts many rows beyond a
small threshold (a robust first outlier set; ``kernels/huber_lasso.py``,
``ROBUST_*``). The iteration stops
when the outlier set and its signs reproduce themselves, at which point the
KKT conditions of the full problem hold exactly; a backtracking line search
on the true objective keeps every step a descent step.

The iteration itself is the ``huber_lasso`` kernel (``kernels/huber_lasso.py``):
an array-namespace reference for NumPy and CuPy and a Numba twin for the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import get_array_module, kernel, on_one_blas_thread


#: lower bound of the factor on lambda2 in a reweighted solve (``solve_l1(reweight=k)``)
REWEIGHT_FLOOR = 0.05


@dataclass
class L1Solution:
    x: np.ndarray          # (K,)
    e: np.ndarray          # (n,) gross error per coordinate
    residual: np.ndarray   # (n,) z - D x
    objective: float       # in the stated (un-halved) units
    kkt: float             # relative KKT violation of the full problem
    n_iter: int
    converged: bool


def outlier_free_lasso(dic, w, lam1, c, tol=1e-10):
    """``argmin_x sum w (z - D x)^2 + lam1 |x|_1`` (no gross errors) from
    ``c = D^T W z``, on a working set: only the columns of ``D^T W D`` it
    visits are computed (and kept for the solves of the same weights that
    follow), not the whole weighted Gram."""
    GW, known = dic.weighted_gram_partial(w)
    return kernel("lasso_partial", dic.backend)(dic.D, dic.DF, GW, known, c, w, 0.5 * lam1, tol)


def soft_threshold(r, tau):
    """Gross-error split ``e = sign(r) max(|r| - tau, 0)``: the minimiser over e of
    ``w (r - e)^2 + lam2 |e|`` with ``tau = lam2 / (2 w)`` (NumPy or CuPy arrays)."""
    xp = get_array_module(r)
    return xp.sign(r) * xp.maximum(xp.abs(r) - tau, 0.0)


def full_objective(z, Dx, x, w, lam1, lam2, xp=np):
    """Objective in the stated units, with the optimal e for this x."""
    r = z - Dx
    tau = _tau(w, 0.5 * lam2, xp)
    e = soft_threshold(r, tau)
    return float(xp.sum(w * (r - e) ** 2) + lam1 * xp.sum(xp.abs(x)) + xp.sum(lam2 * xp.abs(e)))


def _tau(w, l2, xp):
    """Per-row soft threshold l2 / w (inf where w = 0); l2 scalar or (n,)."""
    return xp.where(w > 0, l2 / xp.where(w > 0, w, 1.0), xp.inf)


def solve_l1(dic, z, w, lam1, lam2, x0=None, tol=1e-10, max_iter=100, max_add=8, c=None,
             reweight=0, floor=REWEIGHT_FLOOR, settled=None):
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
    settled : bool, optional
        Whether ``x0`` is near this problem's optimum (its atoms a settled
        working set; default: whenever ``x0`` is given). Pass False for a
        start from another problem, such as the outlier-free Lasso. Speed
        only: the optimum is the same.
    max_add : int
        Atoms added to the working set per full-gradient check.
    c : ndarray, shape (K,), optional
        ``D^T (w * z)``, when the caller has it (several solves of one shape
        share it); computed here otherwise.
    reweight : int
        Reweighted solves after this one (scalar ``lam2`` only), each started
        from the previous optimum with ``lam2_j = lam2 * max(tau / (|e_j| +
        tau), floor)``, ``tau = lam2 / (2 max(w))``; the solution is the last
        one's (its ``e`` and objective under its own weights). All of them run
        in one kernel call.

    Notes
    -----
    Working-set form of the semismooth Newton method: the Newton steps only
    use ``H`` restricted to a working set S of atoms (``m |S|^2`` work for m
    outlier rows); atoms outside S are checked with the full gradient
    ``D^T psi`` once the outlier set is stable or a Newton step stalls
    (lowers the objective by less than 1e-4 of it, ``STALL`` in the kernel: the set has settled on
    too few atoms), and the ``max_add`` worst violators join S while the atoms
    at zero that do not violate leave it. Where no atom violated at the last
    check since S changed, or S came with the warm start, a stalled step waits
    for the stable outlier set or for three stalls in a row (``CLEAN_STALLS``):
    near the optimum every step stalls, and a warm solve then checked twice. That
    gradient needs no pass over D: ``D^T psi = c - D^T W D x - D_O^T v_O``
    with ``c = D^T W z`` and ``v_O`` on the outlier rows alone, so a solve
    reads D once (for ``c``, or not at all when ``c`` is given) plus the
    outlier rows at each check.
    """
    if c is None:
        # one pass over D, memory-bound: on every BLAS thread (5000 x 300 on the
        # 2-core machine: 1.3 ms on one, 0.7 on two), before the kernel's own
        # single-thread section
        c = dic.DF.T @ (w * z)
    return _solve_l1(dic, z, w, lam1, lam2, x0, tol, max_iter, max_add, c, reweight, floor,
                     settled)


@on_one_blas_thread
def _solve_l1(dic, z, w, lam1, lam2, x0, tol, max_iter, max_add, c, reweight, floor, settled):
    xp = dic.xp
    l1, l2 = 0.5 * lam1, 0.5 * lam2
    GW, known = dic.weighted_gram_partial(w)
    # the reference starts from the warm start's columns (kept by the dictionary
    # across consecutive solves); the Numba twin reads them in place
    DS0 = None if x0 is None or dic.backend == "numba" else \
        dic.columns(xp.flatnonzero(xp.asarray(x0)))
    if reweight:
        x, r, kkt, it, converged, lam2 = kernel("huber_lasso_reweighted", dic.backend)(
            dic.D, dic.DF, GW, known, c, z, w, l1, float(lam2), int(reweight), float(floor),
            x0, tol, max_iter, max_add, DS0, settled=settled)
        l2 = 0.5 * lam2
    else:
        l2v = xp.broadcast_to(xp.asarray(l2, dtype=xp.float64), z.shape)
        x, r, kkt, it, converged = kernel("huber_lasso", dic.backend)(
            dic.D, dic.DF, GW, known, c, z, w, l1, l2v, x0, tol, max_iter, max_add, DS0,
            settled=settled)
    tau = _tau(w, l2, xp)
    e = soft_threshold(r, tau)
    obj = float(xp.sum(w * (r - e) ** 2) + lam1 * xp.sum(xp.abs(x)) + xp.sum(lam2 * xp.abs(e)))
    return L1Solution(x, e, r, obj, kkt, it, converged)
