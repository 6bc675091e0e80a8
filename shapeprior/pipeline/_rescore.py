"""A case's outputs compared with another reference, without fitting again.

A batch rerun whose only change is the reference (given now and not before,
another label map, other ``--reference-labels``) keeps the segmentation or
refinement: its written label is compared with the reference given now, and
the case's folder is published again, atomically, with the report's
``reference`` block and the manifest's reference and labels replaced. Every
other output is copied as it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from .._outputs import OutputDir, read_manifest, show_path
from ..io import Volume, image_sha256, read_label_map
from ._refine import refine_reference
from ._run import (compared_with, is_reference_warning, note_reference, note_structures,
                   reference_mask, reference_selection, side_references)


def rescore_outputs(folder, reference, reference_labels, *, mask=None, allow_no_orientation=False,
                    deidentify=False, scan=None):
    """Compare the label written in ``folder`` with ``reference`` (its
    ``reference_labels`` the organ) and publish the folder again with that
    comparison. ``mask``: a refinement's input mask, whose own Dice and
    distances (the labels and kept labels its manifest records) go under the
    block's ``input``. ``scan``: ``(path, series)`` of the scan the label lies
    on, whose frame of reference an RT Structure Set reference must share
    (:func:`~._run.reference_mask`). Returns the new report. Raises ValueError (the folder
    left as it was) for a reference that cannot be compared.
    """
    folder = Path(folder)
    labels = reference_selection(reference_labels, reference)
    grid = read_label_map(folder / "label.nii.gz")
    what = "image" if mask is None else "mask"
    others, filled = [], {}
    ref = reference_mask(reference, labels, grid, what, allow_no_orientation, others, scan,
                         filled)
    report = json.loads((folder / "report.json").read_bytes())
    man = read_manifest(folder)
    label = grid.array > 0
    if mask is None:            # the block as run_case writes it
        report["reference"] = compared_with(label, ref, grid.spacing)
        if report.get("side") == "both":        # and each side's, cut at the same midline
            side_references(report, label, ref, grid)
    else:
        p = man["parameters"]
        given = read_label_map(mask, allow_no_orientation)
        organ = np.isin(given.array, tuple(p["labels"]) + tuple(p["keep_labels"]))
        if not given.same_grid(grid):
            # a DICOM-SEG mask, read on its frames, refined on its series' whole grid
            organ = Volume(organ, given.spacing, given.origin, given.direction).placed_on(grid)
            if organ is None:
                raise ValueError(f"the mask is not on the grid of the refined label "
                                 f"({grid.grid_difference(given)}; mask vs label)")
        report["reference"] = refine_reference(label, organ, ref, grid.spacing, labels)
    note_structures(report, labels, filled)
    report["warnings"] = [w for w in report.get("warnings", []) if not is_reference_warning(w)]
    note_reference(report, ref, others)
    man.pop("outputs", None)
    man["inputs"]["reference"] = {"path": "reference" if deidentify else show_path(reference),
                                  "sha256": image_sha256(reference)}
    man["parameters"]["reference_labels"] = labels
    out = OutputDir(folder, force=True, inputs=[Path(reference)] + ([Path(mask)] if mask else []))
    try:
        for f in folder.iterdir():
            if f.name not in ("report.json", "manifest.json"):
                shutil.copy2(f, out.file(f.name))
        out.write_json("report.json", report)
        out.write_json("manifest.json", man)
        out.commit()
    except BaseException:
        out.discard()
        raise
    return report


__all__ = ["rescore_outputs"]
