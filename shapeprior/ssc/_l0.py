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

The alternation is the ``trimmed_omp`` kernel (``kernels/trimmed_omp.py``: a
NumPy/CuPy reference and a compiled Numba twin). Its OMP reads the Gram of the
kept rows column by column from a :class:`TrimmedGram`, which follows the
trimmed set from round to round by the rows that joined and left, and
``b = D^T W z`` of the kept rows is moved the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import kernel


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


def omp_gram(H, b, k, xp=np, atom_tol=1e-12):
    """Batch-OMP: greedy k-atom least squares from the Gram ``H`` and ``b``.

    Returns x of shape (K,). Stops early when no atom correlates any more.
    """
    from shapeprior_kernels import omp_columns_numpy

    return omp_columns_numpy(lambda j: H[:, j], xp.diag(H), b, k, atom_tol)


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
    of trimmed rows that changes a little at a time: the state the
    ``trimmed_omp`` kernels keep from call to call.

    Only what the OMP asks for is held: ``diag(H)`` and the columns of the
    atoms it has selected, for the set ``rows``. Moving to another set
    updates them from the rows that joined and left (``|delta| K`` work per
    held column instead of ``|O| K``); a new atom's column is computed from
    the set's rows. ``state`` holds the arrays
    (``shapeprior_kernels.new_state``) in two slots: the current set's, and
    the one before the last jump to a far set, which the later rounds of an
    alignment round come back near. Trimming rounds move O by a few rows, and
    consecutive alignment rounds end near each other's sets, so one object
    serves every round of a shape (the dictionary keeps it for its weights,
    :meth:`ShapeDictionary.trimmed_gram`). The values equal the direct
    products up to rounding.

    Parameters
    ----------
    dic : ShapeDictionary
    w : array, shape (n,)
        Row weights.
    """

    def __init__(self, dic, w):
        from shapeprior_kernels import new_state

        xp = dic.xp
        self.xp, self.D, self.w = xp, dic.D, w
        self.GW = dic.weighted_gram(w)
        self.state = new_state(w.shape[0], self.GW.shape[0], xp)
        self.state[1][:] = xp.diag(self.GW)

    @property
    def rows(self):
        """The trimmed rows, (n,) bool."""
        return self.state[0][int(self.state[4][0])]

    @property
    def diag(self):
        """``diag(H)``, (K,)."""
        return self.state[1][int(self.state[4][0])]

    def set_rows(self, rows):
        """Make ``rows`` (bool, (n,)) the trimmed set."""
        from shapeprior_kernels import trimmed_gram_set_rows

        trimmed_gram_set_rows(self.D, self.w, self.GW, rows, *self.state)

    def column(self, j):
        """Column ``j`` of H for the current set."""
        from shapeprior_kernels import trimmed_gram_column

        rows, _, cols, held, slot = self.state
        return trimmed_gram_column(self.D, self.w, self.GW, j, rows, cols, held, slot)


def solve_l0(dic, z, w, k, threshold=None, max_outlier_fraction=0.5, max_iter=50,
             threshold_factor=2.5, outliers_init=None, c=None):
    """Trimmed OMP. ``threshold`` is a per-vertex residual norm in shape units;
    ``None`` uses ``threshold_factor`` times the median visible residual norm
    (re-estimated each round). ``outliers_init`` (N,) bool warm-starts the
    trimmed set (e.g. from the previous alignment round). The alternation is
    the ``trimmed_omp`` kernel of the dictionary's backend. ``c`` is
    ``D^T W z`` when the caller has it (from the shape's moments under the
    round's alignment, :meth:`ShapeDictionary.correlation`)."""
    xp = dic.xp
    d = dic.n_dims
    tg = dic.trimmed_gram(w)
    if c is None:
        c = dic.DF.T @ (w * z)
    init = xp.zeros(dic.n_points, dtype=bool) if outliers_init is None else \
        xp.asarray(outliers_init, dtype=bool)
    x, r, out_v, thr, it, converged, cycled, capped = kernel("trimmed_omp", dic.backend)(
        dic.D, dic.DF, tg.GW, c, z, w, int(k), d,
        float("nan") if threshold is None else float(threshold), float(threshold_factor),
        float(max_outlier_fraction), int(max_iter), init, *tg.state)
    visible = w.reshape(dic.n_points, d).max(axis=1) > 0
    e = xp.where(xp.repeat(out_v & visible, d), r, 0.0)
    obj = float(xp.sum(w * (r - e) ** 2))
    return L0Solution(x, e, r, obj, thr, it, converged, cycled, capped)
