"""Robustness benchmark on real kidney shapes (KiTS19 label maps).

Builds a kidney model from the training cases (case number % 5 != 0), fits
the same template to the held-out cases (case number % 5 == 0, never used
for training), then reconstructs each held-out shape from corrupted versions:
contiguous patches displaced 10-30 mm along the normal (leaks) and/or
contiguous patches missing (weight 0). Methods: SSC-L1, SSC-L0, SSC-L1
with a dense refit of its inliers, the hybrid (SSC-L0 finds the gross
errors, SSC-L1 with a small lambda1 fits the inliers), dictionary-SSC
(K-SVD atoms), PCA projection (ASM, +-3 sd clamp), RANSAC-ASM, and the
nearest training shape. The refit's lambda1 fraction is chosen on held-out
shapes outside the report set (the tuning split). Error: symmetric surface
distance (mm) between reconstruction and the clean held-out surface.

    python bench/bench_robustness.py            # writes results/robustness.json and .png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, data_root, machine
from shapeprior.align import procrustes
from shapeprior.correspond import fit_template, surface_distances
from shapeprior.mesh import Surface
from shapeprior.model import (BuildParams, build_model, find_label_maps, load_model,
                              pca_reconstruct, save_model, surfaces_from_label_map)
from shapeprior.model._build import resolve_resolution
from shapeprior.ssc import sparse_shape_composition
from shapeprior.ssc._compose import HYBRID_REFIT, L0_NONZERO
from shapeprior.synthetic import corrupt_patches

HERE = Path(__file__).resolve().parent
CONDITIONS = [(0.0, 0.0), (0.1, 0.0), (0.2, 0.0), (0.3, 0.0), (0.4, 0.0),
              (0.0, 0.25), (0.0, 0.5), (0.2, 0.25)]


def case_number(path):
    return int(path.parent.name.split("_")[1])


def prepare(cache, n_jobs, limit=None):
    root = data_root() / "kits19"
    files = find_label_maps(root)
    if limit:
        files = files[:limit]
    train = [f for f in files if case_number(f) % 5 != 0]
    test = [f for f in files if case_number(f) % 5 == 0]
    params = BuildParams(labels=(1, 2), organ="kidney", split_sides=True, n_atoms=60,
                         n_nonzero=5, n_jobs=n_jobs)
    mpath = cache / "kidney_model.npz"
    if mpath.exists():
        model = load_model(mpath)
        report = json.loads((cache / "kidney_build_report.json").read_text())
    else:
        model, report = build_model(train, params, root=root)
        save_model(model, mpath)
        (cache / "kidney_build_report.json").write_text(json.dumps(report, indent=1))
    # the held-out surfaces at the resolution the build chose (the organ's size decides
    # it when BuildParams leaves it open)
    params, _ = resolve_resolution(params, train)
    hpath = cache / "heldout.npz"
    if hpath.exists():
        z = np.load(hpath, allow_pickle=False)
        held, ids = z["shapes"], list(z["ids"])
    else:
        held, ids = [], []
        for f in test:
            for side, s, _, _ in surfaces_from_label_map(f, params):
                v, q = fit_template(model.mean, model.faces, s)
                if q.ok:
                    held.append(v)
                    ids.append(f"{f.parent.name}:{side}")
        held = np.stack(held)
        np.savez(hpath, shapes=held, ids=np.array(ids))
    return model, report, held, ids


def missing_patch(points, fraction, rng):
    w = np.ones(len(points))
    n = int(round(fraction * len(points)))
    if n:
        c = points[rng.integers(len(points))]
        w[np.argsort(np.linalg.norm(points - c, axis=1))[:n]] = 0.0
    return w


def ransac_asm(model, y, w, rng, n_trials=40, sample=0.15, inlier_mm=5.0):
    vis = np.flatnonzero(w > 0)
    best, best_n = None, -1
    for _ in range(n_trials):
        s = np.zeros(len(y))
        s[rng.choice(vis, max(10, int(sample * vis.size)), replace=False)] = 1.0
        r = pca_reconstruct(model, y, s)
        n_in = int(np.sum(np.linalg.norm(r - y, axis=1)[vis] < inlier_mm))
        if n_in > best_n:
            best, best_n = r, n_in
    inl = (np.linalg.norm(best - y, axis=1) < inlier_mm) & (w > 0)
    return pca_reconstruct(model, y, inl.astype(float)) if inl.sum() > 10 else best


def nearest_shape(model, y, w):
    best, err = None, np.inf
    for s in model.shapes:
        T = procrustes(s, y, w)
        e = np.sum(w * np.sum((T.apply(s) - y) ** 2, axis=1))
        if e < err:
            best, err = T.apply(s), e
    return best


#: refit candidates (fraction of the automatic lambda1 for the dense L1 fit of the
#: inliers), chosen on the tuning split
REFIT_CANDIDATES = (0.1, 0.03)
#: atoms of the hybrid's trimmed OMP (``n_nonzero``), chosen on the tuning split with
#: the library's refit (``HYBRID_REFIT``); the library's default is ``L0_NONZERO``
NONZERO_CANDIDATES = (10, 20, 30, 40, 60)
#: conditions the refit is chosen on: clean, 30 % displaced, 50 % missing
TUNE_CONDITIONS = [(0.0, 0.0), (0.3, 0.0), (0.0, 0.5)]

_W = {}


def _init(cache, n_jobs, limit, threads=None):
    if threads:     # one worker per core: no nested BLAS or Numba threads
        import numba
        from threadpoolctl import threadpool_limits

        numba.set_num_threads(threads)
        _W["limits"] = threadpool_limits(threads)
    model, _, held, _ = prepare(cache, n_jobs, limit)
    _W.update(model=model, held=held, dic=model.ssc_dictionary("shapes"),
              atoms=model.ssc_dictionary("atoms") if model.atoms is not None else None)


#: what :func:`init_worker` loads in a worker process of a benchmark on the
#: tuning split (bench_l0_start.py, bench_hybrid_rounds.py)
WORKER = {}


def init_worker():
    """Initializer of such a worker process: one thread (Numba and BLAS), and the
    cached model, held-out shapes and the dictionary of the training shapes in
    :data:`WORKER`."""
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(1)
    WORKER["limits"] = threadpool_limits(1)
    model, _, held, _ = prepare(HERE / "cache", 1)
    WORKER.update(model=model, held=held, dic=model.ssc_dictionary("shapes"))


def _methods(refits):
    """name -> fn(y, w, rng) for the report, or the tuning candidates."""
    model, dic, atoms = _W["model"], _W["dic"], _W["atoms"]
    ssc = sparse_shape_composition
    if refits == "tune":
        out = {"ssc_l1": lambda y, w, r: ssc(y, dic, w).reconstruction}
        for a in REFIT_CANDIDATES:
            out[f"ssc_l1_refit_{a:g}"] = (lambda a: lambda y, w, r: ssc(
                y, dic, w, refit=a).reconstruction)(a)
            out[f"ssc_hybrid_{a:g}"] = (lambda a: lambda y, w, r: ssc(
                y, dic, w, method="l0", refit=a).reconstruction)(a)
        for k in NONZERO_CANDIDATES:
            out[f"ssc_hybrid_k{k}"] = (lambda k: lambda y, w, r: ssc(
                y, dic, w, method="l0", n_nonzero=k, refit=HYBRID_REFIT).reconstruction)(k)
        return out
    out = {
        "ssc_l1": lambda y, w, r: ssc(y, dic, w).reconstruction,
        "ssc_l0": lambda y, w, r: ssc(y, dic, w, method="l0",
                                      n_nonzero=refits["nonzero"]).reconstruction,
        "ssc_l1_refit": lambda y, w, r: ssc(y, dic, w, refit=refits["ssc_l1_refit"]
                                            ).reconstruction,
        "ssc_hybrid": lambda y, w, r: ssc(y, dic, w, method="l0", n_nonzero=refits["nonzero"],
                                          refit=refits["ssc_hybrid"]).reconstruction,
        "dict_ssc_l1": (lambda y, w, r: ssc(y, atoms, w).reconstruction)
        if atoms is not None else None,
        "pca_asm": lambda y, w, r: pca_reconstruct(model, y, w),
        "ransac_asm": lambda y, w, r: ransac_asm(model, y, w, r),
        "nearest_shape": lambda y, w, r: nearest_shape(model, y, w),
    }
    return {k: v for k, v in out.items() if v is not None}


def tuning_options(doc, out_name, argv):
    """The options of a benchmark that chooses a library constant on the tuning
    split: ``--n-jobs``, ``--within`` (the relative error allowed) and ``--out``
    (default ``results/OUT_NAME``); None, said on stderr, when KiTS19 is missing."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--within", type=float, default=0.01)
    ap.add_argument("--out", default=str(RESULTS / out_name))
    a = ap.parse_args(argv)
    if not (data_root() / "kits19").is_dir():
        print(f"KiTS19 not found under {data_root()} (set SHAPEPRIOR_DATA)", file=sys.stderr)
        return None
    return a


def tuning_case(job):
    """For one job ``(i, gross, missing, seed)`` in a worker (:func:`init_worker`):
    ``measure(**options)`` -> ``(mean surface error mm, seconds)`` of
    ``sparse_shape_composition`` with those options on held-out shape ``i`` so
    corrupted (:func:`corrupt`), against its clean surface."""
    i, gross, missing, seed = job
    model = WORKER["model"]
    clean = WORKER["held"][i]
    y, w, _ = corrupt(clean, model.faces, i, gross, missing, seed)
    surf = Surface(clean, model.faces)

    def measure(**options):
        t0 = time.perf_counter()
        res = sparse_shape_composition(y, WORKER["dic"], w, **options)
        sec = time.perf_counter() - t0
        d1, d2 = surface_distances(Surface(res.reconstruction, model.faces), surf)
        return float(0.5 * (d1.mean() + d2.mean())), sec

    return measure


def on_tuning_split(shape_fn, conditions, n_jobs, seed=1):
    """``shape_fn((i, gross, missing, seed))`` -> ``(key, out)`` for every tuning
    kidney under every ``(gross, missing)`` condition, in ``n_jobs`` worker
    processes (:func:`init_worker`): ``({key: [out, ...]}, tuning ids)``."""
    from concurrent.futures import ProcessPoolExecutor

    _, _, held, ids = prepare(HERE / "cache", n_jobs)
    _, tune = splits(len(held))
    jobs = [(int(i), g, m, seed) for g, m in conditions for i in tune]
    acc = {}
    with ProcessPoolExecutor(n_jobs, initializer=init_worker) as pool:
        for key, out in pool.map(shape_fn, jobs):
            acc.setdefault(key, []).append(out)
    return acc, [ids[i] for i in tune]


def splits(n_held, seed=0, max_heldout=24, max_tune=23):
    """Indices of the report set and the tuning split among ``n_held`` held-out shapes."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(n_held, min(max_heldout, n_held), replace=False)
    return pick, np.setdiff1d(np.arange(n_held), pick)[::2][:max_tune]


def corrupt(clean, faces, i, gross, missing, seed):
    """Held-out shape ``i`` with ``gross`` of its vertices displaced 10-30 mm in
    patches and ``missing`` in patches of weight 0: ``(y, weights, rng)``, the
    generator seeded by the shape and the condition (drawn from no further)."""
    r = np.random.default_rng([seed, int(i), int(gross * 100), int(missing * 100)])
    y, _ = corrupt_patches(clean, gross, r, magnitude=(10.0, 30.0),
                           normals=Surface(clean, faces).vertex_normals())
    return y, missing_patch(clean, missing, r), r


def _one(job):
    """Errors of every method on one held-out shape under one condition."""
    i, gross, missing, seed, refits, skip = job
    model = _W["model"]
    clean = _W["held"][i]
    surf = Surface(clean, model.faces)
    y, w, r = corrupt(clean, model.faces, i, gross, missing, seed)
    res = {}
    for m, fn in _methods(refits).items():
        if m in skip:
            continue
        t0 = time.perf_counter()
        rec = fn(y, w, r)
        t = time.perf_counter() - t0
        d1, d2 = surface_distances(Surface(rec, model.faces), surf)
        res[m] = (0.5 * (d1.mean() + d2.mean()), max(d1.max(), d2.max()), t)
    return gross, missing, res


def _run(pool, shapes, conditions, seed, refits, skip=()):
    jobs = [(int(i), g, m, seed, refits, tuple(skip)) for g, m in conditions for i in shapes]
    acc = {}
    for g, m, res in pool.map(_one, jobs):
        for k, v in res.items():
            acc.setdefault((g, m), {}).setdefault(k, []).append(v)
    rows = []
    for g, m in conditions:
        row = {"gross_fraction": g, "missing_fraction": m, "n_shapes": len(shapes)}
        for k, v in acc[(g, m)].items():
            v = np.array(v)
            row[k] = {"mean_surface_mm": float(v[:, 0].mean()),
                      "worst_mean_surface_mm": float(v[:, 0].max()),
                      "max_surface_mm": float(v[:, 1].mean()),
                      "time_s_per_shape": float(v[:, 2].mean())}
        rows.append(row)
        print(f"gross {g:.1f} missing {m:.2f}: " + "  ".join(
            f"{k} {row[k]['mean_surface_mm']:.2f}/{row[k]['max_surface_mm']:.1f}mm"
            for k in acc[(g, m)]), flush=True)
    return rows


def _choose(rows, family, candidates=REFIT_CANDIDATES, prefix=""):
    """The candidate of ``family`` with the lowest mean error over the tuning conditions."""
    def score(a):
        return float(np.mean([r[f"{family}_{prefix}{a:g}"]["mean_surface_mm"] for r in rows]))
    return min(candidates, key=score), {f"{a:g}": score(a) for a in candidates}


def main(argv=None):
    from concurrent.futures import ProcessPoolExecutor

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-heldout", type=int, default=24)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N label maps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tune", type=int, default=23,
                    help="held-out shapes outside the report set that choose the refit")
    ap.add_argument("--out", default=str(HERE / "results" / "robustness.json"))
    ap.add_argument("--reuse", nargs="*", default=[], metavar="METHOD",
                    help="take these methods' rows from the existing --out file instead of "
                         "recomputing them (same held-out shapes and corruptions; only for "
                         "methods whose code did not change)")
    a = ap.parse_args(argv)
    if not (data_root() / "kits19").is_dir():
        print(f"KiTS19 data not found under {data_root()} (set SHAPEPRIOR_DATA)", file=sys.stderr)
        return 2
    cache = HERE / "cache"
    cache.mkdir(exist_ok=True)
    model, build_report, held, ids = prepare(cache, a.n_jobs, a.limit)
    pick, tune = splits(len(held), a.seed, a.max_heldout, a.max_tune)
    old = json.loads(Path(a.out).read_text()) if a.reuse else None
    if old is not None and old["heldout_ids"] != [ids[i] for i in pick]:
        raise SystemExit("--reuse: the existing result file has other held-out shapes")
    with ProcessPoolExecutor(a.n_jobs, initializer=_init,
                             initargs=(cache, a.n_jobs, a.limit,
                                       1 if a.n_jobs > 1 else None)) as pool:
        print(f"tuning the refit on {len(tune)} held-out shapes outside the report set",
              flush=True)
        tune_rows = _run(pool, tune, TUNE_CONDITIONS, a.seed + 1, "tune")
        refits, scores = {}, {}
        for fam in ("ssc_l1_refit", "ssc_hybrid"):
            refits[fam], scores[fam] = _choose(tune_rows, fam)
        refits["nonzero"], scores["nonzero"] = _choose(tune_rows, "ssc_hybrid",
                                                       NONZERO_CANDIDATES, "k")
        if refits["nonzero"] != L0_NONZERO:
            print(f"note: the tuning split chose n_nonzero={refits['nonzero']}, the library's "
                  f"default is {L0_NONZERO}", flush=True)
        print(f"chosen refit: {refits}", flush=True)
        rows = _run(pool, pick, CONDITIONS, a.seed, refits, a.reuse)
    for row in rows:
        for m in a.reuse:
            prev = next(r for r in old["conditions"]
                        if (r["gross_fraction"], r["missing_fraction"])
                        == (row["gross_fraction"], row["missing_fraction"]))
            row[m] = {**prev[m], "reused_from_previous_run": True}
    methods = list(rows[0].keys())[3:]
    out = {"benchmark": "robustness", "machine": machine(), "data": "KiTS19 label maps (kidney, tumour included)",
           "split": "train: case % 5 != 0, held out: case % 5 == 0",
           "model": {"n_shapes": int(model.shapes.shape[0]), "n_vertices": model.n_vertices,
                     "n_atoms": None if model.atoms is None else int(model.atoms.shape[0]),
                     "rejected": build_report.get("rejected"),
                     "fit_mean_target_to_fit_mm": build_report.get("fit_mean_target_to_fit_mm")},
           "heldout_ids": [ids[i] for i in pick],
           "reused_from_previous_run": a.reuse,
           "refit": {"chosen": refits, "criterion": "lowest mean surface error over clean, "
                     "30 % displaced and 50 % missing on the tuning split",
                     "mean_error_by_candidate": scores,
                     "tuning_ids": [ids[i] for i in tune], "tuning": tune_rows},
           "conditions": rows,
           "metric": "symmetric surface distance to the clean held-out surface; mean = "
                     "average of the two mean one-sided distances, max = Hausdorff; "
                     "both averaged over shapes"}
    Path(a.out).write_text(json.dumps(out, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        g_rows = [r for r in rows if r["missing_fraction"] == 0]
        m_rows = [r for r in rows if r["gross_fraction"] == 0]
        for m in methods:
            axes[0].plot([r["gross_fraction"] for r in g_rows],
                         [r[m]["mean_surface_mm"] for r in g_rows], "o-", label=m)
            axes[1].plot([r["missing_fraction"] for r in m_rows],
                         [r[m]["mean_surface_mm"] for r in m_rows], "o-", label=m)
        axes[0].set_xlabel("fraction of vertices displaced 10-30 mm")
        axes[1].set_xlabel("fraction of vertices missing")
        for ax in axes:
            ax.set_ylabel("mean surface distance (mm)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"Held-out KiTS19 kidneys (n={len(pick)}), model of {model.shapes.shape[0]} shapes")
        fig.tight_layout()
        fig.savefig(Path(a.out).with_suffix(".png"), dpi=110)
    except ImportError:
        pass
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
