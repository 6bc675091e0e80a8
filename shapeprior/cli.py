"""Command line interface: ``shapeprior COMMAND ...``.

Each command is a ``main``-style function taking ``argv`` so it can be tested
in-process; :func:`main` dispatches.

Commands
--------
build-model  shape model (correspondence, GPA, PCA, K-SVD) from label maps
demo    SSC on a built-in synthetic phantom (no download): builds a dictionary
        from a seeded shape population, corrupts a held-out shape with a leak
        and missing vertices, reconstructs it with SSC-L1 and SSC-L0 and writes
        ``report.json``, ``shapes.npz`` and ``manifest.json`` to OUTDIR.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import __version__
from ._outputs import OutputDir, OutputExistsError, manifest


def _demo(argv):
    ap = argparse.ArgumentParser(prog="shapeprior demo", description=_demo.__doc__)
    ap.add_argument("-o", "--output", required=True, help="output folder (created)")
    ap.add_argument("--points", type=int, default=2000, help="vertices per shape (default 2000)")
    ap.add_argument("--atoms", type=int, default=150, help="training shapes (default 150)")
    ap.add_argument("--gross", type=float, default=0.15,
                    help="fraction of vertices displaced 10-30 mm, in [0, 0.5) (default 0.15)")
    ap.add_argument("--missing", type=float, default=0.1,
                    help="fraction of vertices with weight 0, in [0, 0.5) (default 0.1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="replace an existing output folder")
    a = ap.parse_args(argv)
    for name, v, lo, hi in (("--gross", a.gross, 0.0, 0.5), ("--missing", a.missing, 0.0, 0.5)):
        if not lo <= v < hi:
            ap.error(f"{name}={v} is outside [{lo}, {hi})")
    if a.points < 50 or a.atoms < 5:
        ap.error(f"--points={a.points} must be >= 50 and --atoms={a.atoms} >= 5")

    from .ssc import ShapeDictionary, sparse_shape_composition
    from .synthetic import make_ssc_problem

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
    for method in ("l1", "l0"):
        t0 = time.perf_counter()
        res = sparse_shape_composition(p.observed, dic, weights, method=method, n_nonzero=20)
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
        print(f"SSC-{method.upper()}: mean surface error {m['surface_error_mm']['mean']:.2f} mm "
              f"(observed {naive.mean():.2f} mm), max {m['surface_error_mm']['max']:.2f} mm, "
              f"leak recall {m['gross_recall']:.2f}, {dt * 1e3:.0f} ms")
    out.write_json("report.json", report)
    out.write_npz("shapes.npz", **arrays)
    out.write_json("manifest.json", manifest(
        command="demo", parameters=vars(a), seed=a.seed, inputs={}))
    out.commit()
    print(f"wrote {a.output}/report.json, shapes.npz, manifest.json")
    return 0


_demo.__doc__ = "Run SSC on a built-in synthetic phantom (no download needed)."


def _parse_labels(text):
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--labels={text!r} must be comma-separated integers, e.g. 1,2") from None
    if not vals or any(v <= 0 for v in vals):
        raise ValueError(f"--labels={text!r} must list label values > 0")
    return vals


def _build_model(argv):
    ap = argparse.ArgumentParser(
        prog="shapeprior build-model",
        description="Build an SSC shape model from a folder of label maps "
                    "(NIfTI/NRRD/MHA; searched recursively).")
    ap.add_argument("labels_dir", help="folder of label maps")
    ap.add_argument("-o", "--output", required=True, help="model file to write (.npz)")
    ap.add_argument("--labels", default="1", help="label values of the organ, e.g. 1,2 (default 1)")
    ap.add_argument("--organ", default="organ", help="organ name stored in the model")
    ap.add_argument("--split-sides", action="store_true",
                    help="paired organ under one label (KiTS kidneys): split by connected "
                         "component and side")
    ap.add_argument("--side", choices=("both", "left", "right"), default="both")
    ap.add_argument("--no-mirror", action="store_true",
                    help="keep right-side organs as they are (default: mirror onto the left)")
    ap.add_argument("--vertices", type=int, default=2562,
                    help="template vertices (icosphere: 642, 2562, 10242; default 2562)")
    ap.add_argument("--iso-spacing", type=float, default=1.5, help="surface grid, mm (default 1.5)")
    ap.add_argument("--smooth", type=float, default=1.5, help="Gaussian smoothing, mm (default 1.5)")
    ap.add_argument("--atoms", type=int, default=0,
                    help="also learn a K-SVD dictionary of this many atoms (default 0: none)")
    ap.add_argument("--nonzero", type=int, default=5, help="K-SVD atoms per shape (default 5)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N label maps")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="replace an existing model file")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)

    from pathlib import Path

    from ._outputs import OutputDir
    from .model import BuildParams, build_model, find_label_maps, save_model

    out = Path(a.output)
    if out.exists() and not a.force:
        raise OutputExistsError(f"model file {out} exists; use --force to replace it")
    labels = _parse_labels(a.labels)
    for name, v in (("--iso-spacing", a.iso_spacing), ("--vertices", a.vertices)):
        if v <= 0:
            raise ValueError(f"{name}={v} must be > 0")
    files = find_label_maps(a.labels_dir)
    if a.limit:
        files = files[: a.limit]
    params = BuildParams(labels=labels, organ=a.organ, split_sides=a.split_sides, side=a.side,
                         mirror_right=not a.no_mirror, n_vertices=a.vertices,
                         iso_spacing=a.iso_spacing, smooth_mm=a.smooth, n_atoms=a.atoms,
                         n_nonzero=a.nonzero, seed=a.seed, n_jobs=max(1, a.jobs))
    model, report = build_model(files, params, root=a.labels_dir, progress=not a.quiet)
    # model file and its report/manifest folder are published atomically
    side = OutputDir(out.with_name(out.name + ".report"), force=a.force)
    side.write_json("report.json", report)
    side.write_json("manifest.json", manifest(
        command="build-model", parameters=vars(a), seed=a.seed,
        inputs={str(f.relative_to(a.labels_dir)): f for f in files}))
    save_model(model, out)
    side.commit()
    print(f"model: {model.shapes.shape[0]} shapes x {model.n_vertices} vertices, "
          f"{len(model.pca_variances)} PCA modes; {len(report['rejected'])} rejected "
          f"(see {side.path}/report.json)")
    print(f"wrote {out}")
    return 0


COMMANDS = {"demo": _demo, "build-model": _build_model}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"shapeprior {__version__}\nusage: shapeprior COMMAND [options]\n\ncommands:")
        for name, fn in COMMANDS.items():
            doc = (fn.__doc__ or "Build an SSC shape model from a folder of label maps.").strip()
        print(f"  {name:12s} {doc.splitlines()[0]}")
        return 0 if argv else 2
    if argv[0] == "--version":
        print(__version__)
        return 0
    cmd = COMMANDS.get(argv[0])
    if cmd is None:
        print(f"shapeprior: unknown command {argv[0]!r}; choose from {sorted(COMMANDS)}",
              file=sys.stderr)
        return 2
    try:
        return cmd(argv[1:])
    except OutputExistsError as exc:
        print(f"shapeprior {argv[0]}: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"shapeprior {argv[0]}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
