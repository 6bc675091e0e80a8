"""Prepared shape dictionary: D in two memory orders plus cached Gram matrices."""

from __future__ import annotations

import hashlib

import numpy as np

from ..backend import resolve_backend, xp_for


#: columns of ``D^T W D`` a solve on new weights typically visits (kidney
#: segmentation, 280 atoms: about 20 in a warm call, 107 in the cold start):
#: :meth:`ShapeDictionary.weighted_gram_partial` computes the whole weighted Gram
#: instead when that costs less
PARTIAL_COLUMNS = 64


class ShapeDictionary:
    """Aligned training shapes as SSC dictionary columns, with cached Grams.

    Parameters
    ----------
    atoms : array_like, shape (K, N, d)
        K aligned shapes of N corresponding points in d = 2 or 3 dimensions
        (the model frame; units as given, typically mm after GPA).
    mean : array_like, shape (N, d), optional
        Reference shape for the initial alignment (default: mean of atoms).
    backend : {'auto', 'numpy', 'numba', 'cupy'}, optional

    Notes
    -----
    Column k of ``D`` (shape ``(N*d, K)``) is ``atoms[k].ravel()``, so row
    ``i*d + c`` is coordinate ``c`` of vertex ``i``. ``D`` is kept in C order
    (fast row gathers for the outlier set) and Fortran order (fast column
    gathers for sparse ``D @ x``); ``D^T D`` is computed once, and ``D^T W D``
    once per distinct weight vector (last one cached).
    """

    def __init__(self, atoms, mean=None, backend=None):
        a = np.asarray(atoms, dtype=np.float64)
        if a.ndim != 3 or a.shape[2] not in (2, 3):
            raise ValueError(f"atoms must have shape (K, N, 2|3), got {a.shape}")
        if a.shape[0] < 1:
            raise ValueError("a dictionary needs at least one atom")
        if not np.all(np.isfinite(a)):
            raise ValueError("dictionary atoms contain NaN or infinite values")
        self.backend = resolve_backend(backend)
        xp = xp_for(self.backend)
        self.xp = xp
        self.n_atoms, self.n_points, self.n_dims = a.shape
        self.atoms = a
        m = a.mean(axis=0) if mean is None else np.asarray(mean, dtype=np.float64)
        if m.shape != a.shape[1:]:
            raise ValueError(f"mean must have shape {a.shape[1:]}, got {m.shape}")
        self.mean = m
        #: centroid size of the mean shape (the gauge of the alignment rounds), > 0
        self.mean_size = max(float(np.sqrt(np.sum((m - m.mean(0)) ** 2))), 1e-12)
        D = a.reshape(self.n_atoms, -1).T
        self.D = xp.ascontiguousarray(xp.asarray(D))
        self.DF = xp.asfortranarray(self.D)
        self.gram = self.DF.T @ self.DF
        self._wkey = None
        self._wgram = None
        self._pkey = None
        self._partial = None
        self._cols = (None, None)
        self._prepared = {}
        self._trimmed = None
        self._moments = (None, None)

    @property
    def n_rows(self) -> int:
        return self.n_points * self.n_dims

    def matvec(self, x, support=None):
        """``D @ x`` using only the columns in ``support`` (nonzeros of x)."""
        xp = self.xp
        if support is None:
            support = xp.flatnonzero(x)
        if support.size == 0:
            return xp.zeros(self.n_rows)
        if support.size > self.n_atoms // 2:
            return self.D @ x
        return self.DF[:, support] @ x[support]

    def weighted_gram(self, w):
        """``D^T diag(w) D`` for per-row weights ``w`` (shape (N*d,))."""
        xp = self.xp
        w0 = float(w[0])
        if bool(xp.all(w == w0)):
            return self.gram * w0
        key = _weight_key(w)
        if key != self._wkey:
            # update from D^T D over the rows whose weight is not 1, or build
            # directly from the rows with weight > 0, whichever is fewer rows
            diff = xp.flatnonzero(w != 1.0)
            pos = xp.flatnonzero(w > 0)
            if diff.size <= pos.size:
                Dd = self.D[diff]
                G = self.gram - Dd.T @ ((1.0 - w[diff])[:, None] * Dd)
            else:
                Dp = self.D[pos]
                G = Dp.T @ (w[pos][:, None] * Dp)
            self._wkey, self._wgram = key, G
        return self._wgram

    def prepare(self, shapes, s2, aligned):
        """Make the one pass over D that each SSC call starts with for many
        shapes at once (a matrix product reads D once for all of them, where
        one call per shape reads it once each: on a machine whose caches
        cannot hold D, that pass is bound by memory bandwidth).

        Parameters
        ----------
        shapes : sequence of ndarray, shape (N, d)
        s2 : sequence of ndarray, shape (N,)
            Per-vertex weights of each shape.
        aligned : bool
            True: :meth:`correlation_aligned` of each shape (SSC without
            alignment); False: :meth:`moments`.

        Later calls with the same shape and weights (compared by content)
        return the stored result; the next ``prepare`` replaces the store.
        """
        N, d = self.n_points, self.n_dims
        cols = [self._weighted(y, w) if aligned else self._moment_rhs(y, w)
                for y, w in zip(shapes, s2)]
        if not cols:
            self._prepared = {}
            return
        width = 1 if aligned else d * d + d
        rhs = np.concatenate([c.reshape(N * d, width) for c in cols], axis=1)
        out = self.DF.T @ self.xp.asarray(rhs)
        xp = self.xp
        self._prepared = {
            (aligned, _pair_key(y, w)): xp.ascontiguousarray(
                out[:, i * width:(i + 1) * width].reshape(-1) if aligned
                else out[:, i * width:(i + 1) * width])
            for i, (y, w) in enumerate(zip(shapes, s2))}

    def _lookup(self, aligned, y, s2):
        if not self._prepared:
            return None
        return self._prepared.get((aligned, _pair_key(y, s2)))

    @staticmethod
    def _weighted(y, s2):
        return (np.asarray(s2, dtype=np.float64)[:, None] * y).reshape(-1)

    def _moment_rhs(self, y, s2):
        N, d = self.n_points, self.n_dims
        V = np.zeros((N, d, d * d + d))
        for a in range(d):
            V[:, a, a * d:(a + 1) * d] = s2[:, None] * y
            V[:, a, d * d + a] = s2
        return V.reshape(N * d, d * d + d)

    def correlation_aligned(self, y, s2):
        """``D^T W z`` for the shape itself (``z = y.ravel()``, no alignment):
        (K,), one matrix-vector pass over D (or the stored result of
        :meth:`prepare`)."""
        got = self._lookup(True, y, s2)
        if got is not None:
            return got
        return self.DF.T @ self.xp.asarray(self._weighted(y, s2))

    def moments(self, y, s2):
        """Weighted first moments of every atom against a shape, for
        ``D^T W z`` under any linear-plus-translation map ``z = y L^T + t``.

        Parameters
        ----------
        y : ndarray, shape (N, d)
        s2 : ndarray, shape (N,)
            Per-vertex weights (``w`` repeats them over the d coordinates).

        Returns
        -------
        ndarray, shape (K, d*d + d)
            ``M[k, a*d + b] = sum_i s2_i atom_k[i, a] y[i, b]`` and
            ``M[k, d*d + a] = sum_i s2_i atom_k[i, a]``; with them
            ``D^T W z = M[:, :d*d] @ L.ravel() + M[:, d*d:] @ t``
            (:meth:`correlation`). One pass over D serves every alignment
            round of a shape; the last result is kept, so that calls for the
            same shape and weights (SSC-L0 and the SSC-L1 solve it starts
            from) share it.
        """
        got = self._lookup(False, y, s2)
        if got is not None:
            return got
        key = _pair_key(y, s2)
        last_key, last = self._moments       # one read: another thread may replace it
        if last_key == key:
            return last
        # (V^T D)^T: with 12 columns BLAS runs this layout about 1.4 times faster
        # than D^T V, the same numbers (one BLAS thread, 2562 vertices x 280 atoms:
        # 1.9 against 2.7 ms, bench/results/kernel_revision.json)
        got = self.xp.ascontiguousarray((self.xp.asarray(self._moment_rhs(y, s2)).T @ self.DF).T)
        self._moments = (key, got)
        return got

    def correlation(self, moments, transform):
        """``D^T W z`` for ``z = transform(y)`` from :meth:`moments` of y (K,)."""
        xp = self.xp
        coef = np.concatenate([np.asarray(transform.linear, dtype=float).ravel(),
                               np.asarray(transform.translation, dtype=float)])
        return moments @ xp.asarray(coef)

    def columns(self, support):
        """``D[:, support]`` as a C-ordered (n, |support|) block, kept for
        the last support asked for (consecutive solves of a shape share it)."""
        xp = self.xp
        key = _host(support).tobytes()
        if key != self._cols[0]:
            self._cols = (key, xp.ascontiguousarray(self.DF[:, support]))
        return self._cols[1]

    def weighted_gram_partial(self, w):
        """``D^T diag(w) D`` filled column by column as a solver needs it.

        Returns ``(GW, known)``: a (K, K) buffer and a (K,) bool mask of the
        columns (and, by symmetry, rows) that hold their values. The
        ``huber_lasso`` kernels fill the columns of their working set
        (``D^T (w * D[:, S])``, one pass over D for all of them), so a solve
        on a new weight vector costs ``n K |S|`` instead of ``n K^2``: in a
        segmentation every iteration brings new confidences, and |S| is
        about 25 of 280 atoms. The buffer is kept for the last weight vector
        (the alignment rounds and reweighted solves of one call share it).
        Where few rows have a weight other than 1 (or above 0), the whole
        weighted Gram comes complete instead (:meth:`weighted_gram`, an update
        of ``D^T D`` by those rows; :data:`PARTIAL_COLUMNS`).
        """
        xp = self.xp
        w0 = float(w[0])
        if bool(xp.all(w == w0)):      # complete: the kernels only read it
            if w0 == 1.0:
                return self.gram, xp.ones(self.n_atoms, dtype=bool)
            return self.gram * w0, xp.ones(self.n_atoms, dtype=bool)
        key = _weight_key(w)
        if key == self._wkey:
            return self._wgram, xp.ones(self.n_atoms, dtype=bool)
        if key != self._pkey:
            # few rows away from weight 1 (or with weight > 0): the whole Gram by
            # a low-rank update (rows x K^2) costs less than the columns a solve
            # visits (n x K x PARTIAL_COLUMNS)
            rows = min(int(xp.count_nonzero(w != 1.0)), int(xp.count_nonzero(w > 0)))
            if rows * self.n_atoms <= PARTIAL_COLUMNS * self.n_rows:
                return self.weighted_gram(w), xp.ones(self.n_atoms, dtype=bool)
            self._pkey = key
            self._partial = (xp.zeros((self.n_atoms, self.n_atoms)),
                             xp.zeros(self.n_atoms, dtype=bool))
        return self._partial

    def trimmed_gram(self, w):
        """The :class:`~shapeprior.ssc._l0.TrimmedGram` of SSC-L0 for row
        weights ``w`` (n,), kept for the last weight vector: the trimming
        and alignment rounds of a shape share it."""
        from ._l0 import TrimmedGram

        key = _weight_key(w)
        if self._trimmed is None or self._trimmed[0] != key:
            self._trimmed = (key, TrimmedGram(self, w))
        return self._trimmed[1]

    def view(self):
        """This dictionary with its own caches: the arrays (``D``, ``DF``,
        ``gram``, atoms, mean) are shared, read-only, and the per-call caches
        (weighted Gram, working-set columns) start empty, so that threads can
        solve against one dictionary at once, one view each."""
        v = object.__new__(ShapeDictionary)
        v.__dict__.update(self.__dict__)
        v._wkey = v._wgram = v._pkey = v._partial = None
        v._cols = (None, None)
        v._prepared = {}
        v._trimmed = None
        v._moments = (None, None)
        return v

    def to(self, backend):
        """Copy of this dictionary on another backend."""
        return ShapeDictionary(self.atoms, self.mean, backend=backend)


def _weight_key(w):
    """Content key of a weight vector (the cached Gram belongs to it)."""
    return hashlib.sha1(np.ascontiguousarray(_host(w)).tobytes()).hexdigest()


def _pair_key(y, s2):
    """Content key of a shape and its weights (a stored pass belongs to them)."""
    h = hashlib.sha1(np.ascontiguousarray(y, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(s2, dtype=np.float64).tobytes())
    return h.hexdigest()


def _host(a):
    return a.get() if type(a).__module__.startswith("cupy") else a
