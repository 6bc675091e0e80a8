"""Which candidate shapes to annotate (or add) next: ``rank_candidates``.

Three greedy orders of candidates already in correspondence with a model:

* ``'coverage'`` and ``'novelty'`` work on what the model cannot express, each
  candidate's residual outside the span of the model's mean and PCA modes;
* ``'representative'`` is kernel herding (Chen, Welling & Smola, UAI 2010): the
  candidates whose addition makes the model's shapes the closest sample of all
  the shapes known (the model's and the candidates'), so a model grown in that
  order holds typical shapes in the proportions they occur, rather than the
  unusual ones first.
"""

from __future__ import annotations

import numpy as np

from ._update import align_to_model

#: the orders :func:`rank_candidates` knows, its default first
CRITERIA = ("coverage", "novelty", "representative")

#: a candidate within this RMS vertex distance (mm) of a shape held is a copy of it
#: (a re-export, or the same shape in another pose or size): it adds nothing
SAME_SHAPE_MM = 1e-3

#: candidates whose kernel values are computed together (memory: this many rows
#: of every known shape's kernel, float64)
_BLOCK = 512


def _squared_distances(X, Y, nv):
    """Mean squared vertex distance (mm^2) between the rows of X (a, 3N) and Y (b, 3N)."""
    d = (np.einsum("ij,ij->i", X, X)[:, None] + np.einsum("ij,ij->i", Y, Y)[None]
         - 2.0 * (X @ Y.T))
    return np.maximum(d, 0.0) / nv


def _bandwidth(Z, nv):
    """Twice the median squared vertex distance (mm^2) of the rows of Z (n, 3N) to
    their mean: the median heuristic's bandwidth without forming the n^2 pairs
    (for independent shapes E|a - b|^2 = 2 E|a - mean|^2; on 1,150 aligned
    AdrenalMNIST3D shapes 16.20 mm^2 against 16.19 for the median over all
    pairs). A median, so that a few outliers (a bad annotation) do not widen the
    kernel until they look typical."""
    if len(Z) < 2:
        return 0.0
    c = Z - Z.mean(0)
    return float(2.0 * np.median(np.einsum("ij,ij->i", c, c)) / nv)


def _herding(cands, known, nv):
    """Kernel-herding order of ``cands`` (m, 3N) after ``known`` (n, 3N) shapes.

    Gaussian kernel exp(-d^2 / h) on the mean squared vertex distance d^2, with
    h from :func:`_bandwidth` over all the shapes known (model and candidates;
    independent of the candidates' order). Target: the mean kernel of every
    shape known. Each step picks the candidate that most lowers the maximum mean
    discrepancy between that target and the model's shapes with the picks so
    far; a copy of a shape held (within :data:`SAME_SHAPE_MM`) adds nothing and
    comes last.
    Returns ``(order, nearest_mm)``: at its selection, each candidate's RMS
    vertex distance to the nearest shape already held (the model's or an
    earlier pick)."""
    m, n = len(cands), len(known)
    h = _bandwidth(np.concatenate([known, cands]), nv)
    h = h if h > 0 else 1.0
    target = np.empty(m)
    held = np.empty(m)                 # sum of the kernel to the shapes held
    nearest = np.empty(m)              # squared distance to the nearest shape held
    for s in range(0, m, _BLOCK):
        block = cands[s:s + _BLOCK]
        d_known = _squared_distances(block, known, nv)
        k_known = np.exp(-d_known / h).sum(1)
        k_cands = np.exp(-_squared_distances(block, cands, nv) / h).sum(1)
        target[s:s + _BLOCK] = (k_known + k_cands) / (n + m)
        held[s:s + _BLOCK] = k_known
        nearest[s:s + _BLOCK] = d_known.min(1) if n else np.inf
    left = np.ones(m, dtype=bool)
    order, gains = [], []
    tiny = SAME_SHAPE_MM ** 2
    for t in range(m):
        ok = left & (nearest > tiny)
        if not ok.any():                 # copies of shapes held: nothing to add
            rest = np.flatnonzero(left)
            order += rest.tolist()
            gains += [0.0] * rest.size
            break
        score = np.where(ok, target - held / (n + t + 1), -np.inf)
        k = int(np.argmax(score))
        order.append(k)
        gains.append(float(np.sqrt(nearest[k])) if np.isfinite(nearest[k]) else 0.0)
        left[k] = False
        d = _squared_distances(cands[k:k + 1], cands, nv)[0]
        held += np.exp(-d / h)
        nearest = np.minimum(nearest, d)
    return np.array(order, dtype=int), np.array(gains)


def rank_candidates(model, shapes, criterion=CRITERIA[0]):
    """Order candidate shapes by how much each would add to the model.

    * ``'coverage'`` (default): on each candidate's residual outside the span
      of the model's mean and PCA modes (model frame, after similarity
      alignment), greedily the candidate whose direction explains the most
      residual energy of all candidates (itself included); after each pick the
      others' residuals are taken outside its direction, so a near-copy of a
      chosen candidate adds little and falls back. New variation that many
      candidates share comes first, so a lone outlier (a bad annotation or
      correspondence) is not preferred over a common gap.
    * ``'novelty'``: the same deflation, the largest own residual first.
    * ``'representative'``: kernel herding on the aligned shapes (see the
      module): first the kinds of shape of which the model holds fewer than
      their share of all shapes known, typical ones before outliers, so the
      model comes to hold them in the proportions they occur.

    The default was chosen on the tuning halves of both benchmark sets
    (``bench/results/online_ranking_tune.json``: held-out error after each
    batch of 50, clean and 50 % missing, plain SSC-L1; below the mean of 3
    random orders at 23 of 24 points for coverage, 20 for novelty), and chosen
    again with the reconstruction a user gets (prior and method ``auto``, every
    corruption: ``online_ranking_tune_default.json``, 25 of 36 points against
    18), and a third time against 'representative' after new shapes were
    aligned at GPA's size (coverage 29 of 36, representative 28, novelty 22;
    on AdrenalMNIST3D alone representative 18 of 21 and coverage 16, with 7 of 7
    against 4 on partly missing shapes). On the report halves with that
    reconstruction (``ranking_default_method`` in
    ``bench/results/online_*.json``) coverage is below the mean of the random
    orders at 11 of 15 KiTS points and at 24 of 33 AdrenalMNIST3D points (3 of
    11 on partly missing shapes); representative at 8 of 15 KiTS points and at
    all 33 adrenal points, reaching the full set's accuracy on partly missing
    glands with 200 shapes where random orders need 350-400. For a variable,
    thin organ like the adrenal gland, ``'representative'`` is the better
    choice.

    Parameters
    ----------
    model : ShapeModel
    shapes : ndarray, shape (M, N, 3)
        Candidates in correspondence with the model.
    criterion : {'coverage', 'novelty', 'representative'}

    Returns
    -------
    order : ndarray of int, shape (M,)
        Candidate indices, most informative first.
    novelty_mm : ndarray, shape (M,)
        RMS per vertex (mm) of each candidate's residual under the current
        model (before any selection).
    gain_mm : ndarray, shape (M,)
        At its selection, in ``order``: for 'coverage' the RMS per vertex (mm)
        of the residual energy of all candidates that it explains, for
        'novelty' its own RMS residual, for 'representative' its RMS vertex
        distance (mm) to the nearest shape held (the model's or an earlier
        pick's).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion={criterion!r} is invalid: expected one of "
                         f"{list(CRITERIA)}")
    aligned = align_to_model(model, shapes)
    m = len(aligned)
    nv = model.n_vertices
    R = aligned.reshape(m, -1) - model.mean.ravel()
    P = model.pca_components
    R = R - (R @ P.T) @ P
    novelty = np.sqrt(np.einsum("ij,ij->i", R, R) / nv)
    if criterion == "representative":
        order, gains = _herding(aligned.reshape(m, -1),
                                np.asarray(model.shapes, dtype=float).reshape(
                                    model.n_shapes, -1), nv)
        return order, novelty, gains
    if criterion == "novelty":
        def score(G, d, ok):
            return d
    else:
        def score(G, d, ok):     # energy of all candidates along candidate i's direction
            return np.sum(G ** 2, axis=0) / np.where(ok, d, 1.0)
    order, gains = _deflation_order(R @ R.T, score, nv)
    return order, novelty, gains


def _deflation_order(G, score, nv):
    """Greedy order on the candidates' residual inner products ``G`` (m, m): each
    step picks the candidate of the largest ``score(G, d, ok)`` (``d`` the
    residuals' squared norms, ``ok`` the candidates still left with a residual),
    then takes the others' residuals outside its direction, so a near-copy of a
    pick adds little and falls back. Returns ``(order, gain_mm)``, the gain the
    RMS per vertex of a pick's score."""
    m = len(G)
    order, gains = [], []
    left = np.ones(m, dtype=bool)
    scale = max(float(np.max(np.diag(G))), 1e-300)
    for _ in range(m):
        d = np.maximum(np.diag(G), 0.0)
        ok = left & (d > 1e-12 * scale)
        if not ok.any():                         # nothing left to explain
            rest = np.flatnonzero(left)
            order += rest.tolist()
            gains += [0.0] * rest.size
            break
        s = np.where(ok, score(G, d, ok), -1.0)
        k = int(np.argmax(s))
        order.append(k)
        gains.append(float(np.sqrt(max(s[k], 0.0) / nv)))
        left[k] = False
        g = G[:, k].copy()
        G = G - np.outer(g, g) / d[k]            # deflate: residuals outside its direction
    return np.array(order), np.array(gains)
