"""Placement without a seed: where in the field of view does the organ sit?

The model mean, in the pose the training scans support (mean rotation, scale
within the training range), is tried at positions on a grid over the whole
field of view. Each position is scored by the model's appearance
(:class:`AppearanceScore`): the learned boundary profiles when the model has
them, otherwise the contrast between the inside and the outside of the
surface in the CT intensity model (``window``). The best positions are
refined on finer grids and returned as a few distinct hypotheses; the fit
then runs from each and keeps the one whose result fits the image best.

For a paired organ (``side`` left/right) only positions on that side of the
body's midline are considered.

With a seed or a starting surface, :func:`local_placements` scores positions
near it alike, so that a start some way off the organ still finds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..appearance import (BACKGROUND_TRAINING_MAX, Background, LevelImage,
                          search_profiles)
from ..backend import kernel
from ..mesh import Surface

#: vertices used to score a placement candidate (a fixed subset of the mesh)
N_SCORE_VERTICES = 400
#: candidates kept after the coarse grid, before refinement
N_COARSE_KEEP = 8


@dataclass
class Hypothesis:
    """One placement: organ centre (LPS mm), scale, appearance score and origin."""

    centre: np.ndarray
    scale: float
    score: float
    # 'search', 'prior' (training offset from the FOV centre), 'seed', 'init' (a
    # starting surface), or 'near seed' / 'near init' (a position near either)
    source: str

    def to_dict(self) -> dict:
        return {"centre_lps_mm": [round(float(c), 2) for c in self.centre],
                "scale": round(float(self.scale), 4), "score": round(float(self.score), 4),
                "source": self.source}


class AppearanceScore:
    """How well a surface matches the image, in [0, 1] (higher is better).

    With a profile model: the mean search confidence of the vertices (the
    Mahalanobis fit of the best normal profile within ``search_mm``, mapped
    to [0.05, 1] as in :func:`~shapeprior.appearance.search_profiles`). A
    vertex whose inside lies in the image's background (the air around the
    body, :class:`~shapeprior.appearance.Background`) scores 0 when the model's
    training surfaces stayed clear of it (``background_share_max`` at most
    :data:`~shapeprior.appearance.BACKGROUND_TRAINING_MAX`): a normalised
    profile cannot tell the air's noise from an organ's boundary.
    Without one: the fraction of samples just inside the surface that lie
    in the organ's intensity ``window`` minus the fraction just outside
    (clipped at 0); without a window, ``2 f - 1`` (clipped at 0) where f is
    the fraction of vertices brighter inside than outside (darker, with
    ``inside_brighter=False``).

    Parameters
    ----------
    vol : Volume
    profile : ProfileModel or None
    norm : str
        Intensity normalisation ('ct' or 'percentile').
    scale : tuple
        ``(offset, scale)`` of :func:`~shapeprior.appearance.intensity_scale`.
    backend : str
    sigma_mm : float
        Image smoothing for the score.
    band_mm : float
        Depth of the inside and outside bands (region score).
    window, inside_brighter :
        The CT intensity model (region score).
    """

    def __init__(self, vol, profile, norm, scale, backend, sigma_mm, band_mm,
                 window=None, inside_brighter=True):
        self.level = LevelImage(vol, norm, sigma_mm, backend, scale)
        self.norm = norm
        self.pm = profile
        self.band = float(band_mm)
        self.window = window
        self.sign = 1.0 if inside_brighter else -1.0
        self.kind = "profile" if profile is not None else "region"
        self.vol = vol
        self._background = None
        bg = None if profile is None else profile.background_share_max
        self.uses_background = bg is not None and bg <= BACKGROUND_TRAINING_MAX

    @property
    def background(self):
        """The image's :class:`~shapeprior.appearance.Background` (made once, on
        first use), or None where the rule does not apply."""
        if self.uses_background and self._background is None:
            self._background = Background(self.vol)
        return self._background

    def in_background(self, verts, normals):
        """Per vertex, whether its inside lies in the background: bool (N,); all
        False where the rule does not apply."""
        bg = self.background
        if bg is None:
            return np.zeros(len(verts), bool)
        return bg.insides_in_background(verts, normals)

    def per_candidate(self, verts, normals, idx, search_mm=0.0, slack_mm=None):
        """Scores of C candidate surfaces: ``verts``/``normals`` (C, n, 3) at the
        model vertices ``idx`` (n,) -> (C,). ``slack_mm``: how far beyond these
        surfaces a new smoothed region reaches (see :class:`LevelImage`; default
        :data:`~shapeprior.appearance.SLACK_MM`); the scores do not depend on it."""
        C, n, _ = verts.shape
        v = verts.reshape(-1, 3)
        nn = normals.reshape(-1, 3)
        if self.pm is not None:
            pm = self.pm
            sampler = self.level.sampler(v, search_mm + pm.half * pm.step, slack_mm)
            _, conf = search_profiles(pm_subset(pm, C, idx), sampler, v, nn,
                                      max(search_mm, pm.step))
            conf = np.where(self.in_background(v, nn), 0.0, conf)
            return conf.reshape(C, n).mean(1)
        offs = np.array([-1.0, -0.5, 0.5, 1.0]) * self.band
        sampler = self.level.sampler(v, self.band, slack_mm)
        s = sampler(v, nn, offs).reshape(C, n, 4)
        inside, outside = s[..., :2], s[..., 2:]
        if self.window is not None:
            lo, hi = self.window
            fin = ((inside >= lo) & (inside <= hi)).mean((1, 2))
            fout = ((outside >= lo) & (outside <= hi)).mean((1, 2))
            return np.clip(fin - fout, 0.0, 1.0)
        # scale-free: the fraction of vertices brighter (darker) inside than
        # outside, 0 for chance and 1 when every vertex agrees
        agree = (self.sign * (inside.mean(2) - outside.mean(2)) > 0).mean(1)
        return np.clip(2.0 * agree - 1.0, 0.0, 1.0)

    def __call__(self, verts, faces, search_mm=1.5, vertices=None):
        """Score of one surface: the mean over ``vertices`` (indices; default all)."""
        normals = Surface(verts, faces).vertex_normals()
        idx = np.arange(len(verts)) if vertices is None else np.asarray(vertices)
        return float(self.per_candidate(verts[idx][None], normals[idx][None], idx,
                                        search_mm)[0])

    def reach(self, search_mm=1.5):
        """How far (mm) along its normal a vertex's samples reach."""
        if self.pm is not None:
            return search_mm + self.pm.half * self.pm.step
        return self.band


def pm_subset(pm, n_candidates, idx):
    """The profile model restricted to the vertices ``idx`` and tiled for
    ``n_candidates`` candidate surfaces."""
    from dataclasses import replace

    return replace(pm, mean=np.tile(pm.mean[idx], (n_candidates, 1)),
                   var=np.tile(pm.var[idx], (n_candidates, 1)))


def body_midline_x(vol, norm):
    """LPS x (mm) of the body's centre: centroid of voxels brighter than air
    (-500 HU with the 'ct' normalisation; the image's mean otherwise), on a
    strided grid."""
    a = vol.array[::2, ::2, ::2]
    thr = -500.0 if norm == "ct" else float(a.mean(dtype=np.float32))
    body = a > thr
    n = np.count_nonzero(body)
    if n == 0:
        return float(vol.centre()[0])
    # the centroid from the mask's marginal counts (no list of millions of indices)
    c = [np.dot(np.count_nonzero(body, axis=tuple(k for k in range(3) if k != ax)),
                np.arange(body.shape[ax], dtype=float)) / n for ax in range(3)]
    c = np.array(c)[::-1] * 2.0
    return float(vol.index_to_physical(c[None])[0, 0])


def grid_centres(vol, step_mm):
    """Positions (LPS mm) on a grid over the field of view, ``step_mm`` apart."""
    n = np.array(vol.array.shape[::-1])
    axes = [np.arange(0.0, max(k - 1, 0) + 1e-9, max(step_mm / sp, 1.0)) for k, sp in
            zip(n, vol.spacing)]
    axes = [a + 0.5 * (k - 1 - a[-1]) for a, k in zip(axes, n)]     # centred on the FOV
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return vol.index_to_physical(ijk)


def region_score_map(vol, shape0, faces, scorer, res_mm=4.0):
    """The region score of ``shape0`` centred at every voxel of the image
    downsampled to about ``res_mm``: a matched filter computed by FFT
    correlation (inside band minus outside band of the voxelised mean shape).

    Returns ``(centres, scores)``: LPS mm (P, 3) and (P,) at the local maxima.
    """
    from scipy import ndimage, signal

    from ..io import Volume
    from ..mesh import voxelize

    f = np.maximum(1, np.round(res_mm / vol.spacing)).astype(int)          # x, y, z
    # block means straight from the stored voxels, in one pass (no float copy of
    # the whole scan: 315 MB on a 512 x 512 x 300 CT); the image's far edge
    # beyond the last whole block is left out
    a = kernel("block_mean", scorer.level.backend)(vol.array, f[::-1])
    n = np.array(a.shape)
    sub = Volume(a, vol.spacing * f, vol.index_to_physical(((f - 1) / 2.0)[None])[0],
                 vol.direction)
    off, sc = scorer.level.scale
    img = (a - off) / sc
    if scorer.window is not None:
        lo, hi = scorer.window
        ind = ((img >= lo) & (img <= hi)).astype(np.float32)
    else:
        ind = (scorer.sign * img).astype(np.float32)
    r = max(1, int(round(scorer.band / float(np.min(sub.spacing)))))
    # the template: the mean shape voxelised on the same grid, its centre at a voxel
    idx = sub.physical_to_index(shape0)                 # shape0 is centred at 0
    size = np.ceil(idx.max(0) - idx.min(0)).astype(int) + 2 * r + 3    # x, y, z
    c = size // 2
    tvol = Volume(np.zeros(size[::-1], np.uint8), sub.spacing, np.zeros(3), sub.direction)
    tvol.origin = -tvol.index_to_physical(c[None].astype(float))[0]
    m = voxelize(shape0, faces, tvol).astype(bool)
    if not m.any():
        return np.zeros((0, 3)), np.zeros(0)
    b_in = m & ~ndimage.binary_erosion(m, iterations=r)
    b_out = ndimage.binary_dilation(m, iterations=r) & ~m
    kern = b_in / b_in.sum() - b_out / b_out.sum()
    full = signal.fftconvolve(ind, kern[::-1, ::-1, ::-1], mode="full")
    s0 = np.array(kern.shape) - 1 - c[::-1]
    score = full[s0[0]:s0[0] + n[0], s0[1]:s0[1] + n[1], s0[2]:s0[2] + n[2]]
    peaks = (score == ndimage.maximum_filter(score, size=3)) & (score > 0)
    p = np.argwhere(peaks)
    return sub.index_to_physical(p[:, ::-1].astype(float)), score[peaks]


def _distinct(cands, scores, k, min_dist):
    """Indices of up to ``k`` best candidates at least ``min_dist`` mm apart."""
    order = np.argsort(-scores)
    keep = []
    for i in order:
        if all(np.linalg.norm(cands[i] - cands[j]) >= min_dist for j in keep):
            keep.append(i)
        if len(keep) == k:
            break
    return keep


def find_placements(vol, shape0, faces, scorer, n=3, prior_centre=None, side="none",
                    scales=(1.0,)):
    """Candidate organ positions, best first.

    Parameters
    ----------
    vol : Volume
    shape0 : ndarray, shape (N, 3)
        The model mean in its prior pose (rotation, mean scale), centred at 0, mm.
    faces : ndarray, shape (F, 3)
        Outward-oriented faces for ``shape0``.
    scorer : AppearanceScore
    n : int
        Hypotheses returned.
    prior_centre : ndarray, shape (3,), optional
        The training offset from the FOV centre; always among the hypotheses.
    side : {'none', 'left', 'right'}
        Paired organ: keep positions on that side of the midline (LPS x
        grows to the patient's left).
    scales : sequence of float
        Scales (relative to ``shape0``) tried when refining.

    Returns
    -------
    list of Hypothesis
    """
    extent = float(np.linalg.norm(shape0.max(0) - shape0.min(0)))
    score = _candidate_score(shape0, faces, scorer)
    # profiles tolerate a misplacement of half a step (their search); the
    # region score only its band, so it needs the finer grid
    if scorer.kind == "profile":
        step = max(extent / 6.0, 2.0 * float(min(vol.spacing)))
        cands = grid_centres(vol, step)
    else:
        # the region score tolerates only its band of misplacement: a dense
        # matched filter finds its peaks
        step = max(extent / 10.0, 2.0 * float(min(vol.spacing)))
        cands, sc = region_score_map(vol, shape0, faces, scorer)
    if side in ("left", "right"):
        mid = body_midline_x(vol, scorer.norm)
        keep = cands[:, 0] > mid if side == "left" else cands[:, 0] < mid
        if keep.any():
            cands = cands[keep]
            if scorer.kind != "profile":
                sc = sc[keep]
    if len(cands) == 0:
        return [] if prior_centre is None else [Hypothesis(
            np.asarray(prior_centre, float), 1.0, 0.0, "prior")]
    if scorer.kind == "profile":
        sc = score(cands, search=0.5 * step)
    hyps = _refined(cands, sc, score, step, scales, n, 0.25 * extent, "search")
    if prior_centre is not None:
        p = np.asarray(prior_centre, float)
        ps = float(score(p[None], 1.0, search=0.25 * step)[0])
        if all(np.linalg.norm(h.centre - p) >= float(min(vol.spacing)) for h in hyps):
            hyps.append(Hypothesis(p, 1.0, ps, "prior"))
    hyps.sort(key=lambda h: -h.score)
    return hyps


def local_placements(vol, shape0, faces, scorer, centre, radius_mm, n=3, scales=(1.0,),
                     source="near start"):
    """Candidate positions of ``shape0`` near ``centre`` (a seed, or the centre of
    a starting surface), best first: a grid within ``radius_mm`` of it scored as
    :func:`find_placements` scores the whole field of view, the best refined.

    Parameters
    ----------
    vol : Volume
    shape0 : ndarray, shape (N, 3)
        The surface placed, centred at 0, mm.
    faces : ndarray, shape (F, 3)
        Outward-oriented faces for ``shape0``.
    scorer : AppearanceScore
    centre : ndarray, shape (3,)
        Where the search is centred (LPS mm).
    radius_mm : float
        How far from ``centre`` positions are tried (0: none).
    n : int
        Hypotheses returned, at least a tenth of the surface's extent apart.
    scales : sequence of float
        Scales (relative to ``shape0``) tried when refining.
    source : str
        The hypotheses' ``source``.

    Returns
    -------
    list of Hypothesis
    """
    extent = float(np.linalg.norm(shape0.max(0) - shape0.min(0)))
    step = max(extent / 10.0, 2.0 * float(min(vol.spacing)))
    k = int(radius_mm // step)
    if k < 1 or n < 1:
        return []
    rel = np.stack(np.meshgrid(*[np.arange(-k, k + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    rel = rel[np.linalg.norm(rel, axis=1) <= radius_mm / step] * step
    cands = np.asarray(centre, float) + rel
    score = _candidate_score(shape0, faces, scorer)
    return _refined(cands, score(cands, search=0.5 * step), score, step, scales, n,
                    0.1 * extent, source)


def _candidate_score(shape0, faces, scorer):
    """``score(centres, scale=1, search=0, slack)``: the appearance score of
    ``shape0`` (a fixed subset of its vertices) scaled and moved to each centre."""
    idx = np.linspace(0, len(shape0) - 1, min(N_SCORE_VERTICES, len(shape0))).astype(int)
    normals0 = Surface(shape0, faces).vertex_normals()[idx]
    v0 = shape0[idx]

    def score(centres, s=1.0, search=0.0, slack=None):
        out = np.empty(len(centres))
        for a in range(0, len(centres), 512):        # bounded memory
            c = centres[a:a + 512]
            out[a:a + 512] = scorer.per_candidate(s * v0[None] + c[:, None], np.broadcast_to(
                normals0, (len(c), *normals0.shape)), idx, search, slack)
        return out

    return score


def _refined(cands, sc, score, step, scales, n, min_dist, source):
    """The best of the coarse candidates ``cands`` (scores ``sc``, ``step`` mm
    apart), each refined on 3x3x3 grids at half and quarter step over the
    ``scales``: up to ``n`` :class:`Hypothesis`, at least ``min_dist`` mm apart."""
    best = [(cands[i], 1.0, sc[i]) for i in _distinct(cands, sc, N_COARSE_KEEP, 0.5 * step)]
    rel = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    # a candidate's smoothed region also holds its finer grid (a quarter step
    # further): one smoothing per candidate, not one per grid and scale
    slack = 0.25 * step
    refined = []
    for c, s, _ in best:
        for h in (0.5 * step, 0.25 * step):
            local = c + rel * h
            # the largest scale first: its region holds the smaller ones
            by_scale = {s2: score(local, s2, search=0.5 * h, slack=slack)
                        for s2 in sorted(scales, reverse=True)}
            top = (c, s, -np.inf)
            for s2 in scales:
                ls = by_scale[s2]
                i = int(np.argmax(ls))
                if ls[i] > top[2]:
                    top = (local[i], s2, ls[i])
            c, s = top[0], top[1]
        refined.append(top)
    cs = np.array([r[0] for r in refined])
    ss = np.array([r[2] for r in refined])
    return [Hypothesis(cs[i], float(refined[i][1]), float(ss[i]), source)
            for i in _distinct(cs, ss, n, min_dist)]
