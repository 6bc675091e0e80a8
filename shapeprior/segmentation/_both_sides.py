"""Segmenting both sides of a paired organ in one run.

A model of a paired organ (``build-model --split-sides``) holds one side,
the other mirrored onto it, so one fit finds one organ: ``side='left'`` or
``'right'``, or ``'none'``, which fits both and keeps the better.
``side='both'`` fits each side with its own shape (each searched for on its
own side of the body, or started from its own surface) and keeps both: one
label on the image's grid, and each side's result with its own status.

A side whose fit failed (no such organ in view: a nephrectomy, a scan that
stops above it) is left out of the label, since a failed fit lies on
something else, and the result says so: ``suspect`` when the other side was
found, ``failed`` when neither was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from ._assess import Reason, reason_level
from ._sides import paired_model

#: the two sides' labels may share this fraction of the smaller one's voxels
#: (where two organs touch, each voxelised surface can take a boundary voxel);
#: beyond it both fits lie on one organ, and the result is suspect
SIDES_OVERLAP_SUSPECT = 0.05

#: the sides of :func:`segment_both`, in the order they are fitted and reported
BOTH = ("left", "right")


@dataclass
class PairedSegmentResult:
    """Result of :func:`segment_both` (``segment(..., side='both')``).

    Attributes
    ----------
    label : ndarray of uint8, shape of the image
        1 where a side in ``in_label`` found the organ, on the image's grid.
    sides : dict
        ``{'left': SegmentResult, 'right': SegmentResult}``: each side's fit,
        with its own status, reasons, label, surface and per-vertex results.
    in_label : list of str
        The sides ``label`` (and the written mesh) holds: those whose fit did
        not fail, or both when both failed.
    status : {'ok', 'suspect', 'failed'}
        ``ok`` when both sides are ok, their labels do not overlap and the
        left one lies on the patient's left of the right one (LPS x);
        ``failed`` when both failed; else ``suspect``.
    quality : float
        The lowest quality of the sides in the label.
    reasons : list of str
        Each side's reasons led by its side, then what concerns both.
    evidence : dict
        ``overlap_ml`` (the voxels both sides' labels hold) and ``in_label``.
    time_s : float
    backend : str
    """

    label: np.ndarray
    sides: dict
    in_label: list
    status: str
    quality: float
    reasons: list = field(default_factory=list)
    evidence: dict = field(default_factory=dict)
    time_s: float = 0.0
    backend: str = "numpy"

    @property
    def fits(self):
        """``{side: SegmentResult}`` of the sides in the label, left first."""
        return {s: self.sides[s] for s in self.in_label}

    def __repr__(self):
        """One line: the status, each side's status, and the label's size."""
        sides = ", ".join(f"{s}={r.status}" for s, r in self.sides.items())
        return (f"PairedSegmentResult(status={self.status!r}, {sides}, "
                f"in_label={self.in_label!r}, label_voxels={int(np.count_nonzero(self.label))}, "
                f"time_s={self.time_s:.2f})")


def check_paired(model, name="side='both'"):
    """ValueError naming ``name`` unless ``model`` is of a paired organ."""
    if not paired_model(model):
        raise ValueError(f"{name} needs a model of a paired organ with one side mirrored onto "
                         "the other (build-model --split-sides); this model is not one")


def _side_inits(init):
    """``init`` of :func:`segment_both` as ``{side: surface or None}``."""
    if init is None:
        return dict.fromkeys(BOTH)
    if not isinstance(init, dict) or not set(init) <= set(BOTH):
        raise ValueError("init with side='both' is a dict {'left': surface, 'right': surface} "
                         f"(either may be missing or None), got {type(init).__name__}"
                         + (f" with keys {sorted(map(str, init))}" if isinstance(init, dict)
                            else ""))
    return {s: init.get(s) for s in BOTH}


def combine_sides(fits, spacing):
    """The :class:`PairedSegmentResult` of two sides' fits (``{side:
    SegmentResult}``, left then right) on one grid of ``spacing`` (mm), the
    time and backend aside."""
    failed = [s for s, f in fits.items() if f.status == "failed"]
    in_label = [s for s in fits if s not in failed] or list(fits)
    label = np.zeros(next(iter(fits.values())).label.shape, dtype=np.uint8)
    for s in in_label:
        label[fits[s].label > 0] = 1
    voxel_ml = float(np.prod(spacing)) / 1000.0
    # each side's reasons at their own level (a failed side of a suspect result);
    # the rest make the result suspect
    reasons = [Reason(f"{s}: {r}", reason_level(r, f.status))
               for s, f in fits.items() for r in f.reasons]
    reasons += [Reason(f"{s}: left out of the label (its fit failed: no such organ found)",
                       "suspect") for s in failed if s not in in_label]
    evidence = {"in_label": in_label}
    overlap = False
    sizes = [int(np.count_nonzero(fits[s].label)) for s in in_label]
    if len(in_label) == 2 and min(sizes) > 0:
        both = int(np.count_nonzero((fits["left"].label > 0) & (fits["right"].label > 0)))
        evidence["overlap_ml"] = round(both * voxel_ml, 3)
        overlap = both > SIDES_OVERLAP_SUSPECT * min(sizes)
        if overlap:
            reasons.append(Reason(f"the left and right fits overlap ({both * voxel_ml:.1f} "
                                  f"ml, {100 * both / min(sizes):.0f} % of the smaller): both "
                                  "may lie on one organ", "suspect"))
    swapped = False
    if len(in_label) == 2:
        # LPS: +x is the patient's left, so the left organ lies at the larger x
        xl, xr = (float(np.mean(fits[s].verts[:, 0])) for s in ("left", "right"))
        swapped = xl <= xr
        if swapped:
            reasons.append(Reason(f"the left fit lies on the patient's right of the right fit "
                                  f"(LPS x {xl:.1f} <= {xr:.1f} mm): the sides may be swapped",
                                  "suspect"))
    if len(failed) == len(fits):
        status = "failed"
    elif failed or overlap or swapped or any(fits[s].status != "ok" for s in in_label):
        status = "suspect"
    else:
        status = "ok"
    quality = min(float(fits[s].quality) for s in in_label)
    return PairedSegmentResult(label, dict(fits), in_label, status, quality, reasons, evidence)


def segment_both(vol, model, params, dictionary=None, clock=None, init=None, check_units=True):
    """Fit both sides of a paired organ (``params.side`` 'both').

    Parameters are those of :func:`~shapeprior.segmentation.segment_volume`;
    ``init``, optional, is ``{'left': surface, 'right': surface}`` (either
    may be missing: that side is searched for). A model of no paired organ
    is refused (ValueError).

    Returns
    -------
    PairedSegmentResult
    """
    from ._fit import segment_volume

    check_paired(model)
    if params.seed_mm is not None:
        raise ValueError("seed_mm places one organ; side='both' fits two: leave it out (each "
                         "side is searched for on its own side of the body) or give init")
    inits = _side_inits(init)
    t0 = time.perf_counter()
    fits = {s: segment_volume(vol, model, replace(params, side=s), dictionary, clock,
                              inits[s], check_units) for s in BOTH}
    res = combine_sides(fits, vol.spacing)
    res.time_s = time.perf_counter() - t0
    res.backend = fits["left"].backend
    return res


__all__ = ["PairedSegmentResult", "segment_both", "combine_sides", "check_paired", "SIDES_OVERLAP_SUSPECT",
           "BOTH"]
