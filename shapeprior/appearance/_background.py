"""The image's background: the dark region around the body.

A learned boundary profile is a normalised derivative (see
:func:`~shapeprior.appearance.profile_features`), blind to the intensity level
on either side of the boundary. The noise of the air around a head matches
such profiles about as well as a wrong structure does, so a fit can settle
outside the body (a hippocampus model on a whole-head T1 series with 6.5 mm
between slices put 44 % of its surface in the air beside the scalp:
``bench/bench_wrong_scan.py``).

The background is the set of dark voxels connected to the border of the
field of view in regions of at least :data:`MIN_REGION` of it: at most
:data:`DARK_FRACTION` of the image's 0.5-99.5 percentile range above its 0.5
percentile (the air of an MR or CT scan; not the cerebrospinal fluid that a
tight crop of a brain MR cuts).
A surface point whose inside lies there is not an organ's boundary, unless the
organ is one that lies in the air (lungs, airways): the model records, from its
training images, the largest share of a training surface's inward points in
the background (``ProfileModel.background_share_max``), and the rule applies
only to organs whose training surfaces stay clear of it
(:data:`TRAINING_SHARE_MAX`).

The mask is computed on a strided grid of at most :data:`MAX_VOXELS` voxels
(nearest-voxel lookups), once per image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._sampler import unpadded

#: a voxel is dark when it lies at most this fraction of the image's 0.5-99.5 percentile
#: range above its 0.5 percentile
DARK_FRACTION = 0.1
#: a border-connected dark region is background when it holds at least this share of the
#: grid. With DARK_FRACTION, chosen so that none of the 220 MSD hippocampus crops (brain,
#: no air in them) has any background while the air is found where there is some. Dark
#: fraction / smallest region, the crops' largest background share, and a whole-head T1
#: series / the TotalSegmentator example CT / MR: 0.1 / any region: 0.098 (border-cut
#: CSF; up to 12 % of a good hippocampus fit's vertices inside it on the status bench),
#: 0.44 / 0.32 / 0.39; 0.05 / any: 0.046, 0.42 / 0.26 / 0.32; 0.1 / 5 %: 0.065;
#: 0.05 / 5 %: 0, 0.42 / 0.23 / 0.21; **0.1 / 10 %: 0**, 0.44 / 0.24 / 0.36
MIN_REGION = 0.1
#: strided grid for the mask: at most this many voxels
MAX_VOXELS = 2_000_000
#: depth (mm) inside the surface of the point that decides whether a vertex's inside is
#: background
INSIDE_MM = 1.0
#: the rule applies to a model whose training surfaces had at most this share of their
#: inward points in their image's background (an organ in the air, such as a lung,
#: has far more)
TRAINING_SHARE_MAX = 0.1


def _strides(shape):
    """Per-axis strides (z, y, x) that bring ``shape`` to at most MAX_VOXELS voxels."""
    s = 1
    while np.prod([-(-n // s) for n in shape]) > MAX_VOXELS:
        s += 1
    return (s, s, s)


class Background:
    """The border-connected dark region of one image.

    Parameters
    ----------
    vol : Volume
        The image as read (any units; the threshold is relative to its range).
    """

    def __init__(self, vol):
        self.vol = vol
        self.strides = _strides(vol.array.shape)
        a = np.asarray(vol.array[tuple(slice(None, None, s) for s in self.strides)],
                       dtype=np.float32)
        # padding (outside the field of view) is dark, and not counted
        lo, hi = np.percentile(unpadded(a), [0.5, 99.5])
        dark = a <= lo + DARK_FRACTION * (hi - lo) if hi > lo else np.zeros(a.shape, bool)
        lab, _ = ndimage.label(dark)
        border = np.unique(np.concatenate([np.take(lab, i, axis=ax).ravel()
                                           for ax in range(3) for i in (0, -1)]))
        border = border[border > 0]
        sizes = np.bincount(lab.ravel())
        self.mask = np.isin(lab, border[sizes[border] >= MIN_REGION * lab.size])
        self._inv = np.linalg.inv(vol.index_to_physical_matrix)

    @property
    def fraction(self) -> float:
        """Share of the field of view that is background."""
        return float(self.mask.mean())

    def contains(self, points):
        """Whether each point (LPS mm, (P, 3)) lies in the background: bool (P,);
        points outside the field of view are not."""
        ijk = (np.asarray(points, dtype=float) - self.vol.origin) @ self._inv.T
        # the strided-grid indices as three contiguous rows (z, y, x): the
        # rounding and the tests then run along rows, not along an (P, 3)
        # array's short axis (0.7 against 0.4 ms for 10,800 points)
        zyx = np.rint(np.ascontiguousarray(ijk.T[::-1])
                      / np.array(self.strides)[:, None]).astype(np.int64)
        shape = np.array(self.mask.shape)[:, None]
        inside = np.all((zyx >= 0) & (zyx < shape), axis=0)
        out = np.zeros(zyx.shape[1], dtype=bool)
        z = zyx[:, inside]
        out[inside] = self.mask[z[0], z[1], z[2]]
        return out

    def insides_in_background(self, verts, normals):
        """Per vertex, whether its inside (:data:`INSIDE_MM` along the inward
        normal) lies in the background: bool (N,)."""
        return self.contains(np.asarray(verts) - INSIDE_MM * np.asarray(normals))


def background_share(vol, verts, faces):
    """Share of a surface's vertices whose inside lies in ``vol``'s background.

    Parameters
    ----------
    vol : Volume
    verts : ndarray, shape (N, 3)
        LPS mm.
    faces : ndarray, shape (F, 3)
        Outward-oriented triangles.

    Returns
    -------
    float in [0, 1]
    """
    from ..mesh import Surface

    normals = Surface(verts, faces).vertex_normals()
    return float(np.mean(Background(vol).insides_in_background(verts, normals)))
