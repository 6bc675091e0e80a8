"""The refinement and the surface metrics measure distances on boxes around the
masks, not on the whole grid: each result must equal the whole-grid
computation exactly (masks touching the grid's edge, anisotropic voxels,
islands far apart, leaks beyond the band)."""

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

from shapeprior.io import Volume
from shapeprior.segmentation import describe_corrections, surface_distances
from shapeprior.segmentation._refine import (BAND_MM, ZONE_MARGIN_MM, _BoundaryDistance,
                                             combine, suspect_zone)

SPACING_XYZ = (0.8, 0.9, 2.5)


def _blobs(rng, shape, n, r_vox, edge=False):
    m = np.zeros(shape, bool)
    g = np.ogrid[tuple(slice(0, k) for k in shape)]
    for _ in range(n):
        reach = np.ceil(r_vox * np.array([0.4, 1.0, 1.0])).astype(int)
        c = rng.integers(0, shape) if edge else rng.integers(reach, np.array(shape) - reach)
        r = rng.uniform(0.5, 1.0) * r_vox
        m |= sum(((g[k] - c[k]) / (r * (0.4 if k == 0 else 1.0))) ** 2 for k in range(3)) <= 1
    return m


def _case(seed):
    rng = np.random.default_rng(seed)
    shape = (24, 60, 56)
    vol = Volume(np.zeros(shape, np.uint8), np.array(SPACING_XYZ), np.array([3.0, -7.0, 11.0]),
                 np.eye(3))
    mask = _blobs(rng, shape, 3, 12, edge=seed % 2 == 1)
    shape_ = ndimage.binary_erosion(mask, iterations=1) | _blobs(rng, shape, 1, 10)
    return rng, vol, mask, shape_


def _full_surface_distances(a, b, spacing_xyz):
    def border(m):
        return m & ~ndimage.binary_erosion(m, structure=np.ones((3, 3, 3)))
    sp = np.asarray(spacing_xyz, float)[::-1]
    ba, bb = border(a), border(b)
    d = np.concatenate([ndimage.distance_transform_edt(~bb, sampling=sp)[ba],
                        ndimage.distance_transform_edt(~ba, sampling=sp)[bb]])
    return {"assd_mm": float(d.mean()), "hd95_mm": float(np.percentile(d, 95)),
            "hd_mm": float(d.max())}


def _full_zone(fit, vol, mask, margin_mm=ZONE_MARGIN_MM):
    from shapeprior.segmentation._assess import border_distance
    from shapeprior.segmentation._refine import LOW_CONFIDENCE, _inside, _nearest_voxel

    low = (np.asarray(fit.confidence) < LOW_CONFIDENCE) & _inside(mask, vol, fit.verts)
    bad = ((np.asarray(fit.error_mm) > 0) | low) & (border_distance(vol, fit.verts) > 3.0)
    zone = np.zeros(vol.array.shape, bool)
    idx, inside = _nearest_voxel(vol, fit.verts[bad])
    if not inside.any():
        return zone
    radius = np.asarray(fit.error_mm)[bad][inside] + margin_mm
    seeds = np.zeros(zone.shape, bool)
    seeds[tuple(idx[inside].T)] = True
    order = np.full(zone.shape, -1)
    order[tuple(idx[inside].T)] = np.arange(inside.sum())
    d, near = ndimage.distance_transform_edt(~seeds, sampling=np.array(SPACING_XYZ)[::-1],
                                             return_indices=True)
    return d <= radius[order[tuple(near)]]


def _full_combine(mask, shape, vol, fit, band_mm=BAND_MM):
    sampling = np.array(SPACING_XYZ)[::-1]
    d_out = ndimage.distance_transform_edt(~shape, sampling=sampling)
    d_in = ndimage.distance_transform_edt(shape, sampling=sampling)
    core = shape & (d_in > band_mm)
    by_shape = core | (mask & (d_out <= band_mm))
    zone = _full_zone(fit, vol, mask)
    out = np.where(zone, by_shape, mask)
    out |= zone & ndimage.binary_fill_holes(out)
    lab, n = ndimage.label(out)
    if n > 1:
        keep = np.unique(lab[core & out])
        out = np.isin(lab, keep[keep > 0]) if keep.any() else out
    return out


def _fit(rng, vol, mask, n=300):
    """A stand-in fit: vertices on and around the mask, some overridden."""
    idx = np.argwhere(mask)
    pick = idx[rng.integers(len(idx), size=n)][:, ::-1] + rng.normal(0, 2.0, (n, 3))
    verts = vol.index_to_physical(pick)
    last = rng.random(n) < 0.05                  # overridden by the last projection
    return SimpleNamespace(verts=verts, overridden=last | (rng.random(n) < 0.2),
                           confidence=rng.random(n),
                           error_mm=np.where(last, rng.uniform(0.1, 8, n), 0.0))


@pytest.mark.parametrize("seed", range(6))
def test_box_distances_equal_the_whole_grid(seed):
    rng, vol, mask, shape = _case(seed)
    fit = _fit(rng, vol, mask)
    assert surface_distances(mask, shape, SPACING_XYZ) == \
        _full_surface_distances(mask, shape, SPACING_XYZ)
    zone = suspect_zone(fit, vol, mask=mask)
    assert zone.any() and np.array_equal(zone, _full_zone(fit, vol, mask))
    got = combine(mask, shape, vol, fit)
    assert got.shape == mask.shape and np.array_equal(got, _full_combine(mask, shape, vol, fit))
    # depths of the corrections: the whole-grid distance to the other mask
    c = describe_corrections(mask, got, vol, min_ml=0.0)
    volumes = []
    for kind, before, after in (("removed", mask, got), ("added", got, mask)):
        diff = before & ~after
        full = ndimage.distance_transform_edt(~after if kind == "removed" else ~mask,
                                              sampling=np.array(SPACING_XYZ)[::-1])
        lab, _ = ndimage.label(diff)
        voxel_ml = float(np.prod(SPACING_XYZ)) / 1000.0
        regions = [(round(float((lab == i).sum()) * voxel_ml, 3), round(float(full[lab == i].max()), 2))
                   for i in range(1, lab.max() + 1)]
        volumes += [v for v, _ in regions]
        regions = set(regions)
        listed = {(r["volume_ml"], r["depth_mm"]) for r in c["regions"] if r["kind"] == kind}
        assert listed <= regions
    # the report lists the 20 largest regions of both kinds, largest first
    listed = [r["volume_ml"] for r in c["regions"]]
    assert listed == sorted(volumes, reverse=True)[:20]
    # the boundary distance: exact near the mask, "far" beyond its box
    bd = _BoundaryDistance(mask, vol)
    sd = (ndimage.distance_transform_edt(~mask, sampling=np.array(SPACING_XYZ)[::-1])
          - ndimage.distance_transform_edt(mask, sampling=np.array(SPACING_XYZ)[::-1]))
    pts = fit.verts
    ref = np.abs(ndimage.map_coordinates(sd, vol.physical_to_index(pts)[:, ::-1].T, order=1,
                                         mode="nearest"))
    ref = np.maximum(ref - 0.5 * min(SPACING_XYZ), 0.0)
    d = bd.distance(pts)
    ok = np.isfinite(d)
    near = ok & (ref <= bd.tol + 1.0)
    assert near.any() and np.allclose(d[near], ref[near], atol=1e-4)
    assert np.all((d[ok] <= bd.tol) == (ref[ok] <= bd.tol))
