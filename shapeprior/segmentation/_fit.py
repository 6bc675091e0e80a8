"""Model-based segmentation: initialise -> search along normals -> SSC
projection -> repeat, coarse to fine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from .._profile import NULL_CLOCK
from ..backend import resolve_backend
from ..appearance import (HU_BELOW, HU_CT_SHARE, HU_MIN_SHARE, SMOOTH_VOX, VOXEL_PASSES,
                          LevelImage, hounsfield_share, intensity_scale, search_edges,
                          search_profiles)
from ..mesh import Surface, mean_neighbour_operator, voxelize
from ..ssc import sparse_shape_composition
from ._assess import (MIRROR, SCALE_SLACK, Reason, assess, kept_share, mesh_box,
                      mode_coefficients, organ_scale, outside_fov)
from ._place import AppearanceScore, Hypothesis, find_placements, local_placements
from ._sides import paired_model, starting_side

#: (search range mm, image smoothing sigma mm) per resolution level
DEFAULT_SCHEDULE = ((6.0, 1.0), (3.0, 0.5), (1.5, 0.0))
#: placements fitted are those scoring at least this fraction of the best one
HYPOTHESIS_MARGIN = 0.6
#: first-level iterations each placement hypothesis gets before the best is kept
HYPOTHESIS_ITER = 4
#: appearance margin by which another placement must beat the training position
#: (chosen on the hippocampus validation split: 0.02 -> Dice mean 0.874, min 0.734;
#: 0.05 -> 0.878, min 0.778; the training position alone: 0.878, min 0.780)
PRIOR_MARGIN = 0.05
#: how far from a seed or a starting surface positions are tried, as a fraction
#: of the model's extent (the diagonal of its mean shape's box). Chosen on the
#: hippocampus validation split, each case seeded 0, 5 and 10 mm off its centre
#: (worst Dice over the offsets): the seed alone 0.000 (10 mm), 0.2 0.775, 0.4
#: 0.772, 0.6 0.772 (bench/bench_seed_offset.py)
NEAR_START = 0.2
#: appearance margin by which a position near a seed or a starting surface must
#: beat the start itself. Chosen on the same split at near_start 0.2 (worst Dice
#: over the offsets): 0 and 0.01 0.775, 0.02 and 0.03 0.779 (0.02 with the higher
#: mean at 5 mm), 0.05 0.653 (the 10 mm worst case)
START_MARGIN = 0.02
#: mean vertex motion (mm) that ends the finest resolution level where ``tol_mm``
#: is None; a coarser level, searching further, ends at this times (its search range
#: / the finest one's) ** LEVEL_TOL_POWER: 0.1, 0.071 and 0.05 mm for the default
#: schedule (6, 3, 1.5 mm). Chosen on the hippocampus validation split, unseeded and
#: seeded 0, 5 and 10 mm off (bench/bench_hippocampus_validation.py --study tol): the
#: largest power whose Dice mean stays within 0.001 and whose worst case within 0.005
#: of the constant 0.05 mm (before) on every row. 0.5 cuts the SSC calls of an
#: unseeded case from 34.7 to 27.1; 0.75 and 1, and a constant 0.1 mm, lose 0.01-0.03
#: on a worst seeded case. :func:`refine_mask` keeps a constant 0.05
#: (``MASK_FIT_TOL_MM``), the value its settings were chosen with
FIT_TOL_MM = 0.05
LEVEL_TOL_POWER = 0.5


@dataclass
class SegmentParams:
    """Settings of :func:`segment_volume` (checked on construction; an error
    names the parameter, the bad value and what is allowed).

    Parameters
    ----------
    schedule : tuple of (float, float)
        Coarse to fine levels: (search range along the normals, image
        smoothing sigma), both mm.
    max_iter : int
        Search/projection iterations per level, >= 1.
    tol_mm : float or None
        Mean vertex motion (mm) that ends a level. None: :func:`level_tol`
        (0.05 mm at the finest level, more on coarser ones) for a
        segmentation; :func:`refine_mask`'s fits use 0.05 at every level.
    method : {'l1', 'l0'}
        SSC sparsity: L1 (convex) or L0 (trimmed, greedy).
    seed_mm : tuple of 3 float or None
        Organ centre in ``seed_space`` coordinates; None searches the field of
        view (``placement``).
    seed_space : {'lps', 'ras', 'voxel'}
        ``seed_mm`` in LPS mm (ITK, DICOM), RAS mm (3D Slicer, nibabel) or
        voxel indices (i, j, k).
    side : {'none', 'left', 'right', 'both'}
        Side of a paired organ whose model holds left sides (right ones mirrored).
        'none': both sides fitted, the better kept; 'both': both kept
        (:func:`~shapeprior.segmentation.segment_both`; refinement reads it as
        'none', which refines every side its mask holds).
    inside_brighter : bool
        Edge search without learned appearance: the organ is brighter than its
        surroundings.
    window : tuple of 2 float or None
        Edge search without learned appearance: intensity window inside the
        organ, in normalised units (CT: HU / 1000).
    normalisation : {None, 'percentile', 'ct'}
        Intensity scale; None takes the model's.
    outlier_base_mm : float
        Gross-error threshold = this + search range / 2 (mm).
    align_rounds : int
        Alternations of the similarity alignment and SSC per iteration.
    align_tol : float
        The alternations of an iteration stop once the aligned shape moves
        less than this fraction of its size (``sparse_shape_composition``'s
        ``align_tol``).
    warm_align : bool
        Start each iteration's alignment rounds from the previous iteration's
        beta instead of a fresh start (``sparse_shape_composition``'s
        ``start``: for L1 the Procrustes fit to the model mean). With
        ``align_rounds=2`` (the default) this cut the SSC stage by 38 % on the
        hippocampus validation split at the same Dice (``bench/README.md``).
    refine_iter, refine_search_mm, refine_smooth : int, float, int
        Final local refinement outside the shape space: steps, search range
        (mm) and Laplacian smoothing passes of the displacement.
    placement : {'search', 'prior'}
        Without a seed: search the field of view scored by appearance, or start
        at the training position relative to the FOV centre.
    n_hypotheses : int
        Placements fitted at the first level before the best one continues.
    backend : {None, 'auto', 'numpy', 'numba', 'cupy'}
        Where image smoothing and sampling run (None: ``$SHAPEPRIOR_BACKEND``).
    prior : {'auto', 'shapes', 'dictionary'}
        What SSC composes from: the training shapes, the model's learned
        dictionary, or 'auto' (the dictionary when the model has one and at
        least ``DICTIONARY_MIN_SHAPES`` shapes; see ``ShapeModel.resolve_prior``).
    refit : float in (0, 1] or None
        Each SSC projection fits its inliers again with this fraction of
        lambda1 (``sparse_shape_composition``'s ``refit``); None: off.
    mode_clamp : float or None
        After each SSC projection, clamp every PCA mode coefficient to
        +- this many standard deviations (ASM's plausibility bound); only the
        clamped part of the shape moves. None: off.
    surface_offset_mm : float or None
        Move the final surface this far along its outward normals (mm) before
        it is voxelised and written. None: the model's own calibration (the
        offset at which its training surfaces best cover their labels,
        ``model.metadata['surface_offset']``) when the model has learned
        appearance; 0 for an edge search or a model without a calibration.
    voxel_refine : bool
        Decide the voxels next to the final surface again with the model's
        voxel classifier (:class:`~shapeprior.appearance.VoxelClassifier`), when
        it has one. On the hippocampus validation split (38 cases) Dice went
        from 0.882 (worst 0.782) to 0.899 (worst 0.836).
    voxel_smooth : float
        SD (voxels along the finest axis) of the Gaussian that smooths the
        classifier's log-odds before they decide (0: each voxel alone). 0.5 took
        the same split to 0.902 (worst 0.838); the held-out test split to 0.885
        (worst 0.804, was 0.881 / 0.799).
    voxel_passes : int >= 1
        Passes of that decision (:data:`~shapeprior.appearance.VOXEL_PASSES`, 2),
        each from the label the pass before left, changing only voxels of the
        first pass's band (never further from the fitted surface). On the
        validation split 1 → 2 passes took the worst case from 0.838 to 0.846 at
        the same mean (0.902).
    near_start : float in [0, 1]
        With a seed or a starting surface (``init``): positions within this
        fraction of the model's extent (the diagonal of its mean shape's box) of
        it are scored against the image as the placement search scores them, and
        the best few (``n_hypotheses`` with the start) fitted for a few
        iterations, the start among them; the one that then matches the image
        best is kept, the start unless another beats it by
        :data:`START_MARGIN`. 0: the start alone. Chosen on the hippocampus
        validation split (:data:`NEAR_START`).
    """

    schedule: tuple = DEFAULT_SCHEDULE
    max_iter: int = 12            # per level
    tol_mm: float | None = None   # mean vertex motion that ends a level (None: level_tol)
    method: str = "l1"
    seed_mm: tuple | None = None  # organ centre, in seed_space coordinates
    seed_space: str = "lps"       # 'lps' mm, 'ras' mm (Slicer, nibabel) or 'voxel' (i, j, k)
    side: str = "none"            # 'left'/'right' for paired organs (mirrored model)
    inside_brighter: bool = True  # edge fallback polarity
    window: tuple | None = None   # edge fallback: intensity window inside the organ
    normalisation: str | None = None
    outlier_base_mm: float = 1.0  # gross-error threshold = this + search range / 2
    align_rounds: int = 2         # beta/SSC alternations per iteration (the loop iterates too)
    align_tol: float = 1e-6       # ... stopped once the aligned shape moves less (relative)
    warm_align: bool = True       # ... starting from the previous iteration's alignment
                                  # (2 warm rounds: chosen on the validation split, bench/README)
    refine_iter: int = 3          # final local refinement steps outside the shape space (chosen on a validation split)
    refine_search_mm: float = 1.5
    refine_smooth: int = 5        # Laplacian passes on the refinement displacement
    placement: str = "search"     # without a seed: 'search' the FOV, or 'prior' (training offset)
    n_hypotheses: int = 5         # placements fitted at the first level (best one continues)
    near_start: float = NEAR_START  # seed/start: positions tried this fraction of the extent away
    backend: str | None = None    # image smoothing + sampling: auto/numpy/numba/cupy ($SHAPEPRIOR_BACKEND)
    prior: str = "auto"           # SSC composes from 'shapes', the learned 'dictionary', or 'auto'
    refit: float | None = None    # SSC refit of the inliers with this fraction of lambda1 (None: off)
    mode_clamp: float | None = None   # PCA mode coefficients clamped to +- this many SDs (None: off)
    surface_offset_mm: float | None = None   # final surface along its normals (None: the model's)
    voxel_refine: bool = True     # boundary voxels decided by the model's voxel classifier
    voxel_smooth: float = SMOOTH_VOX  # ... from log-odds smoothed over this many voxels (SD)
    voxel_passes: int = VOXEL_PASSES  # ... in this many passes (later ones in the first band)

    def __post_init__(self):
        from .._validation import (MAX_ABS_COORD_MM, check_bool, check_choice, check_number,
                                   check_vector)
        from ..backend import BACKENDS

        try:
            sched = tuple((check_number("schedule search range", float(a), 0, low_open=True),
                           check_number("schedule sigma", float(b), 0)) for a, b in self.schedule)
        except (TypeError, ValueError):
            raise ValueError(f"schedule={self.schedule!r} is invalid: expected pairs "
                             "(search range mm > 0, smoothing sigma mm >= 0)") from None
        if not sched:
            raise ValueError("schedule=() is invalid: expected at least one level")
        self.schedule = sched
        self.max_iter = check_number("max_iter", self.max_iter, 1, integer=True)
        if self.tol_mm is not None:
            self.tol_mm = check_number("tol_mm", self.tol_mm, 0, low_open=True)
        check_choice("method", self.method, ("l1", "l0"))
        check_choice("prior", self.prior, ("auto", "shapes", "dictionary"))
        if self.refit is not None:
            self.refit = check_number("refit", self.refit, 0, 1, low_open=True)
        if self.seed_mm is not None:
            # a position in mm (or voxels) beyond 1000 km is a typo, and beyond
            # ~1e300 its products overflow to inf
            self.seed_mm = check_vector("seed_mm", self.seed_mm, 3, bound=MAX_ABS_COORD_MM)
        check_choice("seed_space", self.seed_space, ("lps", "ras", "voxel"))
        check_choice("side", self.side, ("none", "left", "right", "both"))
        self.inside_brighter = check_bool("inside_brighter", self.inside_brighter)
        if self.window is not None:
            self.window = check_vector("window", self.window, 2, increasing=True)
        check_choice("normalisation", self.normalisation, (None, "percentile", "ct"))
        self.outlier_base_mm = check_number("outlier_base_mm", self.outlier_base_mm, 0,
                                            low_open=True)
        self.align_rounds = check_number("align_rounds", self.align_rounds, 1, integer=True)
        self.align_tol = check_number("align_tol", self.align_tol, 0, low_open=True)
        self.warm_align = check_bool("warm_align", self.warm_align)
        if self.mode_clamp is not None:
            self.mode_clamp = check_number("mode_clamp", self.mode_clamp, 0, low_open=True)
        if self.surface_offset_mm is not None:
            self.surface_offset_mm = check_number("surface_offset_mm", self.surface_offset_mm,
                                                  -5.0, 5.0)
        self.refine_iter = check_number("refine_iter", self.refine_iter, 0, integer=True)
        self.refine_search_mm = check_number("refine_search_mm", self.refine_search_mm, 0,
                                             low_open=True)
        self.refine_smooth = check_number("refine_smooth", self.refine_smooth, 0, integer=True)
        self.voxel_refine = check_bool("voxel_refine", self.voxel_refine)
        self.voxel_smooth = check_number("voxel_smooth", self.voxel_smooth, 0, 3)
        self.voxel_passes = check_number("voxel_passes", self.voxel_passes, 1, 10, integer=True)
        check_choice("placement", self.placement, ("search", "prior"))
        self.n_hypotheses = check_number("n_hypotheses", self.n_hypotheses, 1, integer=True)
        self.near_start = check_number("near_start", self.near_start, 0, 1)
        if self.backend is not None:
            check_choice("backend", str(self.backend).lower(), BACKENDS)


@dataclass
class SegmentResult:
    """Result of :func:`segment_volume`.

    Attributes
    ----------
    verts : ndarray, shape (N, 3)
        Final surface, physical mm (LPS).
    faces : ndarray, shape (F, 3)
    label : ndarray of uint8, shape of the input array
        Mask on the input grid.
    n_iter : int
    converged : bool
    overridden_fraction : float
        Fraction of visible vertices the prior overrode in the last SSC projection.
    time_s : float
    history : list of dict
        Per iteration: search range, mean move, overridden fraction, confidence.
    backend : str
    overridden_fraction_max : float
        The largest overridden fraction over all SSC projections: what the prior
        rejected while the fit was under way (a leak is rejected early and may be
        gone by the last iteration).
    overridden : ndarray of bool, shape (N,)
        Vertices the prior overrode in any projection (the gross-error term e).
    error_mm : ndarray, shape (N,)
        Gross error |e| per vertex in the last projection, mm.
    confidence : ndarray, shape (N,)
        Search confidence per vertex in the last search, in [0.05, 1].
    status : {'ok', 'suspect', 'failed'}
        What the evidence says of the result (see :func:`assess`).
    quality : float
        Appearance fit of the final surface in [0, 1] (higher is better).
    reasons : list of str
        Why the status is not ``ok`` (empty when it is).
    evidence : dict
        The measurements behind the status.
    placement : dict or None
        The placement hypotheses tried, their scores, and the one kept.
    mirrored : bool
        The surface is a right-side organ fitted with a model of left sides
        (multiply x by ``MIRROR`` to compare it with the model).
    surface_offset_mm : float
        How far the final surface was moved along its normals (mm).
    voxels_changed : int or None
        Voxels next to the surface that the model's voxel classifier decided
        otherwise than the voxelised surface (None: not run). ``label`` holds
        its decision; ``verts`` stay the surface.
    voxels_kept : float or None
        Share of the voxelised surface's voxels that the voxel classifier kept
        in the label (None: not run). A fit whose inside does not look like the
        organ's loses most of them.
    """

    verts: np.ndarray
    faces: np.ndarray
    label: np.ndarray
    n_iter: int
    converged: bool
    overridden_fraction: float
    time_s: float
    history: list = field(default_factory=list)
    backend: str = "numpy"
    overridden_fraction_max: float = 0.0
    overridden: np.ndarray | None = None
    error_mm: np.ndarray | None = None
    confidence: np.ndarray | None = None
    status: str = "ok"
    quality: float = float("nan")
    reasons: list = field(default_factory=list)
    evidence: dict = field(default_factory=dict)
    placement: dict | None = None
    mirrored: bool = False
    surface_offset_mm: float = 0.0
    voxels_changed: int | None = None
    voxels_kept: float | None = None

    def __repr__(self):
        """One line: the status and its reasons, the fit's size and numbers,
        never the arrays."""
        vox = int(np.count_nonzero(self.label)) if self.label is not None else 0
        return (f"SegmentResult(status={self.status!r}, reasons={self.reasons!r}, "
                f"quality={self.quality:.3f}, vertices={len(self.verts)}, "
                f"label_voxels={vox}, iterations={self.n_iter}, converged={self.converged}, "
                f"overridden_fraction={self.overridden_fraction:.3f}, "
                f"time_s={self.time_s:.2f})")


def surface_offset(model, params) -> float:
    """The offset (mm, outward) applied to the final surface: ``params``'s, else
    the model's calibration (:mod:`shapeprior.model._calibrate`) when the fit
    followed its learned appearance, else 0.

    Learned profiles place the surface where the training surfaces lay relative
    to the image, so the fit inherits their bias, which the calibration measures.
    An edge search (a model without appearance, or a mask refined as an image)
    places it on the strongest edge instead, where that bias does not apply."""
    if params.surface_offset_mm is not None:
        return float(params.surface_offset_mm)
    cal = model.metadata.get("surface_offset")
    if model.profile is None or not isinstance(cal, dict):
        return 0.0
    return float(cal.get("mm", 0.0))


#: order of the statuses, best first (which of two fits to keep)
STATUS_RANK = {"ok": 0, "suspect": 1, "failed": 2}


def initial_shape(model, vol, params: SegmentParams):
    """Model mean in the image: mean pose from training (rotation, scale) and
    position from the seed, else from the training offset to the FOV centre."""
    pose = model.pose
    mean = model.mean - model.mean.mean(0)
    if pose is not None:
        R = np.asarray(pose.rotation)
        s = float(pose.scale)
        off = np.asarray(pose.offset_from_fov_centre_mm)
    else:
        R, s, off = np.eye(3), 1.0, np.zeros(3)
    shape = s * mean @ R.T
    mirror = params.side == "right" and paired_model(model)
    if mirror:
        shape = shape * MIRROR
        off = off * MIRROR
    centre = seed_lps(vol, params) if params.seed_mm is not None else vol.centre() + off
    return shape + centre, mirror


class SeedOutsideError(ValueError):
    """The seed lies outside the image."""


def refine_step(v, tgt, conf, L, n_smooth):
    """One local refinement step: confidence-weighted boundary displacements,
    smoothed over the mesh (``L``: mean-neighbour operator) ``n_smooth`` times.

    A vertex moves by the confidence-weighted mean of its neighbourhood's
    displacements, damped where the neighbourhood's confidence is low, so a
    vertex with a doubtful target (a leak, a wrong edge) is held back by its
    confident neighbours. Returns ``(new_verts, weighted_displacement)``.
    """
    d = (tgt - v) * conf[:, None]
    wsum = conf.copy()
    for _ in range(n_smooth):
        d = 0.5 * d + 0.5 * (L @ d)
        wsum = 0.5 * wsum + 0.5 * (L @ wsum)
    return v + d / np.maximum(wsum, 1e-6)[:, None] * np.minimum(wsum, 1.0)[:, None], d


def seed_lps(vol, params):
    """The seed as an LPS position (mm); a seed outside the image is an error.

    ``seed_space``: ``'lps'`` (ITK, DICOM), ``'ras'`` (3D Slicer, nibabel: x and y
    negated) or ``'voxel'`` (continuous indices i, j, k along the image's x, y, z
    axes, as ITK, Slicer and nibabel number them)."""
    s = np.asarray(params.seed_mm, dtype=float)
    p = _seed_position(vol, s, params.seed_space)
    if outside_fov(vol, p[None])[0]:
        idx = vol.physical_to_index(p[None])[0]
        # the usual slip: Slicer's RAS numbers given as LPS (or voxel indices as mm)
        inside = [sp for sp in ("lps", "ras", "voxel") if sp != params.seed_space
                  and not outside_fov(vol, _seed_position(vol, s, sp)[None])[0]]
        hint = ("; read as " + " or ".join(inside) + " it would lie inside: --seed-space "
                + " or ".join(inside) + "?") if inside else ""
        raise SeedOutsideError(f"the seed {tuple(np.round(s, 2).tolist())} ({params.seed_space}) "
                         f"lies outside the image (voxel index {np.round(idx, 1).tolist()} "
                         f"of {list(vol.array.shape[::-1])}){hint}")
    return p


def _seed_position(vol, s, space):
    """LPS position (mm) of seed numbers ``s`` read in ``space``."""
    if space == "ras":
        return s * np.array([-1.0, -1.0, 1.0])
    if space == "voxel":
        return vol.index_to_physical(s[None])[0]
    return s


#: under the CT intensity model a window bound beyond this (HU / 1000) lies outside
#: any CT's values (-1024 HU up to 3071, 4095 with an extended scale): HU given as
#: they are, not divided by 1000
CT_WINDOW_LIMIT = 4.1


def normalisation_of(model, params):
    """The intensity normalisation a fit of ``model`` uses: ``params``' own, else
    the learned appearance's, else 'ct'."""
    pm = model.profile
    return params.normalisation or (pm.normalisation if pm is not None else "ct")


def check_window(model, params):
    """Raise ValueError for a ``window`` no CT can hold under the CT intensity model
    (a bound beyond :data:`CT_WINDOW_LIMIT`): HU given where HU / 1000 are meant."""
    w = params.window
    if w is None or normalisation_of(model, params) != "ct":
        return
    if max(abs(float(v)) for v in w) > CT_WINDOW_LIMIT:
        lo, hi = (float(v) for v in w)
        raise ValueError(f"window {lo:g},{hi:g} is in HU / 1000 under the CT intensity model "
                         f"(allowed: within +-{CT_WINDOW_LIMIT}), so it means "
                         f"{1000 * lo:g}..{1000 * hi:g} HU; for {lo:g}..{hi:g} HU give "
                         f"{lo / 1000:g},{hi / 1000:g}")


def _prepare(model, vol, params, dictionary):
    """What every fit of this image and model shares."""
    dic = dictionary or model.prior_dictionary(params.prior)
    pm = model.profile
    if pm is not None:
        pm.check_layout()
    norm = normalisation_of(model, params)
    scale = intensity_scale(vol, norm)
    return dic, pm, norm, scale


class _Fit:
    """One fit in progress (one placement hypothesis)."""

    def __init__(self, v, hypothesis):
        self.v = v
        self.hypothesis = hypothesis
        self.history = []
        self.n_iter = 0
        self.converged = False
        self.overridden = 0.0
        self.overridden_max = 0.0
        self.ever = np.zeros(len(v), dtype=bool)
        self.error_mm = np.zeros(len(v))
        self.conf = np.ones(len(v))
        self.x_prev = None
        self.beta_prev = None       # the last SSC call's alignment (warm start)
        self.scale_clamped = 0
        self.trial_score = None     # appearance after the first iterations (hypotheses)


def segment_volume(vol, model, params: SegmentParams, dictionary=None, clock=None,
                   init=None, check_units=True):
    """Fit the model to ``vol``; returns :class:`SegmentResult` (with
    ``params.side`` 'both': :class:`~shapeprior.segmentation.PairedSegmentResult`).

    Without a seed the organ is found by :func:`find_placements` (a search
    over the whole field of view scored by the model's appearance); the
    first resolution level runs from the ``params.n_hypotheses`` best
    placements and the fit that matches the image best continues. The result
    carries a status (``ok``/``suspect``/``failed``) with its reasons and
    evidence (see :func:`assess`): a flat image or a model that cannot fit
    the field of view gives a ``failed`` result with an empty label, not an
    exception.

    Parameters
    ----------
    vol : Volume
    model : ShapeModel
    params : SegmentParams
        ``params.backend`` picks where the image work runs (smoothing and
        sampling along normals; 'cupy' keeps the image on the GPU). The SSC
        solve of a single mesh stays on the CPU: it is latency-bound.
    dictionary : ShapeDictionary, optional
        Prepared dictionary (reuse across cases); default the model's shapes.
    clock : shapeprior._profile.StageClock, optional
        Receives per-stage time (and peak RSS): prepare, place, search, ssc,
        refine, voxelize, voxels (the voxel classifier).
    init : ndarray, shape (N, 3), optional
        A starting surface (LPS mm, the model's vertex order), e.g. from
        :func:`refine_mask` on an existing segmentation; replaces placement.
        With side 'both': ``{'left': surface, 'right': surface}``.
    check_units : bool
        With the CT intensity model (normalisation 'ct'), give a ``failed``
        result without fitting when the image is not in Hounsfield units
        (:data:`HU_MIN_SHARE`); with appearance whose training images were all
        in HU, or all not (``ProfileModel.hu_share_range``), also when this
        image is the other kind (a CT given to a model learned on MR). False
        for an image made from a mask.

    Notes
    -----
    A model of one side of a paired organ (:func:`paired_model`, e.g. left
    kidneys with the right ones mirrored) fitted with ``params.side`` 'none'
    (and no ``init``) is fitted as each side; the result with the better status,
    then quality, is returned, and its evidence names the side kept and how the
    other side's fit ended (``side``, ``side_source``, ``other_side``). With
    ``init`` and side 'none', the side is the one whose model explains the
    starting surface (:func:`starting_side`).
    """
    t0 = time.perf_counter()
    if min(vol.array.shape) < 2:
        raise ValueError(f"image of shape {vol.array.shape} is not a 3-D volume")
    check_window(model, params)
    if params.side == "both":
        from ._both_sides import segment_both

        return segment_both(vol, model, params, dictionary, clock, init, check_units)
    if params.side == "none" and init is None and paired_model(model):
        # a paired organ and no side given: each side fitted, the better kept
        fits = {side: segment_volume(vol, model, replace(params, side=side), dictionary,
                                     clock, None, check_units) for side in ("left", "right")}
        (side, best), (other_side, other) = sorted(
            fits.items(), key=lambda kv: (STATUS_RANK[kv[1].status], -kv[1].quality))
        best.evidence["side"] = side
        best.evidence["side_source"] = "both fitted, the better kept"
        best.evidence["other_side"] = {"side": other_side, "status": other.status,
                                       "quality": round(other.quality, 4)}
        best.time_s = time.perf_counter() - t0
        return best
    clock = clock or NULL_CLOCK
    backend = resolve_backend(params.backend)
    with clock("prepare"):
        dic, pm, norm, scale = _prepare(model, vol, params, dictionary)
        side_source = None
        if params.side == "none" and init is not None and paired_model(model):
            # a starting surface (an existing mask's fit) of a paired organ: its side
            side = starting_side(init, dic)
            if side is not None:
                params, side_source = replace(params, side=side), "the starting surface"
        early = None
        try:
            shape0, mirror = initial_shape(model, vol, params)
        except SeedOutsideError as exc:     # a result, not a crash: status failed
            early = str(exc)
            shape0, mirror = initial_shape(model, vol, replace(params, seed_mm=None))
    # a mirrored shape turns its triangles inside out: reverse them for the whole
    # fit, so that normals (and the search along them) point outward
    faces = model.faces[:, ::-1].copy() if mirror else model.faces
    early = early or _cannot_fit(model, vol)
    hu_share = None
    default_window = False
    if norm == "ct" and check_units and not early:
        early, hu_share = _not_hounsfield(vol)
        if pm is None and params.window is None:
            # the CT intensity model without a window of the user's: soft tissue
            params = replace(params, window=CT_SOFT_TISSUE)
            default_window = True
    elif pm is not None and pm.hu_share_range is not None and check_units and not early:
        early, hu_share = _other_modality(vol, pm.hu_share_range)
    if early:
        res = _failed(vol, shape0, faces, early, backend, t0)
        res.mirrored = mirror
        if hu_share is not None:
            res.evidence["hounsfield_share_below"] = round(hu_share, 4)
        return res
    extent = float(np.linalg.norm(model.mean.max(0) - model.mean.min(0)))
    scorer = AppearanceScore(vol, pm, norm, scale, backend, params.schedule[0][1],
                             band_mm=float(np.clip(0.04 * extent, 2.0, 4.0)),
                             window=params.window, inside_brighter=params.inside_brighter)
    centre0 = shape0.mean(0)
    template = shape0 - centre0         # the model's mean in its prior pose, centred
    s = model.pose.scale if model.pose is not None else 1.0
    lo, hi = _scale_range(model)
    scales = (1.0,) if lo is None else sorted(
        {1.0, *(np.clip([0.9, 1.1], lo / s, hi / s).tolist())})
    if init is not None or params.seed_mm is not None:
        source = "seed"
        if init is not None:
            init = np.asarray(init, dtype=float)
            if init.shape != shape0.shape or not np.all(np.isfinite(init)):
                raise ValueError(f"init has shape {init.shape}; expected {shape0.shape}, finite")
            centre0, source = init.mean(0), "init"
        # the start, and positions near it that match the image (a seed or a
        # rough contour some way off the organ)
        hyps = [Hypothesis(centre0, 1.0, float("nan"), source)]
        with clock("place"):
            hyps += local_placements(vol, template, faces, scorer, centre0,
                                     params.near_start * extent, params.n_hypotheses - 1,
                                     scales, source=f"near {source}")
    elif params.placement == "prior":
        hyps = [Hypothesis(centre0, 1.0, float("nan"), "prior")]
    else:
        with clock("place"):
            hyps = find_placements(vol, template, faces, scorer, params.n_hypotheses,
                                   prior_centre=centre0, side=params.side, scales=scales)
    # fit the hypotheses whose placement score comes near the best one's (and
    # the training position), a few iterations of the first level each; the
    # one that then matches the image best runs the whole schedule
    top = max((h.score for h in hyps if np.isfinite(h.score)), default=np.nan)
    hyps = [h for h in hyps if not h.score < HYPOTHESIS_MARGIN * top or h.source == "prior"]
    fits = [_Fit(init if h.source == "init" else h.scale * template + h.centre, h)
            for h in hyps[:params.n_hypotheses]]
    fitter = _Fitter(vol, model, params, dic, pm, norm, scale, backend, faces, mirror, clock,
                     shared=[scorer.level])
    levels = list(params.schedule)
    if len(fits) > 1:
        for f in fits:
            fitter.run_level(f, *levels[0], max_iter=HYPOTHESIS_ITER)
            f.trial_score = scorer(f.v, faces)
    # the training position wins unless another fits clearly better (a seed or a
    # starting surface by START_MARGIN)
    fit = max(fits, key=lambda f: (f.trial_score or 0.0)
              + (PRIOR_MARGIN if f.hypothesis.source == "prior" else
                 START_MARGIN if f.hypothesis.source in ("seed", "init") else 0.0))
    for search_mm, sigma in levels:
        fitter.run_level(fit, search_mm, sigma)
    if params.refine_iter:
        fitter.refine(fit)
    v = fit.v
    if Surface(v, faces).volume() < 0:
        faces = faces[:, ::-1].copy()
    offset = surface_offset(model, params)
    if offset:
        v = v + offset * Surface(v, faces).vertex_normals()
    with clock("voxelize"):
        label = voxelize(v, faces, vol)
    changed = kept = None
    if model.voxels is not None and params.voxel_refine:
        with clock("voxels"):
            surface_label = label
            label, changed = model.voxels.refine(vol, surface_label, v, faces, backend,
                                                 smooth_vox=params.voxel_smooth,
                                                 passes=params.voxel_passes)
            kept = kept_share(surface_label, label, mesh_box(vol, v))
    placement = {"chosen": fit.hypothesis.to_dict(),
                 "hypotheses": [dict(f.hypothesis.to_dict(), **(
                     {} if f.trial_score is None else {"trial_score": round(f.trial_score, 4)}))
                     for f in fits]}
    res = SegmentResult(v, faces, label, fit.n_iter, fit.converged, fit.overridden,
                        0.0, fit.history, backend, fit.overridden_max, fit.ever,
                        np.asarray(fit.error_mm, dtype=float), np.asarray(fit.conf, dtype=float),
                        placement=placement, mirrored=mirror, surface_offset_mm=offset,
                        voxels_changed=changed, voxels_kept=kept)
    res.status, res.quality, res.reasons, res.evidence = assess(
        res, vol, model, scorer, mirror, scale_clamped=fit.scale_clamped)
    if hu_share is not None:
        res.evidence["hounsfield_share_below"] = round(hu_share, 4)
    if side_source:
        res.evidence["side"], res.evidence["side_source"] = params.side, side_source
    if default_window:
        res.evidence["ct_window_hu"] = [round(1000.0 * w) for w in CT_SOFT_TISSUE]
        res.evidence["ct_window_source"] = "default (soft tissue)"
    res.time_s = time.perf_counter() - t0
    return res


class _Fitter:
    """Runs resolution levels and the final refinement on a :class:`_Fit`."""

    def __init__(self, vol, model, params, dic, pm, norm, scale, backend, faces, mirror, clock,
                 shared=()):
        self.vol, self.model, self.params, self.dic, self.pm = vol, model, params, dic, pm
        self.norm, self.scale, self.backend, self.faces = norm, scale, backend, faces
        self.mirror, self.clock = mirror, clock
        # one smoothed image per sigma for the whole fit (every hypothesis, every
        # level, the appearance score of ``shared``): it recrops only when a mesh
        # leaves the regions it keeps (one per hypothesis), and its values inside
        # do not depend on the crop
        self.images = {im.sigma_mm: im for im in shared}
        self.edge_step = 0.5 * min(vol.spacing)
        self.scale_lo, self.scale_hi = _scale_range(model)
        self.mean_c = model.mean - model.mean.mean(0)

    def level(self, sigma):
        """The smoothed image of ``sigma`` mm (:class:`LevelImage`), made once."""
        sigma = float(sigma)
        if sigma not in self.images:
            self.images[sigma] = LevelImage(self.vol, self.norm, sigma, self.backend, self.scale)
        return self.images[sigma]

    def search(self, level, v, search_mm):
        pm, clock = self.pm, self.clock
        reach = search_mm + (pm.half * pm.step if pm is not None else 2 * self.edge_step)
        with clock("prepare"):      # crop + smooth when the mesh left the region
            sampler = level.sampler(v, reach)
        with clock("search"):
            normals = Surface(v, self.faces).vertex_normals()
            if pm is not None:
                tgt, conf = search_profiles(pm, sampler, v, normals, search_mm)
            else:
                tgt, conf = search_edges(sampler, v, normals, search_mm, self.edge_step,
                                         self.params.inside_brighter, self.params.window)
        # a vertex outside the image has no evidence: visibility 0 (the S of
        # the SSC objective), so that an organ cut by the field of view is
        # completed by the prior instead of by the border's replicated values
        out = outside_fov(self.vol, v)
        if out.any() and (~out).sum() >= max(3, 0.1 * len(v)):
            conf = np.where(out, 0.0, conf)
        return tgt, conf

    def plausible_modes(self, rec):
        """Clamp each PCA mode coefficient of the shape to +-``mode_clamp``
        standard deviations (ASM); the part of the shape outside the modes is
        kept."""
        k = self.params.mode_clamp
        m = self.model
        if k is None or m.pca_components is None or not len(m.pca_variances):
            return rec
        b, T = mode_coefficients(m, rec, self.mirror)
        if not np.any(np.abs(b) > k):
            return rec
        sd = np.sqrt(np.maximum(m.pca_variances, 1e-12))
        shift = ((np.clip(b, -k, k) - b) * sd) @ m.pca_components    # model frame
        v = rec * MIRROR if self.mirror else rec
        new = T.inverse().apply(T.apply(v) + shift.reshape(-1, 3))
        return new * MIRROR if self.mirror else new

    def plausible_scale(self, rec):
        """Keep the organ's size within the training range (widened by
        :data:`SCALE_SLACK`): a shape grown into a neighbour of similar
        intensity is shrunk back about its centre. Returns (shape, clamped)."""
        if self.scale_lo is None:
            return rec, False
        c = rec.mean(0)
        s = organ_scale(self.mean_c, rec, self.mirror)
        lo, hi = self.scale_lo / SCALE_SLACK, self.scale_hi * SCALE_SLACK
        if lo <= s <= hi:
            return rec, False
        return c + (rec - c) * (np.clip(s, lo, hi) / s), True

    def run_level(self, f, search_mm, sigma, max_iter=None):
        p = self.params
        level = self.level(sigma)
        f.converged = False
        tol = level_tol(p, search_mm)
        for _ in range(max_iter or p.max_iter):
            f.n_iter += 1
            tgt, f.conf = self.search(level, f.v, search_mm)
            y = tgt * MIRROR if self.mirror else tgt
            # a vertex that lands more than tau (mm) off the prior's shape is a
            # gross error (a leak or a wrong edge): tau follows the search scale
            tau = p.outlier_base_mm + 0.5 * search_mm
            with self.clock("ssc"):
                res = sparse_shape_composition(y, self.dic, f.conf, method=p.method,
                                               x0=f.x_prev, lambda2=2.0 * tau,
                                               outlier_threshold=tau,
                                               n_nonzero=min(20, self.dic.n_atoms),
                                               max_align_iter=p.align_rounds,
                                               align_tol=p.align_tol, refit=p.refit,
                                               transform0=f.beta_prev if p.warm_align else None)
            f.x_prev = res.x if p.method == "l1" else None
            f.beta_prev = res.transform
            new = res.reconstruction * MIRROR if self.mirror else res.reconstruction
            new = self.plausible_modes(new)
            new, clamped = self.plausible_scale(new)
            f.scale_clamped += int(clamped)
            move = float(np.mean(np.linalg.norm(new - f.v, axis=1)))
            f.overridden = res.outlier_fraction
            f.overridden_max = max(f.overridden_max, res.outlier_fraction)
            f.ever |= res.overridden
            f.error_mm = res.error_norm
            f.history.append({"search_mm": search_mm, "move_mm": move,
                              "overridden_fraction": f.overridden,
                              "mean_confidence": float(f.conf.mean())})
            f.v = new
            if move < tol:
                f.converged = True
                break

    def refine(self, f):
        """Local refinement (the deformable-model step after SSC inference in
        Zhang et al.): confidence-weighted boundary displacements, smoothed on
        the mesh, with the SSC shape's gross-error vertices held back."""
        p = self.params
        level = self.level(0.0)
        L = mean_neighbour_operator(self.faces, len(f.v))
        for _ in range(p.refine_iter):
            f.n_iter += 1
            tgt, f.conf = self.search(level, f.v, p.refine_search_mm)
            with self.clock("refine"):
                f.v, d = refine_step(f.v, tgt, f.conf, L, p.refine_smooth)
            f.history.append({"refine": True,
                              "move_mm": float(np.mean(np.linalg.norm(d, axis=1)))})


def level_tol(params, search_mm):
    """Mean vertex motion (mm) that ends a level searching ``search_mm``: the
    parameters' ``tol_mm``, or :data:`FIT_TOL_MM` at the finest level of the
    schedule, growing as ``(search_mm / finest) ** LEVEL_TOL_POWER`` on coarser
    ones."""
    if params.tol_mm is not None:
        return params.tol_mm
    finest = min(s for s, _ in params.schedule)
    return FIT_TOL_MM * (search_mm / finest) ** LEVEL_TOL_POWER


def _scale_range(model):
    """Training range of the organ's similarity scale, or (None, None)."""
    pose = model.pose
    if pose is None or pose.scale_range is None:
        return None, None
    return tuple(float(a) for a in pose.scale_range)


#: an organ spanning fewer voxels than this (along the image's finest axis) cannot be
#: fitted: a profile search needs samples on both sides of a boundary. A hippocampus
#: (about 40 mm) on a 5 mm CT spans 8; the limit is for headers that lie about the
#: voxel size (metres written as millimetres), not tuned
MIN_VOXELS_ACROSS = 3


def _cannot_fit(model, vol):
    """Why no fit can be tried on this image (flat, or the organ cannot fit its
    field of view), or None."""
    flat = _flat_value(vol.array)
    if flat is not None:
        return f"flat image: every voxel is {flat:g}"
    ext_img = np.abs(vol.index_to_physical_matrix) @ (np.array(vol.array.shape[::-1]) - 1)
    m = model.mean
    size = float(np.linalg.norm(m.max(0) - m.min(0)))
    diag = float(np.linalg.norm(ext_img))
    organ = model.metadata.get('organ', 'organ')
    if size > 1.5 * diag:
        return (f"the model's {organ} (about {size:.3g} mm across) cannot fit this image's "
                f"field of view ({diag:.3g} mm diagonal): wrong model for this image?")
    finest = float(np.min(vol.spacing))
    if size < MIN_VOXELS_ACROSS * finest:
        # no boundary to search for; the placement grid and the profile search
        # scale with the voxel, and a header claiming metre-sized voxels made
        # them scan for minutes
        return (f"the model's {organ} (about {size:.3g} mm across) spans fewer than "
                f"{MIN_VOXELS_ACROSS} voxels of this image (finest spacing {finest:g} mm): "
                "wrong model, or a wrong voxel size in the header?")
    return None


def _flat_value(a):
    """The value every voxel of ``a`` holds, or None. Every 8th row of every 8th
    plane is read first: two values there settle it without a pass over the
    whole image (3 against 15 ms on a 512 x 512 x 300 CT); a NaN anywhere
    makes an image not flat, as its min and max then compare unequal."""
    sub = a[::8, ::8]
    if sub.min() != sub.max():
        return None
    lo, hi = float(np.min(a)), float(np.max(a))
    return lo if lo == hi else None


#: the CT intensity model's window (HU / 1000) inside the organ when neither the user
#: nor learned appearance gives one: soft tissue, from HU tables (not tuned): above
#: fat (-120 to -80 HU), so that the organ's edge against fat is found, and below
#: bone and excreted contrast (> 300 HU), wide enough for an enhanced kidney cortex
#: (100-250 HU in nephrographic phase). Without any window the edge search saw only
#: "brighter inside", and the TotalSegmentator example CT's kidneys came out on other
#: tissue (Dice 0.00, one 'suspect'); with this one they are found as with the
#: benchmark's -50..150 HU (Dice 0.928 / 0.903, bench/README.md)
CT_SOFT_TISSUE = (-0.05, 0.25)


def _not_hounsfield(vol):
    """``(why the CT intensity model cannot apply to this image or None, the
    share of voxels below HU_BELOW)``."""
    share = hounsfield_share(vol)
    if share >= HU_MIN_SHARE:
        return None, share
    return (f"the image does not look like CT in Hounsfield units ({100 * share:.2g} % of "
            f"voxels below {HU_BELOW:g} HU, where a CT shows fat and air; an MR, or a CT "
            "stored without its rescale?): the CT intensity model does not apply. Use a "
            "model with appearance learned on such images, or --normalisation percentile "
            "with a --window"), share


def _other_modality(vol, trained):
    """``(why this image is not of the kind the model's appearance was learned on,
    or None; the image's share of voxels below HU_BELOW)``. ``trained``: the
    (min, max) share of the training images. Only a clear difference counts: every
    training image in HU (CT) and this one clearly not, or no training image in HU
    and this one clearly a CT (:data:`HU_CT_SHARE`)."""
    share = hounsfield_share(vol)
    lo, hi = float(trained[0]), float(trained[1])
    if share >= HU_CT_SHARE and hi < HU_MIN_SHARE:
        return (f"the image is in Hounsfield units ({100 * share:.0f} % of voxels below "
                f"{HU_BELOW:g} HU: a CT), but the model's appearance was learned on images "
                f"that are not (at most {100 * hi:.2g} %: MR?): wrong model for this "
                "image"), share
    if share < HU_MIN_SHARE and lo >= HU_MIN_SHARE:
        return (f"the image is not in Hounsfield units ({100 * share:.2g} % of voxels below "
                f"{HU_BELOW:g} HU), but the model's appearance was learned on CT (at least "
                f"{100 * lo:.0f} %): wrong model for this image, or a CT stored without its "
                "rescale?"), share
    return None, share


def _failed(vol, verts, faces, reason, backend, t0):
    """A failed result with an empty label: nothing was fitted."""
    n = len(verts)
    return SegmentResult(verts, faces, np.zeros(vol.array.shape, np.uint8), 0, False, 0.0,
                         time.perf_counter() - t0, [], backend, 0.0, np.zeros(n, bool),
                         np.zeros(n), np.zeros(n), status="failed", quality=0.0,
                         reasons=[Reason(reason, "failed")], evidence={}, placement=None)
