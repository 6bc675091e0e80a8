"""Icosphere: the fixed-topology template fitted to every training surface."""

from __future__ import annotations

import numpy as np


def icosphere(level: int = 3):
    """Unit icosphere with ``10 * 4**level + 2`` vertices.

    Returns
    -------
    verts : ndarray, shape (V, 3)
    faces : ndarray, shape (F, 3), int64, counter-clockwise seen from outside
    """
    if not 0 <= level <= 7:
        raise ValueError(f"level={level} must be in [0, 7]")
    t = (1.0 + 5 ** 0.5) / 2.0
    v = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
                  [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]],
                 dtype=float)
    f = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9],
                  [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2],
                  [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10],
                  [8, 6, 7], [9, 8, 1]], dtype=np.int64)
    verts = list(v / np.linalg.norm(v, axis=1, keepdims=True))
    for _ in range(level):
        cache = {}
        new_faces = []

        def mid(a, b):
            key = (a, b) if a < b else (b, a)
            if key not in cache:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                cache[key] = len(verts) - 1
            return cache[key]

        for a, b, c in f:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new_faces += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        f = np.array(new_faces, dtype=np.int64)
    return np.array(verts), f


def level_for_vertices(n_vertices: int) -> int:
    """Icosphere level whose vertex count is closest to ``n_vertices``."""
    counts = [10 * 4 ** k + 2 for k in range(8)]
    return int(np.argmin([abs(c - n_vertices) for c in counts]))
