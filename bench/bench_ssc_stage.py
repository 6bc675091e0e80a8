"""The SSC stage of a whole-CT segmentation, replayed: the current solver path
against the previous one in the same run (issue #13).

The seeded left-kidney fit of ``bench_pipeline.py``'s ct512 workload (the
TotalSegmentator example CT on a 512 x 512 x 300 grid, the cached KiTS model,
numba) runs once with every ``sparse_shape_composition`` call recorded (shape,
confidences, options, warm starts). The recorded calls are then replayed,
each replay on a fresh view of the dictionary (empty caches, as in a new
segmentation), alternating between

* ``current``: the defaults: ``D^T W z`` by one matrix-vector pass per
  alignment round (``DIRECT_ROUNDS``), and a cold solve that starts from the
  Lasso on a working set of the weighted Gram's columns (``lasso_partial``);
* ``previous``: what the code did before: the 12-column moments pass for
  every call (``DIRECT_ROUNDS = 0``) and the whole weighted Gram computed for
  the cold first call.

Both paths reach the same optimum; the largest difference of their
reconstructions is in the JSON. Times: median over ``--repeat`` replays of the
whole sequence, and of its first (cold) call.

``cold_call`` rows: the first (cold) call alone, the two ways, on the kidney
dictionary and on a synthetic one of 1,000 shapes with the same 2562 vertices
and the recorded confidences (a repository of the size issue #18 aims at: the
whole weighted Gram grows as K^2, the working set's columns as K).

    python bench/bench_ssc_stage.py               # writes results/ssc_stage.json
    # needs bench/cache/kidney_model.npz (bench_robustness.py) and the shared data
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_json  # noqa: E402

import shapeprior.segmentation._fit as fit_module  # noqa: E402
import shapeprior.ssc._compose as compose  # noqa: E402
from shapeprior.model import load_model  # noqa: E402
from shapeprior.segmentation import SegmentParams, dice, segment_volume  # noqa: E402

HERE = Path(__file__).resolve().parent


def kidney_dictionary():
    """The cached KiTS model of bench_robustness.py and its Numba dictionary of the
    training shapes (exits, saying so, when the cache is missing)."""
    mpath = HERE / "cache" / "kidney_model.npz"
    if not mpath.exists():
        sys.exit(f"{mpath} is missing: run bench/bench_robustness.py first")
    model = load_model(mpath)
    return model, model.ssc_dictionary("shapes", backend="numba")


def record_calls(model, dic, work):
    """The SSC calls of the seeded ct512 left-kidney fit, and the fit's Dice."""
    from bench_pipeline import ct512_left_kidney

    _, vol, ref, centre = ct512_left_kidney(work)
    seed = tuple(centre)
    calls = []
    original = fit_module.sparse_shape_composition

    def recorder(shape, dictionary, weights, **kw):
        calls.append((np.array(shape), np.array(weights), dict(kw)))
        return original(shape, dictionary, weights, **kw)

    fit_module.sparse_shape_composition = recorder
    try:
        # the fit from the oracle seed alone (near_start 0): the calls its own
        # iterations make, not those of trial fits near the seed
        res = segment_volume(vol, model, SegmentParams(
            seed_mm=seed, side="left", normalisation="ct", window=(-0.05, 0.15),
            inside_brighter=True, backend="numba", near_start=0.0), dictionary=dic)
    finally:
        fit_module.sparse_shape_composition = original
    return calls, float(dice(res.label, ref)), list(vol.array.shape)


def replay(calls, dic, previous):
    """Run the calls on a fresh view of ``dic``: (total s, first call s, reconstructions)."""
    view = dic.view()
    saved = compose.DIRECT_ROUNDS
    compose.DIRECT_ROUNDS = 0 if previous else saved
    times, recs = [], []
    try:
        for y, s, kw in calls:
            t0 = time.perf_counter()
            if previous and kw.get("x0") is None:     # the whole weighted Gram, as before
                view.weighted_gram(np.repeat(s * s, dic.n_dims))
            res = compose.sparse_shape_composition(y, view, s, **kw)
            times.append(time.perf_counter() - t0)
            recs.append(res.reconstruction)
    finally:
        compose.DIRECT_ROUNDS = saved
    return sum(times), times[0], np.array(recs)


def cold_call(name, dic, y, s, kw, repeat):
    """One cold call (no warm start) on fresh views of ``dic``, both ways."""
    one = [(y, s, {**kw, "x0": None, "transform0": None})]
    t = {"current": [], "previous": []}
    for _ in range(repeat):
        for mode in t:
            total, _, rec = replay(one, dic, mode == "previous")
            t[mode].append(total)
    cur, prev = float(np.median(t["current"])), float(np.median(t["previous"]))
    return {"dictionary": name, "n_atoms": dic.n_atoms, "n_points": dic.n_points,
            "current_s_median": cur, "previous_s_median": prev, "speedup": prev / cur}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--out", default=str(RESULTS / "ssc_stage.json"))
    a = ap.parse_args(argv)
    model, dic = kidney_dictionary()
    with tempfile.TemporaryDirectory() as work:
        calls, fit_dice, shape = record_calls(model, dic, Path(work))
    runs = {"current": [], "previous": []}
    recs = {}
    replay(calls, dic, False)                           # compile, warm the caches of BLAS
    for _ in range(a.repeat):
        for mode in runs:
            total, first, recs[mode] = replay(calls, dic, mode == "previous")
            runs[mode].append((total, first))
    y0, s0, kw0 = calls[0]
    cold = [cold_call("kidney", dic, y0, s0, kw0, a.repeat)]
    from shapeprior.ssc import ShapeDictionary
    from shapeprior.synthetic import ShapePopulation

    pop = ShapePopulation(n_points=dic.n_points, degree=6, seed=1)
    big = ShapeDictionary(pop.sample(1000), backend="numba")
    yb = pop.sample(1, np.random.default_rng(2))[0]
    cold.append(cold_call("synthetic", big, yb, s0, kw0, a.repeat))
    summary = {}
    for mode, r in runs.items():
        r = np.array(r)
        summary[mode] = {"total_s_median": float(np.median(r[:, 0])),
                         "total_s_min": float(r[:, 0].min()),
                         "first_call_s_median": float(np.median(r[:, 1])),
                         "rest_s_median": float(np.median(r[:, 0] - r[:, 1]))}
    ratio = summary["previous"]["total_s_median"] / summary["current"]["total_s_median"]
    out = {"benchmark": "ssc_stage", "machine": machine(),
           "command": "python bench/bench_ssc_stage.py",
           "workload": "seeded left-kidney fit of the ct512 example CT (grid zyx "
                       f"{shape}), cached KiTS model ({dic.n_atoms} shapes, {dic.n_points} "
                       "vertices), numba; its SSC calls replayed",
           "n_calls": len(calls), "fit_dice": fit_dice, "repeats": a.repeat,
           "modes": summary, "speedup_total": ratio,
           "speedup_first_call": summary["previous"]["first_call_s_median"]
           / summary["current"]["first_call_s_median"],
           "max_reconstruction_difference_mm":
               float(np.abs(recs["current"] - recs["previous"]).max()),
           "cold_call": cold}
    write_json(a.out, out)
    print(f"{len(calls)} SSC calls: previous {summary['previous']['total_s_median'] * 1e3:.0f} ms "
          f"-> current {summary['current']['total_s_median'] * 1e3:.0f} ms (x{ratio:.2f}); "
          f"first call x{out['speedup_first_call']:.2f}; reconstructions differ by "
          f"{out['max_reconstruction_difference_mm']:.1e} mm")
    for c in cold:
        print(f"cold call, {c['dictionary']} K={c['n_atoms']}: previous "
              f"{c['previous_s_median'] * 1e3:.1f} ms -> current {c['current_s_median'] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
