"""Sparse operators on a triangle mesh's vertex graph."""

from __future__ import annotations

import numpy as np
from scipy import sparse


def mesh_edges(faces, n):
    """The edges of a triangle mesh, each once, as (E, 2) vertex index pairs
    ``(i, j)``, ``i < j``, in lexicographic order (as ``np.unique(..., axis=0)``
    of the sorted pairs gives them), through one integer key per edge.

    Parameters
    ----------
    faces : ndarray, shape (F, 3)
    n : int
        Number of vertices.
    """
    f = np.asarray(faces, dtype=np.int64)
    a, b = f, f[:, [1, 2, 0]]                     # the three edges of each triangle
    key = np.unique(np.minimum(a, b) * n + np.maximum(a, b))
    return np.stack([key // n, key % n], axis=1)


def mean_neighbour_operator(faces, n):
    """Row-stochastic (n, n) sparse matrix: each vertex -> the mean of its edge
    neighbours (``L @ values`` averages a per-vertex quantity over neighbours).

    Parameters
    ----------
    faces : ndarray, shape (F, 3)
        Triangle vertex indices.
    n : int
        Number of vertices.
    """
    i = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    j = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    A = sparse.csr_matrix((np.ones(i.size), (i, j)), shape=(n, n))
    A.data[:] = 1.0
    deg = np.asarray(A.sum(axis=1)).ravel()
    return sparse.diags(1.0 / np.maximum(deg, 1)) @ A


def same_triangles(faces_a, faces_b) -> bool:
    """Whether two triangle lists (F, 3) of vertex indices hold the same triangles,
    whatever their order in the list, their orientation or the vertex each starts
    at: the same mesh connectivity on the same vertex numbering."""
    a = np.unique(np.sort(np.asarray(faces_a, dtype=np.int64), axis=1), axis=0)
    b = np.unique(np.sort(np.asarray(faces_b, dtype=np.int64), axis=1), axis=0)
    return a.shape == b.shape and bool(np.array_equal(a, b))
