"""``shapeprior refine`` of whole-scan label maps: the organ's box instead of the grid.

A network's mask is written on the scan's whole grid (KiTS19: 512 x 512 x up to
834 voxels; TotalSegmentator: the CT's grid). Refinement passed over every
voxel of it several times (components, distance maps, slice runs, the
corrections), which took most of a refinement's time. It now refines the
organ's box with ``CROP_MARGIN_MM`` (40 mm) around it and puts the result back
on the grid (``segmentation._refine.refine_mask``): nothing beyond that box
can change.

The command as a user runs it (a subprocess: read, refine, write), once with
the code of ``--baseline-rev`` (unpacked from git) and once with this
checkout, alternated case by case on the same machine; the labels written by
both must be the same voxel for voxel. Cases: held-out KiTS19 maps (labels 1,2:
both kidneys, refined side by side) and TotalSegmentator's example
segmentation (its kidneys, labels 2 and 3, both and the left alone).

    python bench/bench_refine_whole.py [--baseline-rev REV]
    # writes results/refine_whole.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import data_root, machine, run_cli, unpack_rev, write_json

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BASELINE_REV = "1e6f178"
KITS = ("case_00000", "case_00005", "case_00010", "case_00015", "case_00020", "case_00025")


def _run(tree, mask, labels, out, model):
    wall, stdout = run_cli(tree, "refine", mask, "-o", out, "--model", model, "--labels", labels)
    return wall, stdout.strip().splitlines()[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--out", default=str(HERE / "results" / "refine_whole.json"))
    a = ap.parse_args(argv)
    from shapeprior.io import read_label_map

    root = data_root()
    model = HERE / "cache" / "kidney_model.npz"
    cases = [(f"kits19/{c}", root / "kits19" / c / "segmentation.nii.gz", "1,2") for c in KITS]
    ts = root / "totalsegmentator_example" / "example_seg.nii.gz"
    cases += [("totalseg example, kidneys (2,3)", ts, "2,3"),
              ("totalseg example, left kidney (3)", ts, "3")]
    cases = [c for c in cases if c[1].exists()]
    if not model.exists() or not cases:
        print(f"needs {model} and the KiTS19 / TotalSegmentator data under {root}",
              file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = unpack_rev(a.baseline_rev, tmp / "baseline")
        for i, (name, mask, labels) in enumerate(cases):
            shape = list(read_label_map(mask).array.shape)
            row = {"case": name, "labels": labels, "grid_zyx": shape}
            for tree, key in ((base, "baseline"), (REPO, "current")):
                wall, line = _run(tree, mask, labels, tmp / f"{key}_{i}", model)
                row[f"{key}_s"] = round(wall, 2)
                row[f"{key}_line"] = line
            same = np.array_equal(read_label_map(tmp / f"baseline_{i}" / "label.nii.gz").array,
                                  read_label_map(tmp / f"current_{i}" / "label.nii.gz").array)
            row["labels_identical"] = bool(same)
            row["speedup"] = round(row["baseline_s"] / row["current_s"], 2)
            rows.append(row)
            print(name, shape, row["baseline_s"], row["current_s"], row["speedup"], same,
                  flush=True)
    sp = [r["speedup"] for r in rows]
    result = {"benchmark": "refine_whole", "machine": machine(),
              "command": "python bench/bench_refine_whole.py " + " ".join(argv or sys.argv[1:]),
              "baseline_rev": a.baseline_rev,
              "measure": "wall time of `shapeprior refine MASK -o OUT --model "
                         "bench/cache/kidney_model.npz --labels L` in a subprocess (read, "
                         "refine, write), baseline and current alternated case by case",
              "summary": {"speedup_median": float(np.median(sp)), "speedup_min": min(sp),
                          "speedup_max": max(sp),
                          "all_labels_identical": all(r["labels_identical"] for r in rows),
                          "baseline_s_total": round(sum(r["baseline_s"] for r in rows), 1),
                          "current_s_total": round(sum(r["current_s"] for r in rows), 1)},
              "cases": rows}
    write_json(a.out, result)
    print(result["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
