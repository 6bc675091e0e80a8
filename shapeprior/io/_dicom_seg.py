"""DICOM Segmentation (DICOM-SEG) with highdicom: written for a DICOM input
series, and read as a label map (another tool's mask, e.g. TotalSegmentator's
``--output_type dicom``).

The SEG written references every frame of the source series it segments; each
frame of the SEG lies exactly on a source slice (same Image Position/Orientation
(Patient), same pixel grid), so PACS viewers, 3D Slicer and OHIF overlay it on
the series without resampling.

A SEG read (:func:`read_dicom_seg`) becomes a label map whose values are the
segment numbers, on the grid its frames span (LPS, from the frames' positions
and orientation); its size is checked before any voxel is decoded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._checks import display_name
from ._dicom import _scan, list_series

#: SNOMED CT concepts of organs shapeprior models are commonly built for
#: (pydicom's code dictionary name); other organs are coded as "Organ"
ORGAN_CODES = {"kidney": "Kidney", "hippocampus": "Hippocampus", "liver": "Liver",
               "spleen": "Spleen", "pancreas": "Pancreas", "adrenal": "AdrenalGland",
               "adrenal gland": "AdrenalGland", "prostate": "Prostate", "heart": "Heart",
               "lung": "Lung", "bladder": "UrinaryBladder", "femur": "Femur"}
#: largest distance (voxels) of a source pixel from a label voxel centre
GRID_TOL = 0.01
#: patient and study attributes a SEG copies from its source, each of type 2 (present,
#: may be empty): a series without them (a crop re-saved by a script) is given them empty
PATIENT_STUDY_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                       "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                       "ReferringPhysicianName")
#: a DICOM-SEG that omits its empty frames (highdicom's default: TotalSegmentator's
#: SEGs and shapeprior's own) ends where its segments end, so its frames alone put the
#: organ against the end of the grid, read as cut by the field of view (build-model
#: listed every such shape as cut, and rejected all of them with --exclude-cut). An
#: end its segments reach gets this many empty slices: what the SEG says of the next
#: slice of its series, if the series has one. Only one: where the series ends is not
#: recorded, and refine takes an organ within 3 mm of the grid's end as cut there
SEG_MARGIN_SLICES = 1
#: the SOP class of a DICOM Segmentation
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def is_dicom_seg(path) -> bool:
    """Whether ``path`` is a DICOM file of the Segmentation SOP class (only its
    header is read)."""
    from ._pydicom import pydicom

    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            return False
    except OSError:
        return False
    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # noqa: BLE001 - a header that does not read (a corrupt length
        # asks for gigabytes: MemoryError): a SEG as its file meta says, so that
        # read_dicom_seg refuses it as one
        try:
            meta = pydicom.filereader.read_file_meta_info(p)
        except Exception:  # noqa: BLE001 - not DICOM, or cut inside its meta
            return False
        return str(meta.get("MediaStorageSOPClassUID", "") or "") == SEG_SOP_CLASS
    meta = getattr(ds, "file_meta", None)
    sop = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "")
                                               if meta is not None else ""))
    return sop == SEG_SOP_CLASS


def read_dicom_seg(path):
    """A DICOM-SEG file as a label map: :class:`~shapeprior.io.Volume` of uint8
    or uint16 segment numbers (0 outside every segment), on the grid its frames
    span (LPS mm), extended by :data:`SEG_MARGIN_SLICES` empty slice at an end
    its segments reach (the grid stays the source series' lattice). Refused in
    one line (:class:`ImageReadError`): a SEG that highdicom cannot read, whose
    frames do not lie on one regular grid in the patient's coordinates, whose
    segments overlap (one label per voxel is needed), or whose grid would not fit
    in memory."""
    import highdicom as hd

    from ._checks import ImageReadError, check_geometry, check_size, reason_text
    from ._volume import Volume

    from ._pydicom import pydicom

    from ._dicom import check_not_cut

    name = display_name(path)
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:        # pydicom raises many kinds
        raise ImageReadError(f"{name}: not a readable DICOM-SEG ({reason_text(exc)})") from None
    check_not_cut(ds, name, "DICOM-SEG")
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
        geom = seg.get_volume_geometry()
    except Exception as exc:        # highdicom and pydicom raise many kinds
        raise ImageReadError(f"{name}: not a readable DICOM-SEG ({reason_text(exc)})") from None
    if geom is None:
        raise ImageReadError(f"{name}: a DICOM-SEG whose frames do not lie on one regular "
                             "grid in the patient's coordinates; refusing to guess the "
                             "geometry")
    n_slices, rows, cols = (int(v) for v in geom.spatial_shape)
    check_size(name, (cols, rows, n_slices), 2)
    try:
        vol = seg.get_volume(combine_segments=True, dtype=np.uint16)
    except Exception as exc:
        why = reason_text(exc)
        if "overlap" in why.lower():
            raise ImageReadError(f"{name}: a DICOM-SEG whose segments overlap; a label map "
                                 "holds one label per voxel (export the segments one by "
                                 "one)") from None
        raise ImageReadError(f"{name}: not a readable DICOM-SEG ({why})") from None
    # highdicom's array is (slice, row, column) and its affine maps those indices
    # to the patient's LPS coordinates: the columns for x (column), y (row), z (slice)
    m = np.asarray(vol.affine, dtype=float)[:3, [2, 1, 0]]
    spacing = np.linalg.norm(m, axis=0)
    direction = m / np.where(spacing > 0, spacing, 1.0)
    origin = np.asarray(vol.affine, dtype=float)[:3, 3]
    check_geometry(name, spacing, direction, origin)
    a = np.asarray(vol.array)
    if np.linalg.det(direction) < 0:
        # slices stacked against the normal of their rows and columns: turned round, as a
        # DICOM series is read (z = x cross y), so that the grid is the source series' own
        origin = origin + (a.shape[0] - 1) * spacing[2] * direction[:, 2]
        direction = direction.copy()
        direction[:, 2] *= -1.0
        a = a[::-1]
    a = a.astype(np.uint8) if a.size and int(a.max()) <= 255 else a
    # the empty slices the SEG left out, at an end its segments reach
    n = SEG_MARGIN_SLICES
    lo = n if a[:1].any() else 0
    hi = n if a[-1:].any() else 0
    check_size(name, (cols, rows, a.shape[0] + lo + hi), 2)
    if lo or hi:
        a = np.pad(a, ((lo, hi), (0, 0), (0, 0)))
        origin = origin - lo * spacing[2] * direction[:, 2]
    return Volume(np.ascontiguousarray(a), spacing, origin, direction)


#: what an output declares when the source's Specific Character Set cannot be
#: written as it is: UTF-8 holds whatever text pydicom read (an unknown set's text
#: in pydicom's default repertoire, Latin-1, which maps every byte)
UTF8_CHARSET = "ISO_IR 192"

#: multi-byte sets that may not come first among several (DICOM PS3.3 C.12.1.1.2)
_MULTI_BYTE = ("ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149")


def dicom_charset(value):
    """``(terms, why)``: the Specific Character Set the DICOM outputs declare for
    a source whose value is ``value`` (a string or several), and why it differs
    from ``value`` (None when it does not, or only by naming the default
    repertoire that an empty first value stands for).

    A term DICOM defines is kept. A misspelt one that pydicom corrects when it
    reads ('ISO-IR 100', 'ISO_2022_IR_87') is written corrected (``why``
    'misspelt'), as pydicom read the text. An unknown one ('ISO_IR 999':
    'unknown') or a set highdicom writes no SEG in (Korean 'ISO 2022 IR 149',
    one code-extension term alone: 'unwritable') becomes :data:`UTF8_CHARSET`,
    the same text. highdicom refused such a value outright, and the run's
    outputs were lost after the fit.
    """
    import re

    from ._pydicom import pydicom

    known = pydicom.charset.python_encoding         # DICOM term -> Python codec
    given = [t.strip() for t in _charset_terms(value)]
    terms, why = [], None
    for i, t in enumerate(given):
        if i == 0 and t == "" and len(given) > 1:
            t = "ISO 2022 IR 6"     # what an empty first value stands for
        elif t == "ISO_IR 6" and len(given) == 1:
            t = ""                  # the default repertoire, named (no value says it)
        if t not in known and not (t == "" and len(given) == 1):
            patched = None          # pydicom's corrections (its charset.py)
            if re.match("^ISO[^_]IR", t):
                patched = "ISO_IR" + t[6:]
            elif re.match("^(?=ISO.2022.IR.)(?!ISO 2022 IR )", t):
                patched = "ISO 2022 IR " + t[12:]
            if patched not in known:
                return [UTF8_CHARSET], "unknown"
            t, why = patched, "misspelt"
        terms.append(t)
    try:
        from highdicom.enum import SpecificCharacterSetValues
    except ImportError:     # highdicom before 0.28 copies the source's value unchecked
        return terms, why
    writable = {v.value for v in SpecificCharacterSetValues} | {""}
    several = len(terms) > 1
    if any(t not in writable for t in terms) or (several and terms[0] in _MULTI_BYTE) or \
            any(t.startswith("ISO 2022") != several for t in terms):
        return [UTF8_CHARSET], "unwritable"
    return terms, why


def source_datasets(folder, series_key=None, what="the SEG"):
    """The header datasets of one DICOM image series (the one
    :func:`~shapeprior.io.read_dicom_series` read, or the one enhanced
    multi-frame file ``folder``), in file order, and notes on identifiers the
    files lack.

    An anonymised series may lack the identifiers a SEG refers to. The SOP
    class and instance UIDs are then taken from the file meta header; a
    missing study or series instance UID is derived from the frame of
    reference (deterministically), as is a missing frame of reference UID,
    with a note: the SEG then may not attach to the series in a PACS. ``what``
    names the object written in the notes (an RT Structure Set's writer says so).
    """
    import copy

    from pydicom.uid import generate_uid

    if Path(folder).is_file():          # an enhanced multi-frame file: the series itself
        from ._dicom import dicom_header

        items = [(Path(folder), dicom_header(folder))]
        if items[0][1] is None:
            raise ValueError(f"{display_name(folder)} is not a DICOM file")
    else:
        found = list_series(folder)
        pick = [f for f in found if series_key in (None, f[1])]
        if not pick:
            raise ValueError(f"series {series_key!r} not found in {display_name(folder)}")
        items = _scan(Path(folder))[pick[0][3]]
    uid = str(items[0][1].get("SeriesInstanceUID", "") or "")
    out, notes = [], set()
    for p, header in items:
        ds = copy.deepcopy(header)          # the scan's cache stays as read
        meta = getattr(ds, "file_meta", None)
        for key, meta_key in (("SOPClassUID", "MediaStorageSOPClassUID"),
                              ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(key, "") or "") and meta is not None and meta.get(meta_key):
                setattr(ds, key, meta[meta_key].value)
                notes.add(f"{key} taken from the file meta header")
            if not str(ds.get(key, "") or ""):
                raise ValueError(f"{display_name(p)} has no {key}: {what} cannot refer "
                                 "to it")
        # the patient and study attributes a SEG copies (type 2: present, may be empty)
        for key in PATIENT_STUDY_TYPE2:
            if key not in ds:
                setattr(ds, key, "")
                notes.add(f"the source has no {key}: {what} has it empty")
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            if not str(ds.get(key, "") or ""):
                seed = [key, str(ds.get("FrameOfReferenceUID", "") or ""), str(uid),
                        str(ds.get("StudyInstanceUID", "") or "")]
                setattr(ds, key, generate_uid(entropy_srcs=seed))
                notes.add(f"the source has no {key}: a derived one is used; {what} may not "
                          "attach to the series in a PACS")
        charset = ds.get("SpecificCharacterSet")
        if charset is not None:
            terms, why = dicom_charset(charset)
            # (text not yet read is decoded in the set the file was read with: pydicom
            # keeps that set, whatever the attribute says afterwards)
            if terms == [""] or terms != _charset_terms(charset):
                if terms == [""]:
                    del ds.SpecificCharacterSet         # the default repertoire
                else:
                    ds.SpecificCharacterSet = terms if len(terms) > 1 else terms[0]
            if why is not None:
                notes.add(f"the source's Specific Character Set {_quoted(charset)} is "
                          f"{_CHARSET_WHY[why]}: {what} declares {_quoted(terms)}, the text "
                          "as pydicom read it")
        for key in PATIENT_STUDY_TYPE2:
            if "\ufffd" in str(ds.get(key, "")):        # bytes its set cannot decode
                notes.add(f"the source's {key} holds bytes its Specific Character Set does "
                          f"not decode: {what} has replacement characters there")
        out.append(ds)
    return out, sorted(notes)


_CHARSET_WHY = {"misspelt": "a misspelt DICOM term", "unknown": "no term DICOM defines",
                "unwritable": "one highdicom writes no SEG in"}


def _charset_terms(value):
    """The terms of a Specific Character Set value (one string, or several)."""
    from pydicom.multival import MultiValue

    return [str(v) for v in (value if isinstance(value, (list, tuple, MultiValue)) else
                             [value])]


def _quoted(value):
    """A Specific Character Set value as the notes show it: 'ISO_IR 100' or
    '\\ISO 2022 IR 87' (DICOM's backslash between several)."""
    return "'" + "\\".join(_charset_terms(value)) + "'"


def frame_mask(label, vol, ds):
    """The label on one source frame's pixel grid, shape (Rows, Columns).

    Each pixel's LPS position (Image Position/Orientation (Patient), Pixel
    Spacing) is mapped to the label's voxel grid; it must land on a voxel
    centre (within :data:`GRID_TOL` voxels), else ValueError: the label is
    not on this series' grid.
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)       # between rows, between columns
    idx0 = vol.physical_to_index(ipp[None])[0]
    step_c = vol.physical_to_index((ipp + dc * iop[:3])[None])[0] - idx0
    step_r = vol.physical_to_index((ipp + dr * iop[3:])[None])[0] - idx0
    corners = np.array([idx0, idx0 + (cols - 1) * step_c, idx0 + (rows - 1) * step_r])
    if np.abs(corners - np.round(corners)).max() > GRID_TOL or \
            np.abs(step_c - np.round(step_c)).max() > GRID_TOL or \
            np.abs(step_r - np.round(step_r)).max() > GRID_TOL:
        raise ValueError("the label is not on the DICOM series' voxel grid")
    r = np.arange(rows)[:, None, None]
    c = np.arange(cols)[None, :, None]
    ijk = np.round(idx0 + c * step_c + r * step_r).astype(np.int64)      # (rows, cols, 3)
    n = np.array(label.shape[::-1])
    inside = np.all((ijk >= 0) & (ijk < n), axis=-1)
    out = np.zeros((rows, cols), dtype=np.uint8)
    i, j, k = (ijk[..., a][inside] for a in range(3))
    out[inside] = label[k, j, i] > 0
    return out


def source_frames(sources):
    """``[(frame, source, number)]``: each frame of the source images, as a header
    that :func:`frame_mask` takes (its own Image Position/Orientation (Patient)
    and Pixel Spacing), the data set it belongs to, and its frame number (None
    for a single-frame image), in source order."""
    from ._pydicom import pydicom

    from ._dicom import _frame_item

    out = []
    for src in sources:
        n = int(src.get("NumberOfFrames", 1) or 1)
        if n <= 1:
            out.append((src, src, None))
            continue
        for i in range(n):
            f = pydicom.Dataset()
            f.Rows, f.Columns = src.Rows, src.Columns
            items = [_frame_item(src, i, name) for name in
                     ("PlanePositionSequence", "PlaneOrientationSequence",
                      "PixelMeasuresSequence")]
            if any(x is None for x in items):
                raise ValueError(f"frame {i + 1} of the source lacks its position, orientation "
                                 "or pixel spacing")
            f.ImagePositionPatient = items[0].ImagePositionPatient
            f.ImageOrientationPatient = items[1].ImageOrientationPatient
            f.PixelSpacing = items[2].PixelSpacing
            out.append((f, src, i + 1))
    return out


def _shared_geometry(src):
    """A multi-frame source with its orientation and pixel measures in its shared
    functional groups, where highdicom looks for them (a Philips enhanced MR keeps
    them per frame; the reader checked that all frames agree)."""
    from ._pydicom import pydicom

    from ._dicom import _frame_item

    if "SharedFunctionalGroupsSequence" not in src or not len(
            src.SharedFunctionalGroupsSequence):
        src.SharedFunctionalGroupsSequence = pydicom.Sequence([pydicom.Dataset()])
    shared = src.SharedFunctionalGroupsSequence[0]
    for name in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
        if name not in shared:
            item = _frame_item(src, 0, name)
            if item is not None:
                setattr(shared, name, pydicom.Sequence([item]))
    return src


def labels_and_sides(label, side, parts="segments", what="DICOM-SEG"):
    """``(labels, sides, many)`` of a DICOM output's ``label`` (one array, or a list:
    one ``parts`` each) and ``side`` (one, or a list as long); ValueError when
    they disagree or a label is empty (nothing to store as ``what``)."""
    many = isinstance(label, (list, tuple))
    labels = [np.asarray(m) for m in label] if many else [np.asarray(label)]
    sides = list(side) if many else [side]
    if len(sides) != len(labels):
        raise ValueError(f"side lists {len(sides)} sides for {len(labels)} {parts}")
    if not labels or not all(m.any() for m in labels):
        raise ValueError(f"the segmentation is empty: there is nothing to store as {what}")
    return labels, sides, many


def write_dicom_seg(path, label, vol, folder, series_key=None, organ="organ", side=None,
                    series_description="shapeprior segmentation"):
    """Write ``label`` as a binary DICOM-SEG referencing the source series.

    Parameters
    ----------
    path : str or Path
        Output file (``.dcm``).
    label : ndarray, shape (z, y, x), or a list of them
        Non-zero inside the organ, on the grid of ``vol``; a list: one segment
        each (both sides of a paired organ), numbered in order.
    vol : Volume
        The series as :func:`~shapeprior.io.read_dicom_series` read it (LPS).
    folder : str or Path
        The DICOM series folder, or the enhanced multi-frame file read.
    series_key : str, optional
        Which series of the folder (``info['series_key']`` of the reader).
    organ : str
        Segment label; coded in SNOMED CT when known (:data:`ORGAN_CODES`).
    side : {'left', 'right', None}, or a list of them
        Laterality, added to the segment label; a list: each segment's, as
        many as ``label`` lists.

    Returns
    -------
    dict
        ``frames`` (SEG frames written), ``source_frames``, ``series_instance_uid``
        and ``sop_instance_uid`` of the SEG, ``notes`` on identifiers the source
        lacked (:func:`source_datasets`).

    Raises
    ------
    ValueError
        An empty label, or a label off the series' grid.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__

    labels, sides, many = labels_and_sides(label, side, "segments", "DICOM-SEG")
    sources, notes = source_datasets(folder, series_key)
    sources = [_shared_geometry(ds) if int(ds.get("NumberOfFrames", 1) or 1) > 1 else ds
               for ds in sources]
    planes = source_frames(sources)
    frames = np.stack([np.stack([frame_mask(m, vol, f) for f, _, _ in planes], axis=0)
                       for m in labels], axis=-1)             # (frames, rows, cols, segments)
    if any(int(frames[..., i].sum()) != int(np.count_nonzero(m)) for i, m in enumerate(labels)):
        raise ValueError("the DICOM series does not cover the whole segmentation")
    name = ORGAN_CODES.get(str(organ).lower().strip())
    prop = getattr(codes.SCT, name) if name else codes.SCT.Organ
    descs = []
    for number, sd in enumerate(sides, start=1):
        text = f"{organ} ({sd})" if sd in ("left", "right") else str(organ)
        desc = hd.seg.SegmentDescription(
            segment_number=number, segment_label=text[:64],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=prop,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="shapeprior", family=codes.cid7162.DeformableModels,
                version=__version__))
        if sd in ("left", "right"):
            # the side as the type's laterality modifier (SCT Left / Right), as
            # dcmqi and the TotalSegmentator SEGs code a paired organ, so that a
            # viewer or a query finds it without reading the label text
            lat = codes.SCT.Left if sd == "left" else codes.SCT.Right
            desc.SegmentedPropertyTypeModifierCodeSequence = [hd.sr.CodedConcept(
                value=lat.value, scheme_designator=lat.scheme_designator,
                meaning=lat.meaning)]
        descs.append(desc)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames if many else frames[..., 0],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs, series_instance_uid=hd.UID(), series_number=9901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="shapeprior",
        manufacturer_model_name="shapeprior SSC", software_versions=__version__,
        device_serial_number="0", series_description=series_description[:64])
    seg.save_as(str(path))
    return {"frames": int(seg.NumberOfFrames), "source_frames": len(planes),
            "series_instance_uid": str(seg.SeriesInstanceUID),
            "sop_instance_uid": str(seg.SOPInstanceUID), "notes": notes}
