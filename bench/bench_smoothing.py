"""Smoothing the level images: the ``gaussian_smooth`` Numba kernel against
SciPy's filter, on the crops a whole-CT fit smooths; and the placement's
downsampled scan (``block_mean``) (issue #13).

Each resolution level of the boundary search smooths a crop of the image
around the mesh (``shapeprior/appearance/_levels.py``). The crops are those of
``bench_pipeline.py``'s ct512 left-kidney fits (the TotalSegmentator example
CT resampled to 512 x 512 x 300; the cached KiTS model), seeded and without a
seed, recorded as the fit makes them. For each crop with sigma > 0:

* ``scipy_threads``: what the 'numpy' backend runs (and 'numba' ran before):
  scipy's ``gaussian_filter1d`` per axis, split into slabs over the threads;
* ``scipy_1``: ``scipy.ndimage.gaussian_filter`` on one thread (the reference);
* ``numba``: ``shapeprior_kernels.gaussian_smooth_numba`` on Numba's threads,
  and ``numba_1`` on one (``single_threaded``, as in a process pool);

best of ``--repeat`` each, interleaved, and whether each result equals the
reference bit for bit. ``fits``: the whole seeded fit (``segment_volume``,
numba) with the kernel against the same fit with scipy's threaded filter,
interleaved, median of ``--fits`` each, and whether the labels are the same.

``block_mean``: the 4 mm block means of the whole ct512 CT that the placement
search without a seed correlates with the organ's template
(``region_score_map``), as NumPy's float32 mean over the reshaped axes made them
before and by the ``block_mean`` Numba twin now: best of ``--repeat``, and
whether the two are equal.

    python bench/bench_smoothing.py           # writes results/smoothing.json
    # needs bench/cache/kidney_model.npz (bench_robustness.py) and the shared data
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_json  # noqa: E402
from bench_region_slack import CT, ct512_left_kidney  # noqa: E402
from bench_ssc_stage import kidney_dictionary  # noqa: E402

import shapeprior.appearance._levels as levels  # noqa: E402
from shapeprior.backend import single_threaded  # noqa: E402
from shapeprior.segmentation import SegmentParams, dice, segment_volume  # noqa: E402
from shapeprior_kernels import (block_mean_numba, gaussian_smooth_numba,  # noqa: E402
                                gaussian_smooth_numpy)



def recorded_crops(vol, model, dic, params):
    """``[(normalised crop before smoothing, sigma in voxels)]`` of one fit."""
    crops = []
    original = levels.LevelImage._build

    def build(level, lo, hi):
        if level.sigma_mm > 0:
            sub = level.vol.crop(lo, hi + 1)
            off, sc = level.scale
            img = (sub.array.astype(np.float32) - np.float32(off)) / np.float32(sc)
            crops.append((img, level.sigma_mm / sub.spacing[::-1]))
        return original(level, lo, hi)

    levels.LevelImage._build = build
    try:
        segment_volume(vol, model, SegmentParams(**params), dic)
    finally:
        levels.LevelImage._build = original
    return crops


def time_crop(img, sigma, repeat):
    ref = gaussian_smooth_numpy(img.copy(), sigma, levels.TRUNCATE)

    def numba_1(x, s, t):
        with single_threaded():
            return gaussian_smooth_numba(x, s, t)

    ways = {"scipy_threads": lambda x, s, t: levels.gaussian_filter(x, s, t),
            "scipy_1": gaussian_smooth_numpy, "numba": gaussian_smooth_numba,
            "numba_1": numba_1}
    best = {k: float("inf") for k in ways}
    equal = {}
    for _ in range(repeat):
        for name, fn in ways.items():
            x = img.copy()
            t0 = time.perf_counter()
            fn(x, sigma, levels.TRUNCATE)
            best[name] = min(best[name], time.perf_counter() - t0)
            equal[name] = bool(np.array_equal(x, ref))
    return {"shape_zyx": list(img.shape), "mvoxels": round(img.size / 1e6, 3),
            "sigma_vox_zyx": [round(float(s), 4) for s in sigma],
            "ms": {k: round(v * 1e3, 3) for k, v in best.items()},
            "numba_over_scipy_threads": best["scipy_threads"] / best["numba"],
            "numba_1_over_scipy_1": best["scipy_1"] / best["numba_1"],
            "equal_to_reference": equal}


def time_block_mean(vol, repeat, res_mm=4.0):
    """The placement's block means of ``vol``, before (NumPy) and now (kernel)."""
    fz = np.maximum(1, np.round(res_mm / vol.spacing)).astype(int)[::-1]
    n = np.array(vol.array.shape) // fz

    def before():
        a = vol.array[:n[0] * fz[0], :n[1] * fz[1], :n[2] * fz[2]]
        return a.reshape(n[0], fz[0], n[1], fz[1], n[2], fz[2]).mean((1, 3, 5),
                                                                     dtype=np.float32)

    ways = {"numpy_float32_mean": before, "numba": lambda: block_mean_numba(vol.array, fz)}
    best, out = {}, {}
    for _ in range(repeat):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            out[name] = fn()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    return {"image_zyx": list(vol.array.shape), "dtype": str(vol.array.dtype),
            "block_zyx": fz.tolist(), "ms": {k: round(v * 1e3, 2) for k, v in best.items()},
            "speedup": best["numpy_float32_mean"] / best["numba"],
            "equal": bool(np.array_equal(out["numba"], out["numpy_float32_mean"]))}


def scipy_threaded_kernel(name, backend):
    """``levels.kernel`` with the smoothing routed to scipy's threaded filter."""
    if name == "gaussian_smooth":
        return lambda img, sigma, truncate, threads=None: levels.gaussian_filter(
            img, sigma, truncate, threads)
    return KERNEL(name, backend)


KERNEL = levels.kernel


def time_fits(vol, ref, model, dic, params, n):
    """Whole fits with each smoothing, interleaved: medians and the labels."""
    times = {"numba_kernel": [], "scipy_threads": []}
    labels = {}
    for _ in range(n):
        for way in times:
            levels.kernel = KERNEL if way == "numba_kernel" else scipy_threaded_kernel
            try:
                t0 = time.perf_counter()
                r = segment_volume(vol, model, SegmentParams(**params), dic)
                times[way].append(time.perf_counter() - t0)
            finally:
                levels.kernel = KERNEL
            labels[way] = (r.label, float(dice(r.label, ref)))
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"fit_s_median": med, "speedup": med["scipy_threads"] / med["numba_kernel"],
            "dice": labels["numba_kernel"][1],
            "same_label": bool(np.array_equal(labels["numba_kernel"][0],
                                              labels["scipy_threads"][0]))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--fits", type=int, default=15)
    ap.add_argument("--out", default=str(RESULTS / "smoothing.json"))
    a = ap.parse_args(argv)
    model, dic = kidney_dictionary()
    vol, ref, centre = ct512_left_kidney()
    seed = tuple(centre)
    seeded = dict(seed_mm=seed, side="left", near_start=0.0, **CT)
    noseed = dict(side="left", **CT)
    segment_volume(vol, model, SegmentParams(**seeded), dic)         # compile, untimed
    gaussian_smooth_numba(np.zeros((4, 4, 4), np.float32), (1.0, 1.0, 1.0))
    crops = {}
    for name, params in (("seeded", seeded), ("no_seed", noseed)):
        crops[name] = [time_crop(img, s, a.repeat)
                       for img, s in recorded_crops(vol, model, dic, params)]
        for c in crops[name]:
            print(name, c["shape_zyx"], c["ms"], f"x{c['numba_over_scipy_threads']:.2f}",
                  flush=True)
    block_mean_numba(vol.array, np.array([4, 7, 6]))               # compile, untimed
    blocks = time_block_mean(vol, a.repeat)
    print("block means", blocks, flush=True)
    fits = {"seeded": time_fits(vol, ref, model, dic, seeded, a.fits),
            "no_seed": time_fits(vol, ref, model, dic, noseed, max(1, a.fits // 2))}
    print(fits, flush=True)
    totals = {name: {k: round(sum(c["ms"][k] for c in rows), 2) for k in rows[0]["ms"]}
              for name, rows in crops.items() if rows}
    result = {"benchmark": "smoothing", "machine": machine(),
              "command": "python bench/bench_smoothing.py",
              "workload": "the crops (sigma > 0) of the ct512 left-kidney fits, seeded (oracle "
                          "centroid, near_start 0) and without a seed; cached KiTS model; "
                          f"SLACK_MM {levels.SLACK_MM}",
              "timing": f"crops: best of {a.repeat}, interleaved; fits: median of "
                        f"{a.fits} (seeded) and {max(1, a.fits // 2)} (no seed), interleaved",
              "all_equal_to_reference": all(v for rows in crops.values() for c in rows
                                            for v in c["equal_to_reference"].values()),
              "total_ms": totals, "crops": crops, "fits": fits, "block_mean": blocks}
    print(f"wrote {write_json(a.out, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
