"""Dictionary learning for large shape sets: K-SVD and online updates.

``fit`` runs K-SVD (Aharon, Elad & Bruckstein 2006) with Batch-OMP sparse
coding; ``partial_fit`` adds new shapes without rebuilding, by the online
block-coordinate update of Mairal, Bach, Ponce & Sapiro (ICML 2009) on the
running statistics A = sum x x^T and B = sum y x^T. The number of atoms is the
speed/accuracy knob of dictionary-SSC.
"""

from __future__ import annotations

import numpy as np

from ..ssc import omp_gram_many


def _codes(D, Y, k):
    return omp_gram_many(D.T @ D, D.T @ Y, k)


class DictionaryLearner:
    """Learn ``n_atoms`` unit-norm atoms that code each shape with at most
    ``n_nonzero`` of them.

    Parameters
    ----------
    n_atoms : int
    n_nonzero : int
    n_iter : int
        K-SVD iterations in :meth:`fit`.
    seed : int

    Attributes
    ----------
    components_ : ndarray, shape (n_features, n_atoms)
    error_ : list of float
        Relative representation error after each K-SVD iteration.
    """

    def __init__(self, n_atoms=50, n_nonzero=5, n_iter=10, seed=0):
        self.n_atoms = n_atoms
        self.n_nonzero = n_nonzero
        self.n_iter = n_iter
        self.seed = seed

    def _check(self, Y):
        Y = np.asarray(Y, dtype=float)
        if Y.ndim == 3:
            Y = Y.reshape(Y.shape[0], -1)
        if Y.ndim != 2 or not np.all(np.isfinite(Y)):
            raise ValueError("shapes must be a finite (M, N, 3) or (M, 3N) array")
        return Y.T  # (features, samples)

    def fit(self, shapes):
        Y = self._check(shapes)
        n, M = Y.shape
        if not 1 <= self.n_atoms <= M:
            raise ValueError(f"n_atoms={self.n_atoms} must be in [1, {M}] (number of shapes)")
        if not 1 <= self.n_nonzero <= self.n_atoms:
            raise ValueError(f"n_nonzero={self.n_nonzero} must be in [1, n_atoms={self.n_atoms}]")
        rng = np.random.default_rng(self.seed)
        D = Y[:, rng.choice(M, self.n_atoms, replace=False)].copy()
        D /= np.linalg.norm(D, axis=0)
        ynorm = np.linalg.norm(Y)
        self.error_ = []
        for _ in range(self.n_iter):
            X = _codes(D, Y, self.n_nonzero)
            for j in range(self.n_atoms):
                users = np.flatnonzero(X[j])
                if users.size == 0:
                    # replace a dead atom by the worst-represented shape
                    res = np.linalg.norm(Y - D @ X, axis=0)
                    D[:, j] = Y[:, int(np.argmax(res))] / np.linalg.norm(Y[:, int(np.argmax(res))])
                    continue
                E = Y[:, users] - D @ X[:, users] + np.outer(D[:, j], X[j, users])
                u, s, vt = np.linalg.svd(E, full_matrices=False)
                D[:, j] = u[:, 0]
                X[j, users] = s[0] * vt[0]
            self.error_.append(float(np.linalg.norm(Y - D @ X) / ynorm))
        X = _codes(D, Y, self.n_nonzero)
        self.components_ = D
        self.A_ = X @ X.T
        self.B_ = Y @ X.T
        self.n_seen_ = M
        return self

    def partial_fit(self, shapes, n_sweeps=3):
        """Add shapes (M', N, 3) to a fitted dictionary without refitting."""
        if not hasattr(self, "components_"):
            return self.fit(shapes)
        Y = self._check(shapes)
        D = self.components_
        if Y.shape[0] != D.shape[0]:
            raise ValueError(f"new shapes have {Y.shape[0]} coordinates, the dictionary {D.shape[0]}")
        X = _codes(D, Y, self.n_nonzero)
        self.A_ += X @ X.T
        self.B_ += Y @ X.T
        # atoms as contiguous rows: each block-coordinate step reads and writes one
        Dt, Bt, A = np.ascontiguousarray(D.T), np.ascontiguousarray(self.B_.T), self.A_
        for _ in range(n_sweeps):
            for j in range(Dt.shape[0]):
                ajj = A[j, j]
                if ajj <= 1e-12:
                    continue
                u = (Bt[j] - A[j] @ Dt) / ajj + Dt[j]
                Dt[j] = u / max(np.linalg.norm(u), 1.0)
        self.components_ = np.ascontiguousarray(Dt.T)
        self.n_seen_ += Y.shape[1]
        return self

    def grow(self, shapes, n_new):
        """Add up to ``n_new`` atoms: the new shapes (M', N, 3) worst represented by
        the current atoms, unit-normalised (a dictionary started on few shapes
        reaches its requested size as shapes arrive). Their statistics start
        at zero; :meth:`partial_fit` then learns them."""
        Y = self._check(shapes)
        D = self.components_
        n_new = int(min(n_new, Y.shape[1]))
        if n_new <= 0:
            return self
        res = np.linalg.norm(Y - D @ _codes(D, Y, min(self.n_nonzero, D.shape[1])), axis=0)
        pick = np.argsort(-res)[:n_new]
        new = Y[:, pick] / np.linalg.norm(Y[:, pick], axis=0)
        k = D.shape[1]
        self.components_ = np.concatenate([D, new], axis=1)
        A = np.zeros((k + n_new, k + n_new))
        A[:k, :k] = self.A_
        self.A_ = A
        self.B_ = np.concatenate([self.B_, np.zeros((self.B_.shape[0], n_new))], axis=1)
        self.n_atoms = k + n_new
        return self

    def transform(self, shapes):
        """Sparse codes (M, n_atoms) of shapes."""
        return _codes(self.components_, self._check(shapes), self.n_nonzero).T

    def reconstruction_error(self, shapes):
        Y = self._check(shapes)
        X = _codes(self.components_, Y, self.n_nonzero)
        return float(np.linalg.norm(Y - self.components_ @ X) / np.linalg.norm(Y))
