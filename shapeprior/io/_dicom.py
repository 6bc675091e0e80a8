"""DICOM series folders -> :class:`Volume`, with explicit geometry checks.

Privacy: nothing from the DICOM header is printed, logged or returned except
geometry, modality and slice counts. Series are referred to by their index
in the folder and a short hash of the Series Instance UID (UIDs are on the
DICOM de-identification list), never by patient-related text.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ._checks import (ImageReadError, check_geometry, check_size, check_values, display_name,
                      itk_reason)
from ._paths import itk_path
from ._volume import _ITK_ITEMSIZE, Volume


def series_key(uid: str) -> str:
    """Non-identifying short key for a Series Instance UID."""
    return hashlib.sha256(uid.encode()).hexdigest()[:12]


def list_series(folder):
    """``[(index, key, n_files, uid)]`` for the DICOM series in ``folder``."""
    import SimpleITK as sitk

    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"no such folder: {display_name(d)}")
    r = sitk.ImageSeriesReader()
    r.GlobalWarningDisplayOff()          # GDCM warns on stderr for folders without series
    with itk_path(d) as sd:
        try:
            uids = sorted(r.GetGDCMSeriesIDs(sd))
            return [(i, series_key(u), len(r.GetGDCMSeriesFileNames(sd, u)), u)
                    for i, u in enumerate(uids)]
        except RuntimeError as exc:
            raise ImageReadError(f"cannot list DICOM series in {display_name(d)}: "
                                 f"{itk_reason(exc)}") from None


def _tag(reader, k, tag):
    try:
        return reader.GetMetaData(k, tag) if reader.HasMetaDataKey(k, tag) else None
    except RuntimeError:
        return None


def read_dicom_series(folder, series=None, spacing_tol=0.01):
    """Read one DICOM series as a volume.

    Parameters
    ----------
    folder : path
    series : int or str, optional
        Index or key (see :func:`list_series`) of the series; required when
        the folder holds several.
    spacing_tol : float
        Allowed relative variation of the slice spacing.

    Returns
    -------
    volume : Volume
    info : dict
        ``modality``, ``n_slices``, ``slice_spacing_mm``, ``slice_thickness_mm``,
        ``slice_gap_mm`` (spacing minus thickness when positive: the slabs do
        not touch), ``oblique`` (direction not axis-aligned), ``series_key``.

    Raises
    ------
    ValueError
        No series, several series and none chosen, a single slice, mixed
        orientations, duplicate or non-uniformly spaced slices, no pixel data.
    """
    with itk_path(folder) as sfolder:
        return _read_series(Path(folder), sfolder, series, spacing_tol)


def _read_series(folder, sfolder, series, spacing_tol):
    import SimpleITK as sitk

    fname = display_name(folder)
    found = list_series(folder)
    if not found:
        subs = sorted(p.name for p in Path(folder).iterdir() if p.is_dir())
        hint = f" (it has subfolders: {', '.join(subs[:5])}; point at one of them)" if subs else ""
        raise ImageReadError(f"no DICOM image series found in {fname}{hint}")
    if series is None:
        if len(found) > 1:
            listing = ", ".join(f"#{i} (key {k}, {n} files)" for i, k, n, _ in found)
            raise ImageReadError(f"{fname} holds {len(found)} DICOM series: {listing}; "
                             f"choose one with --series INDEX or KEY")
        pick = found[0]
    else:
        sel = [f for f in found if str(series) in (str(f[0]), f[1], f[3])]
        if not sel:
            raise ImageReadError(f"series {series!r} not found in {fname} "
                             f"(indices 0..{len(found) - 1})")
        pick = sel[0]
    _, key, n_files, uid = pick
    r = sitk.ImageSeriesReader()
    files = r.GetGDCMSeriesFileNames(sfolder, uid)
    if len(files) < 2:
        raise ImageReadError(f"series {key} has a single slice; a 3-D volume is needed")
    _check_series_header(files[0], key, len(files))
    r.SetFileNames(files)
    r.MetaDataDictionaryArrayUpdateOn()
    try:
        img = r.Execute()
    except RuntimeError as exc:
        raise ImageReadError(f"cannot read DICOM series {key}: {itk_reason(exc)}") from None
    direction = np.array(img.GetDirection(), dtype=float).reshape(3, 3)
    normal = np.cross(direction[:, 0], direction[:, 1])
    pos, orients = [], []
    for k in range(len(files)):
        p = _tag(r, k, "0020|0032")
        o = _tag(r, k, "0020|0037")
        if p is None or o is None:
            raise ImageReadError(f"series {key}: slice {k} lacks position/orientation "
                             "(not an image series?)")
        pos.append([float(v) for v in p.split("\\")])
        orients.append([float(v) for v in o.split("\\")])
    orients = np.array(orients)
    if np.abs(orients - orients[0]).max() > 1e-4:
        raise ImageReadError(f"series {key} mixes slice orientations; not a single volume")
    d = np.sort(np.array(pos) @ normal)
    gaps = np.diff(d)
    if np.any(gaps < 1e-6):
        raise ImageReadError(f"series {key} has duplicate slice positions")
    step = float(np.median(gaps))
    if np.abs(gaps - step).max() > spacing_tol * step + 1e-3:
        raise ImageReadError(
            f"series {key} has non-uniform slice spacing ({gaps.min():.3f}-{gaps.max():.3f} mm): "
            "missing slices or mixed acquisitions; refusing to guess the geometry")
    thick = _tag(r, 0, "0018|0050")
    thick = float(thick) if thick not in (None, "") else None
    modality = (_tag(r, 0, "0008|0060") or "").strip() or None
    vol = Volume(sitk.GetArrayFromImage(img), np.array(img.GetSpacing(), dtype=float),
                 np.array(img.GetOrigin(), dtype=float), direction)
    check_geometry(f"series {key}", vol.spacing, vol.direction, vol.origin)
    check_values(f"series {key}", vol.array)
    info = {
        "source": "dicom", "series_key": key, "n_series_in_folder": len(found),
        "modality": modality, "n_slices": len(files), "slice_spacing_mm": step,
        "slice_thickness_mm": thick,
        "slice_gap_mm": round(step - thick, 4) if thick and step - thick > 1e-3 else 0.0,
        "oblique": bool(np.abs(np.abs(direction) - np.eye(3)).max() > 1e-3),
    }
    return vol, info


def _check_series_header(first_file, key, n_files):
    """Pixel layout of the first slice: one scalar per pixel, and the whole
    series must fit in memory, before anything is allocated."""
    import SimpleITK as sitk

    r = sitk.ImageFileReader()
    r.SetFileName(first_file)
    try:
        r.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageReadError(f"cannot read DICOM series {key}: {itk_reason(exc)}") from None
    ncomp = r.GetNumberOfComponents()
    if ncomp != 1:
        raise ImageReadError(f"series {key} holds {ncomp} values per pixel (colour data); "
                             "a grey-value CT or MR series is needed")
    ptype = sitk.GetPixelIDValueAsString(r.GetPixelID())
    if ptype not in _ITK_ITEMSIZE:
        raise ImageReadError(f"series {key}: pixel type {ptype!r} is not supported")
    size = list(r.GetSize())
    check_size(f"series {key}", [size[0], size[1], n_files], _ITK_ITEMSIZE[ptype])


def read_image(path, series=None, allow_no_orientation=False):
    """A NIfTI/NRRD/MHA file or a DICOM series folder -> ``(Volume, info)``."""
    from ._volume import read_file

    p = Path(path)
    if p.is_dir():
        return read_dicom_series(p, series)
    vol, info = read_file(p, allow_no_orientation)
    D = vol.direction
    return vol, {"source": "file", **info,
                 "oblique": bool(np.abs(np.abs(D) - np.eye(3)).max() > 1e-3),
                 "slice_gap_mm": 0.0}
