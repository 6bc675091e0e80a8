"""Segmentation behaviour checked against planted truth: the gross-error
path (a leak must be rejected by the prior, where it is), both sides of a
paired organ through the mirrored model, and voxelisation against a direct
inside test."""

import json

import numpy as np
import pytest

from shapeprior.cli import main
from shapeprior.io import Volume, read_label_map, read_volume
from shapeprior.mesh import icosphere
from shapeprior.model import load_model
from shapeprior.segmentation import SegmentParams, dice, segment_volume, voxelize


@pytest.mark.parametrize("method", ["l1", "l0"])
def test_planted_leak_is_overridden_where_it_is(phantom_model, method):
    d, images, labels, model_path = phantom_model
    model = load_model(model_path)
    # placed at the training position, the leak lies within the first search
    # range, so the gross-error path is exercised (a searched placement starts
    # closer to the organ and may never reach the leak: checked at the end)
    leak = segment_volume(read_volume(images / "phantom_006.nii.gz"), model,
                          SegmentParams(method=method, placement="prior"))
    clean = segment_volume(read_volume(images / "phantom_005.nii.gz"), model,
                           SegmentParams(method=method, placement="prior"))
    # measured (seed 3): leak case 0.033 (l1) / 0.051 (l0) at the worst iteration,
    # clean case 0.002 for both
    assert leak.overridden_fraction_max >= 0.02
    assert clean.overridden_fraction_max <= 0.01
    assert leak.overridden_fraction_max >= 5 * clean.overridden_fraction_max
    assert leak.overridden_fraction <= leak.overridden_fraction_max
    # the leak sits at the organ's +x extreme (shapeprior.synthetic plants it there):
    # the vertices the prior overrode lie on that side
    # (measured: 62-67 % of the overridden vertices lie in the outer half of that
    # side, where 23 % of all vertices lie)
    v = leak.verts
    assert leak.overridden.sum() >= 10
    tip = v[:, 0] > v[:, 0].mean() + 0.5 * (v[:, 0].max() - v[:, 0].mean())
    assert tip[leak.overridden].mean() >= 0.5
    assert tip[leak.overridden].mean() >= 2 * tip.mean()
    # the result keeps the organ, not the leak (measured Dice 0.97-0.98)
    truth = read_label_map(labels / "phantom_006.nii.gz").array > 0
    assert dice(leak.label, truth) > 0.95
    assert leak.error_mm.shape == (model.n_vertices,) and leak.confidence.shape == leak.error_mm.shape
    # the default placement (search over the FOV) keeps the organ too
    searched = segment_volume(read_volume(images / "phantom_006.nii.gz"), model,
                              SegmentParams(method=method))
    hyps = searched.placement["hypotheses"]
    assert any(h["source"] == "search" for h in hyps) and any(h["source"] == "prior" for h in hyps)
    assert dice(searched.label, truth) > 0.95 and searched.status == "ok"


def test_paired_organ_both_sides_through_the_mirrored_model(paired, tmp_path):
    d, images, truth, model = paired
    m = load_model(model)
    assert "mirrored" in m.metadata["side"] and m.shapes.shape[0] == 12
    # left organs sit 24 mm left of the FOV centre, mirrored right ones likewise
    assert m.pose.offset_from_fov_centre_mm[0] == pytest.approx(24.0, abs=3.0)
    name = "pair_006.nii.gz"
    out = {}
    for side in ("left", "right"):
        o = tmp_path / side
        assert main(["segment", str(images / name), "-o", str(o), "--model", str(model),
                     "--side", side]) == 0
        out[side] = read_label_map(o / "label.nii.gz").array > 0
    # measured (seed 11): Dice 0.978 left, 0.976 right; the other side's organ
    # is never picked up (Dice 0.0). Before the mirrored fit reversed its
    # triangles, the right side searched along inward normals: Dice 0.004.
    for side, other in (("left", "right"), ("right", "left")):
        assert dice(out[side], truth[name][side]) > 0.95, side
        assert dice(out[side], truth[name][other]) < 0.05, side
    # without --side: both fitted, one kept (the same label as asking for it), and
    # the report says which, and how the other ended
    o = tmp_path / "none"
    assert main(["segment", str(images / name), "-o", str(o), "--model", str(model)]) == 0
    rep = json.loads((o / "report.json").read_text())
    kept = rep["side"]
    assert np.array_equal(read_label_map(o / "label.nii.gz").array > 0, out[kept])
    assert rep["evidence"]["other_side"]["side"] == {"left": "right", "right": "left"}[kept]
    assert any("both sides were fitted" in w for w in rep["warnings"])


def _stored(src, code, dest):
    """The image file ``src`` stored in the axis order and sense ``code`` (DICOMOrient:
    the same voxels, the same physical positions), written to ``dest`` and read back."""
    import SimpleITK as sitk

    sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(src)), code), str(dest))
    return read_volume(dest)


def _back(label, stored, original):
    """``label`` (an array on the Volume ``stored``'s grid) on the Volume ``original``'s
    grid: the same voxels, put back in the original's order
    (:meth:`Volume.reoriented_like`)."""
    same = Volume(label, stored.spacing, stored.origin, stored.direction)
    return same.reoriented_like(original).array


def test_the_fit_follows_physical_space_not_how_the_scan_stores_its_voxels(
        phantom_model, paired, tmp_path):
    """The same scan stored in other axis orders and senses (a NIfTI written RAS or
    sagittal, TotalSegmentator's LAS label of an LPS series): the placement search, the
    fit and the voxels must not see the difference. The same surface (to 1e-4 mm),
    status and label on the scan's own grid; and a paired organ's left side stays the
    patient's left when the array's x runs the other way. (On the TotalSegmentator
    example CT stored RAS, LPS, PIR, SLA and ILP, both kidneys' Dice agreed to the
    fourth decimal: a scratch run, 2026-12-08.)"""
    import SimpleITK as sitk

    d, images, labels, model_path = phantom_model
    model = load_model(model_path)
    src = images / "phantom_006.nii.gz"          # oblique, with a planted leak
    original = read_volume(src)
    base = segment_volume(original, model, SegmentParams())
    for code in ("RAS", "PIR", "SLA"):
        vol = _stored(src, code, tmp_path / f"{code}.nii.gz")
        r = segment_volume(vol, model, SegmentParams())
        assert r.status == base.status, code
        assert np.abs(r.verts - base.verts).max() < 1e-4, code
        assert np.array_equal(_back(r.label, vol, original) > 0, base.label > 0), code
    assert base.status == "ok"
    d, images, truth, model_path = paired
    model = load_model(model_path)
    name = "pair_006.nii.gz"
    original = read_volume(images / name)
    code = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(
        original.direction.ravel().tolist())
    mirrored_storage = {"L": "R", "R": "L"}[code[0]] + code[1:]
    vol = _stored(images / name, mirrored_storage, tmp_path / "pair_x_reversed.nii.gz")
    for side, other in (("left", "right"), ("right", "left")):
        r = segment_volume(vol, model, SegmentParams(side=side))
        label = _back(r.label, vol, original) > 0
        assert dice(label, truth[name][side]) > 0.95, side
        assert dice(label, truth[name][other]) < 0.05, side


def test_side_for_a_model_of_no_paired_organ_is_noted(phantom_model, paired, tmp_path):
    """--side with a model of no paired organ changes no fit (the same label as
    without it) and the report says so; with a paired organ's model, no such note."""
    d, images, labels, model = phantom_model
    img = images / "phantom_005.nii.gz"
    note = "--side right names the side in the outputs only"
    for args in ([], ["--side", "right"]):
        assert main(["segment", str(img), "-o", str(tmp_path / f"s{len(args)}"), "--model",
                     str(model), *args]) == 0
    rep = json.loads((tmp_path / "s2" / "report.json").read_text())
    assert any(note in w for w in rep["warnings"]) and rep["side"] == "right"
    assert not any(note in w for w in json.loads(
        (tmp_path / "s0" / "report.json").read_text())["warnings"])
    assert np.array_equal(read_label_map(tmp_path / "s0" / "label.nii.gz").array,
                          read_label_map(tmp_path / "s2" / "label.nii.gz").array)
    assert main(["refine", str(labels / "phantom_005.nii.gz"), "-o", str(tmp_path / "r"),
                 "--model", str(model), "--side", "right"]) == 0
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert any(note in w for w in rep["warnings"])
    pd, pimages, _, pmodel = paired
    assert main(["segment", str(pimages / "pair_006.nii.gz"), "-o", str(tmp_path / "p"),
                 "--model", str(pmodel), "--side", "right"]) == 0
    rep = json.loads((tmp_path / "p" / "report.json").read_text())
    assert not any("outputs only" in w for w in rep["warnings"])


def test_paired_organ_init_mask_decides_the_side(paired, tmp_path):
    """--init-mask of a right organ with a paired model and no --side: the starting
    surface is the model mirrored, so the fit runs on the right side (before, it ran
    the unmirrored model from the right organ's surface: the left model's vertex
    order on a right organ). The API's starting_side says the same of each side's
    surface."""
    from shapeprior.io import write_label
    from shapeprior.segmentation import starting_side

    d, images, truth, model = paired
    name = "pair_006.nii.gz"
    vol = read_volume(images / name)
    m = load_model(model)
    for side in ("right", "left"):
        mask = tmp_path / f"{side}_mask.nii.gz"
        write_label(vol, truth[name][side].astype(np.uint8), mask)
        o = tmp_path / f"from_{side}"
        assert main(["segment", str(images / name), "-o", str(o), "--model", str(model),
                     "--init-mask", str(mask)]) == 0
        rep = json.loads((o / "report.json").read_text())
        assert rep["side"] == side and rep["evidence"]["side_source"] == "the starting surface"
        assert rep["status"] == "ok"
        assert dice(read_label_map(o / "label.nii.gz").array > 0, truth[name][side]) > 0.95
        fit = segment_volume(vol, m, SegmentParams(side=side))
        assert starting_side(fit.verts, m.prior_dictionary("auto")) == side
    assert starting_side(np.zeros((5, 3)), m.prior_dictionary("auto")) is None


def _convex_mesh():
    v, f = icosphere(4)
    return v * np.array([18.0, 11.0, 7.5]) + np.array([3.0, -4.0, 6.0]), f


def _inside_convex(points, verts, faces):
    """Direct inside test for a convex, outward-oriented mesh: behind every face plane
    (tested for the points in the mesh's bounding box; the others are outside)."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    n = np.cross(b - a, c - a)
    off = np.einsum("ij,ij->i", n, a)
    box = np.all((points >= verts.min(0)) & (points <= verts.max(0)), axis=1)
    out = np.zeros(len(points), bool)
    out[box] = np.all(points[box] @ n.T <= off[None, :] + 1e-9, axis=1)
    return out


@pytest.mark.parametrize("case", range(3))
def test_voxelize_equals_a_direct_inside_test_on_oblique_grids(case):
    rng = np.random.default_rng(case)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))           # oblique, possibly flipped
    spacing = rng.uniform(0.4, 1.6, 3)                     # anisotropic
    verts, faces = _convex_mesh()
    size = np.ceil(60.0 / spacing).astype(int)
    vol = Volume(np.zeros(size[::-1], np.uint8), spacing, np.zeros(3), q)
    vol.origin = verts.mean(0) - vol.centre()              # centre the grid on the mesh
    got = voxelize(verts, faces, vol).astype(bool)
    idx = np.argwhere(np.ones(vol.array.shape, bool))       # (z, y, x)
    pts = vol.index_to_physical(idx[:, ::-1].astype(float))
    want = _inside_convex(pts, verts, faces).reshape(vol.array.shape)
    assert dice(got, want) >= 0.995
    c_got = vol.index_to_physical(np.argwhere(got)[:, ::-1].mean(0)[None].astype(float))[0]
    c_want = vol.index_to_physical(np.argwhere(want)[:, ::-1].mean(0)[None].astype(float))[0]
    assert np.linalg.norm(c_got - c_want) <= 0.05


def test_voxelize_two_bodies_on_one_ray_and_a_body_cut_by_the_grid():
    """Rays that cross the surface four times (two ellipsoids one above the
    other: the gap between them stays empty) and a body that goes on beyond
    the grid's last column, row and slice (those are voxelised as inside)."""
    v, f = _convex_mesh()
    low, high = v - [0.0, 0.0, 12.0], v + [0.0, 0.0, 12.0]      # 9 mm apart along z
    verts, faces = np.vstack([low, high]), np.vstack([f, f + len(v)])
    spacing = np.array([0.7, 0.9, 0.8])
    size = np.array([40, 24, 45])                               # x, y, z voxels
    # bodies: x -15..21, y -15..7, z -13.5..1.5 and 10.5..25.5 mm; the grid's
    # last column, row and slice (x 5.1, y 2.3, z 17.2 mm) lie inside them
    origin = np.array([-22.2, -18.4, -18.0])
    vol = Volume(np.zeros(size[::-1], np.uint8), spacing, origin, np.eye(3))
    got = voxelize(verts, faces, vol).astype(bool)
    pts = vol.index_to_physical(np.argwhere(np.ones(vol.array.shape, bool))[:, ::-1]
                                .astype(float))
    want = (_inside_convex(pts, low, f) | _inside_convex(pts, high, f)).reshape(got.shape)
    assert dice(got, want) >= 0.995
    for edge in (got[:, :, -1], got[:, -1, :], got[-1]):        # last column, row, slice
        assert edge.any()
    for a, b in ((got[:, :, -1], want[:, :, -1]), (got[:, -1, :], want[:, -1, :]),
                 (got[-1], want[-1])):
        assert abs(int(a.sum()) - int(b.sum())) <= 0.02 * b.sum()
    # between the bodies (centre line, z within 2 mm of the middle) nothing is inside
    zc = (vol.physical_to_index(verts.mean(0)[None])[0]).round().astype(int)
    gap = got[zc[2] - 2:zc[2] + 3, :, :]
    assert not gap.any() and not want[zc[2] - 2:zc[2] + 3].any()


def test_report_states_what_the_prior_rejected(phantom_model, tmp_path, capsys):
    d, images, labels, model = phantom_model
    out = tmp_path / "o"
    assert main(["segment", str(images / "phantom_006.nii.gz"), "-o", str(out), "--model",
                 str(model), "--placement", "prior"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["placement"]["chosen"]["source"] == "prior"
    assert rep["overridden_fraction_max"] >= 0.02 and rep["overridden_vertices"] >= 5
    assert "prior overrode up to" in capsys.readouterr().out
    assert (out / "qc.png").is_file()
    # --no-qc: the same case without the picture, and the manifest lists what is there
    o2 = tmp_path / "noqc"
    assert main(["segment", str(images / "phantom_006.nii.gz"), "-o", str(o2), "--model",
                 str(model), "--placement", "prior", "--no-qc"]) == 0
    man = json.loads((o2 / "manifest.json").read_text())
    assert not (o2 / "qc.png").exists() and "qc.png" not in man["outputs"]
    assert set(man["outputs"]) == {p.name for p in o2.iterdir()} - {"manifest.json"}
    assert np.array_equal(read_label_map(o2 / "label.nii.gz").array,
                          read_label_map(out / "label.nii.gz").array)


def test_seed_in_lps_ras_and_voxel_lands_on_the_same_point(phantom_model, tmp_path, capsys):
    d, images, labels, model = phantom_model
    img = images / "phantom_006.nii.gz"
    vol = read_volume(img)
    truth = read_label_map(labels / "phantom_006.nii.gz").array > 0
    ijk = np.argwhere(truth)[:, ::-1].mean(0)             # organ centre, voxel indices
    lps = vol.index_to_physical(ijk[None])[0]
    ras = lps * np.array([-1.0, -1.0, 1.0])
    labs = []
    for space, p in (("lps", lps), ("ras", ras), ("voxel", ijk)):
        o = tmp_path / space
        seed = ",".join(repr(float(v)) for v in p)
        assert main(["segment", str(img), "-o", str(o), "--model", str(model),
                     "--seed", seed, "--seed-space", space]) == 0, capsys.readouterr().err
        labs.append(read_label_map(o / "label.nii.gz").array)
    # the same point up to rounding of the conversions (1e-12 mm)
    assert dice(labs[0] > 0, labs[1] > 0) > 0.999 and dice(labs[0] > 0, labs[2] > 0) > 0.999
    assert dice(labs[0] > 0, truth) > 0.95
    assert any(v < 0 for v in lps) or any(v < 0 for v in ras)   # a negative number was parsed
    rc = main(["segment", str(img), "-o", str(tmp_path / "far"), "--model", str(model),
               "--seed", "900,900,900"])
    err = capsys.readouterr().err
    assert rc == 3 and "outside the image" in err and err.count("\n") == 1
    rep = json.loads((tmp_path / "far" / "report.json").read_text())
    assert rep["status"] == "failed" and "outside the image" in rep["reasons"][0]


def test_reference_on_another_grid_is_refused_naming_the_difference(phantom_model, tmp_path,
                                                                    capsys):
    """--reference on another grid (moved by part of a voxel, another spacing, or a
    crop that cuts its organ) is refused before any fit, naming what differs (x, y,
    z; the reference's value first), with no output left and the inputs unchanged.
    A crop that keeps the whole organ, or an extension, samples the image's own
    voxels: it is placed on the image's grid and compares as the whole reference."""
    import hashlib
    import json

    import SimpleITK as sitk

    d, images, labels, model = phantom_model
    img = images / "phantom_006.nii.gz"
    lab = sitk.ReadImage(str(labels / "phantom_006.nii.gz"))
    arr = sitk.GetArrayFromImage(lab)
    zs = np.flatnonzero(arr.any((1, 2)))
    kept = lab[:, :, max(int(zs[0]) - 1, 0):]                 # the organ whole
    extended = sitk.ConstantPad(lab, (0, 0, 3), (2, 0, 0), 0)
    spilled = sitk.Image(extended)                            # organ beyond the image
    spilled[4, 5, 1] = 1
    moved = sitk.Image(lab)
    moved.SetOrigin(tuple(np.add(lab.GetOrigin(), (0.0, 0.0, 0.4 * lab.GetSpacing()[2]))))
    coarse = sitk.Image(lab)
    coarse.SetSpacing(tuple(np.multiply(lab.GetSpacing(), (1.0, 1.0, 2.0))))
    for name, ref, what in (("spilled", spilled, "size"), ("moved", moved, "origin (LPS)"),
                            ("coarse", coarse, "spacing")):
        f = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(ref, str(f))
        before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (img, f, model)]
        out = tmp_path / f"out_{name}"
        assert main(["segment", str(img), "-o", str(out), "--model", str(model),
                     "--reference", str(f)]) == 1
        err = capsys.readouterr().err
        assert f"({what} " in err, err
        assert ("part of its organ lies outside the image" if name == "spilled"
                else "not on the image's grid") in err, err
        assert err.count("\n") == 1 and not out.exists()
        assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in (img, f, model)] == before
    scores = {}
    # the same voxels stored in another axis order and sense (TotalSegmentator writes
    # its label of a DICOM series y-flipped): placed as they are, not refused
    code = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(lab.GetDirection())
    flipped = sitk.DICOMOrient(lab, {"L": "R", "R": "L"}[code[0]] + code[1:])
    permuted = sitk.DICOMOrient(kept, code[::-1])
    for name, ref in (("whole", lab), ("kept", kept), ("extended", extended),
                      ("flipped", flipped), ("permuted", permuted)):
        f = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(ref, str(f))
        out = tmp_path / f"out_{name}"
        assert main(["segment", str(img), "-o", str(out), "--model", str(model),
                     "--reference", str(f), "--no-qc", "--placement", "prior"]) in (0, 3)
        scores[name] = json.loads((out / "report.json").read_text())["reference"]["dice"]
    assert scores["kept"] == scores["whole"] == scores["extended"] == scores["flipped"] == \
        scores["permuted"] > 0.5, scores
    vol = read_volume(img)
    ref = read_label_map(tmp_path / "spilled.nii.gz")
    n = list(vol.array.shape[::-1])
    assert vol.grid_difference(ref) == f"size {[n[0] + 2, n[1], n[2] + 3]} vs {n}"
    assert vol.grid_difference(vol) == "" and vol.same_grid(read_label_map(
        labels / "phantom_006.nii.gz"))


def test_a_window_in_hu_is_refused_under_the_ct_model(phantom_model, tmp_path, capsys):
    """--window -50,250 (HU, where HU / 1000 are meant) under the CT intensity model:
    refused before anything is read, saying what it means and what to give; the
    same numbers under percentile normalisation, and -0.05,0.25 under ct, are not."""
    d, images, labels, model = phantom_model
    img = images / "phantom_006.nii.gz"
    for cmd in (["segment", str(img)],
                ["refine", str(labels / "phantom_006.nii.gz"), "--image", str(img)]):
        out = tmp_path / cmd[0]
        rc = main([*cmd, "-o", str(out), "--model", str(model), "--window", "-50,250",
                   *(["--normalisation", "ct"] if cmd[0] == "segment" else [])])
        err = capsys.readouterr().err
        if cmd[0] == "refine":      # the phantom model learned MR appearance: no check
            assert rc == 0 and "HU / 1000" not in err
            continue
        assert rc == 1 and err.count("\n") == 1 and not out.exists()
        assert "means -50000..250000 HU; for -50..250 HU give -0.05,0.25" in err
    from shapeprior.segmentation import check_window

    m = load_model(model)
    with pytest.raises(ValueError, match="HU / 1000"):
        segment_volume(read_volume(img), m, SegmentParams(normalisation="ct",
                                                          window=(-50.0, 250.0)))
    check_window(m, SegmentParams(normalisation="ct", window=(-0.05, 0.25)))
    check_window(m, SegmentParams(window=(-50.0, 250.0)))     # the model's percentile
    with pytest.raises(ValueError, match="4.5,5"):
        check_window(m, SegmentParams(normalisation="ct", window=(4.5, 5.0)))


def test_refinement_holds_back_doubtful_targets():
    """A vertex whose target is 10 mm off with confidence 0.05, among confident
    neighbours that stay put, moves far less than 10 mm; with full confidence
    it would follow its target much further."""
    from shapeprior.mesh import mean_neighbour_operator
    from shapeprior.segmentation._fit import refine_step

    v, f = icosphere(3)
    v = v * 20.0
    L = mean_neighbour_operator(f, len(v))
    tgt = v.copy()
    k = 17
    tgt[k] += 10.0 * v[k] / np.linalg.norm(v[k])
    conf = np.ones(len(v))
    conf[k] = 0.05
    doubtful, _ = refine_step(v, tgt, conf, L, 5)
    sure, _ = refine_step(v, tgt, np.ones(len(v)), L, 5)
    move_doubtful = np.linalg.norm(doubtful[k] - v[k])
    move_sure = np.linalg.norm(sure[k] - v[k])
    # measured: 0.056 mm vs 1.13 mm
    assert move_doubtful < 0.15 and move_sure > 0.9
    # a whole neighbourhood of doubtful targets (every vertex at confidence 0.05,
    # each target 10 mm out) moves by about that share of the way, not all of it
    out = v + 10.0 * v / np.linalg.norm(v, axis=1, keepdims=True)
    low, _ = refine_step(v, out, np.full(len(v), 0.05), L, 5)
    high, _ = refine_step(v, out, np.ones(len(v)), L, 5)
    # (the smoothing averages neighbouring directions: 9.70-9.77 mm with full confidence)
    np.testing.assert_allclose(low - v, 0.05 * (high - v), atol=1e-9)
    assert np.linalg.norm(high - v, axis=1).min() > 9.5


def test_mode_clamp_keeps_the_shape_within_the_bound(phantom_model):
    """SegmentParams.mode_clamp: after every SSC projection no PCA mode leaves
    +-k standard deviations (checked on the last projection: no refinement, no
    surface offset)."""
    import shapeprior as sp
    from shapeprior.segmentation._assess import mode_coefficients

    d, images, labels, model_path = phantom_model
    model = load_model(model_path)
    img = images / "phantom_006.nii.gz"
    free = sp.segment(img, model, refine_iter=0, surface_offset_mm=0.0)
    b_free, _ = mode_coefficients(model, free.verts)
    k = 0.5 * float(np.abs(b_free).max())
    held = sp.segment(img, model, refine_iter=0, mode_clamp=k, surface_offset_mm=0.0)
    b_held, _ = mode_coefficients(model, held.verts)
    assert np.abs(b_held).max() <= 1.05 * k
    with pytest.raises(ValueError, match="mode_clamp"):
        sp.SegmentParams(mode_clamp=0.0)


def test_profile_search_equals_sampling_every_candidate_profile():
    """Sampling each offset along the normal once gives the same best offsets
    and confidences as sampling every candidate's whole profile."""
    from shapeprior.appearance import (NormalSampler, ProfileModel, profile_features,
                                       search_profiles)

    rng = np.random.default_rng(5)
    img = rng.normal(size=(30, 32, 34)).cumsum(0).astype(np.float32)
    vol = Volume(img, np.array([0.9, 1.1, 1.3]), np.array([4.0, -7.0, 2.0]), np.eye(3))
    sampler = NormalSampler(vol, img, "numpy")
    n = 50
    verts = vol.centre() + rng.normal(scale=5.0, size=(n, 3))
    normals = rng.normal(size=(n, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    half, step = 3, 0.75
    pm = ProfileModel(rng.normal(scale=0.2, size=(n, 2 * half)),
                      rng.uniform(0.05, 0.3, (n, 2 * half)), step, half, "percentile", 10, 1e-4)
    for search_mm in (0.75, 3.0, 4.6):
        tgt, conf = search_profiles(pm, sampler, verts, normals, search_mm)
        m = max(1, int(round(search_mm / step)))
        cand = np.arange(-m, m + 1) * step
        t = cand[:, None] + (np.arange(-half, half + 1) * step)[None, :]
        prof = profile_features(sampler(verts, normals, t).reshape(n, *t.shape))
        cost = np.sum((prof - pm.mean[:, None]) ** 2 / pm.var[:, None], axis=2) / prof.shape[2]
        best = np.argmin(cost + 1e-3 * np.abs(cand)[None], axis=1)
        want = np.clip(np.exp(-0.5 * (cost[np.arange(n), best] - 1.0)), 0.05, 1.0)
        assert np.allclose(tgt, verts + cand[best][:, None] * normals, atol=1e-9)
        assert np.allclose(conf, want, atol=1e-9)


def test_body_midline_is_the_centroid_of_the_body_voxels():
    from shapeprior.segmentation._place import body_midline_x

    rng = np.random.default_rng(2)
    a = np.full((40, 50, 60), -1000, np.int16)
    a[5:35, 10:45, 8:30] = rng.integers(-400, 400, (30, 35, 22))
    D = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    vol = Volume(a, np.array([0.7, 0.8, 2.0]), np.array([10.0, -20.0, 5.0]), D)
    for norm in ("ct", "percentile"):
        sub = a[::2, ::2, ::2].astype(np.float32)
        thr = -500.0 if norm == "ct" else float(sub.mean())
        c = np.argwhere(sub > thr).mean(0)[::-1] * 2.0
        want = vol.index_to_physical(c[None])[0, 0]
        assert body_midline_x(vol, norm) == pytest.approx(want, abs=1e-9)


def test_build_calibrates_the_surface_offset_on_its_own_training_shapes(phantom_model):
    """The model records the offset at which its voxelised training surfaces
    best cover their labels, and that offset is the best of its grid."""
    d, images, labels, model_path = phantom_model
    cal = load_model(model_path).metadata["surface_offset"]
    assert cal["n_shapes"] == 6 and len(cal["grid_mm"]) == len(cal["mean_dice"])
    k = int(np.argmax(cal["mean_dice"]))
    assert cal["mm"] == cal["grid_mm"][k] and cal["dice_at_offset"] >= cal["dice_at_0"]
    assert 0.8 < cal["dice_at_0"] <= 1.0


def test_offset_dice_finds_the_radius_a_sphere_lacks():
    """A sphere voxelised 1 mm inside a ball's boundary: the best offset is +1 mm."""
    from shapeprior.model._calibrate import choose_offset, offset_dice

    vol = Volume(np.zeros((50, 50, 50), np.uint8), np.full(3, 0.5), np.zeros(3), np.eye(3))
    c = vol.centre()
    v, f = icosphere(4)
    ijk = np.stack(np.meshgrid(*[np.arange(50)] * 3, indexing="ij"), -1).reshape(-1, 3)
    ball = (np.linalg.norm(vol.index_to_physical(ijk[:, ::-1]) - c, axis=1) <= 8.0)
    ball = ball.reshape(50, 50, 50)
    grid = np.round(np.arange(-1.0, 2.01, 0.25), 2)
    row = offset_dice(c + 7.0 * v, f, vol, ball, grid)
    cal = choose_offset(grid, [row])
    assert cal["mm"] == 1.0 and cal["dice_at_offset"] > 0.97 > cal["dice_at_0"]


def test_segmentation_applies_the_model_offset_and_reports_it(phantom_model):
    import shapeprior as sp

    d, images, labels, model_path = phantom_model
    model = load_model(model_path)
    img = images / "phantom_006.nii.gz"
    model.metadata["surface_offset"] = {"mm": 0.6}
    # the voxelised surfaces (the voxel classifier re-decides the boundary: off here)
    grown = sp.segment(img, model, refine_iter=0, voxel_refine=False)
    plain = sp.segment(img, model, refine_iter=0, surface_offset_mm=0.0, voxel_refine=False)
    assert grown.voxels_changed is None and model.voxels is not None
    assert grown.surface_offset_mm == 0.6 and plain.surface_offset_mm == 0.0
    # the same fit, moved outward along its normals: more voxels, the plain label inside
    assert grown.label.sum() > plain.label.sum()
    assert np.all(grown.label[plain.label > 0] > 0)
    with pytest.raises(ValueError, match="surface_offset_mm"):
        sp.SegmentParams(surface_offset_mm=9.0)


def test_edge_search_moves_nothing_without_being_asked(phantom_model):
    """Without learned appearance the surface lies on the edge: the model's
    calibration is not applied (an explicit offset still is)."""
    from dataclasses import replace

    import shapeprior as sp

    d, images, labels, model_path = phantom_model
    model = load_model(model_path)
    model.metadata["surface_offset"] = {"mm": 0.6}
    bare = replace(model, profile=None)
    img = images / "phantom_006.nii.gz"
    # (an MR phantom: intensities scaled by percentiles, not read as HU)
    assert sp.segment(img, bare, refine_iter=0,
                      normalisation="percentile").surface_offset_mm == 0.0
    assert sp.segment(img, bare, refine_iter=0, normalisation="percentile",
                      surface_offset_mm=0.3).surface_offset_mm == 0.3


def test_segmentation_decides_the_boundary_voxels_with_the_models_classifier(phantom_model):
    """A model built with images carries a voxel classifier; segment applies it to
    the voxels next to the surface only, and reports how many it changed."""
    from scipy import ndimage

    import shapeprior as sp
    from shapeprior.appearance._voxels import BAND_VOX
    from shapeprior.io import read_label_map
    from shapeprior.segmentation import dice, voxelize

    d, images, labels, model_path = phantom_model
    model = load_model(model_path)
    assert model.voxels is not None and model.voxels.info["n_cases"] == 6
    vol = sp.read_volume(images / "phantom_005.nii.gz")
    ref = read_label_map(labels / "phantom_005.nii.gz").array > 0
    r = sp.segment(vol, model)
    surface = voxelize(r.verts, r.faces, vol)
    diff = r.label != surface
    assert r.voxels_changed == int(diff.sum()) > 0
    dist = (ndimage.distance_transform_edt(surface == 0)
            - ndimage.distance_transform_edt(surface > 0))
    assert np.all(np.abs(dist[diff]) <= BAND_VOX)
    # this fit is already near perfect (Dice 0.99): the trees, learned from six
    # phantoms, keep it so (test_voxels.py measures what they gain on displaced fits)
    assert dice(r.label, ref) > 0.975
    off = sp.segment(vol, model, voxel_refine=False)
    assert off.voxels_changed is None
    np.testing.assert_array_equal(off.label, voxelize(off.verts, off.faces, vol))


def _two_edges(noise=0.0, contrast=1.0, seed=0):
    """A bright core (3, radius 8 mm) in a ring (1, to 14 mm) on 0, 0.5 mm voxels,
    centred at LPS 0: two falling edges, the inner one twice as strong."""
    from shapeprior.io import Volume

    n, sp = 72, 0.5
    g = (np.indices((n, n, n)) - 0.5 * (n - 1)) * sp
    r = np.sqrt((g ** 2).sum(0))
    img = contrast * np.where(r < 8.0, 3.0, np.where(r < 14.0, 1.0, 0.0))
    img = img + noise * np.random.default_rng(seed).standard_normal(img.shape)
    return Volume(img.astype(np.float32), np.full(3, sp), np.full(3, -0.5 * (n - 1) * sp),
                  np.eye(3))


def test_mr_intensity_scale_ignores_a_few_extreme_voxels():
    """The MR scale (1st and 99th percentiles) of a scan is that of the same scan
    with a few extreme voxels (a bright vessel, a metal artefact, a dead pixel):
    profiles learned on one compare with the other."""
    from shapeprior.appearance import intensity_scale, normalise_intensity

    rng = np.random.default_rng(2)
    arr = rng.gamma(4.0, 60.0, (30, 40, 50)).astype(np.float32)
    vol = Volume(arr, np.ones(3), np.zeros(3), np.eye(3))
    off, sc = intensity_scale(vol, "percentile")
    assert (off, off + sc) == pytest.approx(tuple(np.percentile(arr, [1, 99])))
    spiky = arr.copy()
    spiky.flat[rng.choice(arr.size, 20, replace=False)] = 60000.0
    spiky.flat[rng.choice(arr.size, 20, replace=False)] = -3000.0
    off2, sc2 = intensity_scale(Volume(spiky, np.ones(3), np.zeros(3), np.eye(3)),
                                "percentile")
    assert off2 == pytest.approx(off, rel=0.02) and sc2 == pytest.approx(sc, rel=0.02)
    n = normalise_intensity(vol, "percentile")
    assert np.mean(n < 0) == pytest.approx(0.01, abs=0.002)
    assert np.mean(n > 1) == pytest.approx(0.01, abs=0.002)


def test_edge_search_polarity_and_intensity_window():
    """From 11 mm (between the edges): the strongest falling edge is the inner
    one; with the ring's intensity window only an edge whose inside lies in the
    window counts (the outer one); rising edges there are none (no move)."""
    from shapeprior.appearance import NormalSampler, search_edges
    from shapeprior.mesh import icosphere

    vol = _two_edges()
    sampler = NormalSampler(vol, vol.array.astype(np.float64), "numpy")
    u, _ = icosphere(2)
    start = 11.0 * u
    for kw, want in (({}, 8.0), ({"window": (0.5, 1.5)}, 14.0)):
        moved, conf = search_edges(sampler, start, u, 5.0, 0.5, inside_brighter=True, **kw)
        radius = np.linalg.norm(moved, axis=1)
        assert np.abs(radius - want).max() < 0.75, (kw, radius.min(), radius.max())
        assert conf.min() > 0.5
    moved, conf = search_edges(sampler, start, u, 5.0, 0.5, inside_brighter=False)
    np.testing.assert_array_equal(moved, start)
    assert conf.max() == 0.05


def test_learned_profile_variances_are_the_training_variances_plus_a_floor():
    """Per vertex and profile sample: the mean and the variance (not the
    standard deviation) over the training images, plus one variance floor."""
    from shapeprior.appearance import learn_profiles, profile_stack
    from shapeprior.appearance._profiles import _floor
    from shapeprior.mesh import icosphere

    u, faces = icosphere(2)
    cases = [(_two_edges(noise, contrast, seed), 14.0 * u)
             for seed, (noise, contrast) in enumerate(((0.05, 1.0), (0.2, 2.0), (0.1, 0.5)))]
    P = profile_stack(cases, faces, step=0.75, half=4)
    pm = learn_profiles(cases, faces, step=0.75, half=4)
    np.testing.assert_allclose(pm.mean, P.mean(0))
    floor = _floor(P.var(0), P.mean(0))
    assert pm.var_floor == pytest.approx(floor) and pm.n_images == 3
    np.testing.assert_allclose(pm.var, P.var(0) + floor)
    assert np.abs(P.std(0) - P.var(0)).max() > 10 * floor    # the test tells them apart


def test_edge_search_resolves_the_finest_voxel_side_on_thick_slices():
    """Without learned appearance the fit searches for the organ's edge in steps of
    half the finest voxel side: on 0.8 x 0.8 x 5 mm voxels a vertex 1.3 mm inside
    a ball finds the ball's edge in-plane to within half a voxel, not to within the
    slices' 2.5 mm."""
    from types import SimpleNamespace

    from shapeprior._profile import NULL_CLOCK
    from shapeprior.appearance import intensity_scale
    from shapeprior.mesh import Surface
    from shapeprior.segmentation._fit import _Fitter

    sp = np.array([0.8, 0.8, 5.0])
    n = np.array([80, 80, 14])
    origin = -sp * (n - 1) / 2.0
    vol = Volume(np.full(n[::-1], -100, np.int16), sp, origin, np.eye(3))
    u, faces = icosphere(3)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    vol.array[voxelize(20.0 * u, faces, vol) > 0] = 40
    model = SimpleNamespace(pose=None, mean=20.0 * u)
    params = SegmentParams(window=(-0.05, 0.15))
    fitter = _Fitter(vol, model, params, None, None, "ct", intensity_scale(vol, "ct"), "numpy",
                     faces, False, NULL_CLOCK)
    v = 18.7 * u
    tgt, conf = fitter.search(fitter.level(0.0), v, 4.0)
    nrm = Surface(v, faces).vertex_normals()
    flat = np.abs(nrm[:, 2]) < 0.3                    # normals in the slices' plane
    r = np.linalg.norm(tgt[flat], axis=1)
    # measured: 0.30 mm on 196 vertices (1.30 mm with steps of half the slice)
    assert flat.sum() > 150 and np.median(np.abs(r - 20.0)) < 0.6, np.median(np.abs(r - 20.0))


@pytest.mark.parametrize("factor", [1.6, 0.5])
def test_an_implausible_size_is_brought_back_about_the_organs_own_centre(factor):
    """A shape grown (into a neighbour) or shrunk beyond the training scale range
    widened by SCALE_SLACK is scaled to that bound about its own centroid: it
    stays where it is; a plausible one is left alone."""
    from types import SimpleNamespace

    from shapeprior._profile import NULL_CLOCK
    from shapeprior.segmentation._assess import organ_scale
    from shapeprior.segmentation._fit import SCALE_SLACK, _Fitter

    u, faces = icosphere(2)
    mean = u * [20.0, 14.0, 10.0]
    model = SimpleNamespace(pose=SimpleNamespace(scale_range=(0.9, 1.1)), mean=mean)
    vol = Volume(np.zeros((4, 4, 4), np.int16), np.ones(3), np.zeros(3), np.eye(3))
    fitter = _Fitter(vol, model, SegmentParams(), None, None, "ct", (0.0, 1000.0), "numpy",
                     faces, False, NULL_CLOCK)
    centre = np.array([-150.0, 80.0, 400.0])                  # far from the origin
    rec = factor * mean + centre
    out, clamped = fitter.plausible_scale(rec)
    bound = 1.1 * SCALE_SLACK if factor > 1 else 0.9 / SCALE_SLACK
    assert clamped and organ_scale(mean, out) == pytest.approx(bound, rel=1e-9)
    np.testing.assert_allclose(out.mean(0), centre, atol=1e-9)
    ok = 1.05 * mean + centre
    assert fitter.plausible_scale(ok)[1] is False and fitter.plausible_scale(ok)[0] is ok


def test_the_training_position_is_always_tried_and_wins_unless_clearly_beaten(phantom_model,
                                                                               monkeypatch):
    """Without a seed the training position (the 'prior' hypothesis) is fitted
    whatever its placement score, and is kept unless another hypothesis's trial
    fit scores more than PRIOR_MARGIN above it. On phantom 6 (a planted leak) a
    searched position's trial scores a little higher (measured 0.994 against
    0.987): the training position is kept."""
    from shapeprior.segmentation import _fit

    d, images, labels, model_path = phantom_model
    model = load_model(model_path)
    vol = read_volume(images / "phantom_006.nii.gz")
    r = segment_volume(vol, model, SegmentParams())
    hyps = r.placement["hypotheses"]
    best = max(hyps, key=lambda h: h["trial_score"] + (_fit.PRIOR_MARGIN if h["source"] == "prior"
                                                          else 0.0))
    assert r.placement["chosen"]["source"] == best["source"] == "prior"
    prior = next(h for h in hyps if h["source"] == "prior")
    top = max(h["trial_score"] for h in hyps if h["source"] != "prior")
    # the scores are within the margin of each other: the margin decides
    assert abs(top - prior["trial_score"]) < _fit.PRIOR_MARGIN
    # a training position the placement search scores far below the best is still tried
    real = _fit.find_placements

    def prior_scored_low(*args, **kwargs):
        out = real(*args, **kwargs)
        for h in out:
            if h.source == "prior":
                h.score = 0.01
        return out

    monkeypatch.setattr(_fit, "find_placements", prior_scored_low)
    low = segment_volume(vol, model, SegmentParams())
    assert any(h["source"] == "prior" and h["score"] == 0.01
               for h in low.placement["hypotheses"])
