"""Huber regression with an L1 penalty on a dictionary: the SSC-L1 inner solve.

Solves, in halved units (``l1 = lambda1/2``, ``l2_j = lambda2_j/2``,
``tau_j = l2_j / w_j``)::

    min_x  sum_j h_j(z_j - (D x)_j) + l1 ||x||_1,
    h_j(r) = w_j r^2 / 2            for |r| <= tau_j,
             l2_j |r| - l2_j tau_j / 2  beyond,

which is ``sum w (z - Dx - e)^2 + lambda1 |x|_1 + sum lambda2 |e|`` with ``e``
eliminated (halved). Semismooth Newton on the outlier set with a working set of
atoms; each Newton system is an exact Lasso on the working set's Gram
(feature-sign, :mod:`.gram_lasso`). A cold solve starts from the outlier-free
Lasso, then from the Newton model of a robust first outlier set
(``ROBUST_SIGMAS``, ``ROBUST_STEPS``). The method and its stopping rules are
described in ``shapeprior/ssc/_l1.py``.

Twins:

* :func:`huber_lasso_numpy`: the reference, array code for any namespace
  (NumPy in CI, CuPy on a GPU);
* :func:`huber_lasso_numba`: the whole Newton loop compiled, for the CPU hot
  path, and releasing the GIL (threads solve different shapes at once). It
  copies nothing per working set: the working set's columns are read in
  place, each a contiguous column of ``D`` in Fortran order (residuals skip
  the zero coefficients; the Hessian and right-hand side gather the outlier
  rows column by column), the KKT gradient reads the outlier rows of ``D`` (C
  order) in place, and the columns of ``D^T W D`` it lacks are filled by one
  BLAS product over ``D`` (Fortran order).

Both fill the missing columns of the weighted Gram they are given (``known``
marks the filled ones), accept the working set's columns from the caller
(``DS0``; the reference uses them, the Numba twin has no need), and return
``(x, r, kkt, n_iter, converged)``:
the coefficients (K,), the residual ``z - D x`` (n,), the relative KKT
violation of the full problem, the Newton iterations and whether the KKT
conditions hold to ``1e3 * tol``.
"""

from __future__ import annotations

import numpy as np

from .gram_lasso import _xp, gram_lasso_numpy

#: a Newton step that lowers the objective by less than this fraction counts as
#: stalled: the atoms outside the working set are checked then, without waiting
#: for the outlier set to settle (a set that settles on too few atoms costs
#: iterations that make no progress)
STALL = 1e-4

#: a stalled step checks the atoms outside the working set at once, except
#: where the working set is "clean": a check found no violator since it last
#: changed, or it came with a warm start near the optimum (``settled``, by
#: default any warm start; SSC's automatic lambda2 hands its first robust solve
#: the outlier-free Lasso with ``settled=False``). Then the check waits for the
#: outlier set to reproduce itself (which the solve needs anyway to converge) or for
#: this many stalled steps in a row (no progress with these atoms). Near the
#: optimum every step stalls: a warm solve checked at its first stalled step
#: and again when the set settled, one step later. Chosen (2 or 3) on
#: synthetic (5000, 300) problems, seeds 0 and 100-105, 5 and 20 % gross
#: errors; confirmed on seeds 200-205 (same-run A/B, kernel alone): the same
#: optima, warm solves 32 % (5 %) and 56 % (20 %) faster, cold ones unchanged.
#: The batched bench's robust solves (automatic lambda2, 3 reweighted) on 2
#: threads: 166 -> 166 solves/s with the Lasso start counted as settled, 182
#: with ``settled=False`` there (6 alternating runs, medians)
CLEAN_STALLS = 3

#: robust start of a cold solve: rows whose weighted residual under the
#: outlier-free Lasso exceeds this many robust standard deviations (1.4826 x
#: the median |sqrt(w) r|) are taken as the first outlier set, instead of
#: every row beyond ``tau`` (with a small ``tau`` that is half the rows, and
#: the Newton phase then spends a dozen steps and several working-set
#: restarts unlearning them). Chosen on synthetic (5000, 300) problems with
#: seeds 100-105 (the solver bench uses seed 0): 3 and 4 sigmas, one round,
#: were alike; 2 sigmas and a second round cost more than they saved
ROBUST_SIGMAS = 3.0
#: rounds of that start (each re-selects the outlier rows from the previous
#: round's residual; it stops early when the set repeats or the objective
#: does not fall); 0 starts from the outlier-free Lasso
ROBUST_STEPS = 1
#: a round runs only if its outlier set holds at most this share of the rows
#: beyond ``tau``: a set close to those rows makes the same model as the
#: Newton phase's first step, and the round is paid twice. On the batched
#: bench's convex solves (tau at 3 robust sigmas) the set held 61-100 % of
#: them and the round cost 0.1-2.4 ms per solve; on the solver problems (tau
#: at 3 noise sigmas) 5-24 %
ROBUST_SHARE = 0.5
#: and only where at least this share of the visible rows lie beyond ``tau``
#: (checked first: it needs no median). The solver problems had 24-70 %,
#: the batched bench's convex solves 1-11 %, where the median alone cost
#: 0.2 ms of a 1.3-5 ms solve
ROBUST_BEYOND = 0.2

#: the Numba twin's KKT gradient reads the outlier rows of D (C order, each
#: row contiguous) unless more than this fraction of the rows are outliers;
#: then one BLAS pass over all of D. Timed on (5000, 300) and (2562, 280)
#: dictionaries: reading the rows was cheaper up to about half of them (the
#: old bound, a quarter, sent 20 %-gross solves to the full pass at every check)
GRADIENT_ROWS = 0.5

try:
    import numba
except Exception:  # pragma: no cover
    numba = None


# --------------------------------------------------------------------------
# reference (array namespace)
# --------------------------------------------------------------------------

def _huber_xp(r, w, tau, l2, xp):
    a = xp.abs(r)
    quad = 0.5 * w * r * r
    lin = l2 * a - 0.5 * l2 * xp.where(xp.isfinite(tau), tau, 0.0)
    return float(xp.sum(xp.where(a <= tau, quad, lin)))


def _soft(r, tau, xp):
    return xp.sign(r) * xp.maximum(xp.abs(r) - tau, 0.0)


def _gradient_xp(D, DF, GW, c, S, xS, r, w, tau, l2, xp):
    """``g = -D^T psi`` for every atom without a pass over D: inlier rows have
    ``psi = w r``, outlier rows ``psi = l2 sign(r)``, so
    ``D^T psi = c - (D^T W D) x - D_O^T (w_O r_O - l2_O sign(r_O))``."""
    rows = xp.flatnonzero(xp.abs(r) > tau)
    if 4 * rows.size > r.shape[0]:       # many outliers: one pass over D is cheaper
        psi = w * (r - _soft(r, tau, xp))
        return -(DF.T @ psi)
    g = GW[:, S] @ xS - c
    if rows.size:
        g += D[rows].T @ (w[rows] * r[rows] - l2[rows] * xp.sign(r[rows]))
    return g


def _kkt_xp(g, x, l1, scale, xp):
    act = x != 0
    viol = xp.where(act, xp.abs(g + l1 * xp.sign(x)), xp.abs(g) - l1)
    return max(float(xp.max(viol)), 0.0) / scale


def _hessian_xp(GW, DS, S, w, O, rows, xp):
    if 2 * rows.size <= DS.shape[0]:
        DO = DS[rows]
        return GW[S][:, S] - DO.T @ (w[rows][:, None] * DO)
    inl = xp.flatnonzero(~O)
    DI = DS[inl]
    return DI.T @ (w[inl][:, None] * DI)


def _update_hessian_xp(H, DS, w, O, O_prev, xp):
    add = xp.flatnonzero(O & ~O_prev)
    rem = xp.flatnonzero(O_prev & ~O)
    if add.size:
        Da = DS[add]
        H = H - Da.T @ (w[add][:, None] * Da)
    if rem.size:
        Dm = DS[rem]
        H = H + Dm.T @ (w[rem][:, None] * Dm)
    return H


def _fill_columns_xp(GW, known, D, w, S, xp):
    """Compute the columns of ``D^T W D`` in S that ``known`` lacks (in place)."""
    miss = S[~known[S]]
    if miss.size:
        G = D.T @ (w[:, None] * D[:, miss])
        GW[:, miss] = G
        GW[miss, :] = G.T
        known[miss] = True


def _violators_xp(g, S, l1, thresh, n_max, xp):
    """The atoms outside S whose ``|g| - l1`` exceeds ``thresh``, the ``n_max``
    largest ``|g|`` first (empty: none)."""
    outside = xp.ones(g.shape[0], dtype=bool)
    outside[S] = False
    cand = xp.flatnonzero(outside & (xp.abs(g) - l1 > thresh))
    return cand[xp.argsort(-xp.abs(g[cand]))[:n_max]]


def _joined_xp(S, xS, cand, xp):
    """The sorted working set ``S`` plus the atoms ``cand`` (coefficients 0)."""
    S_new = xp.sort(xp.concatenate([S, cand]))
    x_new = xp.zeros(S_new.size)
    x_new[xp.searchsorted(S_new, S)] = xS
    return S_new, x_new


def _cold_lasso_xp(GW, known, D, w, c, l1, tol, max_add, xp):
    """The outlier-free Lasso ``min 0.5 x^T GW x - c^T x + l1 |x|_1``, the start of
    a cold solve, on a working set of atoms: the ``max_add`` largest ``|c|`` first,
    then each round the worst violators outside it (as many as the set holds, at
    least ``max_add``: the set at most doubles), until none is left (the optimum
    of the whole problem, to ``tol``). Only the working set's columns of ``GW``
    are filled: a few passes over ``D`` for its few dozen atoms instead of the
    whole Gram (K columns)."""
    K = c.shape[0]
    scale = max(float(xp.max(xp.abs(c))) if K else 0.0, l1)
    S = xp.sort(xp.argsort(-xp.abs(c))[: min(max_add, K)])
    xS = xp.zeros(S.size)
    while True:
        _fill_columns_xp(GW, known, D, w, S, xp)
        xS, _ = gram_lasso_numpy(GW[S][:, S], c[S], l1, xS, tol)
        g = GW[:, S] @ xS - c
        cand = _violators_xp(g, S, l1, tol * scale, max(max_add, S.size), xp)
        if cand.size == 0:
            break
        S, xS = _joined_xp(S, xS, cand, xp)
    x = xp.zeros(K)
    x[S] = xS
    return x


def _robust_rows_xp(r, w, tau, sigmas, xp):
    """The rows beyond ``max(tau_j, sigmas * 1.4826 * median|sqrt(w) r| / sqrt(w_j))``
    (rows of weight 0 never), and how many rows lie beyond ``tau`` (the
    Newton phase's own first outlier set); no rows where fewer than
    ``ROBUST_BEYOND`` of the visible rows lie beyond ``tau``."""
    sw = xp.sqrt(w)
    vis = w > 0
    beyond = int(xp.count_nonzero(xp.abs(r) > tau))
    if beyond < ROBUST_BEYOND * int(xp.count_nonzero(vis)) or beyond == 0:
        return xp.zeros(0, dtype=xp.int64), beyond
    q = sigmas * 1.4826 * float(xp.median(sw[vis] * xp.abs(r[vis])))
    thr = xp.where(vis, xp.maximum(tau, q / xp.where(vis, sw, 1.0)), xp.inf)
    return xp.flatnonzero(xp.abs(r) > thr), beyond


def _objective_xp(xS, r, w, tau, l1, l2, xp):
    """The halved objective at coefficients ``xS`` with residual ``r`` (twin of
    ``_objective_nb``)."""
    return _huber_xp(r, w, tau, l2, xp) + l1 * float(xp.sum(xp.abs(xS)))


def _robust_start_xp(GW, known, D, DF, c, z, w, l1, l2, tau, S, xS, r, f_cur, tol, max_add,
                     sigmas, steps, xp):
    """A start for a cold solve that already discounts the gross errors.

    From the outlier-free Lasso (working set ``S``, coefficients ``xS``,
    residual ``r``, objective ``f_cur``), each round takes as outlier set ``T``
    the rows whose weighted residual is beyond ``sigmas`` robust standard
    deviations (:func:`_robust_rows_xp`) and solves the Newton model of that
    set exactly, on a working set of atoms grown by the worst violators of
    the model's own gradient (``T`` and its signs fixed)::

        min 0.5 x^T (GW - D_T^T W_T D_T) x - (c - D_T^T (W_T z_T - l2_T s_T))^T x + l1 |x|_1

    A round runs only if ``T`` holds at most ``ROBUST_SHARE`` of the rows
    beyond ``tau`` (a larger set makes nearly the model of the Newton phase's
    own first step) and is kept only if it lowers the true objective; the
    rounds stop when ``T`` repeats or after ``steps``. Returns ``(S, xS, r,
    f)``: the kept round's nonzeros, residual and objective, or the input
    unchanged. The result only seeds the Newton phase, whose stopping rule
    certifies the optimum whatever the start."""
    best = (S, xS, r, f_cur)
    if steps <= 0 or not bool(xp.any(xS != 0)):
        return best
    T_prev = None
    scale = max(float(xp.max(xp.abs(c))), l1)
    for _ in range(steps):
        T, beyond = _robust_rows_xp(r, w, tau, sigmas, xp)
        if T.size == 0 or T.size > ROBUST_SHARE * beyond or (
                T_prev is not None and T.size == T_prev.size and bool(xp.all(T == T_prev))):
            break
        T_prev = T
        s_T = xp.sign(r[T])
        v_T = w[T] * z[T] - l2[T] * s_T
        while True:
            _fill_columns_xp(GW, known, D, w, S, xp)
            DT_S = DF[T][:, S]
            H = GW[S][:, S] - DT_S.T @ (w[T][:, None] * DT_S)
            xS, _ = gram_lasso_numpy(H, c[S] - DT_S.T @ v_T, l1, xS, tol)
            g = GW[:, S] @ xS - c + D[T].T @ (v_T - w[T] * (DT_S @ xS))
            cand = _violators_xp(g, S, l1, tol * scale, max(max_add, S.size), xp)
            if cand.size == 0:
                break
            S, xS = _joined_xp(S, xS, cand, xp)
        rn = z - DF[:, S] @ xS
        f = _objective_xp(xS, rn, w, tau, l1, l2, xp)
        if not f < best[3]:
            break
        keep = xS != 0                  # the start's nonzeros
        S, xS, r = S[keep], xS[keep], rn
        best = (S, xS, r, f)
    return best


def lasso_partial_numpy(D, DF, GW, known, c, w, l1, tol=1e-10, max_add=8):
    """The Lasso ``min 0.5 x^T (D^T W D) x - c^T x + l1 |x|_1`` on a working set,
    filling only the columns of the weighted Gram ``GW`` it needs (``known``
    marks the filled ones; both in place). The start of a cold
    :func:`huber_lasso_numpy` solve (any array namespace).

    Returns
    -------
    x : ndarray, shape (K,)
    """
    return _cold_lasso_xp(GW, known, D, w, c, l1, tol, max_add, _xp(D))


def _settled(x0, settled):
    """Whether a solve starts from a settled working set (``CLEAN_STALLS``):
    ``settled`` as given, by default whenever there is a warm start ``x0``."""
    return x0 is not None if settled is None else bool(settled)


def huber_lasso_numpy(D, DF, GW, known, c, z, w, l1, l2, x0=None, tol=1e-10, max_iter=100,
                      max_add=8, DS0=None, robust_sigmas=ROBUST_SIGMAS,
                      robust_steps=ROBUST_STEPS, settled=None):
    """Reference solve (NumPy or CuPy arrays).

    Parameters
    ----------
    D, DF : ndarray, shape (n, K)
        The dictionary in C and Fortran order (the same values).
    GW : ndarray, shape (K, K)
        ``D^T diag(w) D``, possibly filled only in the columns (and rows)
        that ``known`` marks; the solve fills the columns it needs, in place.
    known : ndarray of bool, shape (K,)
    c : ndarray, shape (K,)
        ``D^T (w * z)``.
    z, w : ndarray, shape (n,)
        Target and per-row weights (>= 0).
    l1 : float
        Halved L1 weight on x (> 0).
    l2 : ndarray, shape (n,)
        Halved L1 weight on e per row (> 0).
    x0 : ndarray, shape (K,), optional
        Warm start; default: the outlier-free Lasso fit, then the robust
        start of :func:`_robust_start_xp`.
    tol, max_iter, max_add
        Relative KKT tolerance, Newton iterations, atoms added per check.
    DS0 : ndarray, shape (n, m), optional
        ``DF[:, S0]`` (C order) for the nonzeros ``S0`` of ``x0``, when the
        caller keeps it from an earlier solve (consecutive solves of one
        shape share their working set); gathered here otherwise.
    robust_sigmas, robust_steps : float, int
        The cold start's outlier threshold in robust standard deviations and
        its rounds (``ROBUST_SIGMAS``, ``ROBUST_STEPS``; 0 rounds: start from
        the outlier-free Lasso). Not used with ``x0``.
    settled : bool, optional
        Whether ``x0``'s atoms count as a settled working set (``CLEAN_STALLS``);
        default: whenever ``x0`` is given. False for a start that is not near
        this problem's optimum (e.g. the outlier-free Lasso).

    Returns
    -------
    x, r, kkt, n_iter, converged
    """
    xp = _xp(D)
    K = GW.shape[0]
    tau = xp.where(w > 0, l2 / xp.where(w > 0, w, 1.0), xp.inf)
    if x0 is None:
        x = _cold_lasso_xp(GW, known, D, w, c, l1, tol, max_add, xp)
        S = xp.flatnonzero(x)
        if S.size == 0:
            S = xp.argsort(-xp.abs(c))[: min(max_add, K)]
    else:
        x = xp.array(x0, dtype=np.float64, copy=True)
        S = xp.flatnonzero(x)
    S = xp.sort(S)
    _fill_columns_xp(GW, known, D, w, S, xp)

    def F(xS_, r_):
        return _objective_xp(xS_, r_, w, tau, l1, l2, xp)

    DS = DS0 if DS0 is not None and x0 is not None and DS0.shape[1] == S.size else DF[:, S]
    xS = x[S]
    r = z - DS @ xS
    f_cur = F(xS, r)
    if x0 is None:
        S_lasso = S
        S, xS, r, f_cur = _robust_start_xp(GW, known, D, DF, c, z, w, l1, l2, tau, S, xS, r,
                                           f_cur, tol, max_add, robust_sigmas, robust_steps,
                                           xp)
        if S is not S_lasso:
            DS = DF[:, S]
    H = None
    O_prev = None
    converged = False
    kkt = float("inf")
    it = 0
    clean = _settled(x0, settled)   # see CLEAN_STALLS
    stalls = 0
    for it in range(1, max_iter + 1):
        O = xp.abs(r) > tau
        rows = xp.flatnonzero(O)
        sigma = xp.sign(r[rows])
        bS = c[S]
        if H is None:
            H = _hessian_xp(GW, DS, S, w, O, rows, xp)
        else:
            H = _update_hessian_xp(H, DS, w, O, O_prev, xp)
        O_prev = O
        b = bS
        if rows.size:
            b = bS - DS[rows].T @ (w[rows] * z[rows] - l2[rows] * sigma)
        if not bool(xp.any(xp.diag(H) > 0)):
            xn, rn, fn = _mm_step_xp(F, GW, DS, S, xS, r, c, w, tau, l1, f_cur, tol, xp)
            full_step = False
        else:
            xn, _ = gram_lasso_numpy(H, b, l1, xS, tol)
            rn = z - DS @ xn
            fn = F(xn, rn)
            full_step = fn <= f_cur
        if not full_step and fn > f_cur:
            xn, rn, fn = _line_search_xp(F, xS, r, xn, rn, f_cur)
            if xn is None:
                xn, rn, fn = _mm_step_xp(F, GW, DS, S, xS, r, c, w, tau, l1, f_cur, tol, xp)
        same = bool(xp.array_equal(xp.abs(rn) > tau, O)) and bool(
            xp.array_equal(xp.sign(rn[rows]), sigma))
        stalled = f_cur - fn <= STALL * abs(f_cur)
        stalls = stalls + 1 if stalled else 0
        xS, r, f_cur = xn, rn, fn
        if not (same or (stalled and (not clean or stalls >= CLEAN_STALLS))):
            continue
        scale = max(float(xp.max(xp.abs(bS))) if S.size else 0.0, l1)
        xfull = xp.zeros(K)
        xfull[S] = xS
        g = _gradient_xp(D, DF, GW, c, S, xS, r, w, tau, l2, xp)
        kkt = _kkt_xp(g, xfull, l1, scale, xp)
        cand = _violators_xp(g, S, l1, tol * scale, max_add, xp)
        if cand.size == 0:
            converged = same and (full_step or kkt <= 1e3 * tol)
            if converged:
                break
            clean = True
            continue
        clean = False
        keep = (xS != 0) | (xp.abs(g[S]) > l1)      # atoms at zero that do not violate leave
        S, xS = _joined_xp(S[keep], xS[keep], cand, xp)
        _fill_columns_xp(GW, known, D, w, S, xp)
        DS = DF[:, S]
        H = None
    x = xp.zeros(K)
    x[S] = xS
    if not converged:
        scale = max(float(xp.max(xp.abs(c[S]))) if S.size else 0.0, l1)
        kkt = _kkt_xp(_gradient_xp(D, DF, GW, c, S, xS, r, w, tau, l2, xp), x, l1, scale, xp)
        converged = kkt <= 1e3 * tol
    return x, r, kkt, it, converged


def _line_search_xp(F, xS, r, xn, rn, f_cur):
    d, dr = xn - xS, rn - r
    t = 0.5
    while t > 1e-6:
        xt, rt = xS + t * d, r + t * dr
        ft = F(xt, rt)
        if ft <= f_cur:
            return xt, rt, ft
        t *= 0.5
    return None, None, None


def _mm_step_xp(F, GW, DS, S, xS, r, c, w, tau, l1, f_cur, tol, xp):
    """e fixed at soft(r, tau), exact Lasso in x on the weighted Gram; never
    increases F (for a near-singular Newton model)."""
    we = w * _soft(r, tau, xp)
    xn, _ = gram_lasso_numpy(GW[S][:, S], c[S] - DS.T @ we, l1, xS, tol)
    rn = r - DS @ (xn - xS)
    fn = F(xn, rn)
    if fn > f_cur:
        return xS, r, f_cur
    return xn, rn, fn


def _reweight_xp(r, w, lam2, lam2_cur, tau_s, floor, xp):
    """Per-row L1 weights on e for the next reweighted solve (Candes, Wakin &
    Boyd): ``lam2 * max(tau_s / (|e| + tau_s), floor)`` with ``e`` the gross
    error of the current solve (its weights ``lam2_cur``, un-halved)."""
    tau = xp.where(w > 0, (0.5 * lam2_cur) / xp.where(w > 0, w, 1.0), xp.inf)
    e = _soft(r, tau, xp)
    return lam2 * xp.maximum(tau_s / (xp.abs(e) + tau_s), floor)


def huber_lasso_reweighted_numpy(D, DF, GW, known, c, z, w, l1, lam2, reweight, floor,
                                 x0=None, tol=1e-10, max_iter=100, max_add=8, DS0=None,
                                 robust_sigmas=ROBUST_SIGMAS, robust_steps=ROBUST_STEPS,
                                 settled=None):
    """One solve at the scalar (un-halved) ``lam2`` and ``reweight`` reweighted
    solves, each started from the previous optimum (reference, NumPy or CuPy).

    Each reweighted solve puts ``lam2_j = lam2 * max(tau / (|e_j| + tau),
    floor)`` on coordinate j, with ``tau = 0.5 * lam2 / max(w)`` and ``e`` the
    previous solve's gross error, so that large gross errors stop pulling x.

    Returns
    -------
    x, r, kkt, n_iter, converged
        Of the last solve (as :func:`huber_lasso_numpy`).
    lam2 : ndarray, shape (n,)
        The last solve's (un-halved) weights on e.
    """
    xp = _xp(D)
    n = z.shape[0]
    lam2_cur = xp.full(n, float(lam2))
    x, r, kkt, it, conv = huber_lasso_numpy(D, DF, GW, known, c, z, w, l1, 0.5 * lam2_cur,
                                            x0, tol, max_iter, max_add, DS0, robust_sigmas,
                                            robust_steps, settled)
    tau_s = 0.5 * lam2 / float(xp.max(w))
    for _ in range(reweight):
        lam2_cur = _reweight_xp(r, w, lam2, lam2_cur, tau_s, floor, xp)
        x, r, kkt, it, conv = huber_lasso_numpy(D, DF, GW, known, c, z, w, l1, 0.5 * lam2_cur,
                                                x, tol, max_iter, max_add)
    return x, r, kkt, it, conv, lam2_cur


# --------------------------------------------------------------------------
# Numba twin
# --------------------------------------------------------------------------

if numba is not None:
    from .gram_lasso import _fss_numba

    @numba.njit(cache=True, nogil=True)
    def _fill_columns_nb(GW, known, DF, w, S):  # pragma: no cover - jitted
        """The columns of ``D^T W D`` in S that ``known`` lacks, in one BLAS
        product over D (in place; rows too, by symmetry)."""
        m = 0
        for p in range(S.shape[0]):
            if not known[S[p]]:
                m += 1
        if m == 0:
            return
        miss = np.empty(m, dtype=np.int64)
        m = 0
        for p in range(S.shape[0]):
            if not known[S[p]]:
                miss[m] = S[p]
                m += 1
        n = DF.shape[0]
        WB = np.empty((m, n))      # rows: the weighted columns of D
        for q in range(m):
            k = miss[q]
            for j in range(n):
                WB[q, j] = w[j] * DF[j, k]
        # (m, K), the weighted columns against D: with few columns BLAS runs this
        # layout about 1.3 times faster than D^T (W D_miss), (K, m)
        Gt = np.dot(WB, DF)
        for q in range(m):
            k = miss[q]
            for i in range(GW.shape[0]):
                GW[i, k] = Gt[q, i]
                GW[k, i] = Gt[q, i]
            known[k] = True

    @numba.njit(cache=True, nogil=True)
    def _gram_block_nb(GW, S):  # pragma: no cover - jitted
        """``GW[S][:, S]``: the working set's block of the weighted Gram."""
        s = S.shape[0]
        H = np.empty((s, s))
        for p in range(s):
            for q in range(s):
                H[p, q] = GW[S[p], S[q]]
        return H

    @numba.njit(cache=True, nogil=True)
    def _violators_nb(g, inS, l1, thresh, n_max):  # pragma: no cover - jitted
        """Twin of :func:`_violators_xp`, the working set given as the mask ``inS``."""
        nc = 0
        for k in range(g.shape[0]):
            if not inS[k] and abs(g[k]) - l1 > thresh:
                nc += 1
        cand = np.empty(nc, dtype=np.int64)
        nc = 0
        for k in range(g.shape[0]):
            if not inS[k] and abs(g[k]) - l1 > thresh:
                cand[nc] = k
                nc += 1
        order = np.argsort(-np.abs(g[cand]))
        return cand[order[: min(n_max, nc)]]

    @numba.njit(cache=True, nogil=True)
    def _joined_nb(S, xS, cand):  # pragma: no cover - jitted
        """Twin of :func:`_joined_xp`."""
        S_new = np.sort(np.concatenate((S, cand)))
        x_new = np.zeros(S_new.shape[0])
        pos = np.searchsorted(S_new, S)
        for p in range(S.shape[0]):
            x_new[pos[p]] = xS[p]
        return S_new, x_new

    @numba.njit(cache=True, nogil=True)
    def _gram_gradient_nb(GW, c, S, xS, g, inS):  # pragma: no cover - jitted
        """``g = GW[:, S] xS - c`` and ``inS``, the working set as a mask (in place)."""
        for k in range(g.shape[0]):
            acc = -c[k]
            for p in range(S.shape[0]):
                acc += GW[k, S[p]] * xS[p]
            g[k] = acc
            inS[k] = False
        for p in range(S.shape[0]):
            inS[S[p]] = True

    @numba.njit(cache=True, nogil=True)
    def _cold_lasso_nb(GW, known, DF, w, c, l1, tol, max_add):  # pragma: no cover - jitted
        """Twin of :func:`_cold_lasso_xp`."""
        K = c.shape[0]
        scale = l1
        for k in range(K):
            scale = max(scale, abs(c[k]))
        S = np.sort(np.argsort(-np.abs(c))[: min(max_add, K)])
        xS = np.zeros(S.shape[0])
        g = np.empty(K)
        inS = np.zeros(K, dtype=np.bool_)
        while True:
            _fill_columns_nb(GW, known, DF, w, S)
            s = S.shape[0]
            bs = np.empty(s)
            for p in range(s):
                bs[p] = c[S[p]]
            xS, _ = _fss_numba(_gram_block_nb(GW, S), bs, l1, xS, tol, 2000)
            _gram_gradient_nb(GW, c, S, xS, g, inS)
            cand = _violators_nb(g, inS, l1, tol * scale, max(max_add, s))
            if cand.shape[0] == 0:
                break
            S, xS = _joined_nb(S, xS, cand)
        x = np.zeros(K)
        for p in range(S.shape[0]):
            x[S[p]] = xS[p]
        return x

    @numba.njit(cache=True, nogil=True)
    def _huber_nb(r, w, tau, l2):  # pragma: no cover - jitted
        s = 0.0
        for j in range(r.shape[0]):
            a = abs(r[j])
            if a <= tau[j]:
                s += 0.5 * w[j] * r[j] * r[j]
            else:
                s += l2[j] * a - 0.5 * l2[j] * tau[j]
        return s

    @numba.njit(cache=True, nogil=True)
    def _objective_nb(xS, r, w, tau, l1, l2):  # pragma: no cover - jitted
        s = 0.0
        for p in range(xS.shape[0]):
            s += abs(xS[p])
        return _huber_nb(r, w, tau, l2) + l1 * s

    @numba.njit(cache=True, nogil=True)
    def _residual_nb(z, DT, S, xS, r):  # pragma: no cover - jitted
        """``r = z - D[:, S] xS``, one contiguous column of D (a row of DT) per
        nonzero coefficient."""
        n = z.shape[0]
        for j in range(n):
            r[j] = z[j]
        for p in range(S.shape[0]):
            v = xS[p]
            if v != 0.0:
                col = DT[S[p]]
                for j in range(n):
                    r[j] -= col[j] * v

    @numba.njit(cache=True, nogil=True)
    def _rows_nb(r, tau):  # pragma: no cover - jitted
        m = 0
        for j in range(r.shape[0]):
            if abs(r[j]) > tau[j]:
                m += 1
        rows = np.empty(m, dtype=np.int64)
        m = 0
        for j in range(r.shape[0]):
            if abs(r[j]) > tau[j]:
                rows[m] = j
                m += 1
        return rows

    @numba.njit(cache=True, nogil=True)
    def _rank_update_nb(H, DT, S, w, rows, sign):  # pragma: no cover - jitted
        """H += sign * sum_j w_j D[j, S] D[j, S]^T over ``rows`` (gathered in
        blocks, column by column, so that the product runs in BLAS)."""
        s = S.shape[0]
        if s == 0 or rows.shape[0] == 0:
            return
        B = 512
        for b0 in range(0, rows.shape[0], B):
            b1 = min(rows.shape[0], b0 + B)
            A = np.empty((s, b1 - b0))
            WA = np.empty((s, b1 - b0))
            for p in range(s):
                col = DT[S[p]]
                for i in range(b1 - b0):
                    j = rows[b0 + i]
                    v = col[j]
                    A[p, i] = v
                    WA[p, i] = w[j] * v
            H += sign * (A @ WA.T)

    @numba.njit(cache=True, nogil=True)
    def _hessian_nb(GW, DT, S, w, r, tau):  # pragma: no cover - jitted
        s = S.shape[0]
        n = r.shape[0]
        rows = _rows_nb(r, tau)
        if 2 * rows.shape[0] <= n:
            H = _gram_block_nb(GW, S)
            _rank_update_nb(H, DT, S, w, rows, -1.0)
        else:
            inl = np.empty(n - rows.shape[0], dtype=np.int64)
            m = 0
            for j in range(n):
                if not abs(r[j]) > tau[j]:
                    inl[m] = j
                    m += 1
            H = np.zeros((s, s))
            _rank_update_nb(H, DT, S, w, inl, 1.0)
        return H

    @numba.njit(cache=True, nogil=True)
    def _newton_rhs_nb(c, DT, S, w, z, r, tau, l2, rows):  # pragma: no cover - jitted
        s = S.shape[0]
        m = rows.shape[0]
        v = np.empty(m)
        for i in range(m):
            j = rows[i]
            v[i] = w[j] * z[j] - l2[j] * np.sign(r[j])
        b = np.empty(s)
        for p in range(s):
            col = DT[S[p]]
            acc = c[S[p]]
            for i in range(m):
                acc -= col[rows[i]] * v[i]
            b[p] = acc
        return b

    @numba.njit(cache=True, nogil=True)
    def _add_rows_nb(D, rows, v, g):  # pragma: no cover - jitted
        """``g += D[rows].T @ v`` in place, reading each row of ``D`` (C order)
        once. Four rows per pass over ``g``: each element of ``g`` is loaded and
        stored a quarter as often as row by row. Alone (6000 rows of a (15000,
        300) D, one thread) 0.8 -> 0.4 ms; whole cold solves at (5000, 300),
        same-run A/B: 1.1-1.3x faster at 5 % gross errors, unchanged at 20 %
        (whose first checks, most rows beyond tau, take the BLAS pass over all
        of D). The four products are summed pairwise before they join ``g`` (a
        fixed order: the result does not depend on the compiler)."""
        K = g.shape[0]
        m = rows.shape[0]
        i = 0
        while i + 4 <= m:
            r0, r1, r2, r3 = D[rows[i]], D[rows[i + 1]], D[rows[i + 2]], D[rows[i + 3]]
            a0, a1, a2, a3 = v[i], v[i + 1], v[i + 2], v[i + 3]
            for k in range(K):
                g[k] += (r0[k] * a0 + r1[k] * a1) + (r2[k] * a2 + r3[k] * a3)
            i += 4
        while i < m:
            row = D[rows[i]]
            a = v[i]
            for k in range(K):
                g[k] += row[k] * a
            i += 1

    @numba.njit(cache=True, nogil=True)
    def _gradient_nb(D, DF, GW, c, S, xS, r, w, tau, l2):  # pragma: no cover - jitted
        n, K = DF.shape
        rows = _rows_nb(r, tau)
        if rows.shape[0] > GRADIENT_ROWS * n:
            # nearly every row an outlier: one BLAS pass over all of D is cheaper
            psi = np.empty(n)
            for j in range(n):
                if abs(r[j]) > tau[j]:
                    psi[j] = l2[j] * np.sign(r[j])
                else:
                    psi[j] = w[j] * r[j]
            return -np.dot(DF.T, psi)
        g = np.empty(K)
        for k in range(K):
            acc = -c[k]
            for p in range(S.shape[0]):
                acc += GW[k, S[p]] * xS[p]
            g[k] = acc
        v = np.empty(rows.shape[0])
        for i in range(rows.shape[0]):
            j = rows[i]
            v[i] = w[j] * r[j] - l2[j] * np.sign(r[j])
        _add_rows_nb(D, rows, v, g)        # the outlier rows of D, each contiguous
        return g

    @numba.njit(cache=True, nogil=True)
    def _kkt_nb(g, S, xS, l1, scale):  # pragma: no cover - jitted
        K = g.shape[0]
        inS = np.zeros(K, dtype=np.bool_)
        viol = 0.0
        for p in range(S.shape[0]):
            inS[S[p]] = True
            if xS[p] != 0.0:
                viol = max(viol, abs(g[S[p]] + l1 * np.sign(xS[p])))
            else:
                viol = max(viol, abs(g[S[p]]) - l1)
        for k in range(K):
            if not inS[k]:
                viol = max(viol, abs(g[k]) - l1)
        return max(viol, 0.0) / scale, inS

    @numba.njit(cache=True, nogil=True)
    def _same_status_nb(rn, r_rows_sign, O, rows, tau):  # pragma: no cover - jitted
        for j in range(rn.shape[0]):
            if (abs(rn[j]) > tau[j]) != O[j]:
                return False
        for i in range(rows.shape[0]):
            if np.sign(rn[rows[i]]) != r_rows_sign[i]:
                return False
        return True

    @numba.njit(cache=True, nogil=True)
    def _mm_step_nb(GW, DT, S, xS, r, c, z, w, tau, l1, l2, f_cur, tol):  # pragma: no cover
        s = S.shape[0]
        Hs = _gram_block_nb(GW, S)
        b = np.empty(s)
        we = np.empty(r.shape[0])
        for j in range(r.shape[0]):
            a = abs(r[j])
            we[j] = w[j] * np.sign(r[j]) * (a - tau[j]) if a > tau[j] else 0.0
        for p in range(s):
            col = DT[S[p]]
            acc = c[S[p]]
            for j in range(r.shape[0]):
                acc -= col[j] * we[j]
            b[p] = acc
        xn, _ = _fss_numba(Hs, b, l1, xS.copy(), tol, 2000)
        rn = np.empty(r.shape[0])
        _residual_nb(z, DT, S, xn, rn)
        fn = _objective_nb(xn, rn, w, tau, l1, l2)
        if fn > f_cur:
            return xS, r, f_cur
        return xn, rn, fn

    @numba.njit(cache=True, nogil=True)
    def _robust_rows_nb(r, w, tau, sigmas):  # pragma: no cover - jitted
        """Twin of :func:`_robust_rows_xp`."""
        n = r.shape[0]
        nv = 0
        beyond = 0
        for j in range(n):
            if w[j] > 0:
                nv += 1
            if abs(r[j]) > tau[j]:
                beyond += 1
        if beyond < ROBUST_BEYOND * nv or beyond == 0:
            return np.zeros(0, dtype=np.int64), beyond
        a = np.empty(nv)
        nv = 0
        for j in range(n):
            if w[j] > 0:
                a[nv] = np.sqrt(w[j]) * abs(r[j])
                nv += 1
        q = sigmas * 1.4826 * np.median(a)
        thr = np.empty(n)
        m = 0
        for j in range(n):
            if w[j] > 0:
                thr[j] = max(tau[j], q / np.sqrt(w[j]))
            else:
                thr[j] = np.inf
            if abs(r[j]) > thr[j]:
                m += 1
        rows = np.empty(m, dtype=np.int64)
        m = 0
        for j in range(n):
            if abs(r[j]) > thr[j]:
                rows[m] = j
                m += 1
        return rows, beyond

    @numba.njit(cache=True, nogil=True)
    def _robust_start_nb(D, DF, GW, known, c, z, w, l1, l2, tau, S, xS, r, f_cur, tol, max_add,
                         sigmas, steps):  # pragma: no cover - jitted
        """Twin of :func:`_robust_start_xp` (its arguments in the Numba order)."""
        n, K = D.shape
        nz = 0
        for p in range(xS.shape[0]):
            if xS[p] != 0.0:
                nz += 1
        if nz == 0 or steps <= 0:
            return S, xS, r, f_cur
        DT = DF.T
        S0, xS0, r0, f_best = S, xS, r, f_cur
        xS = xS.copy()
        T_prev = np.zeros(0, dtype=np.int64)
        scale = l1
        for k in range(K):
            scale = max(scale, abs(c[k]))
        g = np.empty(K)
        inS = np.zeros(K, dtype=np.bool_)
        for step in range(steps):
            T, beyond = _robust_rows_nb(r, w, tau, sigmas)
            if T.shape[0] == 0 or T.shape[0] > ROBUST_SHARE * beyond:
                break
            if step > 0 and T.shape[0] == T_prev.shape[0]:
                same = True
                for i in range(T.shape[0]):
                    if T[i] != T_prev[i]:
                        same = False
                        break
                if same:
                    break
            T_prev = T
            m = T.shape[0]
            v = np.empty(m)
            for i in range(m):
                j = T[i]
                v[i] = w[j] * z[j] - l2[j] * np.sign(r[j])
            while True:
                _fill_columns_nb(GW, known, DF, w, S)
                s = S.shape[0]
                H = _gram_block_nb(GW, S)
                _rank_update_nb(H, DT, S, w, T, -1.0)
                b = _newton_rhs_nb(c, DT, S, w, z, r, tau, l2, T)
                xS, _ = _fss_numba(H, b, l1, xS, tol, 2000)
                # the model's gradient: GW x - c + D_T^T (v - W_T D_T x)
                u = np.empty(m)
                for i in range(m):
                    u[i] = v[i]
                for p in range(s):
                    if xS[p] != 0.0:
                        col = DT[S[p]]
                        xp_ = xS[p]
                        for i in range(m):
                            u[i] -= w[T[i]] * col[T[i]] * xp_
                _gram_gradient_nb(GW, c, S, xS, g, inS)
                _add_rows_nb(D, T, u, g)
                cand = _violators_nb(g, inS, l1, tol * scale, max(max_add, s))
                if cand.shape[0] == 0:
                    break
                S, xS = _joined_nb(S, xS, cand)
            rn = np.empty(n)
            _residual_nb(z, DT, S, xS, rn)
            f = _objective_nb(xS, rn, w, tau, l1, l2)
            if not f < f_best:
                break
            f_best = f
            r = rn
            keep = np.flatnonzero(xS)      # the start's nonzeros, as the reference's x
            S0, xS0, r0 = S[keep], xS[keep], rn
            S, xS = S0, xS0.copy()
        return S0, xS0, r0, f_best

    @numba.njit(cache=True, nogil=True)
    def _huber_lasso_nb(D, DF, GW, known, c, z, w, l1, l2, x, cold, tol, max_iter,
                        max_add, robust_sigmas, robust_steps,
                        settled):  # pragma: no cover - jitted
        n, K = D.shape
        tau = np.empty(n)
        for j in range(n):
            tau[j] = l2[j] / w[j] if w[j] > 0 else np.inf
        if cold:
            x = _cold_lasso_nb(GW, known, DF, w, c, l1, tol, max_add)
        S = np.flatnonzero(x)
        if S.shape[0] == 0 and cold:
            S = np.sort(np.argsort(-np.abs(c))[: min(max_add, K)])
        xS = np.empty(S.shape[0])
        for p in range(S.shape[0]):
            xS[p] = x[S[p]]
        _fill_columns_nb(GW, known, DF, w, S)
        DT = DF.T                  # (K, n), C order: column k of D is DT[k]
        r = np.empty(n)
        _residual_nb(z, DT, S, xS, r)
        f_cur = _objective_nb(xS, r, w, tau, l1, l2)
        if cold:
            S, xS, r, f_cur = _robust_start_nb(D, DF, GW, known, c, z, w, l1, l2, tau, S, xS,
                                               r, f_cur, tol, max_add, robust_sigmas,
                                               robust_steps)
        H = np.empty((0, 0))
        have_H = False
        O_prev = np.zeros(n, dtype=np.bool_)
        O = np.zeros(n, dtype=np.bool_)
        converged = False
        kkt = np.inf
        it = 0
        rn = np.empty(n)
        clean = settled
        stalls = 0
        for it in range(1, max_iter + 1):
            for j in range(n):
                O[j] = abs(r[j]) > tau[j]
            rows = _rows_nb(r, tau)
            sigma = np.empty(rows.shape[0])
            for i in range(rows.shape[0]):
                sigma[i] = np.sign(r[rows[i]])
            if not have_H:
                H = _hessian_nb(GW, DT, S, w, r, tau)
                have_H = True
            else:
                na = 0
                nr = 0
                for j in range(n):
                    if O[j] and not O_prev[j]:
                        na += 1
                    elif O_prev[j] and not O[j]:
                        nr += 1
                add = np.empty(na, dtype=np.int64)
                rem = np.empty(nr, dtype=np.int64)
                na = 0
                nr = 0
                for j in range(n):
                    if O[j] and not O_prev[j]:
                        add[na] = j
                        na += 1
                    elif O_prev[j] and not O[j]:
                        rem[nr] = j
                        nr += 1
                _rank_update_nb(H, DT, S, w, add, -1.0)
                _rank_update_nb(H, DT, S, w, rem, 1.0)
            O_prev[:] = O
            b = _newton_rhs_nb(c, DT, S, w, z, r, tau, l2, rows)
            curv = False
            for p in range(S.shape[0]):
                if H[p, p] > 0:
                    curv = True
                    break
            if not curv:
                xn, rn2, fn = _mm_step_nb(GW, DT, S, xS, r, c, z, w, tau, l1, l2, f_cur, tol)
                rn = rn2.copy()
                full_step = False
            else:
                xn, _ = _fss_numba(H, b, l1, xS.copy(), tol, 2000)
                _residual_nb(z, DT, S, xn, rn)
                fn = _objective_nb(xn, rn, w, tau, l1, l2)
                full_step = fn <= f_cur
            if not full_step and fn > f_cur:
                # backtracking along the Newton direction
                d = xn - xS
                dr = rn - r
                t = 0.5
                found = False
                while t > 1e-6:
                    xt = xS + t * d
                    rt = r + t * dr
                    ft = _objective_nb(xt, rt, w, tau, l1, l2)
                    if ft <= f_cur:
                        xn, rn, fn = xt, rt, ft
                        found = True
                        break
                    t *= 0.5
                if not found:
                    xn, rn2, fn = _mm_step_nb(GW, DT, S, xS, r, c, z, w, tau, l1, l2, f_cur,
                                              tol)
                    rn = rn2.copy()
            same = _same_status_nb(rn, sigma, O, rows, tau)
            stalled = f_cur - fn <= STALL * abs(f_cur)
            stalls = stalls + 1 if stalled else 0
            xS = xn
            r, rn = rn, r      # r takes the new residual; rn becomes scratch
            f_cur = fn
            if not (same or (stalled and (not clean or stalls >= CLEAN_STALLS))):
                continue
            scale = l1
            for p in range(S.shape[0]):
                scale = max(scale, abs(c[S[p]]))
            g = _gradient_nb(D, DF, GW, c, S, xS, r, w, tau, l2)
            kkt, inS = _kkt_nb(g, S, xS, l1, scale)
            cand = _violators_nb(g, inS, l1, tol * scale, max_add)
            if cand.shape[0] == 0:
                converged = same and (full_step or kkt <= 1e3 * tol)
                if converged:
                    break
                clean = True
                continue
            clean = False
            # atoms at zero that do not violate leave the working set
            nk = 0
            for p in range(S.shape[0]):
                if xS[p] != 0.0 or abs(g[S[p]]) > l1:
                    nk += 1
            keep = np.empty(nk, dtype=np.int64)
            nk = 0
            for p in range(S.shape[0]):
                if xS[p] != 0.0 or abs(g[S[p]]) > l1:
                    keep[nk] = p
                    nk += 1
            S, xS = _joined_nb(S[keep], xS[keep], cand)
            _fill_columns_nb(GW, known, DF, w, S)
            have_H = False
        x = np.zeros(K)
        for p in range(S.shape[0]):
            x[S[p]] = xS[p]
        if not converged:
            scale = l1
            for p in range(S.shape[0]):
                scale = max(scale, abs(c[S[p]]))
            g = _gradient_nb(D, DF, GW, c, S, xS, r, w, tau, l2)
            kkt, _ = _kkt_nb(g, S, xS, l1, scale)
            converged = kkt <= 1e3 * tol
        return x, r.copy(), kkt, it, converged

    @numba.njit(cache=True, nogil=True)
    def _huber_lasso_rw_nb(D, DF, GW, known, c, z, w, l1, lam2, x, cold, tol, max_iter,
                           max_add, reweight, floor, robust_sigmas,
                           robust_steps, settled):  # pragma: no cover - jitted
        n = z.shape[0]
        lam2_cur = np.empty(n)
        l2 = np.empty(n)
        for j in range(n):
            lam2_cur[j] = lam2
            l2[j] = 0.5 * lam2_cur[j]
        x, r, kkt, it, conv = _huber_lasso_nb(D, DF, GW, known, c, z, w, l1, l2, x, cold,
                                              tol, max_iter, max_add, robust_sigmas,
                                              robust_steps, settled)
        wmax = w[0]
        for j in range(n):
            wmax = max(wmax, w[j])
        tau_s = 0.5 * lam2 / wmax
        for _ in range(reweight):
            for j in range(n):       # the formula of _reweight_xp, coordinate by coordinate
                tau = (0.5 * lam2_cur[j]) / w[j] if w[j] > 0 else np.inf
                a = max(abs(r[j]) - tau, 0.0)
                e = np.sign(r[j]) * a
                lam2_cur[j] = lam2 * max(tau_s / (abs(e) + tau_s), floor)
                l2[j] = 0.5 * lam2_cur[j]
            x, r, kkt, it, conv = _huber_lasso_nb(D, DF, GW, known, c, z, w, l1, l2, x,
                                                  False, tol, max_iter, max_add, 0.0, 0, True)
        return x, r, kkt, it, conv, lam2_cur


def huber_lasso_reweighted_numba(D, DF, GW, known, c, z, w, l1, lam2, reweight, floor,
                                 x0=None, tol=1e-10, max_iter=100, max_add=8, DS0=None,
                                 robust_sigmas=ROBUST_SIGMAS, robust_steps=ROBUST_STEPS,
                                 settled=None):
    """Numba twin of :func:`huber_lasso_reweighted_numpy`: every solve in one
    compiled call (same arguments and results; ``DS0`` not needed)."""
    if numba is None:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    D, DF, x, cold = _numba_args(D, DF, GW, known, x0)
    x, r, kkt, it, conv, lam2_cur = _huber_lasso_rw_nb(
        D, DF, GW, known, np.asarray(c, dtype=np.float64), np.asarray(z, dtype=np.float64),
        np.asarray(w, dtype=np.float64), float(l1), float(lam2), x, cold, float(tol),
        int(max_iter), int(max_add), int(reweight), float(floor), float(robust_sigmas),
        int(robust_steps), _settled(x0, settled))
    return x, r, float(kkt), int(it), bool(conv), lam2_cur


def lasso_partial_numba(D, DF, GW, known, c, w, l1, tol=1e-10, max_add=8):
    """Numba twin of :func:`lasso_partial_numpy`."""
    if numba is None:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    D, DF, _, _ = _numba_args(D, DF, GW, known, None)
    return _cold_lasso_nb(GW, known, DF, np.asarray(w, dtype=np.float64),
                          np.asarray(c, dtype=np.float64), float(l1), float(tol), int(max_add))


def _numba_args(D, DF, GW, known, x0):
    """The arrays as the compiled twins take them, and the warm start."""
    D = np.ascontiguousarray(D, dtype=np.float64)
    DF = np.asfortranarray(DF, dtype=np.float64)
    if not (GW.flags.c_contiguous and GW.dtype == np.float64 and known.dtype == np.bool_):
        raise ValueError("GW must be a C-ordered float64 array and known a bool array "
                         "(both are filled in place)")
    cold = x0 is None
    x = np.zeros(D.shape[1]) if cold else np.array(x0, dtype=np.float64)
    return D, DF, x, cold


def huber_lasso_numba(D, DF, GW, known, c, z, w, l1, l2, x0=None, tol=1e-10, max_iter=100,
                      max_add=8, DS0=None, robust_sigmas=ROBUST_SIGMAS,
                      robust_steps=ROBUST_STEPS, settled=None):
    """Numba twin of :func:`huber_lasso_numpy` (same arguments and results;
    ``DS0`` is accepted and not needed: the columns are read in place)."""
    if numba is None:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    D, DF, x, cold = _numba_args(D, DF, GW, known, x0)
    l2 = np.broadcast_to(np.asarray(l2, dtype=np.float64), (D.shape[0],)).copy()
    x, r, kkt, it, conv = _huber_lasso_nb(
        D, DF, GW, known, np.asarray(c, dtype=np.float64),
        np.asarray(z, dtype=np.float64), np.asarray(w, dtype=np.float64), float(l1), l2, x,
        cold, float(tol), int(max_iter), int(max_add), float(robust_sigmas), int(robust_steps),
        _settled(x0, settled))
    return x, r, float(kkt), int(it), bool(conv)
