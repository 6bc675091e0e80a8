"""Batched L1 SSC: many aligned shapes, one dictionary, one array program.

The problem of each shape m is the one :func:`~shapeprior.ssc._l1.solve_l1`
solves (halved units, ``l1 = lam1/2``, ``l2 = lam2/2``, weights ``w`` shared
by the batch)::

    min_x  sum_j h_j(z_mj - (D x)_j) + l1_m ||x||_1,
    h_j(r) = w_j r^2 / 2 (|r| <= tau_mj),  l2_m |r| - l2_m tau_mj / 2 (beyond),
    tau_mj = l2_m / w_j

and the method is the same semismooth Newton on the outlier set with a
working set of atoms, written for a whole batch at once so that a GPU runs it
as a few large products instead of many small solves:

* the residuals ``Z - X D^T`` and gradients ``-Psi D`` of every shape are two
  matrix products with the shared ``D``;
* each shape's Newton system lives on its own working set (support plus the
  ``max_add`` worst KKT violators), padded to the batch's largest set, and
  its Hessian ``D_S^T W D_S - D_{O,S}^T W_O D_{O,S}`` comes from the cached
  ``D^T W D`` and the shape's outlier rows alone (padded likewise);
* the Lasso of that Newton system (fixed outlier set) is solved exactly on
  the working set by feature-sign search, every shape at once
  (:func:`feature_sign_batched`: small batched solves only);
* the step goes to that solution where the true objective decreases, else
  to the longest of a few halvings that lowers it (evaluated at once); where
  none does (a Newton model without curvature: every row an outlier), the
  best of a few proximal gradient steps of growing length (1/L among them,
  which always descends).

The first iterations solve the outlier-free Lasso (every row an inlier; the
start of the single solver too); once it satisfies its KKT conditions the
shape switches to the Huber problem. A shape is *certified* when the relative
KKT violation of its full problem (the single solver's measure) is at most
``tol_certify``; a shape that is not certified within ``max_iter`` iterations,
or after ``MAX_STALLS`` proximal steps in a row, is reported as such (the
public function solves it again with the single solver). Everything is written against an array namespace ``xp``:
NumPy in CI, CuPy on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validation import check_number
from ..backend import kernel
from ._compose import ALPHA1, _check_vertex_weights
from ._dictionary import ShapeDictionary
from ._l1 import _tau, soft_threshold, solve_l1

#: consecutive iterations without a descending Newton step (each then a proximal
#: gradient step) after which a shape leaves the batch uncertified
MAX_STALLS = 20
#: step sizes PROX_BASE**j / L (j < PROX_STEPS: 1/L ... 1e7/L) a stalled shape's
#: proximal gradient step tries at once: the most shapes certified in the batch
#: on the validation seeds of bench/bench_batched_stall.py (1620 of 1620; 1534
#: with the 1/L step alone)
PROX_STEPS = 8
PROX_BASE = 10.0

#: step lengths the line search tries at once after the full step: LINE_SEARCH_STEPS
#: halvings per round, in up to LINE_SEARCH_ROUNDS rounds (down to 2**-40)
LINE_SEARCH_STEPS = 8
LINE_SEARCH_ROUNDS = 5


def _huber_objective(R, tau, l2, w, X, l1, xp):
    """Per-shape objective in halved units; ``R`` (M, n), ``tau`` (M, n). A trial
    step without curvature can overflow: +inf then, without a warning."""
    with np.errstate(over="ignore", invalid="ignore"):
        a = xp.abs(R)
        inl = a <= tau
        h = xp.where(inl, 0.5 * w * R * R, l2[:, None] * (a - 0.5 * tau))
        return h.sum(axis=1) + l1 * xp.abs(X).sum(axis=1)


def _gradient(R, X, tau, l1, l2, w, D, scale, xp):
    """The smooth part's gradient ``g = -Psi D`` (M, K) at residuals ``R`` (M, n)
    (``Psi``: ``w r`` on inlier rows, ``l2 sign(r)`` beyond ``tau``), the outlier
    rows (M, n) and each shape's relative KKT violation of the full problem
    (the single solver's measure: violation over ``max(max|D^T W z|, l1)``)."""
    out = xp.abs(R) > tau
    psi = xp.where(out, l2[:, None] * xp.sign(R), w * R)
    g = -(psi @ D)
    viol = xp.where(X != 0, xp.abs(g + l1[:, None] * xp.sign(X)), xp.abs(g) - l1[:, None])
    return g, out, xp.maximum(viol.max(axis=1), 0.0) / scale


def _finite(f, xp):
    """``f`` with NaN and infinity replaced by +inf (a step to an unusable point)."""
    return xp.where(xp.isfinite(f), f, xp.inf)


def _line_search(R, dR, X, dX, tau, l2, w, l1, xp):
    """Step lengths ``t`` (m,) along ``(dX, dR)`` and which shapes found none.

    The full step where it lowers the true objective (within rounding: 1e-13
    relative); else the longest of the halvings 1/2 ... 2**-LINE_SEARCH_STEPS that
    comes within rounding of the best of them, evaluated at once, provided the
    best is strictly lower than the start; shapes where none is try the next
    LINE_SEARCH_STEPS halvings, down to 2**-(LINE_SEARCH_ROUNDS * LINE_SEARCH_STEPS).
    A Newton direction descends when its model has curvature; where it has
    none (every row an outlier) its step can be useless at every length, and
    the shape ends with ``t = 0`` and ``stalled``.
    """
    m = R.shape[0]
    f0 = _huber_objective(R, tau, l2, w, X, l1, xp)
    slack = 1e-13 * xp.abs(f0)
    f1 = _finite(_huber_objective(R + dR, tau, l2, w, X + dX, l1, xp), xp)
    t = xp.ones(m)
    left = f1 > f0 + slack
    for r in range(LINE_SEARCH_ROUNDS):
        if not bool(left.any()):
            break
        k = xp.flatnonzero(left)
        halves = [0.5 ** j for j in range(r * LINE_SEARCH_STEPS + 1,
                                          (r + 1) * LINE_SEARCH_STEPS + 1)]
        Rk, dRk, Xk, dXk = R[k], dR[k], X[k], dX[k]
        fs = _finite(xp.stack([_huber_objective(Rk + h * dRk, tau[k], l2[k], w, Xk + h * dXk,
                                                l1[k], xp) for h in halves], axis=1), xp)
        best = fs.min(axis=1)
        ok = fs <= xp.minimum(best, f0[k])[:, None] + slack[k][:, None]
        j = xp.argmax(ok.astype(xp.int8), axis=1)         # the first acceptable halving
        found = best < f0[k]                              # strictly lower
        t[k] = xp.where(found, xp.asarray(halves)[j], 0.0)
        left[k] = ~found
    return t, left


def _prox_step(X, Z, g, tau, l1, l2, w, D, lip, xp):
    """Proximal gradient steps (m, K) from ``X`` (gradient ``g``): of the step
    sizes ``PROX_BASE**j / lip`` (j < PROX_STEPS, evaluated at once), the one whose
    objective is lowest. ``1 / lip`` always descends (``lip`` bounds the
    curvature everywhere); where most rows are outliers the objective is
    nearly linear and a longer step moves the outlier set on faster."""
    f = []
    cands = []
    for j in range(PROX_STEPS):
        step = PROX_BASE ** j / lip
        Xj = soft_threshold(X - step * g, l1[:, None] * step)
        cands.append(Xj)
        f.append(_huber_objective(Z - Xj @ D.T, tau, l2, w, Xj, l1, xp))
    best = xp.argmin(_finite(xp.stack(f, axis=1), xp), axis=1)
    return xp.stack(cands, axis=1)[xp.arange(X.shape[0]), best]


def _gather_rows(A, idx, pad, xp):
    """``A[m, idx[m, :]]`` with index ``pad`` meaning 0 (A of shape (M, P))."""
    got = xp.take_along_axis(A, xp.minimum(idx, A.shape[1] - 1), axis=1)
    return xp.where(idx == pad, 0, got)


def _padded_sets(mask, xp):
    """Indices of the True entries of each row of ``mask`` (M, P), in order,
    padded with P to the batch's largest count (a stream compaction: one
    cumulative sum and one scatter)."""
    M, P = mask.shape
    count = mask.sum(axis=1)
    width = max(int(count.max()) if M else 0, 1)
    slot = xp.where(mask, xp.cumsum(mask, axis=1) - 1, width)   # column width: discarded
    out = xp.full((M, width + 1), P, dtype=xp.int64)
    out[xp.arange(M)[:, None], slot] = xp.arange(P)[None, :]
    out[:, width] = P
    return out[:, :width], count


def _solve(A, b, xp):
    """``A_m^-1 b_m`` (m, s) for every problem; NaN for a problem whose system
    is singular in floating point (LU meets an exact zero pivot: a Newton
    model without curvature, rounding making it indefinite), so that one
    problem's step is rejected (the line search takes NaN for no descent)
    instead of the whole batch failing."""
    try:
        return xp.linalg.solve(A, b[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        out = xp.full(b.shape, xp.nan)
        for k in range(b.shape[0]):
            try:
                out[k] = xp.linalg.solve(A[k], b[k])
            except np.linalg.LinAlgError:
                pass
        return out


def feature_sign_batched(H, b, l1, x, allowed, tol, xp=np, max_steps=None):
    """Exact solutions of the Lasso problems ``min 0.5 x^T H_m x - b_m^T x + l1_m |x|_1``
    (H of shape (m, s, s), positive definite on ``allowed``) by feature-sign
    search (Lee, Battle, Raina & Ng 2007), every problem at once.

    From ``x`` (zero where not ``allowed``): while the active coefficients are
    not optimal, a Newton step on the active set with their signs, stopped at
    the first coefficient that reaches zero (which leaves the set); once they
    are, the worst violator at zero (``|q_i| > l1 + tol``) joins with the sign
    that lowers the objective. Each step lowers the objective; a problem stops
    when no coefficient violates its optimality condition by more than
    ``tol`` (shape (m,)). A problem whose active system turns out singular in
    floating point returns NaN (its step is unusable; the others are solved).
    """
    m, s = b.shape
    x = xp.where(allowed, x, 0.0)
    act = x != 0
    theta = xp.sign(x)
    eye = xp.eye(s)[None]
    rows = xp.arange(m)
    cols = xp.arange(s)
    steps = max_steps if max_steps is not None else 4 * s + 20
    # a ridge at rounding level (1e-15 of the largest diagonal entry) keeps a system
    # without curvature (every row an outlier) solvable; its step is then rejected
    ridge = 1e-15 * xp.abs(xp.diagonal(H, axis1=1, axis2=2)).max(axis=1) + 1e-300
    for _ in range(steps):
        q = xp.matmul(H, x[:, :, None])[:, :, 0] - b
        nz = xp.where(act, xp.abs(q + l1[:, None] * theta), 0.0).max(axis=1)
        zv = xp.where(allowed & ~act, xp.abs(q) - l1[:, None], -xp.inf)
        j = xp.argmax(zv, axis=1)
        zmax = zv[rows, j]
        # a problem whose system was singular (x NaN, :func:`_solve`) is done
        settled = (nz <= tol) | xp.isnan(nz)
        if not bool((~settled | (zmax > tol)).any()):
            break
        enter = settled & (zmax > tol)
        joins = enter[:, None] & (cols[None, :] == j[:, None])
        act = act | joins
        theta = xp.where(joins, -xp.sign(q), theta)
        move = ~settled | enter
        both = act[:, :, None] & act[:, None, :]
        Hm = xp.where(both, H, 0.0) + ((~act)[:, :, None] + ridge[:, None, None]) * eye
        rhs = xp.where(act, b - l1[:, None] * theta, 0.0)
        xn = _solve(Hm, rhs, xp)
        # a coefficient whose Newton value has the other sign stops the step where
        # it reaches zero; one that just joined (at zero) then stops it at once:
        # in exact arithmetic its sign is right, but a system without curvature
        # (rounding-level ridge) can flip it, and x must keep the signs theta
        cross = act & (xn * theta < 0)
        tc = xp.where(cross, x / xp.where(cross, x - xn, 1.0), xp.inf)
        t = xp.minimum(tc.min(axis=1), 1.0)
        t = xp.where(move, t, 0.0)
        xnew = x + t[:, None] * (xn - x)
        hit = cross & (tc <= t[:, None])
        xnew = xp.where(hit | ~act, 0.0, xnew)
        act = act & ~hit
        theta = xp.where(act, theta, 0.0)
        x = xnew
    return x


def solve_l1_batched_core(D, GW, Z, C, w, l1, l2, X0=None, tol_certify=1e-7, max_iter=100,
                          max_add=8, xp=np, backend=None):
    """Batched exact L1 solves (see the module docstring).

    Parameters
    ----------
    D : array, shape (n, K)
        Dictionary, C order.
    GW : array, shape (K, K)
        ``D^T diag(w) D``.
    Z : array, shape (M, n)
        Aligned shapes, flattened.
    C : array, shape (M, K)
        ``(Z * w) @ D``.
    w : array, shape (n,)
        Weights shared by the batch (>= 0).
    l1, l2 : array, shape (M,)
        Halved penalties (> 0).
    X0 : array, shape (M, K), optional
        Warm start (the Huber problem from the first iteration).
    backend : {'numpy', 'numba', 'cupy'}, optional
        Twin of the ``outlier_hessian`` kernel (default: the reference on
        NumPy, the CUDA kernel on CuPy).

    Returns
    -------
    X : (M, K) coefficients; R : (M, n) residuals ``Z - X D^T``;
    kkt : (M,) relative KKT violation; certified : (M,) bool;
    n_iter : (M,) iterations used.
    """
    M, n = Z.shape
    K = D.shape[1]
    tau_full = _tau(w, l2[:, None], xp)                 # (M, n)
    scale = xp.maximum(xp.abs(C).max(axis=1), l1)
    if backend is None:
        backend = "numpy" if xp is np else "cupy"
    hessian = kernel("outlier_hessian", backend)
    wp = xp.concatenate([w, xp.zeros(1)])               # w[n] = 0: a padded row
    # Lipschitz constant of the smooth part's gradient (every shape's: h'' <= w)
    lip = float(xp.linalg.eigvalsh(GW)[-1])
    stalls = xp.zeros(M, dtype=xp.int64)

    X = xp.zeros((M, K)) if X0 is None else xp.array(X0, dtype=xp.float64, copy=True)
    huber = xp.full(M, X0 is not None)
    live = xp.ones(M, dtype=bool)
    certified = xp.zeros(M, dtype=bool)
    kkt = xp.full(M, xp.inf)
    n_iter = xp.zeros(M, dtype=xp.int64)
    R = Z - X @ D.T

    for _ in range(max_iter):
        idx = xp.flatnonzero(live)
        if idx.size == 0:
            break
        n_iter[idx] += 1
        Xa, Ra, Za = X[idx], R[idx], Z[idx]
        l1a, l2a, ha = l1[idx], l2[idx], huber[idx]
        tau = xp.where(ha[:, None], tau_full[idx], xp.inf)
        g, out, k = _gradient(Ra, Xa, tau, l1a, l2a, w, D, scale[idx], xp)
        kkt[idx] = xp.where(ha, k, kkt[idx])
        done = k <= tol_certify
        # a converged Lasso moves on to the Huber problem; a converged Huber
        # problem is certified and leaves the batch
        finish = done & ha
        certified[idx[finish]] = True
        live[idx[finish]] = False
        switch = done & ~ha
        huber[idx[switch]] = True
        keep = ~done
        if not bool(keep.any()):
            continue
        idx, Xa, Ra, Za, g = idx[keep], Xa[keep], Ra[keep], Za[keep], g[keep]
        l1a, l2a, tau, out = l1a[keep], l2a[keep], tau[keep], out[keep]
        m = idx.size

        # working set: the support plus the max_add worst violators at zero
        supp = Xa != 0
        excess = xp.where(supp, -xp.inf, xp.abs(g) - l1a[:, None])
        order = xp.argsort(-excess, axis=1)[:, :max_add]
        new = xp.zeros_like(supp)
        rows = xp.arange(m)[:, None]
        new[rows, order] = xp.take_along_axis(excess, order, axis=1) > \
            tol_certify * scale[idx][:, None]
        S = supp | new
        Sidx, _ = _padded_sets(S, xp)                      # (m, s), pad K
        Oidx, _ = _padded_sets(out, xp)                    # (m, o), pad n
        # Newton system of the current outlier set on the working set
        zO = _gather_rows(Za, Oidx, n, xp)
        sO = _gather_rows(xp.sign(Ra), Oidx, n, xp)
        v = wp[Oidx] * zO - l2a[:, None] * sO
        H, bc = hessian(D, GW, w, Oidx, Sidx, v)
        Cp = xp.concatenate([C[idx], xp.zeros((m, 1))], axis=1)
        b = xp.take_along_axis(Cp, Sidx, axis=1) - bc
        pad = Sidx == K
        xcur = _gather_rows(Xa, Sidx, K, xp)
        xs = feature_sign_batched(H, b, l1a, xcur, ~pad, tol_certify * scale[idx], xp)
        d = xs - xcur
        # dense step and its residual change (one product with D)
        dX = xp.zeros((m, K + 1))
        dX[xp.arange(m)[:, None], Sidx] = d
        dX = dX[:, :K]
        dR = -(dX @ D.T)
        t, stalled = _line_search(Ra, dR, Xa, dX, tau, l2a, w, l1a, xp)
        # a full step lands on the Lasso solution, zeros included
        Xn = xp.where((t == 1.0)[:, None], Xa + dX, Xa + t[:, None] * dX)
        # where no step along the Newton direction descends (its model has no
        # curvature: most rows beyond tau), proximal gradient steps (1/L, which
        # always does, and longer ones) move the outlier set on
        st = xp.flatnonzero(stalled)
        if st.size:
            Xn[st] = _prox_step(Xa[st], Za[st], g[st], tau[st], l1a[st], l2a[st], w, D, lip,
                                xp)
        X[idx] = Xn
        R[idx] = Za - Xn @ D.T
        stalls[idx] = xp.where(stalled, stalls[idx] + 1, 0)
        live[idx[stalls[idx] > MAX_STALLS]] = False
    # the last iteration's updates are not yet checked: measure them
    rest = xp.flatnonzero(~certified)
    if rest.size:
        kkt[rest] = _gradient(R[rest], X[rest], tau_full[rest], l1[rest], l2[rest], w, D,
                              scale[rest], xp)[2]
        certified[rest] = kkt[rest] <= tol_certify
    return X, R, kkt, certified, n_iter


@dataclass
class BatchedComposition:
    """What :func:`sparse_composition_batched` returns (NumPy arrays; M shapes,
    K atoms, N vertices in d dimensions; lambda in model units)."""

    x: np.ndarray           # (M, K) coefficients
    e: np.ndarray           # (M, N, d) gross errors
    residual: np.ndarray    # (M, N, d) y - D x
    objective: np.ndarray   # (M,) sum s^2 (y - Dx - e)^2 + lambda1 |x|_1 + lambda2 |e|_1
    kkt: np.ndarray         # (M,) relative KKT violation of the full problem
    certified: np.ndarray   # (M,) bool: kkt <= the tolerance after the batched solve
    solved_alone: np.ndarray  # (M,) bool: the answer is the single-shape solver's
    n_iter: np.ndarray      # (M,) batched iterations
    lambda1: np.ndarray     # (M,)
    lambda2: np.ndarray     # (M,)


def _per_shape(name, value, M):
    v = np.asarray(value, dtype=np.float64)
    if v.ndim == 0:
        v = np.full(M, float(v))
    if v.shape != (M,) or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"{name} must be a finite number > 0 or {M} of them (one per shape); "
                         f"got {np.array2string(np.asarray(value), threshold=6)}")
    return v


def sparse_composition_batched(shapes, dictionary, weights=None, *, lambda1="auto",
                               lambda2, alpha1=ALPHA1, tol=1e-10, max_iter=100, max_add=8,
                               chunk_size=None, solve_alone=True):
    """Exact SSC-L1 solves of many shapes in the model frame, batched.

    The problem of :func:`sparse_composition` (``method='l1'``, no reweighting)
    for every shape, solved together (see the module notes) so that a GPU
    dictionary (``backend='cupy'``) runs it as large array operations. Each
    answer is checked against the KKT conditions of its own problem; the
    optimum is the single-shape solver's.

    Parameters
    ----------
    shapes : array_like, shape (M, N, d)
        Observed shapes, aligned to the model frame (no alignment is done).
    dictionary : ShapeDictionary
    weights : array_like, shape (N,), optional
        Visibility/confidence per vertex, shared by every shape (``s``; the
        objective weights are ``s**2``). Shapes with their own weights are
        solved by :func:`sparse_shape_composition_many`.
    lambda1 : float, array of shape (M,), or 'auto'
        'auto': ``2 alpha1 max|D^T S^2 y|`` per shape, as the single solver.
    lambda2 : float or array of shape (M,)
        L1 weight of the gross errors (no automatic choice here: it takes
        extra solves per shape).
    alpha1 : float
        Relative weight of an automatic lambda1.
    tol : float
        A shape is certified when its relative KKT violation is at most ``tol``.
    max_iter : int
        Batched Newton iterations.
    max_add : int
        Atoms joining a shape's working set per iteration.
    chunk_size : int, optional
        Shapes per batch (memory: about ``10 * chunk_size * N * d`` doubles;
        default 4096 on a GPU, 64 on the CPU).
    solve_alone : bool
        Solve shapes the batch did not certify again with the single-shape
        solver (cold start) and keep its answer where its objective is lower.
        Either way ``kkt`` says how far the answer kept is from optimal: the
        single solver too can stop short of its tolerance (``max_iter``).

    Returns
    -------
    BatchedComposition
    """
    from ..backend import to_numpy

    dic = dictionary
    if not isinstance(dic, ShapeDictionary):
        raise TypeError(f"dictionary must be a ShapeDictionary, got {type(dic).__name__}")
    Y = np.asarray(shapes, dtype=np.float64)
    want = (dic.n_points, dic.n_dims)
    if Y.ndim != 3 or Y.shape[1:] != want:
        raise ValueError(f"shapes has shape {Y.shape}; expected (M, {want[0]}, {want[1]})")
    if not np.all(np.isfinite(Y)):
        bad = int(np.flatnonzero(~np.isfinite(Y).all(axis=(1, 2)))[0])
        raise ValueError(f"shapes[{bad}] contains NaN or infinite coordinates")
    M = Y.shape[0]
    s = _check_vertex_weights(weights, dic.n_points)
    if isinstance(lambda2, str):
        raise ValueError(f"lambda2={lambda2!r} is not supported here: give a number > 0 "
                         "(sparse_shape_composition_many chooses it per shape)")
    lam2 = _per_shape("lambda2", lambda2, M)
    auto1 = isinstance(lambda1, str)
    if auto1 and lambda1 != "auto":
        raise ValueError(f"lambda1={lambda1!r} is invalid: expected 'auto' or numbers > 0")
    lam1 = None if auto1 else _per_shape("lambda1", lambda1, M)
    check_number("alpha1", alpha1, 0, 1, low_open=True)
    check_number("tol", tol, 0, 1, low_open=True)
    check_number("max_iter", max_iter, 1, integer=True)
    check_number("max_add", max_add, 1, dic.n_atoms, integer=True)
    gpu = dic.backend == "cupy"
    if chunk_size is None:
        chunk_size = 4096 if gpu else 64
    check_number("chunk_size", chunk_size, 1, integer=True)
    xp = dic.xp
    K = dic.n_atoms
    out = {"x": np.zeros((M, K)), "e": np.zeros((M,) + want), "r": np.zeros((M,) + want),
           "obj": np.zeros(M), "kkt": np.zeros(M), "it": np.zeros(M)}
    cert = np.zeros(M, dtype=bool)
    alone = np.zeros(M, dtype=bool)
    lam1_all = np.zeros(M)
    w = xp.asarray(np.repeat(s * s, dic.n_dims))
    GW = dic.weighted_gram(w)
    D = dic.D
    for lo in range(0, M, chunk_size):
        hi = min(lo + chunk_size, M)
        Z = xp.asarray(Y[lo:hi].reshape(hi - lo, -1))
        C = (Z * w) @ D
        l1 = 2.0 * alpha1 * xp.abs(C).max(axis=1) if auto1 else xp.asarray(lam1[lo:hi])
        l2 = xp.asarray(lam2[lo:hi])
        X, R, kkt, ok, it = solve_l1_batched_core(D, GW, Z, C, w, 0.5 * l1, 0.5 * l2,
                                                  tol_certify=tol, max_iter=max_iter,
                                                  max_add=max_add, xp=xp, backend=dic.backend)
        E = soft_threshold(R, _tau(w, 0.5 * l2[:, None], xp))
        obj = (w * (R - E) ** 2).sum(axis=1) + l1 * xp.abs(X).sum(axis=1) + \
            l2 * xp.abs(E).sum(axis=1)
        sl = slice(lo, hi)
        out["x"][sl] = to_numpy(X)
        out["e"][sl] = to_numpy(E).reshape(hi - lo, *want)
        out["r"][sl] = to_numpy(R).reshape(hi - lo, *want)
        out["obj"][sl] = to_numpy(obj)
        out["kkt"][sl] = to_numpy(kkt)
        out["it"][sl] = to_numpy(it)
        cert[sl] = to_numpy(ok)
        lam1_all[sl] = to_numpy(l1)
    if solve_alone:
        for m in np.flatnonzero(~cert):
            z = xp.asarray(Y[m].ravel())
            sol = solve_l1(dic, z, w, float(lam1_all[m]), float(lam2[m]), tol=tol)
            if not sol.objective < out["obj"][m] and np.isfinite(out["obj"][m]):
                continue            # the single solver did no better: the batch's answer stays
            out["x"][m] = to_numpy(sol.x)
            out["e"][m] = to_numpy(sol.e).reshape(want)
            out["r"][m] = to_numpy(sol.residual).reshape(want)
            out["obj"][m] = sol.objective
            out["kkt"][m] = sol.kkt
            alone[m] = True
    return BatchedComposition(out["x"], out["e"], out["r"], out["obj"], out["kkt"], cert, alone,
                              out["it"].astype(np.int64), lam1_all, lam2)
