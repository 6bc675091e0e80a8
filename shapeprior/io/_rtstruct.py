"""RT Structure Sets (DICOM RTSTRUCT): organ contours as radiotherapy planning
systems store them, rasterised onto the scan they were drawn on.

A structure set holds, per structure (ROI), closed polygons in patient
coordinates (LPS mm), each on one slice of the scan. It holds no grid of its
own: the scan gives it. Each polygon is filled on its slice (voxel centres
inside or on it); polygons of one structure on one slice combine by
exclusive or, so a polygon inside another is a hole (how planning systems
store a ring). A contour that does not lie in one of the scan's slice planes
(a structure set of another scan or reconstruction) is refused, not moved to
the nearest slice.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ._checks import ImageReadError, display_name, reason_text
from ._volume import Volume

#: RT Structure Set Storage
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
#: how far (in slices) the points of one contour may lie from their slice's plane:
#: planning systems write coordinates to 0.01 mm or so; a contour drawn on another
#: scan's slices lies up to half a slice off
SLICE_TOLERANCE = 0.1


def is_rtstruct(hdr) -> bool:
    """Whether a DICOM header (:func:`~shapeprior.io._dicom.dicom_header`) is an RT
    Structure Set's."""
    return hdr is not None and (
        str(hdr.get("SOPClassUID", "") or "") == RTSTRUCT_SOP_CLASS
        or str(hdr.get("Modality", "") or "").strip().upper() == "RTSTRUCT")


def is_rtstruct_file(path) -> bool:
    """Whether ``path`` is a regular file holding an RT Structure Set (only its
    header is read)."""
    from ._dicom import dicom_header

    return Path(path).is_file() and (is_rtstruct(dicom_header(path)) or _meta_says_rtstruct(path))


def _meta_says_rtstruct(path) -> bool:
    """Whether the file meta information of ``path`` names an RT Structure Set: all a
    file cut short inside a sequence still tells (its header no longer reads)."""
    from ._pydicom import pydicom

    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:  # noqa: BLE001 - not DICOM, or cut inside its meta
        return False
    return str(meta.get("MediaStorageSOPClassUID", "") or "") == RTSTRUCT_SOP_CLASS


def _read(path):
    """The whole data set of an RT Structure Set file (ImageReadError otherwise)."""
    from ._pydicom import pydicom

    from ._checks import input_path_error
    from ._dicom import check_not_cut, dicom_header

    name = display_name(path)
    if not Path(path).is_file():            # missing, a folder, a pipe: never opened
        if Path(path).is_dir():
            raise ImageReadError(f"{name} is a folder; give the RT Structure Set file in it")
        raise input_path_error(path)
    if not is_rtstruct(dicom_header(path)) and not _meta_says_rtstruct(path):
        raise ImageReadError(f"{name} is not a DICOM RT Structure Set (RTSTRUCT)")
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt past the header
        raise ImageReadError(f"{name}: unreadable RT Structure Set "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") \
            from None
    check_not_cut(ds, name, "RT Structure Set")
    return ds


def _text(v) -> str:
    return " ".join(str(v or "").split())


def _contour_data(c):
    """A contour's ContourData as floats: parsed from its bytes where it was not yet
    decoded (pydicom makes an object per number: a body outline holds 10^5)."""
    item = c.get_item(0x30060050)
    if item is None:
        return np.zeros(0)
    raw = getattr(item, "value", None)
    if isinstance(raw, bytes) and getattr(item, "VR", "DS") in ("DS", None):
        text = raw.replace(b"\0", b"").strip()
        return np.array(text.split(b"\\"), dtype=float) if text else np.zeros(0)
    return np.asarray([float(v) for v in (c.get("ContourData") or [])], float)


def _structures(ds, name):
    """``[{number, name, frame_of_reference, contours: [(kind, points (P, 3))]}]``."""
    if "StructureSetROISequence" not in ds and "ROIContourSequence" not in ds:
        raise ImageReadError(f"{name}: malformed RT Structure Set (it holds neither a Structure "
                             "Set ROI Sequence nor an ROI Contour Sequence; cut short?)")
    try:
        rois = {}
        for r in ds.get("StructureSetROISequence", []) or []:
            number = int(r.ROINumber)
            rois[number] = {"number": number, "name": _text(r.get("ROIName")),
                            "frame_of_reference": _text(r.get("ReferencedFrameOfReferenceUID"))
                            or None, "contours": []}
        for rc in ds.get("ROIContourSequence", []) or []:
            number = int(rc.ReferencedROINumber)
            roi = rois.setdefault(number, {"number": number, "name": "",
                                           "frame_of_reference": None, "contours": []})
            for c in rc.get("ContourSequence", []) or []:
                kind = _text(c.get("ContourGeometricType")).upper()
                data = _contour_data(c)
                if data.size % 3:
                    raise ValueError(f"a contour of structure {number} holds {data.size} "
                                     "coordinates, not a multiple of 3")
                roi["contours"].append((kind, data.reshape(-1, 3)))
    except (AttributeError, TypeError, ValueError, KeyError, NotImplementedError) as exc:
        # (pydicom decodes an element when it is first read: a value representation it
        # does not know raises NotImplementedError there)
        raise ImageReadError(f"{name}: malformed RT Structure Set ({reason_text(exc)})") \
            from None
    for roi in rois.values():
        pts = [p for _, p in roi["contours"]]
        if pts and not all(np.isfinite(p).all() for p in pts):
            raise ImageReadError(f"{name}: structure {roi['name'] or roi['number']} has "
                                 "contour coordinates that are not finite numbers")
    return [rois[k] for k in sorted(rois)]


def structure_title(s) -> str:
    """How a structure of :func:`read_rtstruct`'s ``info`` is named to the user:
    its ROI name, or ``#N`` (its ROI number) for one without a name."""
    return s["name"] or f"#{s['number']}"


def list_structures(path):
    """The structures of an RT Structure Set file.

    Returns
    -------
    list of dict
        Per structure, in ROI number order: ``number`` (ROI Number), ``name``
        (ROI Name), ``closed_contours`` (the polygons that can be filled),
        ``other_contours`` (points, open polylines: never filled).
    """
    ds = _read(path)
    out = []
    for roi in _structures(ds, display_name(path)):
        closed = sum(1 for k, p in roi["contours"] if k == "CLOSED_PLANAR" and len(p) >= 3)
        out.append({"number": roi["number"], "name": roi["name"],
                    "closed_contours": closed,
                    "other_contours": len(roi["contours"]) - closed})
    return out


def _listing(rois, most=12):
    names = [f"{r['name'] or '(unnamed)'} (#{r['number']})" for r in rois]
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most
                                      else "")


def _name_key(text) -> str:
    """A ROI name as compared: case, spaces, underscores and hyphens aside
    (``Kidney_L``, ``kidney l`` and ``KIDNEY-L`` are one name)."""
    return re.sub(r"[\s_\-]+", " ", str(text)).strip().casefold()


def _choose(rois, structures, name, option="--structure"):
    """The structures asked for, in that order: each a ROI name (:func:`_name_key`),
    ``#N`` for ROI number N, or alternatives joined by ``|`` (``Kidney_L|L_Kidney``:
    the first that the set holds, for a data set whose sets name it differently);
    without any, the one structure that has closed contours (``option``: the
    command-line option that chooses, named when there are several)."""
    fillable = [r for r in rois if any(k == "CLOSED_PLANAR" for k, _ in r["contours"])]
    if not structures:
        if len(fillable) == 1:
            return fillable
        if not fillable:
            raise ImageReadError(f"{name} holds no closed contour (structures: "
                                 f"{_listing(rois) or 'none'}): nothing to fill")
        raise ImageReadError(f"{name} holds {len(fillable)} structures with contours: "
                             f"{_listing(fillable)}; choose with {option} NAME")
    chosen = []
    for want in structures:
        hits = []
        for w in (_text(x) for x in str(want).split("|")):
            m = re.fullmatch(r"#(\d+)", w)
            hits = [r for r in rois if r["number"] == int(m.group(1))] if m else \
                [r for r in rois if w and _name_key(r["name"]) == _name_key(w)]
            if hits:
                break
        if not hits:
            raise ImageReadError(f"{name} holds no structure {want!r}; it holds "
                                 f"{_listing(rois) or 'none'}")
        if len(hits) > 1:
            raise ImageReadError(f"{name} holds {len(hits)} structures named {want!r} "
                                 f"(ROI numbers {', '.join(str(r['number']) for r in hits)}): "
                                 "name one by its number, e.g. #"
                                 f"{hits[0]['number']}")
        if hits[0] in chosen:
            raise ImageReadError(f"structure {want!r} is named twice")
        if not any(k == "CLOSED_PLANAR" for k, _ in hits[0]["contours"]):
            raise ImageReadError(f"structure {hits[0]['name'] or want!r} of {name} holds no "
                                 "closed contour (only points or open lines): nothing to fill")
        chosen.append(hits[0])
    return chosen


def fill_polygon(rows, cols, shape):
    """The pixels of a ``shape`` (rows, cols) plane whose centres lie inside the
    closed polygon ``(rows, cols)`` (pixel index units), by the even-odd rule; a
    centre on its boundary is inside on the left and upper edges, outside on
    the right and lower ones (each pixel of a tiling of polygons belongs to one).

    A scanline fill: the cost grows with the polygon's points and the rows it
    spans, not with its area times its points (a body outline of 2,000 points
    over 500 rows fills in milliseconds)."""
    out = np.zeros(shape, bool)
    y0, x0 = np.asarray(rows, float), np.asarray(cols, float)
    y1, x1 = np.roll(y0, -1), np.roll(x0, -1)
    lo = np.ceil(np.minimum(y0, y1))
    hi = np.ceil(np.maximum(y0, y1)) - 1               # rows r with min <= r < max
    lo, hi = np.maximum(lo, 0), np.minimum(hi, shape[0] - 1)
    n = np.maximum(hi - lo + 1, 0).astype(np.int64)
    if not n.sum():
        return out
    e = np.repeat(np.arange(y0.size), n)               # one crossing per (edge, row)
    r = lo[e] + (np.arange(e.size) - np.repeat(np.cumsum(n) - n, n))
    x = x0[e] + (r - y0[e]) * (x1[e] - x0[e]) / (y1[e] - y0[e])
    order = np.lexsort((x, r))
    r, x = r[order].astype(np.int64), x[order]
    # each row crosses the polygon an even number of times: fill between pairs
    a, b = x[0::2], x[1::2]
    rr = r[0::2]
    c0 = np.maximum(np.ceil(a), 0).astype(np.int64)
    c1 = np.minimum(np.ceil(b) - 1, shape[1] - 1).astype(np.int64)   # centres c < b
    keep = c1 >= c0
    rr, c0, c1 = rr[keep], c0[keep], c1[keep]
    diff = np.zeros((shape[0], shape[1] + 1), np.int32)
    np.add.at(diff, (rr, c0), 1)
    np.add.at(diff, (rr, c1 + 1), -1)
    out[:] = np.cumsum(diff[:, :-1], axis=1) > 0
    return out


def read_rtstruct(path, grid: Volume, structures=None, frame_of_reference=None,
                  option="--structure"):
    """Fill the contours of an RT Structure Set on a scan's grid.

    Parameters
    ----------
    path : str or Path
        The RTSTRUCT file.
    grid : Volume
        The scan the contours were drawn on (its geometry is used, not its voxels).
    structures : sequence of str, optional
        The structures to fill, by ROI Name (case aside) or ``#N`` (ROI Number);
        the first is label 1, the next 2, and so on. Default: the one structure
        that has closed contours (several: refused, naming them).
    frame_of_reference : str, optional
        The scan's Frame of Reference UID, when known (a DICOM scan): a
        structure set that refers to another is refused.
    option : str
        The command-line option that chooses structures, named in the error
        for a set of several structures and none chosen.

    Returns
    -------
    label : Volume
        uint8 label map on ``grid`` (array (z, y, x), LPS geometry); where two
        structures overlap, the later one's label.
    info : dict
        ``structures`` (per structure: ``label``, ``name``, ``number``,
        ``contours`` filled, ``slices``, ``voxels``, ``volume_ml``,
        ``outside_contours``: contours whose slice lies outside the grid, left
        out; ``clipped_contours``: contours on the grid's slices that reach
        beyond its rows or columns, filled within them), ``overlap_voxels``
        (voxels in more than one structure),
        ``slice_axis`` ('x', 'y' or 'z': the grid's index axis the contours
        are drawn across), ``frame_of_reference_checked``, ``coordinates``
        ('LPS').

    Raises
    ------
    ImageReadError
        Not an RT Structure Set; no such structure; a structure set of another
        frame of reference; contours not in the grid's slice planes, or all of
        them outside the grid.
    """
    name = display_name(path)
    ds = _read(path)
    rois = _structures(ds, name)
    chosen = _choose(rois, [s for s in (structures or ()) if _text(s)], name, option)
    if len(chosen) > 255:
        raise ImageReadError(f"{len(chosen)} structures: at most 255 fit a label map")
    theirs = {r["frame_of_reference"] for r in chosen} - {None}
    if not theirs:              # the ROIs name none: the set's own references
        theirs = _references(ds)[1]
    if frame_of_reference is not None and theirs and frame_of_reference not in theirs:
        raise ImageReadError(f"{name} was drawn in another frame of reference than the scan "
                             "(its Frame of Reference UID differs from the series'): the "
                             "contours belong to another scan")
    shape_zyx = grid.array.shape
    size_xyz = np.array(shape_zyx[::-1])
    label = np.zeros(shape_zyx, np.uint8)
    seen = np.zeros(shape_zyx, np.uint16)
    axis = None
    records = []
    for value, roi in enumerate(chosen, start=1):
        mask = np.zeros(shape_zyx, bool)
        slices, filled, outside, clipped = set(), 0, 0, 0
        for kind, pts in roi["contours"]:
            if kind != "CLOSED_PLANAR" or len(pts) < 3:
                continue
            idx = grid.physical_to_index(pts)                  # (P, 3): x, y, z
            spread = idx.max(0) - idx.min(0)
            a = int(np.argmin(spread)) if axis is None else axis
            if spread[a] > 2 * SLICE_TOLERANCE:
                raise ImageReadError(
                    f"structure {roi['name'] or roi['number']} of {name}: a contour is not "
                    f"drawn on the scan's slices (its points span {spread[a]:.2f} slices "
                    f"across the {'xyz'[a]} axis of the grid): a structure set of another "
                    "scan or orientation")
            axis = a
            c = float(idx[:, a].mean())
            k = int(np.round(c))
            if not 0 <= k < size_xyz[a]:
                outside += 1
                continue
            if abs(c - k) > SLICE_TOLERANCE:
                raise ImageReadError(
                    f"structure {roi['name'] or roi['number']} of {name}: a contour lies "
                    f"between two of the scan's slices ({abs(c - k):.2f} of a slice off "
                    "its nearest): drawn on another scan's slices; give that scan")
            inplane = [i for i in range(3) if i != a]          # x/y/z index axes, ascending
            reach = idx[:, inplane]
            clipped += bool((reach < -0.5).any() or (reach > size_xyz[inplane] - 0.5).any())
            rows, cols = idx[:, inplane[1]], idx[:, inplane[0]]
            sl = [slice(None)] * 3
            sl[2 - a] = k                                      # the slice's array axis
            plane = mask[tuple(sl)]        # a view, (rows, cols): the higher index axis first
            plane ^= fill_polygon(rows, cols, plane.shape)
            slices.add(k)
            filled += 1
        if not filled:
            raise ImageReadError(
                f"structure {roi['name'] or roi['number']} of {name}: all its {outside} "
                "contours lie outside the scan's grid: a structure set of another scan?")
        seen += mask
        label[mask] = value
        n = int(np.count_nonzero(mask))
        records.append({"label": value, "name": roi["name"], "number": roi["number"],
                        "contours": filled, "slices": len(slices), "voxels": n,
                        "volume_ml": n * float(np.prod(grid.spacing)) / 1000.0,
                        "outside_contours": outside, "clipped_contours": clipped})
    info = {"structures": records, "overlap_voxels": int(np.count_nonzero(seen > 1)),
            "slice_axis": "xyz"[axis], "frame_of_reference_checked":
                bool(frame_of_reference is not None and theirs), "coordinates": "LPS"}
    return Volume(label, grid.spacing.copy(), grid.origin.copy(), grid.direction.copy()), info


def scan_frame_of_reference(path, series=None):
    """The Frame of Reference UID of a DICOM scan (a series folder, one below it, or
    an enhanced multi-frame file), or None (not DICOM, or not recorded)."""
    from ._dicom import _scan, _volume_series, dicom_header, list_series, series_folder

    p = Path(path)
    try:
        if p.is_file():
            hdr = dicom_header(p)
            return _text(hdr.get("FrameOfReferenceUID")) or None if hdr is not None else None
        folder = series_folder(p)
        found = list_series(folder)
        if not found:
            return None
        if series is None:              # the one series the reader takes, if there is one
            volumes = found if len(found) == 1 else _volume_series(folder, found)
            pick = volumes[0] if len(volumes) == 1 else None
        else:
            pick = next((s for s in found if str(series) in (str(s[0]), s[1])), None)
        if pick is None:
            return None
        hdr = _scan(folder)[pick[3]][0][1]
        return _text(hdr.get("FrameOfReferenceUID")) or None
    except (OSError, ValueError):
        return None


def referenced_series(path):
    """``(series UIDs, frame of reference UIDs)`` an RT Structure Set says it was
    drawn on (its Referenced Frame of Reference Sequence, and the RT Referenced
    Series in it); either may be empty."""
    ds = _read(path)
    series, frames = _references(ds)
    for roi in _structures(ds, display_name(path)):
        if roi["frame_of_reference"]:
            frames.add(roi["frame_of_reference"])
    return series, frames


def series_named_by(mask, folder):
    """The key of the series of the DICOM folder ``folder`` (or the one folder below
    it that holds series) that the DICOM mask ``mask``, a DICOM-SEG or an RT
    Structure Set, names as its source; None for another kind of mask, one that
    names none of the folder's series, or a header that does not read (its reader
    says why later)."""
    from ._dicom import list_series, series_folder
    from ._dicom_seg import is_dicom_seg
    from ._pydicom import pydicom

    try:
        if is_rtstruct_file(mask):
            uids = referenced_series(mask)[0]
        elif is_dicom_seg(mask):
            ds = pydicom.dcmread(str(mask), stop_before_pixels=True)
            uids = {_text(r.get("SeriesInstanceUID"))
                    for r in ds.get("ReferencedSeriesSequence", []) or []}
        else:
            return None
        keys = [key for _, key, _, uid in list_series(series_folder(folder)) if uid in uids]
    except Exception:  # noqa: BLE001 - pydicom raises many kinds; the readers say why later
        return None
    return keys[0] if len(keys) == 1 else None


def _references(ds):
    """``(series UIDs, frame of reference UIDs)`` of the set's Referenced Frame of
    Reference Sequence (its elements were decoded by ``check_not_cut``)."""
    series, frames = set(), set()
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        frames.add(_text(fr.get("FrameOfReferenceUID")))
        for study in fr.get("RTReferencedStudySequence", []) or []:
            for s in study.get("RTReferencedSeriesSequence", []) or []:
                series.add(_text(s.get("SeriesInstanceUID")))
    return series - {""}, frames - {""}


def find_structure_sets(folder, depth=None, most=None):
    """The RT Structure Set files at or below ``folder`` (hidden entries skipped),
    at most ``depth`` folder levels down (default: as deep as a DICOM series is
    looked for, plus one), in byte order of their paths; at most ``most``
    folders are looked into."""
    import os

    from ._dicom import SERIES_SEARCH_DEPTH, SERIES_SEARCH_FOLDERS, dicom_header

    depth = SERIES_SEARCH_DEPTH + 1 if depth is None else depth
    most = SERIES_SEARCH_FOLDERS if most is None else most
    found, level, seen = [], [Path(folder)], 0
    for _ in range(depth + 1):
        deeper = []
        for f in level:
            seen += 1
            if seen > most:
                break
            try:
                entries = sorted((e for e in f.iterdir() if not e.name.startswith(".")),
                                 key=lambda e: os.fsencode(e.name))
            except OSError:
                continue
            for e in entries:
                if e.is_dir() and not e.is_symlink():
                    deeper.append(e)
                elif e.is_file() and is_rtstruct(dicom_header(e)):
                    found.append(e)
        level = deeper
    return sorted(found, key=lambda e: os.fsencode(str(e)))


def scan_of_structure_set(path, root):
    """The DICOM series a structure set was drawn on, among those at or below
    ``root``: ``(series folder, series key)``. The series it names (RT
    Referenced Series), else the one volume series of its frame of reference.

    Raises
    ------
    ImageReadError
        None found, or several of its frame of reference and none named.
    """
    from ._dicom import _could_be_volume, _scan, list_series, series_folders

    name = display_name(path)
    uids, frames = referenced_series(path)
    candidates = []
    for folder in series_folders(root):
        for _, key, _, uid in list_series(folder):
            entries = _scan(folder)[uid]
            frame = _text(entries[0][1].get("FrameOfReferenceUID"))
            candidates.append((folder, key, uid, frame, _could_be_volume(entries)))
    named = [c for c in candidates if c[2] in uids]
    if named:
        return named[0][0], named[0][1]
    same = [c for c in candidates if c[3] and c[3] in frames and c[4]]
    if len(same) == 1:
        return same[0][0], same[0][1]
    if same:
        raise ImageReadError(f"{name}: {len(same)} series share its frame of reference and "
                             "it names none of them: give the scan with --image")
    what = "the series it names" if uids else "a series of its frame of reference"
    raise ImageReadError(f"{name}: {what} is not in the folder"
                         + ("" if candidates else " (it holds no DICOM image series)"))


# -- writing: a segmentation as an RT Structure Set of its DICOM series ------------------------

#: display colours of the structures written, in order (red, blue, green, ...)
ROI_COLOURS = ([255, 0, 0], [0, 0, 255], [0, 200, 0], [255, 160, 0], [160, 0, 255])
#: the attributes of the source's patient and study an RT Structure Set copies
_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
           "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")


def outline_polygons(mask):
    """The outlines of a 2-D mask (rows, cols) as closed polygons ``[(P, 2)]`` of
    (row, col) pixel coordinates, outer outlines and holes alike, traced through
    the midpoints between inside and outside pixels: filled by the even-odd
    rule (:func:`fill_polygon`, each polygon toggling) they give back ``mask``."""
    from skimage.measure import find_contours

    m = np.pad(np.asarray(mask, bool), 1)
    if not m.any():
        return []
    return [line[:-1] - 1.0 for line in find_contours(m.astype(np.float32), 0.5)
            if len(line) > 3]


def write_structure_set(path, label, vol, folder, series_key=None, organ="organ", side=None,
                        series_description="shapeprior segmentation"):
    """Write ``label`` as an RT Structure Set referencing the source series: one
    structure (ROI) per label, its outlines on each slice of the series as closed
    planar contours in LPS mm, each naming the slice it lies on.

    Parameters
    ----------
    path : str or Path
        Output file (``.dcm``).
    label : ndarray, shape (z, y, x), or a list of them
        Non-zero inside the organ, on the grid of ``vol``; a list: one structure
        each (both sides of a paired organ), numbered in order.
    vol : Volume
        The series as :func:`~shapeprior.io.read_dicom_series` read it (LPS).
    folder : str or Path
        The DICOM series folder, or the enhanced multi-frame file read.
    series_key : str, optional
        Which series of the folder (``info['series_key']`` of the reader).
    organ : str
        The structure's name (with the side, ``kidney (left)``).
    side : {'left', 'right', None}, or a list of them

    Returns
    -------
    dict
        ``structures`` (name, contours), ``source_images``,
        ``series_instance_uid`` and ``sop_instance_uid`` of the structure set,
        ``notes`` on identifiers the source lacked.

    Raises
    ------
    ValueError
        An empty label, or a label off the series' grid.
    """
    import datetime

    from ._pydicom import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from .. import __version__
    from ._dicom_seg import frame_mask, labels_and_sides, source_datasets, source_frames

    labels, sides, _ = labels_and_sides(label, side, "structures", "an RT Structure Set")
    sources, notes = source_datasets(folder, series_key, "the structure set")
    planes = source_frames(sources)
    first = sources[0]
    frame_uid = str(first.FrameOfReferenceUID)
    now = datetime.datetime.now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    # (several terms stay several: str() of them wrote their Python list)
    ds.SpecificCharacterSet = first.get("SpecificCharacterSet") or "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    for key in _COPIED:
        setattr(ds, key, first.get(key, "") or "")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID, ds.SeriesNumber = generate_uid(), 9902
    ds.SeriesDescription = series_description[:64]
    ds.Manufacturer, ds.ManufacturerModelName = "shapeprior", "shapeprior SSC"
    ds.SoftwareVersions, ds.InstanceNumber = __version__, 1
    ds.StructureSetLabel, ds.StructureSetName = "shapeprior", str(organ)[:64]
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.StructureSetDate, ds.StructureSetTime
    ds.ApprovalStatus = "UNAPPROVED"

    def image_ref(src, number=None):
        item = Dataset()
        item.ReferencedSOPClassUID = src.SOPClassUID
        item.ReferencedSOPInstanceUID = src.SOPInstanceUID
        if number is not None:                                    # a frame of an enhanced image
            item.ReferencedFrameNumber = number
        return item

    series_ref = Dataset()
    series_ref.SeriesInstanceUID = first.SeriesInstanceUID
    series_ref.ContourImageSequence = Sequence([image_ref(s) for s in sources])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"     # as planning systems do
    study_ref.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = Sequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = frame_uid
    frame_ref.RTReferencedStudySequence = Sequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame_ref])
    rois, contours, observations, written = [], [], [], []
    for number, (m, sd) in enumerate(zip(labels, sides), start=1):
        name = f"{organ} ({sd})" if sd in ("left", "right") else str(organ)
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, frame_uid
        roi.ROIName, roi.ROIGenerationAlgorithm = name[:64], "AUTOMATIC"
        rois.append(roi)
        items = []
        for frame, src, frame_no in planes:
            plane = frame_mask(m, vol, frame)                     # (rows, cols) on the slice
            if not plane.any():
                continue
            ipp = np.array([float(v) for v in frame.ImagePositionPatient])
            iop = np.array([float(v) for v in frame.ImageOrientationPatient])
            dr, dc = (float(v) for v in frame.PixelSpacing)
            for poly in outline_polygons(plane):
                pts = ipp + np.outer(poly[:, 1] * dc, iop[:3]) + np.outer(poly[:, 0] * dr,
                                                                         iop[3:])
                c = Dataset()
                c.ContourImageSequence = Sequence([image_ref(src, frame_no)])
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(pts)
                c.ContourData = [f"{v:.6f}" for v in pts.ravel()]
                items.append(c)
        if not items:
            raise ValueError("the DICOM series does not cover the segmentation")
        rc = Dataset()
        rc.ROIDisplayColor = ROI_COLOURS[(number - 1) % len(ROI_COLOURS)]
        rc.ReferencedROINumber = number
        rc.ContourSequence = Sequence(items)
        contours.append(rc)
        obs = Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber = number, number
        obs.RTROIInterpretedType, obs.ROIInterpreter = "ORGAN", ""
        observations.append(obs)
        written.append({"name": name, "contours": len(items)})
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return {"structures": written, "source_images": len(sources),
            "series_instance_uid": str(ds.SeriesInstanceUID),
            "sop_instance_uid": str(ds.SOPInstanceUID), "notes": notes}
