"""The fitted surface moved onto a mask's boundary where the mask is
trusted, and across the regions where it departs, the offset bridged from
around them.

A shape model's fit to a mask lies up to millimetres off the mask's boundary
even where the mask is right: the model cannot follow every organ. Where the
mask is wrong (a leak, copied slices, an island's pull) the fitted surface
decides the refined mask (:func:`._refine.combine`), and cutting there at the
fit's own surface removes or adds the fit's local error along with the
defect. Here the offset of the mask's boundary from each vertex along its
normal is measured; where it is plausible (no gross error, no farther than a
tolerance, and not standing out of its neighbourhood's offsets) the vertex
moves onto the boundary, and elsewhere the
offset is the harmonic interpolation of the plausible offsets around it: the
surface follows the organ's own boundary and bridges a departing region
smoothly from its rim.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import spsolve

from ..mesh import Surface, mean_neighbour_operator

#: a vertex whose mask boundary lies farther than this along its normal (mm,
#: plus half the largest voxel size) departs: the mask goes on beyond it
#: (a leak) or stops short of it (a concavity the model smooths over).
#: Chosen on a validation split (KiTS19 cases 1, 6, 11, ... against a model
#: without them; ``bench/bench_refine_inpaint.py``) from 8 / 10 mm, after
#: scratch grids over 3 / 5 / 6 / 12 mm
OFFSET_TOLERANCE_MM = 8.0

#: the departing vertices grown by this many rings of mesh neighbours: their
#: rim (the crease where a leak meets the organ) is no evidence either.
#: Chosen with :data:`OFFSET_TOLERANCE_MM` from 1 / 2 (3 and 4 in scratch grids)
RINGS = 2

#: a vertex whose offset departs from the median offset of its neighbourhood
#: (:data:`LOCAL_RINGS` rings) by more than this (mm, plus half the largest
#: voxel size) departs too: a leak smaller than :data:`OFFSET_TOLERANCE_MM`
#: stands out of the organ's own boundary around it, a fit that falls short of
#: the mask over a broad region does not. None: no such test. Chosen on the
#: same validation split from none / 2 / 3 / 4 mm
LOCAL_MM = 4.0

#: the rings of neighbours over which :data:`LOCAL_MM` takes the median (2 or 3)
LOCAL_RINGS = 3


def local_median(values, faces, rings):
    """Each vertex's median of ``values`` over itself and its neighbours up to
    ``rings`` edges away (NaN ignored; NaN where all are).

    Parameters
    ----------
    values : ndarray, shape (N,)
    faces : ndarray of int, shape (F, 3)
    rings : int
    """
    values = np.asarray(values, float)
    n = len(values)
    step = sparse.csr_matrix(mean_neighbour_operator(faces, n) != 0) + \
        sparse.identity(n, format="csr")
    reach = step.copy()
    for _ in range(int(rings) - 1):
        reach = reach @ step
    reach = sparse.csr_matrix(reach)
    counts = np.diff(reach.indptr)
    table = np.full((n, int(counts.max())), np.nan)
    rows = np.repeat(np.arange(n), counts)
    table[rows, np.arange(reach.nnz) - reach.indptr[:-1][rows]] = values[reach.indices]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # all-NaN rows: NaN
        return np.nanmedian(table, axis=1)


#: how far along a vertex's normal the mask's boundary is looked for (mm)
REACH_MM = 30.0


def harmonic_fill(values, unknown, faces):
    """``values`` with its entries at ``unknown`` replaced by the harmonic
    interpolation of the others over the mesh graph: each unknown vertex the
    mean of its edge neighbours. A connected set of unknown vertices with no
    known neighbour gets 0.

    Parameters
    ----------
    values : ndarray, shape (N,)
        Known values (entries at ``unknown`` are ignored, NaN allowed there).
    unknown : ndarray of bool, shape (N,)
    faces : ndarray of int, shape (F, 3)

    Returns
    -------
    ndarray of float, shape (N,)
    """
    unknown = np.asarray(unknown, bool)
    out = np.where(unknown, 0.0, values).astype(float)
    u = np.flatnonzero(unknown)
    if u.size == 0:
        return out
    M = mean_neighbour_operator(faces, len(out)).tocsr()
    # (I - M_uu) x_u = M_uk x_k; a pull of 1e-9 to 0 keeps it regular where no
    # known value is reached
    A = sparse.identity(u.size, format="csc") * (1.0 + 1e-9) - M[u][:, u].tocsc()
    out[u] = spsolve(A, M[u] @ out)
    return out


def inpainted_surface(verts, faces, boundary, gross, slack_mm=0.0, tolerance_mm=None,
                      local_mm=None, rings=None, local_rings=None, reach_mm=None):
    """The fitted surface moved onto the mask's boundary along its normals,
    the offset bridged harmonically across the vertices where the mask
    departs.

    Parameters
    ----------
    verts : ndarray, shape (N, 3)
        The fitted surface (LPS mm).
    faces : ndarray of int, shape (F, 3)
    boundary : object
        The mask's boundary: ``along(points, normals, reach_mm)`` gives the
        offset (mm) of the boundary along each normal, > 0 where the mask goes
        on beyond the point, NaN where unknown (the field of view's edge)
        (:meth:`._refine._BoundaryDistance.along`).
    gross : ndarray of bool, shape (N,)
        Vertices the prior overrode (gross error > 0).
    slack_mm : float
        Added to both tolerances (half the mask's largest voxel size: the
        boundary of a voxel mask is that coarse).
    tolerance_mm : float, optional
        Vertices whose boundary lies farther than this depart as well
        (default :data:`OFFSET_TOLERANCE_MM`).
    local_mm : float, optional
        And those whose offset departs by more than this from their
        neighbourhood's median (default :data:`LOCAL_MM`; ``inf``: no such
        test).
    rings : int, optional
        Rings of neighbours added around the departing vertices (default
        :data:`RINGS`).
    local_rings : int, optional
        The neighbourhood of ``local_mm`` (default :data:`LOCAL_RINGS`).
    reach_mm : float, optional
        Search range along the normals (default :data:`REACH_MM`).

    Returns
    -------
    verts : ndarray, shape (N, 3)
        The moved surface.
    departing : ndarray of bool, shape (N,)
        The vertices whose offset was bridged.
    """
    rings = RINGS if rings is None else int(rings)
    tolerance_mm = OFFSET_TOLERANCE_MM if tolerance_mm is None else float(tolerance_mm)
    local_mm = LOCAL_MM if local_mm is None else float(local_mm)
    local_rings = LOCAL_RINGS if local_rings is None else int(local_rings)
    reach_mm = REACH_MM if reach_mm is None else float(reach_mm)
    verts = np.asarray(verts, float)
    normals = Surface(verts, np.asarray(faces)).vertex_normals()
    offset = boundary.along(verts, normals, reach_mm)
    with np.errstate(invalid="ignore"):
        bad = np.asarray(gross, bool) | ~np.isfinite(offset) | \
            (np.abs(offset) > tolerance_mm + slack_mm)
    if local_mm is not None and np.isfinite(local_mm):
        with np.errstate(invalid="ignore"):
            bad |= np.abs(offset - local_median(offset, faces, local_rings)) > local_mm + slack_mm
    if bad.any() and rings:
        M = mean_neighbour_operator(faces, len(verts))
        for _ in range(rings):
            bad = bad | ((M @ bad.astype(float)) > 0)
    offset = harmonic_fill(offset, bad, faces)
    return verts + offset[:, None] * normals, bad
