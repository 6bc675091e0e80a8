"""segment --side both: both sides of a paired organ in one run, each fitted
with its own side's shape, one label, one mesh, each side's status."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from _phantoms import read_vtk_mesh, write_rtstruct
from scipy import ndimage

import shapeprior as sp
from shapeprior.cli import main
from shapeprior.io import Volume, read_label_map
from shapeprior.segmentation import (PairedSegmentResult, SegmentParams, combine_sides, dice,
                                     segment_volume)

NAME = "pair_006.nii.gz"


def _digest(*paths):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _without(vol, organ, other):
    """``vol`` with ``organ`` (and a margin) painted over by the background
    intensity: a scan in which that side's organ is gone."""
    a = np.asarray(vol.array, dtype=np.float32).copy()
    away = ~ndimage.binary_dilation(organ | other, iterations=6)
    a[ndimage.binary_dilation(organ, iterations=3)] = np.median(a[away])
    return Volume(a, vol.spacing, vol.origin, vol.direction)


def test_segment_both_sides_writes_one_label_and_a_mesh_of_both(paired, tmp_path, capsys):
    """Both organs of the held-out phantom in one run: each side ok and close to
    its truth, the label holding both (value 1), the mesh the left's vertices
    then the right's with point data side, statistics per side, the inputs
    untouched."""
    d, images, truth, model = paired
    src = images / NAME
    before = _digest(src, model)
    out = tmp_path / "o"
    assert main(["segment", str(src), "-o", str(out), "--model", str(model),
                 "--side", "both"]) == 0
    shown = capsys.readouterr().out
    assert "both sides: left ok (" in shown and ", right ok (" in shown
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "ok" and rep["side"] == "both", rep["reasons"]
    assert rep["paired"]["in_label"] == ["left", "right"]
    assert rep["paired"]["overlap_ml"] == 0.0
    assert [rep["sides"][s]["status"] for s in ("left", "right")] == ["ok", "ok"]
    lab = read_label_map(out / "label.nii.gz").array
    assert np.array_equal(np.unique(lab), [0, 1])
    both = truth[NAME]["left"] | truth[NAME]["right"]
    assert dice(lab > 0, both) > 0.9
    for side in ("left", "right"):
        assert rep["sides"][side]["in_label"] is True
        ml = float(np.prod(read_label_map(out / "label.nii.gz").spacing)) / 1000
        assert abs(rep["sides"][side]["volume_ml"] - truth[NAME][side].sum() * ml) < \
            0.15 * truth[NAME][side].sum() * ml
    assert abs(rep["volume_ml"] - sum(rep["sides"][s]["volume_ml"] for s in rep["sides"])) \
        < 1e-6
    pts, _, data, _ = read_vtk_mesh(out / "mesh.vtk")
    n = 642
    assert len(pts) == 2 * n
    assert np.array_equal(data["side"], np.r_[np.ones(n), 2 * np.ones(n)])
    assert pts[:n, 0].mean() > pts[n:, 0].mean()               # left: larger LPS x
    stats = json.loads((out / "statistics.json").read_text())
    assert stats["status"] == "ok" and set(stats["sides"]) == {"left", "right"}
    assert stats["sides"]["right"]["mirrored"] is True
    assert stats["sides"]["left"]["mirrored"] is False
    man = json.loads((out / "manifest.json").read_text())
    assert man["parameters"]["side"] == "both"
    assert _digest(src, model) == before


def test_each_side_is_the_fit_of_that_side_alone(paired):
    """side='both' through the API: each side's result is the one side='left'
    (or 'right') gives, and the label is their union."""
    d, images, truth, model = paired
    vol = sp.read_volume(images / NAME)
    m = sp.load_model(model)
    res = sp.segment(vol, m, side="both", refine_iter=0)
    assert isinstance(res, PairedSegmentResult) and res.status == "ok"
    assert "left=ok, right=ok" in repr(res)
    for side in ("left", "right"):
        one = sp.segment(vol, m, side=side, refine_iter=0)
        assert np.array_equal(res.sides[side].verts, one.verts), side
        assert np.array_equal(res.sides[side].label, one.label), side
        assert res.sides[side].mirrored == (side == "right")
    assert np.array_equal(res.label, ((res.sides["left"].label > 0)
                                      | (res.sides["right"].label > 0)).astype(np.uint8))
    assert res.quality == min(res.sides[s].quality for s in ("left", "right"))


def test_a_side_not_found_is_left_out_and_the_result_is_suspect(paired, tmp_path, capsys):
    """The right organ painted over (a nephrectomy): the left is found, the right
    fit fails and stays out of the label and the mesh; the whole result is
    suspect, not ok and not failed, and --strict makes that exit 3."""
    from shapeprior.io._nifti import write_nifti

    d, images, truth, model = paired
    vol = sp.read_volume(images / NAME)
    gone = _without(vol, truth[NAME]["right"], truth[NAME]["left"])
    src = tmp_path / "one.nii.gz"
    write_nifti(gone, src)
    out = tmp_path / "o"
    assert main(["segment", str(src), "-o", str(out), "--model", str(model),
                 "--side", "both"]) == 0
    shown = capsys.readouterr().out
    assert "right failed (" in shown and "left out of the label" in shown
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "suspect"
    assert rep["sides"]["left"]["status"] == "ok" and rep["sides"]["right"]["status"] == "failed"
    assert rep["paired"]["in_label"] == ["left"] and rep["sides"]["right"]["in_label"] is False
    assert any(r.startswith("right: left out of the label") for r in rep["reasons"])
    assert all(r.startswith(("left: ", "right: ")) for r in rep["reasons"])
    lab = read_label_map(out / "label.nii.gz").array > 0
    assert dice(lab, truth[NAME]["left"]) > 0.9
    assert not (lab & truth[NAME]["right"]).any()
    pts, _, data, _ = read_vtk_mesh(out / "mesh.vtk")
    assert len(pts) == 642 and np.all(data["side"] == 1)
    assert main(["segment", str(src), "-o", str(tmp_path / "s"), "--model", str(model),
                 "--side", "both", "--strict"]) == 3


def test_both_sides_failed_write_no_organ(paired, tmp_path, capsys, monkeypatch):
    """Both fits failed (here the held-out phantom's two fits, made to fail). The
    result (Python API) holds both fits, as a failed one-side result holds its
    fit; the label file holds no organ and no side is listed in it, the mesh
    keeps both fits, and the report says what was left out."""
    from shapeprior.pipeline import _run

    d, images, truth, model = paired
    fit = _run.segment_volume

    def failing(vol, *a, **k):
        r = fit(vol, *a, **k)
        for f in r.sides.values():
            f.status = "failed"
        return combine_sides(r.sides, vol.spacing)

    monkeypatch.setattr(_run, "segment_volume", failing)
    out = tmp_path / "o"
    assert main(["segment", str(images / NAME), "-o", str(out), "--model", str(model),
                 "--side", "both"]) == 3
    capsys.readouterr()
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "failed", rep["reasons"]
    assert [rep["sides"][s]["status"] for s in ("left", "right")] == ["failed", "failed"]
    assert not read_label_map(out / "label.nii.gz").array.any()
    assert rep["paired"]["in_label"] == [] and rep["volume_ml"] == 0.0
    assert not any(rep["sides"][s]["in_label"] for s in ("left", "right"))
    sides_ml = sum(rep["sides"][s]["volume_ml"] for s in ("left", "right"))
    assert sides_ml > 0 and rep["label_withheld"]["fit_volume_ml"] == pytest.approx(
        sides_ml, rel=1e-3)
    pts, _, data, _ = read_vtk_mesh(out / "mesh.vtk")
    assert len(pts) == 2 * 642 and set(np.unique(data["side"])) == {1.0, 2.0}
    # a population study leaves both failed fits out, each side saying why: no shape is
    # left, so it is refused in one line, naming the first side
    assert main(["reconstruct", str(out), "-o", str(tmp_path / "rec"), "--model", str(model),
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "'mesh.vtk [left]' is the fit of a failed segmentation, not the organ" in err, err
    assert err.count("\n") == 1 and not (tmp_path / "rec").exists()


def _fit(label, status, quality=0.9, reasons=()):
    """A side's fit as combine_sides reads it; its surface: the label's voxel
    indices (x along the last axis, LPS x growing with it, as on an identity grid)."""
    from types import SimpleNamespace

    verts = np.argwhere(label)[:, ::-1].astype(float) if label.any() else np.zeros((3, 3))
    return SimpleNamespace(label=label.astype(np.uint8), status=status, quality=quality,
                           reasons=list(reasons), verts=verts)


def test_combine_sides_statuses_and_overlap():
    """Both ok and apart: ok. One suspect: suspect. Both failed: failed, and
    the label holds both (as a failed one-side result holds its fit). Two fits
    sharing more than SIDES_OVERLAP_SUSPECT of the smaller: suspect, saying so;
    a boundary voxel or two: still ok."""
    from shapeprior.segmentation._both_sides import SIDES_OVERLAP_SUSPECT

    a = np.zeros((10, 10, 40), bool)      # the left organ: the larger x
    b = a.copy()
    a[2:8, 2:8, 20:30] = True
    b[2:8, 2:8, 2:12] = True
    r = combine_sides({"left": _fit(a, "ok"), "right": _fit(b, "ok", 0.7)}, (1.0, 1.0, 1.0))
    assert (r.status, r.in_label, r.reasons, r.quality) == ("ok", ["left", "right"], [], 0.7)
    assert r.evidence["overlap_ml"] == 0.0 and r.label.sum() == a.sum() + b.sum()
    r = combine_sides({"left": _fit(a, "ok"), "right": _fit(b, "suspect", reasons=["cut"])},
                      (1.0, 1.0, 1.0))
    assert r.status == "suspect" and r.reasons == ["right: cut"]
    r = combine_sides({"left": _fit(a, "failed", 0.2, ["x"]), "right": _fit(b, "failed", 0.1)},
                      (1.0, 1.0, 1.0))
    assert r.status == "failed" and r.in_label == ["left", "right"] and r.quality == 0.1
    assert r.reasons == ["left: x"] and r.label.sum() == a.sum() + b.sum()
    # overlap: the right fit shifted onto the left organ
    c = np.roll(a, -2, axis=2)
    r = combine_sides({"left": _fit(a, "ok"), "right": _fit(c, "ok")}, (2.0, 1.0, 1.0))
    assert r.status == "suspect" and "overlap" in r.reasons[-1]
    assert r.evidence["overlap_ml"] == pytest.approx(2.0 * (a & c).sum() / 1000)
    touch = b.copy()
    touch.reshape(-1)[np.flatnonzero(a)[:int(SIDES_OVERLAP_SUSPECT * a.sum())]] = True
    r = combine_sides({"left": _fit(a, "ok"), "right": _fit(touch, "ok")}, (1.0, 1.0, 1.0))
    assert r.status == "ok" and r.evidence["overlap_ml"] > 0
    # the sides swapped: the left fit on the patient's right (smaller LPS x)
    r = combine_sides({"left": _fit(b, "ok"), "right": _fit(a, "ok")}, (1.0, 1.0, 1.0))
    assert r.status == "suspect" and "the sides may be swapped" in r.reasons[-1]


def test_side_both_needs_a_paired_model(phantom_model, tmp_path, capsys):
    """A model of an unpaired organ: --side both is refused in one line before
    anything is read or written; the API refuses it naming the parameter."""
    d, images, _, model = phantom_model
    scan = sorted(images.iterdir())[0]
    out = tmp_path / "o"
    assert main(["segment", str(scan), "-o", str(out), "--model", str(model),
                 "--side", "both"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--side both needs a model of a paired organ" in err[0]
    assert not out.exists()
    with pytest.raises(ValueError, match="side='both' needs a model of a paired organ"):
        segment_volume(sp.read_volume(scan), sp.load_model(model),
                       SegmentParams(side="both"))


def test_one_seed_for_both_sides_is_refused(paired, tmp_path, capsys):
    """A seed places one organ: with --side both it is refused in one line,
    nothing written, and the API refuses it naming the parameter."""
    d, images, _, model = paired
    out = tmp_path / "o"
    assert main(["segment", str(images / NAME), "-o", str(out), "--model", str(model),
                 "--side", "both", "--seed", "1,2,3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seed places one organ; --side both fits two" in err[0]
    assert not out.exists()
    with pytest.raises(ValueError, match="seed_mm places one organ"):
        sp.segment(sp.read_volume(images / NAME), sp.load_model(model), side="both",
                   seed=(1.0, 2.0, 3.0))


def test_init_mask_of_both_sides_starts_each_side_from_its_part(paired, tmp_path):
    """--init-mask holding both organs with --side both: no refusal, each side
    starts from its own part (placement 'init', or a position near it, for both)
    and finds its organ; a mask of the left organ alone starts the left, and the
    right is searched."""
    from shapeprior.io import write_label

    d, images, truth, model = paired
    mask = d / "labels" / NAME
    out = tmp_path / "o"
    assert main(["segment", str(images / NAME), "-o", str(out), "--model", str(model),
                 "--init-mask", str(mask), "--side", "both"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "ok"
    assert all(rep["sides"][s]["placement"]["chosen"]["source"] in ("init", "near init")
               for s in ("left", "right"))
    lab = read_label_map(out / "label.nii.gz").array > 0
    assert dice(lab, truth[NAME]["left"] | truth[NAME]["right"]) > 0.9
    pts, _, data, _ = read_vtk_mesh(out / "mesh.vtk")      # each side on its own side
    assert pts[data["side"] == 1, 0].mean() > pts[data["side"] == 2, 0].mean()
    given = read_label_map(mask)
    left_only = tmp_path / "left.nii.gz"
    write_label(given, truth[NAME]["left"].astype(np.uint8), left_only)
    out2 = tmp_path / "o2"
    assert main(["segment", str(images / NAME), "-o", str(out2), "--model", str(model),
                 "--init-mask", str(left_only), "--side", "both"]) == 0
    rep = json.loads((out2 / "report.json").read_text())
    assert rep["sides"]["left"]["placement"]["chosen"]["source"] in ("init", "near init")
    assert rep["sides"]["right"]["placement"]["chosen"]["source"] in ("search", "prior")
    assert rep["status"] == "ok"
    # the two organs as two structures of an RT Structure Set: each side from its own
    rs = write_rtstruct(tmp_path / "RS.dcm", given, {"Organ_L": truth[NAME]["left"],
                                                     "Organ_R": truth[NAME]["right"]})
    out3 = tmp_path / "o3"
    assert main(["segment", str(images / NAME), "-o", str(out3), "--model", str(model),
                 "--init-mask", str(rs), "--init-structure", "organ_l", "--init-structure",
                 "#2", "--side", "both"]) == 0
    rep = json.loads((out3 / "report.json").read_text())
    assert all(rep["sides"][s]["placement"]["chosen"]["source"] in ("init", "near init")
               for s in ("left", "right"))
    assert [s["name"] for s in rep["init_mask"]["structures"]] == ["Organ_L", "Organ_R"]
    assert np.array_equal(read_label_map(out3 / "label.nii.gz").array,
                          read_label_map(out / "label.nii.gz").array)


def test_init_for_both_sides_is_a_dict_of_sides(paired):
    d, images, _, model = paired
    vol = sp.read_volume(images / NAME)
    m = sp.load_model(model)
    with pytest.raises(ValueError, match=r"init with side='both' is a dict \{'left'"):
        sp.segment(vol, m, side="both", init=np.asarray(m.mean))
    with pytest.raises(ValueError, match=r"keys \['middle'\]"):
        sp.segment(vol, m, side="both", init={"middle": np.asarray(m.mean)})


def test_refine_reads_side_both_as_every_side_its_mask_holds(paired):
    """sp.refine(side='both') refines both organs of a mask of both, as side
    'none' does (a refinement refines every side its mask holds)."""
    d, _, _, model = paired
    m = sp.load_model(model)
    a = sp.refine(d / "labels" / NAME, m, side="both")
    b = sp.refine(d / "labels" / NAME, m)
    assert np.array_equal(a.label, b.label) and set(a.fits) == {"left", "right"}


def test_dicom_seg_of_both_sides_has_a_segment_per_side(tmp_path):
    """write_dicom_seg with one mask per side: two segments, each with its side
    in its label and exactly its own voxels in its frames."""
    import pydicom

    from shapeprior.io import write_dicom_seg
    from test_outputs import _small_series

    folder, vol = _small_series(tmp_path)
    lab = vol.array > 0
    cols = np.flatnonzero(lab.any((0, 1)))
    mid = int(cols.mean())
    left, right = lab.copy(), lab.copy()
    left[..., mid:] = False
    right[..., :mid] = False
    assert left.any() and right.any()
    rec = write_dicom_seg(tmp_path / "seg.dcm", [left, right], vol, folder, organ="Kidney",
                          side=["left", "right"])
    ds = pydicom.dcmread(tmp_path / "seg.dcm")
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["Kidney (left)", "Kidney (right)"]
    px = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    seg_of = [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
              for f in ds.PerFrameFunctionalGroupsSequence]
    for number, m in ((1, left), (2, right)):
        assert sum(int(px[i].sum()) for i, s in enumerate(seg_of) if s == number) == m.sum()
    assert rec["source_frames"] == vol.array.shape[0]
    with pytest.raises(ValueError, match="side lists 1 sides for 2 segments"):
        write_dicom_seg(tmp_path / "seg2.dcm", [left, right], vol, folder, side=["left"])


def test_segment_both_on_a_dicom_series_writes_a_segment_per_side(paired, tmp_path):
    """A DICOM series input with --side both --output-type both: seg.dcm holds
    one segment per side found, each with the voxels of that side's label, and
    label.nii.gz their union."""
    import pydicom
    from _phantoms import write_dicom_series

    d, images, truth, model = paired
    series = write_dicom_series(sp.read_volume(images / NAME), tmp_path / "dicom")
    out = tmp_path / "o"
    assert main(["segment", str(series), "-o", str(out), "--model", str(model),
                 "--side", "both", "--output-type", "both"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "ok" and rep["dicom_seg"]["written"]
    ds = pydicom.dcmread(out / "seg.dcm")
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["organ (left)", "organ (right)"]
    px = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    seg_of = np.array([int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                       for f in ds.PerFrameFunctionalGroupsSequence])
    per = [int(px[seg_of == k].sum()) for k in (1, 2)]
    lab = read_label_map(out / "label.nii.gz").array > 0
    assert all(p > 0 for p in per) and sum(per) == lab.sum()      # the sides do not overlap
    ml = rep["sides"]["left"]["volume_ml"] / per[0]
    assert rep["sides"]["right"]["volume_ml"] == pytest.approx(per[1] * ml, rel=1e-6)


def test_each_side_is_compared_with_its_side_of_the_reference(paired, tmp_path, capsys):
    """--reference with --side both: the whole label's comparison, and each side's,
    the label and the reference cut at the report's midline (halfway between the
    sides' centroids); a rerun with another reference (the left organ alone)
    compares both again without fitting: the left side's numbers stay, the right
    side's reference is now empty."""
    from shapeprior.io import write_label
    from shapeprior.segmentation import surface_distances

    d, images, truth, model = paired
    given = read_label_map(d / "labels" / NAME)
    both_ref = tmp_path / "ref" / "pair.nii.gz"
    both_ref.parent.mkdir()
    write_label(given, (truth[NAME]["left"] | truth[NAME]["right"]).astype(np.uint8), both_ref)
    src = tmp_path / "in" / "pair.nii.gz"
    src.parent.mkdir()
    src.write_bytes((images / NAME).read_bytes())
    out = tmp_path / "o"
    args = ["segment", str(src.parent), "-o", str(out), "--model", str(model), "--side", "both",
            "--reference", str(both_ref.parent)]
    assert main(args) == 0
    rep = json.loads((out / "pair" / "report.json").read_text())
    lab = read_label_map(out / "pair" / "label.nii.gz").array > 0
    x0 = rep["paired"]["midline_lps_x_mm"]
    grid = read_label_map(out / "pair" / "label.nii.gz")
    idx = np.argwhere(np.ones(lab.shape, bool))[:, ::-1].astype(float)
    x = grid.index_to_physical(idx)[:, 0].reshape(lab.shape)     # LPS x of every voxel
    assert truth[NAME]["left"][x <= x0].sum() == 0 and truth[NAME]["right"][x > x0].sum() == 0
    for side, here in (("left", x > x0), ("right", x <= x0)):
        b = rep["sides"][side]["reference"]
        assert b["dice"] == pytest.approx(dice(lab & here, truth[NAME][side]), abs=1e-12)
        assert b["dice"] > 0.9
        want = surface_distances(lab & here, truth[NAME][side], grid.spacing)
        assert b["assd_mm"] == pytest.approx(want["assd_mm"], abs=1e-9)
    assert rep["reference"]["dice"] > 0.9
    assert "Dice 0." in capsys.readouterr().out
    # the left organ alone as the reference: compared again, nothing fitted
    write_label(given, truth[NAME]["left"].astype(np.uint8), both_ref)
    assert main(args) == 0
    again = json.loads((out / "pair" / "report.json").read_text())
    assert again["sides"]["left"]["reference"] == rep["sides"]["left"]["reference"]
    assert again["sides"]["right"]["reference"]["dice"] == 0.0
    assert again["sides"]["left"]["placement"] == rep["sides"]["left"]["placement"]
    assert "compared again" in (out / "summary.csv").read_text()


def test_a_batch_of_both_sides_gives_each_sides_status_and_dice(paired, tmp_path, capsys):
    """A folder of cases with --side both and references: each summary row (JSON
    and CSV) and each screen line carries each side's own status and Dice, so a
    side that failed in a suspect case shows in the table (before, only the
    whole case's status and one Dice over both)."""
    import csv
    import shutil

    from shapeprior.io import write_label
    from shapeprior.io._nifti import write_nifti

    d, images, truth, model = paired
    cases, refs = tmp_path / "cases", tmp_path / "refs"
    cases.mkdir()
    refs.mkdir()
    vol = sp.read_volume(images / NAME)
    shutil.copy(images / NAME, cases / "whole.nii.gz")
    write_nifti(_without(vol, truth[NAME]["right"], truth[NAME]["left"]), cases / "gone.nii.gz")
    both = truth[NAME]["left"] | truth[NAME]["right"]
    for c in ("whole", "gone"):
        write_label(vol, both, refs / f"{c}.nii.gz")
    out = tmp_path / "out"
    main(["segment", str(cases), "-o", str(out), "--model", str(model), "--side", "both",
          "--reference", str(refs)])
    shown = capsys.readouterr().out
    rows = {r["case"]: r for r in json.loads((out / "summary.json").read_text())["cases"]}
    table = {r["case"]: r for r in csv.DictReader(open(out / "summary.csv", newline=""))}
    for c in ("whole", "gone"):
        rep = json.loads((out / c / "report.json").read_text())
        for s in ("left", "right"):
            assert rows[c][f"{s}_status"] == rep["sides"][s]["status"]
            assert table[c][f"{s}_status"] == rep["sides"][s]["status"]
    rep = json.loads((out / "whole" / "report.json").read_text())
    for s in ("left", "right"):
        assert rows["whole"][f"{s}_dice"] == rep["sides"][s]["reference"]["dice"] > 0.85
        assert float(table["whole"][f"{s}_dice"]) == pytest.approx(rows["whole"][f"{s}_dice"],
                                                                   abs=1e-6)
    # one side left out of the label: the label and the reference are cut halfway
    # between the reference's two kidneys, so the side found keeps its own Dice and the
    # side left out scores 0 (before, no side had one)
    assert rows["gone"]["status"] == "suspect" and rows["gone"]["right_status"] == "failed"
    assert rows["gone"]["left_status"] == "ok" and rows["gone"]["left_dice"] > 0.85
    assert rows["gone"]["right_dice"] == 0.0 and float(table["gone"]["right_dice"]) == 0.0
    rep = json.loads((out / "gone" / "report.json").read_text())
    assert rep["sides"]["left"]["reference"]["dice"] == rows["gone"]["left_dice"]
    assert rep["sides"]["right"]["reference"]["assd_mm"] is None       # nothing to measure
    line = next(x for x in shown.splitlines() if x.startswith("whole"))
    assert f"(left ok Dice {rows['whole']['left_dice']:.3f}, right ok Dice " in line
    assert f"(left ok Dice {rows['gone']['left_dice']:.3f}, right failed Dice 0.000)" in \
        next(x for x in shown.splitlines() if x.startswith("gone"))
    # a rerun keeps the cases and their rows' sides
    main(["segment", str(cases), "-o", str(out), "--model", str(model), "--side", "both",
          "--reference", str(refs)])
    again = {r["case"]: r for r in json.loads((out / "summary.json").read_text())["cases"]}
    assert all(again[c]["status"] == "skipped" for c in again)
    assert again["gone"]["right_status"] == "failed"
    assert again["gone"]["left_dice"] == rows["gone"]["left_dice"]
