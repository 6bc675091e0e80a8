"""The fitted surface moved onto a mask's boundary, bridged across where the
mask departs (``segmentation/_inpaint.py``): offsets measured along the
normals, harmonic interpolation over the mesh, and the refined mask of a
clean organ left as it was while a leak still goes."""

import numpy as np
import pytest

from _phantoms import leak_at_tip

from shapeprior.io import Volume
from shapeprior.mesh import icosphere
from shapeprior.segmentation import _inpaint, surface_distances
from shapeprior.segmentation._refine import _BoundaryDistance


def _ball(shape, c, r):
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g[k] - c[k]) ** 2 for k in range(3)) <= r ** 2


def _grid(mask):
    return Volume(mask.astype(np.uint8), np.ones(3), np.zeros(3), np.eye(3))


def test_harmonic_fill_keeps_known_values_and_bridges_the_rest():
    verts, faces = icosphere(3)
    z = verts[:, 2]
    cap = z > 0.6
    # a constant is bridged as itself; known values are never touched
    out = _inpaint.harmonic_fill(np.where(cap, np.nan, 2.5), cap, faces)
    assert np.allclose(out, 2.5, atol=1e-6)
    out = _inpaint.harmonic_fill(z, cap, faces)
    assert np.array_equal(out[~cap], z[~cap])
    # inside the cap: between the rim's values (maximum principle), smooth, and
    # not the values it replaced (the cap's top is not reached from its rim)
    rim = ~cap & (np.abs(z - 0.6) < 0.15)
    assert out[cap].min() >= z[rim].min() - 1e-9 and out[cap].max() <= z[rim].max() + 1e-9
    assert out[cap].max() < 0.9 < z[cap].max()
    # nothing unknown: unchanged; nothing known: 0
    assert np.array_equal(_inpaint.harmonic_fill(z, np.zeros(len(z), bool), faces), z)
    assert np.allclose(_inpaint.harmonic_fill(z, np.ones(len(z), bool), faces), 0.0)


def test_offsets_are_measured_along_the_normal_both_ways():
    ball = _ball((50, 50, 50), (25, 25, 25), 15)
    bd = _BoundaryDistance(ball, _grid(ball))
    n = np.array([[1.0, 0.0, 0.0]] * 3)
    # from inside outwards (> 0), from outside inwards (< 0): the boundary lies
    # half a voxel beyond the last voxel centre inside (x = 40.5)
    pts = np.array([[30.0, 25.0, 25.0], [45.0, 25.0, 25.0], [25.0, 25.0, 25.0]])
    got = bd.along(pts, n, 30.0)
    assert got == pytest.approx([10.5, -4.5, 15.5], abs=0.15)
    # between the samples (0.25 mm apart) the crossing is interpolated, not rounded
    # to the next sample: exact here, where the map is linear across the boundary
    off = bd.along(pts + [[0.13, 0.0, 0.0], [-0.07, 0.0, 0.0], [0.0, 0.0, 0.0]], n, 30.0)
    assert off == pytest.approx([10.37, -4.43, 15.5], abs=1e-6)
    # no crossing within reach: the reach, signed; at the field of view's edge: unknown
    assert bd.along(pts[2:], n[2:], 5.0)[0] == pytest.approx(5.0)
    assert np.isnan(bd.along(np.array([[1.0, 25.0, 25.0]]), n[:1], 30.0)).all()


def test_the_surface_follows_the_mask_and_bridges_a_leak_at_the_organs_radius():
    shape = (64, 64, 64)
    organ = _ball(shape, (32, 32, 32), 15)
    leak = _ball(shape, (32, 32, 32 + 15 + 4), 6) & ~organ       # attached at +x
    bd = _BoundaryDistance(organ | leak, _grid(organ | leak))
    sphere, faces = icosphere(3)
    centre = np.array([32.0, 32.0, 32.0])
    for r_fit in (12.5, 17.0):          # a fit inside the boundary, and one outside it
        v, departing = _inpaint.inpainted_surface(
            centre + r_fit * sphere, faces, bd, np.zeros(len(sphere), bool), tolerance_mm=3.5,
            local_mm=np.inf, rings=2)
        radius = np.linalg.norm(v - centre, axis=1)
        under = sphere[:, 0] > 0.9
        # every vertex on the organ's own boundary (the voxel ball's: 14.6 to
        # 15.5 mm), those under the leak included: their offset comes from around it
        assert 14.5 < radius.min() and radius.max() < 15.6, (r_fit, radius.min(), radius.max())
        assert np.abs(radius[under] - np.median(radius)).max() < 0.3
        assert departing[under].all() and not departing[sphere[:, 0] < 0.0].any()
    # a vertex the prior overrode departs whatever its offset
    gross = sphere[:, 0] < -0.95
    _, departing = _inpaint.inpainted_surface(centre + 15.5 * sphere, faces, bd, gross,
                                              tolerance_mm=3.5, local_mm=np.inf, rings=0)
    assert np.array_equal(departing[sphere[:, 0] < 0.0], gross[sphere[:, 0] < 0.0])
    # the slack (half a voxel) is added to the tolerance
    _, loose = _inpaint.inpainted_surface(centre + 12.5 * sphere, faces, bd, np.zeros_like(gross),
                                          slack_mm=30.0, tolerance_mm=3.5, local_mm=np.inf,
                                          rings=0)
    assert not loose.any()


def test_a_leak_below_the_tolerance_stands_out_of_its_neighbourhood():
    shape = (64, 64, 64)
    organ = _ball(shape, (32, 32, 32), 15)
    bump = _ball(shape, (32, 32, 32 + 15 + 1), 4) & ~organ     # 5 mm high at most
    bd = _BoundaryDistance(organ | bump, _grid(organ | bump))
    sphere, faces = icosphere(3)
    centre = np.array([32.0, 32.0, 32.0])
    none = np.zeros(len(sphere), bool)
    top = sphere[:, 0] > 0.995
    _, by_size = _inpaint.inpainted_surface(centre + 15.5 * sphere, faces, bd, none,
                                            tolerance_mm=8.0, local_mm=np.inf, rings=0)
    assert not by_size.any()                    # under the tolerance: trusted
    v, local = _inpaint.inpainted_surface(centre + 15.5 * sphere, faces, bd, none,
                                          tolerance_mm=8.0, local_mm=2.0, local_rings=3,
                                          rings=1)
    radius = np.linalg.norm(v - centre, axis=1)
    assert local[top].all() and not local[sphere[:, 0] < 0.5].any()
    assert radius[top].max() < 15.8


def test_refining_a_clean_mask_changes_less_and_a_leak_still_goes(phantom_model, monkeypatch):
    from shapeprior.io import read_label_map
    from shapeprior.model import load_model
    from shapeprior.segmentation import SegmentParams, refine_mask
    from shapeprior.segmentation import _refine

    d, images, labels, model_path = phantom_model
    model = load_model(model_path)
    clean_vol = read_label_map(labels / "phantom_005.nii.gz")
    clean = clean_vol.array > 0
    bad = leak_at_tip(clean)
    sp = clean_vol.spacing
    got = {}
    for inpaint in (False, True):
        monkeypatch.setattr(_refine, "INPAINT", inpaint)
        for name, m in (("clean", clean), ("leak", bad)):
            vol = Volume(m.astype(np.uint8), sp, clean_vol.origin, clean_vol.direction)
            res = refine_mask(vol, model, (1,), SegmentParams())
            got[name, inpaint] = surface_distances(res.label > 0, clean, sp)["assd_mm"]
            assert ("inpainted_vertices" in res.fit.evidence) == inpaint
    d_bad = surface_distances(bad, clean, sp)["assd_mm"]
    # the leak is at least halved either way; the clean organ is changed no more
    assert got["leak", True] <= 0.5 * d_bad, (got, d_bad)
    assert got["clean", True] <= got["clean", False], got
