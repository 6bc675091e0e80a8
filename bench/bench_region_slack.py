"""How far beyond the mesh a level's smoothed region reaches (``SLACK_MM``):
fit time against crops, the same segmentations (issue #13).

Each resolution level smooths a crop of the image around the mesh: its
bounding box grown by the search reach, the filter's support and a slack that
lets the mesh move without a new crop (``shapeprior/appearance/_levels.py``).
Inside the crop the values are those of the whole-image filter, so the slack
changes only the time: a larger one smooths more voxels once, a smaller one
crops again when the mesh moves further. This benchmark runs each workload
with every slack, interleaved (``--repeat`` rounds), and records per slack the
median fit time (``segment_volume``, numba), the time spent cropping and
smoothing, the crops made and their voxels, and a hash of the label map, which
must be the same for every slack.

Workloads (the segmentations the time is spent on):

* ``ct512_seeded``: ``bench_pipeline.py``'s ct512 case (TotalSegmentator example
  CT resampled to 512 x 512 x 300, left kidney, oracle centroid seed, the fit
  alone: near_start 0);
* ``ct512_seed_10mm``: the same with the seed 10 mm off in a fixed direction and
  the defaults (positions near the seed tried first);
* ``ct512_noseed``: no seed (the placement search over the field of view,
  several hypotheses, each with its own regions);
* ``example_ct``: the example CT itself (3 mm grid), each kidney without a seed;
* ``hippocampus``: the first ``--hippocampus`` MSD validation cases (number % 5
  == 1) with the validation split's model, no seed (small MR crops).

    python bench/bench_region_slack.py      # writes results/region_slack.json
    # needs bench/cache/kidney_model.npz (bench_robustness.py) and the shared data
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, data_root, hippocampus_split_model,  # noqa: E402
                     hippocampus_validation_split, machine, write_json)

import shapeprior.appearance._levels as levels  # noqa: E402
from bench_ssc_stage import kidney_dictionary  # noqa: E402
from shapeprior.io import read_label_map, read_volume  # noqa: E402
from shapeprior.segmentation import SegmentParams, dice, segment_volume  # noqa: E402

HERE = Path(__file__).resolve().parent
SLACKS = (0.0, 5.0, 10.0, 15.0, 20.0)
CT = dict(normalisation="ct", window=(-0.05, 0.15), inside_brighter=True, backend="numba")


class CropMeter:
    """Counts the crops ``LevelImage._build`` makes, their voxels and seconds."""

    def __init__(self):
        self.original = levels.LevelImage._build
        self.reset()

    def reset(self):
        self.crops, self.voxels, self.seconds = 0, 0, 0.0

    def __enter__(self):
        meter = self

        def build(level, lo, hi):
            t0 = time.perf_counter()
            out = meter.original(level, lo, hi)
            meter.seconds += time.perf_counter() - t0
            meter.crops += 1
            meter.voxels += int(np.prod(np.asarray(hi) - np.asarray(lo) + 1))
            return out

        levels.LevelImage._build = build
        return self

    def __exit__(self, *exc):
        levels.LevelImage._build = self.original


def set_slack(mm):
    """The slack of every new crop that is not given its own (the fit's, the
    placement's scoring)."""
    levels.SLACK_MM = float(mm)


def ct512_left_kidney(work=HERE / "cache" / "region_slack"):
    """``bench_pipeline.py``'s ct512 CT (made in ``work`` once), its left kidney's
    reference mask and that mask's centroid (LPS mm)."""
    from bench_pipeline import ct512_left_kidney as ct512_case

    work.mkdir(parents=True, exist_ok=True)
    return ct512_case(work)[1:]


def kidney_cases():
    """``[(name, volume, reference mask, params)]`` on the kidney model's CTs."""
    vol, ref, centre = ct512_left_kidney()
    off = centre + 10.0 * np.array([1.0, 1.0, 1.0]) / np.sqrt(3.0)
    cases = [("ct512_seeded", vol, ref, dict(seed_mm=tuple(centre), side="left",
                                              near_start=0.0, **CT)),
             ("ct512_seed_10mm", vol, ref, dict(seed_mm=tuple(off), side="left", **CT)),
             ("ct512_noseed", vol, ref, dict(side="left", **CT))]
    d = data_root() / "totalsegmentator_example"
    ct = read_volume(d / "example_ct.nii.gz")
    lab = read_label_map(d / "example_seg_fast_force_split.nii.gz").array
    for side, value in (("right", 2), ("left", 3)):
        cases.append((f"example_ct_{side}", ct, lab == value, dict(side=side, **CT)))
    return cases


def hippocampus_cases(n):
    got = hippocampus_validation_split()
    if got is None or n <= 0:
        return [], None
    root, _, val = got
    cases = [(f"hippocampus_{f.name.split('.')[0][-3:]}", read_volume(root / "images" / f.name),
              read_label_map(f).array > 0, dict(backend="numba")) for f in val[:n]]
    return cases, hippocampus_split_model("validation", root)


def run(case, model, dic, meter):
    _, vol, ref, p = case
    meter.reset()
    t0 = time.perf_counter()
    r = segment_volume(vol, model, SegmentParams(**p), dic)
    t = time.perf_counter() - t0
    digest = hashlib.sha256(np.ascontiguousarray(r.label).tobytes()).hexdigest()[:16]
    return {"fit_s": t, "smooth_s": meter.seconds, "crops": meter.crops,
            "mvoxels": meter.voxels / 1e6, "dice": float(dice(r.label, ref)),
            "status": r.status, "label_sha256_16": digest}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--hippocampus", type=int, default=6)
    ap.add_argument("--slacks", type=float, nargs="+", default=list(SLACKS))
    ap.add_argument("--out", default=str(RESULTS / "region_slack.json"))
    a = ap.parse_args(argv)
    kidney, kdic = kidney_dictionary()
    groups = [(kidney, kdic, kidney_cases())]
    hcases, hmodel = hippocampus_cases(a.hippocampus)
    if hcases:
        groups.append((hmodel, hmodel.ssc_dictionary("shapes", backend="numba"), hcases))
    default = levels.SLACK_MM
    rows = {}
    with CropMeter() as meter:
        for model, dic, cases in groups:          # compile and warm up, untimed
            run(cases[0], model, dic, meter)
        for rep in range(a.repeat):
            order = a.slacks if rep % 2 == 0 else a.slacks[::-1]
            for slack in order:
                set_slack(slack)
                for model, dic, cases in groups:
                    for case in cases:
                        rows.setdefault(case[0], {}).setdefault(str(slack), []).append(
                            run(case, model, dic, meter))
            print(f"round {rep + 1}/{a.repeat} done", flush=True)
    set_slack(default)
    workloads, same = {}, True
    for name, by_slack in rows.items():
        out = {}
        for slack, runs in by_slack.items():
            hashes = {r["label_sha256_16"] for r in runs}
            out[slack] = {"fit_s_median": float(np.median([r["fit_s"] for r in runs])),
                          "smooth_s_median": float(np.median([r["smooth_s"] for r in runs])),
                          "crops": runs[0]["crops"], "mvoxels": round(runs[0]["mvoxels"], 2),
                          "dice": round(runs[0]["dice"], 6), "status": runs[0]["status"],
                          "label_sha256_16": sorted(hashes)}
        labels = {h for v in out.values() for h in v["label_sha256_16"]}
        same &= len(labels) == 1
        workloads[name] = {"same_label_for_every_slack": len(labels) == 1, "slacks": out}
        print(name, "  ".join(f"{s}: {v['fit_s_median']:.3f} s ({v['crops']} crops, "
                              f"{v['mvoxels']:.1f} Mvox)" for s, v in out.items()), flush=True)
    totals = {str(s): float(sum(w["slacks"][str(s)]["fit_s_median"] for w in workloads.values()))
              for s in a.slacks}
    result = {"benchmark": "region_slack", "machine": machine(),
              "command": "python bench/bench_region_slack.py", "repeats": a.repeat,
              "default_slack_mm": default, "same_label_for_every_slack": same,
              "timing": "median over the interleaved rounds of segment_volume's wall time; "
                        "smooth_s: inside LevelImage._build (crop, normalise, smooth)",
              "total_fit_s_by_slack": totals, "workloads": workloads}
    print(f"wrote {write_json(a.out, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
