"""Benchmark: ``build_model`` on the KiTS19 label maps (issue #13).

Builds the kidney model the other benchmarks use (labels 1 and 2 merged, both
sides split and the right one mirrored, 2562 vertices, 60 K-SVD atoms) from the
shared KiTS19 label maps, in a child process whose whole process tree (the
worker processes too) is sampled for memory every 0.1 s: the RSS sum and the PSS
sum (shared pages split between the processes that share them; the target is
judged on it).

Baseline in the same run: the same build on the first ``--baseline-maps`` maps,
once with the code of ``--baseline-rev`` (unpacked from git into a temporary
folder) and once with this checkout. The two models must agree (the speedups
change how fast, not what); the largest vertex difference is recorded. The
full run is compared with the previous committed ``results/build.json``, and
repeated with ``--template-shapes`` (pass 1 on a sample of the shapes: faster,
and a slightly different template; the fit quality of both is recorded).

    python bench/bench_build.py                      # 180 maps, 2 workers (~40 min)
    python bench/bench_build.py --reuse              # only the --template-shapes run
    python bench/bench_build.py --maps 20 --out /tmp/build.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, data_root, machine, previous_results, unpack_rev,  # noqa: E402
                     write_json)

REPO = Path(__file__).resolve().parents[1]
BASELINE_REV = "fbb62a3"   # before the build speedups
#: maps of the untimed build that compiles each tree's kernels before the comparison
WARM_MAPS = 3

# run in the child: build, save, print the report's timings
_CHILD = r"""
import json, sys, time
import shapeprior, shapeprior_kernels
from shapeprior.model import BuildParams, build_model, save_model
files = json.loads(sys.argv[1])
params = BuildParams(labels=(1, 2), organ="kidney", split_sides=True, n_atoms=60,
                     n_nonzero=5, n_jobs=int(sys.argv[3]), **json.loads(sys.argv[5]))
t0 = time.perf_counter()
model, report = build_model(files, params, root=sys.argv[4], progress=False)
wall = time.perf_counter() - t0
save_model(model, sys.argv[2])
d = [r["mean_target_to_fit"] for r in report["per_shape"]]
print(json.dumps({"wall_s": wall, "time_s": report["time_s"],
                  "fit_mean_target_to_fit_mm": {"median": sorted(d)[len(d) // 2], "max": max(d)},
                  "n_shapes_kept": report["n_shapes_kept"],
                  "n_shapes_extracted": report["n_shapes_extracted"],
                  "shapeprior_file": shapeprior.__file__,
                  "kernels_file": shapeprior_kernels.__file__}))
"""


def _tree_memory(proc):
    """(RSS, PSS) bytes summed over a process and all its descendants. Forked
    workers share the parent's pages: RSS counts them once per process, PSS
    splits them, so the PSS sum is the memory the build really holds."""
    import psutil

    rss = pss = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    for p in procs:
        try:
            m = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += m.rss
        pss += getattr(m, "pss", m.rss)
    return rss, pss


def run_build(files, root, jobs, model_path, src=None, **params):
    """Build in a child process (``src``: the source tree to import, default this
    checkout; ``params``: more BuildParams); returns its timings and the peak
    memory of its process tree."""
    import psutil

    env = dict(os.environ)
    env["PYTHONPATH"] = str(src or REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-c", _CHILD, json.dumps([str(f) for f in files]), str(model_path),
           str(jobs), str(root), json.dumps(params)]
    # run in the tree: ``python -c`` puts the working folder first on sys.path
    child = subprocess.Popen(cmd, env=env, cwd=str(src or REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    proc, peak, done = psutil.Process(child.pid), [0, 0], threading.Event()

    def sample():
        while not done.is_set():
            rss, pss = _tree_memory(proc)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = child.communicate()
    done.set()
    th.join()
    if child.returncode != 0:
        raise RuntimeError(f"build failed ({child.returncode}): {err.strip()[-2000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    want = Path(src or REPO).resolve()
    for key in ("shapeprior_file", "kernels_file"):     # the tree's package and kernels
        if not Path(res[key]).resolve().is_relative_to(want):
            raise RuntimeError(f"the build imported {res[key]}, not the tree {want}")
    res["peak_rss_mb"] = peak[0] / 2**20
    res["peak_pss_mb"] = peak[1] / 2**20
    return res


def compare_with(prev, out):
    """This run's whole-set walls against a previous run's (the same maps)."""
    cmp = {"previous_wall_s": prev["full"]["wall_s"],
           "ratio": out["full"]["wall_s"] / prev["full"]["wall_s"]}
    if "full_template" in prev and "full_template" in out:
        cmp["template_previous_wall_s"] = prev["full_template"]["wall_s"]
        cmp["template_ratio"] = out["full_template"]["wall_s"] / prev["full_template"]["wall_s"]
    return cmp


def _model_difference(a, b):
    from shapeprior.model import load_model

    ma, mb = load_model(a), load_model(b)
    if ma.shapes.shape != mb.shapes.shape:
        return {"same_shape_count": False, "n_a": len(ma.shapes), "n_b": len(mb.shapes)}
    d = np.linalg.norm(ma.shapes - mb.shapes, axis=2)
    return {"same_shape_count": True,
            "max_vertex_difference_mm": float(d.max()),
            "mean_vertex_difference_mm": float(d.mean()),
            "max_mean_difference_mm": float(np.abs(ma.mean - mb.mean).max())}


def _summary(res, n_maps, jobs):
    shapes = res["n_shapes_extracted"]
    return {**res, "n_maps": n_maps, "jobs": jobs,
            "s_per_shape_per_core": res["wall_s"] * jobs / max(shapes, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps", type=int, default=180, help="KiTS maps in the full run")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--baseline-maps", type=int, default=12)
    ap.add_argument("--template-shapes", type=int, default=32,
                    help="the full run again with this pass-1 sample (0: skip)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the baseline and default full rows of the --out file; run "
                         "only the template rows")
    ap.add_argument("--out", default=str(RESULTS / "build.json"))
    a = ap.parse_args(argv)
    root = data_root() / "kits19"
    files = sorted(root.glob("case_*/segmentation.nii.gz"))
    if not files:
        print(f"SKIP: no KiTS19 label maps under {root} (set SHAPEPRIOR_DATA)")
        return 0
    out = {"benchmark": "build_model_kits19", "machine": machine(),
           "parameters": {"labels": [1, 2], "split_sides": True, "n_vertices": 2562,
                          "n_atoms": 60, "n_nonzero": 5, "jobs": a.jobs},
           "targets": {"s_per_shape_per_core": 1.0, "peak_pss_mb": 1536,
                       "whole_set_s": 600}}
    if a.reuse:
        old = json.loads(Path(a.out).read_text())
        out.update({k: old[k] for k in ("same_run_baseline", "full", "comparison")
                    if k in old})
    full = files[: a.maps]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sub = files[: a.baseline_maps]
        if a.baseline_maps and not a.reuse:
            src = unpack_rev(a.baseline_rev, tmp / "baseline")
            # each tree compiles its Numba kernels once, untimed (a fresh unpack has no
            # cache; this checkout's is warm): the first maps, built and thrown away
            for tree in (src, None):
                run_build(files[:WARM_MAPS], root, a.jobs, tmp / "warm.npz", tree)
            print(f"baseline {a.baseline_rev} on {len(sub)} maps ...", flush=True)
            base = _summary(run_build(sub, root, a.jobs, tmp / "base.npz", src), len(sub), a.jobs)
            print(f"  {base['wall_s']:.1f} s, {base['peak_pss_mb']:.0f} MiB", flush=True)
            print(f"this checkout on the same {len(sub)} maps ...", flush=True)
            cur = _summary(run_build(sub, root, a.jobs, tmp / "cur.npz"), len(sub), a.jobs)
            print(f"  {cur['wall_s']:.1f} s, {cur['peak_pss_mb']:.0f} MiB", flush=True)
            out["same_run_baseline"] = {
                "rev": a.baseline_rev, "baseline": base, "current": cur,
                "speedup": base["wall_s"] / cur["wall_s"],
                "models": _model_difference(tmp / "base.npz", tmp / "cur.npz")}
            print(f"  speedup x{out['same_run_baseline']['speedup']:.2f}; models "
                  f"{out['same_run_baseline']['models']}", flush=True)
        if not a.reuse:
            print(f"this checkout on {len(full)} maps ...", flush=True)
            res = _summary(run_build(full, root, a.jobs, tmp / "full.npz"), len(full), a.jobs)
            out["full"] = res
            print(f"  {res['wall_s']:.1f} s ({res['s_per_shape_per_core']:.2f} s per shape per "
                  f"core), PSS {res['peak_pss_mb']:.0f} MiB (RSS {res['peak_rss_mb']:.0f}), "
                  f"stages {res['time_s']}", flush=True)
        if a.template_shapes:
            t = a.template_shapes
            print(f"this checkout on {len(full)} maps, template from {t} shapes ...", flush=True)
            res_t = _summary(run_build(full, root, a.jobs, tmp / "full_t.npz",
                                       template_shapes=t), len(full), a.jobs)
            out["full_template"] = {**res_t, "template_shapes": t,
                                    "speedup_vs_full": out["full"]["wall_s"] / res_t["wall_s"]}
            print(f"  {res_t['wall_s']:.1f} s, PSS {res_t['peak_pss_mb']:.0f} MiB, fit "
                  f"{res_t['fit_mean_target_to_fit_mm']}", flush=True)
    prev, _ = previous_results(a.out) if not a.reuse else (None, None)
    if prev and prev.get("full", {}).get("n_maps") == out["full"]["n_maps"] and not a.reuse:
        out["comparison"] = compare_with(prev, out)
    t = out["targets"]
    best = min((r for r in (out["full"], out.get("full_template")) if r),
               key=lambda r: r["wall_s"])
    out["met"] = {"s_per_shape_per_core": best["s_per_shape_per_core"]
                  <= t["s_per_shape_per_core"],
                  "peak_pss_mb": max(r["peak_pss_mb"] for r in (out["full"],
                                     out.get("full_template")) if r) <= t["peak_pss_mb"],
                  "whole_set_s": (best["wall_s"] <= t["whole_set_s"]) if len(full) >= 180
                  else None}
    print(f"wrote {write_json(a.out, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
