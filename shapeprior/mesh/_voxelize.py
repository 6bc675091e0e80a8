"""Closed mesh -> label mask on a volume's grid (ray casting along index z).

The mesh is mapped into continuous voxel indices of the target grid first,
so any spacing, origin and (oblique, flipped) direction is handled exactly.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _crossings(V, F, x0, x1, y0, y1):  # pragma: no cover - jitted
    nx, ny = x1 - x0 + 1, y1 - y0 + 1
    cap = 16
    zs = np.empty((nx * ny, cap))
    cnt = np.zeros(nx * ny, dtype=np.int64)
    eps = 1.234567e-7   # ray offset: never exactly through a vertex or edge
    for f in range(F.shape[0]):
        a, b, c = V[F[f, 0]], V[F[f, 1]], V[F[f, 2]]
        lo_x = max(int(np.ceil(min(a[0], b[0], c[0]))), x0)
        hi_x = min(int(np.floor(max(a[0], b[0], c[0]))), x1)
        lo_y = max(int(np.ceil(min(a[1], b[1], c[1]))), y0)
        hi_y = min(int(np.floor(max(a[1], b[1], c[1]))), y1)
        det = (b[1] - c[1]) * (a[0] - c[0]) + (c[0] - b[0]) * (a[1] - c[1])
        if det == 0.0:
            continue
        for ix in range(lo_x, hi_x + 1):
            px = ix + eps
            for iy in range(lo_y, hi_y + 1):
                py = iy + 2 * eps
                l1 = ((b[1] - c[1]) * (px - c[0]) + (c[0] - b[0]) * (py - c[1])) / det
                l2 = ((c[1] - a[1]) * (px - c[0]) + (a[0] - c[0]) * (py - c[1])) / det
                l3 = 1.0 - l1 - l2
                if l1 < 0 or l2 < 0 or l3 < 0:
                    continue
                z = l1 * a[2] + l2 * b[2] + l3 * c[2]
                k = (ix - x0) * ny + (iy - y0)
                if cnt[k] == zs.shape[1]:
                    grown = np.empty((zs.shape[0], zs.shape[1] * 2))
                    grown[:, : zs.shape[1]] = zs
                    zs = grown
                zs[k, cnt[k]] = z
                cnt[k] += 1
    return zs, cnt


@numba.njit(cache=True)
def _fill(buf, zs, cnt, ny, z0, z1):  # pragma: no cover - jitted
    """Mark the voxels between crossing pairs of each ray in ``buf`` (x, y, z
    over the mesh's box: a ray's voxels are contiguous there, where the
    volume's (z, y, x) array puts them a slice apart)."""
    for k in range(cnt.shape[0]):
        n = cnt[k]
        if n < 2:
            continue
        z = np.sort(zs[k, :n])
        kx = k // ny
        ky = k % ny
        for p in range(0, n - 1, 2):
            lo = max(int(np.ceil(z[p])), z0)
            hi = min(int(np.floor(z[p + 1])), z1)
            for iz in range(lo, hi + 1):
                buf[kx, ky, iz - z0] = 1


def voxelize(verts, faces, volume):
    """Mask (``volume.array.shape``, uint8) of voxel centres inside the mesh.

    Parameters
    ----------
    verts : ndarray, shape (V, 3)
        Closed, consistently oriented mesh in physical mm (LPS).
    faces : ndarray, shape (F, 3)
    volume : Volume
        Target grid.
    """
    V = volume.physical_to_index(verts)          # continuous (x, y, z) indices
    nz, ny, nx = volume.array.shape
    out = np.zeros((nz, ny, nx), dtype=np.uint8)
    x0 = max(int(np.floor(V[:, 0].min())), 0)
    x1 = min(int(np.ceil(V[:, 0].max())), nx - 1)
    y0 = max(int(np.floor(V[:, 1].min())), 0)
    y1 = min(int(np.ceil(V[:, 1].max())), ny - 1)
    if x1 < x0 or y1 < y0:
        return out
    z0 = max(int(np.floor(V[:, 2].min())), 0)
    z1 = min(int(np.ceil(V[:, 2].max())), nz - 1)
    if z1 < z0:
        return out
    zs, cnt = _crossings(np.ascontiguousarray(V), np.ascontiguousarray(faces, dtype=np.int64),
                         x0, x1, y0, y1)
    buf = np.zeros((x1 - x0 + 1, y1 - y0 + 1, z1 - z0 + 1), dtype=np.uint8)
    _fill(buf, zs, cnt, y1 - y0 + 1, z0, z1)
    out[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1] = buf.transpose(2, 1, 0)
    return out
