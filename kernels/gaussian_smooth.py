"""Separable Gaussian smoothing of a 3-D image, in place (the level images of
the boundary search).

Input: ``img`` (Z, Y, X), C-ordered float32 or float64, smoothed in place and
returned; ``sigma`` (3,) per axis in voxels (an axis with sigma <= 1e-15 is
not filtered, as in SciPy); ``truncate``: the filter's radius in sigmas,
``int(truncate * sigma + 0.5)`` taps on each side. The border reflects
(SciPy's ``mode='reflect'``: d c b a | a b c d | d c b a).

* :func:`gaussian_smooth_numpy` -- reference: ``scipy.ndimage.gaussian_filter``
  (one axis after the other, each pass's result stored in ``img``'s dtype);
* :func:`gaussian_smooth_numba` -- Numba twin, parallel over planes. It takes
  SciPy's weights (``_weights``: the same formula) and SciPy's arithmetic for a
  symmetric filter: each output is, in double precision, the centre sample
  times the centre weight plus, from the outermost tap inward, the sum of the
  two samples at distance j times their weight; it is stored in ``img``'s dtype
  after each axis. Equal bit for bit (the tests compare random images,
  sigmas and truncations, lines shorter than the filter included). A pass
  along the last axis works on a transposed copy of each plane, so that every
  pass runs its innermost loop over contiguous samples (times against SciPy
  in ``bench/bench_smoothing.py``).
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except Exception:  # pragma: no cover
    numba = None

#: below this sigma (voxels) an axis is not filtered (SciPy's own test)
SIGMA_MIN = 1e-15


def _check(img, sigma):
    if not isinstance(img, np.ndarray) or img.ndim != 3 or not img.flags.c_contiguous \
            or not img.flags.writeable or img.dtype not in (np.float32, np.float64):
        raise ValueError("img must be a writeable C-ordered 3-D float32 or float64 array, got "
                         f"{getattr(img, 'dtype', type(img).__name__)} "
                         f"{getattr(img, 'shape', '')}")
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.shape != (3,) or not np.all(np.isfinite(sigma)) or np.any(sigma < 0):
        raise ValueError(f"sigma must be 3 finite numbers >= 0, got {sigma!r}")
    return sigma


def _weights(sigma, truncate):
    """SciPy's Gaussian weights for ``sigma`` voxels (``gaussian_filter1d``):
    ``2 r + 1`` of them, r = ``int(truncate * sigma + 0.5)``, summing to 1."""
    r = int(truncate * float(sigma) + 0.5)
    x = np.arange(-r, r + 1)
    phi = np.exp(-0.5 / (float(sigma) * float(sigma)) * x ** 2)
    return np.ascontiguousarray((phi / phi.sum())[::-1])


def gaussian_smooth_numpy(img, sigma, truncate=4.0):
    """Reference (module docstring): SciPy's ``gaussian_filter``, in place."""
    from scipy import ndimage

    sigma = _check(img, sigma)
    ndimage.gaussian_filter(img, sigma, truncate=truncate, mode="reflect", output=img)
    return img


if numba is not None:
    @numba.njit(cache=True, inline="always")
    def _reflect(p, n):  # pragma: no cover - jitted
        """Index of position ``p`` of a line of ``n`` samples under 'reflect'."""
        m = p % (2 * n)
        return m if m < n else 2 * n - 1 - m

    @numba.njit(cache=True, inline="always")
    def _filter_row(buf, w, i, acc):  # pragma: no cover - jitted
        """``acc`` = the filter at row ``i + r`` of ``buf`` (rows extended by r
        on each side), every column at once, in SciPy's order of sums."""
        r = (w.shape[0] - 1) // 2
        m = acc.shape[0]
        for k in range(m):
            acc[k] = buf[i + r, k] * w[r]
        for j in range(r, 0, -1):
            wj = w[r - j]
            for k in range(m):
                acc[k] += (buf[i + r - j, k] + buf[i + r + j, k]) * wj

    @numba.njit(cache=True, inline="always")
    def _filter_plane(plane, w):  # pragma: no cover - jitted
        """Filter a 2-D view (L, X) along its first axis, in place."""
        L, X = plane.shape
        r = (w.shape[0] - 1) // 2
        buf = np.empty((L + 2 * r, X))
        for p in range(-r, L + r):
            q = _reflect(p, L)
            for x in range(X):
                buf[p + r, x] = plane[q, x]
        acc = np.empty(X)
        for i in range(L):
            _filter_row(buf, w, i, acc)
            for x in range(X):
                plane[i, x] = acc[x]

    @numba.njit(parallel=True, cache=True)
    def _pass_z(img, w):  # pragma: no cover - jitted
        for y in numba.prange(img.shape[1]):
            _filter_plane(img[:, y, :], w)

    @numba.njit(parallel=True, cache=True)
    def _pass_y(img, w):  # pragma: no cover - jitted
        for z in numba.prange(img.shape[0]):
            _filter_plane(img[z], w)

    @numba.njit(parallel=True, cache=True)
    def _pass_x(img, w):  # pragma: no cover - jitted
        Z, Y, X = img.shape
        r = (w.shape[0] - 1) // 2
        idx = np.empty(X + 2 * r, dtype=np.int64)
        for p in range(-r, X + r):
            idx[p + r] = _reflect(p, X)
        for z in numba.prange(Z):
            buf = np.empty((X + 2 * r, Y))          # the plane transposed
            for y in range(Y):
                for p in range(X + 2 * r):
                    buf[p, y] = img[z, y, idx[p]]
            acc = np.empty(Y)
            for x in range(X):
                _filter_row(buf, w, x, acc)
                for y in range(Y):
                    img[z, y, x] = acc[y]


def gaussian_smooth_numba(img, sigma, truncate=4.0, threads=None):
    """Numba twin of :func:`gaussian_smooth_numpy` (module docstring).

    ``threads``: at most this many of Numba's threads (default: as many as the
    calling thread may use, ``numba.get_num_threads()``). One keeps a small
    image on the calling thread: waking the others can take longer than the
    whole filter."""
    if numba is None:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    sigma = _check(img, sigma)
    prev = numba.get_num_threads()
    if threads is not None:
        numba.set_num_threads(max(1, min(int(threads), prev)))
    try:
        for axis, s in enumerate(sigma):
            if s <= SIGMA_MIN:
                continue
            (_pass_z, _pass_y, _pass_x)[axis](img, _weights(s, truncate))
    finally:
        numba.set_num_threads(prev)
    return img
