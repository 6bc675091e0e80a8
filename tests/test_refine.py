"""``shapeprior refine``: an existing mask with planted errors (a leak ball
attached to the organ, an island far from it) is refined with the shape
model; the errors are removed, the rest of the mask is kept, the report says
what was removed, and the inputs are untouched."""

import json

import numpy as np
import pytest

from _phantoms import (ellipsoid_organ, leak_at_tip, nifti_description, read_vtk_mesh,
                       with_status)

from shapeprior.cli import main
from shapeprior.io import Volume, read_label_map, write_label
from shapeprior.segmentation import dice, surface_distances


def _ball(shape, c, r_vox):
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g[k] - c[k]) ** 2 for k in range(3)) <= r_vox ** 2


def test_refine_removes_a_leak_and_an_island(phantom_model, tmp_path, capsys):
    d, images, labels, model = phantom_model
    clean_vol = read_label_map(labels / "phantom_005.nii.gz")
    clean = clean_vol.array > 0
    idx = np.argwhere(clean)
    lo, hi = idx.min(0), idx.max(0)
    bad = clean.copy()
    # a leak: a ball centred just outside the organ's +x end (array axis 2)
    tip = idx[idx[:, 2] == hi[2]].mean(0).round().astype(int)
    tip[2] = min(tip[2] + 3, clean.shape[2] - 5)
    bad |= _ball(clean.shape, tip, 4)
    # an island: a ball away from the organ
    far = np.array([lo[0], lo[1], lo[2]]) // 2
    bad |= _ball(clean.shape, far, 2)
    assert not (_ball(clean.shape, far, 2) & clean).any()
    mask = tmp_path / "mask.nii.gz"
    write_label(Volume(bad.astype(np.uint8) * 2, clean_vol.spacing, clean_vol.origin,
                       clean_vol.direction), bad.astype(np.uint8) * 2, mask)
    before = mask.read_bytes()
    out = tmp_path / "refined"
    rc = main(["refine", str(mask), "-o", str(out), "--model", str(model), "--labels", "2"])
    printed = capsys.readouterr().out
    assert rc == 0 and "removed" in printed
    assert mask.read_bytes() == before
    ref = read_label_map(out / "label.nii.gz")
    assert ref.same_grid(clean_vol)
    got = ref.array > 0
    sp = clean_vol.spacing
    d_bad = surface_distances(bad, clean, sp)["assd_mm"]
    d_ref = surface_distances(got, clean, sp)["assd_mm"]
    # the planted errors are at least halved, and the organ is kept
    assert d_ref <= 0.5 * d_bad, (d_bad, d_ref)
    assert dice(got, clean) > dice(bad, clean) and dice(got, clean) > 0.95
    assert not got[tuple(far)]                                 # the island is gone
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] in ("ok", "suspect") and rep["corrections"]["removed_ml"] > 0
    # the header says what the voxels are, as a header viewer shows it
    from shapeprior.model import load_model

    said = nifti_description(out / "label.nii.gz")
    organ = load_model(model).metadata.get("organ") or "organ"
    assert said == f"shapeprior refined {organ}: " + (
        "ok" if rep["status"] == "ok" else "SUSPECT, review before use"), said
    assert any(r["kind"] == "removed" for r in rep["corrections"]["regions"])
    point_data = read_vtk_mesh(out / "mesh.vtk")[2]
    assert set(point_data) >= {"gross_error_mm", "overridden", "confidence",
                               "distance_to_mean_mm"}
    # the report counts the vertices the mesh marks as overridden
    n_over = int(np.count_nonzero(point_data["overridden"]))
    assert rep["overridden_vertices"] == n_over and 0 < n_over < len(point_data["overridden"])
    man = json.loads((out / "manifest.json").read_text())
    assert man["command"] == "refine" and any(k.startswith("mask/") for k in man["inputs"])
    # the output may not overwrite its input, --force or not
    rc = main(["refine", str(mask), "-o", str(tmp_path), "--model", str(model), "--force"])
    assert rc == 1 and mask.read_bytes() == before


def test_refine_keeps_a_lesion_label_it_would_otherwise_remove(phantom_model, tmp_path, capsys):
    """The planted bulge labelled as a lesion (3) with --keep-labels 3: fitted as
    organ, never removed, written with its own value; an island of the organ's
    label still goes. Without --keep-labels the same bulge is removed."""
    d, images, labels, model = phantom_model
    clean_vol = read_label_map(labels / "phantom_005.nii.gz")
    clean = clean_vol.array > 0
    idx = np.argwhere(clean)
    lo, hi = idx.min(0), idx.max(0)
    tip = idx[idx[:, 2] == hi[2]].mean(0).round().astype(int)
    tip[2] = min(tip[2] + 3, clean.shape[2] - 5)
    lesion = _ball(clean.shape, tip, 4) & ~clean
    far = np.array([lo[0], lo[1], lo[2]]) // 2
    arr = np.where(clean | _ball(clean.shape, far, 2), 2, 0).astype(np.uint8)
    arr[lesion] = 3
    mask = tmp_path / "mask.nii.gz"
    mvol = Volume(arr, clean_vol.spacing, clean_vol.origin, clean_vol.direction)
    write_label(mvol, arr, mask)
    before = mask.read_bytes()
    runs = {}
    for name, extra in (("keep", ["--keep-labels", "3"]), ("plain", ["--labels", "2,3"])):
        out = tmp_path / name
        args = ["refine", str(mask), "-o", str(out), "--model", str(model), *extra]
        if name == "keep":
            args += ["--labels", "2"]
        assert main(args) == 0
        runs[name] = read_label_map(out / "label.nii.gz").array
    assert mask.read_bytes() == before
    kept = runs["keep"]
    assert np.array_equal(kept[lesion], np.full(lesion.sum(), 3))      # all of it, as 3
    assert set(np.unique(kept)) == {0, 1, 3}
    assert not kept[tuple(far)]                                        # the island went
    assert dice(kept == 1, clean) > 0.95
    rep = json.loads((tmp_path / "keep" / "report.json").read_text())
    assert rep["input"]["keep_labels"] == [3] and rep["input"]["labels"] == [2]
    assert not any("--keep-labels" in w for w in rep["warnings"])
    # a kept label the mask does not hold (a typo) is noted, on screen and in the report
    capsys.readouterr()
    assert main(["refine", str(mask), "-o", str(tmp_path / "typo"), "--model", str(model),
                 "--labels", "2", "--keep-labels", "3,7"]) == 0
    shown = capsys.readouterr().out
    rep = json.loads((tmp_path / "typo" / "report.json").read_text())
    assert [w for w in rep["warnings"] if w.startswith("--keep-labels 7: no voxel")]
    assert "--keep-labels 7: no voxel" in shown and "--keep-labels 3" not in shown
    # the same bulge as organ label: removed (at least most of it)
    assert (runs["plain"][lesion] > 0).mean() < 0.5
    # a kept label may not also be an organ label
    rc = main(["refine", str(mask), "-o", str(tmp_path / "x"), "--model", str(model),
               "--labels", "2,3", "--keep-labels", "3"])
    err = capsys.readouterr().err
    assert rc == 1 and "keep label 3" in err and err.count("\n") == 1


def test_refine_rejects_a_mask_without_the_label(phantom_model, tmp_path, capsys):
    d, images, labels, model = phantom_model
    rc = main(["refine", str(labels / "phantom_005.nii.gz"), "-o", str(tmp_path / "o"),
               "--model", str(model), "--labels", "9"])
    err = capsys.readouterr().err
    assert rc == 1 and "no voxel with label" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_refine_refuses_an_image_that_holds_none_of_the_organ(phantom_model, tmp_path, capsys):
    """An image placed elsewhere (another scan): the fit found nothing, and the run
    wrote the mask's refinement with 'failed: empty segmentation' beside '6.8 ml ->
    6.8 ml'. Now one line, exit 1, nothing written, the inputs unchanged; an image
    that holds part of the organ is used."""
    import hashlib

    import SimpleITK as sitk

    d, images, labels, model = phantom_model
    mask = labels / "phantom_005.nii.gz"
    img = sitk.ReadImage(str(images / "phantom_005.nii.gz"))
    far = sitk.Image(img)
    far.SetOrigin(tuple(np.add(img.GetOrigin(), (400.0, 0.0, 0.0))))
    sitk.WriteImage(far, str(tmp_path / "far.nii.gz"))
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(mask)))
    zs = np.flatnonzero(arr.any((1, 2)))
    part = img[:, :, : int(zs[len(zs) // 2])]                # half the organ in view
    sitk.WriteImage(part, str(tmp_path / "part.nii.gz"))
    files = (mask, model, tmp_path / "far.nii.gz")
    before = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    rc = main(["refine", str(mask), "-o", str(tmp_path / "o"), "--model", str(model),
               "--image", str(tmp_path / "far.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 1 and "the image holds none of the mask's organ" in err, err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()
    assert [hashlib.sha256(f.read_bytes()).hexdigest() for f in files] == before
    rc = main(["refine", str(mask), "-o", str(tmp_path / "p"), "--model", str(model),
               "--image", str(tmp_path / "part.nii.gz")])
    capsys.readouterr()
    assert rc in (0, 3) and (tmp_path / "p" / "label.nii.gz").exists()


def test_a_mask_the_model_cannot_fit_fails_in_words_of_the_mask(phantom_model):
    """Refined without an image, the fit runs on the mask rendered as an image;
    a failure is told in the mask's terms: a mask that fills its whole grid has
    no boundary, and one far smaller than the organ does not match the mask (not
    "the image", which the user never gave). Either way the input comes back
    unchanged and the result is failed."""
    from shapeprior.api import refine

    d, images, labels, model = phantom_model
    mask = read_label_map(labels / "phantom_005.nii.gz")
    full = Volume(np.ones_like(mask.array), mask.spacing, mask.origin, mask.direction)
    tiny = np.zeros_like(mask.array)
    c = np.array(tiny.shape) // 2
    tiny[c[0] - 1:c[0] + 1, c[1] - 1:c[1] + 1, c[2] - 1:c[2] + 1] = 1
    small = Volume(tiny, mask.spacing, mask.origin, mask.direction)
    for vol, words in ((full, "in every voxel of its grid: no boundary"),
                       (small, "the surface does not match the mask")):
        r = refine(vol, model)
        assert r.fit.status == "failed" and any(words in x for x in r.fit.reasons), r.fit.reasons
        assert not any("image" in x for x in r.fit.reasons), r.fit.reasons
        assert not any("field of view" in x for x in r.fit.reasons), r.fit.reasons
        assert np.array_equal(r.label, vol.array)


def test_a_fit_that_leaves_the_grid_of_a_mask_inside_it_is_no_cut_organ(phantom_model):
    """The fitted surface of a mask well inside its grid may leave the grid (a mask
    far smaller than the organ, on a 24 mm grid): that is the fit's failure, not an
    organ cut by the field of view; a mask that reaches the grid's edge keeps the
    words."""
    from shapeprior.api import refine
    from shapeprior.segmentation._assess import touches_border as _at_edge
    from shapeprior.segmentation._refine import _of_the_mask

    a = np.zeros((24, 24, 24), np.uint8)
    a[11:13, 11:13, 11:13] = 1
    r = refine(Volume(a, np.ones(3), np.zeros(3), np.eye(3)), phantom_model[3])
    assert r.fit.status == "failed"
    assert "the fitted surface leaves the mask's grid, though the mask does not reach its " \
        "edge" in r.fit.reasons and not any("field of view" in x for x in r.fit.reasons)

    inside = np.zeros((6, 7, 8), bool)
    inside[2:4, 3:5, 3:5] = True
    assert not _at_edge(inside)
    for ax in range(3):
        for end in (0, -1):
            edge = inside.copy()
            idx = [slice(2, 4), slice(3, 5), slice(3, 5)]
            idx[ax] = end
            edge[tuple(idx)] = True
            assert _at_edge(edge)
    cut = "the organ is cut by the field of view"
    out = "40 % of the surface lies outside the field of view"
    assert _of_the_mask(cut, True) == cut and _of_the_mask(out, True) == out
    assert _of_the_mask(cut, False) == ("the fitted surface leaves the mask's grid, though "
                                        "the mask does not reach its edge")
    assert _of_the_mask(out, False) == ("40 % of the surface lies outside the mask's grid, "
                                        "though the mask does not reach its edge")


def test_refine_of_a_folder_names_the_organ_files_in_it(phantom_model, tmp_path, capsys):
    """MASK one scan's folder of per-organ masks (TotalSegmentator writes one file per
    organ into one): refused in one line, naming the files named like the model's
    organ (a folder of cases is refined as a batch: test_refine_batch.py); a label
    map argument that is a folder (segment --reference) says so rather than 'no such
    file'."""
    import shutil

    from shapeprior.model import load_model

    d, images, labels, model = phantom_model
    organ = load_model(model).metadata["organ"]
    per_organ = tmp_path / "seg"
    per_organ.mkdir()
    for name in (f"{organ}_left.nii.gz", "liver.nii.gz", "spleen.nii.gz"):
        shutil.copy(labels / "phantom_005.nii.gz", per_organ / name)
    rc = main(["refine", str(per_organ), "-o", str(tmp_path / "o"), "--model", str(model)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and not (tmp_path / "o").exists()
    assert "holds 3 label maps, 1 of them named like the model's organ" in err
    assert f"organ '{organ}' ({organ}_left.nii.gz): one scan's masks" in err
    assert "liver" not in err
    rc = main(["segment", str(images / "phantom_005.nii.gz"), "-o", str(tmp_path / "o"),
               "--model", str(model), "--reference", str(per_organ)])
    err = capsys.readouterr().err
    # a folder as one case's --reference: the label map named like the case, none here
    assert rc == 1 and "--reference seg holds no label map named like a case" in err, err
    assert not (tmp_path / "o").exists()


def test_segment_starts_from_an_existing_mask(phantom_model, tmp_path, capsys):
    """--init-mask: a rough mask from another tool (shifted by 3 voxels, with a
    leak ball) places the fit; the result matches the truth and says where it
    started."""
    d, images, labels, model = phantom_model
    truth_vol = read_label_map(labels / "phantom_006.nii.gz")
    truth = truth_vol.array > 0
    rough = np.roll(truth, 3, axis=2)
    idx = np.argwhere(truth)
    rough |= _ball(truth.shape, idx.mean(0).round().astype(int) + [0, 0, 6], 3)
    mask = tmp_path / "rough.nii.gz"
    write_label(truth_vol, rough.astype(np.uint8), mask)
    out = tmp_path / "seg"
    assert main(["segment", str(images / "phantom_006.nii.gz"), "-o", str(out), "--model",
                 str(model), "--init-mask", str(mask)]) == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert rep["placement"]["hypotheses"][0]["source"] == "init" and rep["status"] == "ok"
    got = read_label_map(out / "label.nii.gz").array > 0
    assert dice(got, truth) > 0.95 > dice(rough, truth)
    man = json.loads((out / "manifest.json").read_text())
    assert "init_mask" in man["inputs"]
    # an init mask without the organ's label: one line that names the option
    capsys.readouterr()
    assert main(["segment", str(images / "phantom_006.nii.gz"), "-o", str(tmp_path / "none"),
                 "--model", str(model), "--init-mask", str(mask), "--init-labels", "4"]) == 1
    err = capsys.readouterr().err
    assert "--init-mask: the mask has no voxel with label(s) [4] (values present: [0, 1])" \
        in err
    assert err.count("\n") == 1 and not (tmp_path / "none").exists()


def test_missing_slices_are_found_and_interpolated():
    from shapeprior.segmentation import missing_slices

    sp = (2.0, 1.0, 1.0)
    g = np.ogrid[0:40, 0:60, 0:60]
    organ = ((g[0] - 20) * 2.0 / 24) ** 2 + ((g[1] - 30) / 20) ** 2 + ((g[2] - 30) / 14) ** 2 <= 1
    cut = organ.copy()
    cut[18:21] = False                        # three slices (6 mm) missing
    gaps, fill = missing_slices(cut, sp)
    assert gaps[18:21].all() and not gaps[:18].any() and not gaps[21:].any()
    assert dice(fill[18:21], organ[18:21]) > 0.9
    # two objects apart whose cross-sections do not face each other are not a cut organ
    two = np.zeros_like(organ)
    two[10:20, 10:25, 10:50] = True
    two[25:35, 35:50, 10:50] = True
    assert not missing_slices(two, sp)[0].any()
    # nor is a gap longer than MAX_GAP_MM (16 mm here) and a large part of the organ
    # (8 of its 25 slices)
    far = organ.copy()
    far[12:20] = False
    assert far[11].any() and far[20].any()
    assert not missing_slices(far, sp)[0].any()


@pytest.mark.parametrize("start, n", [(18, 3), (25, 3), (26, 4)])
def test_a_gap_follows_an_organ_narrowing_towards_its_pole(start, n, monkeypatch):
    """The default interpolation (Catmull-Rom on the signed distance maps)
    follows the curvature the slices beyond the gap show: fewer wrong voxels
    than the linear blend of the two bounding slices on an ellipsoid, and the
    same, exact, fill for a cylinder (no curvature: no overshoot)."""
    from shapeprior.segmentation import _refine, missing_slices

    sp = (2.0, 1.0, 1.0)
    g = np.ogrid[0:40, 0:60, 0:60]
    organ = ((g[0] - 20) * 2.0 / 24) ** 2 + ((g[1] - 30) / 20) ** 2 + ((g[2] - 30) / 14) ** 2 <= 1
    cyl = np.zeros(organ.shape, bool)
    cyl[5:35] = (g[1] - 30) ** 2 + (g[2] - 30) ** 2 <= 15 ** 2
    wrong = {}
    for mode in ("linear", _refine.GAP_INTERPOLATION):
        monkeypatch.setattr(_refine, "GAP_INTERPOLATION", mode)
        for name, m in (("ellipsoid", organ), ("cylinder", cyl)):
            cut = m.copy()
            cut[start:start + n] = False
            gaps, fill = missing_slices(cut, sp)
            assert gaps[start:start + n].all()
            wrong[mode, name] = int((fill[start:start + n] ^ m[start:start + n]).sum())
    assert _refine.GAP_INTERPOLATION != "linear"
    assert wrong["chord", "ellipsoid"] <= 0.85 * wrong["linear", "ellipsoid"], wrong
    assert wrong["chord", "cylinder"] == wrong["linear", "cylinder"] == 0


@pytest.mark.parametrize("fraction, bridged", [(0.0, False), (0.3, False), (0.33, True)])
def test_a_gap_longer_than_max_gap_mm_is_bridged_up_to_a_fraction_of_the_organ(
        monkeypatch, fraction, bridged):
    from shapeprior.segmentation import _refine, missing_slices, repeated_slices

    monkeypatch.setattr(_refine, "MAX_GAP_FRACTION", fraction)
    sp = (2.0, 1.0, 1.0)
    organ = ellipsoid_organ()                     # 25 slices along the first axis
    z = np.flatnonzero(organ.any(axis=(1, 2)))
    assert z.size == 25
    cut = organ.copy()
    cut[12:20] = False                       # 8 slices: 16 mm, 0.32 of the organ
    gaps, fill = missing_slices(cut, sp)
    assert gaps[12:20].all() == bridged and gaps.any() == bridged
    if bridged:
        assert dice(fill[12:20], organ[12:20]) > 0.85
    # the same length of copies carried forward
    copied = organ.copy()
    copied[12:20] = organ[11]
    assert repeated_slices(copied, sp)[0][12:20].all() == bridged


def test_a_pole_cut_off_by_missing_slices_is_part_of_the_organ_an_island_is_not():
    from shapeprior.segmentation._refine import (GAP_PART_FRACTION, PART_FRACTION,
                                                 bridged_target)

    sp = (2.0, 1.0, 1.0)
    organ = ellipsoid_organ()                     # slices 8..32
    cut = organ.copy()
    cut[25:28] = False                       # the pole beyond: 12 % of the organ
    parts, gaps, fill = bridged_target(cut, sp)
    assert GAP_PART_FRACTION < 0.12 < PART_FRACTION
    assert parts[28:].any() and gaps[25:28].all()
    assert dice((cut & ~gaps) | fill, organ) > 0.98 > dice(cut, organ)
    # a blob of that size beside the organ, whose cross-sections face none of the
    # organ's across a gap, is an island
    beside = organ.copy()
    blob = (slice(10, 20), slice(0, 10), slice(0, 16))
    assert not organ[blob].any()
    beside[blob] = True
    assert GAP_PART_FRACTION < beside[blob].sum() / organ.sum() < PART_FRACTION
    parts, gaps, _ = bridged_target(beside, sp)
    assert not parts[blob].any() and not gaps[blob].any()


def test_the_largest_piece_sets_the_scale_of_the_parts_whichever_comes_first():
    """An island that comes first in the array (a low slice) is still an island:
    the organ's parts are measured against the largest piece."""
    from shapeprior.segmentation._refine import bridged_target

    sp = (2.0, 1.0, 1.0)
    organ = ellipsoid_organ()                     # slices 8..32
    speck = organ.copy()
    speck[1:3, 0:4, 0:4] = True              # 32 voxels, labelled first
    parts, _, _ = bridged_target(speck, sp)
    assert not parts[1:3].any() and np.array_equal(parts, organ)


def test_copies_that_end_a_cut_organ_are_not_bridged_into_the_empty_slice():
    """An organ cut flat (a wide last slice) whose last outline is carried over
    two more slices: nothing lies beyond them to interpolate to, so they stay
    (the pole is not erased)."""
    from shapeprior.segmentation import repeated_slices

    sp = (2.0, 1.0, 1.0)
    cut = ellipsoid_organ()
    cut[21:] = False                         # a wide last slice (20)
    cut[21:23] = cut[20]
    assert cut[20].sum() > 100 and not cut[23:].any()
    gaps, _ = repeated_slices(cut, sp)
    # (a gap is whole slices; the ellipsoid's own repeats along y are others)
    assert not gaps[21].all() and not gaps[22].all()


def test_two_objects_stacked_far_apart_are_not_bridged():
    from shapeprior.segmentation import missing_slices

    sp = (5.0, 1.0, 1.0)                     # thick slices: the millimetre limit is 3 slices
    two = np.zeros((40, 30, 30), bool)
    two[2:14, 5:25, 5:25] = True             # 60 mm
    two[26:38, 8:22, 8:22] = True            # 60 mm below a 60 mm gap: 12 of 36 slices
    assert not missing_slices(two, sp)[0].any()


def test_refine_fills_missing_slices(phantom_model):
    from shapeprior.model import load_model
    from shapeprior.segmentation import refine_mask

    d, images, labels, model_path = phantom_model
    model = load_model(model_path)
    vol = read_label_map(labels / "phantom_005.nii.gz")
    clean = vol.array > 0
    z = np.flatnonzero(clean.any(axis=(1, 2)))
    cut = clean.copy()
    cut[z[len(z) // 2]: z[len(z) // 2] + 3] = False          # 4.5 mm missing
    res = refine_mask(Volume(cut.astype(np.uint8), vol.spacing, vol.origin, vol.direction),
                      model)
    got = res.label > 0
    # measured: Dice 0.81 -> 0.985 on such a cut (phantom_007 of another family)
    assert dice(got, clean) > 0.95 > dice(cut, clean)
    assert res.corrections["added_ml"] > 0 and res.fit.status != "failed"
    assert (got & ~cut)[z[len(z) // 2]: z[len(z) // 2] + 3].any()


def spy_fits(monkeypatch, refine_module, what):
    """The list that receives ``what(params)`` of every fit ``refine_mask`` makes
    from now on (each fit still runs)."""
    seen = []
    real = refine_module.segment_volume

    def spy(v, mdl, params, *a, **k):
        seen.append(what(params))
        return real(v, mdl, params, *a, **k)

    monkeypatch.setattr(refine_module, "segment_volume", spy)
    return seen


@pytest.mark.parametrize("tol", [None, 0.2])
def test_refine_fits_end_their_levels_at_the_tolerance_its_settings_were_chosen_with(
        phantom_model, monkeypatch, tol):
    """Where the parameters give no tol_mm, every fit of a refinement (the mask's,
    and the image's with ``image``) ends every level at MASK_FIT_TOL_MM, not at the
    segmentation's ``level_tol``; a value given is used as given."""
    import shapeprior.segmentation._refine as refine_module
    from shapeprior.io import read_volume
    from shapeprior.model import load_model
    from shapeprior.segmentation import SegmentParams, refine_mask

    d, images, labels, model_path = phantom_model
    model = load_model(model_path)
    seen = spy_fits(monkeypatch, refine_module, lambda p: p.tol_mm)
    mask = read_label_map(labels / "phantom_005.nii.gz")
    refine_mask(mask, model, params=SegmentParams(tol_mm=tol),
                image=read_volume(images / "phantom_005.nii.gz"))
    assert len(seen) >= 2 and set(seen) == {refine_module.MASK_FIT_TOL_MM if tol is None
                                            else tol}, seen
    assert refine_module.MASK_FIT_TOL_MM == 0.05


def test_a_gap_too_long_to_bridge_is_reported_not_hidden(phantom_model):
    """A slab of missing slices longer than any bridge leaves the organ in two
    pieces: the refinement says so (suspect, with the reason) instead of ok."""
    from shapeprior.model import load_model
    from shapeprior.segmentation import refine_mask

    d, images, labels, model_path = phantom_model
    model = load_model(model_path)
    vol = read_label_map(labels / "phantom_005.nii.gz")
    clean = vol.array > 0
    x = np.flatnonzero(clean.any(axis=(0, 1)))               # its longest axis, 1 mm
    cut = clean.copy()
    n = int(0.45 * x.size)                                   # 45 % of the organ's slices
    a = x[0] + (x.size - n) // 2
    cut[:, :, a:a + n] = False
    assert n * float(vol.spacing[0]) > 15.0
    res = refine_mask(Volume(cut.astype(np.uint8), vol.spacing, vol.origin, vol.direction),
                      model)
    assert res.fit.evidence["refined_pieces"] == 2
    assert res.fit.status in ("suspect", "failed")
    assert any("pieces" in r for r in res.fit.reasons)


def test_side_of_a_mask_is_decided_by_position_or_tried_both_ways():
    from shapeprior.segmentation._refine import _sides

    vol = Volume(np.zeros((10, 20, 100), np.uint8), np.array([2.0, 2.0, 2.0]),
                 np.array([-100.0, 0.0, 0.0]), np.eye(3))      # x from -100 to +98 mm LPS
    assert _sides(vol, np.array([60.0, 10.0, 5.0])) == ["left"]    # LPS +x: patient's left
    assert _sides(vol, np.array([-70.0, 10.0, 5.0])) == ["right"]
    # a crop around the organ: its centre says nothing, both sides are fitted
    assert sorted(_sides(vol, np.array([0.0, 10.0, 5.0]))) == ["left", "right"]


def test_copied_slices_are_found_and_interpolated():
    from shapeprior.segmentation import repeated_slices

    sp = (2.0, 1.0, 1.0)
    organ = ellipsoid_organ()
    copied = organ.copy()
    copied[12:15] = organ[11]                  # an outline carried forward three slices
    gaps, fill = repeated_slices(copied, sp)
    assert gaps[12:15].all() and not gaps[11, 0, 0] and not gaps[15, 0, 0]
    assert dice(fill[12:15], organ[12:15]) > 0.95 > dice(copied[12:15], organ[12:15])
    fixed = (copied & ~gaps) | fill
    assert dice(fixed, organ) > 0.99 > dice(copied, organ)
    # an outline that happens to repeat (a smooth organ's widest slices) is
    # bridged to a near copy of itself: nothing a user would notice
    gaps, fill = repeated_slices(organ, sp)
    assert (((organ & ~gaps) | fill) ^ organ).sum() < 1e-3 * organ.sum()
    # a run that ends the organ has nothing to bridge to, and tiny slices do not count
    tail = organ.copy()
    last = np.flatnonzero(organ.any(axis=(1, 2)))[-1]
    tail[last + 1:last + 3] = organ[last]
    assert not repeated_slices(tail, sp)[0][last + 1:, 0, 0].any()


def test_the_boundary_share_tells_a_fit_on_the_mask_from_one_off_it():
    from shapeprior.mesh import icosphere
    from shapeprior.segmentation._refine import ON_BOUNDARY_MM, _BoundaryDistance

    g = np.ogrid[0:50, 0:50, 0:50]
    ball = ((g[0] - 25) ** 2 + (g[1] - 25) ** 2 + (g[2] - 25) ** 2) <= 15 ** 2
    vol = Volume(ball.astype(np.uint8), np.ones(3), np.zeros(3), np.eye(3))
    sphere, _ = icosphere(3)
    bd = _BoundaryDistance(ball, vol)
    on = 15.0 * sphere + 25.0
    assert np.nanmax(bd.distance(on)) < 0.6 and bd.on_fraction(on) == 1.0
    shifted = on + [6.0, 0.0, 0.0]
    assert bd.on_fraction(shifted) < 0.5
    assert bd.tol == ON_BOUNDARY_MM + 0.5
    # beyond the field of view's edge a point is no evidence either way
    assert np.isnan(bd.distance(np.array([[-5.0, 25.0, 25.0]]))).all()


def test_no_boundary_outside_the_mask_is_a_concavity_not_a_defect():
    from types import SimpleNamespace

    from shapeprior.segmentation._refine import suspect_zone

    m = np.zeros((30, 30, 30), bool)
    m[5:25, 5:25, 5:25] = True
    vol = Volume(m.astype(np.uint8), np.ones(3), np.zeros(3), np.eye(3))
    verts = np.array([[15.0, 15.0, 15.0], [3.6, 15.0, 15.0]])        # inside; outside
    fit = SimpleNamespace(verts=verts, overridden=np.zeros(2, bool),
                          confidence=np.zeros(2), error_mm=np.zeros(2))
    with_mask = suspect_zone(fit, vol, margin_mm=2.0, mask=m)
    assert with_mask[15, 15, 15] and not with_mask[15, 15, 4]
    without = suspect_zone(fit, vol, margin_mm=2.0)
    assert without[15, 15, 15] and without[15, 15, 4]
    # a vertex the last projection overrode counts wherever it is
    fit.error_mm = np.array([0.0, 1.0])
    assert suspect_zone(fit, vol, margin_mm=2.0, mask=m)[15, 15, 4]
    # one overridden only by an earlier projection (in the union, |e| now 0) does not
    early = SimpleNamespace(verts=verts, overridden=np.array([False, True]),
                            confidence=np.ones(2), error_mm=np.zeros(2))
    assert not suspect_zone(early, vol, margin_mm=2.0, mask=m).any()


def test_a_fit_off_the_mask_is_tried_again_with_the_short_search(phantom_model, monkeypatch):
    import shapeprior.segmentation._refine as refine
    from shapeprior.model import load_model

    d, images, labels, model_path = phantom_model
    vol = read_label_map(labels / "phantom_002.nii.gz")
    model = load_model(model_path)
    calls = spy_fits(monkeypatch, refine, lambda p: p.schedule)
    monkeypatch.setattr(refine, "ON_BOUNDARY_GOOD", 1.01)       # never good enough
    res = refine.refine_mask(vol, model)
    assert calls == [((refine.MASK_SEARCH_MM, 1.0), *refine.DEFAULT_SCHEDULE),
                     tuple(refine.DEFAULT_SCHEDULE)]
    assert 0.0 <= res.fit.evidence["mask_boundary_fraction"] <= 1.0
    calls.clear()
    monkeypatch.setattr(refine, "ON_BOUNDARY_GOOD", 0.0)        # the first fit is kept
    refine.refine_mask(vol, model)
    assert len(calls) == 1


def test_a_mask_the_model_cannot_explain_is_kept_with_its_gaps_bridged(phantom_model,
                                                                         monkeypatch):
    import shapeprior.segmentation._refine as refine
    from shapeprior.model import load_model
    from shapeprior.segmentation import missing_slices, refine_mask, repeated_slices

    monkeypatch.setattr(refine, "MASK_AGREEMENT", 1.01)     # no fit is good enough
    d, images, labels, model_path = phantom_model
    vol = read_label_map(labels / "phantom_005.nii.gz")
    clean = vol.array > 0
    z = np.flatnonzero(clean.any(axis=(1, 2)))
    cut = clean.copy()
    cut[z[len(z) // 2]: z[len(z) // 2] + 2] = False
    cut[1:3, 1:3, 1:3] = True                                 # an island stays
    res = refine_mask(Volume(cut.astype(np.uint8), vol.spacing, vol.origin, vol.direction),
                      load_model(model_path))
    gaps, fill = missing_slices(cut, vol.spacing[::-1])
    copies, copy_fill = repeated_slices(cut, vol.spacing[::-1])
    expected = (cut & ~copies) | np.where(copies, copy_fill, fill)
    np.testing.assert_array_equal(res.label > 0, expected)
    assert fill.any() and res.fit.status != "ok"
    assert "missing or copied slices interpolated" in res.fit.reasons[-1]
    assert dice(res.label > 0, clean) > dice(cut, clean)


def test_a_kept_label_is_interpolated_across_copied_slices_not_carried():
    """A lesion label across a copied slab: interpolated between the slices
    that bound the slab, as the organ is; a lesion absent from the far slice
    shrinks and vanishes by the middle of the slab instead of being carried
    to its far side."""
    from shapeprior.segmentation._refine import bridged_target, interpolate_gaps

    sp = (2.0, 1.0, 1.0)
    organ = ellipsoid_organ()
    g = np.ogrid[0:40, 0:60, 0:60]
    lesion = organ & (((g[0] - 10) * 2.0 / 8) ** 2 + ((g[1] - 30) / 7) ** 2
                      + ((g[2] - 38) / 5) ** 2 <= 1)        # z 6..14: ends inside the slab
    copied, les = organ.copy(), lesion.copy()
    copied[12:19], les[12:19] = organ[11], lesion[11]   # outlines carried 7 slices
    _, gaps, _ = bridged_target(copied, sp)
    # the copied slab (a symmetric phantom also repeats two y slices)
    assert np.array_equal(np.flatnonzero(gaps.all(axis=(1, 2))), np.arange(12, 19))
    gaps = np.zeros_like(gaps)
    gaps[12:19] = True
    got = interpolate_gaps(les, gaps, sp)
    np.testing.assert_array_equal(got[~gaps], les[~gaps])       # nothing else moves
    assert dice(got, lesion) > dice(les, lesion) + 0.1
    area = got.sum(axis=(1, 2))
    assert area[11] >= area[12] > area[14] and area[15:19].sum() == 0   # gone by mid-slab
    # both bounding slices empty: nothing in the slab
    assert not interpolate_gaps(np.zeros_like(les), gaps, sp).any()


def test_refine_interpolates_a_kept_label_in_copied_slices(phantom_model):
    """``keep``: a kept label is never removed, except that its copies in a
    copied slab are not evidence; there it is interpolated like the organ."""
    from shapeprior.model import load_model
    from shapeprior.segmentation import refine_mask, repeated_slices

    d, images, labels, model_path = phantom_model
    vol = read_label_map(labels / "phantom_005.nii.gz")
    clean = vol.array > 0
    z = np.flatnonzero(clean.any(axis=(1, 2)))
    c = np.argwhere(clean).mean(0).round().astype(int)
    lab = clean.astype(np.uint8)
    a = z[len(z) // 2] - 3
    lesion = clean & _ball(clean.shape, (a - 1, c[1], c[2]), 4)    # ends at slice a + 3
    lab[lesion] = 3
    bad = lab.copy()
    bad[a + 1:a + 6] = lab[a]                   # five slices copy slice a
    gaps = repeated_slices(bad > 0, vol.spacing[::-1])[0]
    assert gaps[a + 1:a + 6].all() and lesion[a].any() and not lesion[a + 5].any()
    res = refine_mask(Volume(bad, vol.spacing, vol.origin, vol.direction),
                      load_model(model_path), labels=(1,), keep=(3,))
    got = res.label == 3
    np.testing.assert_array_equal(got[~gaps], bad[~gaps] == 3)     # kept as it was
    carried = bad == 3
    assert dice(got, lesion) > dice(carried, lesion)
    assert (res.label > 0)[got].all() and set(np.unique(res.label)) <= {0, 1, 3}


def test_an_image_nothing_can_be_fitted_on_leaves_the_mask_alone_to_decide(phantom_model):
    """Refinement with an image that cannot be fitted (flat; an MR under a model
    without appearance, which reads intensities as HU): the refined label is the
    mask-only one, not the unplaced mean shape, and the status says the image
    was not used."""
    from dataclasses import replace

    from shapeprior.io import read_volume
    from shapeprior.model import load_model
    from shapeprior.segmentation import SegmentParams, refine_mask

    d, images, labels, model_path = phantom_model
    model = load_model(model_path)
    mvol = read_label_map(labels / "phantom_005.nii.gz")
    clean = mvol.array > 0
    bad = leak_at_tip(clean)                          # a leak for the refinement to remove
    bvol = Volume(bad.astype(np.uint8), mvol.spacing, mvol.origin, mvol.direction)
    alone = refine_mask(bvol, model, (1,), SegmentParams())
    assert "image_used" not in alone.fit.evidence
    img = read_volume(images / "phantom_005.nii.gz")
    flat = Volume(np.full_like(img.array, 7), img.spacing, img.origin, img.direction)
    bare = replace(model, profile=None, voxels=None)
    for m, image, why in ((model, flat, "flat image"), (bare, img, "Hounsfield")):
        res = refine_mask(bvol, m, (1,), SegmentParams(), image)
        assert np.array_equal(res.label, alone.label if m is model else
                              refine_mask(bvol, m, (1,), SegmentParams()).label)
        assert res.fit.evidence["image_used"] is False
        assert res.fit.status in ("suspect", "failed")
        assert any("image was not used" in r and why in r for r in res.fit.reasons)
    assert dice(alone.label > 0, clean) > dice(bad, clean)


def test_a_multi_label_mask_refined_with_the_default_label_says_so(phantom_model, tmp_path,
                                                                   capsys):
    """A multi-organ map (TotalSegmentator) refined without --labels: label 1 is
    refined, and the report and the output name the other labels, so that a
    wrong organ label is noticed; with --labels given there is no such note."""
    from shapeprior.pipeline._refine import other_labels

    _, _, labels, model = phantom_model
    vol = read_label_map(labels / "phantom_005.nii.gz")
    organ = vol.array > 0
    lab = organ.astype(np.uint8)
    far = np.array(organ.shape) // 8
    lab[_ball(organ.shape, far, 2) & ~organ] = 7             # another organ's label
    mask = tmp_path / "multi.nii.gz"
    write_label(vol, lab, mask)
    assert main(["refine", str(mask), "-o", str(tmp_path / "a"), "--model", str(model)]) == 0
    out = capsys.readouterr().out
    assert "note: the mask holds 1 other label (7) besides the one refined (1, the default)" \
        in out and "name it with --labels" in out
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["input"]["other_labels"] == 1 and len(rep["warnings"]) == 1
    assert main(["refine", str(mask), "-o", str(tmp_path / "b"), "--model", str(model),
                 "--labels", "1"]) == 0
    assert "note:" not in capsys.readouterr().out
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert rep["input"]["other_labels"] == 1 and rep["warnings"] == []
    # counted a slab at a time: labels in the last, partial slab too; none outside range
    a = np.zeros((35, 4, 4), np.uint16)
    a[34, 0, 0], a[0, 1, 1], a[17, 2, 2] = 300, 1, 2
    assert other_labels(a, (1,), slab=16) == [2, 300]
    assert other_labels(a.astype(np.float32), (1,)) == []


def test_a_reference_without_the_organ_is_said_to_be_empty(phantom_model, tmp_path, capsys):
    """--reference whose organ labels are absent (a mistyped --reference-labels, or
    a scan without the organ) printed 'Dice 0.000, mean surface distance inf mm'
    as if the fit had missed; segment and refine now say the reference is empty."""
    d, images, labels, model = phantom_model
    ref = labels / "phantom_005.nii.gz"
    for cmd, given in (("segment", images / "phantom_005.nii.gz"), ("refine", ref)):
        for ref_labels, empty in (("7", True), ("1", False)):
            out = tmp_path / f"{cmd}_{ref_labels}"
            args = [cmd, str(given), "-o", str(out), "--model", str(model), "--reference",
                    str(ref), "--reference-labels", ref_labels]
            assert main(args + (["--no-qc"] if cmd == "segment" else [])) in (0, 3)
            said = capsys.readouterr().out
            rep = json.loads((out / "report.json").read_text())
            assert rep["reference"].get("empty", False) is empty
            assert any("the reference holds no voxel with label(s) [7]" in w
                       for w in rep["warnings"]) is empty
            # what it holds instead is named: label 1 beside the 7 scored
            assert rep["reference"]["other_labels"] == int(empty)
            assert any("the reference holds 1 other label (1) besides the one scored (7)" in w
                       for w in rep["warnings"]) is empty
            assert ("Dice 0." in said or "Dice 1." in said) is not empty, said
            assert ("inf mm" in said) is False, said


def test_a_failed_fit_does_not_cut_the_mask(phantom_model, monkeypatch):
    """A fit whose evidence says it failed (KiTS19 case_00030: a 1,670 ml kidney
    with tumour on 38 slices, 'organ not found', its fitted surface leaving the
    grid) explains the mask well enough by Dice, but cuts nothing: the input comes
    back as given (only missing or copied slices bridged), the status stays
    failed, and the reason says so. Here the mask fit of a phantom mask with an
    island is made to fail."""
    from shapeprior.api import refine
    from shapeprior.segmentation import _refine as mod

    d, images, labels, model = phantom_model
    clean_vol = read_label_map(labels / "phantom_005.nii.gz")
    clean = clean_vol.array > 0
    far = np.argwhere(clean).min(0) // 2                           # an island off the organ
    bad = (clean | _ball(clean.shape, far, 2)).astype(np.uint8)
    vol = Volume(bad, clean_vol.spacing, clean_vol.origin, clean_vol.direction)
    trusted = refine(vol, model)
    assert not trusted.label[tuple(far)]                            # refined when trusted
    monkeypatch.setattr(mod, "segment_volume", with_status(
        mod.segment_volume, "failed", "the surface does not match the mask: organ not found"))
    r = refine(vol, model)
    assert r.fit.status == "failed" and r.fit.evidence["mask_agreement_dice"] >= 0.85
    assert any(x.startswith("not refined: the fit failed; the input is") for x in r.fit.reasons)
    # the input kept: the island too (only a slice the phantom repeats is bridged)
    assert r.label[tuple(far)] and np.count_nonzero(r.label != bad) < 0.02 * bad.sum()
    assert r.corrections["removed_ml"] < 0.1 * trusted.corrections["removed_ml"]
