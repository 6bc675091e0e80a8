"""``shapeprior convert-rtstruct``: an RT Structure Set's contours as a label map
on the scan they were drawn on, for ``build-model`` or any other tool (``refine``,
``--reference`` and ``--init-mask`` take a structure set as it is); or every
structure set of a download, each on its own scan."""

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
                    "slices) is refused. RTSTRUCT may be a folder (a download: "
                    "patient/study/series/): every structure set in it is converted on "
                    "the series it names (or the one volume of its frame of reference) in "
                    "its patient folder, into OUTPUT/<patient>/, with summary.json; "
                    "build-model OUTPUT --mask-name label.nii.gz then learns from them.")
    ap.add_argument("rtstruct", help="the RT Structure Set file (.dcm), or a folder of them "
                                     "beside their scans")
    ap.add_argument("--image", help="the scan the contours were drawn on (one file given): a "
                                    "DICOM series folder, or a NIfTI/NRRD/MHA file on its grid")
    ap.add_argument("-o", "--output", help="output folder (created)")
    ap.add_argument("--structure", action="append", default=None, metavar="NAME",
                    help="a structure to convert, by its ROI name (case, spaces, underscores "
                         "and hyphens aside: Kidney_L = kidney l) or #N for ROI number N; "
                         "alternatives joined by | take the first the set holds "
                         "(Kidney_L|L_Kidney); repeat for several (label 1, 2, ... in this "
                         "order). Default: the one structure with contours")
    ap.add_argument("--list", action="store_true",
                    help="list the structures (number, name, contours) and stop")
    ap.add_argument("--series", default=None,
                    help="which series of a --image folder that holds several (index or key)")
    ap.add_argument("--force", action="store_true",
                    help="replace a previous output of shapeprior (never an input or a "
                         "foreign file)")
    ap.add_argument("--deidentify", action="store_true",
                    help="no input's name or path in the outputs, the screen or an error "
                         "line: a download's cases are named by a salted hash of their "
                         "patient folder's name (the salt of segment --deidentify), the "
                         "manifest numbers the files read")
    add_allow_no_orientation(ap)
    a = ap.parse_args(argv)

    from pathlib import Path

    from ..io import list_structures

    folder = Path(a.rtstruct).is_dir()
    if a.list:
        if folder:
            ap.error("--list lists one structure set's structures; RTSTRUCT is a folder")
        for s in list_structures(a.rtstruct):
            other = f", {s['other_contours']} points or open lines" if s["other_contours"] \
                else ""
            print(f"#{s['number']:<4d} {s['name'] or '(unnamed)'}: {s['closed_contours']} "
                  f"closed contours{other}")
        return 0
    if a.output is None:
        ap.error("-o/--output is required (or give --list)")
    if folder:
        if a.image is not None or a.series is not None:
            ap.error("--image and --series name the scan of one structure set file; in a "
                     "folder each structure set's scan is found by the series it names")
        return _convert_folder(a, argv)
    if a.image is None:
        ap.error("--image (the scan the contours were drawn on) is required for one "
                 "structure set file")
    return _convert(a, argv)


def _manifest(a, argv, read, top=None):
    """The manifest: every file read, keyed by its path below ``top`` (a folder
    given) or its name; numbered, its path withheld, with ``--deidentify``."""
    import os
    from pathlib import Path

    from .._outputs import manifest
    from ..io import display_name
    from ..pipeline import scrub_argv

    def key(f):
        if top is None:
            return display_name(f)
        return os.fsencode(str(Path(f).relative_to(top))).decode("utf-8", "backslashreplace")

    if a.deidentify:
        inputs = {f"input/{i:04d}": f for i, f in enumerate(dict.fromkeys(read))}
        shown = {k: k for k in inputs}
        argv = scrub_argv(argv, {a.rtstruct: "<rtstruct>", a.image: "<image>",
                                 a.output: "<output>"})
    else:
        inputs, shown = {f"input/{key(f)}": f for f in read}, None
    return manifest(command="convert-rtstruct",
                    parameters={"structures": a.structure, "series": a.series,
                                "argv": list(argv), "deidentify": a.deidentify},
                    seed=None, inputs=inputs, input_paths=shown)


def _withheld(text, *paths):
    """``text`` with every form of ``paths``' names withheld (``--deidentify``)."""
    from ..pipeline import scrub_paths

    return scrub_paths(str(text), [(p, "(withheld)") for p in paths])


def _convert(a, argv):
    from .._outputs import OutputDir, show_path
    from ..io import structure_title
    from ..pipeline import convert_structure_set

    out = OutputDir(a.output, force=a.force, inputs=[a.rtstruct, a.image])
    try:
        report, read = convert_structure_set(a.rtstruct, a.image, out.file(""), a.structure,
                                             a.series, a.allow_no_orientation, a.deidentify)
        out.write_json("manifest.json", _manifest(a, argv, read))
        out.commit()
    except (ValueError, OSError) as exc:
        if not a.deidentify:
            raise
        raise type(exc)(_withheld(exc, a.rtstruct, a.image)) from None
    finally:
        out.discard()
    for s in report["structures"]:
        print(f"label {s['label']}: {structure_title(s)} ({s['contours']} "
              f"contours on {s['slices']} slices, {s['volume_ml']:.1f} ml)")
    for w in report["warnings"]:
        print(f"note: {w}", file=sys.stderr)
    print(f"wrote {show_path(a.output)}/label.nii.gz")
    return 0


def _convert_folder(a, argv):
    """Every structure set of a download into OUTPUT/<case>/; one summary row
    each; exit 1 when any could not be converted."""
    import os
    import shutil
    from pathlib import Path

    from .._outputs import OutputDir, json_text, show_path
    from ..pipeline import convert_structure_set, structure_set_cases

    top = Path(a.rtstruct)
    try:
        cases = structure_set_cases(top)
    except (ValueError, OSError) as exc:
        if not a.deidentify:
            raise
        raise type(exc)(_withheld(exc, top)) from None
    if a.deidentify:
        from ..pipeline import Deidentifier

        deid = Deidentifier()
        for c in cases:                      # the patient folder's pseudonym (-2, -3 kept)
            c["shown"] = deid.name(c["folder"]) + ("" if c["index"] == 1
                                                   else f"-{c['index']}")
            if c["error"] is not None:
                c["error"] = _withheld(c["error"], c["rtstruct"], c["image"], c["folder"])
    out = OutputDir(a.output, force=a.force, inputs=[a.rtstruct])
    rows, read = [], []

    def rel(p):
        if a.deidentify:
            return "(withheld)"
        return os.fsencode(str(Path(p).relative_to(top))).decode("utf-8", "backslashreplace")

    try:
        for c in cases:
            name = c.get("shown", c["name"])
            row = {"case": name, "rtstruct": rel(c["rtstruct"]),
                   "image": None if c["image"] is None else rel(c["image"])}
            if c["error"] is None:
                folder = out.file(name)
                folder.mkdir()
                try:
                    report, files = convert_structure_set(c["rtstruct"], c["image"], folder,
                                                          a.structure, c["series"],
                                                          withheld=a.deidentify)
                    read += files
                    row.update(status="converted", structures=[
                        {k: s[k] for k in ("label", "name", "volume_ml")}
                        for s in report["structures"]], warnings=report["warnings"])
                except (ValueError, OSError) as exc:     # ImageReadError among them
                    shutil.rmtree(folder)       # the staged case's partial files
                    c["error"] = _withheld(exc, c["rtstruct"], c["image"], c["folder"]) \
                        if a.deidentify else str(exc)
            if c["error"] is not None:
                row.update(status="failed", error=c["error"])
            rows.append(row)
        done = sum(r["status"] == "converted" for r in rows)
        (out.file("summary.json")).write_text(json_text(
            {"command": "convert-rtstruct", "n_cases": len(rows), "n_converted": done,
             "cases": rows}))
        out.write_json("manifest.json", _manifest(a, argv, read, top))
        out.commit()
    finally:
        out.discard()
    for r in rows:
        if r["status"] == "converted":
            what = ", ".join(f"{s['label']}: {s['name']} {s['volume_ml']:.1f} ml"
                             for s in r["structures"])
            print(f"{r['case']:30s} converted  {what}")
        else:
            print(f"{r['case']:30s} failed     {r['error']}")
    print(f"{len(rows)} structure sets: {done} converted, {len(rows) - done} failed; "
          f"summary in {show_path(a.output)}/summary.json")
    return 0 if done == len(rows) else 1
