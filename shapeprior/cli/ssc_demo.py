"""``shapeprior ssc-demo``: SSC alone on synthetic shapes with a leak and missing vertices."""

from __future__ import annotations

import time

import numpy as np

from .._outputs import OutputDir, manifest
from ._common import Parser, add_random_state


#: largest --points and --atoms (the training shapes then take 240 MB)
MAX_POINTS, MAX_ATOMS = 50_000, 200

LABELS = {"l1": "SSC-L1", "l0": "SSC-L0",
          "hybrid": "hybrid (SSC-L0, then SSC-L1 on its inliers)"}


def main(argv):
    ap = Parser(prog="shapeprior ssc-demo", description=main.__doc__)
    ap.add_argument("-o", "--output", required=True, help="output folder (created)")
    ap.add_argument("--points", type=int, default=2000,
                    help=f"vertices per shape, 50 to {MAX_POINTS} (default 2000)")
    ap.add_argument("--atoms", type=int, default=150,
                    help=f"training shapes, 5 to {MAX_ATOMS} (default 150)")
    ap.add_argument("--gross", type=float, default=0.15,
                    help="fraction of vertices displaced 10-30 mm, in [0, 0.5) (default 0.15)")
    ap.add_argument("--missing", type=float, default=0.1,
                    help="fraction of vertices with weight 0, in [0, 0.5) (default 0.1)")
    add_random_state(ap)
    ap.add_argument("--force", action="store_true", help="replace an existing output folder")
    a = ap.parse_args(argv)
    for name, v, lo, hi in (("--gross", a.gross, 0.0, 0.5), ("--missing", a.missing, 0.0, 0.5)):
        if not lo <= v < hi:
            ap.error(f"{name}={v} is outside [{lo}, {hi})")
    for name, v, lo, hi in (("--points", a.points, 50, MAX_POINTS),
                            ("--atoms", a.atoms, 5, MAX_ATOMS)):
        if not lo <= v <= hi:       # a demo: sizes a laptop holds (300 MB of shapes at most)
            ap.error(f"{name}={v} must be in [{lo}, {hi}]")

    from ..ssc import ShapeDictionary, solver_options, sparse_shape_composition
    from ..synthetic import make_ssc_problem

    out = OutputDir(a.output, force=a.force)
    p = make_ssc_problem(a.points, a.atoms, gross_fraction=a.gross, seed=a.seed)
    rng = np.random.default_rng(a.seed + 7)
    weights = np.ones(a.points)
    weights[rng.choice(a.points, int(a.missing * a.points), replace=False)] = 0.0
    dic = ShapeDictionary(p.atoms)
    report = {"points": a.points, "atoms": a.atoms, "gross_fraction": a.gross,
              "missing_fraction": a.missing, "methods": {}}
    naive = np.linalg.norm(p.observed - p.clean, axis=1)
    report["observed_error_mm"] = {"mean": float(naive.mean()), "max": float(naive.max())}
    arrays = {"clean": p.clean, "observed": p.observed, "gross": p.gross, "weights": weights}
    # 'hybrid' is what `reconstruct` does by default: trimmed OMP (L0) finds the
    # gross errors, then SSC-L1 with a small lambda1 fits the inliers
    for method in ("l1", "l0", "hybrid"):
        t0 = time.perf_counter()
        res = sparse_shape_composition(p.observed, dic, weights, **solver_options(method))
        dt = time.perf_counter() - t0
        err = np.linalg.norm(res.reconstruction - p.clean, axis=1)
        flagged = res.overridden
        tp = int((flagged & p.gross).sum())
        report["methods"][method] = {
            "time_s": dt,
            "surface_error_mm": {"mean": float(err.mean()), "max": float(err.max()),
                                 "mean_on_missing": float(err[weights == 0].mean())
                                 if (weights == 0).any() else None},
            "overridden_fraction": res.outlier_fraction,
            "gross_precision": tp / max(int(flagged.sum()), 1),
            "gross_recall": tp / max(int(p.gross.sum()), 1),
            "nonzero_atoms": int(np.count_nonzero(res.x)),
            "alignment_rounds": res.n_align_iter, "converged": res.converged,
            "lambda1": res.lambda1, "lambda2": res.lambda2,
        }
        arrays[f"reconstruction_{method}"] = res.reconstruction
        arrays[f"overridden_{method}"] = res.overridden
        m = report["methods"][method]
        print(f"{LABELS[method]}: mean surface error {m['surface_error_mm']['mean']:.2f} mm "
              f"(observed {naive.mean():.2f} mm), max {m['surface_error_mm']['max']:.2f} mm, "
              f"leak recall {m['gross_recall']:.2f}, {dt * 1e3:.0f} ms")
    out.write_json("report.json", report)
    out.write_npz("shapes.npz", **arrays)
    out.write_json("manifest.json", manifest(
        command="ssc-demo", parameters=vars(a), seed=a.seed, inputs={}))
    out.commit()
    print(f"wrote {a.output}/report.json, shapes.npz, manifest.json")
    return 0


main.__doc__ = "SSC alone on synthetic shapes with a leak and missing vertices."
