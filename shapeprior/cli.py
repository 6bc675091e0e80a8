"""Command line interface: ``shapeprior COMMAND ...``.

Each command is a ``main``-style function taking ``argv`` so it can be tested
in-process; :func:`main` dispatches.

Commands
--------
segment      segment a NIfTI file, DICOM series folder or folder of cases
refine       refine an existing label map with the shape prior
build-model  shape model (correspondence, GPA, PCA, K-SVD, appearance) from label maps
demo         the whole pipeline on built-in synthetic phantoms (no download)
ssc-demo     SSC alone on synthetic shapes with a leak and missing vertices
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import __version__
from ._outputs import OutputDir, OutputExistsError, manifest, one_line, show_path


def _ssc_demo(argv):
    ap = argparse.ArgumentParser(prog="shapeprior ssc-demo", description=_ssc_demo.__doc__)
    ap.add_argument("-o", "--output", required=True, help="output folder (created)")
    ap.add_argument("--points", type=int, default=2000, help="vertices per shape (default 2000)")
    ap.add_argument("--atoms", type=int, default=150, help="training shapes (default 150)")
    ap.add_argument("--gross", type=float, default=0.15,
                    help="fraction of vertices displaced 10-30 mm, in [0, 0.5) (default 0.15)")
    ap.add_argument("--missing", type=float, default=0.1,
                    help="fraction of vertices with weight 0, in [0, 0.5) (default 0.1)")
    ap.add_argument("--random-state", "--seed", dest="seed", type=int, default=0,
                    help="seed of the random number generator (default 0)")
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
        command="ssc-demo", parameters=vars(a), seed=a.seed, inputs={}))
    out.commit()
    print(f"wrote {a.output}/report.json, shapes.npz, manifest.json")
    return 0


_ssc_demo.__doc__ = "SSC alone on synthetic shapes with a leak and missing vertices."


def _numbers(text, name, cast=float, n=None, skip_empty=False):
    """Comma-separated values of an option; one clear error naming it."""
    what = "numbers" if cast is float else "integers, e.g. 1,2"
    try:
        v = tuple(cast(t) for t in text.split(",") if t.strip() or not skip_empty)
    except ValueError:
        v = ()
    if not v or (n is not None and len(v) != n):
        count = f"{n} " if n is not None else ""
        raise ValueError(f"{name}={text!r} must be {count}comma-separated {what}")
    return v


def _floats(text, n, name):
    return _numbers(text, name, float, n)


def _segment(argv):
    """Segment an organ in a NIfTI/NRRD/MHA file, a DICOM series or a folder of cases."""
    ap = argparse.ArgumentParser(
        prog="shapeprior segment",
        description="Segment an organ with an SSC shape model. INPUT: a NIfTI/NRRD/MHA file, "
                    "a DICOM series folder, or a folder of such cases. Without --seed the "
                    "organ is searched for in the whole field of view.",
        epilog="Every case gets a status: ok, suspect or failed (organ not found, cut by the "
               "field of view, leak, implausible shape), with its reasons in report.json. "
               "Exit codes: 0 ok (suspect too, unless --strict); 1 bad input or an error; 3 a "
               "failed result (or a suspect one with --strict); 130/143 interrupted.")
    ap.add_argument("input")
    ap.add_argument("-o", "--output", required=True,
                    help="output folder (one subfolder per case for a folder of cases)")
    ap.add_argument("--model", required=True, help="model file from build-model")
    ap.add_argument("--series", default=None, help="DICOM series index or key (see errors)")
    ap.add_argument("--seed", default=None,
                    help="organ centre x,y,z: mm in LPS (default) or RAS, or voxel indices "
                         "i,j,k (see --seed-space); negative numbers work: --seed -64.4,-12,8")
    ap.add_argument("--seed-space", choices=("lps", "ras", "voxel"), default="lps",
                    help="coordinates of --seed: lps (ITK/DICOM), ras (3D Slicer/nibabel) or "
                         "voxel (i,j,k); default lps")
    ap.add_argument("--side", choices=("none", "left", "right"), default="none",
                    help="side of a paired organ (model built with mirrored right sides)")
    ap.add_argument("--reference", default=None, help="reference label map for Dice/distances")
    ap.add_argument("--reference-labels", default=None,
                    help="labels of the organ in --reference (default: the labels the model "
                         "was built from, e.g. 1,2 for hippocampus head and body)")
    ap.add_argument("--method", choices=("l1", "l0"), default="l1")
    ap.add_argument("--mesh-format", default="vtk", help="vtk, ply, stl or obj (default vtk)")
    ap.add_argument("--normalisation", choices=("percentile", "ct"), default=None,
                    help="intensity scale (default: the model's, or 'ct' without appearance)")
    ap.add_argument("--dark-organ", action="store_true",
                    help="edge fallback: the organ is darker than its surroundings")
    ap.add_argument("--window", default=None,
                    help="edge fallback: intensity window lo,hi inside the organ (normalised units)")
    ap.add_argument("--workers", type=int, default=0,
                    help="folder of cases: run on a local dask cluster with N processes "
                         "(default 0: sequential)")
    ap.add_argument("--scheduler", default=None,
                    help="folder of cases: address of an existing dask scheduler")
    ap.add_argument("--backend", choices=("auto", "numpy", "numba", "cupy"), default=None,
                    help="where image smoothing and sampling run (default: $SHAPEPRIOR_BACKEND "
                         "or auto = numba; cupy needs the 'gpu' extra and an NVIDIA GPU)")
    ap.add_argument("--force", action="store_true",
                    help="replace previous shapeprior outputs (never an input or a foreign "
                         "file); a folder of cases resumes without it")
    ap.add_argument("--deidentify", action="store_true",
                    help="replace case names by salted hashes in every output, report, "
                         "summary, message and folder name (salt: $SHAPEPRIOR_DEID_SALT or "
                         "~/.config/shapeprior/deid-salt)")
    ap.add_argument("--allow-no-orientation", action="store_true",
                    help="accept NIfTI/Analyze files that record no orientation (placed by "
                         "their voxel sizes alone)")
    ap.add_argument("--strict", action="store_true",
                    help="exit 3 for a 'suspect' result too (default: only for 'failed')")
    ap.add_argument("--placement", choices=("search", "prior"), default="search",
                    help="without --seed: search the whole field of view (default) or start "
                         "at the training position relative to the FOV centre")
    ap.add_argument("--init-mask", default=None,
                    help="single case: an existing label map (e.g. another tool's) whose "
                         "refined surface starts the fit instead of the placement search")
    ap.add_argument("--init-labels", default="1", help="labels of the organ in --init-mask")
    ap.add_argument("--hypotheses", type=int, default=5,
                    help="without --seed: placements fitted before the best one continues "
                         "(default 5)")
    a = ap.parse_args(_join_negative_values(argv, ("--seed", "--window")))

    from pathlib import Path

    from .model import load_model
    from .segment import SegmentParams
    from .pipeline import Deidentifier, discover_cases, run_case, scrub

    model = load_model(a.model)
    params = SegmentParams(method=a.method, side=a.side,
                           seed_mm=_floats(a.seed, 3, "--seed") if a.seed else None,
                           seed_space=a.seed_space,
                           inside_brighter=not a.dark_organ,
                           window=_floats(a.window, 2, "--window") if a.window else None,
                           normalisation=a.normalisation, backend=a.backend,
                           n_hypotheses=a.hypotheses, placement=a.placement)
    from .backend import resolve_backend

    params.backend = resolve_backend(params.backend)   # fail early, and record it resolved
    cases = discover_cases(a.input)
    deid = Deidentifier() if a.deidentify else None
    if deid is not None:
        from .pipeline import scrub_argv

        cases = deid.apply(cases)
        argv = scrub_argv(argv, {a.input: "<input>", a.output: "<output>",
                                 a.reference: "<reference>"})
    dic = model.ssc_dictionary("shapes")
    if a.reference_labels is not None:
        ref_labels = _parse_labels(a.reference_labels, "--reference-labels")
    else:
        ref_labels = tuple(int(v) for v in
                           (model.metadata.get("parameters") or {}).get("labels") or (1,))
    single = Path(a.input).is_file() or (len(cases) == 1 and cases[0].path == Path(a.input))
    if single:
        c = cases[0]
        try:
            rep = run_case(c.path, a.output, model, a.model, params, series=a.series,
                           reference=a.reference, reference_labels=ref_labels,
                           mesh_format=a.mesh_format, force=a.force, dictionary=dic, argv=argv,
                           case_name=c.name, deidentify=a.deidentify,
                           allow_no_orientation=a.allow_no_orientation, init_mask=a.init_mask,
                           init_labels=_parse_labels(a.init_labels, "--init-labels"))
        except (ValueError, OSError) as exc:
            if deid is not None:
                raise type(exc)(scrub(str(exc), c.path, c.name)) from None
            raise
        _print_case(c.name, rep)
        return _finish_case(c.name, rep, a.output, a.strict)
    if a.reference or a.init_mask:
        raise ValueError("--reference and --init-mask apply to a single case, not a folder "
                         "of cases")
    from .pipeline import run_batch, write_summary

    root = Path(a.output)
    summary = run_batch(cases, root, a.model, params, series=a.series,
                        mesh_format=a.mesh_format, force=a.force, workers=a.workers,
                        scheduler=a.scheduler, argv=argv, deidentify=a.deidentify,
                        allow_no_orientation=a.allow_no_orientation, inputs=[a.input],
                        progress=sys.stderr.isatty())
    write_summary(root, summary, len(cases))
    errors = sum("error" in r for r in summary)
    for r in summary:
        if "error" in r or r["status"] == "skipped":
            extra = r.get("error") or r.get("reason")
        else:
            extra = f"{r['volume_ml']:.1f} ml, quality {r['quality']:.2f}, {r['time_s']:.2f} s"
            if r.get("reasons"):
                extra += "; " + "; ".join(r["reasons"])
        print(f"{r['case']:30s} {r['status']:8s} {extra}")
    counts = {k: sum(r["status"] == k for r in summary) for k in
              ("ok", "suspect", "failed", "skipped")}
    print(f"{len(cases)} cases: {counts['ok']} ok, {counts['suspect']} suspect, "
          f"{counts['failed']} failed ({errors} with errors), {counts['skipped']} skipped; "
          f"summary in {show_path(root / 'summary.json')}")
    return 1 if errors else _status_code([r["status"] for r in summary], a.strict)


def _join_negative_values(argv, options):
    """``--seed -64.4,-12,8`` -> ``--seed=-64.4,-12,8``: argparse would take a
    value starting with '-' for an option."""
    import re

    out, i = [], 0
    argv = list(argv)
    while i < len(argv):
        if argv[i] in options and i + 1 < len(argv) and \
                re.fullmatch(r"-[\d.][\d.eE+-]*(,[-+]?[\d.][\d.eE+-]*)*", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _print_case(name, rep):
    line = (f"{name}: {rep['status']} (quality {rep['quality']:.2f}), {rep['volume_ml']:.1f} ml, {rep['iterations']} iterations, "
            f"{rep['time_s']:.2f} s, prior overrode up to "
            f"{100 * rep['overridden_fraction_max']:.1f}% of vertices "
            f"({100 * rep['overridden_fraction']:.1f}% at the end)")
    if "reference" in rep:
        r = rep["reference"]
        line += f"; Dice {r['dice']:.3f}, mean surface distance {r['assd_mm']:.2f} mm"
    print(line)
    for r in rep["reasons"]:
        print(f"  {rep['status']}: {r}")
    for w in rep["warnings"]:
        print(f"  note: {w}")


def _finish_case(name, rep, output, strict):
    """After one case: say where the outputs are; a result that is not
    trustworthy gets one stderr line and exit code 3."""
    print(f"wrote {show_path(output)}")
    code = _status_code([rep["status"]], strict)
    if code:
        print(f"shapeprior: {name}: {rep['status']}: {'; '.join(rep['reasons'])}",
              file=sys.stderr)
    return code


def _status_code(statuses, strict):
    """Exit code for case statuses: 3 when a result is not trustworthy
    ('failed', or 'suspect' with --strict), else 0."""
    bad = {"failed", "suspect"} if strict else {"failed"}
    return 3 if any(s in bad for s in statuses) else 0


def _demo(argv):
    """Whole pipeline on built-in synthetic phantoms (no download)."""
    ap = argparse.ArgumentParser(
        prog="shapeprior demo",
        description="Whole pipeline on built-in synthetic phantoms (no download): write "
                    "phantom image/label pairs, build a small model with appearance, and "
                    "segment a held-out phantom that has a bright leak next to the organ.")
    ap.add_argument("-o", "--output", required=True, help="output folder")
    ap.add_argument("--cases", type=int, default=12, help="training phantoms (default 12)")
    ap.add_argument("--random-state", "--seed", dest="seed", type=int, default=0,
                    help="seed of the random number generator (default 0)")
    ap.add_argument("--force", action="store_true",
                    help="replace a previous demo output (never a foreign folder)")
    a = ap.parse_args(argv)
    if a.cases < 4:
        ap.error(f"--cases={a.cases} must be >= 4")
    from pathlib import Path

    from .synthetic import write_phantom_cases

    import shutil
    import tempfile

    out = OutputDir(a.output, force=a.force)        # checked before the slow stages
    work = Path(tempfile.mkdtemp(prefix="shapeprior-demo-"))
    try:
        images, labels = write_phantom_cases(work / "phantoms", a.cases + 1, a.seed,
                                             with_leak=(a.cases,))
        test = f"phantom_{a.cases:03d}.nii.gz"
        (work / "train_labels").mkdir()
        for f in sorted(labels.iterdir()):
            if f.name != test:
                shutil.copy(f, work / "train_labels" / f.name)
        print(f"[1/2] building a model from {a.cases} synthetic image/label pairs")
        rc = _build_model([str(work / "train_labels"), "-o", str(work / "model.npz"),
                           "--images", str(images), "--vertices", "642", "--iso-spacing", "0.75",
                           "--smooth", "0.75", "--organ", "phantom", "--quiet",
                           "--random-state", str(a.seed)])
        if rc:
            return rc
        print("[2/2] segmenting a held-out phantom with a bright leak beside the organ")
        rc = _segment([str(images / test), "-o", str(work / "seg"), "--model",
                       str(work / "model.npz"), "--reference", str(labels / test)])
        if rc == 0:
            for f in sorted((work / "seg").iterdir()):
                shutil.copy(f, out.file(f.name))
            shutil.copy(work / "model.npz", out.file("model.npz"))
            out.commit()
            print(f"published {show_path(a.output)}")
        return rc
    finally:
        out.discard()
        shutil.rmtree(work, ignore_errors=True)


def _parse_labels(text, name="--labels"):
    vals = _numbers(text, name, int, skip_empty=True)
    if any(v <= 0 for v in vals):
        raise ValueError(f"{name}={text!r} must list label values > 0")
    return vals


def _build_model(argv):
    """Build an SSC shape model from a folder of label maps."""
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
    ap.add_argument("--images", default=None,
                    help="training images (same relative path or file name as the label maps): "
                         "learns boundary appearance for segment")
    ap.add_argument("--normalisation", choices=("percentile", "ct"), default="percentile",
                    help="intensity scale for appearance: percentile (MR) or ct (HU)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--random-state", "--seed", dest="random_state", type=int, default=0,
                    help="seed of the random number generator (default 0)")
    ap.add_argument("--force", action="store_true",
                    help="replace a previous shapeprior model file (never an input or a "
                         "foreign file)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--allow-no-orientation", action="store_true",
                    help="accept NIfTI/Analyze label maps that record no orientation")
    a = ap.parse_args(argv)

    from pathlib import Path

    from ._outputs import (OutputDir, check_not_input, check_replaceable, own_model_file,
                           publish_file)
    from .model import BuildParams, build_model, find_label_maps, save_model

    out = Path(a.output)
    side_path = out.with_name(out.name + ".report")
    inputs = [a.labels_dir, a.images]
    check_not_input(out, inputs)
    check_replaceable(out, a.force, own_model_file)          # before the slow stages
    labels = _parse_labels(a.labels)
    for name, v in (("--iso-spacing", a.iso_spacing), ("--vertices", a.vertices)):
        if v <= 0:
            raise ValueError(f"{name}={v} must be > 0")
    files = find_label_maps(a.labels_dir)
    if a.limit:
        files = files[: a.limit]
    side = OutputDir(side_path, force=a.force, inputs=inputs)   # checked before the slow stages
    try:
        params = BuildParams(labels=labels, organ=a.organ, split_sides=a.split_sides,
                             side=a.side, mirror_right=not a.no_mirror, n_vertices=a.vertices,
                             iso_spacing=a.iso_spacing, smooth_mm=a.smooth, n_atoms=a.atoms,
                             n_nonzero=a.nonzero, seed=a.random_state, n_jobs=max(1, a.jobs),
                             images_dir=a.images, normalisation=a.normalisation,
                             allow_no_orientation=a.allow_no_orientation)
        model, report = build_model(files, params, root=a.labels_dir, progress=not a.quiet)
        # the model file and its report/manifest folder are staged, then renamed into place
        side.write_json("report.json", report)
        side.write_json("manifest.json", manifest(
            command="build-model", parameters=vars(a), seed=a.random_state,
            inputs={str(f.relative_to(a.labels_dir)): f for f in files}))
        staged = side.scratch(out.name)
        save_model(model, staged)
        publish_file(staged, out, force=a.force, inputs=inputs, own=own_model_file)
        side.commit()
    finally:
        side.discard()
    print(f"model: {model.shapes.shape[0]} shapes x {model.n_vertices} vertices, "
          f"{len(model.pca_variances)} PCA modes; {len(report['rejected'])} rejected "
          f"(see {show_path(side_path)}/report.json)")
    print(f"wrote {show_path(out)}")
    return 0


def _refine(argv):
    """Refine an existing label map (any tool's) with the shape prior: leaks, holes, islands."""
    ap = argparse.ArgumentParser(
        prog="shapeprior refine",
        description="Fit the SSC shape model to an existing segmentation (TotalSegmentator, "
                    "nnU-Net, a rough manual mask) so that leaks, holes, missing or duplicated "
                    "slices and islands land in the gross-error term; optionally continue "
                    "against the image. Writes the refined label on the mask's grid, the mesh "
                    "(point data: gross_error_mm, overridden, confidence; LPS mm) and a report "
                    "of the regions removed and added.",
        epilog="Exit codes: 0 ok (suspect too, unless --strict); 1 bad input or an error; 3 a "
               "failed result (or a suspect one with --strict).")
    ap.add_argument("mask", help="label map (NIfTI/NRRD/MHA)")
    ap.add_argument("-o", "--output", required=True, help="output folder")
    ap.add_argument("--model", required=True, help="model file from build-model")
    ap.add_argument("--labels", default="1", help="labels of the organ in MASK (default 1)")
    ap.add_argument("--image", default=None,
                    help="the scan (file or DICOM folder): continue the fit against it")
    ap.add_argument("--side", choices=("none", "left", "right"), default="none",
                    help="side of a paired organ (default: from the mask's position)")
    ap.add_argument("--window", default=None,
                    help="with --image and a model without appearance: intensity window lo,hi "
                         "inside the organ (normalised units; CT: HU/1000)")
    ap.add_argument("--method", choices=("l1", "l0"), default="l1")
    ap.add_argument("--mesh-format", default="vtk", help="vtk, ply, stl or obj (default vtk)")
    ap.add_argument("--force", action="store_true",
                    help="replace a previous shapeprior output (never an input or a foreign file)")
    ap.add_argument("--strict", action="store_true", help="exit 3 for a 'suspect' result too")
    ap.add_argument("--allow-no-orientation", action="store_true",
                    help="accept NIfTI/Analyze files that record no orientation")
    a = ap.parse_args(_join_negative_values(argv, ("--window",)))

    from .model import load_model
    from .pipeline import refine_case
    from .segment import SegmentParams

    model = load_model(a.model)
    labels = _parse_labels(a.labels, "--labels")
    params = SegmentParams(method=a.method, side=a.side,
                           window=_floats(a.window, 2, "--window") if a.window else None)
    rep = refine_case(a.mask, a.output, model, a.model, params, labels=labels, image=a.image,
                      mesh_format=a.mesh_format, force=a.force, argv=argv,
                      allow_no_orientation=a.allow_no_orientation)
    c = rep["corrections"]
    print(f"{rep['input']['mask']}: {rep['status']} (quality {rep['quality']:.2f}); "
          f"{c['input_ml']:.1f} ml -> {c['refined_ml']:.1f} ml: removed {c['removed_ml']:.1f} ml, "
          f"added {c['added_ml']:.1f} ml in {len(c['regions'])} regions")
    for r in rep["reasons"]:
        print(f"  {rep['status']}: {r}")
    return _finish_case(rep["input"]["mask"], rep, a.output, a.strict)


COMMANDS = {"demo": _demo, "segment": _segment, "refine": _refine, "build-model": _build_model,
            "ssc-demo": _ssc_demo}


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that staged outputs are cleaned up."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv=None):
    """Run ``shapeprior COMMAND ...``; returns the exit code.

    Bad input of any kind ends with one line on stderr and exit code 1;
    Ctrl-C and SIGTERM end with one line, nothing partial kept, and 130/143.
    """
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
        print(f"shapeprior: unknown command {one_line(argv[0])!r}; choose from "
              f"{sorted(COMMANDS)}", file=sys.stderr)
        return 2
    import signal
    import threading

    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return cmd(argv[1:])
    except KeyboardInterrupt:
        print(f"shapeprior {argv[0]}: interrupted; nothing partial was kept", file=sys.stderr)
        return 130
    except Terminated:
        print(f"shapeprior {argv[0]}: terminated; nothing partial was kept", file=sys.stderr)
        return 143
    except OutputExistsError as exc:
        print(f"shapeprior {argv[0]}: {one_line(exc)}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"shapeprior {argv[0]}: error: out of memory", file=sys.stderr)
        return 1
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"shapeprior {argv[0]}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line for users; SHAPEPRIOR_DEBUG=1 re-raises
        import os

        if os.environ.get("SHAPEPRIOR_DEBUG"):
            raise
        print(f"shapeprior {argv[0]}: internal error: {type(exc).__name__}: {one_line(exc)} "
              "(set SHAPEPRIOR_DEBUG=1 for the traceback, and please report it)",
              file=sys.stderr)
        return 1
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
