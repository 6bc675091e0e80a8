"""Where the organ sits in a scan: the pose prior learned from training scans."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..align import procrustes


@dataclass
class PosePrior:
    """Mean pose of the training organs in their scans (LPS mm).

    Attributes
    ----------
    rotation : ndarray, shape (3, 3)
        Mean rotation that places the model mean in a scan.
    scale : float
        Mean similarity scale.
    offset_from_fov_centre_mm : ndarray, shape (3,)
        Mean organ centre relative to the centre of the field of view.
    offset_sd_mm : ndarray, shape (3,)
        Standard deviation of that offset over the training scans.
    scale_range : tuple of float or None
        Smallest and largest similarity scale over the training scans (the
        organ sizes the population supports); None in models built before
        it was recorded.
    """

    rotation: np.ndarray
    scale: float
    offset_from_fov_centre_mm: np.ndarray
    offset_sd_mm: np.ndarray
    scale_range: tuple | None = None

    def to_dict(self) -> dict:
        """JSON-ready form, as stored in a model file's metadata."""
        return {"rotation": np.asarray(self.rotation).tolist(), "scale": float(self.scale),
                "offset_from_fov_centre_mm": np.asarray(self.offset_from_fov_centre_mm).tolist(),
                "offset_sd_mm": np.asarray(self.offset_sd_mm).tolist(),
                **({"scale_range": [float(a) for a in self.scale_range]}
                   if self.scale_range is not None else {})}

    @classmethod
    def from_dict(cls, d) -> "PosePrior":
        """Inverse of :meth:`to_dict`; ValueError when malformed."""
        try:
            R = np.asarray(d["rotation"], dtype=float)
            s = float(d["scale"])
            off = np.asarray(d["offset_from_fov_centre_mm"], dtype=float)
            sd = np.asarray(d.get("offset_sd_mm", [0.0, 0.0, 0.0]), dtype=float)
            sr = d.get("scale_range")
            sr = None if sr is None else tuple(float(a) for a in sr)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError("malformed pose prior") from None
        ok = R.shape == (3, 3) and off.shape == (3,) and sd.shape == (3,) and np.isfinite(s) \
            and s > 0 and np.all(np.isfinite(R)) and np.all(np.isfinite(off)) \
            and np.all(np.isfinite(sd))
        if sr is not None:
            ok = ok and len(sr) == 2 and all(np.isfinite(sr)) and 0 < sr[0] <= sr[1]
        if not ok:
            raise ValueError("malformed pose prior")
        return cls(R, s, off, sd, sr)


def fit_pose_prior(mean, physical_shapes, fov_centres) -> PosePrior:
    """Mean rotation, scale and offset (from the FOV centre) that place the
    model mean on the training shapes in physical space.

    Parameters
    ----------
    mean : ndarray, shape (N, 3)
        Model mean (model frame).
    physical_shapes : sequence of ndarray, shape (N, 3)
        Training shapes in their scans (LPS mm).
    fov_centres : sequence of ndarray, shape (3,)
        Centre of each scan's field of view (LPS mm).
    """
    Rs, ss, offs = [], [], []
    mc = mean - mean.mean(0)
    for v, c in zip(physical_shapes, fov_centres):
        T = procrustes(mc, v)
        Rs.append(T.rotation)
        ss.append(T.scale)
        offs.append(v.mean(0) - c)
    u, _, vt = np.linalg.svd(np.sum(Rs, axis=0))
    R = u @ vt
    if np.linalg.det(R) < 0:
        u[:, -1] *= -1
        R = u @ vt
    return PosePrior.from_dict({"rotation": R.tolist(), "scale": float(np.mean(ss)),
                                "offset_from_fov_centre_mm": np.mean(offs, axis=0).tolist(),
                                "offset_sd_mm": np.std(offs, axis=0).tolist(),
                                "scale_range": [float(np.min(ss)), float(np.max(ss))]})
