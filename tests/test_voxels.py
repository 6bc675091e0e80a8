"""The voxel classifier: features that follow physical space, trees that stay
valid, and a learned classifier that sharpens a displaced fit."""

import numpy as np
import pytest

from shapeprior.appearance import VoxelClassifier, band_features, learn_voxel_classifier
from shapeprior.appearance._voxels import BAND_VOX, FEATURES
from shapeprior.io import Volume
from shapeprior.mesh import dice, icosphere, voxelize


def _blob_case(rng, centre_shift=(0.0, 0.0, 0.0), direction=None, spacing=(1.0, 1.0, 1.0)):
    """A bright ellipsoidal organ with bumps (LPS mm), blurred, with noise; the
    true surface and mask."""
    from scipy import ndimage

    v, f = icosphere(3)
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    bump = 1.0 + 0.12 * np.sin(3 * u[:, 0] + rng.uniform(0, 6)) * np.cos(2 * u[:, 1])
    verts = u * np.array([14.0, 9.0, 7.0]) * bump[:, None] + np.asarray(centre_shift)
    D = np.eye(3) if direction is None else np.asarray(direction, float)
    sp = np.asarray(spacing, float)
    size = np.array([48, 40, 36])
    origin = -D @ (sp * (size - 1) / 2.0)
    grid = Volume(np.zeros(size[::-1], np.float32), sp, origin, D)
    mask = voxelize(verts, f, grid).astype(bool)
    img = 100.0 + 60.0 * mask + 25.0 * ndimage.binary_dilation(mask, iterations=3) * (~mask)
    img = ndimage.gaussian_filter(img, 0.8) + rng.normal(0, 6.0, img.shape)
    return Volume(img.astype(np.float32), sp, origin, D), mask, verts, f


def _displaced(verts, faces, rng, sd):
    from shapeprior.appearance._voxels import perturbed_surface

    return perturbed_surface(verts, faces, rng, sd)


def test_band_features_follow_physical_space_not_array_storage():
    """The same scan stored with flipped and permuted axes (direction and origin
    matching) gives the same features for the same physical voxels."""
    rng = np.random.default_rng(0)
    vol, mask, verts, faces = _blob_case(rng)
    fit = _displaced(verts, faces, rng, 0.5)
    lab = voxelize(fit, faces, vol)
    X, idx = band_features(vol, lab, fit, faces)
    # array (z, y, x) -> (x, z', y) with z flipped: index (i, j, k) -> (j, nz-1-k, i)
    arr = vol.array[::-1].transpose(2, 0, 1)            # axes: x, z(flipped), y -> new (k', j', i')
    # new index order (xyz): i' = y, j' = z flipped, k' = x
    M = vol.index_to_physical_matrix                     # columns: x, y, z index steps
    nz = vol.array.shape[0]
    newM = np.column_stack([M[:, 1], -M[:, 2], M[:, 0]])
    origin = vol.origin + M[:, 2] * (nz - 1)
    sp = np.linalg.norm(newM, axis=0)
    vol2 = Volume(np.ascontiguousarray(arr), sp, origin, newM / sp)
    lab2 = voxelize(fit, faces, vol2)
    X2, idx2 = band_features(vol2, lab2, fit, faces)
    p1 = vol.index_to_physical(np.stack(idx, 1)[:, ::-1].astype(float))
    p2 = vol2.index_to_physical(np.stack(idx2, 1)[:, ::-1].astype(float))
    o1 = np.lexsort(np.round(p1, 4).T)
    o2 = np.lexsort(np.round(p2, 4).T)
    assert len(X) == len(X2) > 500
    np.testing.assert_allclose(p1[o1], p2[o2], atol=1e-9)
    np.testing.assert_allclose(X[o1], X2[o2], rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def learned():
    rng = np.random.default_rng(1)
    cases = [_blob_case(rng, rng.uniform(-2, 2, 3)) for _ in range(6)]
    return learn_voxel_classifier(cases, seed=0, max_iter=60)


def test_learned_classifier_sharpens_a_displaced_fit(learned):
    from scipy import ndimage

    rng = np.random.default_rng(7)
    before, after = [], []
    for _ in range(3):
        vol, mask, verts, faces = _blob_case(rng, rng.uniform(-2, 2, 3))
        fit = _displaced(verts, faces, rng, 0.8)
        lab = voxelize(fit, faces, vol)
        new, changed = learned.refine(vol, lab, fit, faces, passes=1)
        assert changed == int(np.count_nonzero(new != lab)) > 0
        # one pass: only voxels next to the fitted label's boundary change
        d = (ndimage.distance_transform_edt(lab == 0) - ndimage.distance_transform_edt(lab > 0))
        assert np.all(np.abs(d[new != lab]) <= BAND_VOX)
        before.append(dice(lab, mask))
        after.append(dice(new, mask))
    assert np.mean(after) > np.mean(before) + 0.02, (before, after)
    assert min(a - b for a, b in zip(after, before)) > 0


def test_later_passes_stay_in_the_first_band(learned):
    """A fit 2.5 mm inside the organ (1 mm voxels), so that the organ's boundary
    lies beyond the band: later passes decide the band of the label the pass
    before left, but change no voxel outside the first pass's band (a bright
    neighbour is never followed further than the band); the second pass still
    decides differently from the first; ``changed`` counts against the given
    label."""
    from scipy import ndimage

    from shapeprior.mesh import Surface

    rng = np.random.default_rng(11)
    vol, mask, verts, faces = _blob_case(rng, rng.uniform(-2, 2, 3))
    fit = verts - 2.5 * Surface(verts, faces).vertex_normals()
    lab = voxelize(fit, faces, vol)
    d = ndimage.distance_transform_edt(lab == 0) - ndimage.distance_transform_edt(lab > 0)
    one, c1 = learned.refine(vol, lab, fit, faces, passes=1)
    assert c1 == int(np.count_nonzero(one != lab))
    for passes in (2, 3):
        more, c = learned.refine(vol, lab, fit, faces, passes=passes)
        assert c == int(np.count_nonzero(more != lab)) > 0
        assert np.abs(d[more != lab]).max() <= BAND_VOX
        assert np.count_nonzero(more != one) > 0
        assert dice(more, mask) > dice(lab, mask) + 0.1
    # the default is two passes
    two = learned.refine(vol, lab, fit, faces, passes=2)[0]
    assert np.array_equal(learned.refine(vol, lab, fit, faces)[0], two)
    with pytest.raises(ValueError, match="passes"):
        learned.refine(vol, lab, fit, faces, passes=0)


def test_empty_label_is_left_alone(learned):
    rng = np.random.default_rng(2)
    vol, mask, verts, faces = _blob_case(rng)
    empty = np.zeros(vol.array.shape, np.uint8)
    new, changed = learned.refine(vol, empty, verts, faces)
    assert changed == 0 and not new.any()


def _tree_arrays(clf):
    return {k: getattr(clf, k).copy() for k in VoxelClassifier.ARRAYS}


@pytest.mark.parametrize("damage, msg", [
    (lambda a: a["left"].__setitem__(np.flatnonzero(a["left"] >= 0)[0], 0), "child outside"),
    (lambda a: a["feature"].__setitem__(np.flatnonzero(a["left"] >= 0)[0], 99), "feature index"),
    # one past the last feature: the walk would read beyond each row
    (lambda a: a["feature"].__setitem__(np.flatnonzero(a["left"] >= 0)[0], len(FEATURES)),
     "feature index"),
    # a node that is its own child (the walk would never end), at a root and below one
    (lambda a: a["left"].__setitem__(a["roots"][0], a["roots"][0]), "child outside"),
    (lambda a: a["right"].__setitem__(a["roots"][1], a["roots"][1]), "child outside"),
    (lambda a: a["left"].__setitem__(np.flatnonzero(a["left"] >= 0)[1],
                                     np.flatnonzero(a["left"] >= 0)[1]), "child outside"),
    (lambda a: a["value"].__setitem__(0, np.nan), "NaN"),
    (lambda a: a["right"].__setitem__(np.flatnonzero(a["left"] >= 0)[0], -1), "one child"),
    (lambda a: a.__setitem__("roots", a["roots"][::-1].copy()), "roots"),
])
def test_malformed_trees_are_refused(learned, damage, msg):
    a = _tree_arrays(learned)
    damage(a)
    bad = VoxelClassifier(**a, baseline=learned.baseline, info={})
    with pytest.raises(ValueError, match=msg):
        bad.check()


def test_model_file_keeps_the_classifier_and_refuses_a_damaged_one(learned, tmp_path):
    from shapeprior.model import ModelFormatError, load_model, model_from_shapes, save_model

    rng = np.random.default_rng(3)
    v, f = icosphere(2)
    shapes = v[None] * (10 + rng.normal(0, 0.5, (5, 1, 3)))
    m = model_from_shapes(shapes, f)
    m.voxels = learned
    save_model(m, tmp_path / "m.npz")
    back = load_model(tmp_path / "m.npz")
    X = rng.normal(size=(200, len(FEATURES)))
    np.testing.assert_array_equal(back.voxels.decision(X), learned.decision(X))
    assert back.voxels.info == learned.info
    # a child that points back at its parent would walk forever: refused on load
    z = dict(np.load(tmp_path / "m.npz"))
    left = z["voxel_left"].copy()
    left[np.flatnonzero(left >= 0)[0]] = 0
    z["voxel_left"] = left
    np.savez(tmp_path / "bad.npz", **z)
    with pytest.raises(ModelFormatError, match="bad.npz: voxel classifier child outside"):
        load_model(tmp_path / "bad.npz")
    z = dict(np.load(tmp_path / "m.npz"))
    del z["voxel_value"]
    np.savez(tmp_path / "bad2.npz", **z)
    with pytest.raises(ModelFormatError, match="do not match"):
        load_model(tmp_path / "bad2.npz")


def test_build_without_enough_to_learn_keeps_the_model_and_says_why(tmp_path, monkeypatch):
    """The voxel classifier is an extra of a build with images: when it cannot be
    learned (here scikit-learn is missing) the model is built without it and the
    report says why."""
    import builtins

    from shapeprior.model import BuildParams, build_model
    from shapeprior.synthetic import write_phantom_cases

    images, labels = write_phantom_cases(tmp_path, n_cases=4, seed=5)
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    model, report = build_model(sorted(labels.glob("*.nii.gz")), BuildParams(
        n_vertices=162, iso_spacing=1.0, images_dir=str(images), n_iter=20), root=labels,
        progress=False)
    assert model.profile is not None and model.voxels is None
    assert "scikit-learn" in report["voxel_classifier"]["skipped"]


def test_refined_label_is_one_piece_without_holes():
    """Whatever the trees decide, the label stays the largest connected piece with
    its holes filled: a shell of band voxels cut off from the organ is dropped."""
    from scipy import ndimage

    rng = np.random.default_rng(11)
    vol, mask, verts, faces = _blob_case(rng)
    fit = _displaced(verts, faces, rng, 0.5)
    lab = voxelize(fit, faces, vol)
    # inside where the distance to the surface is <= -0.5 mm or in (1.6, 2.2] mm: a
    # detached shell around the organ
    shell = VoxelClassifier(feature=np.zeros(7, int),
                            threshold=np.array([-0.5, 0, 1.6, 0, 2.2, 0, 0]),
                            left=np.array([1, -1, 3, -1, 5, -1, -1]),
                            right=np.array([2, -1, 4, -1, 6, -1, -1]),
                            value=np.array([0, 1.0, 0, -1.0, 0, 1.0, -1.0]),
                            roots=np.array([0]), baseline=0.0, info={})
    shell.check()
    X, index = band_features(vol, lab, fit, faces)
    raw = lab.copy()
    raw[index] = shell.decision(X) > 0
    assert ndimage.label(raw, structure=np.ones((3, 3, 3)))[1] > 1     # the shell is apart
    new, changed = shell.refine(vol, lab, fit, faces)
    comp, n = ndimage.label(new > 0, structure=np.ones((3, 3, 3)))
    assert n == 1 and changed == int(np.count_nonzero(new != lab)) > 0
    assert np.array_equal(ndimage.binary_fill_holes(new > 0), new > 0)
    assert new.sum() < raw.sum()                                      # the shell is gone
    # and the organ stays: the piece kept is the largest, not the shell or the outside
    pieces, _ = ndimage.label(raw, structure=np.ones((3, 3, 3)))
    organ = pieces == np.argmax(np.bincount(pieces.ravel())[1:]) + 1
    assert dice(new, organ) > 0.98 and dice(new, mask) > 0.9


def _plane_case(own, neighbours):
    """Log-odds on a (7, 9, 9) grid, every voxel in the band: the middle z plane
    ``own``, all others ``neighbours``."""
    lab = np.ones((7, 9, 9), np.uint8)
    dec = np.full(lab.shape, float(neighbours))
    dec[3] = own
    index = np.nonzero(np.ones(lab.shape, bool))
    return dec[index], index, lab


def test_smoothing_overrules_a_hesitant_voxel_but_not_a_confident_one():
    from shapeprior.appearance._voxels import smoothed_decision

    lab = np.ones((7, 9, 9), np.uint8)
    dec = np.ones(lab.shape)
    dec[3, 4, 4] = -0.5            # hesitant, against all its neighbours
    dec[3, 4, 1] = -5.0            # confident
    index = np.nonzero(np.ones(lab.shape, bool))
    out = smoothed_decision(dec[index], index, lab, (1.0, 1.0, 1.0), 0.5).reshape(lab.shape)
    assert out[3, 4, 4] > 0 and out[3, 4, 1] < 0
    # the weights of a 0.5-voxel Gaussian: the voxel itself 0.787 per axis
    w = np.exp(-0.5 * (np.arange(-2, 3) / 0.5) ** 2)
    w /= w.sum()
    assert out[3, 4, 4] == pytest.approx(1.0 - 1.5 * w[2] ** 3, abs=1e-9)


def test_smoothing_is_as_wide_in_mm_along_a_coarse_axis():
    """Slices 5 mm apart (z): the planes above and below hardly count, so a weak
    in-plane decision keeps its sign there; on a 1 mm grid they overrule it."""
    from shapeprior.appearance._voxels import smoothed_decision

    dec, index, lab = _plane_case(0.2, -1.0)
    mid = (3, 4, 4)
    thick = smoothed_decision(dec, index, lab, (1.0, 1.0, 5.0), 0.5).reshape(lab.shape)
    iso = smoothed_decision(dec, index, lab, (1.0, 1.0, 1.0), 0.5).reshape(lab.shape)
    assert thick[mid] == pytest.approx(0.2, abs=1e-6)
    assert iso[mid] < 0
    # the coarse axis given as x instead (spacing is x, y, z): planes fully smoothed
    wrong = smoothed_decision(dec, index, lab, (5.0, 1.0, 1.0), 0.5).reshape(lab.shape)
    assert wrong[mid] < 0


def test_voxels_outside_the_band_count_by_their_side_of_the_label():
    from shapeprior.appearance._voxels import smoothed_decision

    lab = np.zeros((9, 9, 9), np.uint8)
    lab[:, :, :5] = 1
    band = np.zeros(lab.shape, bool)
    band[:, :, 4] = True           # one plane, the label's last, decided 0 (undecided)
    index = np.nonzero(band)
    out = smoothed_decision(np.zeros(int(band.sum())), index, lab, (1.0, 1.0, 1.0), 0.5)
    # x neighbours: inside (+2) at x=3, outside (-2) at x=5: they cancel
    np.testing.assert_allclose(out, 0.0, atol=1e-12)
    lab[:, :, 5] = 1               # now both neighbours are inside
    out = smoothed_decision(np.zeros(int(band.sum())), index, lab, (1.0, 1.0, 1.0), 0.5)
    assert np.all(out > 0.3)


def test_refine_decides_the_band_by_the_smoothed_log_odds(learned):
    from shapeprior.appearance._voxels import smoothed_decision

    rng = np.random.default_rng(11)
    vol, mask, verts, faces = _blob_case(rng)
    fit = _displaced(verts, faces, rng, 0.8)
    lab = voxelize(fit, faces, vol)
    X, index = band_features(vol, lab, fit, faces)
    raw = learned.decision(X)
    smooth = smoothed_decision(raw, index, lab, vol.spacing, 0.5)
    new, _ = learned.refine(vol, lab, fit, faces, smooth_vox=0.5, passes=1)
    alone, _ = learned.refine(vol, lab, fit, faces, smooth_vox=0.0, passes=1)
    assert np.count_nonzero((smooth > 0) != (raw > 0)) > 0
    np.testing.assert_array_equal(new[index] > 0, smooth > 0)
    np.testing.assert_array_equal(alone[index] > 0, raw > 0)


def test_training_displacements_are_smooth_and_along_the_normals():
    """The surfaces the classifier learns from move each vertex along its own
    normal (as a fit errs: in or out), by bumps whose size follows ``sd_mm``."""
    from shapeprior.appearance._voxels import PERTURB_WIDTH_MM, perturbed_surface
    from shapeprior.mesh import Surface, mesh_edges

    v, f = icosphere(4)
    v = v / np.linalg.norm(v, axis=1, keepdims=True) * np.array([30.0, 20.0, 15.0])
    n = Surface(v, f).vertex_normals()
    # vertices one edge apart are at most 2.5 mm apart, well within a bump's width
    e = mesh_edges(f, len(v))
    assert np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1).max() < 0.5 * PERTURB_WIDTH_MM
    sizes = []
    for seed in range(3):
        w = perturbed_surface(v, f, np.random.default_rng(seed), sd_mm=1.0)
        d = w - v
        along = np.sum(d * n, axis=1)
        np.testing.assert_allclose(d, along[:, None] * n, atol=1e-9)
        sizes.append(along.std())
        # smooth: they move alike (measured: at most 0.74 mm; independent moves of
        # the same SD: 3.6-4.6 mm)
        assert np.abs(along[e[:, 0]] - along[e[:, 1]]).max() < 1.5 * along.std()
    assert 0.3 < np.mean(sizes) < 3.0, sizes
    w2 = perturbed_surface(v, f, np.random.default_rng(0), sd_mm=2.0)
    assert np.sum((w2 - v) * n, axis=1).std() == pytest.approx(2.0 * sizes[0], rel=1e-9)


def test_changed_counts_every_pass_even_where_a_later_pass_no_longer_looks():
    """A classifier that grows the label by one voxel per pass, on a label with a
    detached speck: the first pass drops the speck (largest piece kept) and
    grows the organ, the second grows it again, and its band no longer reaches
    the speck. ``changed`` counts the speck's voxels too."""
    from scipy import ndimage

    rng = np.random.default_rng(5)
    vol, mask, verts, faces = _blob_case(rng)
    lab = voxelize(verts, faces, vol)
    lo = np.argwhere(lab).min(0)
    assert np.all(lo >= 8)
    lab[1:4, 1:4, 1:4] = 1                          # a speck far below the organ's box
    grow = VoxelClassifier(feature=np.array([1, 0, 0]), threshold=np.array([1.0, 0.0, 0.0]),
                           left=np.array([1, -1, -1]), right=np.array([2, -1, -1]),
                           value=np.array([0.0, 1.0, -1.0]), roots=np.array([0]),
                           baseline=0.0, info={})
    grow.check()
    one, c1 = grow.refine(vol, lab, verts, faces, passes=1)
    two, c2 = grow.refine(vol, lab, verts, faces, passes=2)
    assert not one[1:4, 1:4, 1:4].any() and not two[1:4, 1:4, 1:4].any()
    assert two.sum() > one.sum() > lab.sum() - 27
    assert c1 == int(np.count_nonzero(one != lab)) and c2 == int(np.count_nonzero(two != lab))
    # the second pass's band (the grown organ's, 2.5 voxels) is far from the speck
    assert ndimage.distance_transform_edt(one == 0)[1:4, 1:4, 1:4].min() > 4
