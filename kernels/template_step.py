"""One non-rigid round of the template fit (model building's correspondence).

Each template vertex moves toward its closest target point (``fi``) and is
pulled by the target points whose closest template vertex it is (``bi``): the
two displacements averaged where both exist. The displacement field is smoothed
by ``k`` passes of ``d <- (d + L d) / 2`` (``L`` the row-stochastic mean of each
vertex's edge neighbours, as CSR arrays), the vertices move, and then relax
tangentially: half of ``L v - v`` with its component along the area-weighted
vertex normal removed (regular triangles without shrinking).

Input: ``v`` (n, 3) template vertices, ``tv`` (m, 3) target vertices, ``fi``
(n,) and ``bi`` (m,) closest-point indices, ``indptr``, ``indices``, ``data``
the CSR arrays of ``L``, ``k`` >= 0, ``faces`` (F, 3). Returns the new vertices
(n, 3).

* :func:`template_step_numpy` -- NumPy/SciPy reference (bincounts, a sparse
  product per pass);
* :func:`template_step_numba` -- Numba twin, the same sums in the same order
  (``bincount``'s, SciPy's CSR product's, the normals' corner by corner): equal
  bit for bit, without the temporaries.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except Exception:  # pragma: no cover
    numba = None


def _check(v, tv, fi, bi, indptr, indices, data, k, faces):
    v = np.ascontiguousarray(v, dtype=np.float64)
    tv = np.ascontiguousarray(tv, dtype=np.float64)
    fi = np.ascontiguousarray(fi, dtype=np.int64)
    bi = np.ascontiguousarray(bi, dtype=np.int64)
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    data = np.ascontiguousarray(data, dtype=np.float64)
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    n, m = len(v), len(tv)
    if v.ndim != 2 or v.shape[1] != 3 or tv.ndim != 2 or tv.shape[1] != 3 \
            or fi.shape != (n,) or bi.shape != (m,) or indptr.shape != (n + 1,) \
            or indices.shape != data.shape or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"v (n, 3), tv (m, 3), fi (n,), bi (m,), indptr (n + 1,), indices "
                         f"and data of one length, faces (F, 3) expected, got {v.shape}, "
                         f"{tv.shape}, {fi.shape}, {bi.shape}, {indptr.shape}, "
                         f"{indices.shape}, {data.shape}, {faces.shape}")
    for name, idx, top in (("fi", fi, m), ("bi", bi, n), ("indices", indices, n),
                           ("faces", faces, n)):
        if idx.size and (idx.min() < 0 or idx.max() >= top):
            raise ValueError(f"{name} holds indices outside [0, {top})")
    k = int(k)
    if k < 0:
        raise ValueError(f"k={k} is invalid: expected an integer >= 0")
    return v, tv, fi, bi, indptr, indices, data, k, faces


def template_step_numpy(v, tv, fi, bi, indptr, indices, data, k, faces):
    """NumPy/SciPy reference (module docstring)."""
    from scipy import sparse

    v, tv, fi, bi, indptr, indices, data, k, faces = _check(
        v, tv, fi, bi, indptr, indices, data, k, faces)
    n = len(v)
    L = sparse.csr_matrix((data, indices, indptr), shape=(n, n))
    fwd = tv[fi] - v
    acc = np.zeros_like(v)
    cnt = np.bincount(bi, minlength=n).astype(float)
    for c in range(3):
        acc[:, c] = np.bincount(bi, weights=tv[:, c] - v[bi, c], minlength=n)
    has = cnt > 0
    d = fwd.copy()
    d[has] = 0.5 * fwd[has] + 0.5 * acc[has] / cnt[has, None]
    for _ in range(k):
        d = 0.5 * d + 0.5 * (L @ d)
    v = v + d
    # area-weighted vertex normals: the face normals summed corner by corner
    a, b, c = (v[faces[:, j]] for j in range(3))
    fn = np.cross(b - a, c - a)
    idx = faces.T.ravel()
    vn = np.stack([np.bincount(idx, weights=np.tile(fn[:, j], 3), minlength=n)
                   for j in range(3)], axis=1)
    nrm = vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-300)
    lap = L @ v - v
    lap -= np.sum(lap * nrm, axis=1, keepdims=True) * nrm
    return v + 0.5 * lap


if numba is not None:
    @numba.njit(cache=True, nogil=True)
    def _mean_neighbours(indptr, indices, data, x, out):  # pragma: no cover - jitted
        """out = L @ x (SciPy's CSR product: each row's terms summed in order)."""
        for i in range(x.shape[0]):
            s0 = 0.0
            s1 = 0.0
            s2 = 0.0
            for jj in range(indptr[i], indptr[i + 1]):
                j = indices[jj]
                a = data[jj]
                s0 += a * x[j, 0]
                s1 += a * x[j, 1]
                s2 += a * x[j, 2]
            out[i, 0] = s0
            out[i, 1] = s1
            out[i, 2] = s2

    @numba.njit(cache=True, nogil=True)
    def _template_step_nb(v, tv, fi, bi, indptr, indices, data, k,
                          faces):  # pragma: no cover - jitted
        n, m = v.shape[0], tv.shape[0]
        acc = np.zeros((n, 3))
        cnt = np.zeros(n)
        for j in range(m):
            i = bi[j]
            cnt[i] += 1.0
            for c in range(3):
                acc[i, c] += tv[j, c] - v[i, c]
        d = np.empty((n, 3))
        for i in range(n):
            for c in range(3):
                f = tv[fi[i], c] - v[i, c]
                d[i, c] = 0.5 * f + 0.5 * acc[i, c] / cnt[i] if cnt[i] > 0 else f
        ld = np.empty((n, 3))
        for _ in range(k):
            _mean_neighbours(indptr, indices, data, d, ld)
            for i in range(n):
                for c in range(3):
                    d[i, c] = 0.5 * d[i, c] + 0.5 * ld[i, c]
        out = np.empty((n, 3))
        for i in range(n):
            for c in range(3):
                out[i, c] = v[i, c] + d[i, c]
        # area-weighted vertex normals, summed corner by corner as the bincounts do
        nf = faces.shape[0]
        fn = np.empty((nf, 3))
        for t in range(nf):
            p0, p1, p2 = faces[t, 0], faces[t, 1], faces[t, 2]
            e0 = out[p1, 0] - out[p0, 0]
            e1 = out[p1, 1] - out[p0, 1]
            e2 = out[p1, 2] - out[p0, 2]
            g0 = out[p2, 0] - out[p0, 0]
            g1 = out[p2, 1] - out[p0, 1]
            g2 = out[p2, 2] - out[p0, 2]
            fn[t, 0] = e1 * g2 - e2 * g1
            fn[t, 1] = e2 * g0 - e0 * g2
            fn[t, 2] = e0 * g1 - e1 * g0
        vn = np.zeros((n, 3))
        for corner in range(3):
            for t in range(nf):
                p = faces[t, corner]
                for c in range(3):
                    vn[p, c] += fn[t, c]
        _mean_neighbours(indptr, indices, data, out, ld)
        for i in range(n):
            s = vn[i, 0] * vn[i, 0] + vn[i, 1] * vn[i, 1] + vn[i, 2] * vn[i, 2]
            norm = max(np.sqrt(s), 1e-300)
            n0 = vn[i, 0] / norm
            n1 = vn[i, 1] / norm
            n2 = vn[i, 2] / norm
            l0 = ld[i, 0] - out[i, 0]
            l1 = ld[i, 1] - out[i, 1]
            l2 = ld[i, 2] - out[i, 2]
            dot = l0 * n0 + l1 * n1 + l2 * n2
            out[i, 0] = out[i, 0] + 0.5 * (l0 - dot * n0)
            out[i, 1] = out[i, 1] + 0.5 * (l1 - dot * n1)
            out[i, 2] = out[i, 2] + 0.5 * (l2 - dot * n2)
        return out


def template_step_numba(v, tv, fi, bi, indptr, indices, data, k, faces):
    """Numba twin of :func:`template_step_numpy` (the same vertices, bit for bit)."""
    if numba is None:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    return _template_step_nb(*_check(v, tv, fi, bi, indptr, indices, data, k, faces))
