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
        # the sums of np.add.at over the three corners in turn, in the same
        # order (so to the last bit), in one bincount per coordinate
        idx = self.faces.T.ravel()
        vn = np.stack([np.bincount(idx, weights=np.tile(n[:, c], 3), minlength=len(self.verts))
                       for c in range(3)], axis=1)
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

        return meshio.Mesh(self.verts, [("triangle", self.faces.astype(np.int32))],
                           point_data=dict(point_data or {}))

    def to_vtk(self, point_data=None):
        """The mesh as ``vtkPolyData`` with its point data, and the field data
        ``SPACE = LPS`` and ``UNITS = mm`` that declare its coordinates."""
        from vtkmodules.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray
        from vtkmodules.vtkCommonCore import vtkPoints, vtkStringArray
        from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData

        pts = vtkPoints()
        pts.SetData(numpy_to_vtk(np.ascontiguousarray(self.verts, dtype=np.float64), deep=True))
        f = np.asarray(self.faces, dtype=np.int64)
        offsets = np.arange(0, 3 * len(f) + 1, 3, dtype=np.int64)
        cells = vtkCellArray()
        cells.SetData(numpy_to_vtkIdTypeArray(offsets, deep=True),
                      numpy_to_vtkIdTypeArray(np.ascontiguousarray(f.ravel()), deep=True))
        poly = vtkPolyData()
        poly.SetPoints(pts)
        poly.SetPolys(cells)
        for name, values in (point_data or {}).items():
            arr = numpy_to_vtk(np.ascontiguousarray(values, dtype=np.float64), deep=True)
            arr.SetName(name)
            poly.GetPointData().AddArray(arr)
        for key, value in (("SPACE", "LPS"), ("UNITS", "mm")):
            a = vtkStringArray()
            a.SetName(key)
            a.InsertNextValue(value)
            poly.GetFieldData().AddArray(a)
        return poly

    def write(self, path, point_data=None):
        """Write the mesh by extension, atomically.

        ``.vtp`` (VTK XML PolyData) and ``.vtk`` (legacy VTK 4.2 PolyData, the
        version 3D Slicer and ParaView both read) carry ``point_data`` and
        declare ``SPACE = LPS``, ``UNITS = mm`` as field data (the legacy header
        says so too); ``.ply`` keeps ``point_data``; ``.stl`` and ``.obj``
        hold the geometry only, and the three say ``SPACE=LPS`` where 3D Slicer
        looks for it (a PLY or OBJ comment, the STL's solid name). Coordinates
        are LPS mm: 3D Slicer, which shows RAS, reads the declaration.

        Parameters
        ----------
        path : str or Path
        point_data : dict of {str: ndarray, shape (N,)}, optional
            Per-vertex values.
        """
        import os
        from pathlib import Path

        p = Path(path)
        suffix = p.suffix.lower()
        if suffix not in MESH_SUFFIXES:
            raise ValueError(f"mesh file {p.name!r}: format {suffix or '(none)'} is not one "
                             f"of {', '.join(MESH_SUFFIXES)}")
        tmp = p.with_name(f".{p.stem}.tmp{p.suffix}")
        try:
            if suffix in (".vtp", ".vtk"):
                _write_vtk(self.to_vtk(point_data), tmp, xml=suffix == ".vtp")
            else:
                self.to_meshio(point_data if suffix == ".ply" else None).write(tmp)
                _declare_lps(tmp, suffix)
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)


#: mesh file formats :meth:`Surface.write` writes (file name suffixes)
MESH_SUFFIXES = (".vtk", ".vtp", ".ply", ".stl", ".obj")
#: the same, as format names (``--mesh-format``)
MESH_FORMATS = tuple(s[1:] for s in MESH_SUFFIXES)


#: what every mesh file shapeprior writes says of its coordinates
DECLARATION = "shapeprior mesh SPACE=LPS UNITS=mm"


def _declare_lps(path, suffix):
    """Write :data:`DECLARATION` into a meshio-written PLY (a header comment), OBJ
    (a first comment line) or ASCII STL (the solid's name)."""
    data = path.read_bytes()
    tag = DECLARATION.encode()
    if suffix == ".ply":
        end = data.index(b"\n") + 1                       # after the magic line
        end = data.index(b"\n", end) + 1                  # after the format line
        data = data[:end] + b"comment " + tag + b"\n" + data[end:]
    elif suffix == ".obj":
        data = b"# " + tag + b"\n" + data
    elif suffix == ".stl" and data.startswith(b"solid\n"):
        data = b"solid " + tag + data[len(b"solid"):]
    else:
        return
    path.write_bytes(data)


def _write_vtk(poly, path, xml):
    if xml:
        from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter

        w = vtkXMLPolyDataWriter()
        w.SetDataModeToAppended()
        w.SetCompressorTypeToZLib()
    else:
        from vtkmodules.vtkIOLegacy import vtkPolyDataWriter

        w = vtkPolyDataWriter()
        w.SetFileVersion(42)
        w.SetFileTypeToBinary()
        w.SetHeader(DECLARATION)
    w.SetFileName(str(path))
    w.SetInputData(poly)
    if not w.Write():
        raise OSError(f"could not write the mesh {path.name!r}")


def label_mask(vol: Volume, labels) -> np.ndarray:
    """Boolean mask of voxels whose value is in ``labels``; error if empty."""
    labels = np.atleast_1d(labels)
    mask = np.isin(vol.array, labels)
    if not mask.any():
        _raise_absent(vol, labels)
    return mask


def _raise_absent(vol, labels):
    present = np.unique(vol.array)[:20].tolist()
    raise ValueError(f"label(s) {np.atleast_1d(labels).tolist()} not present in the label map "
                     f"(values present: {present})")


def signed_distance(mask, sampling=None) -> np.ndarray:
    """Signed distance of every voxel centre to the other side of a mask's
    boundary: > 0 outside (distance to the nearest inside voxel), < 0 inside
    (minus the distance to the nearest outside voxel); never 0.

    Parameters
    ----------
    mask : ndarray of bool
    sampling : sequence of float, optional
        Voxel size along each array axis (mm, in array order); default 1
        (distances in voxels).
    """
    from scipy import ndimage

    return (ndimage.distance_transform_edt(~mask, sampling=sampling)
            - ndimage.distance_transform_edt(mask, sampling=sampling))


def mask_box(mask) -> tuple:
    """The bounding box of a non-empty 3-D mask, as a tuple of slices (z, y, x).

    The slices along z come from one contiguous pass (rows of the flattened
    planes); y and x are then found in that slab only, so a small organ on a
    whole CT grid costs one streaming read of the mask."""
    m = np.asarray(mask)
    rows = m.reshape(m.shape[0], -1) if m.flags.c_contiguous else None
    z = np.flatnonzero(rows.any(axis=1) if rows is not None else m.any(axis=(1, 2)))
    if z.size == 0:
        raise ValueError("mask_box: the mask is empty")
    slab = m[z[0]:z[-1] + 1]
    hits = [z, np.flatnonzero(slab.any(axis=(0, 2))), np.flatnonzero(slab.any(axis=(0, 1)))]
    return tuple(slice(int(h[0]), int(h[-1]) + 1) for h in hits)


def grown_box(box, margin, shape) -> tuple:
    """``box`` (a tuple of slices) grown by ``margin`` voxels on each side (an
    int, or one per axis), clipped to an array of ``shape``.

    A distance transform computed on a box that holds all of its feature
    voxels is exact at every voxel of the box; one computed from inside a
    mask needs one voxel of margin outside it (the nearest outside voxel of
    any inside voxel is then in the box too): the refinement and the metrics
    measure on such boxes, not on the whole grid."""
    m = np.broadcast_to(np.asarray(margin, int), (len(box),))
    return tuple(slice(max(b.start - int(k), 0), min(b.stop + int(k), int(n)))
                 for b, k, n in zip(box, m, shape))


def dice(a, b) -> float:
    """Dice overlap of two masks of the same shape, in [0, 1] (1 when both are empty)."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    s = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / s) if s else 1.0


def crop_to_labels(vol: Volume, labels, slab=16) -> Volume:
    """The bounding box of ``labels`` in ``vol``, as a :class:`Volume` (a view,
    with its origin moved so that physical positions are unchanged).

    Everything measured on one organ (components, centroids, surfaces) is the
    same on the box as on the whole grid, and a whole abdominal CT costs
    seconds per pass where the box costs little. The box is found ``slab``
    slices at a time, so no whole-grid mask is ever allocated. Error if no
    voxel has a label.
    """
    labels = np.atleast_1d(labels)
    a = vol.array
    z_any = np.zeros(a.shape[0], bool)
    y_any = np.zeros(a.shape[1], bool)
    x_any = np.zeros(a.shape[2], bool)
    for z0 in range(0, a.shape[0], slab):
        m = np.isin(a[z0:z0 + slab], labels)
        z_any[z0:z0 + slab] = m.any(axis=(1, 2))
        y_any |= m.any(axis=(0, 2))
        x_any |= m.any(axis=(0, 1))
    if not z_any.any():
        _raise_absent(vol, labels)
    lo, hi = [], []
    for flags in (z_any, y_any, x_any):
        i = np.flatnonzero(flags)
        lo.append(int(i[0]))
        hi.append(int(i[-1]) + 1)
    return vol.crop(lo, hi)


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


def kidney_masks(vol: Volume, labels=(1, 2), min_fraction=0.1, fov_centre=None):
    """Split a KiTS-style label map (both kidneys, tumour) into one mask per side.

    Kidney and tumour labels are merged; the connected components with at
    least ``min_fraction`` of the largest one's voxels are kept, at most two.
    Side comes from the physical x (LPS: +x is the patient's left) of each
    component's centroid relative to the other component, or to the centre
    of the field of view when only one kidney is present.

    Parameters
    ----------
    vol : Volume
        Label map (or a crop of one, see :func:`crop_to_labels`).
    labels : sequence of int
    min_fraction : float
    fov_centre : ndarray, shape (3,), optional
        Centre of the scan's field of view (LPS mm) for the side of a lone
        kidney; default: the centre of ``vol`` (pass the whole scan's centre
        when ``vol`` is a crop).

    Returns
    -------
    dict
        ``{'left': mask, 'right': mask}`` (a side may be missing), on ``vol``'s grid.
    """
    fg = label_mask(vol, labels)
    # label and measure the components inside the foreground's bounding box
    # only: a whole abdominal CT grid costs seconds per pass, the box little
    box = mask_box(fg)
    offset = np.array([b.start for b in box], dtype=float)
    lab, n = ndimage.label(fg[box], structure=np.ones((3, 3, 3)))
    sizes = np.bincount(lab.ravel())[1:]
    order = np.argsort(-sizes)
    keep = [int(i) + 1 for i in order[:2] if sizes[i] >= min_fraction * sizes[order[0]]]
    cents_zyx = ndimage.center_of_mass(fg[box], lab, keep)
    cents = [vol.index_to_physical((np.array(c) + offset)[::-1][None])[0] for c in cents_zyx]
    if len(keep) == 2:
        left_first = cents[0][0] > cents[1][0]
        sides = ["left", "right"] if left_first else ["right", "left"]
    else:
        centre = vol.centre() if fov_centre is None else np.asarray(fov_centre, dtype=float)
        sides = ["left" if cents[0][0] > centre[0] else "right"]

    def full(k):
        m = np.zeros(fg.shape, bool)
        m[box] = lab == k
        return m

    return {s: full(k) for s, k in zip(sides, keep)}
