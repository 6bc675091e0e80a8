"""Benchmark: SSC for many shapes and one dictionary (issue #13).

Solves per second of :func:`shapeprior.ssc.sparse_shape_composition_many`
on threads (the default executor: the compiled solver releases the GIL, one
dictionary view per thread, the pass over D made for 16 shapes at once) and on
a process pool, against the baseline in the same run: the single-shape loop in
this process. Every batched result is compared with the loop's (the batch runs
the same solver; BLAS sums in another order, one matrix product for a group of
shapes instead of one matrix-vector product each): the largest relative
difference of x and of the objective, the gross-error flags that differ, and
the largest relative KKT violation of the L1 solves.

Workloads:

* ``synthetic``: (N, K) = (5000, 300), the size the issue names; a fresh shape
  of the same population per observation, 10 % of the vertices displaced
  10-30 mm in patches; aligned (``alignment='none'``) and unaligned
  (similarity alignment rounds: full SSC). Aligned twice: the objective as
  stated, one convex solve per shape (lambda2 fixed at the value the
  automatic rule picks for the first shape, ``reweight=0``), and the default
  robust solve (automatic lambda2: two solves; three reweighted ones).
* ``kidney``: the cached KiTS model (2562 vertices, its training shapes as the
  dictionary) on the cached held-out kidneys, SSC-L1 with alignment.

    python bench/bench_batched.py                   # writes bench/results/batched.json
    python bench/bench_batched.py --shapes 16 --out /tmp/b.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, previous_results, write_json  # noqa: E402

from shapeprior.ssc import (ShapeDictionary, sparse_shape_composition,  # noqa: E402
                            sparse_shape_composition_many)
from shapeprior.synthetic import ShapePopulation, corrupt_patches, random_similarity  # noqa: E402

CACHE = Path(__file__).resolve().parent / "cache"


def synthetic(n_points, n_atoms, n_shapes, aligned, seed=0, frac=0.10):
    """Dictionary atoms (GPA-aligned) and observations (M, N, 3): 0.3 mm noise,
    ``frac`` of the vertices displaced in patches."""
    from shapeprior.align import generalized_procrustes

    rng = np.random.default_rng(seed)
    pop = ShapePopulation(n_points=n_points, seed=seed)
    atoms = generalized_procrustes(pop.sample(n_atoms), max_iter=20, tol=1e-8).aligned
    obs = []
    for _ in range(n_shapes):
        y = pop.sample(1, rng)[0]
        if not aligned:
            R, s, t = random_similarity(rng)
            y = s * y @ R.T + t
        y = y + rng.normal(0, 0.3, y.shape)
        y, _ = corrupt_patches(y, frac, rng)
        obs.append(y)
    return atoms, np.stack(obs)


def kidney(n_shapes):
    from shapeprior.model import load_model

    mp, hp = CACHE / "kidney_model.npz", CACHE / "heldout.npz"
    if not (mp.exists() and hp.exists()):
        return None
    model = load_model(mp)
    held = np.load(hp)["shapes"] if "shapes" in np.load(hp).files else None
    if held is None:
        return None
    return model.shapes, np.asarray(held[:n_shapes], dtype=float)


def _agreement(loop, many):
    """How far the batch's results are from the loop's (the same solver)."""
    dx = max(float(np.abs(a.x - b.x).max() / max(np.abs(a.x).max(), 1e-300))
             for a, b in zip(loop, many))
    dobj = max(abs(a.objective - b.objective) / max(abs(a.objective), 1e-300)
               for a, b in zip(loop, many))
    flags = sum(int(np.count_nonzero(a.overridden != b.overridden)) for a, b in zip(loop, many))
    kkt = [r.info.get("kkt") for r in many if r.info.get("kkt") is not None]
    return {"max_relative_x_difference": dx, "max_relative_objective_difference": dobj,
            "overridden_flags_differing": flags,
            "max_relative_kkt": float(max(kkt)) if kkt else None}


def run(name, atoms, obs, options, n_jobs, executors):
    dic = ShapeDictionary(atoms)
    sparse_shape_composition(obs[0], dic, **options)          # warm caches and JIT
    t0 = time.perf_counter()
    loop = [sparse_shape_composition(y, dic, **options) for y in obs]
    t_loop = time.perf_counter() - t0
    row = {"workload": name, "n_points": int(atoms.shape[1]), "n_atoms": int(atoms.shape[0]),
           "n_shapes": len(obs), "options": options, "n_jobs": n_jobs,
           "loop_solves_per_s": len(obs) / t_loop, "executors": {}}
    line = f"{name:30s} loop {row['loop_solves_per_s']:7.1f}/s"
    for ex in executors:
        t0 = time.perf_counter()
        many = sparse_shape_composition_many(obs, dic, n_jobs=n_jobs, executor=ex, **options)
        t_many = time.perf_counter() - t0
        got = {"solves_per_s": len(obs) / t_many, "speedup": t_loop / t_many,
               **_agreement(loop, many)}
        row["executors"][ex] = got
        line += (f" | {ex}({n_jobs}) {got['solves_per_s']:7.1f}/s x{got['speedup']:.2f} "
                 f"dx={got['max_relative_x_difference']:.1e} "
                 f"dobj={got['max_relative_objective_difference']:.1e} "
                 f"flags={got['overridden_flags_differing']} kkt={got['max_relative_kkt']:.1e}")
    best = max(row["executors"], key=lambda e: row["executors"][e]["solves_per_s"])
    row["many_solves_per_s"] = row["executors"][best]["solves_per_s"]
    row["best_executor"] = best
    row["mean_alignment_rounds"] = float(np.mean([r.n_align_iter for r in loop]))
    row["mean_newton_iterations"] = float(np.mean([r.n_iter for r in loop]))
    print(line, flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=int, default=64)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--executors", default="threads,processes")
    ap.add_argument("--out", default=str(RESULTS / "batched.json"))
    a = ap.parse_args(argv)
    ex = a.executors.split(",")
    rows = []
    atoms, obs = synthetic(5000, 300, a.shapes, aligned=True)
    lam2 = sparse_shape_composition(obs[0], ShapeDictionary(atoms), alignment="none").lambda2
    rows.append(run("synthetic aligned (convex solve)", atoms, obs,
                    {"alignment": "none", "lambda2": lam2, "reweight": 0}, a.jobs, ex))
    rows.append(run("synthetic aligned (solve)", atoms, obs, {"alignment": "none"}, a.jobs, ex))
    atoms, obs = synthetic(5000, 300, a.shapes, aligned=False, seed=1)
    rows.append(run("synthetic similarity (SSC)", atoms, obs, {}, a.jobs, ex))
    k = kidney(a.shapes)
    if k is None:
        print("kidney: SKIP (bench/cache/kidney_model.npz and heldout.npz are built by "
              "bench/bench_robustness.py)")
    else:
        rows.append(run("kidney SSC-L1", k[0], k[1], {}, a.jobs, ex))
    out = {"benchmark": "batched_ssc", "machine": machine(), "rows": rows,
           "targets": {"solves_per_s_2_cores_5000x300": 300,
                       "solves_per_s_h100_5000x300": 10000},
           "gpu": "not measured (no GPU in this session)"}
    prev, _ = previous_results(a.out)
    if prev:
        old = {r["workload"]: r for r in prev["rows"]}
        out["comparison"] = {r["workload"]: r["many_solves_per_s"]
                             / old[r["workload"]]["many_solves_per_s"]
                             for r in rows if r["workload"] in old}
    print(f"wrote {write_json(a.out, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
