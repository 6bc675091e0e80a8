"""Runs of identical slices read with the image: inserted slices are removed
and the displaced side of the organ moved back; copies over slices that were
there stay (they are bridged later, as without the image); a run the image
does not cover stays; ``shapeprior refine --image`` does it and reports it."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from shapeprior.cli import main
from shapeprior.io import Volume, read_label_map, read_volume, write_label
from shapeprior.segmentation import _inserted, _refine
from shapeprior.segmentation._inserted import identical_runs, undo_inserted_slices

SPACING = np.array([1.0, 1.0, 2.0])        # x, y, z (mm)


def _organ(shape=(40, 36, 36)):
    """An egg (an ellipsoid widening along array axis 0), off the grid's
    centres: no two of its slices are the same."""
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    z = (g[0] - 20.3) / 15.2
    return z ** 2 + ((g[1] - 18.4 - 3.1 * z + 0.07 * g[2]) / (10.1 + 2.3 * z)) ** 2 \
        + ((g[2] - 17.6 + 2.2 * z) / (8.3 + 1.9 * z)) ** 2 <= 1


def _scene(seed=0):
    rng = np.random.default_rng(seed)
    organ = _organ()
    img = np.where(organ, 60.0, 10.0) + rng.normal(0, 15, organ.shape)
    vol = Volume(organ.astype(np.uint8), SPACING, np.array([-20.0, 5.0, 30.0]), np.eye(3))
    return organ, vol, Volume(img.astype(np.float32), SPACING, vol.origin, vol.direction)


def _insert(m, a, k):
    """``k`` copies of slice ``a`` inserted after it (axis 0): the rest moves on."""
    out = m.copy()
    out[a + k + 1:] = m[a + 1:len(m) - k]
    out[a + 1:a + k + 1] = m[a]
    return out


def _copy(m, a, k):
    """Slices ``a + 1 .. a + k`` replaced by copies of slice ``a``."""
    out = m.copy()
    out[a + 1:a + k + 1] = m[a]
    return out


def test_inserted_slices_are_removed_and_the_organ_moved_back():
    organ, vol, image = _scene()
    bad = _insert(organ, 16, 3)
    assert identical_runs(bad, 0) == [(16, 19)]
    out, info = undo_inserted_slices(bad.astype(np.uint8), (1,), vol, image)
    assert np.array_equal(out > 0, organ)
    assert info["moved"] == 3 and info["runs"] == 1
    (r,) = info["readings"]
    assert (r["axis"], r["first_slice"], r["copies"], r["slices_removed"]) == (0, 16, 3, 3)
    assert r["reading"] == "inserted, after moved back" and r["continuity"] > 0.9
    odds = [x / (1 - x) for x in (r["explained"], r["explained_copies"])]
    assert odds[0] > (1 + _inserted.INSERTED_MARGIN) * odds[1]


def test_the_side_that_moved_is_the_one_the_image_shows():
    """Inserted before the rest of the organ in the other direction: the part
    before the run is the displaced one."""
    organ, vol, image = _scene(1)
    bad = _insert(organ[::-1], 17, 4)[::-1]         # the copies push the low slices down
    out, info = undo_inserted_slices(bad.astype(np.uint8), (1,), vol, image)
    assert np.array_equal(out > 0, organ)
    assert info["readings"][0]["reading"] == "inserted, before moved back"


def test_copied_slices_stay_where_they_are():
    organ, vol, image = _scene(2)
    bad = _copy(organ, 16, 3)
    out, info = undo_inserted_slices(bad.astype(np.uint8), (1,), vol, image)
    assert np.array_equal(out > 0, bad)
    assert info["moved"] == 0 and info["readings"][0]["reading"] == "copies"
    # and without a margin every run is read as copies
    bad = _insert(organ, 16, 3)
    out, info = undo_inserted_slices(bad.astype(np.uint8), (1,), vol, image, margin=None)
    assert np.array_equal(out > 0, bad) and info["moved"] == 0


def test_a_run_whose_removal_leaves_a_jump_stays_whatever_the_image():
    """Copies over slices that were there (where the organ narrows), and an
    image that shows the organ as if they had been inserted: removing them
    would join outlines five slices apart, so the run stays copies; asked for
    no continuity, the image alone moves it."""
    organ, vol, _ = _scene(6)
    bad = _copy(organ, 12, 4)
    shown = np.concatenate([bad[:13], bad[17:], np.zeros((4,) + bad.shape[1:], bool)])
    rng = np.random.default_rng(6)
    img = np.where(shown, 60.0, 10.0) + rng.normal(0, 15, shown.shape)
    image = Volume(img.astype(np.float32), SPACING, vol.origin, vol.direction)
    out, info = undo_inserted_slices(bad.astype(np.uint8), (1,), vol, image)
    (r,) = info["readings"]
    assert np.array_equal(out > 0, bad) and r["reading"] == "copies"
    assert r["continuity"] < _inserted.JUNCTION_FRACTION
    out, info = undo_inserted_slices(bad.astype(np.uint8), (1,), vol, image, junction=0.0)
    assert np.array_equal(out > 0, shown) and info["moved"] == 4


def test_a_run_the_image_does_not_cover_stays():
    organ, vol, image = _scene(3)
    bad = _insert(organ, 16, 3)
    # the image covers slices 0 .. 29 of 40: not the organ's far end
    part = Volume(image.array[:30].copy(), SPACING, image.origin, image.direction)
    out, info = undo_inserted_slices(bad.astype(np.uint8), (1,), vol, part)
    assert np.array_equal(out > 0, bad)
    assert info["readings"][0]["outside_image"] is True


def test_kept_labels_move_with_the_organ_and_other_labels_are_dropped():
    organ, vol, image = _scene(4)
    lab = organ.astype(np.uint8)
    lesion = organ & (np.arange(organ.shape[0])[:, None, None] >= 28)
    lab[lesion] = 2
    lab[0:3, 0:3, 0:3] = 7                          # another organ's label
    bad = lab.copy()
    bad[...] = _insert(lab, 16, 3)
    out, info = undo_inserted_slices(bad, (1, 2), vol, image)
    assert np.array_equal(out, np.where(np.isin(lab, (1, 2)), lab, 0))
    assert info["moved"] == 3


def test_the_image_may_lie_on_another_grid():
    """The same scene with the image on a coarser grid shifted by half a voxel
    (trilinear samples at the mask's voxel centres): the same reading."""
    organ, vol, image = _scene(5)
    from scipy import ndimage

    coarse_sp = SPACING * 1.5
    shape = tuple(int(n / 1.5) + 2 for n in organ.shape)
    coarse = Volume(np.zeros(shape, np.float32), coarse_sp, vol.origin - coarse_sp / 2,
                    np.eye(3))
    at = np.argwhere(np.ones(shape, bool))
    src = vol.physical_to_index(coarse.index_to_physical(at[:, ::-1].astype(float)))[:, ::-1]
    coarse.array[...] = ndimage.map_coordinates(image.array, src.T, order=1,
                                                mode="nearest").reshape(shape)
    bad = _insert(organ, 16, 3)
    out, info = undo_inserted_slices(bad.astype(np.uint8), (1,), vol, coarse)
    assert np.array_equal(out > 0, organ) and info["moved"] == 3


def test_refine_with_the_image_undoes_inserted_slices(phantom_model, tmp_path):
    """The CLI on a phantom mask with slices inserted: with the image the organ
    is put back (closer to the clean mask than the refinement without the
    image, which can only bridge the run as copies), the report says what was
    moved, and the inputs are unchanged."""
    d, images, labels, model = phantom_model
    clean_vol = read_label_map(labels / "phantom_005.nii.gz")
    image = read_volume(images / "phantom_005.nii.gz")
    clean = clean_vol.array > 0
    zs = np.flatnonzero(clean.any((1, 2)))
    a = int(zs[len(zs) // 2])
    bad = _insert(clean, a, 3)
    assert len(zs) > 12 and identical_runs(bad, 0) == [(a, a + 3)]
    mask, scan = tmp_path / "mask.nii.gz", tmp_path / "scan.nii.gz"
    write_label(clean_vol, bad.astype(np.uint8), mask)
    sitk.WriteImage(image.to_sitk(), str(scan))
    hashes = {p: p.read_bytes() for p in (mask, scan)}
    runs = {}
    for name, extra in (("image", ["--image", str(scan)]), ("mask", [])):
        out = tmp_path / name
        assert main(["refine", str(mask), "-o", str(out), "--model", str(model),
                     *extra]) == 0
        runs[name] = (read_label_map(out / "label.nii.gz").array > 0,
                      json.loads((out / "report.json").read_text()))
    assert all(p.read_bytes() == h for p, h in hashes.items())
    wrong = {k: int((v[0] != clean).sum()) for k, v in runs.items()}
    assert wrong["image"] < 0.5 * wrong["mask"], wrong
    ins = runs["image"][1]["evidence"]["inserted_slices"]
    assert ins["moved"] == 3 and ins["readings"][0]["slices_removed"] == 3
    assert "inserted_slices" not in runs["mask"][1]["evidence"]
    # the corrections are against the input as given (the run removed counts)
    assert runs["image"][1]["corrections"]["input_ml"] == runs["mask"][1]["corrections"][
        "input_ml"]


def test_repeated_slices_reads_runs_as_before():
    """The copies bridge of refine (no image) finds the same runs."""
    organ = _organ()
    bad = _copy(organ, 16, 3)
    gaps, _ = _refine.repeated_slices(bad, SPACING[::-1])
    assert gaps[17:20].all() and not gaps[:17].any() and not gaps[20:].any()


def test_continuity_is_measured_against_the_organ_outside_the_run():
    """The organ's typical overlap of consecutive slices leaves out the run, whose
    copies overlap perfectly: a long run would otherwise raise the median to 1 and
    make every insertion look like a jump."""
    sides = [4, 5, 6, 7, 7, 7, 7, 7, 7, 7, 8, 9]      # slices 4-9 repeat slice 3
    t = np.zeros((len(sides), 12, 12), bool)
    for q, s in enumerate(sides):
        t[q, :s, :s] = True

    def iou(a, b):
        return min(a, b) ** 2 / max(a, b) ** 2

    typical = np.median([iou(4, 5), iou(5, 6), iou(6, 7), iou(8, 9)])
    got = _inserted._continuity(t, 3, 9)
    assert got == pytest.approx(iou(7, 8) / typical) and got > 1.0
    # a run that ends the organ is continuous by definition
    assert _inserted._continuity(t[:10], 3, 9) == 1.0


def test_a_whole_scan_grid_refines_as_the_organs_own_grid(phantom_model):
    """A mask written on a grid much larger than its organ (a network's output on a
    whole scan: here the phantom's grid with 60 voxels of zeros on every side) is
    refined on the organ's box with CROP_MARGIN_MM around it and put back on its
    grid: the same label and surface as on the phantom's own grid, zeros beyond,
    the fits' labels on the large grid, and an inserted run named by its slice on
    the large grid."""
    from shapeprior.segmentation import SegmentParams, refine_mask
    from shapeprior.segmentation._refine import CROP_MARGIN_MM

    d, images, labels, model = phantom_model
    from shapeprior.model import load_model

    model = load_model(model)
    clean_vol = read_label_map(labels / "phantom_005.nii.gz")
    image = read_volume(images / "phantom_005.nii.gz")
    clean = clean_vol.array > 0
    zs = np.flatnonzero(clean.any((1, 2)))
    bad = _insert(clean, int(zs[len(zs) // 2]), 3).astype(np.uint8)
    pad = 60
    assert pad * clean_vol.spacing.min() > CROP_MARGIN_MM + 10      # a crop happens
    big_arr = np.pad(bad, pad)
    shift = clean_vol.direction @ (clean_vol.spacing * pad)
    big = Volume(big_arr, clean_vol.spacing, clean_vol.origin - shift, clean_vol.direction)
    small = Volume(bad, clean_vol.spacing, clean_vol.origin, clean_vol.direction)
    inner = tuple(slice(pad, pad + n) for n in bad.shape)
    for img in (None, image):
        a = refine_mask(small, model, (1,), SegmentParams(), img)
        b = refine_mask(big, model, (1,), SegmentParams(), img)
        assert b.label.shape == big_arr.shape and b.mask_fit.label.shape == big_arr.shape
        # the final fit: to the mask (on its grid), or to the image (on the image's)
        assert b.fit.label.shape == (big_arr.shape if img is None else image.array.shape)
        assert np.array_equal(b.label[inner], a.label)
        assert b.label.sum() == a.label.sum()                       # zeros beyond
        np.testing.assert_allclose(b.fit.verts, a.fit.verts, atol=1e-6)
        assert b.fit.status == a.fit.status
        assert b.corrections == a.corrections
        if img is not None:
            ra = a.fit.evidence["inserted_slices"]["readings"]
            rb = b.fit.evidence["inserted_slices"]["readings"]
            assert [r["first_slice"] - pad for r in rb] == [r["first_slice"] for r in ra]
            assert [r["axis"] for r in rb] == [r["axis"] for r in ra] and rb
