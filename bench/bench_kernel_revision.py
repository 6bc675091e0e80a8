"""The SSC stage of a whole-CT fit with the Huber-Lasso kernels of this checkout
against those of an earlier commit, in the same run (issue #13).

The seeded left-kidney fit of ``bench_pipeline.py``'s ct512 workload is recorded
once (``bench_ssc_stage.record_calls``: 19 ``sparse_shape_composition`` calls,
cached KiTS model, numba). The earlier commit's ``kernels/huber_lasso.py`` is
read with ``git show`` and loaded as a module of its own beside the installed
one; the recorded calls are then replayed on fresh dictionary views,
alternating the two kernel files in the dispatch table (``huber_lasso``,
``huber_lasso_reweighted``, ``lasso_partial``; everything else is this
checkout's code in both). Median and fastest of ``--repeat`` replays, and the
largest difference between the two replays' reconstructions.

A second table times the product that fills the weighted Gram's new columns,
``D^T W D[:, miss]`` for ``m`` missing columns, on one BLAS thread as the
kernels run it, in both layouts: ``(K, n) @ (n, m)`` (before) and
``(m, n) @ (n, K)`` (now); a third, the same for the moments of a shape
(``ShapeDictionary.moments``, 12 columns: ``D^T V`` before, ``(V^T D)^T`` now,
made contiguous as the dictionary keeps it).

    python bench/bench_kernel_revision.py [--rev 86d4f64] [--repeat 9]
    # writes results/kernel_revision.json; needs bench/cache/kidney_model.npz
    # (bench_robustness.py), the shared data and git
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, best_of, machine, write_json  # noqa: E402
from bench_ssc_stage import kidney_dictionary, record_calls  # noqa: E402

import shapeprior.ssc._compose as compose  # noqa: E402
from shapeprior.backend import KERNELS  # noqa: E402

HERE = Path(__file__).resolve().parent
#: the commit before the Gram columns were filled as (m, n) @ (n, K)
BEFORE = "86d4f64"
OPS = {"huber_lasso_reweighted": "huber_lasso_reweighted_numba",
       "huber_lasso": "huber_lasso_numba", "lasso_partial": "lasso_partial_numba"}


def load_revision(rev, folder):
    """``kernels/huber_lasso.py`` of commit ``rev`` as a module of the installed
    kernel package (its relative imports resolve there); the names of its
    twins are added to the package as ``<name>_rev``."""
    import shapeprior_kernels

    src = subprocess.run(["git", "show", f"{rev}:kernels/huber_lasso.py"], cwd=HERE.parent,
                         capture_output=True, text=True, check=True).stdout
    path = Path(folder) / "huber_lasso_rev.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("shapeprior_kernels.huber_lasso_rev", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name in OPS.values():
        setattr(shapeprior_kernels, name + "_rev", getattr(mod, name))


def use(revision):
    for op, name in OPS.items():
        KERNELS[op]["numba"] = name + "_rev" if revision else name


def replay(calls, dic):
    """All recorded calls on a fresh view: (seconds, reconstructions)."""
    view = dic.view()
    recs = []
    t0 = time.perf_counter()
    for y, s, kw in calls:
        recs.append(compose.sparse_shape_composition(y, view, s, **kw).reconstruction)
    return time.perf_counter() - t0, np.array(recs)


def fill_products(DF, repeat=30):
    """Seconds of the column fill's product for m missing columns, both layouts."""
    from threadpoolctl import threadpool_limits

    w = np.random.default_rng(0).uniform(0.05, 1.0, DF.shape[0])
    rows = []
    with threadpool_limits(limits=1, user_api="blas"):
        for m in (1, 4, 8, 17, 25, 32):
            WB = np.ascontiguousarray((w[:, None] * DF[:, :m]).T)
            best = {"before": best_of(lambda: np.dot(DF.T, WB.T), repeat)[0],
                    "now": best_of(lambda: np.dot(WB, DF), repeat)[0]}
            rows.append({"columns": m, "before_s": best["before"], "now_s": best["now"],
                         "speedup": best["before"] / best["now"]})
    return rows


def moments_product(dic, repeat=30):
    """Seconds of a shape's moments pass (12 columns), both layouts, and whether
    the two give the same numbers."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(1)
    V = dic._moment_rhs(rng.normal(size=(dic.n_points, dic.n_dims)),
                        rng.uniform(0.1, 1.0, dic.n_points))
    DF = np.asarray(dic.DF)
    ways = {"before": lambda: DF.T @ V, "now": lambda: np.ascontiguousarray((V.T @ DF).T)}
    with threadpool_limits(limits=1, user_api="blas"):
        best = {name: best_of(fn, repeat)[0] for name, fn in ways.items()}
    a, b = ways["before"](), ways["now"]()
    return {"columns": V.shape[1], "before_s": best["before"], "now_s": best["now"],
            "speedup": best["before"] / best["now"],
            "max_relative_difference": float(np.abs(a - b).max() / np.abs(a).max())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default=BEFORE, help=f"earlier commit (default {BEFORE})")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--out", default=str(RESULTS / "kernel_revision.json"))
    a = ap.parse_args(argv)
    model, dic = kidney_dictionary()
    with tempfile.TemporaryDirectory() as work:
        load_revision(a.rev, work)
        calls, fit_dice, shape = record_calls(model, dic, Path(work))
        times = {"now": [], a.rev: []}
        recs = {}
        try:
            for revision in (False, True, False, True):     # compile, warm BLAS
                use(revision)
                replay(calls, dic)
            for _ in range(a.repeat):
                for key in times:
                    use(key != "now")
                    t, recs[key] = replay(calls, dic)
                    times[key].append(t)
        finally:
            use(False)
    modes = {k: {"total_s_median": float(np.median(v)), "total_s_min": float(min(v))}
             for k, v in times.items()}
    ratio = modes[a.rev]["total_s_median"] / modes["now"]["total_s_median"]
    out = {"benchmark": "kernel_revision", "machine": machine(),
           "command": "python bench/bench_kernel_revision.py " + " ".join(
               argv if argv is not None else sys.argv[1:]),
           "baseline": f"kernels/huber_lasso.py of commit {a.rev}, in the same run",
           "workload": "seeded left-kidney fit of the ct512 example CT (grid zyx "
                       f"{shape}), cached KiTS model ({dic.n_atoms} shapes, {dic.n_points} "
                       "vertices), numba; its SSC calls replayed",
           "n_calls": len(calls), "fit_dice": fit_dice, "repeats": a.repeat,
           "modes": modes, "speedup_total": ratio,
           "max_reconstruction_difference_mm":
               float(np.abs(recs["now"] - recs[a.rev]).max()),
           "fill_product": fill_products(np.asarray(dic.DF)),
           "moments_product": moments_product(dic)}
    write_json(a.out, out)
    print(f"{len(calls)} SSC calls: {a.rev} {modes[a.rev]['total_s_median'] * 1e3:.0f} ms -> now "
          f"{modes['now']['total_s_median'] * 1e3:.0f} ms (x{ratio:.2f}); reconstructions "
          f"differ by {out['max_reconstruction_difference_mm']:.1e} mm")
    for r in out["fill_product"]:
        print(f"fill product, {r['columns']:2d} columns: {r['before_s'] * 1e3:.2f} ms before, "
              f"{r['now_s'] * 1e3:.2f} ms now (x{r['speedup']:.2f})")
    r = out["moments_product"]
    print(f"moments, {r['columns']} columns: {r['before_s'] * 1e3:.2f} ms before, "
          f"{r['now_s'] * 1e3:.2f} ms now (x{r['speedup']:.2f}), relative difference "
          f"{r['max_relative_difference']:.1e}")


if __name__ == "__main__":
    main()
