"""Means of the blocks of a 3-D image (the downsampled image of the whole-scan
placement search).

Input: ``a`` (Z, Y, X), any integer or floating dtype; ``f`` (3,) block size in
voxels along z, y, x (each >= 1). The image is cut to ``n = shape // f``
blocks per axis (a partial block at the far end is left out) and each block's
mean returned: (n_z, n_y, n_x) float32, accumulated in double precision.

* :func:`block_mean_numpy` -- reference: a reshape and NumPy's float64 mean;
* :func:`block_mean_numba` -- Numba twin, one pass over the image's rows,
  parallel over the output's planes. For an integer image both sums are exact
  (below 2^53), so both twins give the same float32 means bit for bit; for a
  floating image they sum in different orders and may differ in the last bit.

On the 512 x 512 x 300 int16 ct512 CT with 4 mm blocks (4 x 7 x 6 voxels) NumPy's
float32 mean over the reshaped axes, which placement used before, took about
0.24 s and the Numba twin about 0.024 s on 2 cores, the same values
(``bench/bench_smoothing.py`` times both).
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except Exception:  # pragma: no cover
    numba = None


def _check(a, f):
    a = np.asarray(a)
    if a.ndim != 3:
        raise ValueError(f"a must be a 3-D image, got shape {a.shape}")
    if a.dtype.kind not in "iuf" or (a.dtype.kind == "f" and a.dtype.itemsize < 4):
        a = a.astype(np.float32)            # bool, float16 (Numba sums neither)
    elif not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))   # a big-endian array (Numba: native only)
    f = np.asarray(f)
    if f.shape != (3,) or f.dtype.kind not in "iu" or np.any(f < 1):
        raise ValueError(f"f must be 3 integers >= 1 (block size z, y, x), got {f!r}")
    f = f.astype(np.int64)
    return a, f, np.array(a.shape) // f         # 0 along an axis shorter than its block


def block_mean_numpy(a, f):
    """Reference (module docstring)."""
    a, f, n = _check(a, f)
    a = a[:n[0] * f[0], :n[1] * f[1], :n[2] * f[2]]
    blocks = a.reshape(n[0], f[0], n[1], f[1], n[2], f[2])
    return blocks.mean((1, 3, 5), dtype=np.float64).astype(np.float32)


if numba is not None:
    @numba.njit(parallel=True, cache=True)
    def _block_sums(a, f0, f1, f2, n0, n1, n2):  # pragma: no cover - jitted
        out = np.zeros((n0, n1, n2))
        for i in numba.prange(n0):
            for di in range(f0):
                for j in range(n1):
                    for dj in range(f1):
                        row = a[i * f0 + di, j * f1 + dj]
                        for k in range(n2):
                            s = 0.0
                            for dk in range(f2):
                                s += row[k * f2 + dk]
                            out[i, j, k] += s
        return out


def block_mean_numba(a, f):
    """Numba twin of :func:`block_mean_numpy` (module docstring)."""
    if numba is None:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    a, f, n = _check(a, f)
    sums = _block_sums(a, f[0], f[1], f[2], n[0], n[1], n[2])
    return (sums / float(f[0] * f[1] * f[2])).astype(np.float32)
