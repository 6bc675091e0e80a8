"""GPU measurements of the SSC kernels (run on a CUDA machine).

1. batched Gram Lasso (CUDA raw kernel, one block per problem) against its
   Numba twin on all CPU cores: solves per second for B problems of size n;
2. the xp-level L1 SSC solver on CuPy arrays against the Numba CPU path at
   (N, K) = (5000, 300), 20 % gross errors: time per cold and warm solve.

    python bench/bench_gpu.py --out bench/results/gpu_ssc.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def _sync():
    import cupy as cp

    cp.cuda.Stream.null.synchronize()


def bench_batched(B, n, repeat=5):
    import cupy as cp

    from batched_cd import batched_gram_cd_cupy, batched_gram_cd_numba, batched_gram_cd_numpy

    rng = np.random.default_rng(0)
    A = rng.normal(size=(B, 3 * n, n)) / np.sqrt(3 * n)
    H = np.matmul(A.transpose(0, 2, 1), A) + 0.05 * np.eye(n)     # BLAS, not einsum
    b = np.einsum("bki,bk->bi", A, rng.normal(size=(B, 3 * n)))
    lam = 0.1 * np.abs(b).max(axis=1)
    x_ref, s_ref = batched_gram_cd_numpy(H[:64], b[:64], lam[:64])
    Hg, bg, lg = cp.asarray(H), cp.asarray(b), cp.asarray(lam)
    xg, sg = batched_gram_cd_cupy(Hg, bg, lg)
    _sync()
    parity = float(np.abs(cp.asnumpy(xg[:64]) - x_ref).max())
    ts = []
    for _ in range(repeat):
        _sync()
        t0 = time.perf_counter()
        batched_gram_cd_cupy(Hg, bg, lg)
        _sync()
        ts.append(time.perf_counter() - t0)
    t_gpu = float(np.median(ts))
    batched_gram_cd_numba(H[:4], b[:4], lam[:4])
    t0 = time.perf_counter()
    x_nb, _ = batched_gram_cd_numba(H, b, lam)
    t_cpu = time.perf_counter() - t0
    return {"B": B, "n": n, "gpu_s": t_gpu, "cpu_numba_s": t_cpu,
            "gpu_solves_per_s": B / t_gpu, "cpu_solves_per_s": B / t_cpu,
            "speedup": t_cpu / t_gpu, "max_abs_diff_vs_numpy": parity,
            "max_abs_diff_gpu_vs_numba": float(np.abs(cp.asnumpy(xg) - x_nb).max()),
            "mean_sweeps": float(cp.asnumpy(sg).mean())}


def bench_solver(N, K, frac, repeat=5):
    import cupy as cp

    from shapeprior import ShapeDictionary
    from shapeprior.ssc._l1 import solve_l1
    from shapeprior.synthetic import make_ssc_problem

    p = make_ssc_problem(N, K, gross_fraction=frac, seed=0, transform=False)
    out = {"N": N, "K": K, "gross_fraction": frac}
    z = p.observed.ravel()
    for backend in ("numba", "cupy"):
        dic = ShapeDictionary(p.atoms, backend=backend)
        xp = dic.xp
        zz, w = xp.asarray(z), xp.ones(z.size)
        lam1 = 2e-3 * float(xp.abs(dic.DF.T @ zz).max())
        lam2 = 1.8
        sol = solve_l1(dic, zz, w, lam1, lam2)
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            sol = solve_l1(dic, zz, w, lam1, lam2)
            if backend == "cupy":
                _sync()
            ts.append(time.perf_counter() - t0)
        x_prev = solve_l1(dic, zz + 0.2 * xp.asarray(np.random.default_rng(1).normal(size=z.size)),
                          w, lam1, lam2).x
        tw = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            solw = solve_l1(dic, zz, w, lam1, lam2, x0=x_prev)
            if backend == "cupy":
                _sync()
            tw.append(time.perf_counter() - t0)
        out[backend] = {"cold_s": float(np.median(ts)), "warm_s": float(np.median(tw)),
                        "objective": sol.objective, "kkt": sol.kkt, "n_iter": sol.n_iter,
                        "converged": sol.converged}
    out["objective_rel_diff"] = abs(out["cupy"]["objective"] - out["numba"]["objective"]) / abs(
        out["numba"]["objective"])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "gpu_ssc.json"))
    a = ap.parse_args(argv)
    import cupy as cp

    dev = cp.cuda.runtime.getDeviceProperties(0)
    res = {"benchmark": "gpu_ssc", "device": dev["name"].decode(),
           "cpu_count": os.cpu_count(), "platform": platform.platform(),
           "cupy": cp.__version__, "batched": [], "solver": []}
    for B, n in ((10000, 40), (10000, 100), (2000, 300)):
        r = bench_batched(B, n)
        res["batched"].append(r)
        print(f"batched CD B={B} n={n}: GPU {r['gpu_solves_per_s']:.0f} solves/s, "
              f"Numba {r['cpu_solves_per_s']:.0f} solves/s (x{r['speedup']:.1f}), "
              f"diff {r['max_abs_diff_gpu_vs_numba']:.1e}", flush=True)
    r = bench_solver(5000, 300, 0.2)
    res["solver"].append(r)
    print(f"L1 solve 5000x300: numba cold {r['numba']['cold_s']*1e3:.1f} ms warm "
          f"{r['numba']['warm_s']*1e3:.1f} ms | cupy cold {r['cupy']['cold_s']*1e3:.1f} ms warm "
          f"{r['cupy']['warm_s']*1e3:.1f} ms | obj rel diff {r['objective_rel_diff']:.1e}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
