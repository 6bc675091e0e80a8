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

from ..backend import kernel
from ._background import background_share
from ._sampler import NormalSampler, hounsfield_share, normalise_intensity


@dataclass
class ProfileModel:
    """Per-vertex normal profile features. ``mean``/``var``: (N, 2*half)."""

    mean: np.ndarray
    var: np.ndarray
    step: float
    half: int
    normalisation: str
    n_images: int | None = None     # training images it was learned from
    var_floor: float | None = None  # added to every variance (few cases per vertex)
    #: (min, max) over the training images of :func:`hounsfield_share`: whether they
    #: were in HU (CT) or not (MR); None for a model from before it was recorded
    hu_share_range: tuple | None = None
    #: the largest share of a training surface's vertices whose inside lies in its
    #: image's background (:func:`~shapeprior.appearance.background_share`); None for a
    #: model from before it was recorded (the background rule is then off)
    background_share_max: float | None = None

    def to_arrays(self):
        return {"profile_mean": self.mean, "profile_var": self.var}

    def to_meta(self):
        meta = {"step_mm": self.step, "half": self.half, "normalisation": self.normalisation,
                "features": "normalised derivative profile"}
        if self.n_images is not None:
            meta["n_images"] = self.n_images
        if self.var_floor is not None:
            meta["var_floor"] = self.var_floor
        if self.hu_share_range is not None:
            meta["image_hounsfield_share"] = [float(x) for x in self.hu_share_range]
        if self.background_share_max is not None:
            meta["image_background_share_max"] = float(self.background_share_max)
        return meta

    @classmethod
    def from_arrays(cls, arrays, meta):
        """Inverse of :meth:`to_arrays` and :meth:`to_meta` (a model file's parts)."""
        n = meta.get("n_images")
        f = meta.get("var_floor")
        hu = meta.get("image_hounsfield_share")
        bg = meta.get("image_background_share_max")
        return cls(arrays["profile_mean"], arrays["profile_var"], float(meta["step_mm"]),
                   int(meta["half"]), meta["normalisation"], None if n is None else int(n),
                   None if f is None else float(f),
                   None if hu is None else (float(hu[0]), float(hu[1])),
                   None if bg is None else float(bg))

    def floor(self) -> float:
        """The variance floor: recorded, or recovered exactly from the arrays for a
        model built before it was recorded (see :func:`learn_profiles`)."""
        if self.var_floor is not None:
            return float(self.var_floor)
        spread = float(np.mean(self.mean ** 2) - np.mean(self.mean) ** 2)
        return max(VAR_FLOOR_MIN, VAR_FLOOR_REL * (float(np.mean(self.var)) + spread)
                   / (1.0 + VAR_FLOOR_REL))

    def merged(self, features, hu_shares=None, background_shares=None) -> "ProfileModel":
        """This model updated with the profiles of more training images, as if
        learned from all of them at once (Chan et al.'s pairwise mean and
        variance update), without the old images.

        Parameters
        ----------
        features : ndarray, shape (M, N, 2*half)
            Normalised derivative profiles of M new images (see
            :func:`profile_stack`).
        hu_shares : sequence of float, optional
            :func:`hounsfield_share` of the new images: widens
            ``hu_share_range`` (which stays None when this model has none).
        background_shares : sequence of float, optional
            :func:`~shapeprior.appearance.background_share` of the new images'
            surfaces: raises ``background_share_max`` (which stays None when this
            model has none).
        """
        if self.n_images is None:
            raise ValueError("this model's appearance does not record how many images it "
                             "was learned from; rebuild it with build-model --images")
        P = np.asarray(features, dtype=float)
        if P.ndim != 3 or P.shape[1:] != self.mean.shape:
            raise ValueError(f"profiles have shape {P.shape}, expected (M, {self.mean.shape[0]}, "
                             f"{self.mean.shape[1]})")
        na, nb = int(self.n_images), len(P)
        n = na + nb
        raw_a = np.maximum(self.var - self.floor(), 0.0)
        mb, raw_b = P.mean(0), P.var(0)
        delta = mb - self.mean
        mean = self.mean + delta * (nb / n)
        raw = (raw_a * na + raw_b * nb + delta ** 2 * (na * nb / n)) / n
        floor = _floor(raw, mean)
        hu = self.hu_share_range
        if hu is not None and hu_shares is not None and len(hu_shares):
            hu = (min(hu[0], float(np.min(hu_shares))), max(hu[1], float(np.max(hu_shares))))
        bg = self.background_share_max
        if bg is not None and background_shares is not None and len(background_shares):
            bg = max(bg, float(np.max(background_shares)))
        return ProfileModel(mean, raw + floor, self.step, self.half, self.normalisation, n,
                            floor, hu, bg)

    def check_layout(self):
        """Refuse a profile layout older than the current feature definition."""
        if self.mean.shape[1] != 2 * self.half:
            raise ValueError("this model's appearance uses an older profile layout "
                             f"({self.mean.shape[1]} values per vertex, expected "
                             f"{2 * self.half}); rebuild it with build-model --images")


def _offsets(half, step):
    return np.arange(-half, half + 1) * step


def profile_features(prof):
    """Normalised derivative profiles (Cootes et al.): differences along the
    normal divided by their summed magnitude, so that neither the intensity
    level nor the contrast of an image shifts the match. (..., L) -> (..., L-1)."""
    d = np.diff(prof, axis=-1)
    return d / (np.sum(np.abs(d), axis=-1, keepdims=True) + 1e-6)


#: variance floor: this fraction of the variance over all profiles, at least VAR_FLOOR_MIN
VAR_FLOOR_REL = 0.05
VAR_FLOOR_MIN = 1e-4


def _floor(raw_var, mean) -> float:
    """Floor of the per-vertex variances (few cases per vertex): a fraction of the
    variance of all profile values together, from per-vertex means and variances."""
    total = float(np.mean(raw_var + mean ** 2) - np.mean(mean) ** 2)
    return max(VAR_FLOOR_MIN, VAR_FLOOR_REL * total)


def profile_stack(cases, faces, step=0.75, half=4, normalisation="percentile",
                  backend="numpy"):
    """Normalised derivative profiles (M, N, 2*half) of ``[(volume, verts_physical)]``."""
    from ..mesh import Surface

    offs = _offsets(half, step)
    profs = []
    for vol, v in cases:
        img = normalise_intensity(vol, normalisation)
        n = Surface(v, faces).vertex_normals()
        profs.append(profile_features(NormalSampler(vol, img, backend)(v, n, offs)))
    return np.stack(profs)


def learn_profiles(cases, faces, step=0.75, half=4, normalisation="percentile", backend="numpy"):
    """Learn a :class:`ProfileModel` from ``[(volume, verts_physical)]``; it records
    the range of the images' :func:`hounsfield_share` (CT or not) and the largest
    :func:`background_share` of the training surfaces."""
    P = profile_stack(cases, faces, step, half, normalisation, backend)   # (M, N, L-1)
    mean, raw = P.mean(0), P.var(0)
    floor = _floor(raw, mean)
    shares = [hounsfield_share(vol) for vol, _ in cases]
    bg = max(background_share(vol, v, faces) for vol, v in cases)
    return ProfileModel(mean, raw + floor, step, half, normalisation, len(P), floor,
                        (min(shares), max(shares)), bg)


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
    # the candidates' profiles overlap (both are pm.step apart): each offset
    # along the normal is sampled once, C + L - 1 samples instead of C x L
    samples = sampler(verts, normals, np.arange(-m - pm.half, m + pm.half + 1) * pm.step)
    backend = getattr(sampler, "backend", "numpy")
    best, c = kernel("profile_search", backend)(samples, pm.mean, pm.var,
                                                1e-3 * np.abs(cand))   # tie-break: stay
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
