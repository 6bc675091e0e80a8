"""``shapeprior build-model``: an SSC shape model from label maps."""

from __future__ import annotations

from .._outputs import manifest, show_path
from ._common import (Parser, add_case_folder_options, add_label_map_options, add_random_state,
                      note_skipped_case_folders, parse_labels, publish_model, refuse_unused)
from ._deidentify import add_deidentify, deidentified


def main(argv):
    """Build an SSC shape model from label maps (files and folders)."""
    ap = Parser(
        prog="shapeprior build-model",
        description="Build an SSC shape model from label maps (NIfTI/NRRD/MHA): files, "
                    "folders (searched recursively) or both.")
    ap.add_argument("label_maps", nargs="+", metavar="labels",
                    help="label map files or folders of them (an nnU-Net/MSD dataset "
                         "folder: label maps in labelsTr); a case is named by its path below "
                         "the folder given")
    ap.add_argument("-o", "--output", required=True, help="model file to write (.npz)")
    ap.add_argument("--labels", default="1", help="label values of the organ, e.g. 1,2 (default 1)")
    ap.add_argument("--organ", default="organ", help="organ name stored in the model")
    ap.add_argument("--split-sides", action="store_true",
                    help="paired organ under one label (KiTS kidneys): split by connected "
                         "component and side")
    ap.add_argument("--side", choices=("both", "left", "right"), default=None,
                    help="with --split-sides: keep one side's organs (default both)")
    ap.add_argument("--no-mirror", action="store_true",
                    help="keep right-side organs as they are (default: mirror onto the left)")
    ap.add_argument("--vertices", type=int, default=None,
                    help="template vertices (icosphere: 642, 2562, 10242; default by the "
                         "organ's size: 2562, or 642 for a small organ, RMS radius < 20 mm, "
                         "such as the hippocampus)")
    ap.add_argument("--iso-spacing", type=float, default=None,
                    help="surface grid, mm (default 1.5, or 0.5 for a small organ)")
    ap.add_argument("--smooth", type=float, default=None,
                    help="Gaussian smoothing, mm (default 1.5, or 0.75 for a small organ)")
    ap.add_argument("--template-shapes", type=int, default=0,
                    help="fit only this many shapes (evenly spread) in the first "
                         "correspondence pass, whose mean is the template of the second; "
                         "0 (default): every shape. 32 built the 180 KiTS maps 2.2x faster "
                         "(bench/results/build.json)")
    ap.add_argument("--atoms", type=int, default=0,
                    help="also learn a dictionary of this many atoms for --prior dictionary "
                         "(default 0: none; otherwise at least 2)")
    ap.add_argument("--nonzero", type=int, default=None,
                    help="with --atoms: K-SVD atoms per shape (default 5)")
    ap.add_argument("--dictionary-kind", choices=("deviations", "shapes"), default=None,
                    help="what the atoms code: shapes (default): atoms of the aligned "
                         "shapes (robust to displaced patches); deviations: the mean shape "
                         "and atoms of the deviations from it (closer on clean and partly "
                         "missing shapes). bench/README.md compares them")
    ap.add_argument("--images", default=None,
                    help="training images: a folder (or an nnU-Net/MSD dataset folder with "
                         "imagesTr) holding each label map's image under the same relative "
                         "path or file name, or the nnU-Net name X_0000.nii.gz for X.nii.gz. "
                         "Learns boundary appearance for segment. Every pair is checked "
                         "(present, same grid) before the slow stages")
    ap.add_argument("--normalisation", choices=("percentile", "ct"), default=None,
                    help="with --images: intensity scale for appearance, percentile (MR, "
                         "the default) or ct (HU)")
    ap.add_argument("--no-voxel-classifier", action="store_true",
                    help="with --images: do not learn the classifier that decides the voxels "
                         "next to a fitted surface (it needs scikit-learn)")
    ap.add_argument("--exclude-cut", action="store_true",
                    help="reject organs cut by their scan's field of view (reaching its "
                         "first or last slice, row or column): their surface closes at the "
                         "scan's edge. Kept by default; either way report.json lists them "
                         "under cut_by_fov")
    add_random_state(ap, dest="random_state")
    ap.add_argument("--force", action="store_true",
                    help="replace a previous shapeprior model file (never an input or a "
                         "foreign file)")
    add_case_folder_options(ap)
    add_label_map_options(ap)
    add_deidentify(ap)
    a = ap.parse_args(argv)
    refuse_unused(
        (a.side is not None and not a.split_sides, "--side has no effect without --split-sides"),
        (a.no_mirror and not a.split_sides,
         "--no-mirror has no effect without --split-sides (no organ is taken as a right one)"),
        (a.nonzero is not None and not a.atoms, "--nonzero has no effect without --atoms"),
        (a.dictionary_kind is not None and not a.atoms,
         "--dictionary-kind has no effect without --atoms"),
        (a.normalisation is not None and not (a.images or a.image_name),
         "--normalisation has no effect without --images or --image-name (it scales the "
         "training images)"),
        (a.no_voxel_classifier and not (a.images or a.image_name),
         "--no-voxel-classifier has no effect without --images or --image-name"))
    a.side, a.nonzero = a.side or "both", 5 if a.nonzero is None else a.nonzero
    a.dictionary_kind = a.dictionary_kind or "shapes"
    a.normalisation = a.normalisation or "percentile"

    from pathlib import Path

    out = Path(a.output)
    with deidentified(a.deidentify, {**{p: "<labels>" for p in a.label_maps},
                                     a.images: "<images>", out: "<output>"}) as deid:
        model, report, side_path = _build(a, out, deid)
    print(f"model: {model.shapes.shape[0]} shapes x {model.n_vertices} vertices, "
          f"{len(model.pca_variances)} PCA modes; {len(report['rejected'])} rejected "
          f"(see {show_path(side_path)}/report.json)")
    res = report.get("resolution") or {}
    if res.get("organ_size") == "small":
        print(f"note: a small organ (RMS radius {res['organ_rms_radius_mm']:.1f} mm < "
              f"{res['small_below_mm']:g}): {res['n_vertices']} template vertices, "
              f"{res['iso_spacing']:g} mm surfaces smoothed by {res['smooth_mm']:g} mm "
              "(--vertices, --iso-spacing and --smooth choose otherwise)")
    cut = report.get("cut_by_fov") or []
    if cut:
        print(f"note: {len(cut)} kept shapes are cut by their scan's field of view (their "
              f"surface closes at the scan's edge; report.json lists them under cut_by_fov; "
              f"--exclude-cut rejects them): " + ", ".join(
                  c["source"] + ("" if c["side"] == "none" else f" ({c['side']})")
                  for c in cut[:5]) + (", ..." if len(cut) > 5 else ""))
    vc = report.get("voxel_classifier") or {}
    if "skipped" in vc:
        print(f"no voxel classifier: {vc['skipped']}")
    print(f"wrote {show_path(out)}")
    return 0


def _build(a, out, deid):
    """Build and publish the model; ``(model, report, report folder)``. ``deid`` is
    the run's de-identification (:func:`~._deidentify.deidentified`): with
    ``--deidentify`` the label maps are named by their pseudonyms and every text
    that leaves is scrubbed, else it passes everything through."""
    from .._outputs import OutputDir, check_not_input, check_replaceable, own_model_file
    from ..model import BuildParams, build_model, label_map_inputs, training_images

    side_path = out.with_name(out.name + ".report")
    inputs = [*a.label_maps, a.images]
    check_not_input(out, inputs)
    check_replaceable(out, a.force, own_model_file)          # before the slow stages
    labels = parse_labels(a.labels)
    for name, v in (("--iso-spacing", a.iso_spacing), ("--vertices", a.vertices)):
        if v is not None and v <= 0:
            raise ValueError(f"{name}={v} must be > 0")
    skipped = []
    items = deid.start(label_map_inputs(a.label_maps, mask_name=a.mask_name, skipped=skipped))
    note_skipped_case_folders(skipped, a.mask_name, a.deidentify)
    if a.limit is not None:
        items = items[: a.limit]
    files = [f for f, _, _ in items]
    read = files + (training_images(files, [r for _, _, r in items], a.images, a.image_name)
                    if a.images or a.image_name else [])
    inputs += read                  # a detached header's data files, wherever they lie
    check_not_input(out, read)
    side = OutputDir(side_path, force=a.force, inputs=inputs)   # checked before the slow stages
    try:
        params = BuildParams(labels=labels, organ=a.organ, split_sides=a.split_sides,
                             side=a.side, mirror_right=not a.no_mirror, n_vertices=a.vertices,
                             iso_spacing=a.iso_spacing, smooth_mm=a.smooth,
                             template_shapes=a.template_shapes, n_atoms=a.atoms,
                             n_nonzero=a.nonzero, dictionary_kind=a.dictionary_kind,
                             seed=a.random_state, n_jobs=a.jobs,
                             images_dir=a.images, image_name=a.image_name,
                             normalisation=a.normalisation,
                             voxel_classifier=not a.no_voxel_classifier,
                             allow_no_orientation=a.allow_no_orientation,
                             exclude_cut=a.exclude_cut)
        model, report = build_model(files, params, progress=not a.quiet,
                                    names=[n for _, n, _ in items], roots=[r for _, _, r in items])
        model.metadata, report = deid.data(model.metadata), deid.data(report)
        # the model file and its report/manifest folder are staged, then renamed into place
        publish_model(side, out, model, report, manifest(
            command="build-model", parameters=deid.data(vars(a)), seed=a.random_state,
            inputs={n: f for f, n, _ in items}, input_paths=deid.shown(items)), a.force, inputs)
    finally:
        side.discard()
    return model, report, side_path
