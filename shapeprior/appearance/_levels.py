"""The image the boundary search samples, per resolution level.

Each level of the coarse-to-fine schedule searches a Gaussian-smoothed copy of
the normalised image. Smoothing a whole 512 x 512 x 300 CT for every level
would cost far more than the search itself, so a level smooths only a
region of interest around the mesh: the mesh's bounding box, grown by the
search reach, the filter's support (``truncate`` sigmas) and a slack that
lets the mesh move without a new crop. When the mesh leaves the region the
level crops and smooths again. Inside the region the values are those of the
whole-image filter (the filter support is inside the crop); at the image's
own border both reflect the same way.

On the CPU the separable filter runs one axis at a time: on the 'numba'
backend the ``gaussian_smooth`` kernel (parallel over planes), on 'numpy'
scipy's filter with each pass split into slabs along another axis over a few
threads (scipy's filters release the GIL). Both give scipy's
``gaussian_filter`` bit for bit: a 1-D pass treats every line on its own,
and the kernel sums in scipy's order. On the 'cupy' backend the crop is
copied to the GPU once and smoothed there (``cupyx.scipy.ndimage``); the
samplers then read it in place.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..backend import kernel
from ._sampler import NormalSampler, intensity_scale

TRUNCATE = 4.0      # Gaussian support in sigmas (scipy's default)
#: how far (mm) a new region reaches beyond what the mesh needs now, so that the
#: mesh can move without a new crop. The values inside a region do not depend on
#: it, only the time does (the same label maps at 0, 5, 10, 15 and 20 mm). Summed
#: over the ct512 kidney fits (seeded, seeded 10 mm off, no seed), the example CT
#: and hippocampus MRs, 15 mm smoothed the least: a smaller slack crops again when
#: the placement's positions near a seed move on to the fit, a larger one smooths
#: more voxels at once (``bench/bench_region_slack.py``, results/region_slack.json;
#: it was 20 mm)
SLACK_MM = 15.0
#: smoothed regions a level keeps (most recently used first): the placement
#: hypotheses of a fit without a seed each have their own, so that going from
#: one to the next does not crop and smooth again
MAX_REGIONS = 6
#: most threads of one smoothing, and the fewest voxels worth splitting
SMOOTH_THREADS = 4
SMOOTH_SPLIT_VOXELS = 1 << 18


def smooth_threads() -> int:
    """Threads for :func:`gaussian_filter`: the CPUs this process may use, at
    most :data:`SMOOTH_THREADS` (one inside :func:`~shapeprior.backend.single_threaded`)."""
    from ..backend import thread_budget

    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:                     # pragma: no cover - macOS, Windows
        n = os.cpu_count() or 1
    budget = thread_budget()
    return max(1, min(SMOOTH_THREADS, n, budget or n))


def gaussian_filter(img, sigma, truncate=TRUNCATE, threads=None):
    """``scipy.ndimage.gaussian_filter(img, sigma, truncate=truncate,
    mode='reflect')`` of a 3-D float array, the same values, in place.

    Parameters
    ----------
    img : ndarray, shape (Z, Y, X), float32 or float64
        Smoothed in place and returned.
    sigma : sequence of 3 float
        Gaussian sigma per axis in voxels (an axis with sigma 0 is not filtered).
    threads : int, optional
        Default :func:`smooth_threads`; 1 calls scipy directly.
    """
    from scipy import ndimage

    threads = smooth_threads() if threads is None else int(threads)
    if threads < 2 or img.size < SMOOTH_SPLIT_VOXELS:
        ndimage.gaussian_filter(img, sigma, truncate=truncate, mode="reflect", output=img)
        return img
    with ThreadPoolExecutor(threads, thread_name_prefix="shapeprior-smooth") as pool:
        for axis, s in enumerate(sigma):
            if s <= 1e-15:                     # scipy's own test for an unfiltered axis
                continue
            split = 1 if axis == 0 else 0      # slabs across the filtered axis
            edges = np.linspace(0, img.shape[split], threads + 1).astype(int)

            def run(k, axis=axis, s=s, split=split, edges=edges):
                sl = [slice(None)] * img.ndim
                sl[split] = slice(edges[k], edges[k + 1])
                part = img[tuple(sl)]
                ndimage.gaussian_filter1d(part, s, axis=axis, truncate=truncate,
                                          mode="reflect", output=part)

            list(pool.map(run, range(threads)))
    return img


class LevelImage:
    """Normalised, smoothed image around the mesh, for one sigma.

    Parameters
    ----------
    vol : Volume
    normalisation : {'ct', 'percentile'}
    sigma_mm : float
        Gaussian sigma in mm (0: no smoothing).
    backend : {'numpy', 'numba', 'cupy'}
    scale : tuple, optional
        ``(offset, scale)`` of :func:`intensity_scale`, computed once per
        image and shared by the levels.
    """

    def __init__(self, vol, normalisation, sigma_mm, backend, scale=None):
        self.vol = vol
        self.sigma_mm = float(sigma_mm)
        self.backend = backend
        self.scale = scale or intensity_scale(vol, normalisation)
        self._regions = []          # (lo, hi, sampler): inclusive voxel bounds, zyx
        self.n_crops = 0

    def _required_box(self, verts, reach_mm, slack_mm):
        vol = self.vol
        sp = vol.spacing[::-1]                                  # zyx
        # continuous indices as three contiguous rows: NumPy reduces an (N, 3)
        # array over its long axis 3 values at a time (0.6 against 0.05 ms for
        # the 10,800 points of a placement's candidates; the same extremes)
        rows = np.ascontiguousarray(vol.physical_to_index(verts).T[::-1])   # zyx
        margin = (reach_mm + slack_mm + TRUNCATE * self.sigma_mm) / sp + 2
        shape = np.array(vol.array.shape)
        lo = np.clip(np.floor(rows.min(1) - margin), 0, shape - 1).astype(int)
        hi = np.clip(np.ceil(rows.max(1) + margin), 0, shape - 1).astype(int)
        hi = np.maximum(hi, np.minimum(lo + 1, shape - 1))     # at least 2 voxels per axis
        lo = np.minimum(lo, hi - 1)
        return lo, hi

    def sampler(self, verts, reach_mm, slack_mm=None):
        """A :class:`NormalSampler` valid for samples within ``reach_mm`` of
        ``verts``: the most recently used kept region that holds them, else a
        new crop, smoothed, that reaches ``slack_mm`` further for the motion to
        come (default :data:`SLACK_MM`; up to :data:`MAX_REGIONS` are kept)."""
        if slack_mm is None:
            slack_mm = SLACK_MM
        lo, hi = self._required_box(verts, reach_mm, 0.0)
        for i, (rlo, rhi, sampler) in enumerate(self._regions):
            if np.all(lo >= rlo) and np.all(hi <= rhi):
                self._regions.insert(0, self._regions.pop(i))
                return sampler
        lo, hi = self._required_box(verts, reach_mm, slack_mm)
        sampler = self._build(lo, hi)
        self._regions = [(lo, hi, sampler)] + self._regions[:MAX_REGIONS - 1]
        self.n_crops += 1
        return sampler

    def _build(self, lo, hi):
        sub = self.vol.crop(lo, hi + 1)
        off, sc = self.scale
        a = sub.array
        sig = self.sigma_mm / sub.spacing[::-1]
        if self.backend == "cupy":
            import cupy as cp
            from cupyx.scipy import ndimage as cnd

            img = (cp.asarray(a, dtype=cp.float32) - cp.float32(off)) / cp.float32(sc)
            if self.sigma_mm > 0:
                img = cnd.gaussian_filter(img, tuple(sig), truncate=TRUNCATE, mode="reflect")
        else:
            img = (a.astype(np.float32) - np.float32(off)) / np.float32(sc)
            if self.sigma_mm > 0 and self.backend == "numba":
                # a small crop (a hippocampus MR's) on the calling thread: waking
                # Numba's other threads took up to 25 ms where the filter takes 1
                kernel("gaussian_smooth", "numba")(
                    img, sig, TRUNCATE, threads=1 if img.size < SMOOTH_SPLIT_VOXELS else None)
            elif self.sigma_mm > 0:
                gaussian_filter(img, sig)
        return NormalSampler(sub, img, self.backend)
