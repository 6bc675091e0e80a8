"""Refining a mask that holds both sides of a paired organ.

A KiTS-style label map, or a network trained on it, puts both kidneys under
one label. A model of a paired organ (``build-model --split-sides``) knows
one side, the other mirrored onto it, so one fit cannot explain both: the
mask is split at the patient's midline into one part per side
(:func:`paired_parts`), each part refined with its own side's shape
(:func:`~shapeprior.segmentation.refine_mask`), and the refined parts joined
on the mask's grid (:func:`refine_paired`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..io import Volume
from ..mesh import Surface, mask_box
from ._assess import Reason, reason_level
from ._fit import STATUS_RANK
from ._refine import check_image_covers, describe_corrections, image_covers, refine_mask
from ._sides import paired_model

#: a component with at least this share of the largest one's voxels is an
#: organ of its own when it lies wholly on the other side of the largest
#: (a kidney that missing slices cut in two lies on one side: its parts overlap
#: from left to right)
PAIRED_MIN_FRACTION = 0.2
#: ... and so is a smaller one of at least this share of the model's smallest
#: training organ (KiTS19 case_00030: a 156 ml kidney beside 1,514 ml of kidney
#: and tumour, a tenth of it)
PAIRED_MIN_ORGAN = 0.5


def smallest_organ_ml(model):
    """Volume (ml) of the model's mean shape at the smallest size its training
    organs had (its pose prior's scale range), or None without a pose prior."""
    if model.pose is None:
        return None
    ml = abs(Surface(np.asarray(model.mean, float), np.asarray(model.faces)).volume()) / 1000
    return ml * float(model.pose.scale_range[0]) ** 3


def organ_min_ml(model):
    """The volume (ml) from which a second piece of a paired organ's mask is an
    organ: :data:`PAIRED_MIN_ORGAN` of :func:`smallest_organ_ml`, or None."""
    ml = smallest_organ_ml(model)
    return None if ml is None else PAIRED_MIN_ORGAN * ml


def paired_parts(vol, organ, min_ml=None):
    """``{'left': mask, 'right': mask}`` when ``organ`` (bool, zyx, on ``vol``'s
    grid) holds two organs side by side, else None.

    Two organs: the two largest connected components (26-connectivity; the
    second with at least :data:`PAIRED_MIN_FRACTION` of the largest's voxels,
    or at least ``min_ml`` ml) whose extents along the patient's left-right
    axis (LPS x of the voxel centres) do not overlap. Every voxel of ``organ``
    (islands and leaks too) goes to the side of the middle of the gap between
    the two that it lies on; +x is the patient's left.
    """
    from scipy import ndimage

    if not organ.any():
        return None
    box = mask_box(organ)
    sub = organ[box]
    lab, n = ndimage.label(sub, structure=np.ones((3, 3, 3)))
    if n < 2:
        return None
    sizes = np.bincount(lab.ravel())[1:]
    first, second = (int(i) + 1 for i in np.argsort(-sizes)[:2])
    big = min_ml is not None and sizes[second - 1] * float(np.prod(vol.spacing)) >= 1000 * min_ml
    if sizes[second - 1] < PAIRED_MIN_FRACTION * sizes[first - 1] and not big:
        return None
    x = _lps_x(vol, box, sub.shape)
    (lo1, hi1), (lo2, hi2) = ((float(x[lab == k].min()), float(x[lab == k].max()))
                              for k in (first, second))
    if hi1 < lo2:
        middle = 0.5 * (hi1 + lo2)
    elif hi2 < lo1:
        middle = 0.5 * (hi2 + lo1)
    else:
        return None
    parts = {}
    for side, here in (("left", x > middle), ("right", x <= middle)):
        m = np.zeros(organ.shape, dtype=bool)
        m[box] = sub & here
        parts[side] = m
    return parts


def part_alone(mask_vol, organ, part):
    """The label map ``mask_vol`` with one side's ``part`` of its ``organ`` alone
    (bool arrays on its grid, :func:`paired_parts`): the other side's organ
    voxels cleared, every other label kept."""
    arr = np.where(organ & ~part, 0, mask_vol.array).astype(mask_vol.array.dtype)
    return Volume(arr, mask_vol.spacing, mask_vol.origin, mask_vol.direction)


def split_at_midline(vol, masks, midline_x):
    """Each of ``masks`` (bool arrays on ``vol``'s grid) cut at the LPS x
    ``midline_x`` (mm): ``{'left': [...], 'right': [...]}``, the left part
    beyond it (+x: the patient's left). The parts are cut from the masks'
    common box, padded by a voxel, so a Dice or a surface distance of two
    parts is the one of the same parts on the whole grid without allocating
    it."""
    union = np.logical_or.reduce([np.asarray(m, bool) for m in masks])
    if union.any():
        box = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, n))
                    for b, n in zip(mask_box(union), union.shape))
    else:
        box = tuple(slice(0, min(2, n)) for n in union.shape)
    sub = tuple(b.stop - b.start for b in box)
    x = _lps_x(vol, box, sub)
    left = x > midline_x
    return {"left": [np.asarray(m, bool)[box] & left for m in masks],
            "right": [np.asarray(m, bool)[box] & ~left for m in masks]}


def _lps_x(vol, box, shape):
    """LPS x (mm) of the voxel centres of ``box`` (zyx slices of ``vol``'s grid),
    float32 of ``shape``."""
    # x = origin_x + sum_k direction[0, k] * spacing[k] * index_k (index in xyz)
    step = vol.direction[0] * vol.spacing                     # per x, y, z index
    start = np.array([b.start for b in box][::-1], dtype=float)
    x0 = float(vol.origin[0] + step @ start)
    k, j, i = (np.arange(n, dtype=np.float32) for n in shape)
    return (np.float32(x0) + np.float32(step[2]) * k[:, None, None]
            + np.float32(step[1]) * j[None, :, None] + np.float32(step[0]) * i[None, None, :])


@dataclass
class PairedRefineResult:
    """Result of :func:`refine_paired`.

    Attributes
    ----------
    label : ndarray of uint8, shape of the mask
        Both sides on the mask's grid: 1 for the organ, each kept label its
        own value.
    corrections : dict
        What refinement changed over the whole mask (:func:`describe_corrections`).
    sides : dict
        ``{'left': RefineResult or None, 'right': ...}``: each side's
        refinement; None for a side kept as given (a side other than the one
        asked for).
    volumes_ml : dict
        Each side's organ in the mask as given (ml).
    """

    label: np.ndarray
    corrections: dict
    sides: dict
    volumes_ml: dict

    @property
    def fits(self):
        """``{side: SegmentResult}`` of the sides refined."""
        return {s: r.fit for s, r in self.sides.items() if r is not None}

    @property
    def status(self):
        """The worse status of the sides refined ('ok' < 'suspect' < 'failed')."""
        return max((f.status for f in self.fits.values()), key=STATUS_RANK.get)

    @property
    def reasons(self):
        """The sides' reasons, each led by its side."""
        return [Reason(f"{s}: {r}", reason_level(r, f.status))
                for s, f in self.fits.items() for r in f.reasons]

    def __repr__(self):
        """One line: the status, each side's, and what was corrected."""
        sides = ", ".join(f"{s}={'kept as given' if r is None else r.fit.status}"
                          for s, r in self.sides.items())
        c = self.corrections
        return (f"PairedRefineResult(status={self.status!r}, {sides}, "
                f"removed_ml={c['removed_ml']:.3g}, added_ml={c['added_ml']:.3g}, "
                f"label_voxels={int(np.count_nonzero(self.label))})")


def refine_paired(mask_vol, model, labels=(1,), params=None, image=None, dictionary=None,
                  keep=()):
    """Refine a mask holding both sides of a paired organ, each with its own side.

    Parameters are those of :func:`~shapeprior.segmentation.refine_mask`.
    ``params.side``: 'none' (default) refines both sides; 'left' or 'right'
    refines that side and keeps the other as given (organ labels written as 1,
    kept labels with their own value). An ``image`` that holds one side's
    organ only (a scan cropped to it) refines the other side from its mask
    alone, which is then at most suspect, saying so; one that holds neither
    is refused (ValueError).

    Returns
    -------
    PairedRefineResult or None
        None when the model is not of a paired organ or the mask holds one
        organ (:func:`paired_parts`): :func:`refine_mask` refines it.
    """
    from ._fit import SegmentParams

    params = params or SegmentParams()
    if params.side == "both":       # a refinement refines every side its mask holds
        params = replace(params, side="none")
    if not paired_model(model):
        return None
    organ_values = np.asarray(tuple(labels) + tuple(keep))
    organ = np.isin(mask_vol.array, organ_values)
    parts = paired_parts(mask_vol, organ, organ_min_ml(model))
    if parts is None:
        return None
    if image is not None:
        check_image_covers(image, mask_vol, organ)     # none of either side: refused
    voxel_ml = float(np.prod(mask_vol.spacing)) / 1000.0
    label = np.zeros(mask_vol.array.shape, dtype=np.uint8)
    sides = {}
    for side, part in parts.items():
        if params.side not in ("none", side):
            given = mask_vol.array
            kept = np.isin(given, np.asarray(tuple(keep))) & part
            label[part] = 1
            label[kept] = given[kept].astype(np.uint8)
            sides[side] = None
            continue
        one = part_alone(mask_vol, organ, part)
        seen = image
        if image is not None and not image_covers(image, mask_vol, part):
            seen = None     # a scan cropped to the other side: this side by its mask alone
        res = refine_mask(one, model, labels, replace(params, side=side), seen, dictionary,
                          keep)
        if seen is not image:
            res.fit.reasons.append(Reason("the image holds none of this side's organ; refined "
                                          "from the mask alone", "suspect"))
            res.fit.evidence["image_used"] = False
            if res.fit.status == "ok":
                res.fit.status = "suspect"
        sides[side] = res
        label = np.where(res.label > 0, res.label, label).astype(np.uint8)
    return PairedRefineResult(label, describe_corrections(organ, label > 0, mask_vol), sides,
                              {s: round(float(p.sum()) * voxel_ml, 3) for s, p in parts.items()})


__all__ = ["paired_parts", "part_alone", "split_at_midline", "refine_paired", "PairedRefineResult", "PAIRED_MIN_FRACTION",
           "organ_min_ml", "smallest_organ_ml"]
