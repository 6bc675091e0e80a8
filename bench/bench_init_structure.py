"""A planning system's rough kidney contours as the start of a segmentation:
``segment SERIES --init-mask RS.dcm --init-structure ... --side both`` on the
TotalSegmentator example CT written as a DICOM series.

The structure set holds both kidneys of the reference label map
(``example_seg_fast_force_split.nii.gz`` labels 2/3, TotalSegmentator model
output), degraded as a hurried contour would be: moved by 0, 6 or 12 mm
(left, posterior and superior alike) and grown by 0 or 3 mm. Each row gives
Dice and ASSD against the reference of the contour itself (before) and of the
segmentation started from it (after), with status and time; the search without
any start (segment's default) is the comparison row. The two-step way
(``convert-rtstruct`` then the label map as ``--init-mask``) must give the same
label: ``same_as_two_step``. ``start_alone``: the same start fitted as before
positions near it were tried (``near_start`` 0).

    python bench/bench_init_structure.py     # needs bench/cache/kidney_model.npz
                                             # (made by bench_robustness.py)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from _common import RESULTS, data_root, machine, write_json
import shapeprior.cli.segment as segment_cli
from shapeprior.cli import main as cli
from shapeprior.io import read_image, read_label_map, read_volume, write_structure_set
from shapeprior.segmentation import dice, surface_distances

HERE = Path(__file__).resolve().parent
SIDES = (("right", 2), ("left", 3))
#: (shift along each LPS axis in mm, growth in mm) of the contour
DEGRADED = ((0, 0), (6, 0), (12, 0), (6, 3), (12, 3))


def _scores(label, ref, spacing):
    d = surface_distances(label, ref, spacing)
    return {"dice": round(dice(label, ref), 4), "assd_mm": round(d["assd_mm"], 3)}


def _rough(organ, vol, shift_mm, grow_mm):
    """``organ`` (z, y, x bool) moved by ``shift_mm`` along L, P and S and grown by
    ``grow_mm``, on the grid of ``vol`` (whole voxels)."""
    step = vol.direction.T @ np.full(3, float(shift_mm))      # LPS mm -> index axes (x, y, z)
    vox = np.round(step / vol.spacing).astype(int)[::-1]      # (z, y, x) voxels
    out = np.roll(organ, tuple(vox), axis=(0, 1, 2))
    r = int(round(grow_mm / float(vol.spacing.min())))
    return ndimage.binary_dilation(out, iterations=r) if r else out


def _segment(series, out, extra, alone=False):
    """segment --side both from ``extra``'s start, scored against the reference:
    ``(exit code, report, label)``. ``alone``: as before positions near the
    start were tried (``near_start`` 0: the fit starts from the start alone)."""
    d = data_root() / "totalsegmentator_example"
    given = segment_cli.segment_params
    if alone:
        segment_cli.segment_params = lambda **kw: given(**kw, near_start=0.0)
    try:
        code = cli(["segment", str(series), "-o", str(out),
                    "--model", str(HERE / "cache" / "kidney_model.npz"), "--side", "both",
                    "--no-qc", "--reference", str(d / "example_seg_fast_force_split.nii.gz"),
                    "--reference-labels", "2,3", *extra])
    finally:
        segment_cli.segment_params = given
    rep = json.loads((out / "report.json").read_text())
    return code, rep, read_label_map(out / "label.nii.gz").array


def _row(name, rep, code):
    def kept(block):        # (a failed result's label is withheld: no Dice, no distance)
        return {k: None if (block or {}).get(k) is None else round(block[k], 4)
                for k in ("dice", "assd_mm")}

    return {"start": name, **kept(rep["reference"]),
            **{s: kept(rep["sides"][s].get("reference")) for s in ("right", "left")},
            "status": rep["status"], "exit": code, "time_s": rep["time_s"]}


def main(argv=None):
    d = data_root() / "totalsegmentator_example"
    if not d.is_dir() or not (HERE / "cache" / "kidney_model.npz").exists():
        print("needs the TotalSegmentator example and bench/cache/kidney_model.npz",
              file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE.parent / "tests"))
    from _phantoms import write_dicom_series

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        series = write_dicom_series(read_volume(d / "example_ct.nii.gz"), tmp / "ct",
                                    modality="CT")
        vol, info = read_image(series)
        seg = read_label_map(d / "example_seg_fast_force_split.nii.gz").reoriented_like(vol)
        refs = {side: seg.array == lab for side, lab in SIDES}
        both = refs["right"] | refs["left"]

        code, rep, _ = _segment(series, tmp / "search", [])
        rows.append(_row("search (no start)", rep, code))
        for shift, grow in DEGRADED:
            masks = {s: _rough(refs[s], vol, shift, grow) for s in ("left", "right")}
            rs = tmp / f"rs_{shift}_{grow}.dcm"
            write_structure_set(rs, [masks["left"], masks["right"]], vol, series,
                                info["series_key"], organ="kidney", side=["left", "right"])
            code, rep, lab = _segment(series, tmp / f"direct_{shift}_{grow}", [
                "--init-mask", str(rs), "--init-structure", "kidney (left)",
                "--init-structure", "kidney (right)"])
            cli(["convert-rtstruct", str(rs), "--image", str(series), "-o",
                 str(tmp / f"conv_{shift}_{grow}"), "--structure", "kidney (left)",
                 "--structure", "kidney (right)"])
            _, _, two = _segment(series, tmp / f"twostep_{shift}_{grow}", [
                "--init-mask", str(tmp / f"conv_{shift}_{grow}" / "label.nii.gz"),
                "--init-labels", "1,2"])
            code0, rep0, _ = _segment(series, tmp / f"alone_{shift}_{grow}", [
                "--init-mask", str(rs), "--init-structure", "kidney (left)",
                "--init-structure", "kidney (right)"], alone=True)
            rows.append({**_row(f"structure set moved {shift} mm, grown {grow} mm", rep, code),
                         "start_alone": _row("the start alone (near_start 0)", rep0, code0),
                         "before": {**_scores(masks["left"] | masks["right"], both, vol.spacing),
                                    **{s: _scores(masks[s], refs[s], vol.spacing)
                                       for s in ("right", "left")}},
                         "init_structures": [s["name"] for s in rep["init_mask"]["structures"]],
                         "same_as_two_step": bool(np.array_equal(lab, two))})
    for r in rows:
        b = r.get("before")
        print(f"{r['start']:40s} " + (f"before Dice {b['dice']:.3f} ASSD {b['assd_mm']:.2f} -> "
                                      if b else " " * 32) +
              f"Dice {r['dice']:.3f} (R {r['right']['dice']:.3f} L {r['left']['dice']:.3f}) "
              f"ASSD {r['assd_mm']:.2f} mm {r['status']} {r['time_s']:.1f} s"
              + (f" same as two-step: {r['same_as_two_step']}; the start alone: Dice "
                 f"{r['start_alone']['dice']}, {r['start_alone']['status']}" if b else ""))
    write_json(RESULTS / "init_structure.json", {
        "benchmark": "init_structure", "machine": machine(),
        "image": "example_ct.nii.gz written as a DICOM series (CT, 3 mm)",
        "reference": "example_seg_fast_force_split.nii.gz labels 2/3 (TotalSegmentator output)",
        "model": "bench/cache/kidney_model.npz (KiTS19 training split), segment defaults, "
                 "--side both",
        "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
