"""The voxels along a fitted surface, decided one by one.

A fitted surface is smooth; a manual label is not. On the hippocampus
validation split nearly every wrong voxel of a fit lies next to the fitted
boundary (deciding only the voxels within 1 voxel of it by the reference
would lift Dice from 0.882 to 0.979), so after the fit each voxel within
:data:`BAND_VOX` voxels of it is decided again by a gradient-boosted classifier of
its appearance and of its distance to the fitted surface.

* :func:`band_features`: the features of the band voxels of a label and its
  surface (:data:`FEATURES`): signed distances to the surface (mm) and to the
  label's boundary (voxels), the intensity normalised by this case's own
  inside and outside, smoothed at two scales, its 3x3x3 statistics, the
  derivative along the surface normal and samples along the normal. None of
  them depends on how the array is stored (axis order or flips).
* :class:`VoxelClassifier`: the boosted trees as plain arrays (the model file
  stays pickle-free), evaluated with NumPy; :meth:`VoxelClassifier.refine`
  re-decides a label's band.
* :func:`learn_voxel_classifier`: trained at model building from the training
  images and labels. The surfaces it learns from are the training surfaces
  moved by smooth random displacements of :data:`PERTURB_MM` mm, as a fit is
  (no model fits of the training images are needed). Needs scikit-learn
  (``HistGradientBoostingClassifier``); segmentation does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..mesh import Surface, mesh_edges, signed_distance, voxelize

#: voxels whose distance to the label's other side is at most this (voxels) are decided
#: again. With PERTURB_MM, chosen on the hippocampus validation split (Dice mean / min):
#: 1.5 and 0.6 mm 0.8994 / 0.8152; 2.0, 0.6: 0.8998 / 0.8116; 2.5, 0.6: 0.8991 / 0.8145;
#: **2.5, 0.9: 0.8987 / 0.8357**; 3.0, 0.9: 0.8978 / 0.8303; 2.5, 1.2: 0.8951 / 0.8318.
#: A wider band reaches a fit's larger errors: the worst case gains, the mean holds.
BAND_VOX = 2.5
#: samples along the outward normal, mm
PROFILE_MM = (-2.0, -1.5, -1.0, -0.5, 0.5, 1.0, 1.5, 2.0)
FEATURES = ("distance_to_surface_mm", "distance_to_label_boundary_vox", "intensity",
            "intensity_smoothed_1mm", "intensity_smoothed_2mm", "derivative_along_normal",
            "neighbourhood_mean", "neighbourhood_sd", "neighbourhood_min", "neighbourhood_max",
            *(f"along_normal_{t:+g}mm" for t in PROFILE_MM))
#: training surfaces are displaced by smooth random fields of this SD (mm); chosen with
#: BAND_VOX on the hippocampus validation split
PERTURB_MM = 0.9
#: width (mm) of each bump of the random displacement, and bumps per 1000 mm^2 of surface
PERTURB_WIDTH_MM = 6.0
PERTURB_DENSITY = 6.0
#: training band voxels in all (each case contributes an equal share at most)
MAX_VOXELS = 300_000
#: format of the features and trees in a model file
VERSION = 1
#: the band's log-odds are smoothed by a Gaussian of this SD (voxels along the finest
#: axis; the same width in mm along coarser ones) before they decide: the trees decide
#: each voxel alone, so a lone voxel against all its neighbours is more often wrong than
#: right. Chosen on the hippocampus validation split (38 cases, Dice mean / min):
#: 0 (off) 0.8987 / 0.8358; 0.3 0.8989 / 0.8360; 0.4 0.9005 / 0.8372;
#: **0.5 0.9016 / 0.8376**; 0.6 0.9013 / 0.8361; 0.7 0.8999 / 0.8331; 1.0 0.8933 / 0.8307
#: (27 cases gain more than 0.001, 3 lose, by 0.0026 at most)
SMOOTH_VOX = 0.5
#: passes of :meth:`VoxelClassifier.refine`: a later pass decides the band of the label
#: the pass before left (its distances, and the smoothing's neighbours, are those of
#: that label), and may change only voxels of the first pass's band, so that the
#: boundary still moves at most BAND_VOX voxels from the fitted surface's label. Chosen on
#: the hippocampus validation split (38 cases, the committed classifier, Dice mean / min
#: / second worst): **1 0.9016 / 0.8376 / 0.8628**; 2 0.9017 / 0.8459 / 0.8651; 3
#: 0.9017 / 0.8480 / 0.8652. Letting the later passes reach beyond the first band
#: (0.9019 / 0.8486 with 2) grew the demo phantom's label into the bright leak beside
#: it, further with every pass (Dice 0.980 / 0.966 / 0.949 with 1 / 2 / 3 passes; 0.980 /
#: 0.980 / 0.980 confined): the shape prior's reach is the band's, never more
PASSES = 2
#: log-odds given to the voxels outside the band while smoothing: inside the label
#: +this, outside -this (1, 2 and 4 within 0.0007 of each other on that split)
OUTSIDE_BAND_LOGODDS = 2.0


def _surface_points(verts, faces):
    """Points on the surface (vertices, face centroids, edge midpoints) and unit
    outward normals there."""
    n = Surface(verts, faces).vertex_normals()
    e = mesh_edges(faces, len(verts))
    P = np.concatenate([verts, verts[faces].mean(1), verts[e].mean(1)])
    N = np.concatenate([n, n[faces].mean(1), n[e].mean(1)])
    N /= np.maximum(np.linalg.norm(N, axis=1, keepdims=True), 1e-12)
    return P, N


def _crop_box(vol, label, verts):
    """Index box (zyx lo, hi) around the label and the surface, with room for the
    smoothing and the samples along the normals."""
    sp = np.asarray(vol.spacing, dtype=float)[::-1]
    pad = np.ceil(6.0 / sp).astype(int) + 2
    pts = [np.argwhere(label)] if label.any() else []
    if len(verts):
        pts.append(np.round(vol.physical_to_index(verts)[:, ::-1]).astype(int))
    idx = np.concatenate(pts)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + 1 + pad, np.array(label.shape))
    return lo, hi


def band_features(vol, label, verts, faces):
    """Features of the voxels next to the boundary of ``label``.

    Parameters
    ----------
    vol : Volume
        The image (any intensity scale: each case is normalised by its own
        inside and outside).
    label : ndarray of bool or uint8, shape vol.array.shape
        The fitted mask (``voxelize`` of the surface).
    verts : ndarray, shape (N, 3)
        The fitted surface, LPS mm, outward-oriented ``faces``.
    faces : ndarray, shape (F, 3)

    Returns
    -------
    X : ndarray, shape (P, len(FEATURES)), float64
    index : tuple of 3 ndarray
        The P band voxels (z, y, x indices into ``vol.array``).
    """
    from scipy import ndimage as ndi
    from scipy.spatial import cKDTree

    label = np.asarray(label).astype(bool)
    nf = len(FEATURES)
    if not label.any():
        return np.zeros((0, nf)), tuple(np.zeros((3, 0), int))
    lo, hi = _crop_box(vol, label, verts)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    m = label[sl]
    a = np.asarray(vol.array[sl], dtype=np.float64)
    d = signed_distance(m)              # voxels: >= 1 outside, <= -1 inside
    band = np.abs(d) <= BAND_VOX
    core = (d >= -3) & (d <= -1)
    shell = (d >= 1) & (d <= 3)
    if not core.any() or not shell.any() or not band.any():
        return np.zeros((0, nf)), tuple(np.zeros((3, 0), int))
    q10, q90 = np.percentile(a[core | shell], [10, 90])
    z = (a - np.median(a[core])) / max(q90 - q10, 1e-6 * max(abs(q90), 1.0))
    sp = np.asarray(vol.spacing, dtype=float)[::-1]          # zyx, mm
    zs1 = ndi.gaussian_filter(z, 1.0 / sp, mode="nearest")
    zs2 = ndi.gaussian_filter(z, 2.0 / sp, mode="nearest")
    mean = ndi.uniform_filter(z, 3, mode="nearest")
    sd = np.sqrt(np.maximum(ndi.uniform_filter(z * z, 3, mode="nearest") - mean ** 2, 0.0))
    zmin = ndi.minimum_filter(z, 3, mode="nearest")
    zmax = ndi.maximum_filter(z, 3, mode="nearest")
    grad = np.gradient(ndi.gaussian_filter(z, 0.7 / sp, mode="nearest"))   # per voxel, zyx
    idx = np.argwhere(band)                                   # crop zyx
    M = vol.index_to_physical_matrix                          # xyz index -> LPS mm
    Minv = np.linalg.inv(M)
    phys = vol.index_to_physical((idx + lo)[:, ::-1])
    P, N = _surface_points(np.asarray(verts, dtype=float), np.asarray(faces))
    _, j = cKDTree(P).query(phys)
    phi = np.einsum("ij,ij->i", phys - P[j], N[j])
    n_idx = (N[j] @ Minv.T)[:, ::-1]                          # zyx index steps per mm
    g_idx = np.stack([g[band] for g in grad], axis=1)[:, ::-1]   # d/d(x, y, z index)
    g_phys = g_idx @ Minv                                     # d/d(LPS mm)
    dn = np.einsum("ij,ij->i", g_phys, N[j])
    prof = [ndi.map_coordinates(z, (idx + t * n_idx).T, order=1, mode="nearest")
            for t in PROFILE_MM]
    X = np.column_stack([phi, d[band], z[band], zs1[band], zs2[band], dn, mean[band], sd[band],
                         zmin[band], zmax[band], *prof])
    return X, tuple((idx + lo).T)


@dataclass
class VoxelClassifier:
    """Boosted trees that decide the band voxels of a fitted label.

    Node arrays hold every tree, each tree's nodes after its root and every
    child after its parent; a leaf has ``left == right == -1``. The decision is
    ``baseline + sum of the leaf values`` (log-odds of inside).

    Attributes
    ----------
    feature : ndarray of int, shape (K,)
    threshold : ndarray of float, shape (K,)
        A sample goes left when ``X[feature] <= threshold``.
    left, right : ndarray of int, shape (K,)
    value : ndarray of float, shape (K,)
        Leaf values (log-odds).
    roots : ndarray of int, shape (T,)
    baseline : float
    info : dict
        How it was trained (cases, voxels, displacement, agreement).
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    baseline: float
    info: dict

    ARRAYS = ("feature", "threshold", "left", "right", "value", "roots")

    def check(self):
        """Raise ValueError unless the arrays form valid trees over :data:`FEATURES`
        (what a model file must hold before it is evaluated)."""
        K = len(self.feature)
        if any(np.ndim(getattr(self, k)) != 1 for k in self.ARRAYS):
            raise ValueError("voxel classifier arrays must be one-dimensional")
        if not (len(self.threshold) == len(self.left) == len(self.right) == len(self.value) == K):
            raise ValueError("voxel classifier node arrays differ in length")
        if K == 0 or len(self.roots) == 0:
            raise ValueError("voxel classifier has no trees")
        if not (np.all(np.isfinite(self.threshold)) and np.all(np.isfinite(self.value))
                and np.isfinite(self.baseline)):
            raise ValueError("voxel classifier holds NaN or infinite values")
        leaf = self.left < 0
        if np.any(leaf != (self.right < 0)):
            raise ValueError("voxel classifier node with one child")
        ends = np.append(self.roots[1:], K)
        if (self.roots[0] != 0 or np.any(np.diff(self.roots) <= 0) or self.roots[-1] >= K):
            raise ValueError("voxel classifier tree roots out of order")
        tree = np.searchsorted(self.roots, np.arange(K), side="right") - 1
        i = np.arange(K)
        inner = ~leaf
        for child in (self.left, self.right):
            if np.any(inner & ((child <= i) | (child >= ends[tree]))):
                raise ValueError("voxel classifier child outside its tree")
        if np.any(inner & ((self.feature < 0) | (self.feature >= len(FEATURES)))):
            raise ValueError("voxel classifier feature index out of range")

    def decision(self, X, backend=None):
        """Log-odds of inside for each row of ``X`` (P, len(FEATURES)), on
        ``backend`` (the ``tree_ensemble`` kernel)."""
        from ..backend import kernel, resolve_backend

        walk = kernel("tree_ensemble", resolve_backend(backend))
        return self.baseline + walk(X, self.feature, self.threshold, self.left, self.right,
                                    self.value, self.roots)

    def refine(self, vol, label, verts, faces, backend=None, smooth_vox=SMOOTH_VOX,
               passes=PASSES):
        """``label`` with its band voxels decided by the classifier (trees
        evaluated on ``backend``; log-odds smoothed over ``smooth_vox`` voxels by
        :func:`smoothed_decision`, 0: each voxel alone), kept in one piece: the
        largest connected component (26-neighbourhood), holes filled. (On the
        hippocampus validation split the decisions left 0.1 islands and 0.5 hole
        voxels per case; removing them moved Dice by 6e-5.) Each of ``passes``
        (:data:`PASSES`) decides the band of the label the pass before left;
        a pass that changes nothing ends them. Later passes change only voxels
        of the first pass's band: the boundary moves at most :data:`BAND_VOX`
        voxels from the given label's.

        Returns
        -------
        label : ndarray of uint8, shape vol.array.shape
        changed : int
            Voxels whose label differs from the given ``label``.
        """
        from .._validation import check_number

        passes = check_number("passes", passes, 1, integer=True)
        start = np.asarray(label, dtype=np.uint8)
        out, lo, hi, first = start.copy(), None, None, None
        for _ in range(passes):
            out, box, band = self._refine_once(vol, out, verts, faces, backend, smooth_vox,
                                               start, first)
            if first is None:
                first = band
            if box is None:                 # nothing moved: a further pass would repeat it
                break
            b0, b1 = np.array([b.start for b in box]), np.array([b.stop for b in box])
            lo = b0 if lo is None else np.minimum(lo, b0)
            hi = b1 if hi is None else np.maximum(hi, b1)
        if lo is None:
            return out, 0
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))    # every change lies in it
        return out, int(np.count_nonzero(out[sl] != start[sl]))

    def _refine_once(self, vol, label, verts, faces, backend, smooth_vox, start, first):
        """One pass of :meth:`refine` on ``label``: the new label, the index box
        (slices) it differs from ``label`` in (None where it does not differ) and
        this pass's band (flat indices). With ``first`` (the first pass's band),
        band voxels outside it keep their value in ``start``."""
        from scipy import ndimage as ndi

        X, index = band_features(vol, label, verts, faces)
        out = np.asarray(label, dtype=np.uint8).copy()
        band = np.ravel_multi_index(index, out.shape)
        if not len(X):
            return out, None, band
        dec = self.decision(X, backend)
        if smooth_vox > 0:
            dec = smoothed_decision(dec, index, label, vol.spacing, smooth_vox)
        new = (dec > 0).astype(np.uint8)
        if first is not None:
            beyond = ~np.isin(band, first, assume_unique=True)
            new[beyond] = start.flat[band[beyond]]
        out[index] = new
        # the band holds every boundary voxel of the label: its box holds the label
        idx = np.stack(index, axis=1)
        sl = tuple(slice(max(a - 1, 0), b + 2) for a, b in zip(idx.min(0), idx.max(0)))
        sub = out[sl] > 0
        comp, n = ndi.label(sub, structure=np.ones((3, 3, 3)))
        if n > 1:
            sub = comp == (int(np.argmax(np.bincount(comp.ravel())[1:])) + 1)
        out[sl] = ndi.binary_fill_holes(sub)
        return out, (sl if np.any(out[sl] != np.asarray(label)[sl]) else None), band

    def to_arrays(self):
        return {f"voxel_{k}": getattr(self, k) for k in self.ARRAYS}

    def to_meta(self):
        return {"version": VERSION, "features": list(FEATURES), "band_vox": BAND_VOX,
                "baseline": float(self.baseline), **self.info}

    @classmethod
    def from_parts(cls, arrays, meta):
        """Inverse of :meth:`to_arrays`/:meth:`to_meta`; checked (:meth:`check`)."""
        if not isinstance(meta, dict) or meta.get("version") != VERSION \
                or list(meta.get("features", ())) != list(FEATURES):
            raise ValueError("voxel classifier of another version (rebuild the model)")
        ints = {k: np.asarray(arrays[f"voxel_{k}"]) for k in ("feature", "left", "right", "roots")}
        if any(a.dtype.kind not in "iu" for a in ints.values()):
            raise ValueError("voxel classifier index arrays are not integers")
        try:
            baseline = float(meta["baseline"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("voxel classifier without a baseline") from None
        info = {k: v for k, v in meta.items()
                if k not in ("version", "features", "band_vox", "baseline")}
        clf = cls(ints["feature"].astype(np.int64), np.asarray(arrays["voxel_threshold"], float),
                  ints["left"].astype(np.int64), ints["right"].astype(np.int64),
                  np.asarray(arrays["voxel_value"], float), ints["roots"].astype(np.int64),
                  baseline, info)
        clf.check()
        return clf


def smoothed_decision(dec, index, label, spacing, sigma_vox=SMOOTH_VOX,
                      outside=OUTSIDE_BAND_LOGODDS):
    """Band log-odds smoothed over their neighbours.

    Parameters
    ----------
    dec : ndarray, shape (P,)
        Log-odds of inside of the band voxels ``index``.
    index : tuple of 3 ndarray, each shape (P,)
        The band voxels (z, y, x indices into ``label``).
    label : ndarray, shape (Z, Y, X)
        The label whose band they are; voxels outside the band count as
        ``+outside`` inside it and ``-outside`` outside it.
    spacing : sequence of 3 float
        Voxel size (x, y, z), mm.
    sigma_vox : float
        Gaussian SD in voxels along the finest axis; along each axis
        ``sigma_vox * min(spacing) / spacing`` voxels (the same width in mm).

    Returns
    -------
    ndarray, shape (P,)
        The smoothed log-odds of the same voxels.
    """
    from scipy import ndimage as ndi

    dec = np.asarray(dec, dtype=np.float64)
    if not len(dec):
        return dec
    sp = np.asarray(spacing, dtype=float)[::-1]              # zyx
    sigma = sigma_vox * sp.min() / sp
    pad = int(np.ceil(4.0 * sigma.max())) + 1                # the filter's reach
    idx = np.stack(index, axis=1)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + 1 + pad, np.asarray(label).shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    L = np.where(np.asarray(label)[sl] > 0, float(outside), -float(outside))
    at = tuple((idx - lo).T)
    L[at] = dec
    return ndi.gaussian_filter(L, sigma, mode="nearest")[at]


def perturbed_surface(verts, faces, rng, sd_mm=PERTURB_MM):
    """``verts`` moved along their normals by a smooth random field: Gaussian
    bumps :data:`PERTURB_WIDTH_MM` wide with N(0, ``sd_mm``) heights, plus a
    global offset of a quarter of that SD (what a fit's error looks like)."""
    s = Surface(verts, faces)
    n = s.vertex_normals()
    k = max(4, int(round(PERTURB_DENSITY * s.area() / 1000.0)))
    centres = verts[rng.choice(len(verts), k)]
    heights = rng.normal(0.0, sd_mm, k)
    r2 = ((verts[:, None, :] - centres[None]) ** 2).sum(-1)
    disp = np.exp(-r2 / (2 * PERTURB_WIDTH_MM ** 2)) @ heights + rng.normal(0.0, sd_mm / 4)
    return verts + disp[:, None] * n


def learn_voxel_classifier(cases, seed=0, sd_mm=PERTURB_MM, max_iter=200, n_cases=None,
                           max_voxels=MAX_VOXELS):
    """Train the band classifier from training images, labels and surfaces.

    Parameters
    ----------
    cases : iterable of (Volume, ndarray of bool, ndarray (N, 3), ndarray (F, 3))
        Image, reference mask on its grid, and a surface of the organ (LPS mm,
        outward faces) on that image.
    seed : int
        Random state of the displacements and of the boosting.
    sd_mm : float
        SD of the random displacements (mm).
    max_iter : int
        Boosting iterations at most (early stopping on a held-out tenth).
    n_cases : int, optional
        How many ``cases`` there are (when it is a generator): each contributes
        at most ``max_voxels / n_cases`` voxels, drawn at random.
    max_voxels : int
        Training voxels in all, about.

    Returns
    -------
    VoxelClassifier
    """
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError:
        raise ValueError("learning the voxel classifier needs scikit-learn "
                         "(pip install scikit-learn), or build without it") from None

    rng = np.random.default_rng(seed)
    if n_cases is None and hasattr(cases, "__len__"):
        n_cases = len(cases)
    per_case = max(1000, int(max_voxels) // max(int(n_cases or 1), 1))
    Xs, ys = [], []
    for vol, mask, verts, faces in cases:
        v = perturbed_surface(np.asarray(verts, float), np.asarray(faces), rng, sd_mm)
        X, index = band_features(vol, voxelize(v, faces, vol), v, faces)
        if len(X) > per_case:
            keep = np.sort(rng.choice(len(X), per_case, replace=False))
            X, index = X[keep], tuple(i[keep] for i in index)
        Xs.append(X)
        ys.append(np.asarray(mask, bool)[index])
    if len(Xs) < 3 or sum(len(x) for x in Xs) < 100:
        raise ValueError(f"{len(Xs)} training cases give too few boundary voxels to learn from")
    X, y = np.concatenate(Xs), np.concatenate(ys)
    if y.all() or not y.any():
        raise ValueError("every training boundary voxel has the same label: nothing to learn")
    clf = HistGradientBoostingClassifier(max_iter=max_iter, early_stopping=True,
                                         random_state=seed).fit(X, y)
    out = _export(clf, X[rng.choice(len(X), min(len(X), 5000), replace=False)])
    out.info = {"n_cases": len(Xs), "n_voxels": int(len(X)), "displacement_sd_mm": sd_mm,
                "n_trees": int(len(out.roots)), "seed": int(seed),
                "training_agreement": float(np.mean((out.decision(X) > 0) == y)),
                "reference_agreement_before": float(np.mean((X[:, 1] < 0) == y))}
    return out


def _export(clf, X_check):
    """The trees of a fitted ``HistGradientBoostingClassifier`` as node arrays,
    checked against its own ``decision_function`` on ``X_check``."""
    feat, thr, left, right, val, roots = [], [], [], [], [], []
    n = 0
    for (pred,) in clf._predictors:          # binary: one tree per iteration
        nodes = pred.nodes
        if "is_categorical" in nodes.dtype.names and np.any(nodes["is_categorical"]):
            raise ValueError("categorical splits are not supported")
        roots.append(n)
        # renumber breadth first from the root: children after parents
        order, k = [0], 0
        while k < len(order):
            i = order[k]
            if not nodes["is_leaf"][i]:
                order += [int(nodes["left"][i]), int(nodes["right"][i])]
            k += 1
        new = {old: n + j for j, old in enumerate(order)}
        for old in order:
            nd = nodes[old]
            leaf = bool(nd["is_leaf"])
            feat.append(0 if leaf else int(nd["feature_idx"]))
            thr.append(0.0 if leaf else float(nd["num_threshold"]))
            left.append(-1 if leaf else new[int(nd["left"])])
            right.append(-1 if leaf else new[int(nd["right"])])
            val.append(float(nd["value"]) if leaf else 0.0)
        n += len(order)
    out = VoxelClassifier(np.array(feat), np.array(thr), np.array(left), np.array(right),
                          np.array(val), np.array(roots), 0.0, {})
    ref = clf.decision_function(X_check)
    trees = out.decision(X_check)           # the baseline is 0 so far: the trees' sum
    out.baseline = float(np.median(ref - trees))
    err = float(np.max(np.abs(trees + out.baseline - ref)))
    if not err < 1e-6 * max(1.0, float(np.max(np.abs(ref)))):
        raise ValueError(f"exported trees disagree with scikit-learn's (max {err:.2g}); "
                         "unsupported scikit-learn version?")
    out.check()
    return out
