"""Trilinear image samples along vertex normals.

For vertices ``v`` (N, 3) and unit normals ``n`` (N, 3) in physical mm, and
offsets ``t`` (M,) in mm, samples the image at the points ``v_i + t_m n_i``:
the inner loop of the boundary search (N x M points per iteration, millions
for a fine mesh on a CT). Points map to continuous voxel indices by the
affine ``index_xyz = A @ (p - origin)``; interpolation is trilinear with
edge clamping, i.e. ``scipy.ndimage.map_coordinates(order=1, mode='nearest')``.

* :func:`sample_normals_numpy` -- NumPy reference (via scipy.ndimage);
* :func:`sample_normals_numba` -- Numba twin, parallel over vertices, no
  (N, M, 3) point array;
* :func:`sample_normals_cupy` -- CUDA raw kernel (``normal_sampling.cu``),
  one thread per sample.

The image is indexed ``[z, y, x]`` (SimpleITK/NumPy order); results are
float64 of shape (N, M).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

try:
    import numba
except Exception:  # pragma: no cover
    numba = None

_CU_SOURCE = Path(__file__).with_name("normal_sampling.cu")


def _check(image, verts, normals, offsets, A, origin):
    if image.ndim != 3 or min(image.shape) < 2:
        raise ValueError(f"image must be 3-D with every size >= 2, got shape {image.shape}")
    verts = np.ascontiguousarray(verts, dtype=np.float64)
    normals = np.ascontiguousarray(normals, dtype=np.float64)
    if verts.ndim != 2 or verts.shape[1] != 3 or normals.shape != verts.shape:
        raise ValueError(f"verts and normals must be (N, 3), got {verts.shape}, {normals.shape}")
    offsets = np.ascontiguousarray(np.ravel(offsets), dtype=np.float64)
    A = np.ascontiguousarray(A, dtype=np.float64)
    origin = np.ascontiguousarray(origin, dtype=np.float64)
    if A.shape != (3, 3) or origin.shape != (3,):
        raise ValueError(f"A must be (3, 3) and origin (3,), got {A.shape}, {origin.shape}")
    return verts, normals, offsets, A, origin


def sample_normals_numpy(image, verts, normals, offsets, A, origin):
    """NumPy/scipy reference. Returns (N, M) float64."""
    from scipy import ndimage

    verts, normals, offsets, A, origin = _check(image, verts, normals, offsets, A, origin)
    pts = verts[:, None, :] + offsets[None, :, None] * normals[:, None, :]
    idx = (pts.reshape(-1, 3) - origin) @ A.T
    # float64 output without a float64 copy of the image (the search calls
    # this every iteration on the whole smoothed region)
    vals = ndimage.map_coordinates(np.asarray(image), [idx[:, 2], idx[:, 1], idx[:, 0]],
                                   order=1, mode="nearest", output=np.float64)
    return vals.reshape(len(verts), len(offsets))


if numba is not None:

    @numba.njit(cache=True, inline="always")
    def _lerp_axis(c, size):  # pragma: no cover
        if c <= 0.0:
            return 0, 0.0
        if c >= size - 1:
            return size - 2, 1.0
        i = int(np.floor(c))
        if i > size - 2:
            i = size - 2
        return i, c - i

    @numba.njit(parallel=True, cache=True)
    def _sample_numba(image, verts, normals, offsets, A, origin, out):  # pragma: no cover
        nz, ny, nx = image.shape
        for i in numba.prange(verts.shape[0]):
            for m in range(offsets.shape[0]):
                p0 = verts[i, 0] + offsets[m] * normals[i, 0] - origin[0]
                p1 = verts[i, 1] + offsets[m] * normals[i, 1] - origin[1]
                p2 = verts[i, 2] + offsets[m] * normals[i, 2] - origin[2]
                cx = A[0, 0] * p0 + A[0, 1] * p1 + A[0, 2] * p2
                cy = A[1, 0] * p0 + A[1, 1] * p1 + A[1, 2] * p2
                cz = A[2, 0] * p0 + A[2, 1] * p1 + A[2, 2] * p2
                ix, fx = _lerp_axis(cx, nx)
                iy, fy = _lerp_axis(cy, ny)
                iz, fz = _lerp_axis(cz, nz)
                c00 = image[iz, iy, ix] * (1 - fx) + image[iz, iy, ix + 1] * fx
                c01 = image[iz, iy + 1, ix] * (1 - fx) + image[iz, iy + 1, ix + 1] * fx
                c10 = image[iz + 1, iy, ix] * (1 - fx) + image[iz + 1, iy, ix + 1] * fx
                c11 = image[iz + 1, iy + 1, ix] * (1 - fx) + image[iz + 1, iy + 1, ix + 1] * fx
                c0 = c00 * (1 - fy) + c01 * fy
                c1 = c10 * (1 - fy) + c11 * fy
                out[i, m] = c0 * (1 - fz) + c1 * fz
        return out


def sample_normals_numba(image, verts, normals, offsets, A, origin):
    """Numba twin of :func:`sample_normals_numpy`."""
    if numba is None:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    verts, normals, offsets, A, origin = _check(image, verts, normals, offsets, A, origin)
    image = np.ascontiguousarray(image)
    if image.dtype not in (np.float32, np.float64):
        image = image.astype(np.float32)
    out = np.empty((len(verts), len(offsets)))
    return _sample_numba(image, verts, normals, offsets, A, origin, out)


_KERNELS = {}


def _kernel(dtype):
    import cupy as cp

    name = "sample_normals_f32" if dtype == np.float32 else "sample_normals_f64"
    if name not in _KERNELS:
        mod = cp.RawModule(code=_CU_SOURCE.read_text())
        _KERNELS[name] = mod.get_function(name)
    return _KERNELS[name]


def sample_normals_cupy(image, verts, normals, offsets, A, origin, threads=256):
    """CUDA version. ``image`` may already live on the GPU (a CuPy array, kept
    there between calls); the other arrays are small. Returns a CuPy (N, M)
    float64 array."""
    import cupy as cp

    if image.ndim != 3 or min(image.shape) < 2:
        raise ValueError(f"image must be 3-D with every size >= 2, got shape {image.shape}")
    img = cp.asarray(image)
    if img.dtype not in (cp.float32, cp.float64):
        img = img.astype(cp.float32)
    img = cp.ascontiguousarray(img)
    v = cp.ascontiguousarray(cp.asarray(verts, dtype=cp.float64))
    n = cp.ascontiguousarray(cp.asarray(normals, dtype=cp.float64))
    t = cp.ascontiguousarray(cp.asarray(offsets, dtype=cp.float64).ravel())
    # affine and origin as one (12,) array: A row-major, then origin
    geo = cp.asarray(np.concatenate([np.asarray(A, np.float64).ravel(),
                                     np.asarray(origin, np.float64).ravel()]))
    N, M = v.shape[0], t.shape[0]
    out = cp.empty((N, M), dtype=cp.float64)
    nz, ny, nx = img.shape
    total = N * M
    blocks = (total + threads - 1) // threads
    _kernel(np.dtype(img.dtype))((blocks,), (threads,),
                                 (img, v, n, t, geo, out, np.int32(nx), np.int32(ny),
                                  np.int32(nz), np.int32(N), np.int32(M)))
    return out
