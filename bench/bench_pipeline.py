"""End-to-end performance harness: time and peak memory per stage, on real data.

Workloads
---------
hippocampus   MSD Task04 MR, held-out cases (number % 5 == 0), the
              hippocampus model with learned appearance (built from the
              training split and cached, as in bench_hippocampus.py).
ct512         The TotalSegmentator example CT (real, non-contrast) resampled
              to a clinical 512 x 512 x 300 grid and written as NIfTI; the
              left kidney is segmented with the KiTS19 kidney model (cache of
              bench_robustness.py, else a small model from 12 training cases),
              seeded at the reference kidney's centroid.
ct512_noseed  The same without a seed: the default placement search over the
              whole field of view (stage 'place').
io            Reading the ct512 image and writing a whole-grid label, through
              ISA-L (python-isal) and through zlib in the same run (the
              baseline: what nibabel alone does), best of 3 each.
batch         ``shapeprior segment`` on a folder of hippocampus cases plus one
              deliberately corrupt file: sequential against a dask LocalCluster
              (2 processes on 127.0.0.1); the corrupt case must fail alone.

Every case of hippocampus/ct512 runs through ``run_case`` (read -> prepare ->
search -> ssc -> refine -> voxelize -> write) once per backend: numpy,
numba, and cupy where a GPU is present: once under a :class:`StageClock`
that samples the resident set size every 2 ms and keeps each stage's peak,
then for the times without the sampler (once per hippocampus case; the
median of ``CT_REPEATS`` runs of the single ct512 case).

The previous committed results (``git show HEAD:bench/results/pipeline.json``,
else the file on disk) are compared stage by stage: a ratio new/old above
``--slowdown`` (default 1.25) is flagged, so a regression is visible in the
output and in the JSON. The plot shows seconds and peak RSS per stage.

    python bench/bench_pipeline.py                    # writes results/pipeline.json + .png
    python bench/bench_pipeline.py --cases 3 --skip batch --out /tmp/p.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import data_root, previous_results
from shapeprior.testing import available_backends
from shapeprior import __version__
from shapeprior._profile import StageClock, current_rss_bytes
from shapeprior.backend import cupy_available
from shapeprior.io import read_label_map, read_volume
from shapeprior.model import BuildParams, build_model, find_label_maps, load_model, save_model
from shapeprior.segmentation import SegmentParams, dice
from shapeprior.pipeline import run_case

HERE = Path(__file__).resolve().parent
STAGES = ("read", "prepare", "place", "search", "ssc", "refine", "voxelize", "voxels", "write")
WORKLOADS = ("hippocampus", "ct512", "ct512_noseed")
CT_REPEATS = 3          # timed runs of the one ct512 case (the median is kept)
CT_SHAPE_XYZ = (512, 512, 300)


def _num(path):
    return int(re.findall(r"\d+", Path(path).name)[0])


_BACKENDS = []         # --backends; empty: every available one
_MESH_FORMAT = ["vtk"]  # --mesh-format


def backends():
    have = available_backends()
    return [b for b in _BACKENDS if b in have] if _BACKENDS else have


def _gpu_name():
    if not cupy_available():
        return None
    import cupy as cp

    return cp.cuda.runtime.getDeviceProperties(0)["name"].decode()


def _sync_for(backend):
    if backend != "cupy":
        return None
    import cupy as cp

    return cp.cuda.Stream.null.synchronize


# ---------------------------------------------------------------- models ---

def hippocampus_model(root, n_jobs):
    cache = HERE / "cache"
    cache.mkdir(exist_ok=True)
    mpath = cache / "hippocampus_642.npz"
    if not mpath.exists():
        files = [f for f in find_label_maps(root / "labels") if _num(f) % 5 != 0]
        model, build = build_model(files, BuildParams(
            labels=(1, 2), organ="hippocampus", n_vertices=642, iso_spacing=0.5,
            smooth_mm=0.75, images_dir=str(root / "images"), n_jobs=n_jobs), root=root / "labels")
        save_model(model, mpath)
        (cache / "hippocampus_642.report.json").write_text(json.dumps(build, indent=1))
    return mpath


def kidney_model(n_jobs):
    cache = HERE / "cache"
    full = cache / "kidney_model.npz"
    if full.exists():
        return full, "KiTS19 training split (bench_robustness cache)"
    small = cache / "kidney_model_small.npz"
    if not small.exists():
        root = data_root() / "kits19"
        files = [f for f in find_label_maps(root) if _num(f.parent) % 5 != 0][:12]
        model, _ = build_model(files, BuildParams(
            labels=(1, 2), organ="kidney", split_sides=True, n_jobs=n_jobs), root=root)
        save_model(model, small)
    return small, "12 KiTS19 training cases (small fallback model)"


def _upsample(a, shape_zyx, linear):
    """``a`` on a finer grid with the same corners (first and last samples kept),
    one axis at a time: linear interpolation truncated toward zero (what
    SimpleITK's linear resampler gives for an integer image: equal on all but
    about 1e-7 of the ct512 voxels, by one HU), or the nearest sample."""
    out = a.astype(np.float64) if linear else a
    for ax, n in enumerate(shape_zyx):
        c = np.linspace(0, a.shape[ax] - 1, n)
        if not linear:
            out = np.take(out, np.floor(c + 0.5).astype(int), axis=ax)
            continue
        i0 = np.minimum(np.floor(c).astype(int), a.shape[ax] - 2)
        f = (c - i0).reshape([-1 if k == ax else 1 for k in range(3)])
        out = np.take(out, i0, axis=ax) * (1 - f) + np.take(out, i0 + 1, axis=ax) * f
    return np.trunc(out) if linear else out


def make_ct512(work):
    """The example CT and its labels resampled to a 512 x 512 x 300 grid with the
    same origin, direction and physical extent (NumPy only, so that it runs where
    SimpleITK is not installed, e.g. a GPU machine)."""
    from shapeprior.io import Volume
    from shapeprior.io._nifti import write_nifti

    d = data_root() / "totalsegmentator_example"
    ct = read_volume(d / "example_ct.nii.gz")
    seg = read_label_map(d / "example_seg_fast_force_split.nii.gz")
    shape_zyx = CT_SHAPE_XYZ[::-1]
    extent = (np.array(ct.array.shape[::-1]) - 1) * ct.spacing
    spacing = extent / (np.array(CT_SHAPE_XYZ) - 1)
    ip, lp = work / "ct512.nii.gz", work / "ct512_seg.nii.gz"
    img = _upsample(ct.array, shape_zyx, True).astype(np.int16)
    write_nifti(Volume(img, spacing, ct.origin, ct.direction), ip)
    del img
    lab = _upsample(seg.array, shape_zyx, False).astype(np.uint8)
    write_nifti(Volume(lab, spacing, ct.origin, ct.direction), lp)
    return ip, lp


def ct512_left_kidney(work):
    """The ct512 CT (made in ``work`` once, :func:`make_ct512`): ``(image path,
    volume, the left kidney's reference mask, its centroid in LPS mm)``."""
    ip, lp = work / "ct512.nii.gz", work / "ct512_seg.nii.gz"
    if not ip.exists():
        ip, lp = make_ct512(work)
    vol = read_volume(ip)
    ref = read_label_map(lp).array == 3           # left kidney
    return ip, vol, ref, vol.index_to_physical(np.argwhere(ref).mean(0)[::-1][None])[0]


# ------------------------------------------------------------- workloads ---

def run_cases(cases, model_path, params_for, backend, work, label, repeats=1):
    """Run each ``(name, image, reference, params)`` case; stage statistics.

    Each case runs once with the RSS sampler (peak memory per stage, Dice,
    iterations), then ``repeats`` times without it for the times: the sampler
    wakes every 2 ms and, on 2 cores, costs the threads that overlap output
    writing and smoothing about 0.1-0.15 s of a whole-CT case. A case's times
    are those of its timed run with the median total."""
    model = load_model(model_path)
    dic = model.ssc_dictionary("shapes")
    # warm-up (Numba JIT, CUDA module load, caches): first case, not recorded
    name, img, ref, p = cases[0]
    run_case(img, work / f"warm_{label}_{backend}", model, model_path, params_for(p, backend),
             dictionary=dic, mesh_format=_MESH_FORMAT[0], force=True)
    per_case = []
    for name, img, ref, p in cases:
        dst = work / f"{label}_{backend}_{name}"
        clock = StageClock(rss=True, sync=_sync_for(backend))
        rep = run_case(img, dst, model, model_path, params_for(p, backend), dictionary=dic,
                       mesh_format=_MESH_FORMAT[0], force=True, clock=clock)
        clock.close()
        rss = {s: v["peak_rss_mb"] for s, v in clock.as_dict().items()}
        seg = read_label_map(dst / "label.nii.gz").array > 0
        timed = []
        for _ in range(repeats):
            clock = StageClock(sync=_sync_for(backend))
            t0 = time.perf_counter()
            run_case(img, dst, model, model_path, params_for(p, backend), dictionary=dic,
                     mesh_format=_MESH_FORMAT[0], force=True, clock=clock)
            timed.append((time.perf_counter() - t0, clock.as_dict()))
        timed.sort(key=lambda t: t[0])
        total, stages = timed[len(timed) // 2]
        for s, v in stages.items():
            v["peak_rss_mb"] = rss.get(s, 0.0)
        per_case.append({"case": name, "total_s": total, "dice": dice(seg, ref),
                         "stages": stages, "iterations": rep["iterations"],
                         "total_s_runs": [t[0] for t in timed]})
    stages = {}
    for s in STAGES:
        secs = [c["stages"].get(s, {}).get("seconds", 0.0) for c in per_case]
        rss = [c["stages"].get(s, {}).get("peak_rss_mb", 0.0) for c in per_case]
        stages[s] = {"seconds_mean": float(np.mean(secs)), "peak_rss_mb": float(np.max(rss))}
    tot = np.array([c["total_s"] for c in per_case])
    return {"backend": backend, "n_cases": len(per_case), "timed_runs_per_case": repeats,
            "total_s_mean": float(tot.mean()), "total_s_max": float(tot.max()),
            "dice_mean": float(np.mean([c["dice"] for c in per_case])),
            "stages": stages, "cases": per_case}


def hippocampus_workload(n_cases, n_jobs, work):
    root = data_root() / "msd_hippocampus"
    mpath = hippocampus_model(root, n_jobs)
    test = [f for f in find_label_maps(root / "labels") if _num(f) % 5 == 0][:n_cases]
    cases = [(f.name.split(".")[0], root / "images" / f.name, read_label_map(f).array > 0, None)
             for f in test]

    def params_for(_, backend):
        return SegmentParams(backend=backend)

    return {"data": "MSD Task04 hippocampus MR, held-out cases", "model": str(mpath.name),
            "image_shape_zyx": list(read_volume(cases[0][1]).array.shape),
            "runs": [run_cases(cases, mpath, params_for, b, work, "hip") for b in backends()]}


def ct512_workload(n_jobs, work, seeded=True):
    mpath, model_note = kidney_model(n_jobs)
    ip, vol, ref, centre = ct512_left_kidney(work)
    seed = tuple(centre) if seeded else None
    cases = [("ct512_left_kidney", ip, ref, seed)]

    def params_for(seed, backend):
        # the oracle seed places the fit alone (near_start 0): the fit is timed, as
        # before positions near a seed were tried (bench_seed_offset.py times those)
        return SegmentParams(seed_mm=seed, side="left", normalisation="ct",
                             window=(-0.05, 0.15), inside_brighter=True, backend=backend,
                             near_start=0.0)

    return {"data": "TotalSegmentator example CT (non-contrast) resampled to "
                    f"{CT_SHAPE_XYZ[0]}x{CT_SHAPE_XYZ[1]}x{CT_SHAPE_XYZ[2]} (xyz), left kidney, "
                    + ("oracle centroid seed" if seeded else "no seed (placement search)")
                    + "; reference: TotalSegmentator labels",
            "model": model_note, "image_shape_zyx": list(vol.array.shape),
            "spacing_mm": vol.spacing.tolist(),
            "runs": [run_cases(cases, mpath, params_for, b, work, "ct" if seeded else "ctn",
                               repeats=CT_REPEATS) for b in backends()]}


def io_workload(work, repeats=3):
    """read_image and write_label on the ct512 grid: ISA-L against zlib, same run."""
    from shapeprior.io import _gzip, read_image, write_label

    ip = work / "ct512.nii.gz"
    if not ip.exists():
        ip, _ = make_ct512(work)
    vol = read_image(ip)[0]
    lab = np.zeros(vol.array.shape, np.uint8)
    lab[100:200, 150:300, 250:350] = 1
    out = {"image": "ct512.nii.gz (int16, " + "x".join(map(str, vol.array.shape[::-1]))
                    + f", {ip.stat().st_size / 2**20:.1f} MiB gzip)",
           "label": "uint8 on the same grid, one block", "repeats": repeats}
    saved = _gzip._igzip
    try:
        for name in ("isal", "zlib"):
            if name == "isal" and saved is None:
                out[name] = None
                continue
            _gzip._igzip = saved if name == "isal" else None
            reads, writes = [], []
            for k in range(repeats):
                t0 = time.perf_counter()
                read_image(ip)
                reads.append(time.perf_counter() - t0)
                dst = work / f"io_{name}_{k}.nii.gz"
                t0 = time.perf_counter()
                write_label(vol, lab, dst)
                writes.append(time.perf_counter() - t0)
            out[name] = {"read_s": min(reads), "write_s": min(writes),
                         "label_bytes": dst.stat().st_size}
    finally:
        _gzip._igzip = saved
    if out.get("isal"):
        out["read_speedup"] = out["zlib"]["read_s"] / out["isal"]["read_s"]
        out["write_speedup"] = out["zlib"]["write_s"] / out["isal"]["write_s"]
    return out


def batch_workload(n_cases, work):
    """The CLI on a folder: sequential vs dask LocalCluster, one corrupt case."""
    from shapeprior.cli import main as cli

    root = data_root() / "msd_hippocampus"
    mpath = hippocampus_model(root, 1)
    test = [f for f in find_label_maps(root / "labels") if _num(f) % 5 == 0][:n_cases]
    folder = work / "batch_in"
    folder.mkdir()
    for f in test:
        shutil.copy(root / "images" / f.name, folder / f.name)
    (folder / "hippocampus_corrupt.nii.gz").write_bytes(
        (root / "images" / test[0].name).read_bytes()[:5000])     # truncated download
    out = {"n_cases": len(test) + 1, "corrupt_case": "hippocampus_corrupt"}
    for label, extra in (("sequential", []), ("dask_2_workers", ["--workers", "2"])):
        dst = work / f"batch_{label}"
        t0 = time.perf_counter()
        rc = cli(["segment", str(folder), "-o", str(dst), "--model", str(mpath), *extra])
        wall = time.perf_counter() - t0
        rows = json.loads((dst / "summary.json").read_text())["cases"]
        ok = [r for r in rows if r["status"] == "ok"]
        failed = [r["case"] for r in rows if r["status"] == "failed"]
        dices = [dice(read_label_map(dst / r["case"] / "label.nii.gz").array > 0,
                      read_label_map(root / "labels" / (r["case"] + ".nii.gz")).array > 0)
                 for r in ok]
        out[label] = {"exit_code": rc, "wall_s": wall, "ok": len(ok), "failed": failed,
                      "cases_per_s": len(ok) / wall, "dice_mean": float(np.mean(dices))}
    out["speedup_dask_vs_sequential"] = out["sequential"]["wall_s"] / out["dask_2_workers"]["wall_s"]
    return out


# ------------------------------------------------------------ comparison ---

def compare(new, old, threshold):
    rows = []
    same_machine = (old.get("machine", {}).get("cpu_count") == new["machine"]["cpu_count"]
                    and old.get("machine", {}).get("gpu") == new["machine"]["gpu"])
    for wl in WORKLOADS:
        if wl not in new.get("workloads", {}) or wl not in old.get("workloads", {}):
            continue
        prev = {r["backend"]: r for r in old["workloads"][wl]["runs"]}
        for run in new["workloads"][wl]["runs"]:
            o = prev.get(run["backend"])
            if o is None:
                continue
            pairs = [("total", run["total_s_mean"], o["total_s_mean"])]
            pairs += [(s, run["stages"][s]["seconds_mean"], o["stages"][s]["seconds_mean"])
                      for s in STAGES if s in o["stages"]]
            for stage, a, b in pairs:
                ratio = a / b if b > 1e-4 else None
                rows.append({"workload": wl, "backend": run["backend"], "stage": stage,
                             "seconds": a, "previous_seconds": b, "ratio": ratio,
                             "slower": bool(ratio is not None and ratio > threshold
                                            and a - b > 0.005)})
    return rows, same_machine


def legacy_hippocampus(result):
    """Fit time per case (read and write excluded) against the committed
    bench/results/hippocampus.json, which timed ``segment_volume`` alone."""
    old, src = previous_results(HERE / "results" / "hippocampus.json")
    runs = {r["backend"]: r for r in result["workloads"].get("hippocampus", {}).get("runs", [])}
    if not old or "numba" not in runs:
        return None
    fit = sum(runs["numba"]["stages"][s]["seconds_mean"] for s in STAGES
              if s not in ("read", "write"))
    return {"previous": src, "previous_fit_s_mean": old["time_s"]["mean"],
            "fit_s_mean": fit, "ratio": fit / old["time_s"]["mean"]}


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(wl, r) for wl in WORKLOADS for r in
            result["workloads"].get(wl, {}).get("runs", [])]
    if not runs:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.6 * len(runs) + 2))
    labels = [f"{wl} / {r['backend']}" for wl, r in runs]
    y = np.arange(len(runs))
    left = np.zeros(len(runs))
    colors = plt.cm.tab10(np.arange(len(STAGES)))
    for s, col in zip(STAGES, colors):
        w = np.array([r["stages"].get(s, {}).get("seconds_mean", 0.0) for _, r in runs])
        ax1.barh(y, w, left=left, color=col, label=s)
        left += w
    ax1.set_yticks(y, labels)
    ax1.set_xlabel("seconds per case (mean)")
    ax1.set_xscale("log") if left.max() / max(left.min(), 1e-9) > 30 else None
    ax1.legend(fontsize=7, loc="lower right")
    ax1.set_title("time per stage")
    width = 0.8 / len(STAGES)
    for k, (s, col) in enumerate(zip(STAGES, colors)):
        ax2.barh(y + (k - len(STAGES) / 2) * width,
                 [r["stages"].get(s, {}).get("peak_rss_mb", 0.0) for _, r in runs],
                 height=width, color=col, label=s)
    ax2.set_yticks(y, labels)
    ax2.set_xlabel("peak RSS during the stage (MiB)")
    ax2.set_title("memory per stage")
    m = result["machine"]
    fig.suptitle(f"shapeprior {result['version']} on {m['cpu_count']} CPU cores"
                 + (f" + {m['gpu']}" if m["gpu"] else " (no GPU)"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=10, help="hippocampus cases (default 10)")
    ap.add_argument("--batch-cases", type=int, default=12)
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=("hippocampus", "ct512", "ct512_noseed", "io", "batch"))
    ap.add_argument("--n-jobs", type=int, default=2, help="model builds (when not cached)")
    ap.add_argument("--slowdown", type=float, default=1.25)
    ap.add_argument("--backends", default="",
                    help="comma-separated subset of numpy,numba,cupy (default: every available)")
    ap.add_argument("--mesh-format", default="vtk",
                    help="mesh output of each case (ply: meshio alone, no VTK)")
    ap.add_argument("--out", default=str(HERE / "results" / "pipeline.json"))
    a = ap.parse_args(argv)
    _BACKENDS[:] = [b for b in a.backends.split(",") if b]
    _MESH_FORMAT[0] = a.mesh_format
    if not data_root().is_dir():
        print(f"no data under {data_root()} (set SHAPEPRIOR_DATA)", file=sys.stderr)
        return 2
    result = {"benchmark": "pipeline", "version": __version__,
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(), "gpu": _gpu_name()},
              "backends": backends(), "rss_at_start_mb": current_rss_bytes() / 2**20,
              "workloads": {}}
    with tempfile.TemporaryDirectory(prefix="shapeprior_bench_") as tmp:
        work = Path(tmp)
        if "hippocampus" not in a.skip:
            result["workloads"]["hippocampus"] = hippocampus_workload(a.cases, a.n_jobs, work)
        if "ct512" not in a.skip:
            result["workloads"]["ct512"] = ct512_workload(a.n_jobs, work)
        if "ct512_noseed" not in a.skip:
            result["workloads"]["ct512_noseed"] = ct512_workload(a.n_jobs, work, seeded=False)
        if "io" not in a.skip:
            result["io"] = io_workload(work)
        if "batch" not in a.skip:
            result["batch"] = batch_workload(a.batch_cases, work)
    old, src = previous_results(a.out)
    rows, same = compare(result, old, a.slowdown) if old else ([], None)
    result["comparison"] = {"previous": src, "same_machine": same, "threshold": a.slowdown,
                            "rows": rows, "slower": [r for r in rows if r["slower"]],
                            "hippocampus_benchmark": legacy_hippocampus(result)}
    Path(a.out).write_text(json.dumps(result, indent=1))
    plot(result, Path(a.out).with_suffix(".png"))
    for wl, w in result["workloads"].items():
        for r in w["runs"]:
            st = "  ".join(f"{s} {r['stages'][s]['seconds_mean'] * 1000:.0f}" for s in STAGES)
            print(f"{wl:12s} {r['backend']:6s} {r['total_s_mean']:.3f} s/case "
                  f"(Dice {r['dice_mean']:.3f}); ms: {st}; peak RSS "
                  f"{max(v['peak_rss_mb'] for v in r['stages'].values()):.0f} MiB")
    if result.get("io") and result["io"].get("isal"):
        io = result["io"]
        print(f"io (ct512): read {io['zlib']['read_s']:.3f} s (zlib) -> {io['isal']['read_s']:.3f} s "
              f"(isal), write label {io['zlib']['write_s']:.3f} -> {io['isal']['write_s']:.3f} s")
    if "batch" in result:
        b = result["batch"]
        print(f"batch of {b['n_cases']}: sequential {b['sequential']['wall_s']:.1f} s, dask(2) "
              f"{b['dask_2_workers']['wall_s']:.1f} s; failed: {b['dask_2_workers']['failed']}")
    if src:
        note = "" if same else " (different machine: ratios are indicative only)"
        print(f"compared with {src}{note}:")
        for r in rows:
            if r["stage"] == "total" or r["slower"]:
                flag = "  SLOWER" if r["slower"] else ""
                print(f"  {r['workload']:12s} {r['backend']:6s} {r['stage']:9s} "
                      f"{r['previous_seconds']:.3f} -> {r['seconds']:.3f} s{flag}")
    lg = result["comparison"]["hippocampus_benchmark"]
    if lg:
        print(f"hippocampus fit per case: {lg['previous_fit_s_mean']:.3f} s ({lg['previous']}) "
              f"-> {lg['fit_s_mean']:.3f} s (x{lg['ratio']:.2f})")
    print(f"wrote {a.out} and {Path(a.out).with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
