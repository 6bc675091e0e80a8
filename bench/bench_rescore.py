"""A batch rerun whose only change is the reference: compared again, not fitted again.

A research group segments a folder of scans, then gives ``--reference`` (the
reference label maps arrive, or another rater's, or other labels) to score
them. Before, every such case was segmented again; now its written label is
compared with the reference given now and its folder published again
(``pipeline/_rescore.py``).

The command as a user runs it (subprocesses): ``shapeprior segment images/ -o
out/ --model M`` on the hippocampus validation cases, then the same command
with ``--reference labels/ --reference-labels 1,2``, timed, once with the code
of ``--baseline-rev`` (before: every case segmented again) and once with this
checkout, each in its own output folder. The Dice per case must be the same
in both (the segmentation is the same: the baseline fits again what it had
fitted, the current keeps it).

    python bench/bench_rescore.py [--cases 8] [--baseline-rev REV]
    # writes results/rescore.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from _common import (cached_hippocampus_model, hippocampus_validation_split, machine,
                     run_cli, unpack_rev, write_json)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BASELINE_REV = "1e6f178"


def _segment(tree, images, out, model, *extra):
    return run_cli(tree, "segment", images, "-o", out, "--model", model, *extra)[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--out", default=str(HERE / "results" / "rescore.json"))
    a = ap.parse_args(argv)
    split = hippocampus_validation_split()
    if split is None:
        return 1
    root, train, val = split
    model_path = HERE / "cache" / "hippocampus_val_642.npz"
    cached_hippocampus_model(model_path, train, root)
    val = val[: a.cases]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images, labels = tmp / "images", tmp / "labels"
        images.mkdir()
        labels.mkdir()
        for f in val:
            shutil.copy(root / "images" / f.name, images / f.name)
            shutil.copy(f, labels / f.name)
        base = unpack_rev(a.baseline_rev, tmp / "baseline")
        runs = {}
        for tree, key in ((base, "baseline"), (REPO, "current")):
            out = tmp / f"out_{key}"
            first = _segment(tree, images, out, model_path)
            again = _segment(tree, images, out, model_path, "--reference", str(labels),
                             "--reference-labels", "1,2")
            rows = json.loads((out / "summary.json").read_text())["cases"]
            runs[key] = {"segment_s": round(first, 2), "rerun_with_reference_s": round(again, 2),
                         "rows": {r["case"]: {k: r.get(k) for k in
                                              ("status", "result", "dice", "reason", "note")}
                                  for r in rows}}
            print(key, runs[key]["segment_s"], runs[key]["rerun_with_reference_s"], flush=True)
    b, c = runs["baseline"], runs["current"]
    same = all(b["rows"][k]["dice"] == c["rows"][k]["dice"] for k in b["rows"])
    result = {"benchmark": "rescore", "machine": machine(),
              "command": "python bench/bench_rescore.py " + " ".join(argv or sys.argv[1:]),
              "baseline_rev": a.baseline_rev,
              "data": f"MSD hippocampus validation cases (number % 5 == 1), first {len(val)}; "
                      "model bench/cache/hippocampus_val_642.npz",
              "summary": {"rerun_baseline_s": b["rerun_with_reference_s"],
                          "rerun_current_s": c["rerun_with_reference_s"],
                          "speedup": round(b["rerun_with_reference_s"]
                                           / c["rerun_with_reference_s"], 2),
                          "same_dice_every_case": same,
                          "current_all_compared_again": all(
                              r["status"] == "skipped" and "compared again" in (r["reason"] or "")
                              for r in c["rows"].values())},
              "runs": runs}
    write_json(a.out, result)
    print(result["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
