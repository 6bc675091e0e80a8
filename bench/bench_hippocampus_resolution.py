"""Template and surface resolution of a small organ (hippocampus validation split).

``build-model`` chooses the template vertices, surface grid and smoothing by the
organ's size (``shapeprior.model._build.RESOLUTIONS``): the KiTS kidney's 2562
vertices on 1.5 mm surfaces smoothed by 1.5 mm, or, below an RMS radius of 20 mm,
the small organ's. This compares candidates for the small organ on the MSD
hippocampus validation split: the model is built from the cases whose number
% 5 is not 0 or 1 (with their images: appearance and voxel classifier), and the
38 cases with number % 5 == 1 are segmented with the default settings (Dice
against the manual label, label > 0). The test split (% 5 == 0) is never used.

    python bench/bench_hippocampus_resolution.py   # writes results/hippocampus_resolution.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, hippocampus_validation_split, machine, write_json  # noqa: E402

from shapeprior.io import read_label_map, read_volume  # noqa: E402
from shapeprior.model import BuildParams, build_model, load_model, save_model  # noqa: E402
from shapeprior.segmentation import SegmentParams, dice, segment_volume  # noqa: E402

CACHE = Path(__file__).resolve().parent / "cache"
#: (template vertices, surface grid mm, smoothing mm): the kidney's default, and two
#: for a small organ
CANDIDATES = [(2562, 1.5, 1.5), (642, 0.5, 0.75), (2562, 0.5, 0.75)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(RESULTS / "hippocampus_resolution.json"))
    a = ap.parse_args(argv)
    split = hippocampus_validation_split()
    if split is None:
        return 0
    root, train, val = split
    cases = [(read_volume(root / "images" / f.name), read_label_map(f).array > 0) for f in val]
    rows = []
    for n, iso, smooth in CANDIDATES:
        row = {"n_vertices": n, "iso_spacing": iso, "smooth_mm": smooth}
        path = CACHE / f"hippocampus_val_res_{n}_{iso:g}_{smooth:g}.npz"
        if n == 642 and iso == 0.5 and smooth == 0.75:
            path = CACHE / "hippocampus_val_642.npz"        # bench_hippocampus_validation's
        t0 = time.perf_counter()
        if path.exists():
            model = load_model(path)
            row["build"] = "cached"
        else:
            try:
                model, rep = build_model(train, BuildParams(
                    labels=(1, 2), organ="hippocampus", n_vertices=n, iso_spacing=iso,
                    smooth_mm=smooth, images_dir=str(root / "images"), n_jobs=2),
                    root=root / "labels", progress=False)
            except ValueError as exc:
                row.update(build="failed", error=str(exc))
                rows.append(row)
                print(row, flush=True)
                continue
            row["build"] = {"seconds": round(time.perf_counter() - t0, 1),
                            "rejected": len(rep["rejected"])}
            CACHE.mkdir(exist_ok=True)
            save_model(model, path)
        row["n_shapes"] = int(model.n_shapes)
        dic = model.ssc_dictionary("shapes")
        p = SegmentParams(backend="numba")
        t0 = time.perf_counter()
        d = np.array([dice(segment_volume(img, model, p, dic).label, ref) for img, ref in cases])
        row.update(dice_mean=float(d.mean()), dice_min=float(d.min()),
                   dice_median=float(np.median(d)),
                   s_per_case=(time.perf_counter() - t0) / len(cases),
                   dice=[round(float(x), 6) for x in d])
        rows.append(row)
        print({k: v for k, v in row.items() if k != "dice"}, flush=True)
    out = {"benchmark": "hippocampus_resolution_validation_split", "machine": machine(),
           "split": {"model": "cases % 5 not in (0, 1)", "validation": "cases % 5 == 1",
                     "n_cases": len(cases)},
           "chosen_for_small_organs": [642, 0.5, 0.75], "rows": rows}
    print(f"wrote {write_json(a.out, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
