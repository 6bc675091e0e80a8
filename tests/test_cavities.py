"""Holes in a mask decided by the image: a cavity with the organ's own
intensity is filled, one that differs (fat, fluid) is the organ's and stays,
one the image does not cover stays; ``shapeprior refine --image`` does it and
reports it, and without the image no cavity is touched."""

import hashlib
import json

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from shapeprior.cli import main
from shapeprior.io import Volume, read_label_map, read_volume, write_label
from shapeprior.segmentation._cavities import fill_organ_like_cavities, sample_image

SPACING = np.array([1.0, 1.0, 1.5])        # x, y, z (mm)


def _ball(shape, c, r):
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g[k] - c[k]) ** 2 for k in range(3)) <= r ** 2


def _scene(seed=0):
    """An organ (ball, value 1) with two cavities: ``a`` where the image has
    the organ's intensity (a hole the mask left), ``b`` where it has fat's."""
    rng = np.random.default_rng(seed)
    shape = (30, 40, 40)
    organ = _ball(shape, (15, 20, 20), 13)
    a, b = _ball(shape, (15, 13, 20), 2), _ball(shape, (15, 27, 20), 2)
    img = np.where(organ, 40.0, -100.0) + rng.normal(0, 5, shape)
    img[b] = -80.0 + rng.normal(0, 5, b.sum())
    label = (organ & ~a & ~b).astype(np.uint8)
    vol = Volume(label, SPACING, np.array([10.0, -5.0, 3.0]), np.eye(3))
    return vol, Volume(img.astype(np.float32), SPACING, vol.origin, vol.direction), a, b


def test_a_cavity_with_the_organs_intensity_is_filled_and_one_with_fat_is_kept():
    vol, image, a, b = _scene()
    out, info = fill_organ_like_cavities(vol.array, vol, image)
    assert out[a].all() and not out[b].any()
    assert np.array_equal(out[~a], vol.array[~a])             # nothing else changes
    assert (info["filled"], info["kept"]) == (1, 1)
    voxel_ml = np.prod(SPACING) / 1000
    assert np.isclose(info["filled_ml"], a.sum() * voxel_ml, atol=1e-3)
    lo, hi = info["organ_range"]
    assert lo < 40 < hi and lo > -80                           # the organ's, not the fat's
    # no range: nothing is filled
    same, info = fill_organ_like_cavities(vol.array, vol, image, percentiles=None)
    assert np.array_equal(same, vol.array) and info["filled"] == 0


def test_the_image_may_lie_on_another_grid():
    """The same scene with the image on a finer, shifted grid: the same
    decisions (trilinear samples at the mask's voxel centres)."""
    vol, image, a, b = _scene()
    # the image resampled onto a grid of half the voxel size, offset by half a voxel
    fine_sp = SPACING / 2
    shape = tuple(int(n) * 2 + 2 for n in vol.array.shape)
    origin = vol.origin - fine_sp / 2
    fine = Volume(np.zeros(shape, np.float32), fine_sp, origin, np.eye(3))
    at = np.argwhere(np.ones(shape, bool))
    src = vol.physical_to_index(fine.index_to_physical(at[:, ::-1].astype(float)))[:, ::-1]
    fine.array[...] = ndimage.map_coordinates(image.array, src.T, order=1,
                                              mode="nearest").reshape(shape)
    out, info = fill_organ_like_cavities(vol.array, vol, fine)
    assert out[a].all() and not out[b].any() and info["filled"] == 1
    # sampling the image's own grid gives its voxels exactly
    idx = np.argwhere(a)
    assert np.array_equal(sample_image(image, vol, idx), image.array[a].astype(float))


def test_a_cavity_outside_the_image_is_kept():
    vol, image, a, b = _scene()
    # the image covers the half of the scene without cavity a (y >= 20 voxels)
    part = Volume(image.array[:, 20:, :].copy(), SPACING,
                  image.index_to_physical(np.array([[0.0, 20.0, 0.0]]))[0], np.eye(3))
    out, info = fill_organ_like_cavities(vol.array, vol, part)
    assert not out[a].any() and not out[b].any()
    assert np.isnan(sample_image(part, vol, np.argwhere(a))).all()
    assert (info["filled"], info["kept"]) == (0, 2)


def test_kept_labels_are_not_the_organs_intensity():
    """A lesion label (2) with its own intensity does not widen the organ's
    range: a cavity with the lesion's intensity stays."""
    vol, image, a, b = _scene()
    arr = vol.array.copy()
    lesion = _ball(arr.shape, (15, 20, 27), 6) & (arr == 1)      # a tenth of the organ
    arr[lesion] = 2
    img = image.array.copy()
    img[lesion] = -95.0                 # darker than the fat in b
    out, info = fill_organ_like_cavities(arr, vol, Volume(img, SPACING, vol.origin,
                                                          vol.direction))
    assert out[a].all() and not out[b].any() and (out[lesion] == 2).all()


def test_refine_with_the_image_fills_a_hole_and_keeps_a_dark_cavity(phantom_model, tmp_path):
    d, images, labels, model = phantom_model
    clean_vol = read_label_map(labels / "phantom_005.nii.gz")
    image = read_volume(images / "phantom_005.nii.gz")
    clean = clean_vol.array > 0
    depth = ndimage.distance_transform_edt(clean, sampling=clean_vol.spacing[::-1])
    deep = np.argwhere(depth >= 5.5)
    # two holes in the mask 2 voxels in radius, far apart: one over organ
    # intensity, one over a dark region planted in the image
    pa = deep[0]
    pb = deep[np.argmax(((deep - pa) ** 2).sum(1))]
    a, b = _ball(clean.shape, pa, 2) & clean, _ball(clean.shape, pb, 2) & clean
    assert not (a & b).any()
    arr = np.where(clean & ~a & ~b, 1, 0).astype(np.uint8)
    img = image.array.copy()
    img[b] = np.percentile(image.array[~clean], 50)        # the background's intensity
    mask, scan = tmp_path / "mask.nii.gz", tmp_path / "scan.nii.gz"
    write_label(clean_vol, arr, mask)
    sitk.WriteImage(Volume(img, image.spacing, image.origin, image.direction).to_sitk(),
                    str(scan))
    hashes = {p: p.read_bytes() for p in (mask, scan)}
    runs = {}
    for name, extra in (("image", ["--image", str(scan)]), ("mask", [])):
        out = tmp_path / name
        assert main(["refine", str(mask), "-o", str(out), "--model", str(model),
                     *extra]) == 0
        runs[name] = (read_label_map(out / "label.nii.gz").array,
                      json.loads((out / "report.json").read_text()))
        # the manifest hashes the mask, and the scan when it was used
        man = json.loads((out / "manifest.json").read_text())["inputs"]
        digests = {k.split("/")[0]: v["sha256"] for k, v in man.items() if "/" in k}
        assert digests["mask"] == hashlib.sha256(hashes[mask]).hexdigest()
        assert digests.get("image") == (hashlib.sha256(hashes[scan]).hexdigest()
                                        if name == "image" else None)
    assert all(p.read_bytes() == h for p, h in hashes.items())
    got, rep = runs["image"]
    assert got[a].all() and not got[b].any()
    cav = rep["evidence"]["cavities"]
    assert cav["filled"] >= 1 and cav["kept"] >= 1
    # without the image neither hole is evidence: both stay
    got, rep = runs["mask"]
    assert not got[a].any() and not got[b].any() and "cavities" not in rep["evidence"]

