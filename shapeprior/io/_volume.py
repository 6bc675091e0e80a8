"""Volumes with their physical geometry.

Arrays follow SimpleITK's NumPy convention, axis order (z, y, x), while the
geometry follows ITK: ``spacing``, ``origin`` and ``direction`` in (x, y, z),
LPS physical coordinates in mm. ``index_to_physical`` is the single place
where voxel indices become millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._checks import (ImageReadError, check_data_extent, check_geometry, check_metaimage_header,
                      check_nrrd_header, check_size, check_tiff_structure, check_values,
                      display_name, input_path_error, itk_call)


def _triple(v, digits=6):
    """Numbers as ``(a, b, c)`` with ``digits`` significant digits (row by row)."""
    return "(" + ", ".join(f"{float(x):.{digits}g}" for x in np.asarray(v).ravel()) + ")"


@dataclass(repr=False)
class Volume:
    """A 3-D array with ITK geometry.

    Attributes
    ----------
    array : ndarray, shape (nz, ny, nx)
    spacing : ndarray, shape (3,)
        mm per voxel along x, y, z.
    origin : ndarray, shape (3,)
        Physical position (LPS, mm) of voxel index (0, 0, 0).
    direction : ndarray, shape (3, 3)
        Columns are the physical directions of the x, y, z index axes.
    """

    array: np.ndarray
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray

    def __post_init__(self):
        # the geometry as float arrays, whatever sequences a caller gave
        self.spacing = np.asarray(self.spacing, dtype=float)
        self.origin = np.asarray(self.origin, dtype=float)
        self.direction = np.asarray(self.direction, dtype=float)

    def check(self, name="image"):
        """Refuse a volume no reader would have returned (one made by hand, e.g.
        from an array): a grid that is not 3-D with two voxels or more along each
        axis, spacing (3,) not finite and > 0, origin (3,) not finite, a
        direction (3, 3) not orthonormal, NaN or infinite voxels. The errors
        (:class:`ImageReadError`) name ``name``. Returns the volume."""
        a = np.asarray(self.array)
        if a.ndim != 3 or min(a.shape) < 2:
            raise ImageReadError(f"{name}: the array must be 3-D (z, y, x) with at least 2 "
                                 f"voxels along each axis, got shape {a.shape}")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or \
                np.issubdtype(a.dtype, np.complexfloating):
            raise ImageReadError(f"{name}: the array holds {a.dtype} values; expected real "
                                 "numbers")
        for what, v, shape in (("spacing", self.spacing, (3,)), ("origin", self.origin, (3,)),
                               ("direction", self.direction, (3, 3))):
            if np.shape(v) != shape:
                raise ImageReadError(f"{name}: {what} must have shape {shape} (x, y, z), got "
                                     f"{np.shape(v)}")
        check_geometry(name, self.spacing, self.direction, self.origin)
        check_values(name, a)
        return self

    def __repr__(self):
        """One line: the grid and its geometry, never the voxels (an interactive
        session would print a wall of numbers)."""
        d = np.asarray(self.direction, dtype=float)
        oblique = "" if np.array_equal(d, np.eye(3)) else f", direction={_triple(d, 4)}"
        return (f"Volume(shape(z,y,x)={tuple(self.array.shape)}, dtype={self.array.dtype}, "
                f"spacing(x,y,z)={_triple(self.spacing)} mm, "
                f"origin={_triple(self.origin)} mm LPS{oblique})")

    @property
    def index_to_physical_matrix(self) -> np.ndarray:
        return self.direction * self.spacing[None, :]

    def index_to_physical(self, ijk_xyz: np.ndarray) -> np.ndarray:
        """Continuous indices (x, y, z order), shape (P, 3) -> LPS mm."""
        return self.origin + np.asarray(ijk_xyz, dtype=float) @ self.index_to_physical_matrix.T

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """LPS mm, shape (P, 3) -> continuous indices in (x, y, z) order."""
        inv = np.linalg.inv(self.index_to_physical_matrix)
        return (np.asarray(points, dtype=float) - self.origin) @ inv.T

    def centre(self) -> np.ndarray:
        """Physical position (LPS, mm) of the centre of the field of view."""
        c = (np.array(self.array.shape[::-1]) - 1) / 2.0
        return self.index_to_physical(c[None])[0]

    def same_grid(self, other: "Volume", atol: float = 1e-3) -> bool:
        """True when both volumes sample the same voxel positions."""
        return (self.array.shape == other.array.shape
                and np.allclose(self.index_to_physical_matrix, other.index_to_physical_matrix,
                                atol=atol)
                and np.allclose(self.origin, other.origin, atol=atol))

    @property
    def geometry(self):
        """``(shape_zyx, spacing, origin, direction)``, as :func:`read_geometry`
        gives them for a file."""
        return self.array.shape, self.spacing, self.origin, self.direction

    def reoriented_like(self, grid: "Volume", tol: float = 1e-6):
        """This volume with its index axes permuted and flipped to run as ``grid``'s
        run: the same voxels, stored in another axis order (TotalSegmentator's label
        of a DICOM series is stored y-flipped, LAS, beside the series' LPS), or None
        when no permutation and flip lines the axes up (a rotated grid needs
        interpolation). ``self`` when they already run alike."""
        m = np.asarray(self.direction, float).T @ np.asarray(grid.direction, float)
        j = np.argmax(np.abs(m), axis=0)        # the axis of this volume along grid axis k
        cos = m[j, np.arange(3)]
        if len(set(j.tolist())) != 3 or np.any(np.abs(np.abs(cos) - 1.0) > tol):
            return None
        sign = np.where(cos > 0, 1.0, -1.0)
        if np.array_equal(j, [0, 1, 2]) and np.all(sign > 0):
            return self
        arr = np.transpose(self.array, [2 - j[2], 2 - j[1], 2 - j[0]])     # (z, y, x)
        flips = tuple(2 - k for k in range(3) if sign[k] < 0)
        if flips:
            arr = np.flip(arr, axis=flips)
        n_xyz = np.array(self.array.shape[::-1])
        corner = np.array([0.0 if sign[k] > 0 else n_xyz[j[k]] - 1.0 for k in range(3)])
        src = np.zeros(3)
        src[j] = corner                 # this volume's index of the new first voxel
        return Volume(np.ascontiguousarray(arr), np.asarray(self.spacing, float)[j],
                      self.index_to_physical(src[None])[0],
                      np.asarray(self.direction, float)[:, j] * sign)

    def placed_on(self, grid: "Volume", atol: float = 1e-3):
        """This volume's voxels on ``grid``'s, when both sample one lattice (the
        same spacing and direction, up to the order and sense of the index axes
        (:meth:`reoriented_like`), origins a whole number of voxels apart: one
        is a crop or an extension of the other), zeros where this volume has no
        voxel; None on any other grid (that would need interpolation)."""
        same = self.reoriented_like(grid)
        if same is None:
            return None
        if same is not self:
            return same.placed_on(grid, atol)
        if not np.allclose(self.index_to_physical_matrix, grid.index_to_physical_matrix,
                           atol=atol):
            return None
        at = grid.physical_to_index(self.origin[None])[0]      # (x, y, z) on grid
        shift = np.round(at)
        if not np.all(np.abs(at - shift) * grid.spacing <= atol):
            return None
        shift = shift.astype(int)[::-1]                          # (z, y, x)
        out = np.zeros(grid.array.shape, self.array.dtype)
        lo = np.maximum(shift, 0)
        hi = np.minimum(shift + self.array.shape, grid.array.shape)
        if np.all(hi > lo):
            out[tuple(slice(a, b) for a, b in zip(lo, hi))] = \
                self.array[tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, shift))]
        return out

    def grid_difference(self, other: "Volume", atol: float = 1e-3) -> str:
        """'' when :meth:`same_grid`; else how ``other``'s grid differs from this
        one's (:func:`geometry_difference`, ``other``'s value first)."""
        if self.same_grid(other, atol):
            return ""
        return geometry_difference(other.geometry, self.geometry, atol) or "voxel positions"

    def crop(self, lo_zyx, hi_zyx) -> "Volume":
        """Sub-volume ``array[lo:hi]`` with its origin moved accordingly."""
        lo = np.asarray(lo_zyx, dtype=int)
        hi = np.asarray(hi_zyx, dtype=int)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        new_origin = self.index_to_physical(lo[::-1][None].astype(float))[0]
        return Volume(self.array[sl], self.spacing.copy(), new_origin, self.direction.copy())

    def to_sitk(self):
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(self.array)
        img.SetSpacing([float(v) for v in self.spacing])
        img.SetOrigin([float(v) for v in self.origin])
        img.SetDirection([float(v) for v in self.direction.ravel()])
        return img


def _from_sitk(img) -> Volume:
    import SimpleITK as sitk

    if img.GetDimension() != 3:
        raise ImageReadError(f"expected a 3-D image, got {img.GetDimension()}-D")
    arr = sitk.GetArrayFromImage(img)
    return Volume(arr, np.array(img.GetSpacing(), dtype=float),
                  np.array(img.GetOrigin(), dtype=float),
                  np.array(img.GetDirection(), dtype=float).reshape(3, 3))


_ITK_ITEMSIZE = {"8-bit unsigned integer": 1, "8-bit signed integer": 1,
                 "16-bit unsigned integer": 2, "16-bit signed integer": 2,
                 "32-bit unsigned integer": 4, "32-bit signed integer": 4,
                 "64-bit unsigned integer": 8, "64-bit signed integer": 8,
                 "32-bit float": 4, "64-bit float": 8}


_METAIMAGE_SUFFIXES = (".mha", ".mhd")
_NRRD_SUFFIXES = (".nrrd", ".nhdr")
#: the formats read with ITK that record an orientation (others are read only with
#: ``allow_no_orientation``)
ORIENTED_ITK_SUFFIXES = _METAIMAGE_SUFFIXES + _NRRD_SUFFIXES


def _itk_header(sp, name, allow_no_orientation=False):
    """A SimpleITK reader of ``sp`` with its header read and checked to be 3-D;
    MetaImage and NRRD headers checked on their own text first (where ITK
    would guess a value of the grid)."""
    import SimpleITK as sitk

    low = str(sp).lower()
    if low.endswith(_METAIMAGE_SUFFIXES):
        check_metaimage_header(sp, name)
    elif low.endswith(_NRRD_SUFFIXES):
        check_nrrd_header(sp, name, allow_no_orientation)
    elif low.endswith((".tif", ".tiff")):
        check_tiff_structure(sp, name)
    r = sitk.ImageFileReader()
    r.SetFileName(sp)
    itk_call(r.ReadImageInformation, f"{name} as an image")
    if r.GetDimension() != 3:
        raise ImageReadError(f"{name}: expected a 3-D image, got {r.GetDimension()}-D")
    if not low.endswith(ORIENTED_ITK_SUFFIXES) and not allow_no_orientation:
        # TIFF, VTK, GIPL, ...: no direction (TIFF no origin either, and ITK gives
        # its slices 1 mm): read only when the user takes that placement
        tiff = low.endswith((".tif", ".tiff"))
        suffix = Path(low).suffix
        kind = f"a {suffix} image" if suffix else "an image file without a suffix"
        raise ImageReadError(
            f"{name}: {kind} records no orientation "
            f"(ITK would place it unrotated{', at the origin 0, with 1 mm slices' if tiff else ''}"
            "); convert it to NIfTI, NRRD or MetaImage, or give --allow-no-orientation to "
            "read it so")
    return r


def _read_itk(p: Path, name: str, allow_no_orientation=False) -> Volume:
    """NRRD, MetaImage and other ITK formats: header checked before reading."""
    import SimpleITK as sitk

    from ._paths import itk_path

    with itk_path(p) as sp:
        r = _itk_header(sp, name, allow_no_orientation)
        ncomp = r.GetNumberOfComponents()
        if ncomp != 1:
            if any(k.startswith("Segment0_") for k in r.GetMetaDataKeys()):
                raise ImageReadError(
                    f"{name} is a 3D Slicer segmentation in {ncomp} layers (segments that "
                    "overlap); a label map is needed: in Slicer, export the segments to a "
                    "labelmap (Segmentations module, Export to files or to a labelmap "
                    "node) and save that")
            raise ImageReadError(f"{name} holds {ncomp} values per voxel (colour or vector "
                                 "data); a scalar grey-value image is needed")
        ptype = sitk.GetPixelIDValueAsString(r.GetPixelID())
        if ptype not in _ITK_ITEMSIZE:
            raise ImageReadError(f"{name}: pixel type {ptype!r} is not supported")
        check_size(name, r.GetSize(), _ITK_ITEMSIZE[ptype])
        n = int(np.prod([int(v) for v in r.GetSize()], dtype=object))
        check_data_extent(sp, name, n * _ITK_ITEMSIZE[ptype], n)
        check_geometry(name, r.GetSpacing(), r.GetDirection(), r.GetOrigin())
        img = itk_call(r.Execute, f"{name} as an image")
    vol = _from_sitk(img)
    check_values(name, vol.array)
    return vol


def read_file(path, allow_no_orientation=False):
    """Read one image file -> ``(Volume, info)``; every check before allocating.

    NIfTI (``.nii``, ``.nii.gz``, ``.hdr``/``.img``, NIfTI-1 and -2) is read
    as nibabel and the NIfTI convention place it (see :mod:`._nifti`);
    other formats (NRRD, MetaImage) with SimpleITK. ``info`` holds
    ``format`` and, for NIfTI, which transform placed the image.

    Raises
    ------
    FileNotFoundError
        No such file.
    ImageReadError
        Anything that makes the file untrustworthy, in one line: corrupt or
        truncated data, an inconsistent header, no orientation, a sheared
        transform, non-finite voxels, more voxels than memory holds.
    """
    from ._nifti import is_nifti, read_nifti

    p = Path(path)
    name = display_name(p)
    _check_file(p, name)
    if is_nifti(p):
        vol, info = read_nifti(p, allow_no_orientation)
        return vol, {"format": "nifti", **info}
    from ._dicom_seg import is_dicom_seg, read_dicom_seg

    if is_dicom_seg(p):
        return read_dicom_seg(p), {"format": "dicom-seg"}
    from ._dicom import dicom_header, read_dicom_file

    hdr = dicom_header(p)
    if hdr is not None:         # an enhanced multi-frame image, or refused with a hint
        vol, info = read_dicom_file(p, hdr)
        return vol, {**info, "format": "dicom"}
    _check_data_files(p, name)
    return _read_itk(p, name, allow_no_orientation), {"format": p.suffix.lstrip(".").lower() or "unknown"}


#: names of the files the readers take as one volume, matched case-insensitively
#: (a NIfTI pair's ``.img`` and a detached header's ``.raw`` are its data, not
#: volumes of their own): the one list for every folder scan (cases, label maps)
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".hdr", ".hdr.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def volume_suffix(name: str) -> str:
    """The volume suffix ``name`` ends with (:data:`VOLUME_SUFFIXES`, any case),
    as written in it; '' when it has none."""
    low = str(name).lower()
    s = next((s for s in VOLUME_SUFFIXES if low.endswith(s)), "")
    return str(name)[len(str(name)) - len(s):] if s else ""


def read_geometry(path, allow_no_orientation=False):
    """Where an image file lies, from its header alone (no voxels are read).

    Returns
    -------
    shape_zyx : tuple of 3 int
    spacing, origin : ndarray, shape (3,)
        mm, LPS (x, y, z).
    direction : ndarray, shape (3, 3)
        Columns: the index axes in LPS; the same placement :func:`read_file` gives.
    """

    from ._nifti import is_nifti, nifti_geometry
    from ._paths import itk_path

    p = Path(path)
    name = display_name(p)
    _check_file(p, name)
    if is_nifti(p):
        return nifti_geometry(p, allow_no_orientation)
    from ._dicom import dicom_header

    if dicom_header(p) is not None:     # a DICOM-SEG or a multi-frame image: read whole
        return read_file(p, allow_no_orientation)[0].geometry
    with itk_path(p) as sp:
        r = _itk_header(sp, name, allow_no_orientation)
    check_geometry(name, r.GetSpacing(), r.GetDirection(), r.GetOrigin())
    return (tuple(int(n) for n in r.GetSize()[::-1]), np.array(r.GetSpacing(), float),
            np.array(r.GetOrigin(), float), np.array(r.GetDirection(), float).reshape(3, 3))


def edge_name(direction, index_axis, last):
    """The anatomical side of a grid's first or last plane along an index axis.

    Parameters
    ----------
    direction : array-like, shape (3, 3)
        The grid's direction (LPS; columns: the i, j, k index axes).
    index_axis : int
        0: i, 1: j, 2: k (array axis ``2 - index_axis``).
    last : bool
        The last plane (the high indices) or the first.

    Returns
    -------
    str
        "right", "left", "anterior", "posterior", "inferior" or "superior":
        where the plane's outward direction points most.
    """
    d = np.asarray(direction, float)[:, index_axis] * (1.0 if last else -1.0)
    a = int(np.argmax(np.abs(d)))
    return (("right", "left"), ("anterior", "posterior"), ("inferior", "superior"))[a][
        int(d[a] > 0)]


def geometry_difference(a, b, atol=1e-3) -> str:
    """How grid ``a`` differs from grid ``b``, each ``(shape_zyx, spacing, origin,
    direction)`` as :func:`read_geometry` or :attr:`Volume.geometry` give them: the
    first difference only (size, spacing, direction or origin: x, y, z, mm and
    LPS), ``a``'s value first; '' when the size is the same and spacing,
    direction, origin and ``direction * spacing`` each agree within ``atol``.
    "voxel positions" when only the last does not (a small tilt of thick slices)."""
    if tuple(a[0]) != tuple(b[0]):
        return f"size {list(a[0][::-1])} vs {list(b[0][::-1])}"
    sa, sb = np.asarray(a[1], float), np.asarray(b[1], float)
    da, db = np.asarray(a[3], float).reshape(3, 3), np.asarray(b[3], float).reshape(3, 3)
    for name, x, y in (("spacing", sa, sb), ("direction", da.ravel(), db.ravel()),
                       ("origin (LPS)", a[2], b[2])):
        if not np.allclose(x, y, atol=atol):
            return f"{name} {np.round(x, 3).tolist()} vs {np.round(y, 3).tolist()}"
    if not np.allclose(da * sa[None, :], db * sb[None, :], atol=atol):
        return "voxel positions"
    return ""


def _check_data_files(p, name):
    """Every data file a detached MetaImage or NRRD header names is a regular
    file: ITK reading a named pipe waited for ever, and a device (/dev/urandom)
    is no data a run can hash or repeat."""
    import os

    from ._files import detached_data_files

    for f in detached_data_files(p):
        if f.is_file():
            continue
        shown = display_name(f)
        if not os.path.exists(f):
            raise ImageReadError(f"{name}: its data file {shown} is missing")
        if f.is_dir():
            raise ImageReadError(f"{name}: its data file {shown} is a folder")
        err = input_path_error(f, shown)
        raise ImageReadError(f"{name}: its data file {err}")


def _check_file(p, name):
    """A regular file, or the one-line error for what ``p`` is instead."""
    if p.is_dir():
        raise IsADirectoryError(f"{name} is a folder; an image file is expected here")
    if not p.is_file():
        if p.exists():                  # a named pipe, socket or device: never opened
            raise input_path_error(p, name)
        raise FileNotFoundError(f"no such image file: {name}")


def read_volume(path, allow_no_orientation=False) -> Volume:
    """Read a 3-D image file (NIfTI-1/2, NRRD, MHA, ...): see :func:`read_file`."""
    return read_file(path, allow_no_orientation)[0]


#: a "label map" with more distinct values than this (in a regular subsample of
#: every 4th voxel along each axis), or with negative values and more than
#: :data:`MAX_NEGATIVE_LABELS`, is an image. In that sample the TotalSegmentator
#: example CT holds 1350 values (-1068..3112 HU) and its MR 639 (-11..763); its
#: label maps (8-bit, not checked) up to 118 classes; a brain parcellation ~1000
MAX_LABEL_VALUES = 1000
MAX_NEGATIVE_LABELS = 64


def read_label_map(path, allow_no_orientation=False) -> Volume:
    """Read a label map; rejects non-integer or non-finite voxel values, and an
    image given as a label map (:data:`MAX_LABEL_VALUES`)."""
    return as_label_map(read_volume(path, allow_no_orientation), display_name(path))


def as_label_map(vol: Volume, name="mask") -> Volume:
    """``vol`` as a label map: integer voxels (a float map of whole numbers
    converted, on a new Volume: ``vol`` is left as it is); refuses non-integer
    values (a probability map) and an image (:data:`MAX_LABEL_VALUES`), with
    :class:`ImageReadError` naming ``name``."""
    a = vol.array
    if not np.issubdtype(a.dtype, np.integer):
        if a.dtype == bool:
            a = a.astype(np.uint8)
        elif not np.all(a == np.round(a)):
            raise ImageReadError(f"{name}: label map has non-integer values (a probability "
                                 "map? threshold it first)")
        else:
            a = a.astype(np.int32)
        vol = Volume(a, vol.spacing, vol.origin, vol.direction)
    if a.dtype.itemsize > 1 and a.size:       # 8-bit: at most 256 values, labels or not
        u = np.unique(a[::4, ::4, ::4])
        if len(u) > MAX_LABEL_VALUES or (u[0] < 0 and len(u) > MAX_NEGATIVE_LABELS):
            raise ImageReadError(
                f"{name}: an image, not a label map ({len(u)} distinct values "
                f"from {u[0]} to {u[-1]} in a sample of its voxels; a label map holds a few "
                "non-negative integers)")
    return vol


def write_label(vol: Volume, label, path, code=1, description=None, qform=None):
    """Label map (uint8) with exactly ``vol``'s geometry, written atomically.

    NIfTI (``.nii``/``.nii.gz``) is written with qform = sform and ``code``, and
    ``description`` in its header's ``descrip``; other formats through SimpleITK.
    ``qform``: the ``other_qform`` that :func:`read_file` reported for the
    NIfTI image of this grid, written as the label's qform (see
    :func:`~shapeprior.io._nifti.write_nifti`)."""
    import os

    from ._nifti import is_nifti, write_nifti

    a = np.asarray(label)
    a = a.view(np.uint8) if a.dtype == bool else a.astype(np.uint8, copy=False)   # no copy
    lab = Volume(a, vol.spacing, vol.origin, vol.direction)
    p = Path(path)
    if is_nifti(p):
        write_nifti(lab, p, code, description, qform)
        return
    import SimpleITK as sitk

    tmp = p.with_name(".tmp_" + p.name)
    sitk.WriteImage(lab.to_sitk(), str(tmp), True)
    os.replace(tmp, p)
