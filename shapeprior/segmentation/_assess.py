"""Did the fit work? Status (ok / suspect / failed) from evidence.

Evidence, each with the threshold that makes a result suspect or failed:

* appearance: how well the final surface matches the image
  (:class:`~shapeprior.segmentation._place.AppearanceScore`, in [0, 1]), over
  the vertices whose samples along the normal lie inside the image (0 when
  none does);
* what the prior rejected: the largest fraction of vertices the SSC gross
  error overrode in any iteration, and in the last one;
* plausibility: the organ's scale against the training range, and the
  Mahalanobis distance of its shape in the model's PCA space against the
  training shapes' own distances;
* the voxels: the share of the fitted surface's voxels that the model's voxel
  classifier (learned from the training images) kept;
* the field of view: vertices outside the image (an organ cut by the FOV);
* the background: vertices whose inside is the air around the body (for a model
  whose training organs never lie there);
* an empty label.

The thresholds were chosen on validation data: the profile score's on the
hippocampus MR validation split with fits that work and fits that fail
(``bench/bench_status.py``), the region score's on the TotalSegmentator
example CT with and without the kidneys (``bench/bench_totalseg_ct.py``, its
``variants`` rows).
"""

from __future__ import annotations

import numpy as np

from ..align import procrustes
from ..mesh import Surface

class Reason(str):
    """A reason a result is not ``ok``: its text (a plain string in reports and
    comparisons) and ``level``, the status it gives on its own (``'failed'`` or
    ``'suspect'``). A failed result may hold suspect-level reasons beside the
    ones that failed it, and a result of both sides of a paired organ a failed
    side's reasons while it is suspect: the level says which is which."""

    def __new__(cls, text, level):
        if level not in ("failed", "suspect"):
            raise ValueError(f"level={level!r} is not 'failed' or 'suspect'")
        self = super().__new__(cls, text)
        self.level = level
        return self

    def __reduce__(self):       # pickled (process pools) with its level
        return Reason, (str(self), self.level)


def reason_level(reason, status):
    """The level of ``reason``: its own (:class:`Reason`), or for a plain string
    the status of the result that holds it."""
    return getattr(reason, "level", status)


def reason_levels(reasons, status):
    """The level of each of ``reasons`` (:func:`reason_level`): the report's
    ``reason_levels``, beside its ``reasons``."""
    return [reason_level(r, status) for r in reasons]


def reworded(reason, text):
    """``text`` in place of ``reason``, keeping its level (a plain string stays one)."""
    return Reason(text, reason.level) if isinstance(reason, Reason) else text


#: scale slack around the training range (the fit clamps the scale to it)
SCALE_SLACK = 1.1
#: appearance score (over the vertices whose samples lie in the image) below which a
#: result is failed / suspect, per score kind. Region (the CT intensity model): chosen on
#: the TotalSegmentator example CT as other protocols give it
#: (``bench/bench_totalseg_ct.py``, ``variants``): the kidneys found, on crops,
#: resamplings (1.5 mm, 0.9 x 0.9 x 5 mm) and with 30 HU noise, scored 0.67-0.89; fits
#: on crops without a kidney 0.30-0.43. It was 0.25 / 0.5 over all vertices, where half
#: of those kidney-free fits were only suspect and a kidney cut by the field of view
#: scored 0.39 (0.61 over the part the image shows)
#: Profile (learned normal profiles, MR): chosen on the hippocampus validation split
#: (``bench/bench_status.py``: 38 cases, each fitted from the placement search, from
#: seeds 0-15 mm off and on an image of noise): good fits (Dice >= 0.75) scored
#: 0.859-0.999; fits that failed (Dice < 0.5, or no organ) 0-1.0, median 0.77. It was
#: 0.60 / 0.80, where one failed fit (Dice 0.28, 0.838) was ok and 35 of 89 failed
QUALITY_FAILED = {"profile": 0.75, "region": 0.50}
QUALITY_SUSPECT = {"profile": 0.85, "region": 0.60}
#: overridden fraction (max over the fit, last projection) that makes a result suspect
OVERRIDDEN_SUSPECT = (0.30, 0.15)
#: fraction of vertices outside the image: suspect (cut by the FOV) / failed
OUTSIDE_SUSPECT, OUTSIDE_FAILED = 0.01, 0.5
#: the reasons those give (refine words them for a mask inside its grid)
CUT_BY_FOV = "the organ is cut by the field of view"
OUTSIDE_FOV = "of the surface lies outside the field of view"
#: share of the surface's vertices whose inside lies in the image's background (the air
#: around the body; only for a model whose training surfaces stayed clear of it) above
#: which a result is failed
BACKGROUND_FAILED = 0.5
#: share of the voxelised fitted surface's voxels that the model's voxel classifier kept
#: in the label, below which a result is failed. Chosen on the hippocampus validation
#: split (``bench/bench_status.py``, ``voxels_kept_sweep``): good fits (Dice >= 0.75)
#: kept 0.713-1.0, fits that failed (Dice < 0.5 or no organ) median 0.61; the largest
#: multiple of 0.05 at least 0.05 below the lowest good fit. The hippocampus model on a
#: 3 mm abdominal MR kept 0.58 (``bench/bench_wrong_scan.py``)
VOXELS_KEPT_FAILED = 0.65
#: Mahalanobis distance relative to the largest training distance: suspect / failed
SHAPE_SUSPECT, SHAPE_FAILED = 1.5, 3.0

#: LPS x flip that maps a right-side organ onto a model built from left sides
MIRROR = np.array([-1.0, 1.0, 1.0])


def border_distance(vol, points):
    """Distance (mm) of each point (LPS, shape (P, 3)) inside the image from its
    outer voxel boundary (half a voxel past the first and last voxel centres);
    negative outside."""
    idx = vol.physical_to_index(points)
    n = np.array(vol.array.shape[::-1])
    d = np.minimum(idx + 0.5, n - 0.5 - idx) * np.asarray(vol.spacing, dtype=float)
    return d.min(axis=-1)


def outside_fov(vol, points):
    """Boolean per point (LPS mm, shape (P, 3)): beyond the image's outer voxel
    boundaries (see :func:`border_distance`)."""
    return border_distance(vol, points) < 0


def organ_scale(mean_centred, verts, mirror=False):
    """Similarity scale of a surface against the centred model mean, measured
    on the unmirrored shape (a rotation cannot match a mirror image)."""
    v = verts - verts.mean(0)
    return procrustes(mean_centred, v * MIRROR if mirror else v).scale


def mode_coefficients(model, verts, mirror=False):
    """A surface's PCA mode coefficients in standard deviations, shape (r,), after
    similarity alignment onto the model mean, and that alignment."""
    v = verts * MIRROR if mirror else verts
    T = procrustes(v, model.mean)
    sd = np.sqrt(np.maximum(model.pca_variances, 1e-12))
    return model.pca_components @ (T(v) - model.mean).ravel() / sd, T


def mahalanobis(model, verts, mirror=False):
    """RMS Mahalanobis distance (per PCA component) of a surface's shape from
    the model mean, after similarity alignment; 1 is typical of training."""
    b, _ = mode_coefficients(model, verts, mirror)
    return float(np.sqrt(np.mean(b ** 2)))


def training_distances(model):
    """:func:`mahalanobis` distance of every training shape, shape (S,), cached
    on the model for as long as its shapes array is the same object."""
    cached = getattr(model, "_training_distances", None)
    if cached is None or cached[0] is not model.shapes:
        cached = (model.shapes, np.array([mahalanobis(model, s) for s in model.shapes]))
        model._training_distances = cached
    return cached[1]


def training_distance(model):
    """Largest :func:`mahalanobis` distance among the training shapes."""
    return float(training_distances(model).max())


def mesh_box(vol, verts, margin=1):
    """Index box (z, y, x slices) of ``vol`` that holds every voxel whose centre
    lies inside the surface with vertices ``verts`` (LPS mm), ``margin`` voxels wider."""
    ijk = vol.physical_to_index(verts)[:, ::-1]
    lo = np.maximum(np.floor(ijk.min(0)).astype(int) - margin, 0)
    hi = np.minimum(np.ceil(ijk.max(0)).astype(int) + margin + 1, vol.array.shape)
    return tuple(slice(int(a), int(max(a, b))) for a, b in zip(lo, hi))


def kept_share(surface_label, label, box=None):
    """Share of ``surface_label``'s voxels still in ``label`` (within ``box``, the
    slices that hold all of ``surface_label``); None when it has none."""
    box = box if box is not None else tuple(slice(None) for _ in range(label.ndim))
    before = np.asarray(surface_label[box], dtype=bool)
    n = int(np.count_nonzero(before))
    if n == 0:
        return None
    return float(np.count_nonzero(before & np.asarray(label[box], dtype=bool))) / n


def touches_border(label):
    """Whether the array ``label`` holds a nonzero voxel on any face of its grid."""
    return any(bool(np.take(label, i, axis=ax).any()) for ax in range(label.ndim)
               for i in (0, -1))


def fov_evidence(vol, verts, label):
    """Fraction of vertices outside the image and whether the label touches its border."""
    outside = float(np.mean(outside_fov(vol, verts)))
    return outside, touches_border(label)


def assess(res, vol, model, scorer, mirror=False, scale_clamped=0):
    """``(status, quality, reasons, evidence)`` of a fitted :class:`SegmentResult`."""
    failed, suspect = [], []
    # the evidence of the part the image shows: a vertex whose samples along its
    # normal leave the image says nothing (an organ cut by the field of view is
    # judged by that field below, not by a diluted appearance)
    seen = np.flatnonzero(border_distance(vol, res.verts) >= scorer.reach(1.5))
    quality = scorer(res.verts, res.faces, search_mm=1.5, vertices=seen) if len(seen) else 0.0
    kind = scorer.kind
    ev = {"appearance": round(quality, 4), "appearance_kind": kind,
          "appearance_vertices_seen": round(len(seen) / len(res.verts), 4),
          "overridden_fraction_max": round(res.overridden_fraction_max, 4),
          "overridden_fraction_final": round(res.overridden_fraction, 4)}
    if scorer.uses_background:
        inbg = scorer.in_background(res.verts, Surface(res.verts, res.faces).vertex_normals())
        ev["surface_inside_background"] = round(float(np.mean(inbg)), 4)
        if np.mean(inbg) > BACKGROUND_FAILED:
            failed.append(f"{100 * np.mean(inbg):.0f} % of the surface encloses the dark "
                          "background around the body (air): organ not found")
    if quality < QUALITY_FAILED[kind]:
        failed.append(f"the surface does not match the image (appearance {quality:.2f} < "
                      f"{QUALITY_FAILED[kind]}): organ not found")
    elif quality < QUALITY_SUSPECT[kind]:
        suspect.append(f"weak boundary evidence (appearance {quality:.2f} < "
                       f"{QUALITY_SUSPECT[kind]})")
    if res.overridden_fraction_max > OVERRIDDEN_SUSPECT[0]:
        suspect.append(f"the prior overrode {100 * res.overridden_fraction_max:.0f} % of the "
                       "vertices during the fit (leak or wrong edges)")
    elif res.overridden_fraction > OVERRIDDEN_SUSPECT[1]:
        suspect.append(f"the prior overrode {100 * res.overridden_fraction:.0f} % of the "
                       "vertices in the last projection")
    scale = organ_scale(model.mean - model.mean.mean(0), res.verts, mirror)
    ev["scale"] = round(scale, 4)
    if model.pose is not None and model.pose.scale_range is not None:
        lo, hi = model.pose.scale_range
        ev["scale_training_range"] = [round(lo, 4), round(hi, 4)]
        if scale < lo / SCALE_SLACK ** 2 or scale > hi * SCALE_SLACK ** 2:
            failed.append(f"organ size (scale {scale:.2f}) far outside the training range "
                          f"{lo:.2f}-{hi:.2f}")
        elif scale_clamped:
            suspect.append(f"organ size held at the limit of the training range "
                           f"({lo:.2f}-{hi:.2f}) in {scale_clamped} iterations")
    d = mahalanobis(model, res.verts, mirror)
    dmax = training_distance(model)
    ev["shape_mahalanobis"] = round(d, 3)
    ev["shape_mahalanobis_training_max"] = round(dmax, 3)
    if d > SHAPE_FAILED * dmax:
        failed.append(f"implausible shape (Mahalanobis {d:.2f}, training max {dmax:.2f})")
    elif d > SHAPE_SUSPECT * dmax:
        suspect.append(f"unusual shape (Mahalanobis {d:.2f}, training max {dmax:.2f})")
    outside, touches = fov_evidence(vol, res.verts, res.label)
    ev["vertices_outside_fov"] = round(outside, 4)
    ev["label_touches_fov_border"] = touches
    if outside > OUTSIDE_FAILED:
        failed.append(f"{100 * outside:.0f} % {OUTSIDE_FOV}")
    elif outside > OUTSIDE_SUSPECT or touches:
        suspect.append(CUT_BY_FOV)
    kept = getattr(res, "voxels_kept", None)
    if kept is not None:
        ev["voxels_kept"] = round(kept, 4)
        if kept < VOXELS_KEPT_FAILED:
            failed.append(f"the voxel classifier kept {100 * kept:.0f} % of the fitted "
                          f"surface's voxels (< {100 * VOXELS_KEPT_FAILED:.0f} %): the inside "
                          "does not look like the organ")
    if not res.label.any():
        failed.append("empty segmentation")
    status = "failed" if failed else "suspect" if suspect else "ok"
    reasons = [Reason(r, "failed") for r in failed] + [Reason(r, "suspect") for r in suspect]
    return status, float(quality), reasons, ev
