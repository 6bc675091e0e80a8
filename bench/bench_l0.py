"""SSC-L0 (trimmed OMP) and the hybrid (L0, then an L1 refit of the inliers) on
held-out KiTS19 kidneys: time per shape of the compiled ``trimmed_omp`` twin
against the NumPy reference in the same run, and the difference between their
reconstructions. Everything else (alignment, the hybrid's L1 refit on the
compiled ``huber_lasso``) is the same code in both: the Numba dictionary, with
its ``trimmed_omp`` twin switched in the dispatch table.

The shapes are those of ``bench_robustness.py`` (the cached held-out kidneys,
2562 vertices, 280 training shapes), clean and with 30 % of the vertices
displaced 10-30 mm along the normal. Each method runs on every shape with one
backend, then the other, ``--repeat`` times interleaved; the table takes the
median over shapes of each shape's fastest run. A third variant,
``numba_pass_per_round``, is the Numba twin with the code before SSC-L0's
alignment rounds shared the moments of the SSC-L1 solve they start from (a pass
over D per round: ``L0_SHARED_MOMENTS = False``), interleaved the same way.

    python bench/bench_l0.py [--shapes 12] [--repeat 3]
    # needs bench/cache/kidney_model.npz and heldout.npz (bench_robustness.py)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _common import machine, write_json
from shapeprior.backend import KERNELS, numba_available
from shapeprior.mesh import Surface
from shapeprior.model import load_model
from shapeprior.ssc import _compose, sparse_shape_composition
from shapeprior.synthetic import corrupt_patches

HERE = Path(__file__).resolve().parent
METHODS = {"ssc_l0": {"method": "l0", "n_nonzero": 20},
           "hybrid": {"method": "l0", "n_nonzero": 20, "refit": 0.03}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", type=int, default=12, help="held-out shapes (default 12)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per shape (default 3)")
    a = ap.parse_args(argv)
    mpath, hpath = HERE / "cache" / "kidney_model.npz", HERE / "cache" / "heldout.npz"
    if not (mpath.exists() and hpath.exists()):
        print(f"needs {mpath} and {hpath} (run bench_robustness.py first)", file=sys.stderr)
        return 2
    if not numba_available():
        print("needs numba", file=sys.stderr)
        return 2
    model = load_model(mpath)
    held = np.load(hpath)["shapes"][:a.shapes]
    dic = model.ssc_dictionary("shapes", backend="numba")
    # variant: (trimmed_omp twin, SSC-L0 rounds share the start's moments)
    twins = {"numpy": ("trimmed_omp_numpy", True), "numba": ("trimmed_omp_numba", True),
             "numba_pass_per_round": ("trimmed_omp_numba", False)}
    w = np.ones(held.shape[1])
    rows = []
    KERNELS["trimmed_omp"] = dict(KERNELS["trimmed_omp"])
    for gross in (0.0, 0.3):
        ys = []
        for i, clean in enumerate(held):
            r = np.random.default_rng([0, i, int(gross * 100)])
            y, _ = corrupt_patches(clean, gross, r, magnitude=(10.0, 30.0),
                                   normals=Surface(clean, model.faces).vertex_normals())
            ys.append(y)
        for name, kw in METHODS.items():
            for twin, shared in twins.values():            # compile, fill caches
                KERNELS["trimmed_omp"]["numba"], _compose.L0_SHARED_MOMENTS = twin, shared
                sparse_shape_composition(ys[0], dic, w, **kw)
            best = {b: np.full(len(ys), np.inf) for b in twins}
            recon = {}
            for _ in range(a.repeat):
                for b, (twin, shared) in twins.items():
                    KERNELS["trimmed_omp"]["numba"], _compose.L0_SHARED_MOMENTS = twin, shared
                    for i, y in enumerate(ys):
                        t0 = time.perf_counter()
                        res = sparse_shape_composition(y, dic, w, **kw)
                        best[b][i] = min(best[b][i], time.perf_counter() - t0)
                        recon[b, i] = res.reconstruction
            _compose.L0_SHARED_MOMENTS = True

            def differ(b):
                return max(float(np.abs(recon[b, i] - recon["numba", i]).max())
                           for i in range(len(ys)))

            diff = differ("numpy")
            row = {"gross_fraction": gross, "method": name, "n_shapes": len(ys),
                   "s_per_shape_median": {b: float(np.median(v)) for b, v in best.items()},
                   "s_per_shape_max": {b: float(np.max(v)) for b, v in best.items()},
                   "speedup_median": float(np.median(best["numpy"] / best["numba"])),
                   "max_reconstruction_difference_mm": diff,
                   "shared_moments_speedup_median": float(np.median(
                       best["numba_pass_per_round"] / best["numba"])),
                   "shared_moments_max_difference_mm": differ("numba_pass_per_round")}
            rows.append(row)
            print(f"{name:7s} gross {gross:.1f}: numpy {row['s_per_shape_median']['numpy']:.3f}"
                  f" s, numba {row['s_per_shape_median']['numba']:.3f} s per shape "
                  f"(x{row['speedup_median']:.2f}; worst {row['s_per_shape_max']['numba']:.3f}"
                  f" s), reconstructions differ by {diff:.1e} mm; a pass per round "
                  f"{row['s_per_shape_median']['numba_pass_per_round']:.3f} s "
                  f"(x{row['shared_moments_speedup_median']:.2f}, differ by "
                  f"{row['shared_moments_max_difference_mm']:.1e} mm)", flush=True)
    write_json(HERE / "results" / "l0.json", {
        "benchmark": "ssc_l0_trimmed_omp", "machine": machine(),
        "command": "python bench/bench_l0.py " + " ".join(argv if argv is not None
                                                          else sys.argv[1:]),
        "data": "bench/cache/heldout.npz: held-out KiTS19 kidneys (case % 5 == 0), "
                "2562 vertices; model bench/cache/kidney_model.npz (280 training shapes)",
        "baseline": "the NumPy reference twin of trimmed_omp in the same run (the rest: "
                    "the numba backend in both); numba_pass_per_round: the numba twin with "
                    "a pass over D per alignment round (L0_SHARED_MOMENTS = False, the "
                    "code before the rounds shared the start's moments)",
        "timing": f"fastest of {a.repeat} interleaved runs per shape; median and max over "
                  "shapes",
        "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
