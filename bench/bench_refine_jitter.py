"""Boundary jitter without the image: can any smoothing halve it?

``bench_refine.py`` leaves its ``jitter`` rows unhalved: a kidney mask whose
boundary was moved by smooth noise (Gaussian-filtered with sigma 4 mm, 1 / 2 /
3 mm standard deviation) is refined to about its own error. This measures, on
training-split KiTS19 kidneys (case number % 5 != 0: a scratch question, no
setting is chosen here), what the alternatives would give, against the clean
mask (ASSD, mm):

* ``refined``: ``refine_mask`` as it is (the mask kept where the prior agrees);
* ``fit``: the model's fitted surface alone, voxelised (no mask detail kept);
* ``offset_k``: the fitted surface moved onto the mask's boundary along its
  normals, the offsets smoothed by ``k`` passes of a neighbour mean (0: moved
  exactly onto the boundary);
* ``sdf_s``: the mask's signed distance map smoothed with a Gaussian of
  ``s`` mm, thresholded at 0 (no model at all).

    python bench/bench_refine_jitter.py [--cases 6]   # needs bench/cache/kidney_model.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from _common import machine, write_json
from bench_refine import _cases, crop, degrade, kidney_inputs
from shapeprior.io import Volume, read_label_map
from shapeprior.mesh import (Surface, kidney_masks, mean_neighbour_operator, signed_distance,
                             voxelize)
from shapeprior.segmentation import SegmentParams, refine_mask, surface_distances
from shapeprior.segmentation import _refine as _refine_mod

HERE = Path(__file__).resolve().parent
PASSES = (0, 2, 8)
SIGMAS_MM = (1.5, 2.5, 4.0)


def variants(bad, bvol, res):
    """The refined masks of one degraded mask (``res``: its ``refine_mask`` result)."""
    sp = bvol.spacing[::-1]
    fit = res.mask_fit
    out = {"degraded": bad, "refined": res.label > 0, "fit": fit.label > 0}
    boundary = _refine_mod._BoundaryDistance(bad, bvol)
    normals = Surface(fit.verts, fit.faces).vertex_normals()
    off = boundary.along(fit.verts, normals, 30.0)
    off = np.where(np.isfinite(off), off, 0.0)
    M = mean_neighbour_operator(fit.faces, len(fit.verts)).tocsr()
    for k in PASSES:
        o = off.copy()
        for _ in range(k):
            o = 0.5 * o + 0.5 * (M @ o)
        out[f"offset_{k}"] = voxelize(fit.verts + o[:, None] * normals, fit.faces, bvol) > 0
    sd = signed_distance(bad, tuple(float(s) for s in sp))
    for s in SIGMAS_MM:
        out[f"sdf_{s:g}"] = ndimage.gaussian_filter(sd, s / np.asarray(sp)) < 0
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--output", default=str(HERE / "results" / "refine_jitter.json"))
    a = ap.parse_args(argv)
    inputs = kidney_inputs()
    if inputs is None:
        return 2
    root, model, dic = inputs
    cases = _cases(root, "validation", a.cases, 0.0)
    rng = np.random.default_rng(1)
    rows, t0 = [], time.perf_counter()
    for i, case in enumerate(cases):
        vol = read_label_map(sorted(case.glob("*.nii*"))[0])
        masks = kidney_masks(vol)
        side = ("left", "right")[i % 2] if len(masks) == 2 else next(iter(masks))
        cv = crop(vol, np.where(masks[side], vol.array, 0))
        clean = cv.array > 0
        sp = cv.spacing[::-1]
        for sev in (0, 1, 2, 3):
            bad, lab = (degrade(clean, sp, "jitter", sev, rng, lab=cv.array) if sev
                        else (clean, cv.array))
            bvol = Volume(lab, cv.spacing, cv.origin, cv.direction)
            res = refine_mask(bvol, model, (1, 2), SegmentParams(side=side), None, dic)
            row = {"case": case.name, "side": side, "severity": sev}
            for name, m in variants(bad, bvol, res).items():
                row[name] = surface_distances(m, clean, cv.spacing)["assd_mm"]
            rows.append(row)
            print(case.name, sev, " ".join(f"{k} {v:.2f}" for k, v in row.items()
                                           if isinstance(v, float)), flush=True)
    names = [k for k in rows[0] if isinstance(rows[0][k], float)]
    table = []
    for sev in (0, 1, 2, 3):
        rs = [r for r in rows if r["severity"] == sev]
        t = {"severity": sev, "amplitude_mm": (0.0, 1.0, 2.0, 3.0)[sev], "n": len(rs)}
        for n in names:
            v = np.array([r[n] for r in rs])
            t[n] = {"assd_mm_mean": float(v.mean()), "assd_mm_worst": float(v.max())}
        deg = t["degraded"]["assd_mm_mean"]
        t["halved_by"] = [n for n in names if n != "degraded" and sev
                          and t[n]["assd_mm_mean"] <= 0.5 * deg]
        table.append(t)
        print(f"severity {sev}: " + ", ".join(f"{n} {t[n]['assd_mm_mean']:.2f}" for n in names))
    write_json(Path(a.output), {
        "benchmark": "refine_jitter_alternatives", "machine": machine(),
        "command": "python bench/bench_refine_jitter.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "data": "KiTS19 training-split cases (case number % 5 != 0), one kidney each "
                "(kidney and tumour), cropped with a 40 mm margin; jitter as bench_refine.py",
        "cases_used": [c.name for c in cases], "model": "bench/cache/kidney_model.npz",
        "columns": {"refined": "refine_mask (no image)", "fit": "the fitted surface alone",
                    "offset_k": "the fitted surface moved onto the mask's boundary, offsets "
                                "smoothed by k neighbour-mean passes",
                    "sdf_s": "the mask's signed distance smoothed by a Gaussian of s mm"},
        "time_s": time.perf_counter() - t0, "table": table, "cases": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
