"""``shapeprior convert-rtstruct``: an RT Structure Set's contours as a label map
on the scan they were drawn on, for ``refine``, ``--reference``, ``--init-mask``
and ``build-model``."""

from __future__ import annotations

import sys

from ._common import Parser, add_allow_no_orientation


def main(argv):
    """Fill the contours of chosen structures on the scan's grid."""
    ap = Parser(
        prog="shapeprior convert-rtstruct",
        description="Write the structures of a DICOM RT Structure Set (RTSTRUCT: contours "
                    "drawn in a planning system) as a label map on the grid of the scan "
                    "they were drawn on: OUTPUT/label.nii.gz (the first --structure is "
                    "label 1, the next 2, ...; where two overlap, the later one), "
                    "report.json (per structure: label, contours, slices, volume) and "
                    "manifest.json. Each polygon fills the voxel centres inside it on its "
                    "slice; polygons of one structure on one slice combine by exclusive "
                    "or (a polygon inside another is a hole). A structure set of another "
                    "scan (another Frame of Reference UID, or contours between the scan's "
                    "slices) is refused.")
    ap.add_argument("rtstruct", help="the RT Structure Set file (.dcm)")
    ap.add_argument("--image", help="the scan the contours were drawn on: a DICOM series "
                                    "folder, or a NIfTI/NRRD/MHA file on its grid")
    ap.add_argument("-o", "--output", help="output folder (created)")
    ap.add_argument("--structure", action="append", default=None, metavar="NAME",
                    help="a structure to convert, by its ROI name (case aside) or #N for ROI "
                         "number N; repeat for several (label 1, 2, ... in this order). "
                         "Default: the one structure with contours")
    ap.add_argument("--list", action="store_true",
                    help="list the structures (number, name, contours) and stop")
    ap.add_argument("--series", default=None,
                    help="which series of a --image folder that holds several (index or key)")
    ap.add_argument("--force", action="store_true",
                    help="replace a previous output of shapeprior (never an input or a "
                         "foreign file)")
    add_allow_no_orientation(ap)
    a = ap.parse_args(argv)

    from ..io import list_structures

    if a.list:
        for s in list_structures(a.rtstruct):
            other = f", {s['other_contours']} points or open lines" if s["other_contours"] \
                else ""
            print(f"#{s['number']:<4d} {s['name'] or '(unnamed)'}: {s['closed_contours']} "
                  f"closed contours{other}")
        return 0
    if a.image is None or a.output is None:
        ap.error("--image (the scan) and -o/--output are required (or give --list)")
    return _convert(a, argv)


def _convert(a, argv):
    from pathlib import Path

    from .._outputs import OutputDir, manifest, show_path
    from ..io import (display_name, read_rtstruct, read_scan, scan_frame_of_reference,
                      write_label)
    from ..pipeline import input_files

    out = OutputDir(a.output, force=a.force, inputs=[a.rtstruct, a.image])
    try:
        vol, info = read_scan(a.image, a.series, a.allow_no_orientation)
        label, rinfo = read_rtstruct(a.rtstruct, vol, a.structure,
                                     scan_frame_of_reference(a.image, a.series))
        warnings = []
        for s in rinfo["structures"]:
            if s["outside_contours"]:
                warnings.append(f"{s['outside_contours']} contours of {s['name']!r} lie on "
                                "slices outside the scan and were left out")
        if rinfo["overlap_voxels"]:
            warnings.append(f"{rinfo['overlap_voxels']} voxels lie in more than one structure: "
                            "each holds the label of the later one")
        if not rinfo["frame_of_reference_checked"]:
            warnings.append("the scan's frame of reference could not be compared with the "
                            "structure set's (not a DICOM scan, or a UID missing): only the "
                            "slice planes were checked")
        write_label(label, label.array, out.file("label.nii.gz"), code=1)
        report = {"rtstruct": Path(a.rtstruct).name, "coordinates": "LPS",
                  "image": {"shape_zyx": list(vol.array.shape),
                            "spacing_mm": vol.spacing.tolist(), "origin_mm": vol.origin.tolist(),
                            "direction": vol.direction.ravel().tolist(),
                            "modality": info.get("modality")},
                  **rinfo, "warnings": warnings}
        out.write_json("report.json", report)
        scan = {f"image/{display_name(f)}": f for f in input_files(Path(a.image))}
        out.write_json("manifest.json", manifest(
            command="convert-rtstruct",
            parameters={"structures": a.structure, "series": a.series, "argv": list(argv)},
            seed=None, inputs={"rtstruct": a.rtstruct, **scan}))
        out.commit()
    finally:
        out.discard()
    for s in rinfo["structures"]:
        print(f"label {s['label']}: {s['name'] or '#' + str(s['number'])} ({s['contours']} "
              f"contours on {s['slices']} slices, {s['volume_ml']:.1f} ml)")
    for w in warnings:
        print(f"note: {w}", file=sys.stderr)
    print(f"wrote {show_path(a.output)}/label.nii.gz")
    return 0
