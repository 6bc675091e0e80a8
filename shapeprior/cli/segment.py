"""``shapeprior segment``: segment an organ in an image, a DICOM series or a folder of cases."""

from __future__ import annotations

import sys

from ._common import (
    Parser,
    add_allow_no_orientation,
    add_batch_options,
    add_mesh_format,
    add_prior,
    add_reference_structure,
    check_selection_kinds,
    finish_case,
    floats,
    join_negative_values,
    organ_selection,
    print_batch,
    print_case,
    refuse_unused,
    segment_params,
    status_code,
)


def main(argv):
    """Segment an organ in a NIfTI/NRRD/MHA file, a DICOM series or a folder of cases."""
    ap = Parser(
        prog="shapeprior segment",
        description="Segment an organ with an SSC shape model. INPUT: a NIfTI/NRRD/MHA file, "
                    "a DICOM series folder, or a folder of such cases. Without --seed the "
                    "organ is searched for in the whole field of view.",
        epilog="Every case gets a status: ok, suspect or failed (organ not found, cut by the "
               "field of view, leak, implausible shape), with its reasons in report.json. "
               "Exit codes: 0 ok (suspect too, unless --strict); 1 bad input or an error; 3 a "
               "failed result (or a suspect one with --strict); 130/143 interrupted.")
    ap.add_argument("input", help="an image file (NIfTI/NRRD/MHA, or one enhanced multi-frame "
                    "DICOM file), a DICOM series folder (or a folder whose one series lies "
                    "deeper: a CD export's DICOM/PA0/ST0/SE0/), or a folder of cases: image "
                    "files, DICOM folders (each case's series may lie deeper, as in a TCIA "
                    "download's patient/study/series/), or with --image-name case folders")
    ap.add_argument("-o", "--output", required=True,
                    help="output folder (one subfolder per case for a folder of cases)")
    ap.add_argument("--model", required=True, help="model file from build-model")
    ap.add_argument("--series", default=None, help="DICOM series index or key (see errors)")
    ap.add_argument("--seed", default=None,
                    help="organ centre x,y,z: mm in LPS (default) or RAS, or voxel indices "
                         "i,j,k (see --seed-space); negative numbers work: --seed -64.4,-12,8")
    ap.add_argument("--seed-space", choices=("lps", "ras", "voxel"), default=None,
                    help="coordinates of --seed: lps (ITK/DICOM), ras (3D Slicer/nibabel) or "
                         "voxel (i,j,k); default lps")
    ap.add_argument("--side", choices=("none", "left", "right", "both"), default="none",
                    help="side of a paired organ (model built with mirrored right sides). "
                         "none (default): both sides fitted, the better kept; both: both "
                         "kept, in one label and one mesh (point data side: 1 left, 2 "
                         "right), each side's status in the report (a side not found is "
                         "left out of the label, and the result is suspect)")
    ap.add_argument("--reference", default=None,
                    help="reference label map for Dice/distances, on the image's grid (or a "
                         "crop or extension of it, the same voxels), or an RT Structure Set "
                         "drawn on the scan (see --reference-structure); or a folder of label "
                         "maps named like the cases (images/x.nii.gz takes "
                         "labels/x.nii.gz, nnU-Net's x_0000.nii.gz takes x.nii.gz): every "
                         "row and the summary get Dice, mean and 95%% surface distances, "
                         "mean, median and the worst case")
    ap.add_argument("--reference-labels", default=None,
                    help="labels of the organ in --reference (default: the labels the model "
                         "was built from, e.g. 1,2 for hippocampus head and body)")
    add_reference_structure(ap)
    ap.add_argument("--image-name", default=None, metavar="NAME",
                    help="INPUT is a folder of case folders, each holding its scan as NAME, a "
                         "file or a DICOM series folder (KiTS19: --image-name imaging.nii.gz; "
                         "a pattern such as '*_ct.nii.gz' takes each folder's one match); "
                         "cases take the case folders' names")
    ap.add_argument("--reference-name", default=None, metavar="NAME",
                    help="with --image-name: each case's reference label map (or RT "
                         "Structure Set) is NAME in its folder or its segmentations/ (KiTS19: "
                         "--reference-name segmentation.nii.gz; or a pattern), or with "
                         "--reference FOLDER, in FOLDER/<case folder>/")
    ap.add_argument("--method", choices=("l1", "l0"), default="l1")
    add_mesh_format(ap)
    ap.add_argument("--output-type", default="nifti", metavar="TYPE[,TYPE]",
                    help="the label as label.nii.gz (nifti, the default), as a DICOM-SEG "
                         "seg.dcm (dicom-seg), as an RT Structure Set rtstruct.dcm for a "
                         "planning system (rtstruct: the outlines on each slice), or both "
                         "(nifti,dicom-seg); join several with commas. The DICOM ones refer "
                         "to the input series (DICOM input only) and keep its patient and "
                         "study identifiers")
    ap.add_argument("--no-qc", action="store_true",
                    help="do not render qc.png (saves about a second per whole CT)")
    ap.add_argument("--normalisation", choices=("percentile", "ct"), default=None,
                    help="intensity scale (default: the model's, or 'ct' without appearance)")
    ap.add_argument("--dark-organ", action="store_true",
                    help="edge fallback: the organ is darker than its surroundings")
    ap.add_argument("--window", default=None,
                    help="edge fallback: intensity window lo,hi inside the organ (normalised "
                         "units; CT: HU/1000, default for CT -0.05,0.25: soft tissue)")
    add_batch_options(ap)
    ap.add_argument("--backend", choices=("auto", "numpy", "numba", "cupy"), default=None,
                    help="where image smoothing and sampling run (default: $SHAPEPRIOR_BACKEND "
                         "or auto = numba; cupy needs the 'gpu' extra and an NVIDIA GPU)")
    ap.add_argument("--force", action="store_true",
                    help="replace previous shapeprior outputs (never an input or a foreign "
                         "file); a folder of cases resumes without it")
    ap.add_argument("--deidentify", action="store_true",
                    help="replace case names by salted hashes in every output, report, "
                         "summary, message and folder name (salt: $SHAPEPRIOR_DEID_SALT or "
                         "~/.config/shapeprior/deid-salt)")
    add_allow_no_orientation(ap)
    ap.add_argument("--strict", action="store_true",
                    help="exit 3 for a 'suspect' result too (default: only for 'failed')")
    ap.add_argument("--placement", choices=("search", "prior"), default=None,
                    help="without --seed: search the whole field of view (default) or start "
                         "at the training position relative to the FOV centre")
    ap.add_argument("--init-mask", default=None,
                    help="single case: an existing label map (e.g. another tool's) or an RT "
                         "Structure Set drawn on the scan (its contours filled on the scan's "
                         "grid) whose refined surface starts the fit instead of the placement "
                         "search (one holding both sides of a paired organ: the --side given, "
                         "or with --side both each side from its own part)")
    ap.add_argument("--init-labels", default=None,
                    help="labels of the organ in a label map --init-mask (default: the labels "
                         "the model was built from)")
    ap.add_argument("--init-structure", action="append", default=None, metavar="NAME",
                    help="the structure of an RT Structure Set --init-mask: its ROI name (case, "
                         "spaces, underscores and hyphens aside) or #N, alternatives joined by "
                         "|; repeat for several (both kidneys with --side both). Default: its "
                         "one structure with contours")
    ap.add_argument("--hypotheses", type=int, default=None,
                    help="placements fitted before the best one continues (default 5): "
                         "without --seed, the best of the field of view's; with --seed or "
                         "--init-mask, the start itself and positions near it")
    ap.add_argument("--surface-offset", type=float, default=None, metavar="MM",
                    help="move the final surface this far outward along its normals before "
                         "voxelising (negative: inward; default: the model's calibration, "
                         "see model-info)")
    ap.add_argument("--no-voxel-refine", action="store_true",
                    help="keep the voxelised surface as the label: do not decide the voxels "
                         "next to it with the model's voxel classifier (models built with "
                         "--images have one)")
    add_prior(ap)
    a = ap.parse_args(join_negative_values(argv, ("--seed", "--window", "--surface-offset")))

    from pathlib import Path

    from ..pipeline import output_kinds

    try:
        output_kinds(a.output_type)
    except ValueError as exc:
        ap.error(str(exc))

    from ..model import load_model
    from ..pipeline import Deidentifier, discover_cases, run_case, scrub
    placed = "--seed" if a.seed else "--init-mask" if a.init_mask else None
    refuse_unused(
        (a.reference_labels is not None and not (a.reference or a.reference_name),
         "--reference-labels has no effect without --reference"),
        (a.reference_name is not None and a.image_name is None,
         "--reference-name names the reference in each case folder; give --image-name (INPUT "
         "a folder of case folders)"),
        (a.reference_name is not None and a.reference_name == a.image_name,
         "--reference-name and --image-name name the same file"),
        (a.init_labels is not None and not a.init_mask,
         "--init-labels has no effect without --init-mask"),
        (a.seed_space is not None and not a.seed, "--seed-space has no effect without --seed"),
        (a.seed and a.init_mask, "--seed and --init-mask both place the fit: give one"),
        (a.seed and a.side == "both", "--seed places one organ; --side both fits two: leave it "
         "out (each side is searched for on its own side of the body) or give --init-mask"),
        (a.placement is not None and placed,
         f"--placement has no effect with {placed} (it places the fit)"),
        (a.hypotheses is not None and a.placement == "prior",
         "--hypotheses has no effect with --placement prior (one placement is fitted)"),
        (a.series is not None and Path(a.input).is_file(),
         "--series picks a series in a DICOM folder; the input is a file"))
    model = load_model(a.model)
    params = segment_params(method=a.method, side=a.side,
                            seed_mm=floats(a.seed, 3, "--seed") if a.seed else None,
                            seed_space=a.seed_space or "lps",
                            inside_brighter=not a.dark_organ,
                            window=floats(a.window, 2, "--window") if a.window else None,
                            normalisation=a.normalisation, backend=a.backend,
                            n_hypotheses=5 if a.hypotheses is None else a.hypotheses,
                            placement=a.placement or "search", prior=a.prior,
                            surface_offset_mm=a.surface_offset,
                            voxel_refine=not a.no_voxel_refine)
    from ..backend import resolve_backend
    from ..segmentation import check_paired, check_window

    check_window(model, params)                        # before any case is read
    if params.side == "both":
        check_paired(model, "--side both")
    params.backend = resolve_backend(params.backend)   # fail early, and record it resolved
    cases = discover_cases(a.input, image_name=a.image_name, deidentify=a.deidentify)
    deid = Deidentifier() if a.deidentify else None
    if deid is not None:
        from ..pipeline import scrub_argv

        cases = deid.apply(cases)
        argv = scrub_argv(argv, {a.input: "<input>", a.output: "<output>",
                                 a.reference: "<reference>"})
    dic = model.prior_dictionary(params.prior)
    ref_labels = organ_selection(a, model)
    init_labels = organ_selection(a, model, "init")
    check_selection_kinds(a, [a.init_mask], "init")
    single = Path(a.input).is_file() or (len(cases) == 1 and cases[0].path == Path(a.input))
    if single:
        refuse_unused((a.workers or a.scheduler is not None,
                       "--workers and --scheduler run a folder of cases; the input is one case"))
        c = cases[0]
        reference = _single_reference(a.reference, c, a.deidentify)
        check_selection_kinds(a, [reference])
        try:
            rep = run_case(c.path, a.output, model, a.model, params, series=a.series,
                           reference=reference,
                           reference_labels=ref_labels,
                           mesh_format=a.mesh_format, force=a.force, dictionary=dic, argv=argv,
                           case_name=c.name, deidentify=a.deidentify,
                           allow_no_orientation=a.allow_no_orientation, init_mask=a.init_mask,
                           init_labels=init_labels,
                           output_type=a.output_type, qc=not a.no_qc)
        except (ValueError, OSError) as exc:
            if deid is not None:
                raise type(exc)(scrub(str(exc), c.path, c.name)) from None
            raise
        print_case(c.name, rep)
        return finish_case(c.name, rep, a.output, a.strict)
    if a.init_mask:
        raise ValueError("--init-mask applies to a single case, not a folder of cases")
    from ..pipeline import match_references, run_batch, write_summary

    refs = None
    if a.reference_name is not None:
        from ..pipeline import match_in_case_folders

        refs = match_in_case_folders(cases, a.reference_name, "--reference-name", a.reference)
    elif a.reference:
        if Path(a.reference).resolve() == Path(a.input).resolve():
            raise ValueError("--reference names the folder of the cases themselves; it names "
                             "the folder of their label maps")
        refs = match_references(cases, a.reference, deidentify=a.deidentify)
    check_selection_kinds(a, refs or ())
    root = Path(a.output)
    summary = run_batch(cases, root, a.model, params, series=a.series,
                        mesh_format=a.mesh_format, force=a.force, workers=a.workers,
                        scheduler=a.scheduler, argv=argv, deidentify=a.deidentify,
                        allow_no_orientation=a.allow_no_orientation,
                        inputs=[a.input] + ([a.reference] if a.reference else []),
                        progress=sys.stderr.isatty(), output_type=a.output_type,
                        qc=not a.no_qc, references=refs, reference_labels=ref_labels)
    n_refs = None if refs is None else sum(r is not None for r in refs)
    print_batch(summary, len(cases), root, write_summary(root, summary, len(cases), n_refs))
    errors = sum("error" in r for r in summary)
    return 1 if errors else status_code([r.get("result", r["status"]) for r in summary],
                                        a.strict)


def _single_reference(reference, case, deidentify):
    """One case's ``--reference``: the file given, or in a folder given, the label
    map named like the case (:func:`~shapeprior.pipeline.match_references`)."""
    from pathlib import Path

    if reference is None or not Path(reference).is_dir():
        return reference
    from ..pipeline import match_references

    return match_references([case], reference, deidentify)[0]

