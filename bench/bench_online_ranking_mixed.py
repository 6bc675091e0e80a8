"""Combined ranking criteria on the online-learning tuning halves (issue #18).

``coverage`` (the default of ``rank_candidates``) ranks what the model cannot yet
express and trails random order on partly missing adrenal glands;
``representative`` (kernel herding) ranks typical shapes first and trails on
KiTS. This benchmark asks whether a combination of the two does better than
either, with the protocol that chose the default (``bench_online.py
--ranking-tune --ranking-method default``): learning curves of the online model
on each set's tuning half, every corruption, the library's default
reconstruction, compared point by point with the mean of the random orders
stored in ``results/online_ranking_tune_default.json`` (same first batch, same
held-out shapes and corruptions). Combinations (not in the library):

* ``density``: information density (Settles & Craven, EMNLP 2008): coverage's
  score times the candidate's typicality, its mean Gaussian kernel to every
  shape known (herding's kernel and bandwidth), normalised to 1 at its largest;
* ``explained_density``: coverage's residual energy explained, each
  candidate's energy weighted by its typicality (a direction that many
  typical shapes share first);
* ``alternate``: picks alternately from the coverage and the representative
  orders (each computed once per batch), skipping repeats.

    python bench/bench_online_ranking_mixed.py      # -> results/online_ranking_mixed_tune.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import bench_online as bo
from _common import machine, write_json
from shapeprior.model import _ranking
from shapeprior.model._update import align_to_model

CRITERIA = ("density", "explained_density", "alternate")


def typicality(model, aligned):
    """Each candidate's mean kernel to every shape known (model and candidates),
    herding's Gaussian kernel and bandwidth, over its largest value."""
    nv = model.n_vertices
    A = aligned.reshape(len(aligned), -1)
    known = np.concatenate([np.asarray(model.shapes, float).reshape(model.n_shapes, -1), A])
    h = _ranking._bandwidth(known, nv) or 1.0
    t = np.exp(-_ranking._squared_distances(A, known, nv) / h).mean(1)
    return t / t.max()


def weighted_coverage(model, shapes, explained):
    """Coverage's greedy deflation with typicality weights: on the score
    (``explained`` False) or on the energy of each shape explained (True)."""
    aligned = align_to_model(model, shapes)
    w = typicality(model, aligned)
    R = aligned.reshape(len(aligned), -1) - model.mean.ravel()
    P = model.pca_components
    R = R - (R @ P.T) @ P
    def score(G, d, ok):
        energy = (w[:, None] * G ** 2).sum(0) if explained else np.sum(G ** 2, axis=0) * w
        return energy / np.where(ok, d, 1.0)

    return _ranking._deflation_order(R @ R.T, score, model.n_vertices)[0]


def alternate(model, shapes):
    a = _ranking.rank_candidates(model, shapes, "coverage")[0]
    b = _ranking.rank_candidates(model, shapes, "representative")[0]
    seen, out = set(), []
    for pair in zip(a, b):
        for k in pair:
            if int(k) not in seen:
                seen.add(int(k))
                out.append(int(k))
    return np.array(out)


def ranker(criterion):
    """A stand-in for rank_candidates with the combined ``criterion``."""
    def rank(model, shapes, _criterion=None):
        if criterion == "alternate":
            order = alternate(model, shapes)
        else:
            order = weighted_coverage(model, shapes, criterion == "explained_density")
        return order, None, None
    return rank


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=["kits", "adrenal"])
    ap.add_argument("--criteria", nargs="+", choices=CRITERIA, default=list(CRITERIA))
    ap.add_argument("--out", default=str(bo.HERE / "results" / "online_ranking_mixed_tune.json"))
    a = ap.parse_args(argv)
    # bench_online's halves and chosen dictionaries, as its --ranking-tune reads them
    halves = argparse.Namespace(n_jobs=1, max_eval=24, seed=0,
                                out=str(bo.HERE / "results" / "online_{set}.json"))
    stored = json.loads((bo.HERE / "results" / "online_ranking_tune_default.json").read_text())
    steps = stored["sets"]["adrenal"]["points"] // len(bo.CORRUPTIONS) + 1
    out = {"benchmark": "online learning: combined ranking criteria on the tuning halves",
           "machine": machine(), "batch": bo.BATCH,
           "protocol": "as bench_online.py --ranking-tune --ranking-method default; random "
                       "orders and the library's criteria from "
                       "results/online_ranking_tune_default.json",
           "sets": {}, "below_random_mean": {}}
    t_all = time.perf_counter()
    for name in a.sets:
        ch, pool, faces, tune, _ = bo._halves(name, halves)
        spec = bo._spec(ch)
        cases = bo.corrupted(tune, faces, halves.seed + 1)
        first = np.random.default_rng(halves.seed).permutation(len(pool))[:bo.BATCH]
        ref = stored["sets"][name]
        res = {"ranked": {}, "below_random_mean": {},
               "library": ref["below_random_mean"], "points": ref["points"]}
        top = None if name == "kits" else steps * bo.BATCH
        for crit in a.criteria:
            bo.rank_candidates = ranker(crit)
            order = bo.ranked_order(pool, faces, spec, halves.seed, first, crit, top)
            curve = bo.learning_curve(pool, faces, tune, cases, order, spec, halves.seed,
                                      rebuild=False, options="default", shapes_prior=False)
            means = {c: [r["online"][c]["mean_mm"] for r in curve] for c in cases}
            n = 0
            for c in cases:
                rand = np.mean([r[c] for r in ref["random"]], axis=0)
                n += int(np.sum(np.array(means[c])[1:] < rand[1:]))
            res["ranked"][crit] = means
            res["below_random_mean"][crit] = n
            print(f"{name} {crit}: below the random mean at {n} of {ref['points']} points "
                  f"(library: {ref['below_random_mean']})", flush=True)
        out["sets"][name] = res
    for crit in a.criteria:
        out["below_random_mean"][crit] = sum(s["below_random_mean"][crit]
                                             for s in out["sets"].values())
    out["library_below_random_mean"] = stored["below_random_mean"]
    out["time_s"] = time.perf_counter() - t_all
    write_json(a.out, out)
    print(f"wrote {a.out}: {out['below_random_mean']} against {stored['below_random_mean']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
