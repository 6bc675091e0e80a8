"""Batched exact SSC-L1 on a GPU against the single-shape solver, same run.

Workload: the (N, K) = (5000, 300) synthetic problem of ``bench_batched.py``
("synthetic aligned (convex solve)": GPA-aligned atoms, observations with
0.3 mm noise and 10 % of the vertices in gross-error patches, lambda2 from
the automatic rule on the first shape, lambda1 automatic per shape).
``--base`` distinct shapes are drawn and each is repeated with fresh 0.3 mm
noise until ``--shapes`` problems exist (drawing all of them costs minutes).

Rows (all in one process):

* ``numba_loop``: the single-shape solver (Numba) over ``--check`` shapes on
  every CPU core (``sparse_shape_composition_many``, threads): the CPU
  baseline, and the reference optimum;
* ``cupy_loop``: the single-shape solver with a CuPy dictionary, one shape
  after another (``--loop`` shapes);
* ``batched_<chunk>``: :func:`sparse_composition_batched` on the CuPy
  dictionary over all shapes (host arrays in, host arrays out: transfers
  included), per chunk size; agreement with the reference on the checked
  shapes (relative x and objective differences, KKT, how many needed the
  single solver).

    python bench/bench_batched_gpu.py --out bench/results/batched_gpu.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_json  # noqa: E402
from bench_batched import synthetic  # noqa: E402

from shapeprior.ssc import (ShapeDictionary, sparse_composition_batched,  # noqa: E402
                            sparse_shape_composition, sparse_shape_composition_many)


def _gpu():
    try:
        import cupy as cp

        return cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), cp.__version__
    except Exception:          # no CuPy or no device: the CPU rows still run
        return None, None


def _agree(xs, objs, ref):
    dx = max(float(np.abs(x - r.x).max() / max(np.abs(r.x).max(), 1e-300))
             for x, r in zip(xs, ref))
    do = max(abs(o - r.objective) / abs(r.objective) for o, r in zip(objs, ref))
    return dx, do


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=int, default=10240)
    ap.add_argument("--base", type=int, default=1024, help="distinct shapes drawn")
    ap.add_argument("--check", type=int, default=512, help="shapes solved by the Numba loop")
    ap.add_argument("--loop", type=int, default=16, help="shapes solved by the CuPy loop")
    ap.add_argument("--chunks", default="2048,10240")
    ap.add_argument("--backend", default="cupy", help="dictionary backend of the batch")
    ap.add_argument("--out", default=str(RESULTS / "batched_gpu.json"))
    a = ap.parse_args(argv)
    gpu, cupy_version = _gpu()
    t0 = time.perf_counter()
    atoms, base = synthetic(5000, 300, a.base, aligned=True)
    rng = np.random.default_rng(7)
    reps = -(-a.shapes // a.base)
    obs = np.concatenate([base] + [base + rng.normal(0, 0.3, base.shape)
                                   for _ in range(reps - 1)])[:a.shapes]
    t_make = time.perf_counter() - t0
    print(f"{a.shapes} problems ({a.base} drawn) in {t_make:.1f} s", flush=True)
    dnb = ShapeDictionary(atoms, backend="numba")
    lam2 = sparse_shape_composition(obs[0], dnb, alignment="none").lambda2
    opts = {"alignment": "none", "lambda2": lam2, "reweight": 0}
    cores = len(os.sched_getaffinity(0))
    res = {"benchmark": "batched_gpu", "device": gpu, "cupy": cupy_version, "cpu_count": cores,
           "platform": platform.platform(), "n_points": 5000, "n_atoms": 300,
           "n_shapes": a.shapes, "distinct_shapes_drawn": a.base, "lambda2": lam2,
           "targets": {"gpu_solves_per_s": 10000}, "rows": {}}

    check = obs[:a.check]
    sparse_shape_composition_many(check[:4], dnb, n_jobs=cores, **opts)     # JIT
    t0 = time.perf_counter()
    ref = sparse_shape_composition_many(check, dnb, n_jobs=cores, **opts)
    t = time.perf_counter() - t0
    res["rows"]["numba_loop"] = {"shapes": len(check), "n_jobs": cores, "seconds": t,
                                 "solves_per_s": len(check) / t,
                                 "max_kkt": float(max(r.info["kkt"] for r in ref))}
    print(f"numba loop ({cores} threads): {len(check) / t:.0f} solves/s", flush=True)

    dic = ShapeDictionary(atoms, backend=a.backend)
    if a.backend == "cupy":
        sparse_shape_composition(obs[0], dic, **opts)
        t0 = time.perf_counter()
        loop = [sparse_shape_composition(y, dic, **opts) for y in obs[:a.loop]]
        t = time.perf_counter() - t0
        dx, do = _agree([r.x for r in loop], [r.objective for r in loop], ref[:a.loop])
        res["rows"]["cupy_loop"] = {"shapes": a.loop, "seconds": t, "solves_per_s": a.loop / t,
                                    "max_relative_x_difference": dx,
                                    "max_relative_objective_difference": do}
        print(f"cupy loop: {a.loop / t:.1f} solves/s", flush=True)
    sparse_composition_batched(obs[:256], dic, lambda2=lam2, chunk_size=256)   # warm-up
    base_rate = res["rows"]["numba_loop"]["solves_per_s"]
    for chunk in [int(c) for c in a.chunks.split(",") if c]:
        t0 = time.perf_counter()
        b = sparse_composition_batched(obs, dic, lambda2=lam2, chunk_size=chunk)
        t = time.perf_counter() - t0
        n = len(check)
        dx, do = _agree(b.x[:n], b.objective[:n], ref)
        row = {"chunk_size": chunk, "seconds": t, "solves_per_s": a.shapes / t,
               "speedup_vs_numba_loop": a.shapes / t / base_rate,
               "certified_in_batch": int(b.certified.sum()),
               "solved_alone": int(b.solved_alone.sum()), "max_kkt": float(b.kkt.max()),
               "max_batched_iterations": int(b.n_iter.max()),
               "mean_batched_iterations": float(b.n_iter.mean()),
               "checked_shapes": n, "max_relative_x_difference": dx,
               "max_relative_objective_difference": do}
        if "cupy_loop" in res["rows"]:
            row["speedup_vs_cupy_loop"] = row["solves_per_s"] / res["rows"]["cupy_loop"][
                "solves_per_s"]
        res["rows"][f"batched_{chunk}"] = row
        print(f"batched chunk {chunk}: {row['solves_per_s']:.0f} solves/s "
              f"(x{row['speedup_vs_numba_loop']:.1f} numba loop), certified "
              f"{row['certified_in_batch']}/{a.shapes}, alone {row['solved_alone']}, "
              f"max kkt {row['max_kkt']:.1e}, dx {dx:.1e}, dobj {do:.1e}", flush=True)
    print(f"wrote {write_json(a.out, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
