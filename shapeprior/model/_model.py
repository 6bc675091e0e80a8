"""The shape model: aligned training shapes, mean, PCA, optional learned
dictionary, metadata; a versioned, pickle-free file format."""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..align import procrustes

FORMAT = "shapeprior-shape-model"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)


class ModelFormatError(ValueError):
    """The file is not a shapeprior model, or of an unsupported version."""


@dataclass
class ShapeModel:
    """Point-distribution model in correspondence.

    Attributes
    ----------
    shapes : ndarray, shape (M, N, 3)
        GPA-aligned training shapes (model frame, mm): the SSC dictionary.
    mean : ndarray, shape (N, 3)
    faces : ndarray, shape (F, 3)
        Triangles shared by all shapes.
    pca_components : ndarray, shape (r, 3N)
        Orthonormal modes of variation.
    pca_variances : ndarray, shape (r,)
        mm^2.
    atoms : ndarray, shape (k, N, 3) or None
        Learned (K-SVD / online) dictionary, if any.
    profile_mean, profile_var : ndarray, shape (N, L) or None
        Boundary appearance (normalised intensity profiles along the
        normals), when the model was built with training images.
    metadata : dict
        organ, side, n_vertices, sources (name + sha256), parameters,
        versions, per-shape fit quality, rejected shapes.
    """

    shapes: np.ndarray
    mean: np.ndarray
    faces: np.ndarray
    pca_components: np.ndarray
    pca_variances: np.ndarray
    atoms: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)
    profile_mean: np.ndarray | None = None
    profile_var: np.ndarray | None = None

    @property
    def n_vertices(self) -> int:
        return self.mean.shape[0]

    def ssc_dictionary(self, which="shapes", backend=None):
        """:class:`~shapeprior.ssc.ShapeDictionary` from the training shapes
        (``'shapes'``) or the learned atoms (``'atoms'``)."""
        from ..ssc import ShapeDictionary

        if which == "shapes":
            return ShapeDictionary(self.shapes, self.mean, backend=backend)
        if which == "atoms":
            if self.atoms is None:
                raise ValueError("this model has no learned dictionary (build with --atoms)")
            return ShapeDictionary(self.atoms, self.mean, backend=backend)
        raise ValueError(f"which={which!r} is not 'shapes' or 'atoms'")

    def save(self, path):
        save_model(self, path)


def pca_from_shapes(shapes, var_kept=0.98):
    """Mean and principal modes of aligned shapes (M, N, 3)."""
    M = shapes.shape[0]
    X = shapes.reshape(M, -1)
    mean = X.mean(0)
    _, s, vt = np.linalg.svd(X - mean, full_matrices=False)
    var = s ** 2 / max(M - 1, 1)
    keep = int(np.searchsorted(np.cumsum(var) / max(var.sum(), 1e-300), var_kept) + 1)
    keep = max(1, min(keep, len(var)))
    return mean.reshape(shapes.shape[1:]), vt[:keep], var[:keep]


def pca_reconstruct(model: ShapeModel, shape, weights=None, clamp=3.0, n_align=10):
    """ASM-style projection: similarity-align, weighted least-squares mode
    coefficients clamped to +-clamp standard deviations, in y's frame."""
    y = np.asarray(shape, dtype=float)
    s = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)
    w = np.repeat(s * s, 3)
    P = model.pca_components
    mu = model.mean.ravel()
    sd = np.sqrt(model.pca_variances)
    recon = model.mean
    for _ in range(n_align):
        T = procrustes(y, recon, s * s)
        z = T.apply(y).ravel()
        A = P.T * np.sqrt(w)[:, None]
        b, *_ = np.linalg.lstsq(A, (z - mu) * np.sqrt(w), rcond=None)
        b = np.clip(b, -clamp * sd, clamp * sd)
        new = (mu + b @ P).reshape(-1, 3)
        if np.allclose(new, recon, atol=1e-6):
            recon = new
            break
        recon = new
    T = procrustes(y, recon, s * s)
    return T.inverse().apply(recon)


def save_model(model: ShapeModel, path):
    """Write ``model`` as a compressed NPZ (no pickle) with JSON metadata,
    atomically (temporary file + rename)."""
    p = Path(path)
    meta = dict(model.metadata)
    meta["format"] = FORMAT
    meta["format_version"] = FORMAT_VERSION
    arrays = {
        "shapes": np.asarray(model.shapes, dtype=np.float64),
        "mean": np.asarray(model.mean, dtype=np.float64),
        "faces": np.asarray(model.faces, dtype=np.int64),
        "pca_components": np.asarray(model.pca_components, dtype=np.float64),
        "pca_variances": np.asarray(model.pca_variances, dtype=np.float64),
        "metadata_json": np.array(json.dumps(meta, default=str)),
    }
    for name in ("atoms", "profile_mean", "profile_var"):
        if getattr(model, name) is not None:
            arrays[name] = np.asarray(getattr(model, name), dtype=np.float64)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, p)


def load_model(path) -> ShapeModel:
    """Read a model file written by :func:`save_model`.

    Raises
    ------
    ModelFormatError
        Not an NPZ, not a shapeprior model, an unsupported version, or
        inconsistent arrays.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such model file: {p}")
    try:
        z = np.load(p, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ModelFormatError(f"{p.name} is not a shapeprior model file ({exc})") from None
    with z:
        if "metadata_json" not in z.files:
            raise ModelFormatError(f"{p.name} is not a shapeprior model file (no metadata)")
        meta = json.loads(str(z["metadata_json"]))
        if meta.get("format") != FORMAT:
            raise ModelFormatError(f"{p.name} is not a shapeprior model file "
                                   f"(format {meta.get('format')!r})")
        ver = meta.get("format_version")
        if ver not in SUPPORTED_VERSIONS:
            raise ModelFormatError(
                f"{p.name} has model format version {ver!r}; this shapeprior reads "
                f"versions {list(SUPPORTED_VERSIONS)} (upgrade shapeprior or rebuild the model)")
        need = ("shapes", "mean", "faces", "pca_components", "pca_variances")
        missing = [k for k in need if k not in z.files]
        if missing:
            raise ModelFormatError(f"{p.name} lacks arrays {missing}")
        opt = {k: (z[k] if k in z.files else None) for k in ("atoms", "profile_mean", "profile_var")}
        m = ShapeModel(z["shapes"], z["mean"], z["faces"], z["pca_components"],
                       z["pca_variances"], opt["atoms"], meta, opt["profile_mean"],
                       opt["profile_var"])
    N = m.mean.shape[0]
    if m.shapes.shape[1:] != (N, 3) or m.pca_components.shape[1] != 3 * N or \
            (m.faces.size and m.faces.max() >= N) or \
            (m.profile_mean is not None and m.profile_mean.shape[0] != N):
        raise ModelFormatError(f"{p.name}: arrays have inconsistent shapes")
    return m
