"""A folder of masks refined as one run: each mask (with its image and its
reference when given) into ``OUTDIR/<case>``, resumable as a segmentation
batch is (:func:`~._batch.folder_state`), failures isolated, one summary."""

from __future__ import annotations

import contextlib
from pathlib import Path

from .._interrupt import reraise_interruption
from .._outputs import make_dirs, remove_created
from ._batch import (_model, check_root, dispatch, failed_row, folder_state, kept_row,
                     reference_fields, rescore_row, with_redo_note)


def refine_fields(rep):
    """A refinement batch's row fields from a case's report: status, quality,
    the input and refined volumes (``volume_ml``: refined), what was removed
    and added, iterations, time, reasons, and against a reference the refined
    label's Dice and distances beside the input mask's Dice (``input_dice``)."""
    c = rep["corrections"]
    row = {"status": rep["status"], "quality": rep["quality"], "input_ml": c["input_ml"],
           "volume_ml": c["refined_ml"], "removed_ml": c["removed_ml"],
           "added_ml": c["added_ml"], "iterations": rep["iterations"], "time_s": rep["time_s"]}
    if rep.get("reasons"):
        row["reasons"] = rep["reasons"]
    ref = reference_fields(rep)
    if "dice" in ref:                   # compared: the input mask's Dice beside it
        row["input_dice"] = rep["reference"]["input"]["dice"]
    row.update(ref)
    return row


def refine_one(case, outdir, model_path, params, labels, keep, image, reference,
               reference_labels, mesh_format, force, argv, allow_no_orientation, redo,
               one_thread=False, deidentify=False, output_type="nifti", series=None):
    """Refine one mask; never raises (returns a summary row, whose error names
    no input file with ``deidentify``)."""
    from ..backend import single_threaded
    from ..io import names_withheld
    from ._refine import refine_case

    try:
        model, _ = _model(model_path, params.prior)
        with single_threaded() if one_thread else contextlib.nullcontext(), \
                names_withheld(deidentify):
            rep = refine_case(case.path, outdir, model, model_path, params, labels=labels,
                              image=image, mesh_format=mesh_format, force=force or redo,
                              argv=argv, allow_no_orientation=allow_no_orientation, keep=keep,
                              reference=reference, reference_labels=reference_labels,
                              deidentify=deidentify, case_name=case.name,
                              output_type=output_type, series=series)
        return with_redo_note({"case": case.name, **refine_fields(rep)}, redo)
    except Exception as exc:  # noqa: BLE001 - one bad case must not stop the batch
        reraise_interruption(exc)   # Ctrl-C or SIGTERM does
        return failed_row(case, exc, deidentify, reference, image)


def run_refine_batch(cases, root, model_path, params, *, labels=(1,), keep=(), images=None,
                     references=None, reference_labels=(1,), mesh_format="vtk", force=False,
                     workers=0, scheduler=None, progress=True, argv=None,
                     allow_no_orientation=False, inputs=(), deidentify=False,
                     output_type="nifti", series=None):
    """Refine the masks ``cases`` (``[Case]``, :func:`~._cases.discover_masks`)
    into ``root``; returns summary rows, one per case, in the cases' order.

    ``images`` and ``references``: one path (or None) per case
    (:func:`~._cases.match_images`, :func:`~._cases.match_references`). A mask
    given an image folder but no image of its own fails (its row says so)
    rather than being refined without one. A case whose outputs are complete
    for the same mask, image, model, reference and parameters is kept (status
    ``skipped``, ``result`` the status it had); ``force`` redoes it. ``workers``
    and ``scheduler`` as in :func:`~._batch.run_batch`; ``inputs``: paths
    ``root`` may not overlap (the masks' folder, the images', the references').
    ``deidentify``: the cases' names are hashes (:meth:`~._cases.Deidentifier.apply`)
    and no input's file name reaches an output or a row. ``output_type``: each
    case's label outputs (:func:`~._refine.refine_case`); ``series``: which series
    of each image folder that holds several (as segment's batch takes it).
    """
    from ._refine import refine_inputs, refine_output_names, refine_record

    root = Path(root)
    n = len(cases)
    imgs = list(images) if images is not None else [None] * n
    refs = list(references) if references is not None else [None] * n
    if len(imgs) != n or len(refs) != n:
        raise ValueError(f"images/references: {len(imgs)}/{len(refs)} for {n} cases")
    labels, keep, reference_labels = tuple(labels), tuple(keep), tuple(reference_labels)
    check_root(root, [*inputs, model_path, *(c.path for c in cases if c.error is None),
                      *imgs, *refs])
    created = make_dirs(root)
    rows, todo = [], []
    record = refine_record(params, labels, keep)
    try:
        for c, img, ref in zip(cases, imgs, refs):
            if c.error is not None:
                rows.append(failed_row(c, c.error, deidentify))
                continue
            if images is not None and img is None:
                rows.append({"case": c.name, "status": "failed",
                             "error": "no image named like it in the --image folder"})
                continue
            folder = root / c.name
            try:
                files = refine_inputs(c.path, img, model_path, deidentify)
                state, why = folder_state(folder, files, record,
                                          refine_output_names(mesh_format, output_type), ref,
                                          reference_labels, done="refined", what="refinement")
            except OSError as exc:      # gone or unreadable since it was found: this row
                rows.append(failed_row(c, exc, deidentify, ref, img))
                continue
            if state == "foreign":
                rows.append({"case": c.name, "status": "failed", "error": why})
            elif state == "complete" and not force:
                rows.append(kept_row(c, folder, compared=ref is not None, fields=refine_fields))
            elif state == "rescore" and not force:
                rows.append(rescore_row(c, folder, why, ref, reference_labels, deidentify,
                                        allow_no_orientation, mask=c.path,
                                        fields=refine_fields,
                                        scan=None if img is None else (img, series)))
            else:
                todo.append((c, img, ref, state in ("stale", "rescore") and why))
    except BaseException:
        remove_created(created)
        raise
    parallel = bool(workers) or scheduler is not None
    args = [(c, root / c.name, model_path, params, labels, keep, img, ref, reference_labels,
             mesh_format, force, argv, allow_no_orientation, redo or None, parallel,
             deidentify, output_type, series)
            for c, img, ref, redo in todo]
    rows += dispatch(refine_one, args, workers, scheduler, progress)
    order = {c.name: i for i, c in enumerate(cases)}
    return sorted(rows, key=lambda r: order[r["case"]])


__all__ = ["run_refine_batch", "refine_one", "refine_fields"]
