"""Benchmark: which training label maps hold an organ cut by the scan (issue #11).

An organ that reaches the first or last plane of its scan's grid along any
axis is cut by the field of view: its surface closes at the scan's edge, not
at the organ's. ``build-model`` keeps such organs and lists them in its
report (``cut_by_fov``); ``--exclude-cut`` rejects them; ``update-model``
refuses them. This scan runs the build's own organ extraction
(:func:`shapeprior.model._build.organ_masks`) on every shared KiTS19 label
map (kidneys, labels 1+2, split by side) and MSD hippocampus label map
(labels 1+2), and lists each cut organ with the edge it reaches.

    python bench/bench_cut_fov.py            # writes bench/results/cut_fov.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_json  # noqa: E402

from shapeprior.data import data_root  # noqa: E402
from shapeprior.model import BuildParams  # noqa: E402
from shapeprior.model._build import organ_masks  # noqa: E402

SETS = {
    "kits19": ("kits19/*/segmentation.nii.gz",
               BuildParams(labels=(1, 2), split_sides=True, organ="kidney")),
    "msd_hippocampus": ("msd_hippocampus/labels/hippocampus_*.nii.gz",
                        BuildParams(labels=(1, 2), organ="hippocampus")),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(RESULTS / "cut_fov.json"))
    a = ap.parse_args(argv)
    root = data_root()
    doc = {"benchmark": "organs cut by the field of view in the shared label maps",
           "machine": machine(), "sets": {}}
    for name, (pattern, params) in SETS.items():
        files = sorted(root.glob(pattern))
        if not files:
            print(f"{name}: no files under {root}; skipped")
            continue
        t0 = time.perf_counter()
        cut, organs, errors = [], 0, []
        for f in files:
            try:
                *_, cuts = organ_masks(f, params)
            except ValueError as exc:
                errors.append({"file": f.relative_to(root).as_posix(), "error": str(exc)})
                continue
            organs += len(cuts)
            cut += [{"file": f.relative_to(root).as_posix(), "side": side, "where": where}
                    for side, where in cuts.items() if where]
        doc["sets"][name] = {"label_maps": len(files), "organs": organs,
                             "cut": len(cut), "cases": cut, "errors": errors,
                             "seconds": time.perf_counter() - t0}
        print(f"{name}: {len(cut)} of {organs} organs in {len(files)} label maps are cut "
              f"by the field of view")
        for c in cut:
            print(f"  {c['file']} ({c['side']}): {c['where']}")
    write_json(a.out, doc)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
