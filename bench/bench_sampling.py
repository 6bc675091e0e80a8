"""Throughput of trilinear sampling along vertex normals (the search's inner loop).

Samples a real CT (the TotalSegmentator example, resampled to 512 x 512 x 300
as in bench_pipeline.py) at ``N vertices x M offsets`` points around the
reference kidney's surface, with each backend of
:mod:`shapeprior_kernels.normal_sampling`: scipy's ``map_coordinates``
(reference), the Numba kernel, and the CUDA kernel where a GPU is present
(image already on the device, as in segmentation). Reports points per second,
the ratio to the scipy reference in the same run, and the largest difference.

    python bench/bench_sampling.py            # writes results/sampling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from shapeprior.backend import cupy_available
from shapeprior.io import read_label_map, read_volume
from shapeprior.mesh import mask_to_surface
from shapeprior_kernels import sample_normals_numba, sample_normals_numpy

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_pipeline import make_ct512  # noqa: E402


def _time(fn, repeat):
    fn()                                      # warm-up (JIT, module load)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "sampling.json"))
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ip, lp = make_ct512(Path(tmp))
        vol, lab = read_volume(ip), read_label_map(lp)
    surf = mask_to_surface(lab, lab.array == 3)          # left kidney, physical mm
    img = vol.array.astype(np.float32) / 1000.0
    A = np.linalg.inv(vol.index_to_physical_matrix)
    origin = vol.origin
    normals = surf.vertex_normals()
    rng = np.random.default_rng(0)
    rows = []
    for n_vert, m in ((2562, 17 * 8), (20000, 136), (100000, 100)):
        idx = rng.choice(len(surf.verts), n_vert, replace=len(surf.verts) < n_vert)
        v = surf.verts[idx] + rng.normal(scale=0.5, size=(n_vert, 3))
        nrm = normals[idx]
        t = np.linspace(-6, 6, m)
        pts = n_vert * m
        ref = sample_normals_numpy(img, v, nrm, t, A, origin)
        row = {"vertices": n_vert, "offsets": m, "points": pts}
        t_ref = _time(lambda: sample_normals_numpy(img, v, nrm, t, A, origin), a.repeat)
        row["scipy"] = {"s": t_ref, "points_per_s": pts / t_ref}
        t_nb = _time(lambda: sample_normals_numba(img, v, nrm, t, A, origin), a.repeat)
        row["numba"] = {"s": t_nb, "points_per_s": pts / t_nb, "speedup_vs_scipy": t_ref / t_nb,
                        "max_abs_diff": float(np.abs(
                            sample_normals_numba(img, v, nrm, t, A, origin) - ref).max())}
        if cupy_available():
            import cupy as cp

            from shapeprior_kernels import sample_normals_cupy

            gimg = cp.asarray(img)

            def run():
                out = sample_normals_cupy(gimg, v, nrm, t, A, origin)
                cp.cuda.Stream.null.synchronize()
                return out

            t_gpu = _time(run, a.repeat)
            row["cupy"] = {"s": t_gpu, "points_per_s": pts / t_gpu,
                           "speedup_vs_scipy": t_ref / t_gpu, "speedup_vs_numba": t_nb / t_gpu,
                           "max_abs_diff": float(np.abs(cp.asnumpy(run()) - ref).max())}
        rows.append(row)
        print(f"{pts / 1e6:6.2f} M points: scipy {pts / t_ref / 1e6:6.1f} M/s, numba "
              f"{pts / t_nb / 1e6:6.1f} M/s (x{t_ref / t_nb:.1f})"
              + (f", cupy {row['cupy']['points_per_s'] / 1e6:.1f} M/s" if "cupy" in row else ""))
    gpu = None
    if cupy_available():
        import cupy as cp

        gpu = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    out = {"benchmark": "normal_sampling", "image": "TotalSegmentator example CT resampled "
           "to 512x512x300 (float32)", "surface": "reference left kidney",
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "gpu": gpu},
           "rows": rows}
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
