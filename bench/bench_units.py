"""Shapes in other units than mm, given to ``shapeprior reconstruct``.

The held-out KiTS19 kidneys of ``bench_robustness.py``'s cache (69 shapes, mm,
in correspondence with the cached kidney model) are reconstructed as they are,
and the first four again in cm (a tenth) and in m (a thousandth). The
similarity alignment absorbs any scale, so only the size check of the
reconstruction's status (``pipeline/_reconstruct.py``: the shape's size against
the model's mean, outside the pose prior's training range widened by the
segmentation status's slack) can tell them apart. Writes per shape the size (the
inverse of the alignment's scale), the status and its reasons, and the status
counts per unit.

    python bench/bench_units.py     # needs bench/cache/kidney_model.npz and heldout.npz
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import cached_kidney_heldout, machine, write_json
from shapeprior.pipeline._reconstruct import reconstruct_shapes
from shapeprior.segmentation import SCALE_SLACK

HERE = Path(__file__).resolve().parent
UNITS = (("mm", 1.0, None), ("cm", 0.1, 4), ("m", 0.001, 4))


def main(argv=None):
    cached = cached_kidney_heldout()
    if cached is None:
        return 2
    mpath, model, shapes = cached
    lo, hi = model.pose.scale_range
    out = {"benchmark": "reconstruct: shapes in other units", "machine": machine(),
           "model": {"n_shapes": int(model.n_shapes), "scale_range": [lo, hi],
                     "size_bounds": [lo / SCALE_SLACK ** 2, hi * SCALE_SLACK ** 2]},
           "units": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for unit, factor, n in UNITS:
            arr = shapes[:n] * factor
            np.save(Path(tmp) / f"{unit}.npy", arr)
            o = Path(tmp) / f"out_{unit}"
            reconstruct_shapes(Path(tmp) / f"{unit}.npy", o, model, mpath, n_jobs=2)
            with open(o / "summary.csv") as fh:
                rows = [{"name": r["name"], "status": r["status"],
                         "size": 1.0 / float(r["scale"]), "reasons": r["reasons"]}
                        for r in csv.DictReader(fh)]
            sizes = [r["size"] for r in rows]
            flagged = sum("times the size" in r["reasons"] for r in rows)
            out["units"][unit] = {"n_shapes": len(rows), "size_min": min(sizes),
                                  "size_max": max(sizes), "size_flagged": flagged,
                                  "status_counts": {s: sum(r["status"] == s for r in rows)
                                                    for s in ("ok", "suspect")},
                                  "shapes": rows}
            print(f"{unit}: {len(rows)} shapes, size {min(sizes):.3g}-{max(sizes):.3g}, "
                  f"{flagged} flagged for their size", flush=True)
    write_json(HERE / "results" / "units.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
