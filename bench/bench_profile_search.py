"""The learned-profile search along normals: NumPy reference against the Numba twin.

Real samples: a held-out MSD hippocampus MR case (number % 5 == 0), the
hippocampus model of bench_hippocampus.py (cache, else built from the training
split), its mean shape placed at the reference label's centroid, image samples
along the normals at the first level's search range. The rows are batches the
segmentation really scores: one mesh (an iteration of the fit), the 27
candidates of a placement refinement grid (400 vertices each), and a coarse
placement grid of 200 candidates. Reports seconds (best of ``--repeat``), the
ratio to the reference in the same run, and the agreement of the two twins
(same best candidate, largest cost difference).

    python bench/bench_profile_search.py      # writes results/profile_search.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from _common import data_root, previous_results
from shapeprior import __version__
from shapeprior.appearance import NormalSampler, normalise_intensity
from shapeprior.io import read_label_map, read_volume
from shapeprior.mesh import Surface
from shapeprior.model import load_model
from shapeprior_kernels import profile_search_numba, profile_search_numpy

HERE = Path(__file__).resolve().parent


def _best_of(fn, repeat):
    fn()                                       # warm-up (JIT)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--search-mm", type=float, default=6.0)
    ap.add_argument("--out", default=str(HERE / "results" / "profile_search.json"))
    a = ap.parse_args(argv)
    root = data_root() / "msd_hippocampus"
    if not root.is_dir():
        print(f"no data under {root} (set SHAPEPRIOR_DATA)", file=sys.stderr)
        return 2
    from bench_pipeline import hippocampus_model

    model = load_model(hippocampus_model(root, 2))
    pm = model.profile
    case = "hippocampus_015.nii.gz"
    vol = read_volume(root / "images" / case)
    ref = read_label_map(root / "labels" / case).array > 0
    centre = vol.index_to_physical(np.argwhere(ref).mean(0)[::-1][None])[0]
    verts = model.mean - model.mean.mean(0) + centre
    normals = Surface(verts, model.faces).vertex_normals()
    sampler = NormalSampler(vol, normalise_intensity(vol, pm.normalisation), "numpy")
    m = int(round(a.search_mm / pm.step))
    offsets = np.arange(-m - pm.half, m + pm.half + 1) * pm.step
    samples = sampler(verts, normals, offsets)                     # (642, C + L - 1)
    penalty = 1e-3 * np.abs(np.arange(-m, m + 1) * pm.step)
    rng = np.random.default_rng(0)
    rows = []
    for name, n_cand, n_vert in (("one mesh", 1, len(verts)), ("refinement grid", 27, 400),
                                 ("coarse grid", 200, 400)):
        pick = np.concatenate([rng.choice(len(verts), n_vert, replace=False)
                               for _ in range(n_cand)])
        s, mu, var = samples[pick], pm.mean[pick], pm.var[pick]
        b0, c0 = profile_search_numpy(s, mu, var, penalty)
        b1, c1 = profile_search_numba(s, mu, var, penalty)
        t_np = _best_of(lambda: profile_search_numpy(s, mu, var, penalty), a.repeat)
        t_nb = _best_of(lambda: profile_search_numba(s, mu, var, penalty), a.repeat)
        rows.append({"batch": name, "rows": int(len(s)), "candidates": int(2 * m + 1),
                     "profile_length": int(mu.shape[1] + 1),
                     "numpy_s": t_np, "numba_s": t_nb, "speedup": t_np / t_nb,
                     "same_best_fraction": float(np.mean(b0 == b1)),
                     "max_cost_diff": float(np.abs(c0 - c1).max())})
        print(f"{name:16s} {len(s):6d} rows: numpy {t_np * 1e3:7.2f} ms, numba "
              f"{t_nb * 1e3:6.2f} ms (x{t_np / t_nb:.1f}); same best "
              f"{100 * rows[-1]['same_best_fraction']:.1f} %, cost diff "
              f"{rows[-1]['max_cost_diff']:.1e}")
    result = {"benchmark": "profile_search", "version": __version__,
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "data": f"MSD Task04 hippocampus MR, held-out {case}; model mean at the "
                      "reference centroid; first-level search range",
              "search_mm": a.search_mm, "rows": rows}
    old, src = previous_results(a.out)
    if old:
        prev = {r["batch"]: r for r in old.get("rows", [])}
        result["previous"] = {"source": src, "numba_s_ratio": {
            r["batch"]: r["numba_s"] / prev[r["batch"]]["numba_s"]
            for r in rows if r["batch"] in prev}}
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
