"""Shapes of a paired organ: which side a shape in correspondence is on.

A model of one side of a paired organ (``build-model --split-sides``: right
kidneys mirrored onto the left) explains the other side's shapes only
mirrored: vertex i of a right kidney that ``segment --side right`` writes is
the model's vertex i mirrored, which no similarity transform undoes.
"""

from __future__ import annotations

import numpy as np

from ..ssc import sparse_shape_composition
from ._assess import MIRROR

#: ``side`` choices of :func:`solve_sides`
SIDES = ("auto", "left", "right")


def paired_model(model):
    """Whether the model holds one side of a paired organ, the other mirrored
    onto it (``build-model --split-sides``): then a fit needs a side."""
    return "mirrored" in str(model.metadata.get("side", ""))


def median_residual(r, y):
    """Median distance (mm) of the visible vertices of ``y`` (N, 3) from their
    reconstruction in ``r``."""
    near = np.linalg.norm(r.reconstruction - y, axis=1)[r.visible]
    return float(np.median(near)) if near.size else 0.0


def starting_side(init, dic):
    """'left' or 'right': the side of a paired organ whose model (one side, the
    other mirrored onto it) explains the starting surface ``init`` (N, 3) (the
    model's vertex order) closer, as given or mirrored (median vertex residual
    of an L1 SSC solve each); None for a surface of another shape. A starting
    surface fitted to a right organ's mask is the model mirrored, which no
    similarity transform undoes."""
    init = np.asarray(init, dtype=float)
    if init.shape != (dic.n_points, 3) or not np.all(np.isfinite(init)):
        return None     # refused with its reason by segment_volume
    res = [median_residual(sparse_shape_composition(y, dic, method="l1"), y)
           for y in (init, init * MIRROR)]
    return "right" if res[1] < res[0] else "left"


def model_side(model):
    """The side a paired organ's model holds (``'left'`` for ``build-model
    --split-sides``: right organs mirrored onto the left), or None."""
    return str(model.metadata.get("side", "")).split()[0] if paired_model(model) else None


def check_side(model, side):
    """The model's side (:func:`model_side`); ValueError for a ``side`` not in
    :data:`SIDES`, or other than 'auto' for a model of no paired organ."""
    kept = model_side(model)
    if side not in SIDES:
        raise ValueError(f"side={side!r} is not one of {SIDES}")
    if kept is None and side != "auto":
        raise ValueError(f"side={side!r}: the model is not of a paired organ with one side "
                         "mirrored onto the other (build-model --split-sides); leave it out")
    return kept


def solve_sides(shapes, model, side, solve, weights=None):
    """SSC of shapes in correspondence, each on its side of a paired organ.

    A model of one side of a paired organ (:func:`model_side`) explains the
    other side's shapes only mirrored: vertex i of a right kidney from
    ``segment --side right`` is the model's vertex i mirrored, which no
    similarity transform undoes. ``side`` 'auto' solves each shape as given and
    mirrored (x negated) and keeps the solve whose visible vertices lie closer
    to their reconstruction (median); 'left' or 'right' gives the side. Other
    models take only 'auto' (each shape solved as given).

    Parameters
    ----------
    shapes : ndarray, shape (M, N, 3)
    model : ShapeModel
    side : {'auto', 'left', 'right'}
    solve : callable
        ``solve(shapes (M', N, 3), weights)`` -> M' results (SSCResult).
    weights : ndarray, shape (N,) or (M, N), optional

    Returns
    -------
    list of (SSCResult, bool, float or None)
        Per shape: the result with its ``reconstruction`` in the input's frame
        (mirrored back; ``info['mirrored']`` and ``info['side']`` say so; its
        transform maps the input with x negated into the model frame), whether
        it was mirrored, and with 'auto' the other solve's median residual (mm).
    """
    kept = check_side(model, side)
    shapes = np.asarray(shapes, dtype=float)
    w = None if weights is None else np.asarray(weights, dtype=float)
    if kept is None or side != "auto":
        mirrored = kept is not None and side != kept
        picked = [(r, mirrored, None)
                  for r in solve(shapes * MIRROR if mirrored else shapes, w)]
    else:
        both = solve(np.concatenate([shapes, shapes * MIRROR]),
                     None if w is None or w.ndim == 1 else np.concatenate([w, w]))
        picked = []
        for i, y in enumerate(shapes):
            a, b = both[i], both[len(shapes) + i]
            ma, mb = median_residual(a, y), median_residual(b, y * MIRROR)
            picked.append((b, True, ma) if mb < ma else (a, False, mb))
    other = {"left": "right", "right": "left"}
    for r, mirrored, _ in picked:
        if mirrored:        # back into the input's frame
            r.reconstruction = r.reconstruction * MIRROR
        r.info["mirrored"] = mirrored
        r.info["side"] = "none" if kept is None else other[kept] if mirrored else kept
    return picked
