"""Boundary appearance along vertex normals.

Learned model (training image + label pairs): at every vertex, the mean and
variance of the normalised derivative profile along the normal (intensity
differences between ``2 * half + 1`` samples ``step`` mm apart, divided by
their summed magnitude). Searching a new image, each
vertex tries offsets along its normal and takes the one whose profile is
closest (Mahalanobis, diagonal) to its mean profile; the distance also sets
the vertex's confidence, which becomes its SSC weight.

Fallback (no training images, e.g. a model built from CT label maps): the
offset with the strongest intensity edge of the expected polarity
(``inside_brighter``) inside an optional intensity window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def intensity_scale(vol, mode):
    """``(offset, scale)`` that map the image to a comparable intensity scale,
    ``(I - offset) / scale``.

    ``'percentile'``: offset p1, scale p99 - p1 (whole image), for MR;
    ``'ct'``: HU / 1000.
    """
    if mode == "ct":
        return 0.0, 1000.0
    if mode == "percentile":
        lo, hi = np.percentile(vol.array, [1, 99])
        return float(lo), max(float(hi - lo), 1e-6)
    raise ValueError(f"intensity normalisation {mode!r} is not 'percentile' or 'ct'")


def normalise_intensity(vol, mode):
    """Float32 copy of the image in the scale of :func:`intensity_scale`."""
    off, sc = intensity_scale(vol, mode)
    return ((vol.array.astype(np.float32) - np.float32(off)) / np.float32(sc))


class NormalSampler:
    """Trilinear samples of one image along vertex normals, on a backend.

    Parameters
    ----------
    vol : Volume
        Grid (spacing, origin, direction) of ``image``.
    image : ndarray, shape (nz, ny, nx)
        Intensities on that grid (NumPy, or CuPy for the 'cupy' backend, which
        keeps the image on the GPU between calls).
    backend : {'numpy', 'numba', 'cupy'}
        Resolved backend name (see :func:`shapeprior.backend.resolve_backend`):
        scipy's ``map_coordinates``, the Numba kernel or the CUDA kernel of
        :mod:`shapeprior_kernels.normal_sampling`; all give the same values.
    """

    def __init__(self, vol, image, backend="numpy"):
        self.A = np.linalg.inv(vol.index_to_physical_matrix)
        self.origin = np.asarray(vol.origin, dtype=np.float64)
        self.image = image
        self.backend = backend
        if backend == "numba":
            from shapeprior_kernels import sample_normals_numba as fn
        elif backend == "cupy":
            from shapeprior_kernels import sample_normals_cupy as fn
        else:
            from shapeprior_kernels import sample_normals_numpy as fn
        self._fn = fn

    def __call__(self, verts, normals, offsets):
        """Samples at ``verts + offsets[m] * normals``: (N, M) float64 on the host.
        ``offsets`` may be any shape (M = its size)."""
        from ..backend import to_numpy

        return to_numpy(self._fn(self.image, verts, normals, np.ravel(offsets), self.A,
                                 self.origin))


@dataclass
class ProfileModel:
    """Per-vertex normal profile features. ``mean``/``var``: (N, 2*half)."""

    mean: np.ndarray
    var: np.ndarray
    step: float
    half: int
    normalisation: str

    def to_arrays(self):
        return {"profile_mean": self.mean, "profile_var": self.var}

    def to_meta(self):
        return {"step_mm": self.step, "half": self.half, "normalisation": self.normalisation,
                "features": "normalised derivative profile"}

    @classmethod
    def from_arrays(cls, arrays, meta):
        return cls(arrays["profile_mean"], arrays["profile_var"], float(meta["step_mm"]),
                   int(meta["half"]), meta["normalisation"])


def _offsets(half, step):
    return np.arange(-half, half + 1) * step


def profile_features(prof):
    """Normalised derivative profiles (Cootes et al.): differences along the
    normal divided by their summed magnitude, so that neither the intensity
    level nor the contrast of an image shifts the match. (..., L) -> (..., L-1)."""
    d = np.diff(prof, axis=-1)
    return d / (np.sum(np.abs(d), axis=-1, keepdims=True) + 1e-6)


def learn_profiles(cases, faces, step=0.75, half=4, normalisation="percentile", backend="numpy"):
    """Learn a :class:`ProfileModel` from ``[(volume, verts_physical)]``."""
    from ..mesh import Surface

    offs = _offsets(half, step)
    profs = []
    for vol, v in cases:
        img = normalise_intensity(vol, normalisation)
        n = Surface(v, faces).vertex_normals()
        profs.append(profile_features(NormalSampler(vol, img, backend)(v, n, offs)))
    P = np.stack(profs)                      # (M, N, L-1)
    mean = P.mean(0)
    var = P.var(0) + max(1e-4, 0.05 * float(P.var()))    # floor: few cases per vertex
    return ProfileModel(mean, var, step, half, normalisation)


def search_profiles(pm: ProfileModel, sampler, verts, normals, search_mm):
    """Best offset per vertex along its normal.

    Parameters
    ----------
    pm : ProfileModel
    sampler : NormalSampler
    verts, normals : ndarray, shape (N, 3)
        Physical mm; unit normals.
    search_mm : float
        Candidates are offsets in ``[-search_mm, search_mm]``, ``pm.step`` apart.

    Returns
    -------
    targets : ndarray, shape (N, 3)
    confidence : ndarray, shape (N,), in [0.05, 1]
    """
    m = max(1, int(round(search_mm / pm.step)))
    cand = np.arange(-m, m + 1) * pm.step
    offs = _offsets(pm.half, pm.step)
    t = cand[:, None] + offs[None, :]                         # (C, L)
    prof = profile_features(sampler(verts, normals, t).reshape(len(verts), *t.shape))  # (N, C, L-1)
    cost = np.sum((prof - pm.mean[:, None, :]) ** 2 / pm.var[:, None, :], axis=2) / prof.shape[2]
    best = np.argmin(cost + 1e-3 * np.abs(cand)[None, :], axis=1)   # tie-break: stay
    c = cost[np.arange(len(verts)), best]
    conf = np.clip(np.exp(-0.5 * (c - 1.0)), 0.05, 1.0)
    return verts + cand[best][:, None] * normals, conf


def search_edges(sampler, verts, normals, search_mm, step, inside_brighter=True,
                 window=None):
    """Strongest edge of the expected polarity along each normal (fallback)."""
    m = max(1, int(round(search_mm / step)))
    cand = np.arange(-m, m + 1) * step
    # samples at cand - step and cand + step: one set of offsets cand' = cand -+ step
    ab = sampler(verts, normals, np.arange(-m - 1, m + 2) * step)
    a, b = ab[:, :-2], ab[:, 2:]
    grad = (a - b) if inside_brighter else (b - a)
    if window is not None:
        lo, hi = window
        grad = np.where((a >= lo) & (a <= hi), grad, -np.inf)
    best = np.argmax(grad - 1e-6 * np.abs(cand)[None, :], axis=1)
    g = grad[np.arange(len(verts)), best]
    finite = np.isfinite(g) & (g > 0)
    scale = np.percentile(g[finite], 75) if finite.any() else 1.0
    conf = np.where(finite, np.clip(g / max(scale, 1e-6), 0.05, 1.0), 0.05)
    moved = np.where(finite[:, None], verts + cand[best][:, None] * normals, verts)
    return moved, conf
