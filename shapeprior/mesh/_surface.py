"""Label map -> closed surface mesh in physical coordinates (LPS, mm)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..io import Volume


@dataclass
class Surface:
    """Triangle mesh. ``verts`` (V, 3) in mm, ``faces`` (F, 3), outward normals."""

    verts: np.ndarray
    faces: np.ndarray

    def face_normals(self, unit=True):
        a, b, c = (self.verts[self.faces[:, k]] for k in range(3))
        n = np.cross(b - a, c - a)
        if unit:
            n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300)
        return n

    def vertex_normals(self):
        n = self.face_normals(unit=False)   # area weighted
        vn = np.zeros_like(self.verts)
        for k in range(3):
            np.add.at(vn, self.faces[:, k], n)
        return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-300)

    def area(self) -> float:
        """Surface area in mm^2."""
        return float(0.5 * np.linalg.norm(self.face_normals(unit=False), axis=1).sum())

    def volume(self) -> float:
        """Enclosed volume in mm^3 (positive for outward-oriented faces)."""
        a, b, c = (self.verts[self.faces[:, k]] for k in range(3))
        return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)

    def to_meshio(self, point_data=None):
        import meshio

        return meshio.Mesh(self.verts, [("triangle", self.faces)],
                           point_data=dict(point_data or {}))

    def write(self, path, point_data=None):
        """Write VTK/PLY/STL/... by extension, atomically.

        ``point_data``: ``{name: array (N,)}`` per-vertex values, kept by the
        formats that carry them (VTK, PLY); STL and OBJ drop them."""
        import os
        from pathlib import Path

        p = Path(path)
        tmp = p.with_name(f".{p.stem}.tmp{p.suffix}")
        keep = p.suffix.lower() in (".vtk", ".vtu", ".ply")
        self.to_meshio(point_data if keep else None).write(tmp)
        os.replace(tmp, p)


def label_mask(vol: Volume, labels) -> np.ndarray:
    """Boolean mask of voxels whose value is in ``labels``; error if empty."""
    labels = np.atleast_1d(labels)
    mask = np.isin(vol.array, labels)
    if not mask.any():
        present = np.unique(vol.array)[:20].tolist()
        raise ValueError(f"label(s) {labels.tolist()} not present in the label map "
                         f"(values present: {present})")
    return mask


def mask_to_surface(vol: Volume, mask: np.ndarray, iso_spacing: float = 1.0,
                    smooth_mm: float = 1.0, margin_mm: float = 6.0) -> Surface:
    """Closed surface of a binary mask, in physical coordinates.

    The mask region (plus a margin) is resampled to an isotropic grid of
    ``iso_spacing`` mm in index space (so the map to physical space stays
    exact), smoothed with a Gaussian of ``smooth_mm`` mm (removes the
    staircase of thick slices) and contoured at 0.5 by marching cubes.

    Parameters
    ----------
    vol : Volume
        Supplies the geometry (spacing, origin, direction).
    mask : ndarray of bool, shape vol.array.shape
    iso_spacing, smooth_mm, margin_mm : float
        In mm.
    """
    from skimage.measure import marching_cubes

    if mask.shape != vol.array.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the volume {vol.array.shape}")
    if not mask.any():
        raise ValueError("mask is empty: no surface to extract")
    if iso_spacing <= 0 or smooth_mm < 0:
        raise ValueError(f"iso_spacing={iso_spacing} must be > 0 and smooth_mm={smooth_mm} >= 0")
    sp_zyx = vol.spacing[::-1]
    idx = np.argwhere(mask)
    pad = np.ceil(margin_mm / sp_zyx).astype(int) + 1
    lo = idx.min(0) - pad
    hi = idx.max(0) + 1 + pad
    # pad outside the array with zeros so surfaces touching the border close
    src = np.zeros(tuple(hi - lo), dtype=np.float32)
    a_lo = np.maximum(lo, 0)
    a_hi = np.minimum(hi, mask.shape)
    src[tuple(slice(a - l, b - l) for a, b, l in zip(a_lo, a_hi, lo))] = \
        mask[tuple(slice(a, b) for a, b in zip(a_lo, a_hi))]
    step = iso_spacing / sp_zyx                          # old index units per new voxel
    shape_new = np.floor((np.array(src.shape) - 1) / step).astype(int) + 1
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape_new, step)], indexing="ij")
    iso = ndimage.map_coordinates(src, grids, order=1, mode="constant", cval=0.0)
    if smooth_mm > 0:
        iso = ndimage.gaussian_filter(iso, smooth_mm / iso_spacing, mode="constant")
    if iso.max() <= 0.5:
        raise ValueError("mask is too thin to contour after smoothing; reduce smooth_mm")
    v, f, _, _ = marching_cubes(iso, level=0.5)
    old_zyx = v * step + lo                              # continuous index in the volume
    verts = vol.index_to_physical(old_zyx[:, ::-1])
    surf = Surface(verts, f.astype(np.int64))
    if surf.volume() < 0:                                 # make normals point outward
        surf.faces = surf.faces[:, ::-1].copy()
    return surf


def kidney_masks(vol: Volume, labels=(1, 2), min_fraction=0.1):
    """Split a KiTS-style label map (both kidneys, tumour) into one mask per side.

    Kidney and tumour labels are merged; the connected components with at
    least ``min_fraction`` of the largest one's voxels are kept, at most two.
    Side comes from the physical x (LPS: +x is the patient's left) of each
    component's centroid relative to the other component, or to the centre
    of the field of view when only one kidney is present.

    Returns
    -------
    dict
        ``{'left': mask, 'right': mask}`` (a side may be missing).
    """
    fg = label_mask(vol, labels)
    lab, n = ndimage.label(fg, structure=np.ones((3, 3, 3)))
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    order = np.argsort(-sizes)
    keep = [int(i) + 1 for i in order[:2] if sizes[i] >= min_fraction * sizes[order[0]]]
    cents = []
    for k in keep:
        c_zyx = np.array(ndimage.center_of_mass(lab == k))
        cents.append(vol.index_to_physical(c_zyx[::-1][None])[0])
    if len(keep) == 2:
        left_first = cents[0][0] > cents[1][0]
        sides = ["left", "right"] if left_first else ["right", "left"]
    else:
        sides = ["left" if cents[0][0] > vol.centre()[0] else "right"]
    return {s: lab == k for s, k in zip(sides, keep)}
