"""Refining KiTS19 label maps that hold both kidneys (a paired organ under one label).

KiTS19's maps, and the networks trained on them, put both kidneys (and their
tumours) under labels 1 and 2. The kidney model holds one side, the right
kidneys mirrored onto the left (``build-model --split-sides``). Before the
paired refinement, ``refine`` fitted one kidney shape to both: "not refined:
the model explains the mask poorly", the input returned unchanged. Now the
mask is split at the patient's midline and each side refined with its own
shape (``shapeprior.segmentation.refine_paired``).

Held-out KiTS19 cases (case number a multiple of 5, never in the model), the
whole map cropped to both kidneys with a 40 mm margin:

* how many held-out maps hold two kidneys side by side (``paired_parts`` with
  the kidney model's ``organ_min_ml``), and how many one organ (a single
  kidney, or kidneys joined across the midline);
* for the first ``--cases`` of those with two: the clean map, and the map with
  a leak blob (``bench_refine.degrade``, leak, severity 2: a 14 mm ball) stuck
  to one kidney, chosen at random; refined as a paired mask
  (``refine_paired``, labels 1,2 as one organ) and as before (one shape for
  both, ``refine_mask``). Dice and mean symmetric surface distance against the
  clean map, for the whole map and for each side (the grid's voxels on that
  side of the middle of the gap between the clean kidneys).

No setting is chosen here (``PAIRED_MIN_FRACTION`` was set before any run).

    python bench/bench_refine_paired.py [--cases 10] [--jobs 2]
    # writes results/refine_paired.json
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from _common import machine, write_json
from bench_refine import degrade, kidney_inputs
from shapeprior.io import read_label_map
from shapeprior.segmentation import (SegmentParams, dice, organ_min_ml, paired_parts,
                                     refine_mask, refine_paired, surface_distances)
from shapeprior.segmentation._paired import _lps_x

HERE = Path(__file__).resolve().parent


def _held_out(root):
    return [c for c in sorted(root.glob("case_*")) if int(c.name.split("_")[1]) % 5 == 0]


def _crop(vol, margin_mm):
    """The label map cropped to its labels' box grown by ``margin_mm`` (labels kept)."""
    idx = np.argwhere(vol.array > 0)
    m = np.ceil(margin_mm / vol.spacing[::-1]).astype(int)
    return vol.crop(np.maximum(idx.min(0) - m, 0),
                    np.minimum(idx.max(0) + m + 1, vol.array.shape))


def _survey(args):
    """``(case, whether its map holds two kidneys side by side, ml per side)``;
    ``args``: the case and the size from which a piece is a kidney (ml)."""
    case, min_ml = args
    vol = read_label_map(case / "segmentation.nii.gz")
    organ = vol.array > 0
    parts = paired_parts(vol, organ, min_ml)
    ml = float(np.prod(vol.spacing)) / 1000.0
    return case.name, parts is not None, (None if parts is None else
                                          {s: round(float(p.sum()) * ml, 1)
                                           for s, p in parts.items()})


def _halves(vol, parts):
    """``{side: the grid's voxels on that side of the middle of the gap between
    the clean map's two kidneys}`` (LPS x): a side's score counts what a leak
    added on its side too."""
    x = _lps_x(vol, tuple(slice(0, n) for n in vol.array.shape), vol.array.shape)
    middle = 0.5 * (x[parts["right"]].max() + x[parts["left"]].min())
    return {"left": x > middle, "right": x <= middle}


def _scores(label, clean, halves, sp):
    out = {"dice": round(dice(label, clean), 4),
           "assd_mm": round(surface_distances(label, clean, sp)["assd_mm"], 3)}
    for side, h in halves.items():
        out[side] = {"dice": round(dice(label & h, clean & h), 4),
                     "assd_mm": round(surface_distances(label & h, clean & h, sp)["assd_mm"], 3)}
    return out


def _one(args):
    case, seed = args
    root, model, dic = kidney_inputs()
    vol = read_label_map(root / case / "segmentation.nii.gz")
    cvol = _crop(vol, margin_mm=40.0)
    clean = cvol.array > 0
    parts = paired_parts(cvol, clean, organ_min_ml(model))   # the clean map's sides
    halves = _halves(cvol, parts)
    sp = cvol.spacing[::-1]
    rng = np.random.default_rng(seed)
    side = ("left", "right")[int(rng.integers(2))]
    rows = []
    for kind in ("clean", "leak"):
        if kind == "clean":
            arr = cvol.array
        else:
            _, arr = degrade(parts[side], sp, "leak", 2, rng, lab=cvol.array * parts[side])
            arr = np.where(arr > 0, arr, np.where(parts[side], 0, cvol.array))
        given = type(cvol)(arr.astype(np.uint8), cvol.spacing, cvol.origin, cvol.direction)
        row = {"case": case, "kind": kind, "leak_side": None if kind == "clean" else side,
               "input": _scores(arr > 0, clean, halves, sp)}
        t0 = time.perf_counter()
        res = refine_paired(given, model, (1, 2), SegmentParams(), None, dic)
        row["paired_s"] = round(time.perf_counter() - t0, 2)
        row["paired"] = _scores(res.label > 0, clean, halves, sp)
        row["paired_status"] = {s: r.fit.status for s, r in res.sides.items()}
        row["paired_reasons"] = {s: r.fit.reasons for s, r in res.sides.items() if r.fit.reasons}
        t0 = time.perf_counter()
        one = refine_mask(given, model, (1, 2), SegmentParams(), None, dic)
        row["one_shape_s"] = round(time.perf_counter() - t0, 2)
        row["one_shape"] = _scores(one.label > 0, clean, halves, sp)
        row["one_shape_status"] = one.fit.status
        row["one_shape_reasons"] = one.fit.reasons
        rows.append(row)
        print(case, kind, row["input"]["dice"], row["paired"]["dice"], row["one_shape"]["dice"],
              flush=True)
    return rows


def _summary(rows, key):
    d = [r[key]["dice"] for r in rows]
    a = [r[key]["assd_mm"] for r in rows]
    sides = [r[key][s]["dice"] for r in rows for s in ("left", "right")]
    return {"dice_mean": round(float(np.mean(d)), 4), "dice_worst": round(float(np.min(d)), 4),
            "assd_mm_mean": round(float(np.mean(a)), 3), "assd_mm_worst": round(float(np.max(a)), 3),
            "side_dice_worst": round(float(np.min(sides)), 4)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "refine_paired.json"))
    a = ap.parse_args(argv)
    got = kidney_inputs()
    if got is None:
        return 1
    root = got[0]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.jobs) as ex:
        min_ml = organ_min_ml(got[1])
        survey = list(ex.map(_survey, [(c, min_ml) for c in _held_out(root)]))
        two = [c for c, p, _ in survey if p][: a.cases]
        rows = [r for rs in ex.map(_one, [(c, i) for i, c in enumerate(two)]) for r in rs]
    summary = {kind: {k: _summary([r for r in rows if r["kind"] == kind], k)
                      for k in ("input", "paired", "one_shape")} for kind in ("clean", "leak")}
    for kind in ("clean", "leak"):
        sel = [r for r in rows if r["kind"] == kind]
        summary[kind]["paired_not_ok"] = sum(any(s != "ok" for s in r["paired_status"].values())
                                             for r in sel)
        summary[kind]["one_shape_not_ok"] = sum(r["one_shape_status"] != "ok" for r in sel)
        summary[kind]["paired_s_mean"] = round(float(np.mean([r["paired_s"] for r in sel])), 2)
        if kind == "leak":          # the side the leak was stuck to
            summary[kind]["leaked_side"] = {k: {
                "dice_mean": round(float(np.mean([r[k][r["leak_side"]]["dice"] for r in sel])), 4),
                "assd_mm_mean": round(float(np.mean([r[k][r["leak_side"]]["assd_mm"]
                                                     for r in sel])), 3),
                "assd_mm_worst": round(float(np.max([r[k][r["leak_side"]]["assd_mm"]
                                                     for r in sel])), 3),
                "worse_than_input": sum(r[k][r["leak_side"]]["assd_mm"]
                                        > r["input"][r["leak_side"]]["assd_mm"] + 0.05
                                        for r in sel)} for k in ("input", "paired")}
    result = {"benchmark": "refine_paired", "machine": machine(),
              "command": "python bench/bench_refine_paired.py " + " ".join(argv or sys.argv[1:]),
              "data": "KiTS19 held-out maps (case number % 5 == 0), whole map cropped to both "
                      "kidneys with a 40 mm margin; labels 1,2 refined as one organ",
              "model": "bench/cache/kidney_model.npz (KiTS19 training split, right kidneys "
                       "mirrored onto the left)",
              "survey": {"maps": len(survey), "two_kidneys_side_by_side": sum(p for _, p, _ in
                                                                              survey),
                         "one_organ": [c for c, p, _ in survey if not p]},
              "degradation": "leak: bench_refine.degrade(kind='leak', severity=2), a 14 mm "
                             "ball stuck to one kidney chosen at random (seeded)",
              "columns": {"input": "the mask as given", "paired": "refine_paired: each side "
                          "with its own side's shape", "one_shape": "refine_mask: one shape "
                          "for both (the behaviour before)"},
              "summary": summary, "time_s": round(time.perf_counter() - t0, 1), "cases": rows}
    write_json(a.out, result)
    for kind in ("clean", "leak"):
        print(kind, summary[kind])
    return 0


if __name__ == "__main__":
    sys.exit(main())
