"""Kidneys on the TotalSegmentator example CT with the KiTS19-built model.

The kidney model comes from KiTS19 label maps only (no images), so segment
uses the generic CT edge search (organ brighter than fat, inside window
-50..150 HU). Placement: the model mean at the centroid of the reference
kidney (an oracle initialisation, stated in the results), so the number
measures boundary fitting and the prior, not detection. The reference labels
are TotalSegmentator model output, not manual ground truth.

    python bench/bench_totalseg_ct.py     # needs bench/cache/kidney_model.npz
                                          # (made by bench_robustness.py)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from _common import data_root
from shapeprior.io import read_label_map, read_volume
from shapeprior.model import load_model
from shapeprior.segment import SegmentParams, dice, segment_volume, surface_distances

HERE = Path(__file__).resolve().parent


def main(argv=None):
    root = data_root()
    d = root / "totalsegmentator_example"
    mpath = HERE / "cache" / "kidney_model.npz"
    if not d.is_dir() or not mpath.exists():
        print(f"needs {d} and {mpath} (run bench_robustness.py first)", file=sys.stderr)
        return 2
    model = load_model(mpath)
    ct = read_volume(d / "example_ct.nii.gz")
    seg = read_label_map(d / "example_seg_fast_force_split.nii.gz")
    dic = model.ssc_dictionary("shapes")
    rows = []
    for side, lab in (("right", 2), ("left", 3)):
        ref = seg.array == lab
        c = np.argwhere(ref).mean(0)[::-1]
        seed = ct.index_to_physical(c[None])[0]
        p = SegmentParams(seed_mm=tuple(seed), side=side, normalisation="ct",
                          window=(-0.05, 0.15), inside_brighter=True)
        r = segment_volume(ct, model, p, dic)
        sd = surface_distances(r.label, ref, ct.spacing)
        rows.append({"kidney": side, "dice": dice(r.label, ref), **sd,
                     "volume_ml": float(r.label.sum() * np.prod(ct.spacing) / 1000),
                     "reference_ml": float(ref.sum() * np.prod(ct.spacing) / 1000),
                     "time_s": r.time_s, "iterations": r.n_iter,
                     "overridden_fraction": r.overridden_fraction})
        print(f"{side} kidney: Dice {rows[-1]['dice']:.3f}, ASSD {sd['assd_mm']:.2f} mm, "
              f"{rows[-1]['volume_ml']:.0f} ml vs {rows[-1]['reference_ml']:.0f} ml, {r.time_s:.2f} s")
    out = {"benchmark": "totalseg_ct_kidneys", "image": "example_ct.nii.gz (3 mm, non-contrast)",
           "reference": "example_seg_fast_force_split.nii.gz labels 2/3 (TotalSegmentator "
                        "model output, not manual)",
           "model": {"source": "KiTS19 training split (bench_robustness)",
                     "n_shapes": int(model.shapes.shape[0])},
           "initialisation": "oracle: reference kidney centroid as --seed",
           "appearance": "generic CT edge search (no training images)", "kidneys": rows}
    (HERE / "results" / "totalseg_ct.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
