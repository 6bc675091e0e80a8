"""Nearest cloud point from a neighbour list (the template fit's closest points).

A query point ``i`` keeps the ``k`` cloud points that were nearest to it when
a KD-tree was last asked, ``cand[i]`` (nearest first), and ``reach[i]``, the
distance to the next one then. Since then the query point or the cloud has
moved by at most ``moved[i]``, so every cloud point outside the list is still
at least ``reach[i] - moved[i]`` away (triangle inequality). The nearest point
of the list is therefore the nearest of the whole cloud when its distance
plus ``moved[i]`` is below ``reach[i]`` (less ``slack * reach[i]`` for
rounding); otherwise the caller asks the tree again. This is the neighbour
list with a skin of molecular dynamics: a list of ``k`` points outlives a
list of two (the nearest and the second) by many small steps.

Input: ``q`` (n, 3) query points, ``cloud`` (m, 3), ``cand`` (n, k) integer
indices into ``cloud``, ``reach`` and ``moved`` (n,). Returns ``(idx (n,)
int64, ok (n,) bool)``: the nearest point of each list (the first in list
order on ties) and whether it is certified.

* :func:`nearest_in_list_numpy` -- NumPy reference: gathers the (n, k, 3)
  candidate coordinates;
* :func:`nearest_in_list_numba` -- Numba twin, one query point at a time, no
  temporaries. Both sum the squared coordinate differences in the same order:
  equal bit for bit.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except Exception:  # pragma: no cover
    numba = None


def _check(q, cloud, cand, reach, moved):
    q = np.ascontiguousarray(q, dtype=np.float64)
    cloud = np.ascontiguousarray(cloud, dtype=np.float64)
    cand = np.ascontiguousarray(cand, dtype=np.int64)
    reach = np.ascontiguousarray(reach, dtype=np.float64)
    moved = np.ascontiguousarray(moved, dtype=np.float64)
    n = q.shape[0]
    if q.ndim != 2 or cloud.ndim != 2 or q.shape[1] != cloud.shape[1] or cand.ndim != 2 \
            or cand.shape[0] != n or cand.shape[1] < 1 or reach.shape != (n,) \
            or moved.shape != (n,):
        raise ValueError(f"q (n, d), cloud (m, d), cand (n, k >= 1), reach and moved (n,) "
                         f"expected, got {q.shape}, {cloud.shape}, {cand.shape}, "
                         f"{reach.shape}, {moved.shape}")
    return q, cloud, cand, reach, moved


def nearest_in_list_numpy(q, cloud, cand, reach, moved, slack=1e-9):
    """NumPy reference (module docstring)."""
    q, cloud, cand, reach, moved = _check(q, cloud, cand, reach, moved)
    diff = cloud[cand] - q[:, None, :]                    # (n, k, d)
    d2 = diff[:, :, 0] * diff[:, :, 0]
    for c in range(1, q.shape[1]):
        d2 = d2 + diff[:, :, c] * diff[:, :, c]
    j = np.argmin(d2, axis=1)
    rows = np.arange(q.shape[0])
    best = np.sqrt(d2[rows, j])
    return cand[rows, j], best + moved + slack * reach < reach


if numba is not None:
    @numba.njit(cache=True, nogil=True)
    def _nearest_in_list_nb(q, cloud, cand, reach, moved, slack):  # pragma: no cover - jitted
        n, k = cand.shape
        d = q.shape[1]
        idx = np.empty(n, dtype=np.int64)
        ok = np.empty(n, dtype=np.bool_)
        for i in range(n):
            bj = 0
            bd = np.inf
            for a in range(k):
                p = cand[i, a]
                s = (cloud[p, 0] - q[i, 0]) * (cloud[p, 0] - q[i, 0])
                for c in range(1, d):
                    s = s + (cloud[p, c] - q[i, c]) * (cloud[p, c] - q[i, c])
                if s < bd:
                    bd = s
                    bj = p
            idx[i] = bj
            ok[i] = np.sqrt(bd) + moved[i] + slack * reach[i] < reach[i]
        return idx, ok


def nearest_in_list_numba(q, cloud, cand, reach, moved, slack=1e-9):
    """Numba twin of :func:`nearest_in_list_numpy` (the same results, bit for bit)."""
    if numba is None:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    q, cloud, cand, reach, moved = _check(q, cloud, cand, reach, moved)
    return _nearest_in_list_nb(q, cloud, cand, reach, moved, float(slack))


# --------------------------------------------------------------------------
# the k nearest cloud points of each query point (the lists themselves)
# --------------------------------------------------------------------------

#: cells of the Numba twin's grid: about this many cloud points per cell that
#: a surface filling the cloud's box crosses
GRID_POINTS_PER_CELL = 4.0
#: and at most this many cells (a query point far outside the cloud's box is
#: clamped onto it; its search goes on outward from there)
GRID_MAX_CELLS = 1 << 21


def _check_cloud(cloud):
    cloud = np.ascontiguousarray(cloud, dtype=np.float64)
    if cloud.ndim != 2 or cloud.shape[1] != 3 or not len(cloud):
        raise ValueError(f"cloud (m >= 1, 3) expected, got {cloud.shape}")
    return cloud


def _check_queries(q, k, m):
    """The query points (n, 3) and ``k`` of a search of a cloud of ``m`` points
    (the cloud itself is checked once, by its index)."""
    q = np.ascontiguousarray(q, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != 3:
        raise ValueError(f"q (n, 3) expected, got {q.shape}")
    k = int(k)
    if not 1 <= k <= m:
        raise ValueError(f"k={k} is outside [1, {m}] (the cloud's points)")
    return q, k


def knn_numpy(cloud, q, k):
    """Reference: the ``k`` nearest cloud points of each query point by a
    KD-tree (SciPy). Returns ``(dist (n, k), idx (n, k) int64)``, nearest
    first."""
    return knn_index_numpy(cloud).knn(q, k)


class _TreeIndex:
    def __init__(self, cloud):
        from scipy.spatial import cKDTree

        self.cloud = _check_cloud(cloud)
        # (uncompacted leaves of 32 answer the same, faster for a cloud that a
        # template fit moves between calls)
        self.tree = cKDTree(self.cloud, leafsize=32, balanced_tree=False, compact_nodes=False)

    def knn(self, q, k):
        q, k = _check_queries(q, k, len(self.cloud))
        d, i = self.tree.query(q, k=k)
        return d.reshape(len(q), k), i.reshape(len(q), k).astype(np.int64)


def knn_index_numpy(cloud):
    """Reference index of a fixed cloud: ``.knn(q, k)`` answers as
    :func:`knn_numpy` (a KD-tree built once, asked many times)."""
    return _TreeIndex(cloud)


if numba is not None:
    @numba.njit(cache=True, nogil=True)
    def _bounds_nb(cloud):  # pragma: no cover - jitted
        """The cloud's smallest and largest coordinate on each axis (NumPy's
        ``min(axis=0)`` and ``max(axis=0)`` in one pass)."""
        lo = cloud[0].copy()
        hi = cloud[0].copy()
        for p in range(1, cloud.shape[0]):
            for a in range(3):
                x = cloud[p, a]
                if x < lo[a]:
                    lo[a] = x
                if x > hi[a]:
                    hi[a] = x
        return lo, hi

    @numba.njit(cache=True, nogil=True)
    def _in_order_nb(cloud, order):  # pragma: no cover - jitted
        """``cloud[order]``."""
        out = np.empty((order.shape[0], 3))
        for s in range(order.shape[0]):
            for a in range(3):
                out[s, a] = cloud[order[s], a]
        return out

    @numba.njit(cache=True, nogil=True)
    def _grid_nb(cloud, lo, h, dims):  # pragma: no cover - jitted
        """Counting sort of the cloud's points by cell: (start (cells + 1,), order)."""
        m = cloud.shape[0]
        ncell = dims[0] * dims[1] * dims[2]
        cell = np.empty(m, dtype=np.int64)
        count = np.zeros(ncell + 1, dtype=np.int64)
        for p in range(m):
            c = 0
            for a in range(3):
                t = int((cloud[p, a] - lo[a]) / h)
                t = min(max(t, 0), dims[a] - 1)
                c = c * dims[a] + t
            cell[p] = c
            count[c + 1] += 1
        for c in range(ncell):
            count[c + 1] += count[c]
        fill = count[:-1].copy()
        order = np.empty(m, dtype=np.int64)
        for p in range(m):
            order[fill[cell[p]]] = p
            fill[cell[p]] += 1
        return count, order

    @numba.njit(cache=True, nogil=True)
    def _knn_grid_nb(cs, q, k, lo, h, dims, start, order, qorder):  # pragma: no cover - jitted
        """``cs``: the cloud in cell order (``cloud[order]``), so that a cell's
        points lie together in memory; the query points are taken in
        ``qorder`` (by home cell), so that neighbouring queries read the same
        cells."""
        n = q.shape[0]
        out_d = np.empty((n, k))
        out_i = np.empty((n, k), dtype=np.int64)
        bd = np.empty(k)
        bi = np.empty(k, dtype=np.int64)
        home = np.empty(3, dtype=np.int64)
        rmax = max(dims[0], max(dims[1], dims[2]))
        for jj in range(n):
            j = qorder[jj]
            filled = 0
            # the home cell (clamped onto the grid) and the query point's
            # distance to its nearest face: the points of shell r + 1 and
            # beyond are at least r * h + edge away
            edge = np.inf
            for a in range(3):
                t = int(np.floor((q[j, a] - lo[a]) / h))
                t = min(max(t, 0), dims[a] - 1)
                home[a] = t
                lo_a = lo[a] + t * h
                e = min(q[j, a] - lo_a, lo_a + h - q[j, a])
                edge = min(edge, max(e, 0.0))
            for r in range(rmax + 1):
                for c0 in range(max(home[0] - r, 0), min(home[0] + r, dims[0] - 1) + 1):
                    s0 = abs(c0 - home[0]) == r
                    for c1 in range(max(home[1] - r, 0), min(home[1] + r, dims[1] - 1) + 1):
                        s1 = s0 or abs(c1 - home[1]) == r
                        if s1:
                            c2s = range(max(home[2] - r, 0), min(home[2] + r, dims[2] - 1) + 1)
                            step = 1
                        else:           # only the two faces of the shell
                            c2s = range(home[2] - r, home[2] + r + 1)
                            step = 2 * r if r > 0 else 1
                        for c2 in range(c2s.start, c2s.stop, step):
                            if c2 < 0 or c2 >= dims[2]:
                                continue
                            cell = (c0 * dims[1] + c1) * dims[2] + c2
                            for s in range(start[cell], start[cell + 1]):
                                d2 = (cs[s, 0] - q[j, 0]) * (cs[s, 0] - q[j, 0])
                                d2 = d2 + (cs[s, 1] - q[j, 1]) * (cs[s, 1] - q[j, 1])
                                d2 = d2 + (cs[s, 2] - q[j, 2]) * (cs[s, 2] - q[j, 2])
                                if filled < k or d2 < bd[filled - 1]:
                                    # insertion into the sorted list (ties: first come first)
                                    t = filled if filled < k else k - 1
                                    while t > 0 and bd[t - 1] > d2:
                                        bd[t] = bd[t - 1]
                                        bi[t] = bi[t - 1]
                                        t -= 1
                                    bd[t] = d2
                                    bi[t] = order[s]
                                    if filled < k:
                                        filled += 1
                if filled == k:
                    bound = r * h + edge
                    if bd[k - 1] < bound * bound:
                        break
            for t in range(k):
                out_d[j, t] = np.sqrt(bd[t])
                out_i[j, t] = bi[t]
        return out_d, out_i


def knn_numba(cloud, q, k):
    """Numba twin of :func:`knn_numpy`: the cloud sorted into a grid of cells
    (:data:`GRID_POINTS_PER_CELL`, at most :data:`GRID_MAX_CELLS` cells), each
    query point searching shells of cells outward from its own until the k-th
    nearest is nearer than anything further out can be. The same neighbours and
    distances (bit for bit on the tests' clouds; the tree sums the squares in
    its own order, so a last-bit difference is possible elsewhere)."""
    return knn_index_numba(cloud).knn(q, k)


class _GridIndex:
    def __init__(self, cloud):
        if numba is None:  # pragma: no cover
            raise RuntimeError("numba is not installed")
        cloud = _check_cloud(cloud)
        if not np.isfinite(cloud).all():
            raise ValueError("the cloud holds non-finite coordinates")
        lo, hi = _bounds_nb(cloud)
        span = hi - lo
        # cells sized for a cloud on a surface (a mesh's vertices) that fills its
        # box: the box's faces' area shared out among the points; a flat or
        # collinear cloud gets cells no smaller than its longest side / 1024
        area = 2.0 * (span[0] * span[1] + span[1] * span[2] + span[2] * span[0])
        h = float(np.sqrt(area * GRID_POINTS_PER_CELL / (2.0 * len(cloud))))
        h = max(h, float(span.max()) / 1024.0, 1e-9)
        dims = np.maximum(np.ceil(span / h).astype(np.int64), 1)
        while int(np.prod(dims)) > GRID_MAX_CELLS:
            h *= 1.25
            dims = np.maximum(np.ceil(span / h).astype(np.int64), 1)
        self.cloud, self.lo, self.h, self.dims = cloud, lo, h, dims
        self.start, self.order = _grid_nb(cloud, lo, h, dims)
        self.cs = _in_order_nb(cloud, self.order)     # the cloud in cell order

    def knn(self, q, k):
        q, k = _check_queries(q, k, len(self.cloud))
        lo, h, dims = self.lo, self.h, self.dims
        cell = np.zeros(len(q), dtype=np.int64)
        for a in range(3):
            t = np.clip(np.floor((q[:, a] - lo[a]) / h), 0, dims[a] - 1).astype(np.int64)
            cell = cell * dims[a] + t
        return _knn_grid_nb(self.cs, q, k, lo, h, dims, self.start, self.order,
                            np.argsort(cell, kind="stable"))


def knn_index_numba(cloud):
    """Numba twin of :func:`knn_index_numpy`: the grid of :func:`knn_numba`
    built once, asked many times (the same answers as :func:`knn_numba`)."""
    return _GridIndex(cloud)
