"""The surface-offset calibration (model/_calibrate.py) and a fitted organ's
measures (segmentation/_statistics.py), against geometry known in closed form."""

from types import SimpleNamespace

import numpy as np
import pytest

from shapeprior.io import Volume
from shapeprior.mesh import icosphere
from shapeprior.model._calibrate import OFFSET_GRID, choose_offset, offset_dice, offset_grid
from shapeprior.segmentation._statistics import distance_to_mean


def test_offset_grid_is_in_units_of_the_finest_spacing():
    assert np.allclose(offset_grid([0.5, 0.8, 2.0]), OFFSET_GRID * 0.5)


def test_choose_offset_record():
    grid = np.array([-0.2, -0.1, 0.0, 0.1, 0.2])
    rows = [[0.80, 0.85, 0.90, 0.93, 0.91], [0.82, 0.86, 0.88, 0.95, 0.90]]
    rec = choose_offset(grid, rows)
    assert rec["mm"] == 0.1 and rec["n_shapes"] == 2
    assert rec["dice_at_0"] == pytest.approx(0.89) and rec["dice_at_offset"] == pytest.approx(0.94)
    assert rec["grid_mm"] == [-0.2, -0.1, 0.0, 0.1, 0.2]


def _ball(radius_mm, spacing=1.0, n=40):
    vol = Volume(np.zeros((n, n, n), np.uint8), np.full(3, spacing), np.zeros(3), np.eye(3))
    c = (n - 1) / 2 * spacing
    z, y, x = np.indices(vol.array.shape) * spacing
    mask = (x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2 <= radius_mm ** 2
    return vol, mask, np.full(3, c)


def test_offset_dice_moves_the_surface_outward():
    """A sphere 1.5 mm inside its ball: Dice rises with outward offsets up to about
    1.5 mm and the best offset of the grid is outward."""
    vol, mask, c = _ball(10.0)
    v, f = icosphere(3)
    verts = c + 8.5 * v
    grid = np.array([-1.0, 0.0, 1.0, 1.5, 2.5])
    d = offset_dice(verts, f, vol, mask, grid)
    assert d[0] < d[1] < d[2] < d[3] and d[3] > d[4]
    assert choose_offset(grid, [d])["mm"] == 1.5


def test_distance_to_mean_is_positive_where_the_organ_bulges_out():
    """An ellipsoid against a spherical mean: after the similarity alignment the
    long axis's ends lie outside the mean (positive), the short axes' inside."""
    v, f = icosphere(3)
    model = SimpleNamespace(mean=10.0 * v)
    verts = v * np.array([14.0, 9.0, 9.0]) + np.array([3.0, -2.0, 5.0])
    d = distance_to_mean(model, verts, f)
    tip = np.argmax(np.abs(v[:, 0]))
    side = np.argmax(np.abs(v[:, 1]))
    assert d[tip] > 2.0 and d[side] < 0.0


def test_distance_to_mean_of_a_mirrored_organ():
    """A right-side organ against a model of left sides: compared with the
    mirrored mean it is the mean itself (distance 0)."""
    from shapeprior.segmentation._assess import MIRROR

    v, f = icosphere(3)
    mean = v * np.array([10.0, 9.0, 8.0])
    mean[:, 0] *= np.where(v[:, 0] > 0, 1.5, 1.0)          # an egg: not symmetric in x
    model = SimpleNamespace(mean=mean)
    right = mean * MIRROR + np.array([-40.0, 5.0, 2.0])
    faces = f[:, ::-1]                                       # mirroring flips orientation
    assert np.abs(distance_to_mean(model, right, faces, mirrored=True)).max() < 1e-9
    assert np.abs(distance_to_mean(model, right, faces, mirrored=False)).max() > 1.0


def test_shape_statistics_of_a_scaled_mean():
    from shapeprior.segmentation._statistics import shape_statistics

    v, f = icosphere(3)
    mean = 10.0 * v
    rng = np.random.default_rng(0)
    comps = np.linalg.qr(rng.normal(size=(mean.size, 4)))[0].T
    model = SimpleNamespace(mean=mean, pca_components=comps,
                            pca_variances=np.array([4.0, 2.0, 1.0, 0.5]),
                            shapes=np.stack([mean, 1.01 * mean]))
    verts = 2.0 * mean + np.array([5.0, 0.0, 0.0])
    st = shape_statistics(model, verts, f, label=np.ones((2, 3, 4), np.uint8),
                          spacing=(0.5, 1.0, 2.0))
    assert st["scale_vs_model_mean"] == pytest.approx(2.0)
    assert st["volume_ml"] == pytest.approx(24 * 0.5 * 1.0 * 2.0 / 1000.0)
    assert np.allclose(st["centroid_lps_mm"], [5.0, 0.0, 0.0], atol=1e-9)
    assert st["mesh_volume_ml"] == pytest.approx(4 / 3 * np.pi * 20.0 ** 3 / 1000.0, rel=0.02)
    assert np.allclose(st["shape_modes"]["coefficients_sd"], 0.0, atol=1e-9)   # the mean's shape
