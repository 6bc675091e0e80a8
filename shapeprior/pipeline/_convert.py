"""RT Structure Sets to label maps: one structure set on its scan, or every one
of a download (a TCIA collection: ``patient/study/{CT series, RTSTRUCT}/``),
each paired with the series it was drawn on."""

from __future__ import annotations

from pathlib import Path

from ..io import (ImageReadError, display_name, find_structure_sets, read_rtstruct, read_scan,
                  scan_frame_of_reference, scan_of_structure_set, write_label)
from ._cases import safe_name
from ._run import input_files


def convert_structure_set(rtstruct, image, folder, structures=None, series=None,
                          allow_no_orientation=False, withheld=False):
    """Fill ``structures`` of the RT Structure Set ``rtstruct`` on the grid of
    ``image`` (a DICOM series folder or an image file; ``series`` picks one of a
    folder) and write ``folder/label.nii.gz`` and ``folder/report.json``
    (``folder`` exists: a staged output). Returns ``(report, files read)``;
    the report's ``warnings`` say what was left out or could not be checked.
    ``withheld``: the report names no input file."""
    from .._outputs import json_text

    vol, info = read_scan(image, series, allow_no_orientation)
    label, rinfo = read_rtstruct(rtstruct, vol, structures,
                                 scan_frame_of_reference(image, series))
    warnings = []
    for s in rinfo["structures"]:
        if not s["voxels"]:
            warnings.append(f"{s['name']!r} covers no voxel centre of the scan (its "
                            "outlines are smaller than a voxel): its label is empty")
        if s["outside_contours"]:
            warnings.append(f"{s['outside_contours']} contours of {s['name']!r} lie on "
                            "slices outside the scan and were left out")
        if s["clipped_contours"]:
            warnings.append(f"{s['clipped_contours']} contours of {s['name']!r} reach beyond "
                            "the scan's rows or columns: filled within the scan only")
    if rinfo["overlap_voxels"]:
        warnings.append(f"{rinfo['overlap_voxels']} voxels lie in more than one structure: "
                        "each holds the label of the later one")
    if not rinfo["frame_of_reference_checked"]:
        warnings.append("the scan's frame of reference could not be compared with the "
                        "structure set's (not a DICOM scan, or a UID missing): only the "
                        "slice planes were checked")
    folder = Path(folder)
    write_label(label, label.array, folder / "label.nii.gz", code=1)
    report = {"rtstruct": "(withheld)" if withheld else display_name(rtstruct),
              "coordinates": "LPS",
              "image": {"shape_zyx": list(vol.array.shape), "spacing_mm": vol.spacing.tolist(),
                        "origin_mm": vol.origin.tolist(),
                        "direction": vol.direction.ravel().tolist(),
                        "modality": info.get("modality")},
              **rinfo, "warnings": warnings}
    (folder / "report.json").write_text(json_text(report))
    return report, [Path(rtstruct), *input_files(Path(image))]


def structure_set_cases(folder):
    """Every RT Structure Set at or below ``folder`` with the series it was drawn
    on, looked for in its case folder (the subfolder of ``folder`` it lies in: a
    download's patient; ``folder`` itself for one lying there): ``[{"name",
    "rtstruct", "image", "series", "error", "folder", "index"}]``. A case is
    named by its case folder (``folder``), with ``-2``, ``-3`` ... where one holds
    several structure sets (``index``, from 1). A structure set whose scan is not
    found is a case with an ``error``.

    Raises ValueError when ``folder`` holds no RT Structure Set."""
    root = Path(folder)
    found = find_structure_sets(root)
    if not found:
        raise ValueError(f"{display_name(root)} holds no DICOM RT Structure Set (RTSTRUCT) "
                         "file in it or its subfolders")
    cases = []
    for rt in found:
        rel = rt.relative_to(root)
        base = root / rel.parts[0] if len(rel.parts) > 1 else root
        case = {"name": base.name or "case", "rtstruct": rt, "image": None, "series": None,
                "error": None, "folder": base}
        try:
            case["image"], case["series"] = scan_of_structure_set(rt, base)
        except (ImageReadError, OSError) as exc:
            case["error"] = str(exc)
        cases.append(case)
    seen = {}
    for case in cases:                  # a case folder's second structure set: NAME-2
        base = safe_name(case["name"])
        seen[base] = seen.get(base, 0) + 1
        case["index"] = seen[base]
        case["name"] = base if seen[base] == 1 else f"{base}-{seen[base]}"
    return cases


__all__ = ["convert_structure_set", "structure_set_cases"]
