"""Weighted Procrustes alignment (rigid, similarity, affine) and GPA."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("rigid", "similarity", "affine")


@dataclass(frozen=True)
class Transform:
    """Linear-plus-translation map ``p -> p @ linear.T + translation``.

    Attributes
    ----------
    linear : ndarray, shape (d, d)
        ``scale * rotation`` for rigid/similarity, a general matrix for affine.
    translation : ndarray, shape (d,)
        In the units of the target points (e.g. mm).
    kind : str
        One of ``'rigid'``, ``'similarity'``, ``'affine'``, ``'identity'``.
    """

    linear: np.ndarray
    translation: np.ndarray
    kind: str = "similarity"

    @classmethod
    def identity(cls, ndim: int) -> "Transform":
        return cls(np.eye(ndim), np.zeros(ndim), "identity")

    @property
    def ndim(self) -> int:
        return self.linear.shape[0]

    @property
    def scale(self) -> float:
        """Isotropic scale (geometric mean of singular values for affine)."""
        return float(abs(np.linalg.det(self.linear)) ** (1.0 / self.ndim))

    @property
    def rotation(self) -> np.ndarray:
        """Closest rotation (polar factor) of :attr:`linear`."""
        u, _, vt = np.linalg.svd(self.linear)
        return u @ vt

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map points of shape ``(N, d)`` (a new array)."""
        if not self.translation.any() and np.array_equal(self.linear, np.eye(self.ndim)):
            return np.array(points, dtype=float)       # the identity: a copy, no product
        return np.asarray(points, dtype=float) @ self.linear.T + self.translation

    __call__ = apply

    def inverse(self) -> "Transform":
        inv = np.linalg.inv(self.linear)
        return Transform(inv, -inv @ self.translation, self.kind)

    def compose(self, other: "Transform") -> "Transform":
        """``self ∘ other`` (apply ``other`` first)."""
        return Transform(
            self.linear @ other.linear,
            self.linear @ other.translation + self.translation,
            self.kind if self.kind == other.kind else "affine",
        )

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "linear": self.linear.tolist(),
            "translation": self.translation.tolist(),
        }


def _check_points(a, name):
    a = np.asarray(a, dtype=float)
    if a.ndim != 2 or a.shape[1] not in (2, 3):
        raise ValueError(f"{name} must have shape (N, 2) or (N, 3), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    return a


def _check_weights(weights, n):
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=float)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and >= 0")
    return w


def procrustes(source, target, weights=None, *, kind="similarity", reflection=False):
    """Find the transform that best maps ``source`` onto ``target``.

    Minimises ``sum_i w_i ||T(source_i) - target_i||^2`` in closed form
    (weighted Umeyama for rigid/similarity, weighted least squares for affine).

    Parameters
    ----------
    source, target : array_like, shape (N, d)
        Corresponding points, d = 2 or 3, in physical units (e.g. mm).
    weights : array_like, shape (N,), optional
        Non-negative per-point weights; zero removes a point.
    kind : {'rigid', 'similarity', 'affine'}
    reflection : bool
        Allow an improper rotation (rigid/similarity only).

    Returns
    -------
    Transform
        ``T`` with ``T.apply(source) ≈ target``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {KINDS}")
    src = _check_points(source, "source")
    dst = _check_points(target, "target")
    if src.shape != dst.shape:
        raise ValueError(f"source {src.shape} and target {dst.shape} differ in shape")
    w = _check_weights(weights, src.shape[0])
    d = src.shape[1]
    need = {"rigid": 2, "similarity": 2, "affine": d + 1}[kind]
    if np.count_nonzero(w) < need:
        raise ValueError(
            f"{kind} alignment needs at least {need} points with weight > 0, "
            f"got {np.count_nonzero(w)}"
        )
    wsum = w.sum()
    mu_s = w @ src / wsum
    mu_t = w @ dst / wsum
    xs = src - mu_s
    xt = dst - mu_t
    if kind == "affine":
        sw = np.sqrt(w)[:, None]
        a_t, *_ = np.linalg.lstsq(xs * sw, xt * sw, rcond=None)
        lin = a_t.T
        return Transform(lin, mu_t - lin @ mu_s, "affine")
    cov = (xt * w[:, None]).T @ xs / wsum
    u, sv, vt = np.linalg.svd(cov)
    sign = np.ones(d)
    if not reflection and np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = (u * sign) @ vt
    if kind == "similarity":
        var_s = float(w @ np.einsum("ij,ij->i", xs, xs) / wsum)
        if var_s <= 0:
            raise ValueError("source points are all identical: scale is undefined")
        scale = float(sv @ sign) / var_s
    else:
        scale = 1.0
    lin = scale * rot
    return Transform(lin, mu_t - lin @ mu_s, kind)


def procrustes_many(sources, target, weights=None, *, kind="similarity", reflection=False):
    """:func:`procrustes` of every shape in ``sources`` onto one ``target``, vectorised.

    Parameters
    ----------
    sources : array_like, shape (M, N, d)
        M shapes of N points corresponding to ``target``'s (physical units, e.g. mm).
    target : array_like, shape (N, d)
    weights : array_like, shape (N,), optional
        Non-negative per-point weights, shared by all shapes.
    kind : {'rigid', 'similarity', 'affine'}
        'affine' aligns one shape at a time.
    reflection : bool

    Returns
    -------
    list of Transform
        ``result[m]`` equals ``procrustes(sources[m], target, weights, kind=kind)``
        to rounding; :func:`apply_many` maps the shapes with them.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {KINDS}")
    src = np.asarray(sources, dtype=float)
    if src.ndim != 3 or src.shape[2] not in (2, 3):
        raise ValueError(f"sources must have shape (M, N, 2|3), got {src.shape}")
    if not np.all(np.isfinite(src)):
        raise ValueError("sources contain NaN or infinite coordinates")
    dst = _check_points(target, "target")
    if src.shape[1:] != dst.shape:
        raise ValueError(f"sources {src.shape} and target {dst.shape} differ in shape")
    if kind == "affine":
        return [procrustes(s, dst, weights, kind=kind) for s in src]
    w = _check_weights(weights, dst.shape[0])
    if np.count_nonzero(w) < 2:
        raise ValueError(f"{kind} alignment needs at least 2 points with weight > 0, "
                         f"got {np.count_nonzero(w)}")
    M, _, d = src.shape
    wsum = w.sum()
    wn = w / wsum
    mu_s = src.transpose(0, 2, 1) @ wn
    mu_t = wn @ dst
    xt = (dst - mu_t) * wn[:, None]
    # cov[m] = sum_n w_n xt_n xs_n^T (the source centroid drops out against the
    # centred target): one small product per shape, without copying the stack
    cov = xt.T[None] @ src
    u, sv, vt = np.linalg.svd(cov)
    sign = np.ones((M, d))
    if not reflection:
        flip = np.linalg.det(u) * np.linalg.det(vt) < 0
        sign[flip, -1] = -1.0
    rot = (u * sign[:, None, :]) @ vt
    if kind == "similarity":
        var_s = np.einsum("mnd,mnd,n->m", src, src, wn) - np.einsum("md,md->m", mu_s, mu_s)
        if np.any(var_s <= 0):
            raise ValueError("source points are all identical: scale is undefined")
        scale = np.einsum("md,md->m", sv, sign) / var_s
    else:
        scale = np.ones(M)
    lin = scale[:, None, None] * rot
    trans = mu_t - np.einsum("mab,mb->ma", lin, mu_s)
    return [Transform(lin[m], trans[m], kind) for m in range(M)]


def apply_many(transforms, shapes):
    """``np.stack([t.apply(s) for t, s in zip(transforms, shapes)])`` in one pass
    (shapes (M, N, d) -> (M, N, d))."""
    x = np.asarray(shapes, dtype=float)
    lin = np.stack([t.linear for t in transforms])
    trans = np.stack([t.translation for t in transforms])
    return x @ lin.transpose(0, 2, 1) + trans[:, None, :]


def _mean_applied(transforms, shapes):
    """``apply_many(transforms, shapes).mean(0)`` without the (M, N, d) stack."""
    acc = np.zeros(shapes.shape[1:])
    for t, s in zip(transforms, shapes):
        acc += s @ t.linear.T
    acc /= len(shapes)
    acc += np.mean([t.translation for t in transforms], axis=0)
    return acc


def centroid_size(points, weights=None) -> float:
    """Root of the summed squared distances to the (weighted) centroid."""
    p = np.asarray(points, dtype=float)
    w = np.ones(len(p)) if weights is None else np.asarray(weights, dtype=float)
    c = w @ p / w.sum()
    return float(np.sqrt(w @ np.sum((p - c) ** 2, axis=1)))


@dataclass
class GPAResult:
    """Output of :func:`generalized_procrustes`.

    Attributes
    ----------
    aligned : ndarray, shape (M, N, d)
        Every shape mapped into the common frame.
    mean : ndarray, shape (N, d)
        Mean of the aligned shapes.
    transforms : list of Transform
        ``transforms[m].apply(shapes[m]) == aligned[m]``.
    n_iter : int
    converged : bool
    """

    aligned: np.ndarray
    mean: np.ndarray
    transforms: list
    n_iter: int
    converged: bool


def generalized_procrustes(shapes, weights=None, *, kind="similarity", max_iter=100,
                           tol=1e-10, size="mean"):
    """Generalized Procrustes analysis of corresponding shapes.

    Parameters
    ----------
    shapes : array_like, shape (M, N, d)
        M shapes of N corresponding points each.
    weights : array_like, shape (N,), optional
        Per-point weights used in every pairwise alignment.
    kind : {'rigid', 'similarity', 'affine'}
    max_iter : int
    tol : float
        Stop when the mean changes by less than ``tol`` times its size.
    size : {'mean', 'unit'}
        Centroid size of the common frame: the mean centroid size of the
        inputs (keeps physical units, e.g. mm) or 1.

    Returns
    -------
    GPAResult
    """
    x = np.asarray(shapes, dtype=float)
    if x.ndim != 3 or x.shape[2] not in (2, 3):
        raise ValueError(f"shapes must have shape (M, N, 2|3), got {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"GPA needs at least 2 shapes, got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        raise ValueError("shapes contain NaN or infinite coordinates")
    if size not in ("mean", "unit"):
        raise ValueError(f"size={size!r} is not 'mean' or 'unit'")
    w = _check_weights(weights, x.shape[1])
    wn = w / w.sum()
    cent = x.transpose(0, 2, 1) @ wn
    sizes = np.sqrt(np.maximum(np.einsum("mnd,mnd,n->m", x, x, wn)
                               - np.einsum("md,md->m", cent, cent), 0.0) * w.sum())
    if np.any(sizes <= 0):
        raise ValueError("a shape has zero size (all points identical)")
    target_size = float(sizes.mean()) if size == "mean" else 1.0

    def normalise(m):
        c = w @ m / w.sum()
        return (m - c) * (target_size / centroid_size(m, w))

    mean = normalise(x[0])
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        tfs = procrustes_many(x, mean, w, kind=kind)
        new_mean = _mean_applied(tfs, x)
        # fix the gauge: keep the mean centred, of fixed size, and oriented
        # like the previous mean
        new_mean = normalise(new_mean)
        if kind != "affine":
            new_mean = procrustes(new_mean, mean, w, kind="rigid").apply(new_mean)
        delta = np.sqrt(np.sum((new_mean - mean) ** 2)) / target_size
        mean = new_mean
        if delta < tol:
            converged = True
            break
    tfs = procrustes_many(x, mean, w, kind=kind)
    aligned = apply_many(tfs, x)
    return GPAResult(aligned, aligned.mean(axis=0), tfs, it, converged)
