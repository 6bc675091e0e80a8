"""``shapeprior refine``: refine an existing label map with the shape prior."""

from __future__ import annotations

import argparse

from ._common import (add_mesh_format, add_prior, finish_case, floats,
                      join_negative_values, parse_labels, refuse_unused)


def main(argv):
    """Refine an existing label map (any tool's) with the shape prior: leaks, holes, islands."""
    ap = argparse.ArgumentParser(
        prog="shapeprior refine",
        description="Fit the SSC shape model to an existing segmentation (TotalSegmentator, "
                    "nnU-Net, a rough manual mask) so that leaks, holes, missing or duplicated "
                    "slices and islands land in the gross-error term; optionally continue "
                    "against the image. Writes the refined label on the mask's grid, the mesh "
                    "(point data: gross_error_mm, overridden, confidence; LPS mm) and a report "
                    "of the regions removed and added.",
        epilog="Exit codes: 0 ok (suspect too, unless --strict); 1 bad input or an error; 3 a "
               "failed result (or a suspect one with --strict).")
    ap.add_argument("mask", help="label map (NIfTI/NRRD/MHA)")
    ap.add_argument("-o", "--output", required=True, help="output folder")
    ap.add_argument("--model", required=True, help="model file from build-model")
    ap.add_argument("--labels", default=None, help="labels of the organ in MASK (default 1)")
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
                         "copied (the displaced side of the organ moved back)")
    ap.add_argument("--side", choices=("none", "left", "right"), default="none",
                    help="side of a paired organ (default: from the mask's position)")
    ap.add_argument("--window", default=None,
                    help="with --image and a model without appearance: intensity window lo,hi "
                         "inside the organ (normalised units; CT: HU/1000, default -0.05,0.25: "
                         "soft tissue)")
    ap.add_argument("--method", choices=("l1", "l0"), default="l1")
    add_mesh_format(ap)
    ap.add_argument("--force", action="store_true",
                    help="replace a previous shapeprior output (never an input or a foreign file)")
    ap.add_argument("--strict", action="store_true", help="exit 3 for a 'suspect' result too")
    ap.add_argument("--allow-no-orientation", action="store_true",
                    help="accept NIfTI/Analyze files that record no orientation")
    add_prior(ap)
    a = ap.parse_args(join_negative_values(argv, ("--window",)))

    from ..model import load_model
    from ..pipeline import refine_case
    from ..segmentation import SegmentParams, check_window

    refuse_unused((a.window and not a.image, "--window has no effect without --image"))
    model = load_model(a.model)
    _check_mask_is_a_file(a.mask, model.metadata.get("organ", ""))
    labels = parse_labels("1" if a.labels is None else a.labels, "--labels")
    keep = parse_labels(a.keep_labels, "--keep-labels") if a.keep_labels else ()
    params = SegmentParams(method=a.method, side=a.side, prior=a.prior,
                           window=floats(a.window, 2, "--window") if a.window else None)
    check_window(model, params)
    rep = refine_case(a.mask, a.output, model, a.model, params, labels=labels, image=a.image,
                      mesh_format=a.mesh_format, force=a.force, argv=argv,
                      allow_no_orientation=a.allow_no_orientation, keep=keep,
                      labels_given=a.labels is not None)
    c = rep["corrections"]
    print(f"{rep['input']['mask']}: {rep['status']} (quality {rep['quality']:.2f}); "
          f"{c['input_ml']:.1f} ml -> {c['refined_ml']:.1f} ml: removed {c['removed_ml']:.1f} ml, "
          f"added {c['added_ml']:.1f} ml in {len(c['regions'])} regions")
    for r in rep["reasons"]:
        print(f"  {rep['status']}: {r}")
    for w in rep["warnings"]:
        print(f"  note: {w}")
    return finish_case(rep["input"]["mask"], rep, a.output, a.strict)


def _check_mask_is_a_file(mask, organ):
    """A folder given as MASK (TotalSegmentator writes one file per organ into one)
    is refused naming its label maps of the model's organ, when it holds any."""
    from pathlib import Path

    from ..io import display_name, volume_suffix

    p = Path(mask)
    if not p.is_dir():
        return
    files = sorted(f.name for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                   and volume_suffix(f.name))
    named = [f for f in files if organ and organ.lower() in f.lower()] if organ else []
    why = f"{display_name(p)} is a folder; refine takes one label map file"
    if named:
        why += (f" (in it, named like the model's organ '{organ}': " + ", ".join(named[:4])
                + (", ..." if len(named) > 4 else "") + ")")
    elif files:
        why += f" (it holds {len(files)} image files)"
    raise IsADirectoryError(why)
