"""The motion that ends a resolution level (``tol_mm``) on the kidney CTs: the
default (``level_tol``: 0.1, 0.071 and 0.05 mm on the levels of the default
schedule, chosen on the hippocampus validation split by
``bench_hippocampus_validation.py --study tol``) against a constant 0.05 mm, the
default before it (issue #13).

Workloads (``bench_region_slack.kidney_cases``; the cached KiTS model, numba):
the ct512 CT's left kidney seeded at its reference centroid (positions near the
seed not tried, as ``bench_pipeline.py`` times it), seeded 10 mm off, and
without a seed; the TotalSegmentator example CT's two kidneys (3 mm grid)
without a seed, against its 3 mm network's labels. Each runs ``--rounds`` times each way, interleaved. Per way:
median fit time (the stages prepare to voxelize), SSC stage and its calls
(one per iteration), iterations, Dice against the reference and status. None
of these CTs chose the value: they check it.

    python bench/bench_level_tol.py       # writes results/level_tol.json
    # needs bench/cache/kidney_model.npz (bench_robustness.py) and the shared data
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_json  # noqa: E402
from bench_region_slack import kidney_cases  # noqa: E402
from bench_ssc_stage import kidney_dictionary  # noqa: E402

from shapeprior._profile import StageClock  # noqa: E402
from shapeprior.segmentation import SegmentParams, dice, segment_volume  # noqa: E402
from shapeprior.segmentation._fit import level_tol  # noqa: E402

FIT_STAGES = ("prepare", "place", "search", "ssc", "refine", "voxelize", "voxels")
WAYS = {"default": None, "before (0.05 mm)": 0.05}


def fit_once(vol, ref, model, dic, params):
    """One fit: its stage times, SSC calls, iterations, Dice and status."""
    clock = StageClock()
    t0 = time.perf_counter()
    r = segment_volume(vol, model, params, dic, clock=clock)
    total = time.perf_counter() - t0
    st = clock.as_dict()
    return {"total_s": total,
            "fit_s": sum(st[k]["seconds"] for k in FIT_STAGES if k in st),
            "ssc_s": st.get("ssc", {}).get("seconds", 0.0),
            "ssc_calls": st.get("ssc", {}).get("calls", 0),
            "iterations": r.n_iter, "dice": float(dice(r.label, ref)), "status": r.status}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=str(RESULTS / "level_tol.json"))
    a = ap.parse_args(argv)
    model, dic = kidney_dictionary()
    cases = kidney_cases()
    rows = []
    for name, vol, ref, kw in cases:
        params = {w: SegmentParams(**kw, tol_mm=tol) for w, tol in WAYS.items()}
        fit_once(vol, ref, model, dic, params["default"])        # JIT, caches
        runs = {w: [] for w in WAYS}
        for _ in range(a.rounds if name.startswith("ct512") else max(1, a.rounds // 3)):
            for w, p in params.items():
                runs[w].append(fit_once(vol, ref, model, dic, p))
        row = {"case": name, "rounds": len(runs["default"])}
        for w, rs in runs.items():
            same = len({(r["dice"], r["status"]) for r in rs}) == 1
            row[w] = {"fit_s_median": float(np.median([r["fit_s"] for r in rs])),
                      "total_s_median": float(np.median([r["total_s"] for r in rs])),
                      "ssc_s_median": float(np.median([r["ssc_s"] for r in rs])),
                      "ssc_calls": rs[0]["ssc_calls"], "iterations": rs[0]["iterations"],
                      "dice": rs[0]["dice"], "status": rs[0]["status"],
                      "same_result_every_round": same}
        row["fit_speedup"] = row["before (0.05 mm)"]["fit_s_median"] / row["default"]["fit_s_median"]
        rows.append(row)
        d, b = row["default"], row["before (0.05 mm)"]
        print(f"{name}: fit {b['fit_s_median']:.3f} -> {d['fit_s_median']:.3f} s, "
              f"SSC calls {b['ssc_calls']} -> {d['ssc_calls']}, Dice {b['dice']:.4f} -> "
              f"{d['dice']:.4f} ({b['status']} -> {d['status']})", flush=True)
    out = {"benchmark": "level_tol", "machine": machine(),
           "command": "python bench/bench_level_tol.py", "backend": "numba",
           "default_tol_mm_per_level": {str(sm): level_tol(SegmentParams(), sm)
                                        for sm, _ in SegmentParams().schedule},
           "model": "KiTS19 training split (bench_robustness cache)", "rows": rows}
    print(f"wrote {write_json(a.out, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
