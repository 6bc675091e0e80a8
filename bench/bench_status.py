"""Does the status say what happened? Hippocampus MR fits that work and fits that
fail, against the result's status and its appearance (profile) score (issue #11).

Per case, six runs of ``segment_volume`` (Numba backend):

* ``search``: the default (placement search over the field of view);
* ``seed+0``, ``seed+5``, ``seed+10``, ``seed+15``: seeded at the reference's
  centroid moved by 0 / 5 / 10 / 15 mm in a random direction (fixed per case):
  a wrong start that the fit recovers from or not;
* ``no organ``: the image replaced by Gaussian noise of its own mean and
  standard deviation, same grid: there is nothing to find.

A run is *good* when its Dice with the manual label is at least 0.75 and *bad*
when it is below 0.5 or the image holds no organ. The status should never be
``ok`` for a bad run (a false ok) and should not be ``failed`` for a good one
(a false alarm). The profile-score thresholds of ``_assess.QUALITY_FAILED`` /
``QUALITY_SUSPECT`` are swept on the validation split (number % 5 == 1, its own
model, as bench_hippocampus_validation.py) and reported with the committed
values on the test split (number % 5 == 0, bench_hippocampus.py's model).

    python bench/bench_status.py            # writes results/status.json
    python bench/bench_status.py --split validation --cases 10 --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, case_number, data_root, hippocampus_split_model,  # noqa: E402
                     machine, write_json)

from shapeprior.io import Volume, read_label_map, read_volume  # noqa: E402
from shapeprior.model import find_label_maps  # noqa: E402
from shapeprior.segmentation import SegmentParams, dice, segment_volume  # noqa: E402
from shapeprior.segmentation import _assess  # noqa: E402

OFFSETS_MM = (0.0, 5.0, 10.0, 15.0)
GOOD_DICE, BAD_DICE = 0.75, 0.5
SWEEP = [round(v, 2) for v in np.arange(0.30, 0.951, 0.05)]


def _runs(name, img, ref, rng):
    """(run name, volume, params overrides, organ present) for one case."""
    centre = img.index_to_physical(np.argwhere(ref).mean(0)[::-1][None])[0]
    u = rng.normal(size=3)
    u /= np.linalg.norm(u)
    out = [("search", img, {}, True)]
    for d in OFFSETS_MM:
        # the fit held at the seed (near_start 0: no position near it is tried), so
        # that the offsets give the misplaced fits the status must tell apart
        out.append((f"seed+{d:g}", img, {"seed_mm": tuple(centre + d * u), "near_start": 0.0},
                    True))
    a = img.array.astype(np.float32)
    noise = rng.normal(float(a.mean()), float(a.std()), a.shape).astype(np.float32)
    out.append(("no organ", Volume(noise, img.spacing, img.origin, img.direction), {}, False))
    return out


def run_split(split, n_cases, seed=0):
    root = data_root() / "msd_hippocampus"
    model = hippocampus_split_model(split, root)
    dic = model.ssc_dictionary("shapes")
    rem = 1 if split == "validation" else 0
    files = [f for f in find_label_maps(root / "labels") if case_number(f) % 5 == rem][:n_cases]
    rows = []
    for f in files:
        img = read_volume(root / "images" / f.name)
        ref = read_label_map(f).array > 0
        rng = np.random.default_rng([seed, case_number(f)])
        for run, vol, over, present in _runs(f.name, img, ref, rng):
            res = segment_volume(vol, model, SegmentParams(backend="numba", **over), dic)
            dsc = float(dice(res.label, ref)) if present else 0.0
            rows.append({"case": f.name.split(".")[0], "run": run, "organ_present": present,
                         "dice": dsc, "status": res.status, "quality": float(res.quality),
                         "overridden_max": float(res.overridden_fraction_max),
                         "voxels_kept": res.evidence.get("voxels_kept"),
                         "inside_background": res.evidence.get("surface_inside_background"),
                         "reasons": list(res.reasons)})
        print(f"{split} {f.name}: " + " ".join(
            f"{r['run']}={r['dice']:.2f}/{r['status'][0]}/{r['quality']:.2f}"
            for r in rows[-len(OFFSETS_MM) - 2:]), flush=True)
    return rows


def classes(rows):
    good = np.array([r["organ_present"] and r["dice"] >= GOOD_DICE for r in rows])
    bad = np.array([(not r["organ_present"]) or r["dice"] < BAD_DICE for r in rows])
    return good, bad


def confusion(rows):
    good, bad = classes(rows)
    st = np.array([r["status"] for r in rows])
    out = {"runs": len(rows), "good": int(good.sum()), "bad": int(bad.sum()),
           "between": int((~good & ~bad).sum())}
    for cls, m in (("good", good), ("bad", bad), ("between", ~good & ~bad)):
        out[f"status_of_{cls}"] = {s: int(np.sum(st[m] == s)) for s in ("ok", "suspect", "failed")}
    out["false_ok"] = int(np.sum(bad & (st == "ok")))
    out["false_failed"] = int(np.sum(good & (st == "failed")))
    return out


def sweep(rows):
    """What the profile-score thresholds alone would do: for each threshold t,
    bad runs scoring >= t (would pass the check) and good runs scoring < t."""
    good, bad = classes(rows)
    q = np.array([r["quality"] for r in rows])
    return [{"threshold": t, "bad_at_or_above": int(np.sum(bad & (q >= t))),
             "good_below": int(np.sum(good & (q < t)))} for t in SWEEP]


def kept_sweep(rows):
    """What a threshold t on the share of the fitted surface's voxels that the voxel
    classifier kept would do alone: bad runs keeping >= t, good runs keeping < t."""
    good, bad = classes(rows)
    k = np.array([np.nan if r.get("voxels_kept") is None else r["voxels_kept"] for r in rows])
    return [{"threshold": t, "bad_at_or_above": int(np.sum(bad & (k >= t))),
             "good_below": int(np.sum(good & (k < t)))}
            for t in [round(v, 2) for v in np.arange(0.1, 0.951, 0.05)]]


def summary(rows):
    good, bad = classes(rows)
    q = np.array([r["quality"] for r in rows])
    pct = lambda m: [float(v) for v in np.percentile(q[m], [0, 5, 50, 95, 100])] \
        if m.any() else None  # noqa: E731
    return {"confusion": confusion(rows), "profile_quality_good_pct_0_5_50_95_100": pct(good),
            "profile_quality_bad_pct_0_5_50_95_100": pct(bad), "sweep": sweep(rows),
            "voxels_kept_sweep": kept_sweep(rows),
            "by_run": {run: confusion([r for r in rows if r["run"] == run])
                       for run in dict.fromkeys(r["run"] for r in rows)}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="both", choices=("validation", "test", "both"))
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--out", default=str(RESULTS / "status.json"))
    a = ap.parse_args(argv)
    if not (data_root() / "msd_hippocampus").is_dir():
        print(f"SKIP: MSD hippocampus not found under {data_root()} (set SHAPEPRIOR_DATA)")
        return 0
    res = {"benchmark": "status", "machine": machine(),
           "thresholds": {"failed": _assess.QUALITY_FAILED["profile"],
                          "suspect": _assess.QUALITY_SUSPECT["profile"]},
           "good_dice": GOOD_DICE, "bad_dice": BAD_DICE, "offsets_mm": list(OFFSETS_MM),
           "splits": {}}
    for split in (("validation", "test") if a.split == "both" else (a.split,)):
        rows = run_split(split, a.cases)
        res["splits"][split] = {"summary": summary(rows), "rows": rows}
        c = res["splits"][split]["summary"]["confusion"]
        print(f"{split}: {c['runs']} runs, good {c['good']} bad {c['bad']}; false ok "
              f"{c['false_ok']}, false failed {c['false_failed']}; good {c['status_of_good']}, "
              f"bad {c['status_of_bad']}", flush=True)
    print(f"wrote {write_json(a.out, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
