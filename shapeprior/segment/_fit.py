"""Model-based segmentation: initialise -> search along normals -> SSC
projection -> repeat, coarse to fine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .._profile import NULL_CLOCK
from ..backend import resolve_backend
from ..appearance import LevelImage, intensity_scale, search_edges, search_profiles
from ..mesh import Surface, mean_neighbour_operator
from ..ssc import sparse_shape_composition
from ._voxelize import voxelize

#: (search range mm, image smoothing sigma mm) per resolution level
DEFAULT_SCHEDULE = ((6.0, 1.0), (3.0, 0.5), (1.5, 0.0))
MIRROR = np.array([-1.0, 1.0, 1.0])


@dataclass
class SegmentParams:
    schedule: tuple = DEFAULT_SCHEDULE
    max_iter: int = 12            # per level
    tol_mm: float = 0.05          # mean vertex motion that ends a level
    method: str = "l1"
    seed_mm: tuple | None = None  # organ centre, in seed_space coordinates
    seed_space: str = "lps"       # 'lps' mm, 'ras' mm (Slicer, nibabel) or 'voxel' (i, j, k)
    side: str = "none"            # 'left'/'right' for paired organs (mirrored model)
    inside_brighter: bool = True  # edge fallback polarity
    window: tuple | None = None   # edge fallback: intensity window inside the organ
    normalisation: str | None = None
    outlier_base_mm: float = 1.0  # gross-error threshold = this + search range / 2
    align_rounds: int = 5         # beta/SSC alternations per iteration (the loop iterates too)
    refine_iter: int = 3          # final local refinement steps outside the shape space (chosen on a validation split)
    refine_search_mm: float = 1.5
    refine_smooth: int = 5        # Laplacian passes on the refinement displacement
    backend: str | None = None    # image smoothing + sampling: auto/numpy/numba/cupy ($SHAPEPRIOR_BACKEND)

    def __post_init__(self):
        from .._validation import (check_bool, check_choice, check_number, check_vector)
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
        self.tol_mm = check_number("tol_mm", self.tol_mm, 0, low_open=True)
        check_choice("method", self.method, ("l1", "l0"))
        if self.seed_mm is not None:
            self.seed_mm = check_vector("seed_mm", self.seed_mm, 3)
        check_choice("seed_space", self.seed_space, ("lps", "ras", "voxel"))
        check_choice("side", self.side, ("none", "left", "right"))
        self.inside_brighter = check_bool("inside_brighter", self.inside_brighter)
        if self.window is not None:
            self.window = check_vector("window", self.window, 2, increasing=True)
        check_choice("normalisation", self.normalisation, (None, "percentile", "ct"))
        self.outlier_base_mm = check_number("outlier_base_mm", self.outlier_base_mm, 0,
                                            low_open=True)
        self.align_rounds = check_number("align_rounds", self.align_rounds, 1, integer=True)
        self.refine_iter = check_number("refine_iter", self.refine_iter, 0, integer=True)
        self.refine_search_mm = check_number("refine_search_mm", self.refine_search_mm, 0,
                                             low_open=True)
        self.refine_smooth = check_number("refine_smooth", self.refine_smooth, 0, integer=True)
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
    mirror = params.side == "right" and "mirrored" in str(model.metadata.get("side", ""))
    if mirror:
        shape = shape * MIRROR
        off = off * MIRROR
    centre = seed_lps(vol, params) if params.seed_mm is not None else vol.centre() + off
    return shape + centre, mirror


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
    if params.seed_space == "ras":
        p = s * np.array([-1.0, -1.0, 1.0])
    elif params.seed_space == "voxel":
        p = vol.index_to_physical(s[None])[0]
    else:
        p = s
    idx = vol.physical_to_index(p[None])[0]
    if np.any(idx < -0.5) or np.any(idx > np.array(vol.array.shape[::-1]) - 0.5):
        raise ValueError(f"the seed {tuple(np.round(s, 2).tolist())} ({params.seed_space}) "
                         f"lies outside the image (voxel index {np.round(idx, 1).tolist()} "
                         f"of {list(vol.array.shape[::-1])})")
    return p


def check_fits(model, vol):
    """Clear error when the organ cannot fit the field of view (wrong model)."""
    ext_img = np.abs(vol.index_to_physical_matrix) @ (np.array(vol.array.shape[::-1]) - 1)
    m = model.mean
    size = float(np.linalg.norm(m.max(0) - m.min(0)))
    diag = float(np.linalg.norm(ext_img))
    if size > 1.5 * diag:
        raise ValueError(
            f"the model's {model.metadata.get('organ', 'organ')} (about {size:.0f} mm across) "
            f"cannot fit this image's field of view ({diag:.0f} mm diagonal): wrong model for "
            "this image?")


def segment_volume(vol, model, params: SegmentParams, dictionary=None, clock=None):
    """Fit the model to ``vol``; returns :class:`SegmentResult`.

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
        Receives per-stage time (and peak RSS): prepare, search, ssc, refine,
        voxelize.
    """
    t0 = time.perf_counter()
    clock = clock or NULL_CLOCK
    backend = resolve_backend(params.backend)
    if min(vol.array.shape) < 2:
        raise ValueError(f"image of shape {vol.array.shape} is not a 3-D volume")
    check_fits(model, vol)
    with clock("prepare"):
        dic = dictionary or model.ssc_dictionary("shapes")
        pm = model.profile
        if pm is not None:
            pm.check_layout()
        norm = params.normalisation or (pm.normalisation if pm else "ct")
        scale = intensity_scale(vol, norm)
        v, mirror = initial_shape(model, vol, params)
    # a mirrored shape turns its triangles inside out: reverse them for the whole
    # fit, so that normals (and the search along them) point outward
    faces = model.faces[:, ::-1].copy() if mirror else model.faces
    history, n_iter, converged, overridden, overridden_max = [], 0, False, 0.0, 0.0
    ever = np.zeros(model.n_vertices, dtype=bool)
    error_mm = np.zeros(model.n_vertices)
    conf = np.ones(model.n_vertices)
    x_prev = None
    edge_step = 0.5 * min(vol.spacing)

    def search(level, v, search_mm):
        reach = search_mm + (pm.half * pm.step if pm is not None else 2 * edge_step)
        with clock("prepare"):      # crop + smooth when the mesh left the region
            sampler = level.sampler(v, reach)
        with clock("search"):
            normals = Surface(v, faces).vertex_normals()
            if pm is not None:
                return search_profiles(pm, sampler, v, normals, search_mm)
            return search_edges(sampler, v, normals, search_mm, edge_step,
                                params.inside_brighter, params.window)

    for search_mm, sigma in params.schedule:
        level = LevelImage(vol, norm, sigma, backend, scale)
        converged = False
        for _ in range(params.max_iter):
            n_iter += 1
            tgt, conf = search(level, v, search_mm)
            y = tgt * MIRROR if mirror else tgt
            # a vertex that lands more than tau (mm) off the prior's shape is a
            # gross error (a leak or a wrong edge): tau follows the search scale
            tau = params.outlier_base_mm + 0.5 * search_mm
            with clock("ssc"):
                res = sparse_shape_composition(y, dic, conf, method=params.method, x0=x_prev,
                                               lambda2=2.0 * tau, outlier_threshold=tau,
                                               n_nonzero=min(20, dic.n_atoms),
                                               max_align_iter=params.align_rounds)
            x_prev = res.x if params.method == "l1" else None
            new = res.reconstruction * MIRROR if mirror else res.reconstruction
            move = float(np.mean(np.linalg.norm(new - v, axis=1)))
            overridden = res.outlier_fraction
            overridden_max = max(overridden_max, res.outlier_fraction)
            ever |= res.overridden
            error_mm = res.error_norm
            history.append({"search_mm": search_mm, "move_mm": move,
                            "overridden_fraction": overridden,
                            "mean_confidence": float(conf.mean())})
            v = new
            if move < params.tol_mm:
                converged = True
                break
    if params.refine_iter:
        # local refinement (the deformable-model step after SSC inference in
        # Zhang et al.): confidence-weighted boundary displacements, smoothed
        # on the mesh, with the SSC shape's gross-error vertices held back
        level = LevelImage(vol, norm, 0.0, backend, scale)
        L = mean_neighbour_operator(faces, len(v))
        for _ in range(params.refine_iter):
            n_iter += 1
            tgt, conf = search(level, v, params.refine_search_mm)
            with clock("refine"):
                v, d = refine_step(v, tgt, conf, L, params.refine_smooth)
            history.append({"refine": True, "move_mm": float(np.mean(np.linalg.norm(d, axis=1)))})
    surf = Surface(v, faces)
    if surf.volume() < 0:
        faces = faces[:, ::-1].copy()
    with clock("voxelize"):
        label = voxelize(v, faces, vol)
    return SegmentResult(v, faces, label, n_iter, converged, overridden,
                         time.perf_counter() - t0, history, backend, overridden_max, ever,
                         np.asarray(error_mm, dtype=float), np.asarray(conf, dtype=float))
