"""Holes in a segmentation, refined with the image (issue #11).

Without the image a hole in a mask is no evidence of an error (KiTS19
kidney masks hold enclosed sinus cavities as large as a network's holes), so
``bench_refine.py`` (masks only, KiTS has no images) leaves holes alone. With
the image, ``refine_mask`` fills an enclosed cavity whose median intensity
lies within the organ's own central range (``_cavities.CAVITY_PERCENTILES``)
and keeps one that differs (fat, fluid). Measured on real scans with holes
planted in their masks:

* ``totalseg_ct``: TotalSegmentator example CT (3 mm, non-contrast) and its
  kidney labels (``example_seg_fast_force_split``, labels 2 and 3; network
  output, not manual), KiTS19-built kidney model, CT intensity model. The
  right kidney's clean mask holds one natural cavity (sinus fat, about
  -60 HU): it must stay.
* ``hippocampus_mr``: MSD hippocampus MR, held-out cases (case number a
  multiple of 5, never in the model), manual labels 1 and 2 as one organ,
  the hippocampus model built from the other cases (``bench_hippocampus.py``).

Each clean mask gets holes at random deep points (as ``bench_refine.py``
plants them: centre at least ``r + 2`` mm inside, or 0.8 of the deepest; a
draw that breaks through the surface is drawn again, counted as a redraw) at
three radii, and is also refined unchanged (severity 0: what the rule costs
on a mask with nothing to fix). Columns: the degraded mask, refined from the
mask alone, refined with the image with the cavity rule off
(``CAVITY_PERCENTILES = None``), refined with the image (the default), and
morphology (largest component, fill holes, 3 mm closing). ASSD and Dice
against the clean mask.

    python bench/bench_refine_image.py [--holes 5] [--cases 20]
    # needs bench/cache/kidney_model.npz (bench_robustness.py) and
    # bench/cache/hippocampus_642.npz (bench_hippocampus.py)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from _common import data_root, machine, write_json
from bench_refine import ball, morphology
from shapeprior.io import Volume, read_label_map, read_volume
from shapeprior.model import load_model
from shapeprior.segmentation import SegmentParams, dice, refine_mask, surface_distances
from shapeprior.segmentation import _cavities

HERE = Path(__file__).resolve().parent
CT = dict(normalisation="ct", window=(-0.05, 0.15), inside_brighter=True)
COLUMNS = ("degraded", "mask_only", "image_no_cavity_rule", "image", "morphology")


#: draws of a hole's centre before giving up on an enclosed one
MAX_DRAWS = 100


def plant_hole(mask, sp_zyx, r, rng):
    """``mask`` with a ball of radius ``r`` mm removed around a random deep
    point, and the number of draws it took. A hole is an enclosed cavity: a
    draw whose ball breaks through the surface (a dent, not a hole; on 3 mm
    voxels a 2 mm wall often does) is drawn again. None when no draw of
    :data:`MAX_DRAWS` gives an enclosed hole."""
    d = ndimage.distance_transform_edt(mask, sampling=sp_zyx)
    deep = np.argwhere(d >= min(r + 2.0, d.max() * 0.8))
    for k in range(1, MAX_DRAWS + 1):
        p = deep[rng.integers(len(deep))]
        hole = mask & ball(mask.shape, p, r, sp_zyx)
        out = mask & ~hole
        if (ndimage.binary_fill_holes(out) & hole).sum() == hole.sum():
            return out, k
    return None, MAX_DRAWS


def _refine(mvol, model, dic, params, image):
    res = refine_mask(mvol, model, (1,), params, image, dic)
    return res.label > 0, res.fit.status, res.fit.evidence.get("cavities")


def run_case(name, clean, vol, image, model, dic, params, radii, holes, rng):
    """Rows for one clean mask: severity 0 once, each radius ``holes`` times."""
    sp = vol.spacing[::-1]
    rows = []
    plan = [(0, 0.0)] + [(k + 1, r) for k, r in enumerate(radii) for _ in range(holes)]
    for sev, r in plan:
        bad, draws = plant_hole(clean, sp, r, rng) if r else (clean.copy(), 0)
        if bad is None:
            rows.append({"case": name, "severity": sev, "radius_mm": r, "skipped":
                         f"no enclosed hole in {MAX_DRAWS} draws"})
            print(f"{name} sev {sev} r {r:g}: skipped, no enclosed hole", flush=True)
            continue
        mvol = Volume(bad.astype(np.uint8), vol.spacing, vol.origin, vol.direction)
        masks = {"degraded": bad, "morphology": morphology(bad, sp)}
        masks["mask_only"], st_mask, _ = _refine(mvol, model, dic, params, None)
        keep = _cavities.CAVITY_PERCENTILES
        try:
            _cavities.CAVITY_PERCENTILES = None
            masks["image_no_cavity_rule"], _, _ = _refine(mvol, model, dic, params, image)
        finally:
            _cavities.CAVITY_PERCENTILES = keep
        masks["image"], st_img, cav = _refine(mvol, model, dic, params, image)
        row = {"case": name, "severity": sev, "radius_mm": r, "draws": draws,
               "hole_ml": float((clean & ~bad).sum() * np.prod(sp) / 1000.0),
               "status_mask_only": st_mask, "status_image": st_img, "cavities": cav}
        for k, m in masks.items():
            row[k] = {"dice": dice(m, clean),
                      "assd_mm": surface_distances(m, clean, vol.spacing)["assd_mm"]}
        rows.append(row)
        print(f"{name} sev {sev} r {r:g}: " + ", ".join(
            f"{k} {row[k]['assd_mm']:.3f}" for k in COLUMNS)
            + f" mm; cavities {cav and (cav['filled'], cav['kept'])}", flush=True)
    return rows


def table(rows):
    out = []
    for sev in sorted({r["severity"] for r in rows}):
        rs = [r for r in rows if r["severity"] == sev and "skipped" not in r]
        if not rs:
            out.append({"severity": sev, "n": 0, "skipped": sum(
                r["severity"] == sev for r in rows)})
            continue
        t = {"severity": sev, "radius_mm": rs[0]["radius_mm"], "n": len(rs),
             "skipped": sum(r["severity"] == sev and "skipped" in r for r in rows),
             "redraws": sum(r["draws"] - 1 for r in rs if r["draws"])}
        for k in COLUMNS:
            a = np.array([r[k]["assd_mm"] for r in rs])
            d = np.array([r[k]["dice"] for r in rs])
            t[k] = {"assd_mm_mean": float(a.mean()), "assd_mm_worst": float(a.max()),
                    "dice_mean": float(d.mean()), "dice_worst": float(d.min())}
        t["image_halves_error"] = bool(sev > 0 and t["image"]["assd_mm_mean"]
                                       <= 0.5 * t["degraded"]["assd_mm_mean"])
        t["image_worse_than_input"] = int(sum(
            r["image"]["assd_mm"] > r["degraded"]["assd_mm"] + 0.05 for r in rs))
        t["natural_cavities_filled"] = int(sum(
            (r["cavities"] or {}).get("filled", 0) for r in rs)) if sev == 0 else None
        out.append(t)
        print(f"severity {sev} (r {t['radius_mm']:g} mm, n {len(rs)}): " + ", ".join(
            f"{k} {t[k]['assd_mm_mean']:.3f} ({t[k]['assd_mm_worst']:.3f})" for k in COLUMNS))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--holes", type=int, default=5,
                    help="holes per radius per TotalSegmentator kidney (default 5)")
    ap.add_argument("--cases", type=int, default=20,
                    help="held-out hippocampus cases (default 20), one hole per radius each")
    ap.add_argument("--output", default=str(HERE / "results" / "refine_image.json"))
    a = ap.parse_args(argv)
    root = data_root()
    kid, hip = HERE / "cache" / "kidney_model.npz", HERE / "cache" / "hippocampus_642.npz"
    ts, msd = root / "totalsegmentator_example", root / "msd_hippocampus"
    missing = [str(p) for p in (kid, hip, ts, msd) if not p.exists()]
    if missing:
        print(f"needs {', '.join(missing)} (bench_robustness.py, bench_hippocampus.py)",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    out = {"benchmark": "refine_holes_with_image", "machine": machine(),
           "command": "python bench/bench_refine_image.py " + " ".join(
               argv if argv is not None else sys.argv[1:]),
           "cavity_percentiles": list(_cavities.CAVITY_PERCENTILES),
           "columns": {"mask_only": "refine_mask without the image",
                       "image_no_cavity_rule": "refine_mask with the image, "
                                               "CAVITY_PERCENTILES = None",
                       "image": "refine_mask with the image (default)",
                       "morphology": "largest component + fill holes + closing (3 mm ball)"},
           "sets": {}}
    # TotalSegmentator example CT, both kidneys
    model = load_model(kid)
    dic = model.ssc_dictionary("shapes")
    ct = read_volume(ts / "example_ct.nii.gz")
    seg = read_label_map(ts / "example_seg_fast_force_split.nii.gz")
    rows = []
    for side, lab in (("right", 2), ("left", 3)):
        rows += run_case(f"example_ct {side}", seg.array == lab, seg, ct, model, dic,
                         SegmentParams(side=side, **CT), (4.0, 7.0, 10.0), a.holes, rng)
    out["sets"]["totalseg_ct"] = {
        "data": "TotalSegmentator example_ct.nii.gz (3 mm, non-contrast), kidneys of "
                "example_seg_fast_force_split.nii.gz (labels 2, 3; network output)",
        "model": "bench/cache/kidney_model.npz (KiTS19 training split)",
        "radii_mm": [4.0, 7.0, 10.0], "holes_per_radius_per_kidney": a.holes,
        "table": table(rows), "cases": rows}
    # MSD hippocampus MR, held-out cases
    model = load_model(hip)
    dic = model.ssc_dictionary("shapes")
    files = [f for f in sorted((msd / "labels").glob("*.nii*"))
             if int(f.name.split("_")[1].split(".")[0]) % 5 == 0][:a.cases]
    rows = []
    for f in files:
        lab = read_label_map(f)
        img = read_volume(msd / "images" / f.name)
        rows += run_case(f.name.split(".")[0], lab.array > 0, lab, img, model, dic,
                         SegmentParams(), (1.0, 1.5, 2.0), 1, rng)
    out["sets"]["hippocampus_mr"] = {
        "data": "MSD Task04 hippocampus, held-out cases (case number % 5 == 0), "
                "labels 1 and 2 as one organ (manual)",
        "model": "bench/cache/hippocampus_642.npz (cases whose number is not a multiple "
                 "of 5)",
        "cases_used": [f.name for f in files],
        "radii_mm": [1.0, 1.5, 2.0], "holes_per_radius_per_case": 1,
        "table": table(rows), "cases": rows}
    out["time_s"] = time.perf_counter() - t0
    write_json(a.output, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
