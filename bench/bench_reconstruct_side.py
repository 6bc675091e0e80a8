"""Which side: ``shapeprior reconstruct`` of a paired organ's shapes.

The cached kidney model holds left kidneys with the right ones mirrored onto
them (``build-model --split-sides``). A right kidney that ``segment --side
right`` writes is the model mirrored: its vertex i is the model's vertex i on
the other side, which no similarity transform undoes. Until this bench,
``reconstruct`` fitted every mesh as given.

Inputs: the 69 held-out KiTS19 kidneys of ``bench_robustness.py``'s cache, all
on the model's side (right ones mirrored when extracted), as they are ("left")
and mirrored ("right"), clean and with 30 % of their vertices displaced 10-30 mm
along the normals (``corrupt_patches``, as the robustness bench). Each set is
reconstructed three ways: ``--side auto`` (each shape solved as given and
mirrored, the closer fit by median vertex residual kept), ``given_side`` (the
true side given with ``--side``), and ``as_given`` (every shape fitted as given,
the model's side: the behaviour before). Per set: how often auto picks the true
side, the margin (the other fit's median residual over the kept one's; least
and median), and per way the mean and worst distance (mm) of each reconstructed
vertex from the clean shape's (vertex to vertex) and the suspect count. Plus the real case: the example CT's two kidneys as
``segment`` writes them (default settings, each side given), reconstructed with
``--side auto``.

    python bench/bench_reconstruct_side.py  # needs bench/cache/kidney_model.npz, heldout.npz
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import cached_kidney_heldout, data_root, machine, write_json
from shapeprior.mesh import Surface, read_mesh
from shapeprior.pipeline._reconstruct import reconstruct_shapes
from shapeprior.synthetic import corrupt_patches

HERE = Path(__file__).resolve().parent
MIRROR = np.array([-1.0, 1.0, 1.0])


def _run(path, out, model, mpath, side):
    reconstruct_shapes(path, out, model, mpath, n_jobs=2, side=side)
    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    rec = np.load(out / "reconstructions.npz")["reconstructions"]
    return rows, rec


def main(argv=None):
    cached = cached_kidney_heldout()
    if cached is None:
        return 2
    mpath, model, held = cached
    out = {"benchmark": "reconstruct: the side of a paired organ's shapes",
           "machine": machine(), "model_side": model.metadata.get("side"),
           "n_shapes": int(len(held)), "sets": [], "real": []}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for gross in (0.0, 0.3):
            ys = []
            for y in held:
                if gross:
                    y, _ = corrupt_patches(y, gross, rng, magnitude=(10.0, 30.0),
                                           normals=Surface(y, model.faces).vertex_normals())
                ys.append(y)
            ys = np.stack(ys)
            for true in ("left", "right"):
                clean = held * MIRROR if true == "right" else held
                arr = ys * MIRROR if true == "right" else ys
                f = tmp / f"{true}_{gross}.npy"
                np.save(f, arr)
                row = {"side": true, "gross_fraction": gross, "n": int(len(arr))}
                for way, side in (("auto", "auto"), ("given_side", true), ("as_given", "left")):
                    rows, rec = _run(f, tmp / f"o_{true}_{gross}_{way}", model, mpath, side)
                    err = np.linalg.norm(rec - clean, axis=2).mean(1)
                    row[way] = {"mean_mm": float(err.mean()), "worst_mm": float(err.max()),
                                "suspect": sum(r["status"] != "ok" for r in rows)}
                    if way == "auto":
                        row["auto_correct"] = sum(r["side"] == true for r in rows)
                        margin = [float(r["other_side_median_residual_mm"])
                                  / max(float(r["median_residual_mm"]), 1e-9) for r in rows]
                        row["margin_min"] = min(margin)
                        row["margin_median"] = float(np.median(margin))
                out["sets"].append(row)
                print(f"{true} gross {gross}: auto right side {row['auto_correct']}/{row['n']}"
                      f" (margin >= {row['margin_min']:.2f}); mean error auto "
                      f"{row['auto']['mean_mm']:.2f}, true side {row['given_side']['mean_mm']:.2f}"
                      f", as given {row['as_given']['mean_mm']:.2f} mm", flush=True)
        ct = data_root() / "totalsegmentator_example" / "example_ct.nii.gz"
        if ct.exists():
            from shapeprior.cli import main as cli

            for side in ("left", "right"):
                seg = tmp / f"seg_{side}"
                cli(["segment", str(ct), "-o", str(seg), "--model", str(mpath), "--side", side,
                     "--no-qc"])
                rows, rec = _run(seg / "mesh.vtk", tmp / f"rec_{side}", model, mpath, "auto")
                v = read_mesh(seg / "mesh.vtk").verts
                out["real"].append({"case": "example_ct", "segmented_side": side,
                                    "kept_side": rows[0]["side"],
                                    "median_residual_mm": float(rows[0]["median_residual_mm"]),
                                    "other_side_median_residual_mm":
                                        float(rows[0]["other_side_median_residual_mm"]),
                                    "mean_distance_mm": float(
                                        np.linalg.norm(rec[0] - v, axis=1).mean()),
                                    "status": rows[0]["status"]})
                print(f"example_ct {side}: kept {rows[0]['side']}, median residual "
                      f"{rows[0]['median_residual_mm']} vs "
                      f"{rows[0]['other_side_median_residual_mm']} mm", flush=True)
    write_json(HERE / "results" / "reconstruct_side.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
