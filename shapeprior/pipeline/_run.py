"""One segmentation job: input -> outputs folder (atomic), and case discovery."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .._background import background
from .._outputs import OutputDir, manifest
from .._profile import StageClock
from .._provenance import FileDigests
from ..io import (Volume, dicom_source, display_name, image_files, is_rtstruct_file,
                  read_label_map, read_rtstruct, read_scan, scan_frame_of_reference,
                  series_folder, structure_title, write_dicom_seg, write_label,
                  write_structure_set)
from ..mesh import MESH_FORMATS, Surface
from ..segmentation import (PairedSegmentResult, SegmentParams, dice, distance_to_mean,
                            organ_min_ml, paired_model, paired_parts, part_alone,
                            reason_levels, refine_mask, segment_volume, shape_statistics,
                            split_at_midline, surface_distances)
from ._qc import qc_png

#: label outputs: NIfTI on the input grid, DICOM-SEG or RT Structure Set referencing a
#: DICOM input, or "both" (NIfTI and DICOM-SEG); --output-type joins them with commas
OUTPUT_TYPES = ("nifti", "dicom-seg", "rtstruct", "both")
#: the file each kind of label output is written to
OUTPUT_FILES = {"nifti": "label.nii.gz", "dicom-seg": "seg.dcm", "rtstruct": "rtstruct.dcm"}


def output_kinds(output_type) -> tuple:
    """The label outputs an ``--output-type`` asks for, e.g. ``'nifti,rtstruct'`` ->
    ``('nifti', 'rtstruct')`` (``'both'``: NIfTI and DICOM-SEG), in
    :data:`OUTPUT_FILES` order; ValueError naming the value and what is allowed."""
    parts = [t.strip() for t in str(output_type).split(",")]
    kinds = set()
    for t in parts:
        if t == "both":
            kinds |= {"nifti", "dicom-seg"}
        elif t in OUTPUT_FILES:
            kinds.add(t)
        else:
            raise ValueError(f"--output-type {output_type!r}: {t!r} is not one of "
                             f"{', '.join(OUTPUT_TYPES)} (join several with commas, e.g. "
                             "nifti,rtstruct)")
    return tuple(k for k in OUTPUT_FILES if k in kinds)


#: why a DICOM output is refused with --deidentify (after "--output-type KIND ")
DICOM_KEEPS_IDENTIFIERS = ("keeps the source's patient and study identifiers (a SEG or a "
                           "structure set must refer to its series): not with --deidentify")


def dicom_kinds(output_type, source, deidentify=False, what="input") -> list:
    """The DICOM label outputs (``'dicom-seg'``, ``'rtstruct'``) that ``output_type``
    asks for, checked against the scan they refer to, ``source`` (``what`` names it
    in the error: 'input', '--image'): a DICOM series folder or an enhanced
    multi-frame file, and no ``deidentify`` (they keep the source's patient and
    study identifiers). ValueError otherwise."""
    dicom = [k for k in output_kinds(output_type) if k != "nifti"]
    if dicom:
        if source is None or dicom_source(source) is None:
            shown = "none was given" if source is None else \
                f"{display_name(source)} is not one"
            raise ValueError(f"--output-type {output_type} needs a DICOM series folder (or "
                             f"an enhanced multi-frame DICOM file) as {what}; {shown}")
        if deidentify:
            raise ValueError(f"--output-type {dicom[0]} {DICOM_KEEPS_IDENTIFIERS}")
    return dicom


def input_files(p: Path):
    """The files a case reads: the image file (with its .img/.hdr partner), or
    every file of a DICOM folder (of the one folder below it that holds its series,
    :func:`~shapeprior.io.series_folder`), in a stable order."""
    if p.is_file():
        return image_files(p)
    if p.is_dir():
        p = series_folder(p)
    return sorted((f for f in p.iterdir() if f.is_file()), key=lambda f: os.fsencode(f.name))


def input_hashes(p: Path, deidentify=False):
    """``({key: path}, {key: shown path})`` of a case's input files for the
    manifest; de-identified keys are indices."""
    files = input_files(Path(p))
    if deidentify:
        keys = [f"input/{i:04d}" for i in range(len(files))]
        return dict(zip(keys, files)), {k: k for k in keys}
    keys = [f"input/{display_name(f)}" for f in files]
    return dict(zip(keys, files)), {}


def model_version(model) -> int:
    """The model's version counter (1 for a model as built; +1 per update-model)."""
    lin = model.metadata.get("lineage")
    return int(lin.get("model_version", 1)) if isinstance(lin, dict) else 1


def prior_record(model, params, dictionary=None) -> dict:
    """What SSC composed from: the prior asked for, the one used, and its atoms."""
    used = model.resolve_prior(params.prior)
    n = dictionary.n_atoms if dictionary is not None else (
        model.n_shapes if used == "shapes" else int(model.atoms.shape[0]))
    return {"requested": params.prior, "used": used, "n_atoms": int(n)}


def run_case(input_path, outdir, model, model_path, params: SegmentParams, *, series=None,
             reference=None, reference_labels=(1,), mesh_format="vtk", force=False,
             dictionary=None, argv=None, clock=None, case_name=None, deidentify=False,
             allow_no_orientation=False, partial_ok=False, init_mask=None, init_labels=(1,),
             output_type="nifti", qc=True):
    """Segment one case and publish ``outdir`` atomically.

    ``outdir`` may not equal, contain or lie inside the input, the model or
    the reference; ``force`` replaces only a previous shapeprior output.
    ``clock`` (a :class:`~shapeprior._profile.StageClock`) receives the time
    of the stages read, prepare, search, ssc, refine, voxelize and write.
    ``case_name`` is the name written into the report (default: the input's
    file name); with ``deidentify`` no input file name or path reaches the
    outputs. ``init_mask``: an existing label map (``init_labels``) whose
    refined surface (:func:`~shapeprior.segmentation.refine_mask`) starts the fit
    instead of the placement search, or an RT Structure Set drawn on the scan
    whose structures ``init_labels`` names (strings; :func:`init_mask_volume`).
    ``output_type``: the label as ``label.nii.gz`` (``'nifti'``), as ``seg.dcm``
    (``'dicom-seg'``, DICOM series inputs only; it carries the source's patient
    and study identifiers, so not with ``deidentify``) or ``'both'``. ``qc=False``
    skips the QC picture ``qc.png`` (about a second on a whole CT).
    ``reference``: a label map whose ``reference_labels`` are the organ, or an
    RT Structure Set drawn on the scan whose structures ``reference_labels``
    names (strings, :func:`reference_mask`). Returns the report dict. Raises on
    bad input; nothing is left behind.
    """
    if mesh_format not in MESH_FORMATS:
        raise ValueError(f"mesh format {mesh_format!r} is not one of {MESH_FORMATS}")
    input_path = Path(input_path)
    dicom_kinds(output_type, input_path, deidentify)
    inputs = [input_path, *input_files(input_path), model_path, reference, init_mask]
    out = OutputDir(outdir, force=force, inputs=inputs, partial_ok=partial_ok)
    # the manifest's input hashes, computed while the image is read
    digests = FileDigests(inputs[1:])
    try:
        return _run_case(out, input_path, model, model_path, params, series, reference,
                         reference_labels, mesh_format, dictionary, argv, clock,
                         case_name, deidentify, allow_no_orientation, init_mask, init_labels,
                         output_type, qc, digests)
    except BaseException:
        digests.cancel()
        out.discard()          # a failed case leaves nothing behind
        raise


def _run_case(out, input_path, model, model_path, params, series, reference,
              reference_labels, mesh_format, dictionary, argv, clock, case_name, deidentify,
              allow_no_orientation, init_mask=None, init_labels=(1,), output_type="nifti",
              qc=True, digests=None):
    t0 = time.perf_counter()
    clock = clock or StageClock()     # times only (no sampling thread) for the report
    with clock("read"):
        vol, info = read_scan(input_path, series, allow_no_orientation)
        ref_others, ref_filled = [], {}
        ref = reference_mask(reference, reference_labels, vol, "image", allow_no_orientation,
                             ref_others, (input_path, series), ref_filled)
    init, init_filled = None, {}
    if init_mask is not None:
        with clock("place"):
            mvol, init_labels = init_mask_volume(init_mask, init_labels, vol,
                                                 (input_path, series), allow_no_orientation,
                                                 init_filled)
            try:
                init = (both_sides_init(mvol, model, init_labels, params, dictionary)
                        if params.side == "both" else
                        refine_mask(one_side_of(mvol, model, init_labels, params.side), model,
                                    init_labels, params, None, dictionary).mask_fit.verts)
            except ValueError as e:     # the mask's own words: name the option
                raise ValueError(f"--init-mask: {e}") from None
    res = segment_volume(vol, model, params, dictionary, clock=clock, init=init)
    fitted = res.label
    res = delivered(res)
    voxel_ml = float(np.prod(vol.spacing)) / 1000.0
    volume_ml = _ml(res.label, voxel_ml)
    organ = model.metadata.get("organ", "organ")
    fits = res.fits if isinstance(res, PairedSegmentResult) else {None: res}
    each = "" if None in fits else " (" + ", ".join(
        f"{s} {_ml(f.label, voxel_ml):.1f} ml" for s, f in fits.items()) + ")"
    title = f"{organ}: {volume_ml:.1f} ml{each}" if fitted is res.label else \
        f"{organ}: failed, label withheld (the fit drawn: {_ml(fitted, voxel_ml):.1f} ml)"

    # the QC picture draws on a thread while the report is measured and the other
    # files are written; the folder is published once it is done
    picture = background(qc_png, out.file("qc.png"), vol, fitted, ref, title=title,
                         verts=np.concatenate([f.verts for f in fits.values()]),
                         outliers=np.concatenate([f.overridden for f in fits.values()])) \
        if qc else contextlib.nullcontext()
    with clock("write"):
        with picture:
            report = (_paired_report if None not in fits else _report)(
                res, vol, ref, info, model, params, dictionary, clock, case_name, input_path,
                volume_ml)
            if fitted is not res.label:
                withhold_note(report, _ml(fitted, voxel_ml), f"mesh.{mesh_format}", qc)
            if "paired" in report and res.status == "failed":   # both sides failed
                report["paired"]["in_label"] = []
                for side in report["sides"].values():
                    side["in_label"] = False
            if ref is not None:
                note_structures(report, reference_labels, ref_filled)
                note_reference(report, ref, ref_others)
            if init_filled:
                note_init_structures(report, init_filled)
            _write_outputs(out, vol, res, report, model, model_path, input_path, reference,
                           mesh_format, params, argv, info, deidentify, init_mask, output_type,
                           digests)
        out.commit()
    report["total_time_s"] = time.perf_counter() - t0
    return report


def _ml(label, voxel_ml) -> float:
    """The volume (ml) of the nonzero voxels of ``label``, each ``voxel_ml``."""
    return float(np.count_nonzero(label)) * voxel_ml


def delivered(res):
    """A result as its label files deliver it: a failed result's label holds no
    organ (its evidence says the fit is not the organ: on something else, mostly
    outside the image, or implausible), so a tool that reads the label alone never
    takes it for the organ; its surface stays in the mesh and the QC picture, for a
    reader to judge. The Python API's result keeps the fit's label, beside its
    status."""
    if res.status != "failed" or not np.any(res.label):
        return res
    return replace(res, label=np.zeros_like(res.label))


#: the start of the warning of a failed fit that the label files leave out
WITHHELD_WARNING = "the label leaves out the failed fit"


def withhold_note(report, fit_ml, mesh, qc=True):
    """Say in ``report`` that the failed fit (``fit_ml`` ml) is not in the label:
    ``label_withheld`` and a warning naming where the fit is (the mesh, and the QC
    picture when one is drawn)."""
    where = [mesh, "qc.png"] if qc else [mesh]
    report["label_withheld"] = {"reason": "the fit failed (see reasons): it is not taken for "
                                          "the organ",
                                "fit_volume_ml": round(fit_ml, 3), "fit_in": where}
    report["warnings"].append(f"{WITHHELD_WARNING} ({fit_ml:.1f} ml; it is in {mesh}"
                              + (" and drawn in qc.png)" if qc else ")"))


def other_labels(array, labels, slab=16):
    """Sorted nonzero label values of ``array`` (an integer label map, zyx) that
    are not in ``labels``; counted a slab of ``slab`` slices at a time, so a
    whole-CT map is not copied."""
    a = np.asarray(array)
    if a.dtype.kind not in "iu" or not a.size:
        return []
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi > 65535:
        return []
    counts = np.zeros(hi + 1, dtype=np.int64)
    for z in range(0, a.shape[0], slab):
        counts += np.bincount(a[z:z + slab].reshape(-1), minlength=hi + 1)
    named = {int(x) for x in labels}
    return [int(v) for v in np.flatnonzero(counts[1:]) + 1 if int(v) not in named]


def label_list(values, shown=8):
    v = [str(int(x)) for x in values]
    return ", ".join(v[:shown]) + (f", ... ({len(v)} in all)" if len(v) > shown else "")


def structure_names(selection) -> list:
    """The entries of a reference selection that name structures of an RT Structure
    Set (strings: ROI name or ``#N``); the others are labels of a label map."""
    return [v for v in selection if isinstance(v, str)]


def reference_selection(labels, reference=None) -> list:
    """What is scored of a reference, as recorded (report, manifest): the organ's
    labels of a label map (ints), or the structures of an RT Structure Set by
    name or ``#N`` (strs; :func:`reference_mask`). Of an RT Structure Set
    ``reference`` only the names count: labels (the model's, by default) do not
    choose its structures, and none stands for its one structure with contours."""
    if reference is not None and is_rtstruct_file(reference):
        return structure_names(labels)
    return [v if isinstance(v, str) else int(v) for v in labels]


def reference_mask(reference, labels, grid, what, allow_no_orientation=False, others=None,
                   scan=None, filled=None):
    """The organ (``labels``) of the reference label map ``reference`` as a bool
    array on ``grid`` (a :class:`~shapeprior.io.Volume`; ``what`` names it:
    'image', 'mask'), or None without a reference. A reference that is a crop
    (or an extension) of the grid, the same voxels with another extent or in
    another order and sense of the axes (:meth:`~shapeprior.io.Volume.placed_on`), is
    placed on it when all of its organ lies on the grid; a reference on
    another grid is refused naming the first difference. ``others``: a list
    that receives the reference's other labels (:func:`other_labels`).

    An RT Structure Set reference is filled on ``grid`` (:func:`structure_reference`):
    ``labels`` that are strings name its structures (ROI name or ``#N``; ints:
    its one structure with contours); ``scan`` ``(path, series)``, the scan
    the grid was read from, gives the frame of reference it must share;
    ``filled``, a dict, receives what was filled (:func:`structure_reference`)."""
    if reference is None:
        return None
    names = structure_names(labels)
    if is_rtstruct_file(reference):
        return structure_reference(reference, names, grid, what, scan, filled)
    if names:
        raise ValueError(f"--reference-structure names structures of an RT Structure Set; "
                         f"{display_name(reference)} is a label map (its labels: "
                         "--reference-labels)")
    rvol = read_label_map(reference, allow_no_orientation)
    if scan is not None:
        check_same_frame(reference, scan, what)
    if others is not None:
        others[:] = other_labels(rvol.array, labels)
    organ = np.isin(rvol.array, labels)
    diff = grid.grid_difference(rvol)
    if not diff:
        return organ
    placed = Volume(organ, rvol.spacing, rvol.origin, rvol.direction).placed_on(grid)
    if placed is None:
        raise ValueError(f"the reference label map is not on the {what}'s grid ({diff}; "
                         f"reference vs {what}): resample it onto the {what}")
    if np.count_nonzero(placed) != np.count_nonzero(organ):
        raise ValueError(f"the reference label map is a crop or an extension of the {what}'s "
                         f"grid ({diff}; reference vs {what}), and part of its organ lies "
                         f"outside the {what}: the two cannot be compared")
    return placed


def init_mask_volume(init_mask, selection, grid, scan, allow_no_orientation=False,
                     filled=None):
    """The ``--init-mask`` as ``(label map, the labels of its organ)``: a label
    map whose organ is ``selection`` (ints), or an RT Structure Set drawn on the
    scan whose structures ``selection`` names (strings: ROI name or ``#N``; none:
    its one structure with contours) filled on ``grid``, the scan's, in the
    frame of reference of ``scan`` ``(path, series)`` when it records one; its
    organ is every structure filled. ``filled``, a dict, receives the
    structures filled and whether the frame of reference was checked
    (:func:`note_init_structures`). Contours reaching beyond the grid are
    allowed: the fit starts from the part on it."""
    names = structure_names(selection)
    if is_rtstruct_file(init_mask):
        frame = scan_frame_of_reference(*scan)
        mvol, info = read_rtstruct(init_mask, grid, names or None, frame,
                                   option="--init-structure")
        for s in info["structures"]:
            if not s["voxels"]:
                off = _off_the_grid(s)
                raise ValueError(f"structure {structure_title(s)} of the --init-mask "
                                 f"{display_name(init_mask)} fills no voxel of the image's "
                                 "grid" + (f" ({off})" if off else ""))
        if filled is not None:
            filled.update(_what_was_filled(info))
        return mvol, tuple(s["label"] for s in info["structures"])
    if names:
        raise ValueError(f"--init-structure names structures of an RT Structure Set; "
                         f"{display_name(init_mask)} is a label map (its labels: --init-labels)")
    mvol = read_label_map(init_mask, allow_no_orientation)
    check_same_frame(init_mask, scan, "image", role="the --init-mask")
    return mvol, tuple(selection)


#: the warning of an ``--init-mask`` structure set whose frame of reference the scan
#: cannot confirm (a NIfTI file records none)
UNCHECKED_INIT_FRAME_WARNING = ("the --init-mask structure set's frame of reference could not "
                                "be compared with the scan's (not a DICOM scan, or a UID "
                                "missing): only its slice planes were checked")


def note_init_structures(report, filled):
    """The report of a fit started from an RT Structure Set ``--init-mask``
    records the structures filled (``init_mask``), and warns when its frame of
    reference could not be checked."""
    report["init_mask"] = filled
    if not filled["frame_of_reference_checked"]:
        report["warnings"].append(UNCHECKED_INIT_FRAME_WARNING)


def check_same_frame(reference, scan, what, role="the reference"):
    """A reference that is a DICOM object (a DICOM-SEG) and names a Frame of
    Reference UID must share that of ``scan`` ``(path, series)`` when the scan
    records one: a segmentation of another scan on a grid of the same
    geometry (a follow-up acquired alike) would be compared voxel for voxel.
    ValueError otherwise; other references pass. ``role``: what the object is
    to the command ('the --init-mask', refine's 'the mask'), the same for a
    mask that is placed by its coordinates (another scan's would misplace it)."""
    theirs = scan_frame_of_reference(reference)       # (a file: its own header's)
    if theirs is None:
        return
    frame = scan_frame_of_reference(*scan)
    if frame is not None and frame != theirs:
        why = ("the two cannot be compared" if role == "the reference" else
               f"its coordinates do not place it on the {what}")
        raise ValueError(f"{role} {display_name(reference)} was made on another scan "
                         f"(its Frame of Reference UID differs from the {what}'s): {why}")


def structure_reference(reference, names, grid, what, scan=None, filled=None):
    """The structures ``names`` (default: the one with contours) of the RT
    Structure Set ``reference`` filled on ``grid`` as one bool array: the
    reference organ of :func:`reference_mask`. Contours must lie on the grid's
    slices, in the frame of reference of ``scan`` ``(path, series)`` when it
    records one; a structure that reaches beyond the grid (slices outside it,
    outlines beyond its rows or columns) is refused, as a label map whose organ
    lies partly off the grid is: the part off the grid would count as missed.
    ``filled``: a dict that receives ``structures`` (each one's name, ROI
    number, label, voxels and volume in ml) and ``frame_of_reference_checked``
    (False where the scan records none: a NIfTI file)."""
    frame = scan_frame_of_reference(*scan) if scan is not None else None
    rvol, info = read_rtstruct(reference, grid, names or None, frame,
                               option="--reference-structure")
    for s in info["structures"]:
        if off := _off_the_grid(s):
            raise ValueError(f"structure {structure_title(s)} of the reference "
                             f"{display_name(reference)} reaches beyond the {what}'s grid "
                             f"({off}): the two cannot be compared")
    if filled is not None:
        filled.update(_what_was_filled(info))
    return rvol.array > 0


def _off_the_grid(s):
    """What of the structure ``s`` (:func:`~shapeprior.io.read_rtstruct`'s ``info``)
    lies off the grid it was filled on, in words ('' for nothing)."""
    return "; ".join(f"{s[k]} {what}" for k, what in (
        ("outside_contours", "contours on slices outside it"),
        ("clipped_contours", "contours beyond its rows or columns")) if s[k])


def _what_was_filled(info):
    """Of :func:`~shapeprior.io.read_rtstruct`'s ``info``, what a report records:
    each structure's name, ROI number, label, voxels and volume (ml), and whether
    the frame of reference was checked."""
    return {"structures": [{k: s[k] for k in ("name", "number", "label", "voxels", "volume_ml")}
                           for s in info["structures"]],
            "frame_of_reference_checked": info["frame_of_reference_checked"]}


def compared_with(label, ref, spacing):
    """Dice and surface distances (mm) of ``label`` against the reference organ
    ``ref`` (bool arrays on one grid of ``spacing``): a report's reference block."""
    return {"dice": dice(label, ref), **surface_distances(label, ref, spacing)}


#: the start of the warning of a reference without the organ (a rerun compared
#: with another reference replaces it, :mod:`._rescore`)
EMPTY_REFERENCE_WARNING = "the reference holds no voxel with label(s)"


#: the warning of a structure set reference whose frame of reference the scan cannot
#: confirm (a NIfTI file records none): only the slice planes were checked
UNCHECKED_FRAME_WARNING = ("the reference structure set's frame of reference could not be "
                           "compared with the scan's (not a DICOM scan, or a UID missing): "
                           "only its slice planes were checked")
#: the start of the warning of a reference that holds other labels than those scored
#: (a multi-organ map: TotalSegmentator's); replaced as the empty one is
OTHER_REFERENCE_LABELS_WARNING = "the reference holds"
#: ... and its end
_OTHER_LABELS_END = "; if the organ is another of them, name it with --reference-labels"


def note_structures(report, selection, filled):
    """The report's reference block records what was scored: ``labels``, the
    selection as given (:func:`reference_selection`; the manifest keeps it to
    tell a rerun's reference apart), and for an RT Structure Set what
    :func:`structure_reference` ``filled``: the ``structures`` and whether the
    frame of reference was checked (:func:`note_reference` warns if not)."""
    if filled:              # an RT Structure Set: the names chosen (none: its one structure)
        report["reference"]["labels"] = structure_names(selection)
        report["reference"].update(filled)
    else:
        report["reference"]["labels"] = reference_selection(selection)


def note_reference(report, ref, others=()):
    """The reference's notes in ``report``: the number of its ``others`` labels
    (``reference.other_labels``) and, when it holds any, a warning naming them
    (a multi-organ map scored on the model's labels compares another organ: Dice 0,
    distances of 19 cm, and nothing said); :func:`note_empty_reference`."""
    labels = report["reference"].get("labels") or []
    report["reference"]["other_labels"] = len(others)
    if report["reference"].get("frame_of_reference_checked") is False:
        report["warnings"].append(UNCHECKED_FRAME_WARNING)
    if others:
        report["warnings"].append(
            f"{OTHER_REFERENCE_LABELS_WARNING} {len(others)} other label"
            f"{'s' * (len(others) > 1)} ({label_list(others)}) besides the "
            f"one{'s' * (len(labels) > 1)} scored ({label_list(labels)}){_OTHER_LABELS_END}")
    note_empty_reference(report, ref)


def is_reference_warning(text):
    """Whether a report's warning is one :func:`note_reference` wrote (a new
    comparison replaces them)."""
    return text.startswith(EMPTY_REFERENCE_WARNING) or text == UNCHECKED_FRAME_WARNING or (
        text.startswith(OTHER_REFERENCE_LABELS_WARNING) and text.endswith(_OTHER_LABELS_END))


def note_empty_reference(report, ref):
    """A reference without the organ (``ref`` all False): the report's reference
    block says ``empty`` and a warning says what its numbers mean (Dice 0 and
    no surface distance whenever anything was segmented)."""
    if ref.any():
        return
    labels = report["reference"].get("labels")
    structures = report["reference"].get("structures")
    named = "" if not structures else " (structure " + ", ".join(
        structure_title(s) for s in structures) + \
        ": its outlines enclose no voxel centre)"
    report["reference"]["empty"] = True
    report["warnings"].append(
        f"{EMPTY_REFERENCE_WARNING} {labels}{named}: its Dice and surface "
        "distances say only whether anything was segmented (a scan without the organ; "
        f"else check --reference-{'structure' if structures else 'labels'})")


def readers_part(info, what="image"):
    """The report's warning for a NIfTI (its reader's ``info``) whose qform places
    it elsewhere than its sform where readers take one or the other (its
    sform_code is not 1, which ITK follows too), or None."""
    other = info.get("other_qform")
    if not other or info.get("sform_code", 0) == 1:
        return None
    return (f"the NIfTI's qform places the {what} up to {other['apart_mm']:.3g} mm from where "
            "its sform does: nibabel and FSL place it by the sform (as here), ITK, 3D Slicer "
            "and ITK-SNAP by the qform; the label holds both, so each overlays it on the "
            f"{what}, but coordinates (the seed, the report's) are the sform's")


def _report(res, vol, ref, info, model, params, dictionary, clock, case_name, input_path,
            volume_ml):
    """The case's report.json (without the output files' own entries)."""
    warnings = []
    if info.get("slice_gap_mm", 0) > 0:
        warnings.append(f"slices are {info['slice_gap_mm']} mm apart beyond their thickness "
                        "(gaps): boundaries between slabs are interpolated")
    if info.get("oblique"):
        warnings.append("oblique acquisition: handled exactly in physical space")
    if note := readers_part(info):
        warnings.append(note)
    if not res.converged and res.n_iter:
        warnings.append("did not converge within the iteration limit")
    other = res.evidence.get("other_side")
    if other is not None:
        warnings.append(f"no --side given: both sides were fitted and the "
                        f"{res.evidence['side']} kept (the {other['side']}: {other['status']}, "
                        f"quality {other['quality']:.2f}); give --side {other['side']} for it, "
                        "or --side both for both")
    if note := side_note(model, params):
        warnings.append(note)
    if res.evidence.get("ct_window_source", "").startswith("default"):
        lo, hi = res.evidence["ct_window_hu"]
        warnings.append(f"no --window given: the CT intensity model took the soft-tissue "
                        f"window {lo}..{hi} HU (give --window for another organ or phase)")
    report = {
        "status": res.status, "quality": round(res.quality, 4), "reasons": res.reasons,
        "reason_levels": reason_levels(res.reasons, res.status),
        "input": {"name": case_name or display_name(input_path), **info,
                  "shape_zyx": list(vol.array.shape), "spacing_mm": vol.spacing.tolist(),
                  "origin_mm": vol.origin.tolist(), "direction": vol.direction.ravel().tolist()},
        "model": {"organ": model.metadata.get("organ"), "n_shapes": int(model.shapes.shape[0]),
                  "n_vertices": model.n_vertices, "appearance": model.profile is not None,
                  "version": model_version(model)},
        "prior": prior_record(model, params, dictionary),
        # the side fitted: of a paired organ's model, or 'none'
        "side": fitted_side(res, model, params) or "none",
        "surface_offset_mm": res.surface_offset_mm,
        # voxels next to the surface the model's voxel classifier decided otherwise
        # (null: the model has none, or --no-voxel-refine)
        "voxels_changed": res.voxels_changed,
        "volume_ml": volume_ml,
        "mesh_volume_ml": Surface(res.verts, res.faces).volume() / 1000.0,
        "iterations": res.n_iter, "converged": res.converged,
        "overridden_fraction": res.overridden_fraction,
        "overridden_fraction_max": res.overridden_fraction_max,
        "overridden_vertices": int(res.overridden.sum()),
        "time_s": res.time_s, "backend": res.backend,
        "stage_seconds": {k: round(v, 4) for k, v in clock.seconds.items()},
        "warnings": warnings, "evidence": res.evidence, "placement": res.placement,
        "history": res.history,
    }
    if ref is not None:
        report["reference"] = compared_with(res.label, ref, vol.spacing)
    return report


#: the keys of a side's own account in a report of both sides (``sides``)
SIDE_KEYS = ("status", "quality", "reasons", "reason_levels", "surface_offset_mm",
             "voxels_changed", "volume_ml",
             "mesh_volume_ml", "iterations", "converged", "overridden_fraction",
             "overridden_fraction_max", "overridden_vertices", "time_s", "evidence",
             "placement", "history")


def _paired_report(res, vol, ref, info, model, params, dictionary, clock, case_name,
                   input_path, volume_ml):
    """The report.json of both sides of a paired organ
    (:class:`~shapeprior.segmentation.PairedSegmentResult`): the status, the
    whole label's measures and the reference block at the top, each side's
    own account (a one-side report's fit keys, :data:`SIDE_KEYS`) under
    ``sides``. A warning both sides give is given once, one side's is led by
    its side."""
    voxel_ml = float(np.prod(vol.spacing)) / 1000.0
    reports = {s: _report(f, vol, None, info, model, replace(params, side=s), dictionary, clock,
                          case_name, input_path, float(np.count_nonzero(f.label)) * voxel_ml)
               for s, f in res.sides.items()}
    warnings = []
    for s, r in reports.items():
        for w in r["warnings"]:
            shared = all(w in o["warnings"] for o in reports.values())
            text = w if shared else f"{s}: {w}"
            if text not in warnings:
                warnings.append(text)
    first = reports["left"]
    kept = [reports[s] for s in res.in_label]      # the sides the label and the mesh hold
    report = {
        "status": res.status, "quality": round(res.quality, 4), "reasons": res.reasons,
        "reason_levels": reason_levels(res.reasons, res.status),
        "input": first["input"], "model": first["model"], "prior": first["prior"],
        "side": "both", "volume_ml": volume_ml,
        "mesh_volume_ml": sum(r["mesh_volume_ml"] for r in kept),
        "iterations": max(r["iterations"] for r in kept),
        "converged": all(r["converged"] for r in kept),
        "overridden_fraction": max(r["overridden_fraction"] for r in kept),
        "overridden_fraction_max": max(r["overridden_fraction_max"] for r in kept),
        "overridden_vertices": sum(r["overridden_vertices"] for r in kept),
        "time_s": res.time_s, "backend": res.backend,
        "stage_seconds": {k: round(v, 4) for k, v in clock.seconds.items()},
        "warnings": warnings,
        "paired": {"fitted": "both sides of the paired organ, each with its own side's shape",
                   "in_label": res.in_label, "overlap_ml": res.evidence.get("overlap_ml"),
                   "mesh_side": {"1": "left", "2": "right"}},
        "sides": {s: {**{k: r[k] for k in SIDE_KEYS}, "in_label": s in res.in_label}
                  for s, r in reports.items()},
    }
    if len(res.in_label) == 2:
        # where the label is cut into its sides: halfway between the sides' centroids
        report["paired"]["midline_lps_x_mm"] = round(0.5 * sum(
            float(np.mean(res.sides[s].verts[:, 0])) for s in res.in_label), 3)
    if ref is not None:
        report["reference"] = compared_with(res.label, ref, vol.spacing)
        side_references(report, res.label > 0, ref, vol)
    return report


def side_references(report, label, ref, grid):
    """A report of both sides: each side's ``reference`` block, the label and the
    reference organ (bool arrays on ``grid``) cut at the report's midline
    (:func:`~shapeprior.segmentation.split_at_midline`). A report without a
    midline (one side left out of the label) is cut halfway between the
    reference's own two organs (:func:`~shapeprior.segmentation.paired_parts`),
    so the side left out scores Dice 0 and the other its own; a reference of
    one organ gives no side a block (a previous comparison's is dropped)."""
    x0 = report["paired"].get("midline_lps_x_mm")
    for b in report["sides"].values():
        b.pop("reference", None)
    if x0 is None:
        parts = paired_parts(grid, ref)
        if parts is None:
            return
        x0 = 0.5 * sum(float(np.mean(grid.index_to_physical(
            np.argwhere(m)[:, ::-1].astype(float))[:, 0])) for m in parts.values())
    for side, (lab, org) in split_at_midline(grid, [label, ref], x0).items():
        report["sides"][side]["reference"] = compared_with(lab, org, grid.spacing)


def _write_outputs(out, vol, res, report, model, model_path, input_path, reference,
                   mesh_format, params, argv, info, deidentify, init_mask=None,
                   output_type="nifti", digests=None):
    kinds = output_kinds(output_type)
    if "nifti" in kinds:
        write_label(vol, res.label, out.file("label.nii.gz"),
                    code=info.get("xform_code") or 1,
                    description=label_description(res.status, model),
                    qform=info.get("other_qform"))
    if "dicom-seg" in kinds:
        report["dicom_seg"] = _write_seg(out, vol, res, model, input_path, info, params)
    if "rtstruct" in kinds:
        report["rtstruct"] = _write_seg(out, vol, res, model, input_path, info, params,
                                        rtstruct=True)
    paired = isinstance(res, PairedSegmentResult)
    write_mesh(out.file(f"mesh.{mesh_format}"), res.fits if paired else {None: res}, model)
    out.write_json("report.json", report)
    out.write_json("statistics.json", {"status": res.status, "sides": {
        s: statistics(f, model, vol.spacing) for s, f in res.sides.items()}} if paired
        else statistics(res, model, vol.spacing))
    inputs, shown = input_hashes(Path(input_path), deidentify)
    inputs["model"] = Path(model_path)
    if reference is not None:
        inputs["reference"] = Path(reference)
    if init_mask is not None:
        inputs["init_mask"] = Path(init_mask)
    if deidentify:
        shown["model"] = display_name(model_path)
        shown["reference"] = "reference"
        shown["init_mask"] = "init_mask"
        argv = scrub_argv(argv, {input_path: "<input>", reference: "<reference>",
                                 out.path: "<output>"})
    compared = {"reference_labels": report["reference"]["labels"]} if reference is not None else {}
    if "init_mask" in report:           # an RT Structure Set: the structures it started from
        compared["init_structures"] = [structure_title(s)
                                       for s in report["init_mask"]["structures"]]
    out.write_json("manifest.json", manifest(
        command="segment", parameters={"argv": argv, **params_record(params), **compared},
        seed=None, inputs=inputs, input_paths=shown, digests=digests))


def write_mesh(path, fits, model):
    """The mesh of the fits (``{side or None: SegmentResult}``), with their
    per-vertex results (:func:`vertex_data`): one surface, or the sides' one
    after the other with point data ``side`` (1 left, 2 right)."""
    verts, faces, data, start = [], [], {}, 0
    for side, f in fits.items():
        verts.append(f.verts)
        faces.append(f.faces + start)
        start += len(f.verts)
        d = vertex_data(f, model)
        if side is not None:
            d["side"] = np.full(len(f.verts), 1.0 if side == "left" else 2.0)
        for k, v in d.items():
            data.setdefault(k, []).append(v)
    Surface(np.concatenate(verts), np.concatenate(faces)).write(
        path, point_data={k: np.concatenate(v) for k, v in data.items()})


def both_sides_init(mvol, model, labels, params, dictionary=None):
    """Starting surfaces of ``--side both`` from an ``--init-mask``: ``{side:
    surface}`` of each side it holds (:func:`~shapeprior.segmentation.paired_parts`),
    each its part's refined surface; a mask holding one organ starts the side
    its refinement took, and the other side is searched for."""
    organ = np.isin(mvol.array, np.asarray(tuple(labels)))
    parts = paired_parts(mvol, organ, organ_min_ml(model)) if paired_model(model) else None
    if parts is None:
        fit = refine_mask(mvol, model, labels, replace(params, side="none"), None,
                          dictionary).mask_fit
        return {"right" if fit.mirrored else "left": fit.verts}
    return {side: refine_mask(part_alone(mvol, organ, part), model, labels,
                              replace(params, side=side), None, dictionary).mask_fit.verts
            for side, part in parts.items()}


def one_side_of(mvol, model, labels, side):
    """An ``--init-mask`` as the fit starts from: of a paired organ's model and a
    mask holding both sides (:func:`~shapeprior.segmentation.paired_parts`),
    the part of ``side`` alone (the other side's organ voxels cleared); a
    segmentation fits one organ, so without a side such a mask is refused."""
    if not paired_model(model):
        return mvol
    organ = np.isin(mvol.array, np.asarray(tuple(labels)))
    parts = paired_parts(mvol, organ, organ_min_ml(model))
    if parts is None:
        return mvol
    if side not in parts:
        ml = float(np.prod(mvol.spacing)) / 1000.0
        raise ValueError("--init-mask holds both sides of the paired organ (" + ", ".join(
            f"{s} {float(m.sum()) * ml:.1f} ml" for s, m in parts.items()) + "); a "
            "segmentation fits one: give --side left or --side right")
    return part_alone(mvol, organ, parts[side])


def side_note(model, params):
    """The report's note for a ``--side`` given with a model of no paired organ
    (it changes no fit), or None."""
    if params.side in ("left", "right") and not paired_model(model):
        return (f"--side {params.side} names the side in the outputs only: the model is not "
                "of a paired organ with one side mirrored onto the other (build-model "
                "--split-sides), so it fitted as it was built")
    return None


def fitted_side(res, model, params):
    """The side of the organ fitted: of a paired organ's model the side its fit
    took (also when both were tried, no side being given), else the side the
    user gave; None when there is none."""
    if paired_model(model):
        return "right" if res.mirrored else "left"
    return params.side if params.side in ("left", "right") else None


def _write_seg(out, vol, res, model, input_path, info, params, rtstruct=False):
    """``seg.dcm`` (or with ``rtstruct`` the RT Structure Set ``rtstruct.dcm``) for a
    DICOM input; a failed (empty) result has none, and the report says why."""
    if isinstance(res, PairedSegmentResult):       # one segment per side in the label
        found = {s: f.label for s, f in res.fits.items() if np.any(f.label)}
        label, side = list(found.values()), list(found)
    else:
        label, side = res.label, fitted_side(res, model, params)
    return write_dicom_label(out, "rtstruct" if rtstruct else "dicom-seg", label, side, vol,
                             input_path, info, model, res.status)


def write_dicom_label(out, kind, label, side, vol, source, info, model, status,
                      refined=False) -> dict:
    """Write the DICOM label output ``kind`` ('dicom-seg': ``seg.dcm``, 'rtstruct':
    ``rtstruct.dcm``) of ``label`` (on the grid of ``vol``, the scan read from the
    DICOM input ``source`` with reader ``info``; or a list, one per side, ``side``
    then listing the sides) into ``out``; returns the report's record. A failed
    result, or one with no organ, writes none and the record says why: a failed
    refinement's label is the mask as given, not a result to store."""
    parts = label if isinstance(label, list) else [label]
    if status == "failed" or not any(np.any(a) for a in parts):
        return {"written": False, "reason": "failed refinement: no refined organ to store"
                if refined else "failed result: no organ to store"}
    name = OUTPUT_FILES[kind]
    write = write_structure_set if kind == "rtstruct" else write_dicom_seg
    desc = (REFINED_SERIES_DESCRIPTION if refined else SERIES_DESCRIPTION)[status]
    rec = write(out.file(name), label, vol, dicom_source(source), info.get("series_key"),
                organ=model.metadata.get("organ", "organ"), side=side,
                series_description=desc)
    return {"written": True, "file": name, "series_description": desc, **rec}


#: what a file a viewer shows says of a suspect result (report.json is not at hand there)
SUSPECT_WORDS = "SUSPECT, review before use"

#: the NIfTI label's header ``descrip`` for a result of each status ({} the organ),
#: of a segmentation and of a refinement (whose failed result is the mask as given):
#: what a header viewer (fslhd, FSLeyes) shows beside the voxels
LABEL_DESCRIPTION = {
    "ok": "shapeprior {}: ok",
    "suspect": "shapeprior {}: " + SUSPECT_WORDS,
    "failed": "shapeprior {}: FAILED, no organ written (see report.json)"}
REFINED_DESCRIPTION = {
    "ok": "shapeprior refined {}: ok",
    "suspect": "shapeprior refined {}: " + SUSPECT_WORDS,
    "failed": "shapeprior: {} mask as given, not refined: FAILED (see report.json)"}


def label_description(status, model, refined=False) -> str:
    """The ``descrip`` of a label map written for a result of ``status``; of a
    refinement with ``refined``."""
    organ = str(model.metadata.get("organ") or "organ")
    return (REFINED_DESCRIPTION if refined else LABEL_DESCRIPTION)[status].format(organ)


#: the Series Description of the DICOM-SEG or structure set of an ok and of a suspect
#: result (a failed one writes neither): a viewer shows it beside the series, where
#: report.json is not at hand, so a suspect result says so where the reader looks
SERIES_DESCRIPTION = {"ok": "shapeprior segmentation",
                      "suspect": "shapeprior segmentation - " + SUSPECT_WORDS}
#: the same of a refinement's (``refine --output-type``)
REFINED_SERIES_DESCRIPTION = {k: v.replace("shapeprior", "shapeprior refined")
                              for k, v in SERIES_DESCRIPTION.items()}


def vertex_data(res, model) -> dict:
    """Per-vertex results written with the mesh: the gross error |e| (mm), the
    vertices the prior overrode in any iteration (1/0), the last search's
    confidence, and the signed distance from the model mean shape (mm,
    positive outward; :func:`~shapeprior.segmentation.distance_to_mean`)."""
    n = len(res.verts)
    pick = lambda a: np.zeros(n) if a is None else np.asarray(a, dtype=np.float64)  # noqa: E731
    return {"gross_error_mm": pick(res.error_mm), "overridden": pick(res.overridden),
            "confidence": pick(res.confidence),
            "distance_to_mean_mm": distance_to_mean(model, res.verts, res.faces, res.mirrored)}


def statistics(res, model, spacing) -> dict:
    """``statistics.json`` of a result: status and quality, then the organ's
    measures and how unusual it is (:func:`~shapeprior.segmentation.shape_statistics`).
    A failed result has no organ to measure."""
    head = {"status": res.status, "quality": round(float(res.quality), 4),
            "reasons": list(res.reasons),
            "reason_levels": reason_levels(res.reasons, res.status), "coordinates": "LPS",
            "units": "mm, ml, mm^2",
            "organ": model.metadata.get("organ"), "mirrored": bool(res.mirrored)}
    if res.status == "failed" or not np.any(res.label):
        return head
    return {**head, **shape_statistics(model, res.verts, res.faces, res.label, spacing,
                                       res.mirrored)}


def output_names(output_type="nifti", mesh_format="vtk", qc=True) -> set:
    """The files a case's folder holds besides its manifest, for these options."""
    names = {"report.json", "statistics.json", f"mesh.{mesh_format}"}
    names |= {OUTPUT_FILES[k] for k in output_kinds(output_type)}
    if qc:
        names.add("qc.png")
    return names


def params_record(params) -> dict:
    """The segmentation parameters as recorded (and compared when resuming)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(params).items()}


def scrub_argv(argv, replace):
    """``argv`` with the given paths (and anything under them) replaced by placeholders."""
    if argv is None:
        return None
    real = {os.path.realpath(str(k)): v for k, v in replace.items() if k is not None}
    out = []
    for a in argv:
        r = os.path.realpath(a) if a and not a.startswith("-") else None
        hit = next((v for k, v in real.items() if r and (r == k or r.startswith(k + os.sep))),
                   None)
        out.append(hit or os.fsencode(a).decode("utf-8", "backslashreplace"))
    return out


__all__ = ["run_case", "side_references", "label_description", "OUTPUT_TYPES", "OUTPUT_FILES", "output_kinds",
           "output_names", "input_files", "input_hashes", "params_record", "vertex_data",
           "statistics"]
