"""``shapeprior refine``: refine an existing label map with the shape prior."""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import (Parser, add_allow_no_orientation, add_batch_options, add_mesh_format,
                      add_prior, add_reference_structure, check_selection_kinds, finish_case,
                      floats, join_negative_values, organ_selection, parse_labels, print_batch,
                      print_reasons, refuse_unused, segment_params, status_code)


def main(argv):
    """Refine an existing label map (any tool's) with the shape prior: leaks, holes, islands."""
    ap = Parser(
        prog="shapeprior refine",
        description="Fit the SSC shape model to an existing segmentation (TotalSegmentator, "
                    "nnU-Net, a rough manual mask) so that leaks, holes, missing or duplicated "
                    "slices and islands land in the gross-error term, and an end where the "
                    "mask stops flat short of its organ is completed by the fitted shape "
                    "(reported, suspect); optionally continue "
                    "against the image. Writes the refined label on the mask's grid, the mesh "
                    "(point data: gross_error_mm, overridden, confidence; LPS mm) and a report "
                    "of the regions removed and added. Given a folder of masks (a network's "
                    "predictions), refines each into OUTPUT/<mask name>/ and writes "
                    "summary.json and summary.csv; a rerun keeps the masks already refined "
                    "with the same inputs and parameters.",
        epilog="Exit codes: 0 ok (suspect too, unless --strict); 1 bad input or an error (in a "
               "folder: any mask that could not be refined); 3 a failed result (or a suspect "
               "one with --strict).")
    ap.add_argument("mask", help="label map (NIfTI/NRRD/MHA, or a DICOM-SEG file: its "
                                 "segment numbers are the labels), an RT Structure Set file "
                                 "(with --image, the scan it was drawn on; --structure), or a "
                                 "folder of label maps (one mask per case)")
    ap.add_argument("-o", "--output", required=True, help="output folder")
    ap.add_argument("--model", required=True, help="model file from build-model")
    ap.add_argument("--structure", default=None, metavar="NAME",
                    help="MASK an RT Structure Set: the structure to refine, by ROI name "
                         "(case, spaces, underscores and hyphens aside), #N, or alternatives "
                         "A|B (default: its one structure with contours); filled on the grid "
                         "of --image")
    ap.add_argument("--labels", default=None,
                    help="labels of the organ in MASK (default: the labels the model was "
                         "built from, e.g. 1,2 for hippocampus head and body, less any "
                         "--keep-labels)")
    ap.add_argument("--keep-labels", default=None, metavar="L[,L...]",
                    help="labels in MASK that are part of the organ but never removed, kept "
                         "with their own value: a lesion the model does not know (KiTS: "
                         "--labels 1 --keep-labels 2 keeps the tumour); in missing or "
                         "copied slices they are interpolated as the organ is")
    ap.add_argument("--image", default=None,
                    help="the scan (file or DICOM folder): continue the fit against it, "
                         "fill the mask's enclosed holes that have the organ's own intensity "
                         "(a cavity that differs, such as sinus fat, is kept), and remove a "
                         "run of identical slices the scan shows to be inserted rather than "
                         "copied (the displaced side of the organ moved back). With a folder "
                         "of masks: a folder of scans named like the masks (x.nii.gz takes "
                         "x.nii.gz, nnU-Net's x_0000.nii.gz or a DICOM folder x/)")
    ap.add_argument("--series", default=None,
                    help="which series of an --image folder that holds several (index or "
                         "key, as the error that lists them says)")
    ap.add_argument("--mask-name", default=None, metavar="NAME",
                    help="MASK is a folder of case folders, each holding its mask as NAME "
                         "(in it or in its segmentations/, as TotalSegmentator writes a case: "
                         "--mask-name kidney_left.nii.gz; a pattern such as '*_seg.nii.gz' "
                         "takes each folder's one match); cases, scans and references take "
                         "the case folders' names")
    ap.add_argument("--image-name", default=None, metavar="NAME",
                    help="with --mask-name: each case's scan is NAME in its folder, a file or "
                         "a DICOM series folder (TotalSegmentator's data set: --image-name "
                         "ct.nii.gz; or a pattern), or with --image FOLDER, in "
                         "FOLDER/<case folder>/")
    ap.add_argument("--reference-name", default=None, metavar="NAME",
                    help="with --mask-name: each case's reference label map (or RT "
                         "Structure Set) is NAME (or a "
                         "pattern's one match) in its folder or its segmentations/, or with "
                         "--reference FOLDER, in FOLDER/<case folder>/")
    ap.add_argument("--reference", default=None,
                    help="reference label map on the mask's grid (or a crop or extension of "
                         "it, the same voxels), or an RT Structure Set drawn on that grid's "
                         "scan (see --reference-structure): the report gets Dice and "
                         "surface distances of the refined label and of the mask as given; "
                         "with a folder of masks, a folder of label maps named like them (the "
                         "summary: mean, median and the worst case, before and after)")
    ap.add_argument("--reference-labels", default=None,
                    help="labels of the organ in --reference (default: the labels the model "
                         "was built from)")
    add_reference_structure(ap)
    ap.add_argument("--side", choices=("none", "left", "right"), default="none",
                    help="side of a paired organ (default: from the mask's position). A "
                         "mask holding both sides (a KiTS-style map: both kidneys under one "
                         "label) is split at the patient's midline and each side refined with "
                         "its own shape; with left or right only that side is refined and the "
                         "other kept as given")
    ap.add_argument("--window", default=None,
                    help="with --image and a model without appearance: intensity window lo,hi "
                         "inside the organ (normalised units; CT: HU/1000, default -0.05,0.25: "
                         "soft tissue)")
    ap.add_argument("--method", choices=("l1", "l0"), default="l1")
    add_mesh_format(ap)
    ap.add_argument("--output-type", default="nifti", metavar="TYPE[,TYPE]",
                    help="the refined label as label.nii.gz on the mask's grid (nifti, the "
                         "default), as a DICOM-SEG seg.dcm (dicom-seg) or an RT Structure "
                         "Set rtstruct.dcm (rtstruct) on the slices of --image, or both "
                         "(nifti,dicom-seg); join several with commas. The DICOM ones need "
                         "--image a DICOM series (the mask on its grid or a crop of it, as a "
                         "SEG of that series is), refer to it and keep its patient and study "
                         "identifiers; a failed refinement writes neither")
    ap.add_argument("--force", action="store_true",
                    help="replace a previous shapeprior output (never an input or a foreign file)")
    ap.add_argument("--strict", action="store_true", help="exit 3 for a 'suspect' result too")
    ap.add_argument("--deidentify", action="store_true",
                    help="replace mask names by salted hashes in every output, report, "
                         "summary, message and folder name (salt: $SHAPEPRIOR_DEID_SALT or "
                         "~/.config/shapeprior/deid-salt), as segment does")
    add_batch_options(ap)
    add_allow_no_orientation(ap)
    add_prior(ap)
    a = ap.parse_args(join_negative_values(argv, ("--window",)))

    from ..model import load_model, organ_labels
    from ..pipeline import DICOM_KEEPS_IDENTIFIERS, output_kinds, refine_case

    try:
        dicom = [k for k in output_kinds(a.output_type) if k != "nifti"]
    except ValueError as exc:
        ap.error(str(exc))
    if dicom:
        refuse_unused((not (a.image or a.image_name),
                       f"--output-type {dicom[0]} writes the refined label on the slices of "
                       "--image: give the DICOM series the mask lies on"),
                      (a.deidentify, f"--output-type {dicom[0]} {DICOM_KEEPS_IDENTIFIERS}"))
    from ..segmentation import check_window

    refuse_unused((a.window and not (a.image or a.image_name),
                   "--window has no effect without --image"),
                  (a.series is not None and not (a.image or a.image_name),
                   "--series picks a series of the --image folder; no --image was given"),
                  (a.series is not None and a.image is not None and Path(a.image).is_file()
                   and a.image_name is None,
                   "--series picks a series in a DICOM folder; --image is a file"),
                  (a.reference_labels and not (a.reference or a.reference_name),
                   "--reference-labels has no effect without --reference"),
                  *((getattr(a, opt) is not None and a.mask_name is None,
                     f"--{opt.replace('_', '-')} names a file in each case folder; give "
                     "--mask-name (MASK a folder of case folders)")
                    for opt in ("image_name", "reference_name")),
                  *((getattr(a, opt) is not None and getattr(a, opt) == a.mask_name,
                     f"--{opt.replace('_', '-')} and --mask-name name the same file")
                    for opt in ("image_name", "reference_name")))
    model = load_model(a.model)
    keep = parse_labels(a.keep_labels, "--keep-labels") if a.keep_labels else ()
    if a.labels is not None:
        labels = parse_labels(a.labels, "--labels")
    else:   # the model's, a label kept aside left out (KiTS: --keep-labels 2 alone)
        labels = organ_labels(model, keep)
    params = segment_params(method=a.method, side=a.side, prior=a.prior,
                            window=floats(a.window, 2, "--window") if a.window else None)
    check_window(model, params)
    ref_labels = organ_selection(a, model)
    deid = None
    if a.deidentify:
        from ..pipeline import Deidentifier, scrub_argv

        deid = Deidentifier()
        argv = scrub_argv(argv, {a.mask: "<mask>", a.image: "<image>",
                                 a.reference: "<reference>", a.output: "<output>"})
    if Path(a.mask).is_dir():
        refuse_unused((a.structure is not None, "--structure names a structure of one RT "
                                                "Structure Set given as MASK; MASK is a folder"))
        return _refine_folder(a, argv, model, params, labels, keep, ref_labels, deid)
    refuse_unused((a.workers or a.scheduler is not None,
                   "--workers and --scheduler refine a folder of masks; MASK is one file"),
                  (a.structure is not None and a.labels is not None,
                   "--labels names labels of a label map; a structure set's structure is "
                   "--structure"),
                  (a.mask_name is not None, "--mask-name names the mask in each case folder "
                                            "of a folder; MASK is one file"))
    if a.reference is not None and Path(a.reference).is_dir():
        raise ValueError("--reference is a folder; with one mask it names one label map")
    check_selection_kinds(a, [a.reference])
    try:
        rep = refine_case(a.mask, a.output, model, a.model, params, labels=labels,
                          image=a.image, mesh_format=a.mesh_format, force=a.force, argv=argv,
                          allow_no_orientation=a.allow_no_orientation, keep=keep,
                          labels_given=a.labels is not None, reference=a.reference,
                          reference_labels=ref_labels, deidentify=deid is not None,
                          case_name=deid.name(Path(a.mask)) if deid else None,
                          structure=a.structure, output_type=a.output_type,
                          series=a.series)
    except (ValueError, OSError) as exc:
        if deid is None:
            raise
        from ..pipeline import scrub_paths

        raise type(exc)(scrub_paths(str(exc), ((a.mask, deid.name(Path(a.mask))),
                                               (a.image, "(withheld image)"),
                                               (a.reference, "(withheld reference)")))) \
            from None
    c = rep["corrections"]
    print(f"{rep['input']['mask']}: {rep['status']} (quality {rep['quality']:.2f}); "
          f"{c['input_ml']:.1f} ml -> {c['refined_ml']:.1f} ml: removed {c['removed_ml']:.1f} ml, "
          f"added {c['added_ml']:.1f} ml in {len(c['regions'])} regions")
    if "paired" in rep:
        pr = rep["paired"]
        print("  both sides of the paired organ: " + ", ".join(
            f"{s} {ml:.1f} ml {'refined' if s in pr['refined'] else 'kept as given'}"
            for s, ml in pr["input_ml"].items()))
    print_reasons(rep)
    for w in rep["warnings"]:
        print(f"  note: {w}")
    if "reference" in rep and not rep["reference"].get("empty"):
        r = rep["reference"]
        print(f"  against the reference: Dice {r['input']['dice']:.3f} -> {r['dice']:.3f}, "
              f"mean surface distance {r['input']['assd_mm']:.2f} -> {r['assd_mm']:.2f} mm")
    return finish_case(rep["input"]["mask"], rep, a.output, a.strict)


def _refine_folder(a, argv, model, params, labels, keep, ref_labels, deid=None):
    """MASK is a folder: each of its label maps is a case, refined into
    OUTPUT/<case>/, with a summary; exit 1 when any could not be refined."""
    from ..pipeline import (discover_masks, match_images, match_in_case_folders,
                            match_references, run_refine_batch, write_summary)

    cases = discover_masks(a.mask, model.metadata.get("organ", ""), deid is not None,
                           a.mask_name)
    if deid is not None:
        cases = deid.apply(cases)
    if a.image_name is not None:
        images = match_in_case_folders(cases, a.image_name, "--image-name", a.image, scans=True)
    else:
        images = match_images(cases, a.image, deid is not None) if a.image else None
    refs = None
    if a.reference_name is not None:
        refs = match_in_case_folders(cases, a.reference_name, "--reference-name", a.reference)
    elif a.reference:
        if Path(a.reference).resolve() == Path(a.mask).resolve():
            raise ValueError("--reference names the folder of the masks themselves; it names "
                             "the folder of the reference label maps")
        refs = match_references(cases, a.reference, deidentify=deid is not None)
    check_selection_kinds(a, refs or ())
    root = Path(a.output)
    rows = run_refine_batch(cases, root, a.model, params, labels=labels, keep=keep,
                            images=images, references=refs, reference_labels=ref_labels,
                            mesh_format=a.mesh_format, force=a.force, workers=a.workers,
                            scheduler=a.scheduler, progress=sys.stderr.isatty(), argv=argv,
                            allow_no_orientation=a.allow_no_orientation,
                            inputs=[p for p in (a.mask, a.image, a.reference) if p],
                            deidentify=deid is not None, output_type=a.output_type,
                            series=a.series)
    n_refs = None if refs is None else sum(r is not None for r in refs)
    print_batch(rows, len(cases), root,
                write_summary(root, rows, len(cases), n_refs, command="refine"))
    if any("error" in r for r in rows):
        return 1
    return status_code([r.get("result", r["status"]) for r in rows], a.strict)
