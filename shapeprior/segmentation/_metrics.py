"""Overlap and surface-distance metrics between label masks (physical mm)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..mesh import grown_box, mask_box


def _border(m):
    return m & ~ndimage.binary_erosion(m, structure=np.ones((3, 3, 3)))


def surface_distances(a, b, spacing_xyz):
    """Symmetric boundary distances (mm): mean (ASSD), 95th percentile, max."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    if not a.any() or not b.any():
        return {"assd_mm": float("inf"), "hd95_mm": float("inf"), "hd_mm": float("inf")}
    sp = np.asarray(spacing_xyz, float)[::-1]
    # both borders lie in the masks' joint box: distances there are exact
    box = grown_box(mask_box(a | b), 1, a.shape)
    a, b = a[box], b[box]
    ba, bb = _border(a), _border(b)
    da = ndimage.distance_transform_edt(~bb, sampling=sp)[ba]
    db = ndimage.distance_transform_edt(~ba, sampling=sp)[bb]
    d = np.concatenate([da, db])
    return {"assd_mm": float(d.mean()), "hd95_mm": float(np.percentile(d, 95)),
            "hd_mm": float(d.max())}
