"""DICOM series folders -> :class:`Volume`, with explicit geometry checks.

Series are listed from headers read with pydicom (pixels are not touched),
so any object in a folder (an RT dose, a structure set, a report, a file
that is not DICOM at all) is skipped instead of breaking the listing. A
DICOM file that is damaged (cut short in its header, or empty) is not: the
series it may belong to is refused naming it, since it may be a slice.
Only cross-sectional image objects count: RT, segmentation, report and
presentation objects are left out, and colour data is refused.

Geometry comes from the headers: ImageOrientationPatient gives the x (row)
and y (column) directions, the slices are sorted along their normal by
ImagePositionPatient, and the slice step must be uniform. Enhanced
(multi-frame) CT/MR/PET files are read with their per-frame positions.
Uncompressed pixel data are decoded by pydicom, which honours byte order
and bit depth; compressed transfer syntaxes (JPEG, JPEG 2000, RLE, ...)
are decoded by SimpleITK/GDCM from the sorted file list. The modality LUT
(RescaleSlope/Intercept) is applied.

Privacy: nothing from the DICOM header is printed, logged or returned except
geometry, modality and slice counts. Series are referred to by their index
in the folder and a short hash of the Series Instance UID (UIDs are on the
DICOM de-identification list), never by patient-related text.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from ._checks import (ImageReadError, check_geometry, check_size, check_values, display_name,
                      itk_call, native, reason_text, withholding_names)
from ._paths import itk_path
from ._volume import Volume

#: Deflated Explicit VR Little Endian: pydicom inflates the whole data set on reading
DEFLATED = "1.2.840.10008.1.2.1.99"
#: transfer syntaxes whose pixels pydicom decodes with NumPy alone
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", DEFLATED}
#: the native transfer syntax of each encoding pydicom finds in a data set without file
#: meta: (implicit VR, little endian) -> UID
_NATIVE_SYNTAX = {(True, True): "1.2.840.10008.1.2", (False, True): "1.2.840.10008.1.2.1",
                  (False, False): "1.2.840.10008.1.2.2"}
#: objects that are not cross-sectional grey-value images
SKIP_MODALITIES = {"RTDOSE", "RTSTRUCT", "RTPLAN", "RTIMAGE", "RTRECORD", "SEG", "SR", "PR",
                   "KO", "REG", "RWV", "DOC", "PLAN", "FID", "ECG", "HD", "AU"}
_SKIP_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.481",   # RT objects
                      "1.2.840.10008.5.1.4.1.1.66",    # raw data, registration, SEG
                      "1.2.840.10008.5.1.4.1.1.88",    # structured reports
                      "1.2.840.10008.5.1.4.1.1.11",    # presentation states
                      "1.2.840.10008.5.1.4.1.1.104",   # encapsulated documents
                      "1.2.840.10008.5.1.4.1.1.9")     # waveforms


def series_key(uid: str) -> str:
    """Non-identifying short key for a Series Instance UID."""
    return hashlib.sha256(uid.encode()).hexdigest()[:12]


def _is_image(ds) -> bool:
    sop = str(ds.get("SOPClassUID", ""))
    if sop.startswith(_SKIP_SOP_PREFIXES):
        return False
    if str(ds.get("Modality", "")).upper() in SKIP_MODALITIES:
        return False
    return "Rows" in ds and "Columns" in ds


_SCAN_CACHE = {}

#: the root of the standard's UIDs: a data set written without the preamble must name
#: a SOP class under it to be taken for DICOM
_STANDARD_ROOT = "1.2.840.10008."
#: the SOP classes of stored objects (images among them); a DICOMDIR's is not one
_STORAGE_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1."
#: a UID: digits and dots. A file whose series UID is damaged was a series of its
#: own, passed over as one image beside the scan; an image alone in its series with
#: a UID of other characters, beside other series, is taken as damaged (a whole
#: series of such UIDs, as some anonymisers write, is read)
_UID = re.compile(r"[0-9.]+")
#: the suffixes of DICOM files
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def _damage(ds, fh, size):
    """Why a DICOM file (Part 10, or a data set written without the preamble) whose
    header ``ds`` was just read from ``fh`` (``size`` bytes) is damaged, or None: its
    data set is empty, its SOP class is no UID (bytes flipped in the file meta), or its
    file meta names an image's SOP class yet the header ran to the end of the file
    without reaching the pixel data. pydicom reads a file cut anywhere in its header
    without a word, and the header then lacks what came after the cut (the rows, the
    series), so such a file used to be passed over as no image, and the series read
    without that slice."""
    meta = getattr(ds, "file_meta", None)
    sop = str((meta.get("MediaStorageSOPClassUID") if meta is not None else None)
              or ds.get("SOPClassUID", "") or "")
    if not len(ds):
        return "its header holds no data set (damaged, or cut short)"
    if not _UID.fullmatch(sop):
        return "its SOP Class UID is missing or damaged"
    if not sop.startswith(_STORAGE_SOP_PREFIX) or sop.startswith(_SKIP_SOP_PREFIXES) or \
            ("Rows" in ds and "Columns" in ds):
        return None                     # no image, or one whose pixel data the reader checks
    if fh.tell() >= size and _syntax(ds) != DEFLATED:
        return f"its header ends at byte {size}, before its pixel data"
    return "an image without rows and columns"


def _scan_folder(folder: Path):
    """``(series, damaged)``: ``{series uid: [(path, header dataset)]}`` of the image
    objects in ``folder``, and ``[(path, series uid or None, reason)]`` of its DICOM
    files that are damaged: one with the preamble and ``DICM`` whose header does not
    read or is damaged otherwise (:func:`_damage`: an image cut short before its pixel
    data, a SOP class that is no UID); one named ``.dcm``/``.dicom``/``.ima`` too short
    to be DICOM (an empty file: a slice whose copy failed) or without the ``DICM``
    magic (unless a data set written without the preamble); one image whose series UID
    is damaged or gone (:func:`_lone_damaged`). The series uid is None where the file
    names none that can be trusted. A data set written without the preamble
    (:func:`_bare_data_set`, any name but a hidden one's) is read as any other file,
    as GDCM reads it: it used to be passed over, and a series with such a slice at
    one end read one slice short. Any other file that is not DICOM is passed over."""
    from ._pydicom import pydicom

    entries = sorted((e for e in folder.iterdir() if e.is_file()),
                     key=lambda e: os.fsencode(e.name))
    stamp = tuple((os.fsencode(e.name), e.stat().st_size, e.stat().st_mtime_ns)
                  for e in entries)
    key = os.path.realpath(os.fsencode(folder))
    hit = _SCAN_CACHE.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    series, damaged = {}, []
    for e, (_, size, _) in zip(entries, stamp):
        part10 = False
        named = e.suffix.lower() in _DICOM_SUFFIXES and not e.name.startswith(".")
        if size < 132 and named:
            damaged.append((e, None, f"it holds {size} bytes" if size else "it is empty"))
            continue
        try:
            with open(e, "rb") as fh:
                part10 = _part10(fh)
                if part10:
                    ds = pydicom.dcmread(fh, stop_before_pixels=True)
                elif e.name.startswith("."):
                    continue
                else:           # an older writer's data set, without the preamble
                    ds = _bare_data_set(fh)
                    if ds is None:
                        raise ValueError("no DICOM data set")
                cut = _damage(ds, fh, size)
            uid = str(ds.get("SeriesInstanceUID", "") or "")
            if cut is not None:
                # a UID the cut may have shortened (the last element read), or one
                # damaged too, names no series
                whole = _UID.fullmatch(uid) and max(ds.keys()) > 0x0020000E
                damaged.append((e, uid if whole else None, cut))
                continue
            if not _is_image(ds):
                continue
            uid = uid or _derived_series(ds)
        except Exception as exc:  # noqa: BLE001 - not DICOM, or a header pydicom cannot parse
            if part10:
                damaged.append((e, None, f"its header does not read: {reason_text(exc)}"))
            elif named:         # not even a data set written without the preamble
                damaged.append((e, None, "named as DICOM, it holds no DICOM header (no DICM "
                                         "at byte 128)"))
            continue
        series.setdefault(uid, []).append((e, ds))
    for uid, why in _lone_damaged(series):
        damaged.append((series.pop(uid)[0][0], None, why))
    _SCAN_CACHE.clear()
    _SCAN_CACHE[key] = (stamp, (series, damaged))
    return series, damaged


def _lone_damaged(series):
    """``[(uid, reason)]`` of the series of ``series`` (:func:`_scan_folder`'s) that
    are one image whose series UID is damaged (other characters than a UID) or gone
    (beside images that have one), when the folder holds other series: such a file
    was a series of its own, passed over as a localizer beside the scan."""
    if len(series) < 2:
        return []
    named = any(not u.startswith("derived:") for u in series)
    out = []
    for uid, got in series.items():
        if len(got) != 1:
            continue
        if uid.startswith("derived:"):
            if named:
                out.append((uid, "it has no Series Instance UID, unlike the other images "
                                 "beside it"))
        elif not _UID.fullmatch(uid):
            out.append((uid, "its Series Instance UID holds other characters than a UID"))
    return out


def _scan(folder: Path):
    """``{series uid: [(path, header dataset)]}`` of the image objects in ``folder``."""
    return _scan_folder(folder)[0]


def damaged_files_text(folder):
    """``'NAME is a damaged DICOM file (why)'`` (``' (and N more)'`` after it) for the
    damaged DICOM files of ``folder`` (:func:`_scan_folder`), or ``''``: why a folder
    without a readable series has none."""
    damaged = _scan_folder(Path(folder))[1]
    if not damaged:
        return ""
    more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
    return f"{display_name(damaged[0][0])} is a damaged DICOM file ({damaged[0][2]}){more}"


def check_no_damaged_slice(folder, uid, key):
    """Refuse series ``uid`` (``key`` its short key) of ``folder`` when the folder
    holds a DICOM file that is damaged (:func:`_scan_folder`) and may be one of its
    slices: one of that series, or one whose series cannot be read. A slice cut
    short at either end of the series left no gap for the spacing check to see:
    the scan was read one slice short, with exit code 0."""
    for path, of, why in _scan_folder(Path(folder))[1]:
        if of is None or of == uid:
            raise ImageReadError(
                f"series {key}: {display_name(path)} is a damaged DICOM file ({why}); it "
                "may be a slice of this series, which would be read without it (a copy "
                "or download cut short? remove the file to read the rest)")


#: what tells apart the series of images that carry no Series Instance UID (an
#: anonymiser removed it, as in TotalSegmentator's example series): images agreeing on
#: all of these are taken as one series. Not the orientation: an oblique series'
#: direction cosines vary in their last digits from slice to slice (the reader checks
#: them with a tolerance), and two series apart only in orientation stay one, refused
#: as mixed orientations
DERIVED_SERIES_TAGS = ("Modality", "SeriesNumber", "StudyInstanceUID", "FrameOfReferenceUID",
                       "Rows", "Columns", "PixelSpacing", "SliceThickness", "NumberOfFrames")


def _derived_series(ds):
    """The series identity of an image without a Series Instance UID: a string
    (never a UID; it keys the folder's series and seeds a derived UID) of the
    values of :data:`DERIVED_SERIES_TAGS`, numbers rounded to 1e-4 (-0 as 0). Before, every
    such image of a folder was one series, and two series stored so (two
    reconstructions, a localizer beside the scan) could not be read apart."""
    parts = []
    for name in DERIVED_SERIES_TAGS:
        v = ds.get(name)
        if v is None:
            parts.append("")
            continue
        try:
            vals = [v] if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__") \
                else list(v)
            parts.append("\\".join(f"{round(float(x), 4) + 0.0:.4f}" for x in vals))
        except (TypeError, ValueError):
            parts.append(str(v))
    return "derived:" + "|".join(parts)


def list_series(folder):
    """``[(index, key, n_files, uid)]`` for the DICOM image series in ``folder``."""
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"no such folder: {display_name(d)}")
    found = _scan(d)
    return [(i, series_key(u), len(found[u]), u) for i, u in enumerate(sorted(found))]


#: how many levels below a folder given as a scan its DICOM series is looked for: a CD
#: or USB export keeps it in DICOM/PA0/ST0/SE0/ beside a DICOMDIR, a TCIA download in
#: collection/patient/study/series/
SERIES_SEARCH_DEPTH = 6
#: folders looked into at most by one search (a folder given by mistake, such as a home
#: folder, is not read through)
SERIES_SEARCH_FOLDERS = 2000


def _could_be_volume(entries) -> bool:
    """Whether one series' ``[(path, header)]`` can be a 3-D volume: a multi-frame
    object, or two images or more that are not a localizer (a scout or a
    three-plane survey, ImageType LOCALIZER: a CT or MR download keeps one beside
    the scan)."""
    try:
        if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for _, ds in entries):
            return True
    except (TypeError, ValueError):
        return True                     # the reader says what is wrong with it
    kinds = entries[0][1].get("ImageType", None) if entries else None
    kinds = [] if kinds is None else ([kinds] if isinstance(kinds, str) else list(kinds))
    return len(entries) >= 2 and "LOCALIZER" not in {str(k).strip().upper() for k in kinds}


def _volume_series(folder, found):
    """The series of ``found`` (:func:`list_series` of ``folder``) that can be volumes
    (one whose headers are not at hand is taken for one)."""
    headers = _scan(Path(folder))
    return [f for f in found if f[3] not in headers or _could_be_volume(headers[f[3]])]


def series_folders(folder, depth=SERIES_SEARCH_DEPTH, lister=None):
    """The folders that hold the DICOM image series at or below ``folder``: ``[folder]``
    when it holds one itself, else those below it (hidden ones skipped; a series
    folder's own subfolders not searched), at most ``depth`` levels down, in byte
    order of their paths. ``[]`` when there are none. ``lister``: what lists a
    folder's series (default :func:`list_series`). With the default, a folder
    whose only series are localizers or single images (a scout beside the CT in
    a download) is left out when another holds a volume."""
    list_series_ = lister or list_series
    top = Path(folder)
    if list_series_(top):
        return [top]
    scouts = set()
    found = _search_below(top, depth, list_series_, scouts)
    if list_series_ is list_series and scouts and len(scouts) < len(found):
        found = [f for f in found if f not in scouts]
    return found


def _search_below(top, depth, list_series_, scouts):
    """:func:`series_folders` below ``top``; ``scouts`` receives the folders whose
    series cannot be volumes (read with the default lister only)."""
    found, level, seen = [], [top], 0
    for _ in range(depth):
        deeper = []
        for f in level:
            try:
                subs = sorted((e for e in f.iterdir() if not e.name.startswith(".")
                               and e.is_dir()), key=lambda e: os.fsencode(e.name))
            except OSError:
                continue
            for sub in subs:
                seen += 1
                if seen > SERIES_SEARCH_FOLDERS:
                    return sorted(found, key=lambda e: os.fsencode(str(e)))
                try:
                    listed = list_series_(sub)
                    if listed and list_series_ is list_series and \
                            not _volume_series(sub, listed):
                        scouts.add(sub)
                except (OSError, ValueError):
                    continue
                (found if listed else deeper).append(sub)
        level = deeper
        if not level:
            break
    return sorted(found, key=lambda e: os.fsencode(str(e)))


def dicom_source(path):
    """What a DICOM-SEG or an RT Structure Set written for the input ``path``
    refers to: the folder of its series (:func:`series_folder`), or the file
    itself when it is one enhanced multi-frame image; None for any other input
    (a NIfTI file, a single slice)."""
    p = Path(path)
    if p.is_dir():
        return series_folder(p)
    hdr = dicom_header(p) if p.is_file() else None
    try:
        frames = int(hdr.get("NumberOfFrames", 1) or 1) if hdr is not None else 0
    except (TypeError, ValueError):
        return None
    return p if frames > 1 and _is_image(hdr) else None


def series_folder(folder):
    """The folder of the DICOM series ``folder`` stands for: itself when it holds one,
    else the one folder below it that does (:func:`series_folders`: a CD export,
    a download of one patient); ``folder`` itself when there is none or several
    (reading it then says so)."""
    found = series_folders(folder)
    return found[0] if len(found) == 1 else Path(folder)


def _relative(p, top):
    return display_name(p) if p == top else \
        os.fsencode(str(p.relative_to(top))).decode("utf-8", "backslashreplace")


def folders_below_text(found, top, deidentify=False, most=4):
    """``found`` (folders below ``top``) for a message: their paths relative to
    ``top``, the first ``most`` of them; with ``deidentify`` only their number (a
    folder may carry a patient's name)."""
    if deidentify or withholding_names():
        return f"{len(found)} folders"
    names = ", ".join(_relative(f, top) for f in found[:most])
    return f"{len(found)} folders ({names}{' ...' if len(found) > most else ''})"


#: a slice plane within this cosine of an axis's normal is named after it (tilted, and
#: by how much, beyond TILT_DEG); else oblique
PLANE_COSINE = 0.9
TILT_DEG = 1.0


def _series_summary(entries):
    """What tells the series of a folder apart without naming anyone: the
    modality, the series number, the slice size, the plane and the slice
    thickness of the first slice, e.g. ``", MR, series 3, 320 x 280, sagittal, 1 mm
    slices"`` (each left out where the header does not say it)."""
    ds = entries[0][1]
    parts = []
    modality = str(ds.get("Modality", "") or "").strip()
    if modality.isalnum() and len(modality) <= 8:      # a code (CT, MR, PT), nothing else
        parts.append(modality)
    try:
        parts.append(f"series {int(ds.SeriesNumber)}")
    except (AttributeError, TypeError, ValueError):
        pass
    try:
        parts.append(f"{int(ds.Rows)} x {int(ds.Columns)}")
    except (AttributeError, TypeError, ValueError):
        pass
    try:
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        normal = np.abs(np.cross(iop[:3], iop[3:]))
        size = float(np.linalg.norm(normal))
        axis = int(np.argmax(normal))
        if np.isfinite(size) and size > 1e-6:
            tilt = float(np.degrees(np.arccos(min(normal[axis] / size, 1.0))))
            plane = ("sagittal", "coronal", "axial")[axis]
            parts.append("oblique" if normal[axis] < PLANE_COSINE * size
                         else plane if tilt < TILT_DEG else f"{plane} tilted {tilt:.0f} deg")
    except (AttributeError, TypeError, ValueError):
        pass
    try:
        thick = float(ds.SliceThickness)
        if np.isfinite(thick) and thick > 0:
            parts.append(f"{thick:g} mm slices")
    except (AttributeError, TypeError, ValueError):
        pass
    if not _could_be_volume(entries):
        parts.append("not a volume (a localizer or one image)")
    return "".join(f", {p}" for p in parts)


def _floats(ds, name, n, what):
    try:
        v = [float(x) for x in ds[name].value]
    except (KeyError, TypeError, ValueError):
        v = []
    if len(v) != n or not np.all(np.isfinite(v)):
        raise ImageReadError(f"{what}: missing or invalid {name}")
    return np.array(v)


def _modality_lut(ds, item=None):
    """(slope, intercept) from a frame's PixelValueTransformation item or the dataset."""
    src = item if item is not None else ds
    try:
        slope = float(src.get("RescaleSlope", 1.0) or 1.0)
        inter = float(src.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError):
        raise ImageReadError("invalid RescaleSlope/RescaleIntercept") from None
    if not (np.isfinite(slope) and np.isfinite(inter)):
        raise ImageReadError("RescaleSlope/RescaleIntercept are not finite")
    return slope, inter


def _pixel_check(ds, what):
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    photo = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if spp != 1 or not photo.startswith("MONOCHROME"):
        raise ImageReadError(f"{what} holds colour data ({photo}, {spp} samples per pixel); "
                             "a grey-value CT or MR series is needed")
    bits = int(ds.get("BitsAllocated", 16) or 16)
    if bits not in (8, 16, 32, 64):
        raise ImageReadError(f"{what}: {bits} bits per pixel is not supported")
    return bits


def _to_dtype(values, integral):
    """Integer types where the modality LUT keeps integers (as ITK does), else float32."""
    if integral:
        lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
        for dt in (np.int16, np.int32):
            if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
                return values.astype(dt)
        return values.astype(np.int64)
    return values.astype(np.float32)


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
        Array (slice, row, column) = (z, y, x); LPS geometry.
    info : dict
        ``modality``, ``n_slices``, ``slice_spacing_mm``, ``slice_thickness_mm``,
        ``slice_gap_mm`` (spacing minus thickness when positive: the slabs do
        not touch), ``oblique`` (direction not axis-aligned), ``series_key``,
        ``multiframe``.

    Raises
    ------
    ImageReadError
        No series, several series and none chosen, a single slice, colour
        data, mixed orientations, duplicate or non-uniformly spaced slices,
        missing geometry, pixel data that do not match the header.
    """
    folder = Path(folder)
    fname = display_name(folder)
    found = list_series(folder)
    if not found:
        below = series_folders(folder)
        if len(below) == 1:             # a CD export, one patient's download: its one series
            vol, info = read_dicom_series(below[0], series, spacing_tol)
            return vol, {**info, "series_levels_below": len(below[0].relative_to(folder).parts)}
        if below:
            raise ImageReadError(f"{fname} holds no DICOM image series itself; "
                                 f"{folders_below_text(below, folder)} below it do: give "
                                 "the one to read")
        damaged = damaged_files_text(folder)
        if damaged:
            raise ImageReadError(f"no readable DICOM image series in {fname}: {damaged}")
        subs = sorted(display_name(p) for p in folder.iterdir() if p.is_dir())
        hint = "" if not subs else (
            f" (it has {len(subs)} subfolder{'s' if len(subs) > 1 else ''}; point at the one "
            "that holds the series)" if withholding_names() else
            f" (it has subfolders: {', '.join(subs[:5])}; point at one of them)")
        raise ImageReadError(f"no DICOM image series found in {fname}{hint}")
    skipped = 0
    if series is None and len(found) > 1:
        volumes = _volume_series(folder, found)     # a scout beside the scan is not asked for
        if len(volumes) == 1:
            skipped, found = len(found) - 1, volumes
    if series is None:
        if len(found) > 1:
            headers = _scan(folder)
            listing = ", ".join(f"#{i} (key {k}, {n} files{_series_summary(headers[u])})"
                                for i, k, n, u in found)
            raise ImageReadError(f"{fname} holds {len(found)} DICOM series: {listing}; "
                                 f"choose one with --series INDEX or KEY")
        pick = found[0]
    else:
        sel = [f for f in found if str(series) in (str(f[0]), f[1], f[3])]
        if not sel:
            raise ImageReadError(f"series {series!r} not found in {fname} "
                                 f"(indices 0..{len(found) - 1})")
        pick = sel[0]
    _, key, _, uid = pick
    check_no_damaged_slice(folder, uid, key)
    vol, info = _read_guarded(_scan(folder)[uid], key, len(found) + skipped, spacing_tol,
                              f"series {key}")
    if skipped:
        info["series_skipped_not_volumes"] = skipped
    return vol, info


def _read_guarded(items, key, n_series, spacing_tol, what):
    """:func:`_read_items`, any failure one :class:`ImageReadError` naming ``what``."""
    try:
        return _read_items(items, key, n_series, spacing_tol)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(f"{what}: not enough memory to read it") from None
    except Exception as exc:  # noqa: BLE001 - pydicom parses elements lazily, on access
        msg = " ".join(str(exc).split())[:200]
        raise ImageReadError(f"{what}: unreadable DICOM header "
                             f"({type(exc).__name__}: {msg})") from None


#: what a DICOM object that is not an image is called in a message, by modality
_OBJECT_NAMES = {"RTSTRUCT": "an RT Structure Set (contours, not a label map)",
                 "RTDOSE": "an RT dose grid", "RTPLAN": "an RT plan",
                 "SR": "a structured report", "PR": "a presentation state",
                 "KO": "a key object selection", "REG": "a registration"}


#: suffixes of a DICOM file written without the preamble (an older writer's)
_BARE_DICOM_SUFFIXES = _DICOM_SUFFIXES + ("",)
#: the groups such a data set starts with (file meta, identifying), in either byte
#: order: any other file is not force-read as one (pydicom would walk a file of zeros,
#: a raw volume's data beside its header, eight bytes at a time)
_BARE_FIRST_GROUPS = frozenset({0x0002, 0x0008})


def check_not_cut(ds, name, what):
    """Refuse ``ds`` (a data set just read, ``name`` its file, ``what`` the kind of
    object) when its file ends inside one of its elements: pydicom reads a file cut
    inside an element of defined length without a word, and the element then
    holds what was left (an RT Structure Set cut in its contours reads as one with
    fewer contours; a cut inside a sequence of undefined length raises instead).
    Each element as read, not yet decoded, is checked against the length its
    header gives, in the items of every sequence too (where a value representation
    pydicom does not know makes it read on as implicit VR, one element can swallow
    the rest of the file). An element that cannot be decoded is refused in one
    line as well (pydicom raises NotImplementedError there)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.datadict import dictionary_has_tag, dictionary_VR

    todo = [ds]
    while todo:
        item = todo.pop()
        for tag in item.keys():
            try:
                raw = item.get_item(tag)
                if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF and \
                        isinstance(raw.value, bytes) and len(raw.value) < raw.length:
                    raise ImageReadError(
                        f"{name}: truncated {what} (the file ends inside element {tag}: "
                        f"{len(raw.value)} of its {raw.length} bytes; a copy or download "
                        "cut short?)")
                vr = raw.VR
                if vr is None and dictionary_has_tag(tag):     # implicit VR
                    vr = dictionary_VR(tag)
                if vr == "SQ":
                    todo.extend(item[tag].value or [])
            except ImageReadError:
                raise
            except Exception as exc:  # noqa: BLE001 - a value pydicom cannot decode
                raise ImageReadError(f"{name}: unreadable {what} (element {tag}: "
                                     f"{reason_text(exc)})") from None


def dicom_header(path):
    """The header (no pixels) of ``path`` when it is a DICOM file: a 128-byte
    preamble and ``DICM``, or, named ``.dcm``/``.dicom``/``.ima`` or without a
    suffix, a bare data set that names its SOP class. Else None."""
    from ._pydicom import pydicom

    try:
        with open(path, "rb") as fh:
            if _part10(fh):
                return pydicom.dcmread(fh, stop_before_pixels=True)
            if Path(path).suffix.lower() not in _BARE_DICOM_SUFFIXES:
                return None
            return _bare_data_set(fh)
    except Exception:  # noqa: BLE001 - not DICOM after all: left to the other readers
        return None


def _part10(fh):
    """Whether the file ``fh`` (open at its start, left there) is a DICOM Part 10
    file: a 128-byte preamble and ``DICM``."""
    head = fh.read(132)
    fh.seek(0)
    return len(head) == 132 and head[128:132] == b"DICM"


def _bare_data_set(fh):
    """The header (no pixels) of a DICOM data set written without the preamble and
    ``DICM`` (an older writer's, as ACR-NEMA-era and some PACS exports write), read
    from the start of ``fh``, or None when it names no SOP class of the standard
    (any other file read this way is taken for none). pydicom infers its encoding;
    GDCM reads such a file as a slice of its series too. May raise."""
    from ._pydicom import pydicom

    start = fh.tell()
    group = fh.read(2)
    if len(group) < 2 or _BARE_FIRST_GROUPS.isdisjoint(
            {int.from_bytes(group, "little"), int.from_bytes(group, "big")}):
        return None
    fh.seek(start)
    ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
    return ds if str(ds.get("SOPClassUID", "") or "").startswith(_STANDARD_ROOT) else None


def read_dicom_file(path, hdr, spacing_tol=0.01):
    """One DICOM file given where an image file is expected (``hdr``: its header,
    :func:`dicom_header`) -> ``(Volume, info)``: an enhanced multi-frame CT/MR/PET
    object is a volume of its own. One slice of a series, a contour set (RTSTRUCT)
    or another non-image object is refused with what to give instead
    (:class:`ImageReadError`); ITK would read a slice as a one-slice volume."""
    name = display_name(path)
    modality = str(hdr.get("Modality", "") or "").strip().upper()
    if not _is_image(hdr):
        what = _OBJECT_NAMES.get(modality, f"a {modality or 'non-image'} object")
        hint = (": convert its structure to a label map on the scan's grid and give "
                f"that (shapeprior convert-rtstruct {name} --image SCAN -o FOLDER)"
                if modality == "RTSTRUCT"
                else "; a 3-D image (a DICOM series folder, NIfTI, NRRD or MetaImage) "
                     "is needed")
        raise ImageReadError(f"{name} is a DICOM file holding {what}{hint}")
    try:
        frames = int(hdr.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise ImageReadError(f"{name}: invalid NumberOfFrames") from None
    if frames <= 1:
        raise ImageReadError(f"{name} is one slice of a DICOM series (a single-frame "
                             f"{modality or 'DICOM'} image); give the folder that holds the "
                             "series instead of the file")
    uid = str(hdr.get("SeriesInstanceUID", "") or "") or _derived_series(hdr)
    return _read_guarded([(Path(path), hdr)], series_key(uid), 1, spacing_tol, name)


def _read_items(items, key, n_series, spacing_tol):
    """``(Volume, info)`` of one series' ``[(path, header)]``."""
    try:
        nframes = [int(ds.get("NumberOfFrames", 1) or 1) for _, ds in items]
    except (TypeError, ValueError):
        raise ImageReadError(f"series {key}: invalid NumberOfFrames") from None
    if max(nframes) > 1:
        if len(items) != 1:
            raise ImageReadError(f"series {key} mixes {len(items)} files with multi-frame "
                                 "objects; not a single volume")
        vol, pos_info = _read_multiframe(items[0], key, spacing_tol)
    else:
        if len(items) < 2:
            raise ImageReadError(f"series {key} has a single slice; a 3-D volume is needed")
        vol, pos_info = _read_single_frames(items, key, spacing_tol)
    first = items[0][1]
    step, thick = pos_info
    modality = str(first.get("Modality", "") or "").strip() or None
    check_geometry(f"series {key}", vol.spacing, vol.direction, vol.origin)
    check_values(f"series {key}", vol.array)
    info = {
        "source": "dicom", "series_key": key, "n_series_in_folder": n_series,
        "modality": modality, "n_slices": int(vol.array.shape[0]),
        "slice_spacing_mm": step, "slice_thickness_mm": thick,
        "slice_gap_mm": round(step - thick, 4) if thick and step - thick > 1e-3 else 0.0,
        "oblique": bool(np.abs(np.abs(vol.direction) - np.eye(3)).max() > 1e-3),
        "multiframe": max(nframes) > 1,
    }
    return vol, info


#: largest in-plane shift (mm) of a slice off the stack's normal line
SHEAR_TOL_MM = 0.01


def _sorted_positions(pos, normal, key, spacing_tol):
    """Order of slices along ``normal`` and the uniform step; refuses gaps,
    duplicates and sheared stacks (gantry tilt: slices shifted in-plane)."""
    P = np.asarray(pos, dtype=float)
    d = P @ normal
    order = np.argsort(d, kind="stable")
    rel = P[order] - P[order[0]]
    shift = np.linalg.norm(rel - np.outer(rel @ normal, normal), axis=1).max()
    if shift > SHEAR_TOL_MM:
        raise ImageReadError(
            f"series {key} is a sheared stack (slices shifted {shift:.3f} mm in-plane, e.g. "
            "gantry tilt); it is not a rectilinear grid: refusing to guess the geometry")
    gaps = np.diff(d[order])
    if np.any(gaps < 1e-6):
        # several images at one position: echoes, b-values, phases or time points
        # stored as one series, or a slice stored twice
        n_pos = int(np.sum(gaps >= 1e-6)) + 1
        each = len(d) / n_pos
        many = (f"holds {len(d)} images at {n_pos} positions ({each:g} per position: "
                "echoes, b-values, phases or time points?)" if each == int(each) and each > 1
                else f"has duplicate slice positions ({len(d)} images at {n_pos} positions)")
        raise ImageReadError(f"series {key} {many}; not a single volume")
    step = float(np.median(gaps))
    if np.abs(gaps - step).max() > spacing_tol * step + 1e-3:
        raise ImageReadError(
            f"series {key} has non-uniform slice spacing ({gaps.min():.3f}-{gaps.max():.3f} mm): "
            "missing slices or mixed acquisitions; refusing to guess the geometry")
    return order, step


def _axes(iop, key):
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 \
            or abs(row @ col) > 1e-3:
        raise ImageReadError(f"series {key}: ImageOrientationPatient is not two orthonormal "
                             "directions")
    return row, col, np.cross(row, col)


def _thickness(ds):
    try:
        t = float(ds.get("SliceThickness", "") or "nan")
    except (TypeError, ValueError):
        return None
    return t if np.isfinite(t) and t > 0 else None


def _read_single_frames(items, key, spacing_tol):
    what = f"series {key}"
    first = items[0][1]
    iop = _floats(first, "ImageOrientationPatient", 6, what)
    rows, cols = int(first.Rows), int(first.Columns)
    bits = _pixel_check(first, what)
    ps = _floats(first, "PixelSpacing", 2, what)
    pos = []
    for _, ds in items:
        if np.abs(_floats(ds, "ImageOrientationPatient", 6, what) - iop).max() > 1e-4:
            raise ImageReadError(f"series {key} mixes slice orientations; not a single volume")
        if int(ds.Rows) != rows or int(ds.Columns) != cols:
            raise ImageReadError(f"series {key} mixes image sizes; not a single volume")
        # ITK and GDCM take the first slice's spacing for all: a slice with its own
        # would be stretched onto the grid
        if np.abs(_floats(ds, "PixelSpacing", 2, what) - ps).max() > 1e-4 * ps.max():
            raise ImageReadError(f"series {key} mixes pixel spacings; not a single volume")
        _pixel_check(ds, what)
        pos.append(_floats(ds, "ImagePositionPatient", 3, what))
    row, col, normal = _axes(iop, key)
    order, step = _sorted_positions(pos, normal, key, spacing_tol)
    ts = {_syntax(ds) for _, ds in items}
    # ITK decodes every slice into the first one's pixel type: slices whose modality
    # LUT or stored bits differ are decoded as float64 here and typed as the pydicom
    # path types them (which applies each slice's LUT itself)
    kinds = set() if ts <= UNCOMPRESSED else {_stored_kind(ds) for _, ds in items}
    mixed = len(kinds) > 1
    check_size(what, [cols, rows, len(items)], 8 if mixed else max(bits // 8, 4))
    files = [items[i][0] for i in order]
    if ts <= UNCOMPRESSED:
        arr = _pixels_pydicom(files, what, (rows, cols))
    else:
        # GDCM pads a native slice's short pixel data with zeros: those slices of
        # a series that mixes transfer syntaxes are measured here first
        _check_native_lengths([f for f, ds in items if _syntax(ds) in UNCOMPRESSED], what,
                              rows * cols * (bits // 8))
        arr = _pixels_itk(files, what, (len(files), rows, cols), mixed)
        if mixed:
            luts = np.array([k[:2] for k in kinds])
            arr = _to_dtype(arr, bool(np.all(luts == np.round(luts))))
    D = np.column_stack([row, col, normal])
    vol = Volume(arr, np.array([ps[1], ps[0], step]), np.asarray(pos[order[0]]), D)
    return vol, (step, _thickness(first))


def _syntax(ds):
    """The transfer syntax UID of a header read by pydicom: its file meta's; for a
    data set written without the preamble (no file meta at all), the native one of
    the encoding pydicom found; else '' (a file meta without it: damaged)."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and len(meta):
        return str(meta.get("TransferSyntaxUID", "") or "")
    implicit, little = getattr(ds, "original_encoding", (None, None))
    return _NATIVE_SYNTAX.get((implicit, little), "")


def _check_native_lengths(files, what, n_bytes):
    """Refuse a native (uncompressed) slice whose pixel data is shorter than its
    header's ``n_bytes``: pydicom refuses it, GDCM pads it with zeros."""
    for f in files:
        _, have = _read_slice(f, what, lambda ds: len(ds.PixelData))
        if have < n_bytes:
            raise ImageReadError(f"cannot read {what}: slice {display_name(f)} holds {have} "
                                 f"bytes of pixel data, its header says {n_bytes}")


def _read_slice(f, what, get):
    """``(dataset, get(dataset))`` of one slice file read whole by pydicom; a cut
    or corrupt file, or short or undecodable pixel data, is one line naming it."""
    from ._pydicom import pydicom

    try:
        ds = pydicom.dcmread(f, force=True)     # force: a slice without the preamble
        syntax = _syntax(ds)
        if "TransferSyntaxUID" not in ds.file_meta and syntax:
            ds.file_meta.TransferSyntaxUID = syntax     # its encoding's, as GDCM does
        return ds, get(ds)
    except Exception as exc:  # noqa: BLE001 - short or corrupt pixel data
        raise ImageReadError(f"cannot read {what}: slice {display_name(f)}: "
                             f"{' '.join(str(exc).split())[:200]}") from None


def _pixels_pydicom(files, what, shape):
    slices, integral = [], True
    for f in files:
        ds, a = _read_slice(f, what, lambda ds: ds.pixel_array)
        if a.shape != shape:
            raise ImageReadError(f"{what}: slice {display_name(f)} holds {a.shape} pixels, "
                                 f"its header says {shape}")
        slope, inter = _modality_lut(ds)
        integral &= slope == int(slope) and inter == int(inter)
        slices.append(a.astype(np.float64) * slope + inter if (slope, inter) != (1.0, 0.0)
                      else a)
    arr = np.stack(slices)
    return _to_dtype(arr, integral) if arr.dtype.kind == "f" else native(arr)


def _stored_kind(ds):
    """What decides the pixel type a slice decodes to: its modality LUT (slope,
    intercept) and its stored bits (allocated, stored, signed)."""
    try:
        bits = tuple(int(ds.get(k, 0) or 0) for k in ("BitsAllocated", "BitsStored",
                                                     "PixelRepresentation"))
    except (TypeError, ValueError):
        bits = (-1, -1, -1)         # the pixel reader says what is wrong with it
    return _modality_lut(ds) + bits


def _pixels_itk(files, what, shape, as_float=False):
    """The slices ``files`` (in order) decoded by SimpleITK/GDCM with the modality LUT
    applied, shape ``shape``. ITK's series reader decodes every slice into the pixel
    type of the first: a later slice whose values need another (a larger slope: they
    wrapped round int16; a fractional one: they were cut to integers) is only right
    with ``as_float`` (float64 for all)."""
    import SimpleITK as sitk

    import contextlib

    with contextlib.ExitStack() as stack:
        names = [stack.enter_context(itk_path(f)) for f in files]
        r = sitk.ImageSeriesReader()
        r.SetFileNames(names)
        if as_float:
            r.SetOutputPixelType(sitk.sitkFloat64)
        img = itk_call(r.Execute, what)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(f"{what} holds colour data; a grey-value CT or MR series is needed")
    arr = sitk.GetArrayFromImage(img)
    if arr.shape != shape:
        raise ImageReadError(f"{what}: decoded {arr.shape} voxels, the headers say {shape}")
    return arr


def _frame_item(ds, i, name):
    """A functional-group item for frame ``i``: per-frame, else shared."""
    for seq in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        try:
            groups = ds[seq].value
            g = groups[i if seq.startswith("Per") else 0]
            if name in g and len(g[name].value):
                return g[name].value[0]
        except (KeyError, IndexError, TypeError):
            continue
    return None


def _read_multiframe(item, key, spacing_tol):
    """An enhanced multi-frame CT/MR/PET object, with per-frame positions."""
    from ._pydicom import pydicom

    path, hdr = item
    what = f"series {key}"
    n = int(hdr.get("NumberOfFrames", 1) or 1)
    rows, cols = int(hdr.Rows), int(hdr.Columns)
    bits = _pixel_check(hdr, what)
    if "PerFrameFunctionalGroupsSequence" not in hdr:
        raise ImageReadError(f"{what}: a multi-frame object without per-frame positions "
                             "(not an enhanced CT/MR/PET image)")
    pos, luts = [], []
    iop = ps = None
    for i in range(n):
        pp = _frame_item(hdr, i, "PlanePositionSequence")
        po = _frame_item(hdr, i, "PlaneOrientationSequence")
        pm = _frame_item(hdr, i, "PixelMeasuresSequence")
        if pp is None or po is None or pm is None:
            raise ImageReadError(f"{what}: frame {i + 1} lacks its position, orientation or "
                                 "pixel spacing")
        o = _floats(po, "ImageOrientationPatient", 6, what)
        s = _floats(pm, "PixelSpacing", 2, what)
        if iop is None:
            iop, ps = o, s
        elif np.abs(o - iop).max() > 1e-4 or np.abs(s - ps).max() > 1e-4:
            raise ImageReadError(f"{what} mixes frame orientations or pixel spacings; "
                                 "not a single volume")
        pos.append(_floats(pp, "ImagePositionPatient", 3, what))
        luts.append(_modality_lut(hdr, _frame_item(hdr, i, "PixelValueTransformationSequence")))
    row, col, normal = _axes(iop, key)
    order, step = _sorted_positions(pos, normal, key, spacing_tol)
    check_size(what, [cols, rows, n], max(bits // 8, 4))
    try:
        ds = pydicom.dcmread(path)
        a = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - short, corrupt or undecodable pixel data
        raise ImageReadError(f"cannot read {what}: {' '.join(str(exc).split())[:200]}") from None
    if a.shape != (n, rows, cols):
        raise ImageReadError(f"{what}: holds {a.shape} pixels, its header says "
                             f"{(n, rows, cols)}")
    luts = np.asarray(luts)
    if np.all(luts == [1.0, 0.0]):
        arr = a[order]
    else:
        arr = a[order].astype(np.float64) * luts[order, 0, None, None] + luts[order, 1, None, None]
        arr = _to_dtype(arr, bool(np.all(luts == np.round(luts))))
    pm0 = _frame_item(hdr, 0, "PixelMeasuresSequence")
    D = np.column_stack([row, col, normal])
    vol = Volume(native(arr), np.array([ps[1], ps[0], step]),
                 np.asarray(pos[order[0]]), D)
    return vol, (step, _thickness(pm0))


def read_scan(path, series=None, allow_no_orientation=False):
    """:func:`read_image` of a scan to segment: a DICOM-SEG file (a mask, which
    :func:`read_image` reads as a label map) is refused with what to give instead."""
    vol, info = read_image(path, series, allow_no_orientation)
    if info.get("format") == "dicom-seg":
        raise ImageReadError(f"{display_name(path)} is a DICOM-SEG (a segmentation), not a "
                             "scan: give the series it segments; a SEG is taken as a mask "
                             "(refine's mask, --reference, --init-mask)")
    return vol, info


def read_image(path, series=None, allow_no_orientation=False):
    """A NIfTI/NRRD/MHA file or a DICOM series folder -> ``(Volume, info)``."""
    from ._volume import read_file

    p = Path(path)
    if p.is_dir():
        return read_dicom_series(p, series)
    vol, info = read_file(p, allow_no_orientation)
    if info.get("format") == "dicom":   # one multi-frame file: placed as a series is
        return vol, info
    D = vol.direction
    return vol, {"source": "file", **info,
                 "oblique": bool(np.abs(np.abs(D) - np.eye(3)).max() > 1e-3),
                 "slice_gap_mm": 0.0}
