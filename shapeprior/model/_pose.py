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
    stats : dict or None
        Running sums over the training scans (``n``, ``rotation_sum``,
        ``scale_sum``, ``offset_sum``, ``offset_sq_sum``), from which the
        prior is updated with new shapes without revisiting the old ones;
        None in models built before they were recorded.
    """

    rotation: np.ndarray
    scale: float
    offset_from_fov_centre_mm: np.ndarray
    offset_sd_mm: np.ndarray
    scale_range: tuple | None = None
    stats: dict | None = None

    def to_dict(self) -> dict:
        """JSON-ready form, as stored in a model file's metadata."""
        return {"rotation": np.asarray(self.rotation).tolist(), "scale": float(self.scale),
                "offset_from_fov_centre_mm": np.asarray(self.offset_from_fov_centre_mm).tolist(),
                "offset_sd_mm": np.asarray(self.offset_sd_mm).tolist(),
                **({"scale_range": [float(a) for a in self.scale_range]}
                   if self.scale_range is not None else {}),
                **({"stats": _stats_json(self.stats)} if self.stats is not None else {})}

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
            st = d.get("stats")
            st = None if st is None else _stats_arrays(st)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError("malformed pose prior") from None
        ok = R.shape == (3, 3) and off.shape == (3,) and sd.shape == (3,) and np.isfinite(s) \
            and s > 0 and np.all(np.isfinite(R)) and np.all(np.isfinite(off)) \
            and np.all(np.isfinite(sd))
        if sr is not None:
            ok = ok and len(sr) == 2 and all(np.isfinite(sr)) and 0 < sr[0] <= sr[1]
        if not ok:
            raise ValueError("malformed pose prior")
        return cls(R, s, off, sd, sr, st)

    def running_stats(self, n_shapes) -> dict:
        """The running sums, or, for a prior recorded without them, sums that
        reproduce its mean pose, offsets and spread over ``n_shapes`` scans."""
        if self.stats is not None:
            return {k: np.array(v, dtype=float) if k != "n" else int(v)
                    for k, v in self.stats.items()}
        n = int(n_shapes)
        off = np.asarray(self.offset_from_fov_centre_mm, dtype=float)
        sd = np.asarray(self.offset_sd_mm, dtype=float)
        return {"n": n, "rotation_sum": n * np.asarray(self.rotation, dtype=float),
                "scale_sum": np.array(n * float(self.scale)), "offset_sum": n * off,
                "offset_sq_sum": n * (sd ** 2 + off ** 2)}


def _stats_arrays(st) -> dict:
    out = {"n": int(st["n"]), "rotation_sum": np.asarray(st["rotation_sum"], dtype=float),
           "scale_sum": np.asarray(st["scale_sum"], dtype=float),
           "offset_sum": np.asarray(st["offset_sum"], dtype=float),
           "offset_sq_sum": np.asarray(st["offset_sq_sum"], dtype=float)}
    shapes = {"rotation_sum": (3, 3), "scale_sum": (), "offset_sum": (3,), "offset_sq_sum": (3,)}
    if out["n"] < 1 or any(out[k].shape != v or not np.all(np.isfinite(out[k]))
                           for k, v in shapes.items()):
        raise ValueError("malformed pose statistics")
    return out


def _stats_json(st) -> dict:
    return {k: (int(v) if k == "n" else np.asarray(v, dtype=float).tolist())
            for k, v in st.items()}


def pose_stats(mean, physical_shapes, fov_centres) -> dict:
    """Running sums of the pose over training scans (see :class:`PosePrior`)."""
    mc = mean - mean.mean(0)
    Rs, ss, offs = [], [], []
    for v, c in zip(physical_shapes, fov_centres):
        T = procrustes(mc, v)
        Rs.append(T.rotation)
        ss.append(T.scale)
        offs.append(v.mean(0) - np.asarray(c, dtype=float))
    offs = np.array(offs).reshape(-1, 3)
    return {"n": len(ss), "rotation_sum": np.sum(Rs, axis=0).reshape(3, 3),
            "scale_sum": np.array(float(np.sum(ss))), "offset_sum": offs.sum(0),
            "offset_sq_sum": (offs ** 2).sum(0), "scales": np.array(ss, dtype=float)}


def pose_from_stats(stats, scale_range) -> PosePrior:
    """The prior that running sums describe: the rotation nearest (Frobenius) to
    the summed rotations, the mean scale, and the mean and spread of the offset."""
    n = int(stats["n"])
    u, _, vt = np.linalg.svd(np.asarray(stats["rotation_sum"], dtype=float))
    R = u @ vt
    if np.linalg.det(R) < 0:
        u[:, -1] *= -1
        R = u @ vt
    off = np.asarray(stats["offset_sum"], dtype=float) / n
    var = np.maximum(np.asarray(stats["offset_sq_sum"], dtype=float) / n - off ** 2, 0.0)
    keep = {k: stats[k] for k in ("n", "rotation_sum", "scale_sum", "offset_sum",
                                  "offset_sq_sum")}
    return PosePrior.from_dict({"rotation": R.tolist(), "scale": float(stats["scale_sum"]) / n,
                                "offset_from_fov_centre_mm": off.tolist(),
                                "offset_sd_mm": np.sqrt(var).tolist(),
                                "scale_range": [float(a) for a in scale_range],
                                "stats": _stats_json(keep)})


def add_pose_stats(a, b) -> dict:
    """Sums of two sets of scans."""
    return {"n": int(a["n"]) + int(b["n"]),
            **{k: np.asarray(a[k], dtype=float) + np.asarray(b[k], dtype=float)
               for k in ("rotation_sum", "scale_sum", "offset_sum", "offset_sq_sum")}}


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
    st = pose_stats(mean, physical_shapes, fov_centres)
    return pose_from_stats(st, (float(st["scales"].min()), float(st["scales"].max())))
