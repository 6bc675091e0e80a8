"""The placement's scoring of candidate surfaces: a crop's point box and the
background lookup on contiguous rows, against the (N, 3) reductions they
replaced, in the same run (issue #13).

Each placement candidate batch (27 positions x 400 vertices on a hippocampus
MR) asks ``LevelImage._required_box`` for the box of its 10,800 points and
``Background.contains`` whether their insides lie in the air around the body.
Both used to reduce and round an (N, 3) array along its long axis, which NumPy
does 3 values at a time. ``previous`` puts those versions back (copied here);
``current`` is the code as it is. Six hippocampus validation cases (the
validation model, numba), both ways interleaved, ``--rounds`` rounds: the
median ``place`` stage and fit time per case, and whether the label maps are
the same.

    python bench/bench_place_scoring.py      # writes results/place_scoring.json
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, hippocampus_split_model, hippocampus_validation_split,  # noqa: E402
                     machine, write_json)

import shapeprior.appearance._background as background  # noqa: E402
import shapeprior.appearance._levels as levels  # noqa: E402
from shapeprior._profile import StageClock  # noqa: E402
from shapeprior.io import read_volume  # noqa: E402
from shapeprior.segmentation import SegmentParams, segment_volume  # noqa: E402


def previous_required_box(self, verts, reach_mm, slack_mm):
    """``LevelImage._required_box`` before: min and max over an (N, 3) array."""
    vol = self.vol
    sp = vol.spacing[::-1]
    idx = vol.physical_to_index(verts)[:, ::-1]
    margin = (reach_mm + slack_mm + levels.TRUNCATE * self.sigma_mm) / sp + 2
    shape = np.array(vol.array.shape)
    lo = np.clip(np.floor(idx.min(0) - margin), 0, shape - 1).astype(int)
    hi = np.clip(np.ceil(idx.max(0) + margin), 0, shape - 1).astype(int)
    hi = np.maximum(hi, np.minimum(lo + 1, shape - 1))
    lo = np.minimum(lo, hi - 1)
    return lo, hi


def previous_contains(self, points):
    """``Background.contains`` before: rounding and tests on an (N, 3) array."""
    ijk = (np.asarray(points, dtype=float) - self.vol.origin) @ self._inv.T
    zyx = np.rint(ijk[:, ::-1] / np.array(self.strides)).astype(np.int64)
    shape = np.array(self.mask.shape)
    inside = np.all((zyx >= 0) & (zyx < shape), axis=1)
    out = np.zeros(len(zyx), dtype=bool)
    z = zyx[inside]
    out[inside] = self.mask[z[:, 0], z[:, 1], z[:, 2]]
    return out


WAYS = {"current": (levels.LevelImage._required_box, background.Background.contains),
        "previous": (previous_required_box, previous_contains)}


def fit(img, model, dic, way):
    """One fit with the scoring functions of ``way``: (place s, fit s, label hash)."""
    levels.LevelImage._required_box, background.Background.contains = WAYS[way]
    try:
        clock = StageClock()
        t0 = time.perf_counter()
        r = segment_volume(img, model, SegmentParams(backend="numba"), dic, clock=clock)
        total = time.perf_counter() - t0
    finally:
        levels.LevelImage._required_box, background.Background.contains = WAYS["current"]
    place = clock.as_dict().get("place", {}).get("seconds", 0.0)
    return place, total, hashlib.sha256(np.ascontiguousarray(r.label).tobytes()).hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "place_scoring.json"))
    a = ap.parse_args(argv)
    split = hippocampus_validation_split()
    if split is None:
        return 0
    root, _, val = split
    model = hippocampus_split_model("validation", root)
    dic = model.ssc_dictionary("shapes")
    cases = [(f.name, read_volume(root / "images" / f.name)) for f in val[:a.cases]]
    for _, img in cases[:2]:
        fit(img, model, dic, "current")                      # JIT, caches
    runs = {w: {name: [] for name, _ in cases} for w in WAYS}
    for _ in range(a.rounds):
        for name, img in cases:
            for w in WAYS:
                runs[w][name].append(fit(img, model, dic, w))
    rows = []
    for name, _ in cases:
        row = {"case": name}
        for w in WAYS:
            rs = runs[w][name]
            row[w] = {"place_s_median": float(np.median([r[0] for r in rs])),
                      "fit_s_median": float(np.median([r[1] for r in rs]))}
        row["same_labels"] = len({r[2] for w in WAYS for r in runs[w][name]}) == 1
        rows.append(row)
    summary = {w: {"place_s_mean_of_medians": float(np.mean([r[w]["place_s_median"]
                                                              for r in rows])),
                   "fit_s_mean_of_medians": float(np.mean([r[w]["fit_s_median"]
                                                           for r in rows]))} for w in WAYS}
    summary["place_speedup"] = (summary["previous"]["place_s_mean_of_medians"]
                                / summary["current"]["place_s_mean_of_medians"])
    summary["all_labels_same"] = all(r["same_labels"] for r in rows)
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()
           if not isinstance(v, dict)},
          {w: {k: round(v, 4) for k, v in summary[w].items()} for w in WAYS})
    out = {"benchmark": "place_scoring", "machine": machine(),
           "command": "python bench/bench_place_scoring.py", "backend": "numba",
           "data": f"MSD hippocampus validation split, first {len(cases)} cases; "
                   "validation model", "rounds": a.rounds, "summary": summary, "rows": rows}
    print(f"wrote {write_json(a.out, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
