"""Runs of identical slices in a mask, read with the image: copied or inserted.

A run of slices that repeat one outline exactly is one of two errors, and the
mask alone cannot tell which:

* **copied**: the outline was carried forward over slices that were there (an
  annotator or a slice-wise network); the organ lies in place on both sides of
  the run, and the copies are bridged by interpolation
  (:func:`~shapeprior.segmentation._refine.repeated_slices`);
* **inserted**: the copies were added (a slice duplicated on writing, a
  series read with repeated positions); everything on one side of the run is
  displaced by the number of copies.

With the image they differ: only the reading that puts the organ back where
the scan shows it explains the scan's intensities. For each run three
readings are scored: copies, and "the copies were inserted before (or
after) the rest of the organ" (the copies removed, that side moved back by
as many slices). Partial readings (some copies inserted, some replacing)
were scored too and dropped: they are no plausible error, and on the
validation cases they mostly fitted noise one slice off (summed error 0.278
against 0.220 for whole readings, both without the continuity condition
below; :data:`INSERTED_MARGIN`). A reading's score is how much of
the image's intensity variance in the organ's box its mask explains (the
squared correlation between mask and intensity; a two-region
piecewise-constant fit). An insertion is adopted only when its two-region
contrast is clearly above the copies reading's (:data:`INSERTED_MARGIN`) and
removing the copies leaves the organ continuous (:data:`JUNCTION_FRACTION`):
copies that replaced slices join, once removed, outlines several slices
apart. Model-free, so CT and MR alike.
"""

from __future__ import annotations

import numpy as np

from ..mesh import grown_box, mask_box
from ._cavities import sample_image

#: an insertion reading is adopted when its two-region contrast (between-region
#: over within-region variance of the intensities in the organ's box,
#: ``R^2 / (1 - R^2)``) exceeds the copies reading's by more than this fraction
#: (None: never; every run is read as copies, as without the image). Chosen with
#: :data:`JUNCTION_FRACTION` on the validation cases of
#: ``bench/bench_refine_image.py --validation`` (12 TotalSegmentator example CT
#: organs other than the kidneys, 8 of its MR organs, 20 MSD hippocampus
#: training-split cases; 2 / 4 / 6 slices inserted or copied along the slice
#: axis): the least summed mean error (voxels that differ from the clean mask,
#: relative to its volume, before the fit) over inserted and copied slices
#: among 0 / 0.1 / 0.25 / 0.5 / 1: inserted 0.431 -> 0.075, copied 0.128 ->
#: 0.128 (without the continuity condition the hippocampus's weak contrast let
#: a copied run pass for an inserted one now and then: copied 0.145)
INSERTED_MARGIN = 0.1
#: ... and only where removing the copies leaves the organ continuous: the
#: overlap of the run's outline with the slice after the run at least this
#: fraction of the organ's median overlap of consecutive slices (removing
#: copies that replaced slices joins outlines several slices apart: a jump).
#: Chosen with INSERTED_MARGIN on the same validation cases among 0 (not
#: asked) / 0.5 / 0.6 / 0.7 / 0.8 / 0.9: copied 0.145 -> 0.128 (the error
#: without the rule), inserted 0.075 -> 0.075; summed 0.203
JUNCTION_FRACTION = 0.8
#: a cross-section of at least this many voxels repeated exactly on the next
#: slice is a copy (no organ keeps the same outline voxel for voxel from one
#: slice to the next: none of 80 KiTS19 kidney masks does, on any axis)
MIN_REPEAT_VOXELS = 20
#: the organ's box is grown by this many voxels for the score
BOX_MARGIN = 1
#: at most this many runs are read (each reading may move the others)
MAX_RUNS = 8


def identical_runs(m, ax, min_voxels=MIN_REPEAT_VOXELS):
    """Runs of slices along ``ax`` that repeat the slice before them exactly.

    Parameters
    ----------
    m : ndarray of bool, shape (nz, ny, nx)
    ax : int
        Array axis.
    min_voxels : int
        A repeated slice counts when it has at least this many voxels.

    Returns
    -------
    list of (int, int)
        ``(i, j)``: slices ``i + 1 .. j`` repeat slice ``i`` (``j - i`` copies).
    """
    t = np.moveaxis(m, ax, 0)
    area = t.reshape(len(t), -1).sum(axis=1)
    same = [bool(area[i] >= min_voxels and np.array_equal(t[i], t[i + 1]))
            for i in range(len(t) - 1)]
    out, i = [], 0
    while i < len(same):
        if not same[i]:
            i += 1
            continue
        j = i
        while j < len(same) and same[j]:
            j += 1
        out.append((i, j))
        i = j
    return out


def _reading(t, i, j, side, h):
    """``t`` (slices first) with ``h`` copies of the run ``i .. j`` removed and
    the organ on ``side`` of the run moved back by ``h`` slices (the far end
    left empty)."""
    empty = np.zeros((h,) + t.shape[1:], t.dtype)
    if side == "after":
        return np.concatenate([t[:j + 1 - h], t[j + 1:], empty])
    return np.concatenate([empty, t[:i], t[i + h:]])


def _explained(values, inside):
    """Share of the variance of ``values`` explained by splitting them into
    ``inside`` and the rest (0 when one side is empty)."""
    n1 = int(np.count_nonzero(inside))
    n0 = values.size - n1
    if n1 == 0 or n0 == 0:
        return 0.0
    mu = values.mean()
    between = n1 * (values[inside].mean() - mu) ** 2 + n0 * (values[~inside].mean() - mu) ** 2
    total = float(np.sum((values - mu) ** 2))
    return float(between / total) if total > 0 else 0.0


def _read_run(m, vol, image, ax, i, j, margin, junction):
    """The best reading ``(side, h)`` of the run ``i .. j`` along ``ax`` of the
    organ ``m`` (``h`` 0: the copies reading; else ``h = j - i``, every copy
    inserted) and the variance each reading explains; None when the image does
    not cover the organ's box."""
    # every reading moves organ slices towards the run: all lie in the organ's box
    box = grown_box(mask_box(m), BOX_MARGIN, m.shape)
    lo = np.array([b.start for b in box])
    if image.same_grid(vol):
        values = np.asarray(image.array[box], float).ravel()
    else:
        at = np.argwhere(np.ones(m[box].shape, bool)) + lo
        values = sample_image(image, vol, at)
    if not np.all(np.isfinite(values)):
        return None
    t = np.moveaxis(m[box], ax, 0)
    i, j = int(i - lo[ax]), int(j - lo[ax])
    readings = {("copies", 0): t}
    for side in ("after", "before"):
        readings[(side, j - i)] = _reading(t, i, j, side, j - i)
    scores = {key: _explained(values, np.moveaxis(r, 0, ax).ravel())
              for key, r in readings.items()}
    best = max(scores, key=lambda key: (scores[key], -key[1]))
    joint = _continuity(t, i, j)
    if margin is None or _contrast(scores[best]) <= (1.0 + margin) * _contrast(
            scores[("copies", 0)]) or joint < junction:
        best = ("copies", 0)
    return best, scores, joint


def _iou(a, b):
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def _continuity(t, i, j):
    """How continuous the organ stays with the run's copies removed: the overlap
    (intersection over union) of the run's outline with the slice after the
    run, over the median overlap of consecutive slices elsewhere in the organ
    (1: as continuous as the organ; 1 too when the run ends the organ)."""
    if j + 1 >= len(t) or not t[j + 1].any():
        return 1.0
    occupied = np.flatnonzero(t.reshape(len(t), -1).any(axis=1))
    typical = [_iou(t[q], t[q + 1]) for q in range(occupied[0], occupied[-1])
               if not i <= q <= j]
    median = float(np.median(typical)) if typical else 0.0
    return _iou(t[i], t[j + 1]) / median if median > 0 else 1.0


def _contrast(explained):
    """Between-region over within-region variance of a two-region split that
    explains the share ``explained`` of the variance: ``R^2 / (1 - R^2)``."""
    return explained / (1.0 - explained) if explained < 1.0 else np.inf


def undo_inserted_slices(label, organ_values, vol, image, margin=INSERTED_MARGIN,
                         junction=JUNCTION_FRACTION):
    """Remove the slices that runs of identical slices inserted into the organ,
    where the image says they were inserted rather than copied.

    Parameters
    ----------
    label : ndarray of int, shape (nz, ny, nx)
        The label map on ``vol``'s grid.
    organ_values : sequence of int
        The organ's labels (kept labels included): these voxels are read and
        moved; the other labels are dropped from the result.
    vol : Volume
        The label map's grid.
    image : Volume
        The scan (any grid; trilinear samples at the label's voxel centres).
    margin : float or None
        :data:`INSERTED_MARGIN`; None reads every run as copies.
    junction : float
        :data:`JUNCTION_FRACTION`: an insertion is adopted only where removing
        the copies leaves the organ at least this continuous.

    Returns
    -------
    label : ndarray
        The organ's labels (others 0), with the inserted slices removed.
    info : dict
        ``runs`` (runs of identical slices read), ``moved`` (slices removed in
        all) and ``readings``: per run its array axis (z, y, x order), first
        slice, copies, the reading (``copies``, or the side moved back and the
        slices removed), the variance explained by the copies reading
        (``explained_copies``) and by the reading the image prefers, adopted or
        not (``explained``), and the organ's continuity with the copies removed
        (``continuity``). A run whose box the image does not wholly cover is
        read as copies (``"outside_image": true``).
    """
    organ = np.asarray(tuple(organ_values))
    out = np.where(np.isin(label, organ), label, 0)
    info = {"runs": 0, "moved": 0, "readings": []}
    decided = set()
    for _ in range(MAX_RUNS):
        m = out > 0
        todo = [(ax, i, j) for ax in range(3) for i, j in identical_runs(m, ax)
                if (ax, i, j) not in decided]
        if not todo:
            break
        ax, i, j = todo[0]
        info["runs"] += 1
        row = {"axis": ax, "first_slice": i, "copies": j - i}
        read = _read_run(m, vol, image, ax, i, j, margin, junction)
        if read is None:
            decided.add((ax, i, j))
            info["readings"].append({**row, "reading": "copies", "outside_image": True})
            continue
        (side, h), scores, joint = read
        row.update(reading="copies" if h == 0 else f"inserted, {side} moved back",
                   slices_removed=h, explained_copies=round(scores[("copies", 0)], 4),
                   explained=round(max(scores.values()), 4), continuity=round(joint, 3))
        info["readings"].append(row)
        if h == 0:
            decided.add((ax, i, j))
            continue
        out = np.ascontiguousarray(np.moveaxis(
            _reading(np.moveaxis(out, ax, 0), i, j, side, h), 0, ax))
        info["moved"] += h
    return out, info
