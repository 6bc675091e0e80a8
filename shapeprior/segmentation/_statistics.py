"""What a fitted organ measures, and how unusual it is against the training
population: the contents of ``statistics.json`` and the mesh's
``distance_to_mean_mm``."""

from __future__ import annotations

import numpy as np

from ..align import procrustes
from ..mesh import Surface
from ._assess import MIRROR, mode_coefficients, training_distances

#: shape-mode coefficients reported (the first modes carry most variance)
N_MODES_REPORTED = 10


def distance_to_mean(model, verts, faces, mirrored=False):
    """Signed distance (mm) of each vertex from the model mean shape.

    The mean is aligned to the surface by a similarity transform; the
    distance is measured along the surface's outward vertex normal, positive
    where the organ bulges out beyond the mean shape.

    Parameters
    ----------
    model : ShapeModel
    verts : ndarray, shape (N, 3)
        Surface in LPS mm, in correspondence with the model.
    faces : ndarray, shape (F, 3)
        Outward-oriented triangles of ``verts``.
    mirrored : bool
        ``verts`` is a right-side organ of a model built from left sides.

    Returns
    -------
    ndarray, shape (N,)
    """
    verts = np.asarray(verts, dtype=float)
    mean = model.mean * MIRROR if mirrored else model.mean
    T = procrustes(mean, verts)
    normals = Surface(verts, faces).vertex_normals()
    return np.einsum("ij,ij->i", verts - T(mean), normals)


def shape_statistics(model, verts, faces, label=None, spacing=None, mirrored=False):
    """Measures of a fitted organ and its place in the training population.

    Parameters
    ----------
    model : ShapeModel
    verts : ndarray, shape (N, 3)
        Fitted surface, LPS mm, in correspondence with the model.
    faces : ndarray, shape (F, 3)
    label : ndarray, optional
        The voxelised result, for the voxel volume.
    spacing : array-like of 3 floats, optional
        Voxel size (x, y, z) in mm of ``label``.
    mirrored : bool
        ``verts`` is a right-side organ of a model built from left sides.

    Returns
    -------
    dict
        ``volume_ml`` (voxels, when ``label`` is given) and ``mesh_volume_ml``;
        ``surface_area_mm2``; ``centroid_lps_mm``; ``principal_axes``: the
        extent of the surface along each principal axis (mm, largest first)
        with the axis directions (LPS unit vectors); ``scale_vs_model_mean``; ``shape_modes``: the first PCA coefficients in standard
        deviations; ``mahalanobis``: the RMS distance per mode (1 is typical),
        the largest training distance and the fraction of training shapes
        that lie closer to the mean (0.5: a typical organ, 1.0: more unusual
        than every training shape).
    """
    verts = np.asarray(verts, dtype=float)
    surf = Surface(verts, faces)
    centred = verts - verts.mean(0)
    evals, evecs = np.linalg.eigh(centred.T @ centred)
    order = np.argsort(evals)[::-1]
    axes = evecs[:, order].T
    proj = centred @ axes.T
    extents = proj.max(0) - proj.min(0)
    b, T = mode_coefficients(model, verts, mirrored)
    dist = float(np.sqrt(np.mean(b ** 2)))       # :func:`mahalanobis`, from the same b
    train = training_distances(model)
    out = {
        "mesh_volume_ml": surf.volume() / 1000.0,
        "surface_area_mm2": surf.area(),
        "centroid_lps_mm": verts.mean(0).tolist(),
        "principal_axes": {"extent_mm": extents.tolist(), "direction_lps": axes.tolist()},
        "scale_vs_model_mean": float(1.0 / T.scale),
        "shape_modes": {"coefficients_sd": b[:N_MODES_REPORTED].tolist(),
                        "explained_variance": (model.pca_variances[:N_MODES_REPORTED]
                                               / model.pca_variances.sum()).tolist()},
        "mahalanobis": {"rms_per_mode": dist, "training_max": float(train.max()),
                        "training_median": float(np.median(train)),
                        "training_fraction_closer": float(np.mean(train < dist))},
    }
    if label is not None and spacing is not None:
        out = {"volume_ml": float(np.count_nonzero(label)) * float(np.prod(spacing)) / 1000.0,
               **out}
    return out
