"""Placement without a seed, measured exactly: the search grid, the matched
filter's peaks, the refined position and scale, and the order and spread of
the hypotheses (on anisotropic grids, where axis-order and unit mistakes
show); and on the phantom model's mean, the boundary contrast that scores a
placement and the side of a paired organ."""

import numpy as np
import pytest

from shapeprior.appearance import intensity_scale
from shapeprior.io import Volume
from shapeprior.mesh import icosphere, voxelize
from shapeprior.segmentation._place import (AppearanceScore, find_placements, grid_centres,
                                            local_placements, region_score_map)

#: semi-axes (mm) of the test organ: elongated along x, flat along z, so that
#: its template box differs along every axis
AXES_MM = np.array([20.0, 12.0, 8.0])
#: anisotropic voxels (x, y, z), mm
SPACING = np.array([0.8, 1.0, 2.0])


def _organ():
    v, f = icosphere(3)
    return v / np.linalg.norm(v, axis=1, keepdims=True) * AXES_MM, f


def _scan(organs, size=(150, 110, 50), spacing=SPACING, shape=None, slab=None):
    """A CT-like scan (fat -100 HU), LPS 0 at the FOV centre, with the organ
    (40 HU) scaled by ``s`` at each ``(centre, s)`` of ``organs``. ``shape``:
    ``(verts centred at 0, faces)`` of the organ (default :func:`_organ`);
    ``slab``: an LPS x range filled with 40 HU too."""
    shape0, faces = _organ() if shape is None else shape
    n = np.asarray(size)
    sp = np.broadcast_to(np.asarray(spacing, float), (3,))
    origin = -sp * (n - 1) / 2.0
    vol = Volume(np.full(n[::-1], -100, np.int16), sp, origin, np.eye(3))
    for c, s in organs:
        vol.array[voxelize(s * shape0 + np.asarray(c, float), faces, vol) > 0] = 40
    if slab is not None:
        x = origin[0] + sp[0] * np.arange(n[0])
        vol.array[:, :, (x >= slab[0]) & (x <= slab[1])] = 40
    return vol


def _scorer(vol, band_mm=3.0):
    return AppearanceScore(vol, None, "ct", intensity_scale(vol, "ct"), "numpy", 0.0,
                           band_mm=band_mm, window=(-0.05, 0.15), inside_brighter=True)


def test_grid_is_centred_on_the_field_of_view_and_spaced_in_mm():
    D = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])     # rotated in-plane
    vol = Volume(np.zeros((31, 60, 81), np.int16), np.array([0.5, 2.0, 3.0]),
                 np.array([10.0, -20.0, 5.0]), D)
    c = grid_centres(vol, 6.0)
    idx = vol.physical_to_index(c)
    steps = []
    for ax in range(3):
        u = np.unique(np.round(idx[:, ax], 6))
        steps.append(np.diff(u))
        # centred: as far from the first voxel as from the last
        assert u[0] == pytest.approx(vol.array.shape[::-1][ax] - 1 - u[-1], abs=1e-6)
    # 6 mm apart along x and y (12 and 3 voxels); along z the 3 mm voxels give 2
    np.testing.assert_allclose(steps[0] * 0.5, 6.0)
    np.testing.assert_allclose(steps[1] * 2.0, 6.0)
    np.testing.assert_allclose(steps[2] * 3.0, 6.0)
    np.testing.assert_allclose(c.mean(0), vol.centre(), atol=1e-9)
    # a step finer than a voxel: one position per voxel, never less
    fine = vol.physical_to_index(grid_centres(vol, 0.1))
    assert len(np.unique(np.round(fine[:, 2], 6))) == vol.array.shape[0]


def test_matched_filter_peaks_at_the_organ_on_an_anisotropic_grid():
    """The organ centred on a block of the downsampled grid: the filter's best
    peak is that block's centre (in mm), not a block or half a block off."""
    vol0 = _scan([])
    f = np.maximum(1, np.round(4.0 / SPACING)).astype(int)
    block = np.array([13, 9, 9])                                  # x, y, z block index
    want = vol0.index_to_physical((block * f + (f - 1) / 2.0)[None])[0]
    vol = _scan([(want, 1.0)])
    shape0, faces = _organ()
    centres, scores = region_score_map(vol, shape0, faces, _scorer(vol))
    best = centres[np.argmax(scores)]
    assert np.linalg.norm(best - want) < 0.5, (best, want)


def test_search_finds_position_and_scale_and_returns_distinct_hypotheses_best_first():
    """An organ 1.2 times the mean shape off every grid position, and a
    smaller decoy elsewhere: the best hypothesis is the organ, at its scale,
    within a voxel; the hypotheses are ordered by score and a quarter of the
    organ's extent apart."""
    shape0, faces = _organ()
    organ = np.array([-22.3, 7.1, -3.3])
    decoy = np.array([32.0, -25.0, 6.0])
    vol = _scan([(organ, 1.2), (decoy, 0.7)])
    hyps = find_placements(vol, shape0, faces, _scorer(vol), n=3, scales=(0.9, 1.0, 1.2))
    best = hyps[0]
    assert best.source == "search" and best.scale == 1.2, best
    assert np.linalg.norm(best.centre - organ) < 1.5, (best.centre, organ)
    scores = [h.score for h in hyps]
    assert scores == sorted(scores, reverse=True) and len(hyps) >= 2
    extent = float(np.linalg.norm(shape0.max(0) - shape0.min(0)))
    for i in range(len(hyps)):
        for j in range(i):
            assert np.linalg.norm(hyps[i].centre - hyps[j].centre) >= 0.25 * extent


def test_positions_near_a_start_find_the_organ_within_the_radius_only():
    """A start 30 mm off the organ and a radius of 35 mm: the best position near it
    is the organ, within a voxel; an organ as bright 80 mm off is beyond the radius
    (and the refinement's reach) and never returned; no radius or no hypothesis
    asked: none."""
    shape0, faces = _organ()
    organ = np.array([-22.3, 7.1, -3.3])
    start = organ + [0.0, 30.0, 0.0]
    far = start + [80.0, 0.0, 0.0]
    vol = _scan([(organ, 1.0), (far, 1.0)], size=(220, 140, 50))
    hyps = local_placements(vol, shape0, faces, _scorer(vol), start, 35.0, n=3,
                            source="near seed")
    assert hyps and hyps[0].source == "near seed"
    assert np.linalg.norm(hyps[0].centre - organ) < 1.5, (hyps[0].centre, organ)
    step = float(np.linalg.norm(shape0.max(0) - shape0.min(0))) / 10.0
    assert all(np.linalg.norm(h.centre - start) <= 35.0 + 0.75 * step for h in hyps)
    assert local_placements(vol, shape0, faces, _scorer(vol), start, 0.5 * step) == []
    assert local_placements(vol, shape0, faces, _scorer(vol), start, 35.0, n=0) == []


def test_one_organ_gives_one_hypothesis_even_where_the_filter_peaks_twice():
    """An organ 6 mm longer than the template (two overlapping copies) makes the
    filter peak at either end: both refine onto the same organ, which must
    count once, leaving the other hypotheses to other places."""
    shape0, faces = _organ()
    organ = np.array([-22.3, 7.1, -3.3])
    vol = _scan([(organ, 1.0), (organ + [6.0, 0.0, 0.0], 1.0), ([32.0, -25.0, 6.0], 0.7)])
    hyps = find_placements(vol, shape0, faces, _scorer(vol), n=3)
    extent = float(np.linalg.norm(shape0.max(0) - shape0.min(0)))
    near = [h for h in hyps if np.linalg.norm(h.centre - organ - [3.0, 0.0, 0.0]) < 0.25 * extent]
    assert len(near) == 1 and near[0] is hyps[0], [h.to_dict() for h in hyps]


def _phantom_mean(phantom_model):
    """The phantom model's mean shape centred at 0, its faces and extent (x, y, z mm)."""
    from shapeprior.model import load_model

    model = load_model(phantom_model[3])
    shape0 = model.mean - model.mean.mean(0)
    return shape0, model.faces, shape0.max(0) - shape0.min(0)


def _phantom_scan(shape0, faces, organs, slab=None):
    """A 2 mm scan of 10 x 3 x 3 the mean's extent, with the mean scaled by 0.85
    at each centre of ``organs``, and the region score's band for that extent."""
    ext = shape0.max(0) - shape0.min(0)
    size = np.ceil(np.array([10.0, 3.0, 3.0]) * ext / 2.0).astype(int)          # x, y, z
    vol = _scan([(c, 0.85) for c in organs], size, 2.0, (shape0, faces), slab)
    return vol, _scorer(vol, float(np.clip(0.04 * np.linalg.norm(ext), 2.0, 4.0)))


def test_placement_scores_the_boundary_contrast_not_brightness(phantom_model):
    """A large uniform region in the organ's intensity window is brighter inside
    any placed surface than the (smaller) organ itself, but has no boundary
    there: the placement goes to the organ."""
    shape0, faces, ext = _phantom_mean(phantom_model)
    organ = np.array([3.0 * ext[0], 0.0, 0.0])
    vol, scorer = _phantom_scan(shape0, faces, [organ], slab=(-4.8 * ext[0], -0.5 * ext[0]))
    best = find_placements(vol, shape0, faces, scorer, n=3)[0]
    assert np.linalg.norm(best.centre - organ) < 0.25 * ext.max(), (best.centre, organ)


def test_placement_of_a_paired_organ_keeps_to_its_side(phantom_model):
    """Two identical organs either side of the body's midline (LPS x = 0):
    side 'left' (LPS +x) finds the one at +x, 'right' the one at -x."""
    shape0, faces, ext = _phantom_mean(phantom_model)
    left, right = np.array([2.5 * ext[0], 0, 0]), np.array([-2.5 * ext[0], 0, 0])
    vol, scorer = _phantom_scan(shape0, faces, [left, right])
    for side, want in (("left", left), ("right", right)):
        hyps = find_placements(vol, shape0, faces, scorer, n=3, side=side)
        assert np.linalg.norm(hyps[0].centre - want) < 0.25 * ext.max(), (side, hyps[0])
        assert all(np.sign(h.centre[0]) == np.sign(want[0]) for h in hyps)


def _stored(vol, order, flip):
    """The scan ``vol`` stored another way (:meth:`Volume.reoriented_like`): the new
    array's x, y, z axes are the old ones ``order`` (indices into x, y, z), each
    reversed where ``flip``; the same voxels at the same physical positions (as ITK's
    DICOMOrient stores them)."""
    direction = np.stack([vol.direction[:, order[j]] * (-1.0 if flip[j] else 1.0)
                          for j in range(3)], axis=1)
    return vol.reoriented_like(Volume(np.zeros((1, 1, 1)), vol.spacing, vol.origin, direction))


def test_placement_follows_physical_space_not_how_the_scan_stores_its_voxels(phantom_model):
    """The paired-organ scan above stored with its x axis reversed (as a RAS file is),
    and with its axes permuted and reversed (sagittal and coronal files): the same
    voxels at the same places, so each side's placement lands on the same organ, at
    the same place to within two voxels. Before this check, the matched filter's
    template voxelised without the scan's direction, and its peaks placed without it,
    passed every placement test (all on scans stored x, y, z with an identity
    direction; mutation round 79)."""
    shape0, faces, ext = _phantom_mean(phantom_model)
    left, right = np.array([2.5 * ext[0], 0, 0]), np.array([-2.5 * ext[0], 0, 0])
    vol, scorer = _phantom_scan(shape0, faces, [left, right])
    base = {side: find_placements(vol, shape0, faces, scorer, n=3, side=side)[0]
            for side in ("left", "right")}
    # every voxel's value at its physical position, read back through each storage
    ijk = np.argwhere(np.ones(vol.array.shape, bool))[::97][:, ::-1]          # x, y, z
    points = vol.index_to_physical(ijk.astype(float))
    for order, flip in (((0, 1, 2), (True, False, False)), ((2, 0, 1), (False, True, True)),
                        ((1, 2, 0), (True, True, False))):
        other = _stored(vol, order, flip)
        o = np.rint(other.physical_to_index(points)).astype(int)
        assert np.array_equal(other.array[o[:, 2], o[:, 1], o[:, 0]],
                              vol.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]])
        oscore = _scorer(other, scorer.band)
        for side, want in (("left", left), ("right", right)):
            hyps = find_placements(other, shape0, faces, oscore, n=3, side=side)
            assert np.linalg.norm(hyps[0].centre - want) < 0.25 * ext.max(), \
                (order, flip, side, hyps[0])
            assert all(np.sign(h.centre[0]) == np.sign(want[0]) for h in hyps), (order, side)
            assert np.linalg.norm(hyps[0].centre - base[side].centre) <= 2.0 * max(vol.spacing)

