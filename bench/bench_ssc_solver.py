"""Benchmark: the structured L1 SSC solver against general-purpose solvers.

For (N, K) = (1000, 100), (5000, 300), (20000, 1000) it builds realistic SSC
problems (GPA-aligned smooth organ-like shapes, a fresh shape of the same
population as observation, 0.3 mm noise, 5-20 % of vertices displaced by
10-30 mm in contiguous patches) and solves the same objective

    sum (z - Dx - e)^2 + lam1 |x|_1 + lam2 |e|_1

with: ours (cold and warm-started), plain ADMM, scikit-learn Lasso on the
stacked design [D, c I] (sparse), and skglm's Huber + L1 (if installed).
Every solver's x is scored on the same objective (e optimal for that x).

    python bench/bench_ssc_solver.py                 # all sizes, writes bench/results/ssc_solver.json
    python bench/bench_ssc_solver.py --sizes 1000x100 --out /tmp/x.json
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

from shapeprior import ShapeDictionary, __version__
from shapeprior.ssc._admm import solve_admm
from shapeprior.ssc._l1 import full_objective, solve_l1
from shapeprior.synthetic import make_ssc_problem

NOISE = 0.3
OUTLIER_SIGMAS = 3.0


def _median_time(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def _score(dic, z, x, lam1, lam2, clean, gross):
    D = np.asarray(dic.D)
    Dx = D @ x
    obj = full_objective(z, Dx, x, np.ones_like(z), lam1, lam2)
    N = clean.shape[0]
    recon_err = np.linalg.norm(Dx.reshape(N, 3) - clean, axis=1)
    r = z - Dx
    e_support = np.any((np.abs(r) > lam2 / 2).reshape(N, 3), axis=1)
    tp = int((e_support & gross).sum())
    return {
        "objective": obj,
        "recon_mean_mm": float(recon_err.mean()),
        "recon_max_mm": float(recon_err.max()),
        "gross_precision": tp / max(int(e_support.sum()), 1),
        "gross_recall": tp / max(int(gross.sum()), 1),
        "nnz_x": int(np.count_nonzero(x)),
    }


def run_case(N, K, frac, seed, baselines, repeat):
    p = make_ssc_problem(N, K, gross_fraction=frac, noise=NOISE, seed=seed, transform=False)
    t0 = time.perf_counter()
    dic = ShapeDictionary(p.atoms, backend="numba")
    prep = time.perf_counter() - t0
    z = p.observed.ravel()
    w = np.ones_like(z)
    lam1 = 2e-3 * float(np.abs(dic.DF.T @ z).max())
    lam2 = 2.0 * OUTLIER_SIGMAS * NOISE     # tau = lam2 / 2 = 3 sigma
    solve_l1(dic, z, w, lam1, lam2)         # JIT warm-up, not timed
    t_cold, sol = _median_time(lambda: solve_l1(dic, z, w, lam1, lam2), repeat)
    # warm start: the solution for the previous iterate of a segmentation,
    # emulated by a shape that moved by ~0.2 mm everywhere
    rng = np.random.default_rng(seed + 1)
    z_prev = z + rng.normal(scale=0.2, size=z.shape)
    x_prev = solve_l1(dic, z_prev, w, lam1, lam2).x
    t_warm, sol_w = _median_time(lambda: solve_l1(dic, z, w, lam1, lam2, x0=x_prev), repeat)
    res = {
        "N": N, "K": K, "gross_fraction": frac, "seed": seed,
        "lambda1": lam1, "lambda2": lam2, "prepare_s": prep,
        "solvers": {},
    }
    ours = _score(dic, z, sol.x, lam1, lam2, p.clean, p.gross)
    ours.update(time_s=t_cold, n_iter=sol.n_iter, kkt=sol.kkt, converged=sol.converged)
    res["solvers"]["ours_cold"] = ours
    warm = _score(dic, z, sol_w.x, lam1, lam2, p.clean, p.gross)
    warm.update(time_s=t_warm, n_iter=sol_w.n_iter, kkt=sol_w.kkt, converged=sol_w.converged)
    res["solvers"]["ours_warm"] = warm
    f_star = ours["objective"]

    if "admm" in baselines:
        t0 = time.perf_counter()
        xa, _, it = solve_admm(dic, z, w, lam1, lam2, tol=1e-7, max_iter=5000 if N <= 5000 else 1000)
        t = time.perf_counter() - t0
        s = _score(dic, z, xa, lam1, lam2, p.clean, p.gross)
        s.update(time_s=t, n_iter=it)
        res["solvers"]["admm"] = s

    if "sklearn" in baselines and N <= 5000:
        from scipy import sparse
        from sklearn.linear_model import Lasso

        n = z.size
        X = sparse.hstack([sparse.csc_matrix(np.asarray(dic.D)),
                           sparse.identity(n, format="csc") * (lam1 / lam2)]).tocsc()
        m = Lasso(alpha=lam1 / (2 * n), fit_intercept=False, tol=1e-10, max_iter=2000)
        t0 = time.perf_counter()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(X, z)
        t = time.perf_counter() - t0
        xs = m.coef_[:K]
        s = _score(dic, z, xs, lam1, lam2, p.clean, p.gross)
        s.update(time_s=t, n_iter=int(m.n_iter_))
        res["solvers"]["sklearn_lasso"] = s
    elif "sklearn" in baselines:
        res["solvers"]["sklearn_lasso"] = {"skipped": "stacked design too large (> 30 GB dense Gram-free CD, minutes per fit)"}

    if "skglm" in baselines:
        try:
            from skglm import GeneralizedLinearEstimator
            from skglm.datafits import Huber
            from skglm.penalties import L1
            from skglm.solvers import AndersonCD
        except ImportError:
            res["solvers"]["skglm_huber"] = {"skipped": "skglm not installed"}
        else:
            n = z.size
            est = GeneralizedLinearEstimator(
                datafit=Huber(lam2 / 2), penalty=L1(alpha=lam1 / 2 / n),
                solver=AndersonCD(tol=1e-8, max_iter=200, fit_intercept=False))
            Dd = np.asarray(dic.D)
            est.fit(Dd[:200], z[:200])   # JIT warm-up
            t0 = time.perf_counter()
            est.fit(Dd, z)
            t = time.perf_counter() - t0
            s = _score(dic, z, est.coef_, lam1, lam2, p.clean, p.gross)
            s.update(time_s=t)
            res["solvers"]["skglm_huber"] = s

    for name, s in res["solvers"].items():
        if "objective" in s:
            s["objective_rel_gap"] = (s["objective"] - f_star) / abs(f_star)
            s["speedup_ours_cold"] = s["time_s"] / t_cold
    return res


#: issue #13 at (5000, 300): cold <= 10 ms, warm <= 5 ms and >= 100x skglm (Huber + L1)
#: (the earlier target of 20 ms cold is superseded)
TARGETS = {"N5000_K300_cold_ms": 10.0, "N5000_K300_warm_ms": 5.0,
           "N5000_K300_speedup_vs_skglm": 100.0}


def _target_check(r):
    """One (5000, 300) case against ``TARGETS``."""
    o, w = r["solvers"]["ours_cold"], r["solvers"]["ours_warm"]
    sk = r["solvers"].get("skglm_huber", {})
    out = {"gross_fraction": r["gross_fraction"], "cold_ms": o["time_s"] * 1e3,
           "cold_met": o["time_s"] * 1e3 <= TARGETS["N5000_K300_cold_ms"],
           "warm_ms": w["time_s"] * 1e3,
           "warm_met": w["time_s"] * 1e3 <= TARGETS["N5000_K300_warm_ms"]}
    if "speedup_ours_cold" in sk:
        out.update(speedup_vs_skglm=sk["speedup_ours_cold"],
                   speedup_met=sk["speedup_ours_cold"] >= TARGETS["N5000_K300_speedup_vs_skglm"])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000x100,5000x300,20000x1000")
    ap.add_argument("--fractions", default="0.05,0.2")
    ap.add_argument("--baselines", default="admm,sklearn,skglm")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "ssc_solver.json"))
    a = ap.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
    fracs = [float(f) for f in a.fractions.split(",")]
    baselines = set(a.baselines.split(",")) if a.baselines else set()
    cases = []
    for N, K in sizes:
        for f in fracs:
            r = run_case(N, K, f, a.seed, baselines, a.repeat)
            cases.append(r)
            o, wm = r["solvers"]["ours_cold"], r["solvers"]["ours_warm"]
            line = (f"N={N:6d} K={K:5d} gross={f:.2f}  ours cold {o['time_s']*1e3:7.2f} ms"
                    f"  warm {wm['time_s']*1e3:7.2f} ms  recon {o['recon_mean_mm']:.2f} mm"
                    f"  P/R {o['gross_precision']:.2f}/{o['gross_recall']:.2f}")
            for name in ("admm", "sklearn_lasso", "skglm_huber"):
                s = r["solvers"].get(name)
                if s and "time_s" in s:
                    line += f" | {name} {s['time_s']*1e3:8.1f} ms x{s['speedup_ours_cold']:.0f} gap {s['objective_rel_gap']:.1e}"
            print(line, flush=True)
    try:
        from threadpoolctl import threadpool_info
        blas = [{k: i.get(k) for k in ("internal_api", "num_threads", "version")} for i in threadpool_info()]
    except Exception:
        blas = None
    out = {
        "benchmark": "ssc_solver",
        "shapeprior_version": __version__,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                    "cpu_count": os.cpu_count(), "numpy": np.__version__, "blas": blas},
        "targets": TARGETS,
        "target_check": [_target_check(r) for r in cases if (r["N"], r["K"]) == (5000, 300)],
        "cases": cases,
    }
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import previous_results

    prev, where = previous_results(a.out)
    if prev:   # this run against the committed one, case by case (time ratio new / old)
        key = lambda c: (c["N"], c["K"], c["gross_fraction"])  # noqa: E731
        old = {key(c): c for c in prev["cases"]}
        out["comparison"] = {"previous": where, "time_ratio_new_over_previous": [
            {"N": c["N"], "K": c["K"], "gross_fraction": c["gross_fraction"],
             **{k: c["solvers"][k]["time_s"] / old[key(c)]["solvers"][k]["time_s"]
                for k in ("ours_cold", "ours_warm")}}
            for c in cases if key(c) in old],
            # the baselines did not change: their ratios show how much faster or
            # slower this machine ran than in the committed run
            "baseline_time_ratio_new_over_previous": [
                {"N": c["N"], "K": c["K"], "gross_fraction": c["gross_fraction"],
                 **{k: c["solvers"][k]["time_s"] / old[key(c)]["solvers"][k]["time_s"]
                    for k in ("admm", "skglm_huber")
                    if "time_s" in c["solvers"].get(k, {})
                    and "time_s" in old[key(c)]["solvers"].get(k, {})}}
                for c in cases if key(c) in old]}
        for r in out["comparison"]["time_ratio_new_over_previous"]:
            print(f"vs previous: N={r['N']} K={r['K']} gross={r['gross_fraction']:.2f} "
                  f"cold x{r['ours_cold']:.2f} warm x{r['ours_warm']:.2f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(a.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
