"""Kidneys in contrast-enhanced CT, simulated on the one real CT we have (issue #11).

The shared data hold one CT with kidneys (the TotalSegmentator example, non-contrast).
Scans kept back, and most scans users bring, are contrast-enhanced: the kidneys,
liver, spleen and vessels are brighter, by amounts that depend on the phase. The
kidney model has no learned appearance (KiTS19 label maps only), so ``segment``
uses the CT intensity model (organ inside the -50..250 HU soft-tissue window,
brighter than fat), and a brighter liver beside the right kidney is the leak the
issue started from. This benchmark asks whether the fit, its placement search and
its status stay right when the organs enhance.

Each phase adds to the example CT's Hounsfield units, organ by organ, using
TotalSegmentator's own labels of the scan; the added map is smoothed by a Gaussian
of 1.5 mm SD (partial volume at the 3 mm grid). The amounts are typical textbook
enhancements, rounded, not fitted to anything:

* arterial (corticomedullary, about 35 s): the kidneys' outer 5 mm (cortex) +150 HU,
  their inside (medulla) +40; aorta and iliac arteries +250; spleen, pancreas +60;
  portal and splenic veins +60; liver +15; inferior vena cava and iliac veins +30;
* portal venous (about 70 s): kidneys +120; liver +60; spleen +70; pancreas +50;
  arteries +130; vena cava and iliac veins +100; portal and splenic veins +120;
  adrenal glands +40; stomach and bowel walls +25;
* excretory (minutes): kidneys +60 and their core deeper than 12 mm +600 (excreted
  contrast in the collecting system, a stand-in: the labels do not separate it),
  the urinary bladder +600; liver, spleen +40; vessels +60;
* portal venous with liver and spleen as bright as the kidneys (+110 against
  +100): the leak case, a neighbour the window cannot tell from the organ;
* portal venous with 30 HU of Gaussian noise (a low-dose scan).

Each scan is segmented as a new user would: ``segment --side both`` with segment's
defaults, no seed. Per side: status, quality, Dice against the reference (labels
2 right, 3 left: TotalSegmentator's output, not manual labels) and volume. And the
other way round (``absent`` rows): the five kidney-free slabs of the scan's lower
slices that ``bench_totalseg_ct.py`` uses, cut from each enhanced scan, where
enhanced vessels and bowel could pass for a kidney: the status must be ``failed``.
Each row also records, for each final surface (a kidney's, or the fit on a
kidney-free slab), the share of samples in the window at -4, -2 and +2 to +6 mm
along the outward normals (what the region score is made of: inside minus outside).
Nothing was chosen on these rows.

    python bench/bench_contrast.py     # writes results/contrast.json
    # needs bench/cache/kidney_model.npz (bench_robustness.py) and the shared data
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from _common import machine, write_json
from bench_both_sides import FOUND_DICE, LABELS
from bench_totalseg_ct import _crop, example_ct
from shapeprior.appearance import LevelImage, intensity_scale
from shapeprior.io import Volume
from shapeprior.mesh import Surface
from shapeprior.segmentation import SegmentParams, dice, segment_volume
from shapeprior.segmentation._fit import CT_SOFT_TISSUE

HERE = Path(__file__).resolve().parent
#: TotalSegmentator 'total' labels of the organs that enhance (ts_class_map.json)
ORGANS = {"spleen": 1, "liver": 5, "stomach": 6, "pancreas": 7, "adrenal_right": 8,
          "adrenal_left": 9, "small_bowel": 18, "duodenum": 19, "colon": 20, "bladder": 21,
          "aorta": 52, "vena_cava": 63, "portal_vein": 64, "iliac_artery_left": 65,
          "iliac_artery_right": 66, "iliac_vein_left": 67, "iliac_vein_right": 68}
_ARTERIES = ("aorta", "iliac_artery_left", "iliac_artery_right")
_VEINS = ("vena_cava", "iliac_vein_left", "iliac_vein_right")
#: per phase: added HU per organ; 'kidney' is the whole kidney, 'cortex' / 'medulla'
#: its outer CORTEX_MM and the rest, 'collecting' its core deeper than COLLECTING_MM
#: (later entries win where regions overlap)
PHASES = {
    "arterial": {"cortex": 150, "medulla": 40, **dict.fromkeys(_ARTERIES, 250), "spleen": 60,
                 "pancreas": 60, "portal_vein": 60, "liver": 15, **dict.fromkeys(_VEINS, 30)},
    "portal venous": {"kidney": 120, "liver": 60, "spleen": 70, "pancreas": 50,
                      **dict.fromkeys(_ARTERIES, 130), **dict.fromkeys(_VEINS, 100),
                      "portal_vein": 120, "adrenal_right": 40, "adrenal_left": 40,
                      "stomach": 25, "duodenum": 25, "small_bowel": 25, "colon": 25},
    "excretory": {"kidney": 60, "collecting": 600, "bladder": 600, "liver": 40, "spleen": 40,
                  **dict.fromkeys(_ARTERIES + _VEINS, 60), "portal_vein": 60},
    "portal venous, liver and spleen as bright as the kidneys": {
        "kidney": 100, "liver": 110, "spleen": 110, **dict.fromkeys(_ARTERIES, 130),
        **dict.fromkeys(_VEINS, 100), "portal_vein": 120},
}
CORTEX_MM, COLLECTING_MM = 5.0, 12.0
#: SD (mm) of the smoothing of the added map, and of the low-dose noise (HU)
BLUR_MM, NOISE_HU = 1.5, 30.0
#: the kidney-free slabs (slice ranges of the example CT) of bench_totalseg_ct.variants
NO_KIDNEY = ((0, 60), (0, 45), (10, 55), (20, 64), (30, 64))
#: offsets (mm along the outward normal) at which the share of samples inside the window
#: is recorded: the region score takes the inside at -4, -2 and the outside at +2, +4 mm
#: for a kidney (its band, 4 mm), on the image smoothed as for the first level
OFFSETS_MM = (-4.0, -2.0, 2.0, 3.0, 4.0, 5.0, 6.0)


def window_shares(vol, verts, faces):
    """Share of the samples at each of :data:`OFFSETS_MM` along the surface's outward
    normals that lie in the soft-tissue window: what the region score is made of."""
    sigma = SegmentParams().schedule[0][1]
    level = LevelImage(vol, "ct", sigma, "numpy", intensity_scale(vol, "ct"))
    normals = Surface(verts, faces).vertex_normals()
    x = level.sampler(verts, max(abs(o) for o in OFFSETS_MM))(
        verts, normals, np.array(OFFSETS_MM))
    lo, hi = CT_SOFT_TISSUE
    inside = ((x >= lo) & (x <= hi)).mean(0)
    return {f"{o:+g}": round(float(v), 4) for o, v in zip(OFFSETS_MM, inside)}


def enhanced(ct, lab, phase, noise_hu=0.0, seed=0):
    """The CT ``ct`` (Volume, HU) with the enhancement of ``phase`` (a dict of
    :data:`PHASES`) added organ by organ from the label array ``lab``."""
    sp = np.asarray(ct.spacing, dtype=float)[::-1]
    kidney = np.isin(lab, list(LABELS.values()))
    depth = ndimage.distance_transform_edt(kidney, sampling=sp)
    regions = {"kidney": kidney, "cortex": kidney & (depth <= CORTEX_MM),
               "medulla": kidney & (depth > CORTEX_MM),
               "collecting": kidney & (depth > COLLECTING_MM),
               **{k: lab == v for k, v in ORGANS.items()}}
    add = np.zeros(lab.shape, np.float32)
    for region, hu in phase.items():
        add[regions[region]] = hu          # later entries win: 'collecting' over 'kidney'
    add = ndimage.gaussian_filter(add, BLUR_MM / sp)
    if noise_hu:
        add += np.random.default_rng(seed).normal(0.0, noise_hu, add.shape).astype(np.float32)
    return Volume((np.asarray(ct.array, np.float32) + add), ct.spacing, ct.origin,
                  ct.direction)


def main(argv=None):
    loaded = example_ct()
    if loaded is None:
        return 2
    model, dic, ct, seg, _ = loaded
    lab = seg.array
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    scans = [("non-contrast (the scan as it is)", ct)]
    scans += [(name, enhanced(ct, lab, p)) for name, p in PHASES.items()]
    scans.append((f"portal venous, {NOISE_HU:g} HU noise",
                  enhanced(ct, lab, PHASES["portal venous"], NOISE_HU)))
    rows = []
    for name, vol in scans:
        t0 = time.perf_counter()
        res = segment_volume(vol, model, SegmentParams(side="both"), dic)
        t = time.perf_counter() - t0
        sides = {}
        for side, f in res.sides.items():
            ref = lab == LABELS[side]
            sides[side] = {"status": f.status, "quality": round(float(f.quality), 4),
                           "in_label": side in res.in_label,
                           "dice": round(dice(f.label, ref), 4),
                           "volume_ml": round(float(np.count_nonzero(f.label)) * voxel_ml, 1),
                           "reference_ml": round(float(np.count_nonzero(ref)) * voxel_ml, 1),
                           "reasons": list(f.reasons),
                           "window_share_by_offset_mm": window_shares(vol, f.verts, f.faces)}
        found = all(s["in_label"] and s["dice"] >= FOUND_DICE for s in sides.values())
        rows.append({"scan": name, "status": res.status, "in_label": res.in_label,
                     "both_found": found, "sides": sides, "time_s": round(t, 2)})
        print(f"{name}: {res.status}, "
              + ", ".join(f"{s} {v['status']} Dice {v['dice']:.3f} ({v['volume_ml']:.0f} ml, "
                          f"quality {v['quality']:.2f})" for s, v in sides.items()), flush=True)
    absent = []
    for name, vol in scans:
        for z0, z1 in NO_KIDNEY:
            sub, sub_lab = _crop(vol, lab, (slice(z0, z1), slice(None), slice(None)))
            assert not np.isin(sub_lab, list(LABELS.values())).any()
            res = segment_volume(sub, model, SegmentParams(side="both"), dic)
            absent.append({"scan": f"{name}, no kidney: slices {z0}-{z1 - 1}",
                           "status": res.status,
                           "quality": {s: round(float(f.quality), 4)
                                       for s, f in res.sides.items()},
                           "reasons": {s: list(f.reasons) for s, f in res.sides.items()},
                           "window_share_by_offset_mm": {
                               s: window_shares(sub, f.verts, f.faces)
                               for s, f in res.sides.items()}})
            print(f"{absent[-1]['scan']}: {res.status}, quality {absent[-1]['quality']}",
                  flush=True)
    kidneys = [s for r in rows for s in r["sides"].values()]
    summary = {"scans": len(rows), "both_found": sum(r["both_found"] for r in rows),
               "statuses": {k: sum(r["status"] == k for r in rows)
                            for k in ("ok", "suspect", "failed")},
               "worst_dice": min(s["dice"] for s in kidneys),
               "lowest_quality": min(s["quality"] for s in kidneys),
               "absent_scans": len(absent),
               "absent_not_failed": sum(r["status"] != "failed" for r in absent),
               "absent_highest_quality": max(q for r in absent for q in r["quality"].values())}
    print(summary)
    write_json(HERE / "results" / "contrast.json", {
        "benchmark": "contrast", "machine": machine(), "command": "python bench/bench_contrast.py",
        "model": "bench/cache/kidney_model.npz (KiTS19 label maps, no images)",
        "settings": "segment --side both, defaults, no seed",
        "reference": "TotalSegmentator example_seg_fast_force_split, labels 2 right / 3 left "
                     "(model output)",
        "found_dice": FOUND_DICE, "phases_hu": PHASES, "cortex_mm": CORTEX_MM,
        "collecting_mm": COLLECTING_MM, "blur_mm": BLUR_MM, "noise_hu": NOISE_HU,
        "summary": summary, "rows": rows, "absent": absent})
    return 0


if __name__ == "__main__":
    sys.exit(main())
