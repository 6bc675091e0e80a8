"""Benchmark: batched SSC-L1 where Newton steps stall (issue #13).

At lambda2 far below the noise every row of a shape can start as a gross
error; the Newton model of :func:`shapeprior.ssc._batched.solve_l1_batched_core`
then has no curvature and the shape takes proximal gradient steps. A shape
that stalls ``MAX_STALLS`` times in a row leaves the batch uncertified and is
solved again by the single-shape solver (``solve_alone``), which costs what
the batch saves.

This scan runs problems of the kind of the tests' (N = 300 vertices, K = 40
atoms, 6 shapes, 0.3 mm noise, a fraction of the vertices displaced in
patches) with lambda1 = 2 alpha1 max|D^T W y| and lambda2 from 0.1 (tau
0.05 mm: the stalling regime) to 3.0. For each configuration of the
proximal step (``PROX_STEPS`` lengths ``PROX_BASE**j / L``, evaluated at once,
the lowest objective taken) it counts the shapes certified in the batch, the
batched iterations, the wall time of the whole call (the single solver's
re-solves included) and the final objectives against the baseline's (the
1/L step alone) in the same run. The configuration is chosen on the
validation seeds; the test seeds report it; both splits are written.

    python bench/bench_batched_stall.py              # writes bench/results/batched_stall.json
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_json  # noqa: E402

from bench_batched import synthetic  # noqa: E402

import shapeprior.ssc._batched as batched  # noqa: E402
from shapeprior.ssc import ShapeDictionary, sparse_composition_batched  # noqa: E402

#: (PROX_STEPS, PROX_BASE): the baseline (one step of 1/L) first
CONFIGS = [(1, 2.0), (8, 2.0), (6, 4.0), (6, 16.0), (8, 10.0)]
FRACS = (0.3, 0.5, 0.7)
ALPHA1 = (1e-4, 1e-3, 1e-2)
LAMBDA2 = (0.1, 0.3, 3.0)


def run_split(seeds, configs):
    """Per configuration: certified in the batch, shapes, batched iterations,
    wall time, exceptions, RuntimeWarnings, and per problem the objectives."""
    out = {c: {"certified": 0, "shapes": 0, "iterations": 0, "time_s": 0.0, "errors": 0,
               "warnings": 0, "objective": []} for c in configs}
    for seed in seeds:
        for frac in FRACS:
            atoms, obs = synthetic(300, 40, 6, aligned=True, seed=seed, frac=frac)
            dic = ShapeDictionary(atoms, backend="numpy")
            c0 = np.abs(np.einsum("mnd,knd->mk", obs, atoms)).max(axis=1)
            for a1 in ALPHA1:
                for lam2 in LAMBDA2:
                    for c in configs:
                        batched.PROX_STEPS, batched.PROX_BASE = c
                        r = out[c]
                        with warnings.catch_warnings(record=True) as w:
                            warnings.simplefilter("always", RuntimeWarning)
                            t0 = time.perf_counter()
                            try:
                                got = sparse_composition_batched(obs, dic, lambda1=2 * a1 * c0,
                                                                 lambda2=lam2)
                            except Exception:  # noqa: BLE001 - counted, the scan goes on
                                r["errors"] += 1
                                r["objective"].append([np.nan] * len(obs))
                                continue
                            r["time_s"] += time.perf_counter() - t0
                        r["warnings"] += sum(issubclass(x.category, RuntimeWarning) for x in w)
                        r["certified"] += int(got.certified.sum())
                        r["shapes"] += len(obs)
                        r["iterations"] += int(got.n_iter.sum())
                        r["objective"].append(got.objective.tolist())
    base = np.array(out[configs[0]]["objective"], float)
    rows = []
    for c in configs:
        r = out[c]
        obj = np.array(r.pop("objective"), float)
        rel = (obj - base) / np.abs(base)
        rows.append({"prox_steps": c[0], "prox_base": c[1], **r,
                     "time_vs_baseline": r["time_s"] / out[configs[0]]["time_s"],
                     "objective_rel_vs_baseline": {
                         "max": float(np.nanmax(rel)), "min": float(np.nanmin(rel)),
                         "n_higher_1e-9": int((rel > 1e-9).sum()),
                         "n_lower_1e-9": int((rel < -1e-9).sum())}})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(RESULTS / "batched_stall.json"))
    ap.add_argument("--seeds", type=int, default=10, help="seeds per split")
    a = ap.parse_args(argv)
    chosen = (batched.PROX_STEPS, batched.PROX_BASE)
    configs = CONFIGS if chosen in CONFIGS else [*CONFIGS, chosen]
    val = run_split(range(20, 20 + a.seeds), configs)
    test = run_split(range(40, 40 + a.seeds), [configs[0], chosen])
    batched.PROX_STEPS, batched.PROX_BASE = chosen
    doc = {"benchmark": "batched SSC-L1 where Newton steps stall", "machine": machine(),
           "backend": "numpy (CPU)",
           "grid": {"fracs": FRACS, "alpha1": ALPHA1, "lambda2": LAMBDA2,
                    "n_points": 300, "n_atoms": 40, "n_shapes": 6},
           "chosen": {"prox_steps": chosen[0], "prox_base": chosen[1]},
           "validation_seeds": [20, 20 + a.seeds], "test_seeds": [40, 40 + a.seeds],
           "validation": val, "test": test}
    write_json(a.out, doc)
    for name, rows in (("validation", val), ("test", test)):
        for r in rows:
            print(f"{name:10s} steps {r['prox_steps']} base {r['prox_base']:4.0f}: certified "
                  f"{r['certified']}/{r['shapes']}, iterations {r['iterations']}, "
                  f"{r['time_s']:.2f} s ({r['time_vs_baseline']:.2f}x), errors {r['errors']}, "
                  f"warnings {r['warnings']}, objective vs 1/L "
                  f"{r['objective_rel_vs_baseline']['min']:.1e}.."
                  f"{r['objective_rel_vs_baseline']['max']:.1e}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
