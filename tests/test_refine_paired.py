"""Refining a mask that holds both sides of a paired organ (a KiTS-style map:
both kidneys under one label) with a model of one side (--split-sides)."""

import csv
import hashlib
import json

import numpy as np
import pytest

from _phantoms import read_vtk_mesh

from shapeprior.cli import main
from shapeprior.io import Volume, read_label_map, write_label
from shapeprior.segmentation import dice, paired_parts


def _rotation(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0, 0, 1.0]])


def _ball(shape, centre, r):
    z, y, x = np.indices(shape)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= r * r


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), _rotation(25)])
def test_paired_parts_split_side_by_side_organs_at_the_midline(direction):
    """Two organs side by side split by the patient's x (LPS, the grid's
    direction applied: a flipped or rotated grid keeps left as left); an
    island goes to the side it lies on; an organ cut in two by missing slices
    (its parts overlap from left to right), or beside a small stray piece, is one."""
    shape = (30, 40, 80)
    vol = Volume(np.zeros(shape, np.uint8), np.array([1.0, 1.0, 2.0]), np.array([5.0, -3, 7]),
                 direction)
    a, b = _ball(shape, (15, 20, 18), 9), _ball(shape, (15, 20, 60), 9)
    island = _ball(shape, (3, 5, 75), 1)
    parts = paired_parts(vol, a | b | island)
    assert parts is not None
    x_of = lambda m: vol.index_to_physical(np.argwhere(m)[:, ::-1].astype(float))[:, 0].mean()  # noqa: E731
    assert x_of(parts["left"]) > x_of(parts["right"])
    # the island lies beyond b, so it goes with b, on whichever side the grid puts b
    left, right = (a, b | island) if x_of(a) > x_of(b) else (b | island, a)
    assert np.array_equal(parts["left"], left) and np.array_equal(parts["right"], right)
    assert not (parts["left"] & parts["right"]).any()
    # one organ cut by an empty slab of slices: two pieces, the same x extent
    one = _ball(shape, (15, 20, 40), 12)
    one[14:17] = False
    assert paired_parts(vol, one) is None
    # a second piece under a fifth of the largest is a stray piece, not an organ ...
    small = a | _ball(shape, (15, 20, 60), 4)
    assert paired_parts(vol, small) is None
    # ... unless it is as large as an organ of the model (KiTS19 case_00030: a 156 ml
    # kidney beside 1,514 ml of kidney and tumour)
    ml = float(np.count_nonzero(_ball(shape, (15, 20, 60), 4))) * np.prod(vol.spacing) / 1000
    assert paired_parts(vol, small, min_ml=0.9 * ml) is not None
    assert paired_parts(vol, small, min_ml=1.1 * ml) is None
    assert paired_parts(vol, a) is None and paired_parts(vol, np.zeros(shape, bool)) is None


def test_the_smallest_organ_of_a_model_is_its_mean_at_its_smallest_size():
    """smallest_organ_ml: the mean shape's volume times the cube of the pose
    prior's smallest scale (the KiTS model's: 41 ml)."""
    from types import SimpleNamespace as NS

    from shapeprior.mesh import icosphere
    from shapeprior.segmentation._paired import organ_min_ml, smallest_organ_ml

    v, f = icosphere(3)
    ball = NS(mean=10.0 * v, faces=f, pose=NS(scale_range=(0.5, 2.0)))
    want = 4 / 3 * np.pi * 10.0 ** 3 / 1000 * 0.5 ** 3           # a 10 mm ball, halved
    assert smallest_organ_ml(ball) == pytest.approx(want, rel=0.02)
    assert organ_min_ml(ball) == pytest.approx(0.5 * want, rel=0.02)
    assert smallest_organ_ml(NS(mean=v, faces=f, pose=None)) is None


def _digest(*paths):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_refine_of_both_sides_refines_each_with_its_own_shape(paired, tmp_path, capsys):
    """The held-out phantom's label holds both organs under label 1: each side is
    refined with its own side's shape (the right one with the mirrored model),
    a leak planted on the left organ removed there, the right organ kept close to
    its truth. Before, one shape was fitted to both: 'not refined: the model
    explains the mask poorly', the input returned unchanged."""
    d, _, truth, model = paired
    name = "pair_006.nii.gz"
    given = read_label_map(d / "labels" / name)
    mask = given.array.copy()
    left = truth[name]["left"]
    # a blob stuck to the left organ's lateral side (+x: the patient's left)
    z, y, x = np.argwhere(left).mean(0).round().astype(int)
    xs = np.flatnonzero(left[z, y])
    blob = _ball(mask.shape, (z, y, xs.max() + 5), 5)
    mask[blob] = 1
    src = tmp_path / "mask.nii.gz"
    write_label(given, mask, src)
    before = _digest(src, model)
    out = tmp_path / "o"
    assert main(["refine", str(src), "-o", str(out), "--model", str(model)]) == 0
    shown = capsys.readouterr().out
    assert "both sides of the paired organ: left" in shown and "right" in shown
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "ok", rep["reasons"]
    assert rep["paired"]["refined"] == ["left", "right"]
    assert set(rep["sides"]) == {"left", "right"}
    assert all(rep["sides"][s]["status"] == "ok" for s in ("left", "right"))
    lab = read_label_map(out / "label.nii.gz").array
    assert np.array_equal(np.unique(lab), [0, 1])
    for side in ("left", "right"):
        m = truth[name][side]
        near = np.zeros_like(m)
        near[:, :, (np.flatnonzero(m.any((0, 1))).min() - 8):
             (np.flatnonzero(m.any((0, 1))).max() + 8)] = True
        assert dice(lab.astype(bool) & near & ~blob, m) > 0.9, side
    # the leak: most of it removed, and the removal counted
    assert np.count_nonzero(lab.astype(bool) & blob & ~left) < 0.3 * np.count_nonzero(
        blob & ~left)
    assert rep["corrections"]["removed_ml"] > 0.1
    # the mesh: the two sides one after the other, the side as point data
    pts, _, data, _ = read_vtk_mesh(out / "mesh.vtk")
    n = 642
    assert len(pts) == 2 * n
    assert np.array_equal(data["side"], np.r_[np.ones(n), 2 * np.ones(n)])
    assert pts[:n, 0].mean() > pts[n:, 0].mean()               # left: larger LPS x
    stats = json.loads((out / "statistics.json").read_text())
    assert set(stats["sides"]) == {"left", "right"} and stats["status"] == "ok"
    assert _digest(src, model) == before


def test_refine_of_one_side_keeps_the_other_as_given(paired, tmp_path):
    """--side right on a mask of both: the right organ is refined, the left one
    written as given, voxel for voxel. With --output-type dicom-seg and its scan as a
    DICOM series, the SEG holds one segment per side, coded with its laterality: the
    left one the left organ as given, the right one the refined right organ."""
    import pydicom
    from _phantoms import write_dicom_series

    from shapeprior.io import read_image

    d, images, truth, model = paired
    name = "pair_006.nii.gz"
    src = d / "labels" / name
    vol, _ = read_image(images / name)
    series = write_dicom_series(vol, tmp_path / "dicom")
    out = tmp_path / "o"
    assert main(["refine", str(src), "-o", str(out), "--model", str(model),
                 "--side", "right", "--image", str(series), "--output-type",
                 "nifti,dicom-seg"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["paired"]["refined"] == ["right"]
    assert rep["paired"]["kept_as_given"] == ["left"]
    assert rep["sides"]["left"] == {"status": "kept as given"}
    lab = read_label_map(out / "label.nii.gz").array.astype(bool)
    given = read_label_map(src).array.astype(bool)
    left = truth[name]["left"]
    half = np.zeros_like(left)
    half[:, :, left.shape[2] // 2:] = True       # the grid's +x half holds the left organ
    assert np.array_equal(lab & half, given & half)
    assert dice(lab & ~half, truth[name]["right"]) > 0.9
    pts, _, data, _ = read_vtk_mesh(out / "mesh.vtk")
    assert len(pts) == 642 and np.all(data["side"] == 2)
    assert rep["dicom_seg"]["written"]
    ds = pydicom.dcmread(out / "seg.dcm")
    number = {s.SegmentLabel.rsplit("(", 1)[-1].rstrip(")"): s.SegmentNumber
              for s in ds.SegmentSequence}
    assert sorted(number) == ["left", "right"]
    for s in ds.SegmentSequence:
        assert s.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning.lower() == \
            s.SegmentLabel.rsplit("(", 1)[-1].rstrip(")")
    seg = read_label_map(out / "seg.dcm").placed_on(vol)
    assert np.array_equal(seg == number["left"], given & half)
    assert np.array_equal(seg == number["right"], lab & ~half)


def test_the_report_of_both_sides_takes_the_worst_side():
    """A paired refinement's status is its worse side's, its quality the lower,
    each reason led by its side; a side kept as given has no say."""
    from types import SimpleNamespace as NS

    from shapeprior.pipeline._refine import _paired_block
    from shapeprior.segmentation import PairedRefineResult

    def side(status, quality, reasons, n_iter, overridden):
        fit = NS(status=status, quality=quality, reasons=reasons, overridden_fraction_max=0.1,
                 overridden=np.array(overridden, bool), evidence={}, n_iter=n_iter,
                 converged=status == "ok")
        return NS(fit=fit, corrections={}, mask_fit=NS(status=status, quality=quality,
                                                       reasons=[]))

    res = PairedRefineResult(np.zeros((2, 2, 2), np.uint8), {"removed_ml": 1.0, "added_ml": 0.0},
                             {"left": side("ok", 0.9, [], 5, [1, 0]),
                              "right": side("suspect", 0.6, ["cut by the field of view"], 7,
                                            [1, 1])},
                             {"left": 150.0, "right": 160.0})
    b = _paired_block(res)
    assert b["status"] == "suspect" and b["quality"] == 0.6
    assert res.status == "suspect" and res.reasons == ["right: cut by the field of view"]
    assert repr(res).startswith("PairedRefineResult(status='suspect', left=ok, right=suspect, "
                                "removed_ml=1")
    assert b["reasons"] == ["right: cut by the field of view"]
    assert b["overridden_vertices"] == 3 and b["iterations"] == 7 and not b["converged"]
    assert b["sides"]["right"]["status"] == "suspect" and b["corrections"]["removed_ml"] == 1.0
    res.sides["left"] = side("failed", 0.1, ["empty"], 1, [0, 0])
    assert _paired_block(res)["status"] == "failed"
    res.sides["left"] = None
    b = _paired_block(res)
    assert b["status"] == "suspect" and b["paired"]["kept_as_given"] == ["left"]
    assert "left=kept as given, right=suspect" in repr(res)
    assert b["sides"]["left"] == {"status": "kept as given"}


def test_segment_from_a_mask_of_both_sides_takes_the_side_asked_for(paired, tmp_path, capsys):
    """segment --init-mask with a mask of both sides: one organ is fitted, so the
    side must be named (one line, exit 1, nothing written); with --side right
    the fit starts from the right organ's part and segments it."""
    d, images, truth, model = paired
    name = "pair_006.nii.gz"
    mask = d / "labels" / name
    out = tmp_path / "o"
    args = ["segment", str(images / name), "-o", str(out), "--model", str(model),
            "--init-mask", str(mask)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init-mask holds both sides of the paired organ (left" in err[0]
    assert "give --side left or --side right" in err[0] and not out.exists()
    assert main(args + ["--side", "right"]) == 0
    lab = read_label_map(out / "label.nii.gz").array.astype(bool)
    assert dice(lab, truth[name]["right"]) > 0.85


def test_reconstruct_takes_both_sides_of_a_refined_mesh(paired, tmp_path, capsys):
    """The mesh refine writes for a mask of both sides (the left's vertices, then the
    right's) is two shapes to reconstruct: 'NAME [left]' and 'NAME [right]', each on
    its own side, with meshes of their own; --deidentify keeps the side. A mesh of
    twice the model's vertices that is one surface (a triangle joining the halves)
    is not cut in two: it fails as a mesh of another vertex count."""
    from shapeprior.mesh import Surface, read_mesh

    d, _, _, model = paired
    out = tmp_path / "r"
    assert main(["refine", str(d / "labels" / "pair_006.nii.gz"), "-o", str(out),
                 "--model", str(model)]) == 0
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    both = read_mesh(out / "mesh.vtk")
    both.write(meshes / "pair.vtk")
    joined = Surface(both.verts, np.vstack([both.faces, [[0, 1, 700]]]))
    joined.write(meshes / "joined.vtk")
    capsys.readouterr()
    pop = tmp_path / "pop"
    assert main(["reconstruct", str(meshes), "-o", str(pop), "--model", str(model),
                 "--quiet"]) == 3
    with open(pop / "summary.csv") as fh:
        rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"joined.vtk", "pair.vtk [left]", "pair.vtk [right]"}
    assert rows["joined.vtk"]["status"] == "failed" and "has 1284 vertices" in rows[
        "joined.vtk"]["reasons"]
    assert rows["pair.vtk [left]"]["status"] == "ok" and rows["pair.vtk [left]"]["side"] == "left"
    assert rows["pair.vtk [right]"]["status"] == "ok"
    assert rows["pair.vtk [right]"]["side"] == "right"
    assert sorted(p.name for p in pop.glob("mesh_*")) == ["mesh_pair_left.vtk",
                                                          "mesh_pair_right.vtk"]
    man = json.loads((pop / "manifest.json").read_text())
    assert {"joined.vtk", "pair.vtk"} <= {v["path"] for v in man["inputs"].values()}
    deid = tmp_path / "deid"
    assert main(["reconstruct", str(meshes), "-o", str(deid), "--model", str(model), "--quiet",
                 "--deidentify"]) == 3
    names = list(np.load(deid / "reconstructions.npz")["names"])
    assert names == ["shape_00001 [left]", "shape_00001 [right]"]


def test_a_scan_holding_one_side_refines_the_other_by_its_mask(paired):
    """The scan cropped to the left organ: the left side is refined with it, the
    right from its mask alone (suspect, saying so); a scan holding neither side
    is refused in one line."""
    from shapeprior.io import read_volume
    from shapeprior.model import load_model
    from shapeprior.segmentation import SegmentParams, refine_paired

    d, images, truth, model = paired
    model = load_model(model)
    name = "pair_006.nii.gz"
    mask = read_label_map(d / "labels" / name)
    image = read_volume(images / name)
    nx = image.array.shape[2]
    left_half = image.crop([0, 0, nx // 2 + 4], list(image.array.shape))   # +x: the left
    res = refine_paired(mask, model, (1,), SegmentParams(), left_half)
    assert res.sides["left"].fit.evidence.get("image_used", True)
    right = res.sides["right"].fit
    assert right.evidence["image_used"] is False and right.status != "ok"
    assert "the image holds none of this side's organ; refined from the mask alone" in \
        right.reasons
    assert dice(res.sides["right"].label > 0, truth[name]["right"]) > 0.9
    elsewhere = Volume(image.array, image.spacing, image.origin + 500.0, image.direction)
    with pytest.raises(ValueError, match="the image holds none of the mask's organ"):
        refine_paired(mask, model, (1,), SegmentParams(), elsewhere)


def test_update_model_says_why_a_right_organ_did_not_teach_the_appearance(paired, tmp_path,
                                                                          capsys):
    """A paired model (right organs mirrored onto the left) grown by a label map
    holding only a right organ, with its image: the shape is added, but a mirrored
    shape does not sit on its image, so the appearance is not updated, and the note
    says so (not that no image was given)."""
    d, images, truth, model = paired
    name = "pair_006.nii.gz"
    lab = read_label_map(d / "labels" / name)
    right = lab.array * truth[name]["right"].astype(lab.array.dtype)
    assert right.any() and not (right * truth[name]["left"]).any()
    new = tmp_path / "labels" / name
    new.parent.mkdir()
    write_label(Volume(right, lab.spacing, lab.origin, lab.direction), right, new)
    out = tmp_path / "grown.npz"
    capsys.readouterr()
    assert main(["update-model", str(model), str(new), "-o", str(out), "--images", str(images),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "1 added" in printed and "appearance updated" not in printed
    assert "was not updated: the new shapes are right-side organs mirrored" in printed
    assert "no training image was given" not in printed

