"""One refinement job: an existing label map (and optionally its image) ->
refined label, mesh with per-vertex gross error, report and manifest,
published atomically."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .._background import background
from .._outputs import OutputDir, manifest
from ..io import Volume, display_name, is_dicom_seg, read_scan, series_named_by, write_label
from ..segmentation import (PairedRefineResult, SegmentParams, reason_levels, refine_mask,
                            refine_paired)
from ._qc import qc_png
from ._run import (MESH_FORMATS, OUTPUT_FILES, check_same_frame, compared_with, dicom_kinds,
                   fitted_side, input_hashes, label_description, label_list, model_version,
                   note_reference, note_structures, other_labels, output_kinds,
                   params_record, prior_record, readers_part, reference_mask,
                   reference_selection, scrub_argv, side_note, statistics,
                   write_dicom_label, write_mesh)


def refine_output_names(mesh_format="vtk", output_type="nifti") -> set:
    """The files a refinement's folder holds besides its manifest."""
    return {f"mesh.{mesh_format}", "report.json", "statistics.json", "qc.png",
            *(OUTPUT_FILES[k] for k in output_kinds(output_type))}


def refine_inputs(mask_path, image, model_path, deidentify=False) -> dict:
    """``{manifest key: path}`` of the files a refinement reads: the mask
    (``mask/<name>``, with an Analyze partner), the image's files
    (``image/<name>``; every file of a DICOM folder) and the model. With
    ``deidentify`` the keys number the files (``mask/0000``) instead."""
    files, _ = input_hashes(Path(mask_path), deidentify)
    files = {k.replace("input/", "mask/"): v for k, v in files.items()}
    if image is not None:
        img_files, _ = input_hashes(Path(image), deidentify)
        files.update({k.replace("input/", "image/"): v for k, v in img_files.items()})
    files["model"] = Path(model_path)
    return files


def refine_record(params, labels, keep) -> dict:
    """A refinement's parameters as recorded (and compared when a batch resumes),
    ``argv`` and ``reference_labels`` aside."""
    return {"labels": [int(v) for v in labels], "keep_labels": [int(v) for v in keep],
            **params_record(params)}


def refine_case(mask_path, outdir, model, model_path, params: SegmentParams, *, labels=(1,),
                image=None, mesh_format="vtk", force=False, argv=None,
                allow_no_orientation=False, keep=(), labels_given=True, reference=None,
                reference_labels=(1,), deidentify=False, case_name=None, structure=None,
                output_type="nifti", series=None):
    """Refine the label map ``mask_path`` with the shape model; publish ``outdir``.

    The refined label (value 1; labels in ``keep`` never removed and written
    with their own value) is written on the mask's grid, with the mesh
    (point data: gross error |e| in mm, overridden flag, confidence), a
    report of the regions removed and added, a QC picture and a manifest.
    ``image`` (a file or DICOM folder) continues the fit against the scan's
    boundary appearance. Returns the report dict. Nothing is left behind on
    error; ``outdir`` may not overlap an input. With ``labels_given`` False (the
    labels are the default, not the user's), a mask that holds other labels too
    gets a warning naming them (a multi-organ map whose organ label was not given).
    ``reference``: a label map on the mask's grid whose ``reference_labels`` are
    the organ (or an RT Structure Set drawn on the scan of that grid, whose
    structures they name as strings); the report's ``reference`` block gives
    Dice and surface distances of the refined label and (``input``) of the mask
    as given. ``structure``: the mask is an RT Structure Set, whose structure of
    that name (default: its one structure with contours) is filled on the grid
    of ``image`` as label 1. With
    ``deidentify`` no input's file name or path reaches the outputs: the report
    names the mask ``case_name`` (a hash, :class:`~._cases.Deidentifier`), the
    manifest numbers the files and withholds their paths, and ``argv`` is
    scrubbed of them.

    ``output_type`` (as segment's, :func:`~._run.output_kinds`): the refined
    label as ``label.nii.gz`` on the mask's grid ('nifti', the default), and
    with an ``image`` that is a DICOM series (or an enhanced multi-frame file)
    as ``seg.dcm`` ('dicom-seg') or ``rtstruct.dcm`` ('rtstruct') on its slices,
    referring to it (one segment or structure per side of a paired organ; not
    for a failed refinement, whose label is the mask as given). Such a mask must
    lie on the scan's lattice (its grid or a crop of it). A DICOM-SEG mask given
    with the series it segments is read onto that series' grid, so that the
    refined label is not cut at the frames the SEG stored. ``series``: which
    series of an ``image`` folder that holds several (index or key); by default,
    for a DICOM-SEG or RT Structure Set mask, the one it names (the report's
    ``input.series``).

    A mask holding both sides of a paired organ, with a model of one side
    (:func:`~shapeprior.segmentation.refine_paired`), is refined side by side:
    one label map and one mesh of both (point data ``side``: 1 left, 2
    right), the report's status the worse side's, each side's account under
    ``sides``, and ``statistics.json`` per side.
    """
    if mesh_format not in MESH_FORMATS:
        raise ValueError(f"mesh format {mesh_format!r} is not one of {MESH_FORMATS}")
    mask_path = Path(mask_path)
    dicom = dicom_kinds(output_type, image, deidentify, "--image")
    inputs = [mask_path, model_path, image, reference]
    out = OutputDir(outdir, force=force, inputs=inputs)
    try:
        if deidentify:
            argv = scrub_argv(argv, {mask_path: "<mask>", image: "<image>",
                                     reference: "<reference>", out.path: "<output>"})
        return _refine_case(out, mask_path, model, model_path, params, labels, image,
                            mesh_format, argv, allow_no_orientation, tuple(keep),
                            labels_given, reference, tuple(reference_labels),
                            (case_name or "(withheld)") if deidentify else None, structure,
                            output_type, dicom, series)
    except BaseException:
        out.discard()
        raise


def refine_reference(label, organ_in, ref, spacing, labels):
    """A refinement's reference block: the reference's ``labels``, the refined
    ``label``'s Dice and distances against ``ref`` and (``input``) the mask's as
    given (``organ_in``)."""
    return {"labels": reference_selection(labels), **compared_with(label, ref, spacing),
            "input": compared_with(organ_in, ref, spacing)}


def _fit_block(res):
    """The report's account of one refinement (:class:`RefineResult`)."""
    fit = res.fit
    return {"status": fit.status, "quality": round(fit.quality, 4), "reasons": fit.reasons,
            "reason_levels": reason_levels(fit.reasons, fit.status),
            "corrections": res.corrections,
            "overridden_fraction_max": fit.overridden_fraction_max,
            "overridden_vertices": int(fit.overridden.sum()),
            "mask_fit": {"status": res.mask_fit.status,
                         "quality": round(res.mask_fit.quality, 4),
                         "reasons": res.mask_fit.reasons,
                         "reason_levels": reason_levels(res.mask_fit.reasons,
                                                        res.mask_fit.status)},
            "evidence": fit.evidence, "iterations": fit.n_iter, "converged": fit.converged}


def _paired_block(res):
    """The report's account of a mask holding both sides of a paired organ
    (:class:`PairedRefineResult`): the worst side's status, each side's reasons
    led by its side, and each side's own account under ``sides``."""
    done = {s: _fit_block(r) for s, r in res.sides.items() if r is not None}
    kept = [s for s, r in res.sides.items() if r is None]
    block = {
        "status": res.status,
        "quality": min(b["quality"] for b in done.values()),
        "reasons": res.reasons, "reason_levels": reason_levels(res.reasons, res.status),
        "corrections": res.corrections,
        "overridden_fraction_max": max(b["overridden_fraction_max"] for b in done.values()),
        "overridden_vertices": sum(b["overridden_vertices"] for b in done.values()),
        "iterations": max(b["iterations"] for b in done.values()),
        "converged": all(b["converged"] for b in done.values()),
        "paired": {"split": "the mask holds both sides of the paired organ: split at the "
                            "middle of the gap between them (LPS x), each side refined with "
                            "its own side's shape",
                   "input_ml": res.volumes_ml, "refined": list(done),
                   "kept_as_given": kept,
                   "mesh_side": {"1": "left", "2": "right"}},
        "sides": {s: done.get(s, {"status": "kept as given"}) for s in res.sides},
    }
    return block


def _mask_and_image(mask_path, image, structure=None, allow_no_orientation=False,
                    series=None):
    """``(mask, image or None, the mask reader's info, the image reader's info)``, the
    first two as volumes: the mask a label map, or an RT Structure Set whose
    ``structure`` (default: its one structure with contours) is filled on the grid
    of ``image``, the scan it was drawn on (label 1; its info ``{}``). A NIfTI
    mask's info holds the transforms the refined label keeps
    (:func:`~shapeprior.io.read_file`). A DICOM-SEG mask, read on the grid its
    frames span, is placed on the grid of ``image`` when it lies on that scan's
    lattice (the series it segments). ``series``: which series of an ``image``
    folder that holds several."""
    from ..io import as_label_map, is_rtstruct_file, read_file, read_rtstruct
    from ..io import scan_frame_of_reference

    img, img_info = (None, {}) if image is None else \
        read_scan(image, series, allow_no_orientation)
    if is_rtstruct_file(mask_path):
        if img is None:
            raise ValueError(f"{display_name(mask_path)} is an RT Structure Set: its contours "
                             "are filled on the scan they were drawn on; give it with --image")
        mvol, _ = read_rtstruct(mask_path, img, [structure] if structure else None,
                                scan_frame_of_reference(image, series))
        return mvol, img, {}, img_info
    if structure is not None:
        raise ValueError("--structure names a structure of an RT Structure Set; "
                         f"{display_name(mask_path)} is a label map (--labels)")
    vol, info = read_file(mask_path, allow_no_orientation)
    mvol = as_label_map(vol, display_name(mask_path))
    if image is not None:
        check_same_frame(mask_path, (image, series), "image", role="the mask")
        if is_dicom_seg(mask_path) and not img.same_grid(mvol):
            placed = mvol.placed_on(img)
            if placed is not None and \
                    np.count_nonzero(placed) == np.count_nonzero(mvol.array):
                mvol = Volume(placed, img.spacing, img.origin, img.direction)
    return mvol, img, info, img_info


def on_scan(label, mask, scan, kind):
    """The refined ``label`` (on the grid of ``mask``) on the grid of ``scan``, for
    the DICOM output ``kind``; ValueError when the mask's grid is not the scan's
    lattice (checked before the fit with an empty label)."""
    if scan.same_grid(mask):
        return label
    placed = Volume(label, mask.spacing, mask.origin, mask.direction).placed_on(scan)
    if placed is None:
        raise ValueError(f"--output-type {kind} writes the refined label on the slices of "
                         f"--image, and the mask is not on its grid "
                         f"({scan.grid_difference(mask)}; mask vs image): resample the mask "
                         "onto the scan")
    return placed


def _refine_case(out, mask_path, model, model_path, params, labels, image, mesh_format, argv,
                 allow_no_orientation, keep, labels_given=True, reference=None,
                 reference_labels=(1,), withheld=None, structure=None, output_type="nifti",
                 dicom=(), series=None):
    t0 = time.perf_counter()
    if series is None and image is not None and Path(image).is_dir():
        # a DICOM mask names the series it was made on: that one of a folder of several
        series = series_named_by(mask_path, image)
    # (a NIfTI mask's reader info: the transforms the refined label keeps)
    mvol, img, mask_transforms, img_info = _mask_and_image(mask_path, image, structure,
                                                           allow_no_orientation, series)
    if dicom:       # refused before the fit: a mask off the scan's lattice
        on_scan(np.zeros(mvol.array.shape, np.uint8), mvol, img, dicom[0])
    ref_others, ref_filled = [], {}
    ref = reference_mask(reference, reference_labels, mvol, "mask", allow_no_orientation,
                         ref_others, None if image is None else (image, series), ref_filled)
    res = refine_paired(mvol, model, labels, params, img, keep=keep) or \
        refine_mask(mvol, model, labels, params, img, keep=keep)
    label = res.label.astype(np.uint8)
    paired = isinstance(res, PairedRefineResult)
    fits = res.fits if paired else {None: res.fit}
    report = {
        **(_paired_block(res) if paired else _fit_block(res)),
        "input": {"mask": withheld or display_name(mask_path),
                  "labels": [int(v) for v in labels],
                  "keep_labels": [int(v) for v in keep],
                  "image": None if image is None else
                  "(withheld)" if withheld else display_name(image),
                  **({"series": img_info["series_key"]}
                     if "series_key" in img_info and not withheld else {}),
                  "shape_zyx": list(mvol.array.shape), "spacing_mm": mvol.spacing.tolist(),
                  "origin_mm": mvol.origin.tolist(), "direction": mvol.direction.ravel().tolist(),
                  "coordinates": "LPS"},
        "model": {"organ": model.metadata.get("organ"), "n_shapes": int(model.shapes.shape[0]),
                  "n_vertices": model.n_vertices, "version": model_version(model)},
        "prior": prior_record(model, params),
        "time_s": round(time.perf_counter() - t0, 3),
        "warnings": [],
    }
    if note := side_note(model, params):
        report["warnings"].append(note)
    if note := readers_part(mask_transforms, "mask"):
        report["warnings"].append(note)
    others = other_labels(mvol.array, tuple(labels) + tuple(keep))
    report["input"]["other_labels"] = len(others)
    if others and not labels_given:
        organ = model.metadata.get("organ", "organ")
        report["warnings"].append(
            f"the mask holds {len(others)} other label{'s' * (len(others) > 1)} "
            f"({label_list(others)}) besides the one{'s' * (len(labels) > 1)} refined "
            f"({label_list(labels)}, the default); the model's organ is the {organ}: if "
            "that is another label, name it with --labels")
    absent = [int(v) for v in keep if not np.any(mvol.array == v)]
    if absent:
        report["warnings"].append(
            f"--keep-labels {label_list(absent)}: no voxel of the mask has "
            f"{'this label' if len(absent) == 1 else 'these labels'} (a mistyped label "
            "leaves the lesion it should keep to be cut as a leak)")
    bg = img if img is not None and img.same_grid(mvol) else mvol
    organ_in = np.isin(mvol.array, tuple(labels) + keep)
    if ref is not None:
        report["reference"] = refine_reference(label > 0, organ_in, ref, mvol.spacing,
                                               reference_labels)
        note_structures(report, reference_labels, ref_filled)
        note_reference(report, ref, ref_others)
    with background(qc_png, out.file("qc.png"), bg, label, organ_in,
                    title=f"refined {model.metadata.get('organ', 'organ')} "
                          "(red dashed: input mask)",
                    verts=np.concatenate([f.verts for f in fits.values()]),
                    outliers=np.concatenate([f.overridden for f in fits.values()])):
        if "nifti" in output_kinds(output_type):
            write_label(mvol, label, out.file("label.nii.gz"),
                        code=mask_transforms.get("xform_code") or 1,
                        description=label_description(report["status"], model, refined=True),
                        qform=mask_transforms.get("other_qform"))
        for kind in dicom:
            report[kind.replace("-", "_")] = _write_dicom(out, kind, res, mvol, img, image,
                                                          img_info, model, params, report)
        write_mesh(out.file(f"mesh.{mesh_format}"), fits, model)
        out.write_json("report.json", report)
        if paired:
            stats = {"status": report["status"], "sides": {
                side: statistics(replace(r.fit, label=r.label), model, mvol.spacing)
                for side, r in res.sides.items() if r is not None}}
        else:
            stats = statistics(replace(res.fit, label=label), model, mvol.spacing)
        out.write_json("statistics.json", stats)
        files = refine_inputs(mask_path, image, model_path, withheld is not None)
        compared = {}
        if reference is not None:
            files["reference"] = Path(reference)
            compared = {"reference_labels": report["reference"]["labels"]}
        shown = None
        if withheld is not None:
            shown = {k: k for k in files}
            shown["model"] = display_name(model_path)
        out.write_json("manifest.json", manifest(
            command="refine", parameters={"argv": argv, **refine_record(params, labels, keep),
                                          **compared},
            seed=None, inputs=files, input_paths=shown))
    out.commit()
    return report


def _write_dicom(out, kind, res, mask, scan, source, info, model, params, report):
    """The refined label as the DICOM output ``kind`` on the slices of ``scan`` (read
    from ``source`` with reader ``info``): one segment per side of a paired organ
    (a side kept as given is the rest of the label), else the organ with its side.
    The report's record; a refined voxel outside the scan is noted in its warnings."""
    if isinstance(res, PairedRefineResult):
        refined = {side: r.label > 0 for side, r in res.sides.items() if r is not None}
        rest = (res.label > 0) & ~np.any(list(refined.values()), axis=0)
        parts = {side: refined.get(side, rest) for side in res.sides}
        parts = {side: part for side, part in parts.items() if part.any()}
        label, side = [on_scan(p, mask, scan, kind) for p in parts.values()], list(parts)
        kept = sum(int(np.count_nonzero(p)) for p in label)
    else:
        label = on_scan(res.label > 0, mask, scan, kind)
        side = fitted_side(res.fit, model, params)
        kept = int(np.count_nonzero(label))
    status = report["status"]
    lost = int(np.count_nonzero(res.label)) - kept
    if lost and status != "failed":
        report["warnings"].append(f"{lost} voxels of the refined label lie outside the scan "
                                  f"and are not in {OUTPUT_FILES[kind]}")
    return write_dicom_label(out, kind, label, side, scan, source, info, model, status,
                             refined=True)


__all__ = ["refine_case", "refine_inputs", "refine_record", "refine_output_names"]
