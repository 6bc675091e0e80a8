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

from ._nifti import check_nifti_complete


@dataclass
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
        raise ValueError(f"expected a 3-D image, got {img.GetDimension()}-D")
    arr = sitk.GetArrayFromImage(img)
    return Volume(arr, np.array(img.GetSpacing(), dtype=float),
                  np.array(img.GetOrigin(), dtype=float),
                  np.array(img.GetDirection(), dtype=float).reshape(3, 3))


def read_volume(path) -> Volume:
    """Read a 3-D image file (NIfTI, NRRD, MHA, ...) with SimpleITK."""
    import SimpleITK as sitk

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such image file: {p}")
    check_nifti_complete(p)
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise ValueError(f"cannot read {p.name} as an image: {str(exc).splitlines()[0]}") from None
    return _from_sitk(img)


def read_label_map(path) -> Volume:
    """Read a label map; rejects non-integer or non-finite voxel values."""
    vol = read_volume(path)
    a = vol.array
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{Path(path).name}: label map contains NaN or infinite values")
        if not np.all(a == np.round(a)):
            raise ValueError(f"{Path(path).name}: label map has non-integer values")
        vol.array = a.astype(np.int32)
    return vol
