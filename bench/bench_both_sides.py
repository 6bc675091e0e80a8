"""Both kidneys in one run (``segment --side both``) on real CT, with the
KiTS19-built model and segment's defaults: is each kidney in view found, and
is each kidney out of view left out of the label and named, without calling
the case ``ok``?

Scans: the TotalSegmentator example CT (NIfTI, and the same scan written as
a DICOM series), its 30-slice crop ``example_ct_sm`` (both kidneys cut by the
field of view), the example CT cut at the body's midline between the kidneys
(each half holds one kidney: a stand-in for a nephrectomy or a lateral crop),
the protocol variants and kidney-free slabs of ``bench_totalseg_ct.py``, the
example DICOM slab (upper abdomen, no kidney), an MSD hippocampus MR crop and
the example abdominal MR. References: TotalSegmentator's own output (labels
2 right, 3 left), not manual labels.

A kidney counts as *found* when its side is in the label and its Dice against
its own reference is at least 0.8; as *left out* when its side is not in the
label. The baseline is the single-side runs (``--side left`` and ``--side
right``): the tests check that each side of ``both`` is exactly that run, so
the accuracy rows are theirs, and what this benchmark adds is the case's
status and label.

    python bench/bench_both_sides.py     # needs bench/cache/kidney_model.npz
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from _common import data_root, machine, write_json
from bench_totalseg_ct import _crop, example_ct, variants
from shapeprior.io import read_image, read_label_map, read_volume
from shapeprior.segmentation import SegmentParams, dice, segment_volume

HERE = Path(__file__).resolve().parent
#: a kidney in view is found when its side's Dice reaches this
FOUND_DICE = 0.8
LABELS = {"right": 2, "left": 3}


def _row(name, res, vol, seg, t):
    """One scan's row: the case's status, which sides the label holds, each
    side's status and Dice against its own reference (None: the reference has
    none of that kidney in view), and the label's Dice against both."""
    sides = {}
    for side, f in res.sides.items():
        ref = None if seg is None else seg == LABELS[side]
        in_view = ref is not None and bool(ref.any())
        sides[side] = {"status": f.status, "quality": round(float(f.quality), 4),
                       "in_label": side in res.in_label, "kidney_in_view": in_view,
                       "dice": round(dice(f.label, ref), 4) if in_view else None,
                       "volume_ml": round(float(np.count_nonzero(f.label))
                                          * float(np.prod(vol.spacing)) / 1000, 1),
                       "reasons": f.reasons}
    row = {"scan": name, "status": res.status, "in_label": res.in_label, "sides": sides,
           "overlap_ml": res.evidence.get("overlap_ml"), "time_s": round(t, 2)}
    if seg is not None and np.isin(seg, list(LABELS.values())).any():
        row["dice_both"] = round(dice(res.label, np.isin(seg, list(LABELS.values()))), 4)
    return row


def _verdict(row):
    """How each kidney went: found / missed (in view) and left out / kept
    (out of view)."""
    out = {}
    for side, s in row["sides"].items():
        if s["kidney_in_view"]:
            out[side] = "found" if s["in_label"] and s["dice"] >= FOUND_DICE else "missed"
        else:
            out[side] = "left out" if not s["in_label"] else "kept (a false kidney)"
    return out


def main(argv=None):
    root = data_root()
    d = root / "totalsegmentator_example"
    loaded = example_ct()
    if loaded is None:
        return 2
    model, dic, ct, seg, ct_dicom = loaded
    seg = seg.array
    # the column halfway between the kidneys (index x): each side of it holds one
    cols = {s: np.flatnonzero((seg == v).any((0, 1))) for s, v in LABELS.items()}
    lo, hi = sorted((cols["left"], cols["right"]), key=lambda c: c.min())
    mid = (int(lo.max()) + int(hi.min())) // 2
    full = slice(None)
    scans = [("example_ct.nii.gz", ct, seg), ("example_ct as a DICOM series", ct_dicom, seg),
             ("example_ct_sm (30 slices, both kidneys cut)",
              read_volume(d / "example_ct_sm.nii.gz"),
              read_label_map(d / "example_seg.nii.gz").array),
             (f"example_ct, x columns below {mid} (one kidney)",
              *_crop(ct, seg, (full, full, slice(0, mid)))),
             (f"example_ct, x columns from {mid} (the other kidney)",
              *_crop(ct, seg, (full, full, slice(mid, None))))]
    scans += [(f"example_ct, {name}", vol, lab) for name, vol, lab in variants(ct, seg)]
    slab, _ = read_image(d / "example_ct_dicom")
    scans.append(("example_ct_dicom (upper-abdomen slab, no kidney)", slab, None))
    hip = root / "msd_hippocampus" / "images" / "hippocampus_001.nii.gz"
    if hip.exists():
        scans.append(("MSD hippocampus_001 MR crop", read_volume(hip), None))
    mr = d / "example_mr_sm.nii.gz"
    if mr.exists():
        scans.append(("example_mr_sm (abdominal MR, kidneys in view)", read_volume(mr),
                      read_label_map(d / "example_seg_mr.nii.gz").array))
    rows = []
    for name, vol, lab in scans:
        t0 = time.perf_counter()
        res = segment_volume(vol, model, SegmentParams(side="both"), dic)
        rows.append(_row(name, res, vol, lab, time.perf_counter() - t0))
        rows[-1]["kidneys"] = _verdict(rows[-1])
        print(f"{name}: {res.status}, in the label {res.in_label}, "
              + ", ".join(f"{s} {v}" for s, v in rows[-1]["kidneys"].items())
              + (f", Dice both {rows[-1]['dice_both']:.3f}" if "dice_both" in rows[-1] else ""),
              flush=True)
    verdicts = [v for r in rows for v in r["kidneys"].values()]
    in_view = [r for r in rows if any(s["kidney_in_view"] for s in r["sides"].values())]
    summary = {
        "kidneys_in_view": sum(v in ("found", "missed") for v in verdicts),
        "found": verdicts.count("found"), "missed": verdicts.count("missed"),
        "kidneys_out_of_view": sum(v in ("left out", "kept (a false kidney)") for v in verdicts),
        "left_out": verdicts.count("left out"),
        "kept_false": verdicts.count("kept (a false kidney)"),
        "ok_with_a_kidney_missed_or_false": sum(
            r["status"] == "ok" and any(v in ("missed", "kept (a false kidney)")
                                        for v in r["kidneys"].values()) for r in rows),
        "no_kidney_scans_not_failed": sum(
            r["status"] != "failed" for r in rows
            if not any(s["kidney_in_view"] for s in r["sides"].values())),
        "worst_found_dice": min((s["dice"] for r in in_view for s in r["sides"].values()
                                 if s["kidney_in_view"] and s["in_label"]
                                 and s["dice"] >= FOUND_DICE), default=None),
        "statuses": {k: sum(r["status"] == k for r in rows) for k in ("ok", "suspect", "failed")},
    }
    print(summary)
    write_json(HERE / "results" / "both_sides.json", {
        "benchmark": "both_sides", "machine": machine(),
        "command": "python bench/bench_both_sides.py",
        "model": {"file": "bench/cache/kidney_model.npz (KiTS19 training split)",
                  "n_shapes": int(model.shapes.shape[0])},
        "settings": "segment's defaults with side 'both' (no window: the CT intensity "
                    "model's soft-tissue window)",
        "reference": "TotalSegmentator output (labels 2 right, 3 left), not manual",
        "found_dice": FOUND_DICE, "summary": summary, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
