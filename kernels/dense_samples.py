"""Points on a barycentric lattice of every triangle of a mesh (the template
fit's quality check: nearest-sample distances approximate point-to-surface
distances to within about edge / (2 * order)).

Each lattice point appears once: the vertices, then the ``order - 1``
interior points of each edge (shared by two triangles), then the interior
points of each triangle, in that order. Input: ``verts`` (V, 3), ``faces``
(F, 3), ``edges`` (E, 2) the mesh's edges each once, ``order`` >= 1 steps per
edge. Returns (V + E (order - 1) + F (order - 1)(order - 2) / 2, 3).

* :func:`dense_samples_numpy` -- NumPy reference (broadcast products);
* :func:`dense_samples_numba` -- Numba twin, point by point with the same
  products and sums in the same order: equal bit for bit.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except Exception:  # pragma: no cover
    numba = None


def _check(verts, faces, edges, order):
    verts = np.ascontiguousarray(verts, dtype=np.float64)
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    edges = np.ascontiguousarray(edges, dtype=np.int64)
    order = int(order)
    if verts.ndim != 2 or verts.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3 \
            or edges.ndim != 2 or edges.shape[1] != 2:
        raise ValueError(f"verts (V, 3), faces (F, 3) and edges (E, 2) expected, got "
                         f"{verts.shape}, {faces.shape}, {edges.shape}")
    if order < 1:
        raise ValueError(f"order={order} is invalid: expected an integer >= 1")
    for name, idx in (("faces", faces), ("edges", edges)):
        if idx.size and (idx.min() < 0 or idx.max() >= len(verts)):
            raise ValueError(f"{name} refer to vertices that do not exist")
    return verts, faces, edges, order


def dense_samples_numpy(verts, faces, edges, order=6):
    """NumPy reference (module docstring)."""
    v, f, edges, order = _check(verts, faces, edges, order)
    w = np.arange(1, order) / order                                   # (order-1,)
    a, b = v[edges[:, 0]], v[edges[:, 1]]
    on_edges = (a[:, None, :] * (1.0 - w)[None, :, None] + b[:, None, :] * w[None, :, None])
    ij = [(i, j) for i in range(1, order) for j in range(1, order - i)]
    bary = np.array([(i, j, order - i - j) for i, j in ij], dtype=float).reshape(-1, 3) / order
    inside = np.einsum("bk,fkd->fbd", bary, v[f])
    return np.concatenate([v, on_edges.reshape(-1, 3), inside.reshape(-1, 3)])


if numba is not None:
    @numba.njit(cache=True, nogil=True)
    def _dense_samples_nb(v, f, edges, order):  # pragma: no cover - jitted
        nv, ne, nf = v.shape[0], edges.shape[0], f.shape[0]
        inner = (order - 1) * (order - 2) // 2
        out = np.empty((nv + ne * (order - 1) + nf * inner, 3))
        out[:nv] = v
        at = nv
        for e in range(ne):
            a, b = edges[e, 0], edges[e, 1]
            for j in range(1, order):
                w = j / order
                for d in range(3):
                    out[at, d] = v[a, d] * (1.0 - w) + v[b, d] * w
                at += 1
        for t in range(nf):
            p0, p1, p2 = f[t, 0], f[t, 1], f[t, 2]
            for i in range(1, order):
                for j in range(1, order - i):
                    b0 = i / order
                    b1 = j / order
                    b2 = (order - i - j) / order
                    for d in range(3):
                        out[at, d] = b0 * v[p0, d] + b1 * v[p1, d] + b2 * v[p2, d]
                    at += 1
        return out


def dense_samples_numba(verts, faces, edges, order=6):
    """Numba twin of :func:`dense_samples_numpy` (the same points, bit for bit)."""
    if numba is None:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    return _dense_samples_nb(*_check(verts, faces, edges, order))
