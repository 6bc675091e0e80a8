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

On the 'cupy' backend the crop is copied to the GPU once and smoothed there
(``cupyx.scipy.ndimage``); the samplers then read it in place.
"""

from __future__ import annotations

import numpy as np

from ._sampler import NormalSampler, intensity_scale

TRUNCATE = 4.0      # Gaussian support in sigmas (scipy's default)
SLACK_MM = 20.0     # extra margin so that small mesh motion needs no new crop


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
        self._box = None            # (lo, hi) inclusive voxel bounds, zyx
        self._sampler = None
        self.n_crops = 0

    def _required_box(self, verts, reach_mm, slack_mm):
        vol = self.vol
        sp = vol.spacing[::-1]                                  # zyx
        idx = vol.physical_to_index(verts)[:, ::-1]             # zyx continuous
        margin = (reach_mm + slack_mm + TRUNCATE * self.sigma_mm) / sp + 2
        shape = np.array(vol.array.shape)
        lo = np.clip(np.floor(idx.min(0) - margin), 0, shape - 1).astype(int)
        hi = np.clip(np.ceil(idx.max(0) + margin), 0, shape - 1).astype(int)
        hi = np.maximum(hi, np.minimum(lo + 1, shape - 1))     # at least 2 voxels per axis
        lo = np.minimum(lo, hi - 1)
        return lo, hi

    def sampler(self, verts, reach_mm, slack_mm=SLACK_MM):
        """A :class:`NormalSampler` valid for samples within ``reach_mm`` of
        ``verts`` (recrops and resmooths when they leave the current region;
        a new region reaches ``slack_mm`` further, for the motion to come)."""
        lo, hi = self._required_box(verts, reach_mm, 0.0)
        if self._box is not None and np.all(lo >= self._box[0]) and np.all(hi <= self._box[1]):
            return self._sampler
        lo, hi = self._required_box(verts, reach_mm, slack_mm)
        self._box = (lo, hi)
        self._sampler = self._build(lo, hi)
        self.n_crops += 1
        return self._sampler

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
            from scipy import ndimage

            img = (a.astype(np.float32) - np.float32(off)) / np.float32(sc)
            if self.sigma_mm > 0:
                img = ndimage.gaussian_filter(img, sig, truncate=TRUNCATE, mode="reflect")
        return NormalSampler(sub, img, self.backend)
