"""Hippocampus segmentation on real MR (MSD Task04, shared subset).

Trains on cases whose number is not a multiple of 5 (labels + images:
shape model and boundary appearance), segments every held-out case (number a
multiple of 5, never seen in training) with the default parameters, and
reports Dice and surface distances against the manual labels (label > 0).

    python bench/bench_hippocampus.py          # writes results/hippocampus.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from _common import case_number, data_root, hippocampus_model_files
from shapeprior.io import read_label_map, read_volume
from shapeprior.model import BuildParams, build_model, find_label_maps, load_model, save_model
from shapeprior.segmentation import (SegmentParams, dice, segment_volume, surface_distances,
                                     voxelize)

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--vertices", type=int, default=642)
    ap.add_argument("--tol-mm", type=float, default=None,
                    help="SegmentParams.tol_mm (default: the segmentation's default)")
    ap.add_argument("--out", default=str(HERE / "results" / "hippocampus.json"))
    a = ap.parse_args(argv)
    root = data_root()
    root = root / "msd_hippocampus"
    if not root.is_dir():
        print(f"MSD hippocampus not found under {root} (set SHAPEPRIOR_DATA)", file=sys.stderr)
        return 2
    train = hippocampus_model_files("test", root)
    test = [f for f in find_label_maps(root / "labels") if case_number(f) % 5 == 0]
    cache = HERE / "cache"
    cache.mkdir(exist_ok=True)
    mpath = cache / f"hippocampus_{a.vertices}.npz"
    t0 = time.perf_counter()
    if mpath.exists():
        model = load_model(mpath)
        build = json.loads((cache / f"hippocampus_{a.vertices}.report.json").read_text())
    else:
        model, build = build_model(train, BuildParams(
            labels=(1, 2), organ="hippocampus", n_vertices=a.vertices, iso_spacing=0.5,
            smooth_mm=0.75, images_dir=str(root / "images"), n_jobs=a.n_jobs), root=root / "labels")
        save_model(model, mpath)
        (cache / f"hippocampus_{a.vertices}.report.json").write_text(json.dumps(build, indent=1))
    t_build = time.perf_counter() - t0
    dic = model.ssc_dictionary("shapes")
    params = SegmentParams(tol_mm=a.tol_mm)
    # JIT warm-up on a training case (not timed, not scored)
    segment_volume(read_volume(root / "images" / train[0].name), model, params, dic)
    rows = []
    for f in test:
        img = read_volume(root / "images" / f.name)
        ref = read_label_map(f).array > 0
        r = segment_volume(img, model, params, dic)
        sd = surface_distances(r.label, ref, img.spacing)
        # the voxelised surface alone (before the model's voxel classifier)
        surface = voxelize(r.verts, r.faces, img)
        rows.append({"case": f.name, "dice": dice(r.label, ref), **sd, "time_s": r.time_s,
                     "dice_surface_only": dice(surface, ref), "voxels_changed": r.voxels_changed,
                     "iterations": r.n_iter, "converged": r.converged,
                     "overridden_fraction": r.overridden_fraction})
        print(f"{f.name}: Dice {rows[-1]['dice']:.3f} ASSD {sd['assd_mm']:.2f} mm "
              f"{r.time_s:.2f} s", flush=True)
    d = np.array([r["dice"] for r in rows])
    t = np.array([r["time_s"] for r in rows])
    out = {
        "benchmark": "hippocampus", "data": "MSD Task04 hippocampus (shared subset), label > 0",
        "split": "train: case number % 5 != 0; test: case number % 5 == 0",
        "n_train_shapes": int(model.shapes.shape[0]), "n_test": len(rows),
        "rejected_in_build": build.get("rejected"), "build_time_s": t_build,
        "dice": {"mean": float(d.mean()), "median": float(np.median(d)), "min": float(d.min()),
                 "fraction_ge_0.85": float(np.mean(d >= 0.85))},
        "dice_surface_only": {"mean": float(np.mean([r["dice_surface_only"] for r in rows])),
                              "min": float(np.min([r["dice_surface_only"] for r in rows]))},
        "voxel_classifier": model.voxels.info if model.voxels is not None else None,
        "assd_mm_mean": float(np.mean([r["assd_mm"] for r in rows])),
        "hd95_mm_mean": float(np.mean([r["hd95_mm"] for r in rows])),
        "time_s": {"mean": float(t.mean()), "max": float(t.max())},
        "goal": {"dice_mean": 0.88, "dice_min": 0.80, "time_s_per_case": 1.0},
        "cpu": os.cpu_count(), "tol_mm": params.tol_mm, "cases": rows,
    }
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"Dice mean {d.mean():.3f} (median {np.median(d):.3f}), ASSD {out['assd_mm_mean']:.2f} mm,"
          f" {t.mean():.2f} s/case; wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
