"""Hippocampus settings on the validation split (issues #11, #13).

The model is built from the cases whose number % 5 is not 0 or 1 (cached in
bench/cache); the 38 cases with number % 5 == 1 are segmented with the
default settings and with each candidate setting. The test split (% 5 == 0,
bench_hippocampus.py) is never used here. Numba backend; Dice against the
manual label (label > 0) and the time of the SSC stage per case. ``--study
tol`` also fits each case seeded 0, 5 and 10 mm off its centre per candidate.

    python bench/bench_hippocampus_validation.py     # writes results/hippocampus_validation.json
    python bench/bench_hippocampus_validation.py --study tol
                                                     # results/hippocampus_validation_tol.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, case_number, hippocampus_split_model,  # noqa: E402
                     hippocampus_validation_split, machine, write_json)

import shapeprior.segmentation._fit as fit_module  # noqa: E402

from shapeprior._profile import StageClock  # noqa: E402
from shapeprior.io import read_label_map, read_volume  # noqa: E402
from shapeprior.segmentation import SegmentParams, dice, segment_volume  # noqa: E402

#: candidate settings (SegmentParams overrides); {} is the default (2 warm-started
#: alignment rounds, 5 cold-started rounds before issue #13's SSC work; the final
#: surface moved by the model's own calibrated offset, 0 before; the voxels next to it
#: decided by the model's voxel classifier, from log-odds smoothed over 0.5 voxel;
#: voxel_smooth 0 before; in two passes, the second from the label the first left and
#: within the first's band, one pass before). Earlier candidates (align_tol 1e-3/1e-2,
#: mode_clamp 3/2, more alignment rounds, other offsets) are in bench/README.md.
CANDIDATES = [{}, {"voxel_passes": 1}, {"voxel_passes": 3}, {"voxel_smooth": 0.0},
              {"voxel_refine": False},
              {"voxel_refine": False, "surface_offset_mm": 0.0},
              {"align_rounds": 5, "warm_align": False}]
#: ``--study tol``: the motion that ends a resolution level. {} is the default
#: (``level_tol``: FIT_TOL_MM at the finest level, times (search range / finest) **
#: LEVEL_TOL_POWER on coarser ones); ``level_tol_power`` sets that power (a module
#: constant, not a parameter); ``tol_mm`` a constant tolerance (0.05: before). Each
#: is run unseeded and seeded (the offsets of bench_seed_offset.py)
TOL_CANDIDATES = [{"tol_mm": 0.05}, {}, {"level_tol_power": 0.75},
                  {"level_tol_power": 1.0}, {"tol_mm": 0.075}, {"tol_mm": 0.1}]


DEFAULT_POWER = fit_module.LEVEL_TOL_POWER


def seeded(model, dic, cases, kw):
    """Each validation case (``(name, image, reference mask)``) seeded at its
    reference centroid moved by 0, 5 and 10 mm (``bench_seed_offset.py``'s seeds;
    the default near_start and margin): ``{"summary": per offset, "rows": [...]}``."""
    from bench_seed_offset import HIPPO_OFFSETS, _seeds, _summary

    rows = []
    for name, img, ref in cases:
        for off, seed in _seeds(img, ref, HIPPO_OFFSETS, np.random.default_rng(case_number(name))):
            r = segment_volume(img, model, SegmentParams(backend="numba", seed_mm=tuple(seed),
                                                         **kw), dic)
            rows.append({"case": name, "offset_mm": off, "dice": round(dice(r.label, ref), 4),
                         "status": r.status})
    return {"summary": _summary(rows, "offset_mm"), "rows": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", choices=("settings", "tol"), default="settings",
                    help="the candidates: CANDIDATES, or TOL_CANDIDATES")
    ap.add_argument("--out", default=None, help="default results/hippocampus_validation.json "
                    "(--study tol: results/hippocampus_validation_tol.json)")
    a = ap.parse_args(argv)
    out_path = a.out or str(RESULTS / ("hippocampus_validation.json" if a.study == "settings"
                                       else "hippocampus_validation_tol.json"))
    candidates = CANDIDATES if a.study == "settings" else TOL_CANDIDATES
    split = hippocampus_validation_split()
    if split is None:
        return 0
    root, _, val = split
    model = hippocampus_split_model("validation", root)
    dic = model.ssc_dictionary("shapes")
    cases = [(f.name, read_volume(root / "images" / f.name), read_label_map(f).array > 0)
             for f in val]
    rows = []
    for cfg in candidates:
        power = cfg.get("level_tol_power", DEFAULT_POWER)
        fit_module.LEVEL_TOL_POWER = power
        kw = {k: v for k, v in cfg.items() if k != "level_tol_power"}
        p = SegmentParams(backend="numba", **kw)
        d, ssc, iters = [], 0.0, 0
        t0 = time.perf_counter()
        for _, img, ref in cases:
            clock = StageClock()
            d.append(dice(segment_volume(img, model, p, dic, clock=clock).label, ref))
            ssc += clock.as_dict().get("ssc", {}).get("seconds", 0.0)
            iters += clock.as_dict().get("ssc", {}).get("calls", 0)
        d = np.array(d)
        row = {"settings": cfg, "dice_mean": float(d.mean()), "dice_min": float(d.min()),
               "dice_median": float(np.median(d)), "ssc_s_per_case": ssc / len(cases),
               "ssc_calls_per_case": iters / len(cases),
               "s_per_case": (time.perf_counter() - t0) / len(cases),
               "dice": [round(float(x), 6) for x in d]}
        if a.study == "tol":
            row["level_tol_power"] = power      # the module constant (unused with tol_mm)
            row["seeded"] = seeded(model, dic, cases, kw)
        rows.append(row)
        shown = {k: v for k, v in row.items() if k not in ("dice", "seeded")}
        if "seeded" in row:
            shown["seeded"] = row["seeded"]["summary"]
        print(json.dumps(shown), flush=True)
    fit_module.LEVEL_TOL_POWER = DEFAULT_POWER
    out = {"benchmark": "hippocampus_validation_split", "machine": machine(),
           "split": {"model": "cases % 5 not in (0, 1)", "n_model_shapes": model.n_shapes,
                     "validation": "cases % 5 == 1", "n_cases": len(cases),
                     "cases": [c[0] for c in cases]},
           "backend": "numba", "study": a.study, "rows": rows}
    print(f"wrote {write_json(out_path, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
