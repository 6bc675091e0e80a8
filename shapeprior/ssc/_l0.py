"""L0 sparse composition: at most k atoms (Batch-OMP on the Gram) with gross
errors removed by per-vertex trimming (hard thresholding of residual norms).

Alternates
  1. x = OMP_k on the inlier rows (Gram ``D^T W D - D_O^T W_O D_O``),
  2. outlier vertices = those whose residual norm exceeds a threshold
     (and at most ``max_outlier_fraction`` of the visible vertices),
until the outlier set repeats: the last one (converged), or an earlier one (a
cycle, which further rounds would only go around; stopping there halved the
rounds on held-out KiTS kidneys at the same error, bench/README.md). ``e``
equals the residual on outlier vertices and 0 elsewhere, i.e. the prior fully
overrides trimmed vertices.

The OMP reads the Gram of the kept rows column by column from a
:class:`TrimmedGram`, which follows the trimmed set from round to round by the
rows that joined and left, and ``b = D^T W z`` of the kept rows is moved the
same way; each least-squares step solves the selected atoms' system directly
(least squares only when atoms repeat).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import to_numpy


@dataclass
class L0Solution:
    x: np.ndarray
    e: np.ndarray
    residual: np.ndarray
    objective: float       # sum_j w_j (z - Dx - e)_j^2 over the kept rows
    threshold: float       # per-vertex residual norm threshold used
    n_iter: int
    converged: bool
    cycled: bool = False   # stopped because the outlier set came back to an earlier one
    capped: bool = False   # the last round had more candidates than max_outlier_fraction allows


def _omp(column, diag, b, k, xp, atom_tol):
    """Batch-OMP given ``column(j) -> H[:, j]`` and ``diag(H)``."""
    K = b.shape[0]
    norm = xp.sqrt(xp.maximum(diag, 1e-300))
    scale = float(xp.max(xp.abs(b))) if K else 0.0
    S = []
    HS = xp.empty((K, min(k, K)))                   # the selected columns
    corr = b.copy()
    xs = xp.zeros(0)
    for _ in range(min(k, K)):
        score = xp.abs(corr) / norm
        if S:
            score[xp.asarray(S)] = -1.0
        j = int(xp.argmax(score))
        if float(xp.abs(corr[j])) <= atom_tol * max(scale, 1e-300):
            break
        HS[:, len(S)] = column(j)
        S.append(j)
        Sa = xp.asarray(S)
        H_SS, b_S = HS[Sa, :len(S)], b[Sa]
        try:                # symmetric positive definite unless atoms repeat
            xs = xp.linalg.solve(H_SS, b_S)
            ok = bool(xp.all(xp.isfinite(xs)))
        except np.linalg.LinAlgError:     # (CuPy raises NumPy's too)
            ok = False
        if not ok:
            xs = xp.linalg.lstsq(H_SS, b_S, rcond=None)[0]
        corr = b - HS[:, :len(S)] @ xs
    x = xp.zeros(K)
    if S:
        x[xp.asarray(S)] = xs
    return x


def omp_gram(H, b, k, xp=np, atom_tol=1e-12):
    """Batch-OMP: greedy k-atom least squares from the Gram ``H`` and ``b``.

    Returns x of shape (K,). Stops early when no atom correlates any more.
    """
    return _omp(lambda j: H[:, j], xp.diag(H), b, k, xp, atom_tol)


def omp_gram_many(G, C, k, atom_tol=1e-12):
    """Batch-OMP for many signals at once: ``omp_gram(G, C[:, m], k)`` for
    every column m of ``C``, vectorised over the signals (NumPy).

    Parameters
    ----------
    G : ndarray, shape (K, K)
        Gram matrix of the atoms.
    C : ndarray, shape (K, M)
        Atom correlations ``D^T Y`` of the M signals.
    k : int
        Atoms per signal at most.

    Returns
    -------
    X : ndarray, shape (K, M)
        Codes; each column equals ``omp_gram``'s for that signal (same greedy
        choices and stopping rule, least squares on the chosen atoms).
    """
    G = np.asarray(G, dtype=float)
    B = np.asarray(C, dtype=float).T                      # (M, K)
    M, K = B.shape
    X = np.zeros((K, M))
    if M == 0 or K == 0:
        return X
    norm = np.sqrt(np.maximum(np.diag(G), 1e-300))
    tol = atom_tol * np.maximum(np.abs(B).max(axis=1), 1e-300)
    corr = B.copy()
    S = np.zeros((M, 0), dtype=np.intp)
    xs = np.zeros((M, 0))
    live = np.ones(M, dtype=bool)
    rows = np.arange(M)
    for _ in range(min(k, K)):
        score = np.abs(corr) / norm
        score[rows[:, None], S] = -1.0
        j = np.argmax(score, axis=1)
        live &= np.abs(corr[rows, j]) > tol
        if not live.any():
            break
        idx = np.flatnonzero(live)
        # every signal gets a column; a stopped one keeps its solution and a 0 there
        S = np.concatenate([S, j[:, None]], axis=1)
        xs = np.concatenate([xs, np.zeros((M, 1))], axis=1)
        Sn = S[idx]                                           # (m, s)
        H = G[Sn[:, :, None], Sn[:, None, :]]                 # (m, s, s)
        b = B[idx[:, None], Sn]                               # (m, s)
        try:
            sol = np.linalg.solve(H, b[..., None])[..., 0]
        except np.linalg.LinAlgError:                         # a (near) dependent atom
            sol = np.stack([np.linalg.lstsq(h, v, rcond=None)[0] for h, v in zip(H, b)])
        xs[idx] = sol
        corr[idx] = B[idx] - np.einsum("msk,ms->mk", G[Sn], sol)
    np.add.at(X, (S, rows[:, None]), xs)
    return X


class TrimmedGram:
    """The Gram of the kept rows, ``H = D^T W D - D_O^T W_O D_O``, for a set O
    of trimmed rows that changes a little at a time.

    Only what the OMP asks for is held: ``diag(H)`` and the columns of the
    atoms it has selected, for the current set. Moving to another set updates
    them from the rows that joined and left (``|delta| K`` work per held
    column instead of ``|O| K``); a new atom's column is computed from the
    set's rows. Trimming rounds move O by a few rows, and consecutive
    alignment rounds end near each other's sets, so one object serves every
    round of a shape (the dictionary keeps it for its weights,
    :meth:`ShapeDictionary.trimmed_gram`). The values equal the direct
    products up to rounding.

    Parameters
    ----------
    dic : ShapeDictionary
    w : array, shape (n,)
        Row weights.
    """

    def __init__(self, dic, w):
        xp = dic.xp
        self.xp, self.D, self.w = xp, dic.D, w
        self.GW = dic.weighted_gram(w)
        self.rows = xp.zeros(w.shape[0], dtype=bool)
        self.diag = xp.diag(self.GW).copy()
        self.cols = {}
        self._Dr = None
        # the state before the last start from the full Gram: the first
        # trimmed set of an alignment round is far from the last one's final
        # set, its later sets come back near it
        self._saved = None

    def _move(self, idx, sign):
        """Move ``idx`` rows into (sign -1) or out of (sign +1) the trimmed set."""
        if idx.size == 0:
            return
        xp = self.xp
        Dr = self.D[idx]
        wr = self.w[idx]
        self.diag += sign * xp.sum(wr[:, None] * Dr * Dr, axis=0)
        if self.cols:
            J = list(self.cols)
            upd = Dr.T @ (wr[:, None] * Dr[:, J])
            for i, j in enumerate(J):
                self.cols[j] += sign * upd[:, i]

    def set_rows(self, rows):
        """Make ``rows`` (bool, (n,)) the trimmed set."""
        xp = self.xp
        change = int(xp.count_nonzero(rows != self.rows))
        if change == 0:
            return
        n_new = int(xp.count_nonzero(rows))
        if self._saved is not None and \
                int(xp.count_nonzero(rows != self._saved[0])) < min(change, n_new):
            here = (self.rows, self.diag, self.cols)
            self.rows, self.diag, self.cols = self._saved
            self._saved = here
        elif change > n_new:                       # cheaper from the full Gram
            if bool(xp.any(self.rows)):
                self._saved = (self.rows, self.diag, self.cols)
            self.rows = xp.zeros_like(rows)
            self.diag = xp.diag(self.GW).copy()
            self.cols = {}
        self._move(xp.flatnonzero(rows & ~self.rows), -1.0)
        self._move(xp.flatnonzero(self.rows & ~rows), 1.0)
        self.rows = rows.copy()
        self._Dr = None

    def column(self, j):
        """Column ``j`` of H for the current set."""
        got = self.cols.get(j)
        if got is None:
            if self._Dr is None:
                idx = self.xp.flatnonzero(self.rows)
                self._Dr = (self.D[idx], self.w[idx])
            Dr, wr = self._Dr
            got = self.GW[:, j] - Dr.T @ (wr * Dr[:, j])
            self.cols[j] = got
        return got


def solve_l0(dic, z, w, k, threshold=None, max_outlier_fraction=0.5, max_iter=50,
             threshold_factor=2.5, outliers_init=None):
    """Trimmed OMP. ``threshold`` is a per-vertex residual norm in shape units;
    ``None`` uses ``threshold_factor`` times the median visible residual norm
    (re-estimated each round). ``outliers_init`` (N,) bool warm-starts the
    trimmed set (e.g. from the previous alignment round)."""
    xp = dic.xp
    d = dic.n_dims
    N = dic.n_points
    tg = dic.trimmed_gram(w)
    GW = tg.GW
    wz = w * z
    c = dic.DF.T @ wz
    b_rows = xp.zeros(z.shape[0], dtype=bool)   # the rows b is computed for
    b = c
    wv = w.reshape(N, d).max(axis=1)
    visible = wv > 0
    n_vis = int(xp.count_nonzero(visible))
    out_v = xp.zeros(N, dtype=bool) if outliers_init is None else \
        xp.asarray(outliers_init, dtype=bool).copy()
    converged = cycled = False
    seen = {to_numpy(out_v).tobytes()}     # the outlier sets met so far
    thr = float("nan")
    it = 0
    x = xp.zeros(dic.n_atoms)
    capped = False
    for it in range(1, max_iter + 1):
        trim = xp.repeat(out_v & visible, d)
        if bool(xp.any(trim)):
            # b = c - D_O^T (w z)_O, moved with the rows that joined and left
            join = xp.flatnonzero(trim & ~b_rows)
            leave = xp.flatnonzero(b_rows & ~trim)
            if join.size + leave.size > int(xp.count_nonzero(trim)):
                b, join, leave = c, xp.flatnonzero(trim), join[:0]
            if join.size:
                b = b - dic.D[join].T @ wz[join]
            if leave.size:
                b = b + dic.D[leave].T @ wz[leave]
            b_rows = trim
            tg.set_rows(trim)
            x = _omp(tg.column, tg.diag, b, k, xp, 1e-12)
        else:
            x = omp_gram(GW, c, k, xp)
        r = z - dic.matvec(x)
        rn = xp.sqrt(xp.sum(r.reshape(N, d) ** 2, axis=1))
        if threshold is None:
            thr = threshold_factor * float(xp.median(rn[visible]))
        else:
            thr = float(threshold)
        cand = visible & (rn > thr)
        cap = int(max_outlier_fraction * n_vis)
        capped = int(xp.count_nonzero(cand)) > cap
        if capped:
            order = xp.argsort(-xp.where(visible, rn, -1.0))
            cand = xp.zeros(N, dtype=bool)
            cand[order[:cap]] = True
        if bool(xp.array_equal(cand, out_v)):
            converged = True
            break
        key = to_numpy(cand).tobytes()
        if key in seen:             # a cycle: the same sets would come round again
            cycled = True
            break
        seen.add(key)
        out_v = cand
    e = xp.where(xp.repeat(out_v & visible, d), r, 0.0)
    obj = float(xp.sum(w * (r - e) ** 2))
    return L0Solution(x, e, r, obj, thr, it, converged, cycled, capped)
