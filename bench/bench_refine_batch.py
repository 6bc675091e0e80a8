"""A folder of degraded kidney masks refined by one command (held-out KiTS19).

One kidney of each held-out KiTS19 case (case number a multiple of 5, never in
the model), cropped to 40 mm around it, is degraded the way segmentation
networks fail (``bench_refine.degrade``: leak, hole, missing, duplicated or
copied slices, islands, jitter, in turn, at severity 2) and written into a
folder of masks, with the clean crops as the references. Then, as a user
would run it::

    shapeprior refine masks/ -o out/ --model kidney_model.npz --reference refs/

once sequentially, once with ``--workers 2`` (a local dask cluster) and once
more sequentially into the first folder (every case kept: the resume). The
result records the wall time of each run (the ratio of the sequential run to
the parallel one, same machine, same run), whether both runs wrote the same
labels, the summary's Dice before and after (mean and worst case) and each
case's row.

    python bench/bench_refine_batch.py [--cases 6]   # needs bench/cache/kidney_model.npz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import machine, write_json
from bench_refine import KINDS, _cases, crop, degrade, kidney_inputs
from shapeprior.io import Volume, read_label_map, write_label
from shapeprior.mesh import kidney_masks

HERE = Path(__file__).resolve().parent


def _write_inputs(root, cases, tmp):
    """masks/ and refs/ in ``tmp``: one degraded kidney per case, and its clean crop."""
    masks, refs = tmp / "masks", tmp / "refs"
    masks.mkdir()
    refs.mkdir()
    rng = np.random.default_rng(0)
    made = []
    for i, case in enumerate(cases):
        vol = read_label_map(sorted(case.glob("*.nii*"))[0])
        km = kidney_masks(vol)
        side = ("left", "right")[i % 2] if len(km) == 2 else next(iter(km))
        clean = crop(vol, np.where(km[side], vol.array, 0))     # 1 kidney, 2 tumour
        kind = KINDS[i % len(KINDS)]
        _, bad = degrade(clean.array > 0, clean.spacing[::-1], kind, 2, rng, lab=clean.array)
        name = f"{case.name}_{side}.nii.gz"
        write_label(clean, clean.array.astype(np.uint8), refs / name)
        write_label(Volume(bad.astype(np.uint8), clean.spacing, clean.origin, clean.direction),
                    bad.astype(np.uint8), masks / name)
        made.append({"case": f"{case.name}_{side}", "kind": kind, "severity": 2})
    return masks, refs, made


def _run(args):
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "shapeprior.cli", "refine", *map(str, args)],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 3):
        raise RuntimeError(f"refine exited {p.returncode}: {p.stderr.strip()}")
    return wall, p.returncode


def _labels(out):
    return {d.name: hashlib.sha256((d / "label.nii.gz").read_bytes()).hexdigest()
            for d in sorted(out.iterdir()) if (d / "label.nii.gz").is_file()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=6, help="held-out cases (default 6)")
    ap.add_argument("--output", default=str(HERE / "results" / "refine_batch.json"))
    a = ap.parse_args(argv)
    inputs = kidney_inputs()
    if inputs is None:
        return 2
    root = inputs[0]
    model = HERE / "cache" / "kidney_model.npz"
    cases = _cases(root, "test", a.cases, 0.0)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        masks, refs, made = _write_inputs(root, cases, tmp)
        common = ["--model", model, "--labels", "1,2", "--reference", refs,
                  "--reference-labels", "1,2"]
        seq, rc = _run([masks, "-o", tmp / "seq", *common])
        par, rc_par = _run([masks, "-o", tmp / "par", *common, "--workers", "2"])
        resume, _ = _run([masks, "-o", tmp / "seq", *common])
        doc = json.loads((tmp / "seq" / "summary.json").read_text())
        same = _labels(tmp / "seq") == _labels(tmp / "par")
    kinds = {m["case"]: m for m in made}
    rows = [{**kinds[r["case"]], **{k: r.get(k) for k in (
        "result", "input_dice", "dice", "assd_mm", "input_ml", "volume_ml", "removed_ml",
        "added_ml")}} for r in doc["cases"]]
    ref = doc["reference"]
    result = {
        "benchmark": "refine_batch", "machine": machine(), "device": "cpu",
        "command": "shapeprior refine MASKS -o OUT --model kidney_model.npz --labels 1,2 "
                   "--reference REFS --reference-labels 1,2 [--workers 2]",
        "n_cases": len(rows), "exit_codes": {"sequential": rc, "workers_2": rc_par},
        "wall_s": {"sequential": round(seq, 2), "workers_2": round(par, 2),
                   "resume_all_kept": round(resume, 2)},
        "ratio_sequential_to_workers_2": round(seq / par, 3),
        "same_labels_sequential_and_parallel": same,
        "resume_statuses": sorted({r["status"] for r in doc["cases"]}),
        "dice_before": ref["input_dice"], "dice_after": ref["dice"],
        "assd_after_mm": ref["assd_mm"], "cases": rows,
    }
    write_json(a.output, result)
    print(json.dumps({k: result[k] for k in ("wall_s", "ratio_sequential_to_workers_2",
                                             "same_labels_sequential_and_parallel",
                                             "dice_before", "dice_after")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
