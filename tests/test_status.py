"""Every status path, asserted on the status and its reason (not only the
exit code): a flat image, a seed outside the image, an organ absent from the
scan, an organ cut by the field of view, a wrong model; and a clean case is
'ok'. Also the report, the batch summary, --strict and the mesh's per-vertex
data."""

import json
import shutil

import numpy as np
import pytest

from _phantoms import nifti_description, read_vtk_mesh, with_status

from shapeprior.cli import main
from shapeprior.io import Volume, read_label_map, read_volume, write_label
from shapeprior.io._nifti import write_nifti
from shapeprior.model import load_model
from shapeprior.segmentation import SegmentParams, dice, reason_levels, segment_volume


@pytest.fixture(scope="module")
def model(phantom_model):
    return load_model(phantom_model[3])


@pytest.fixture(scope="module")
def scan(phantom_model):
    _, images, labels, _ = phantom_model
    return read_volume(images / "phantom_005.nii.gz"), \
        read_label_map(labels / "phantom_005.nii.gz").array > 0


def test_clean_case_is_ok(model, scan):
    vol, truth = scan
    r = segment_volume(vol, model, SegmentParams())
    assert r.status == "ok" and r.reasons == [] and r.quality > 0.8
    assert dice(r.label, truth) > 0.95
    assert r.evidence["vertices_outside_fov"] == 0.0


def test_flat_image_is_failed(model, scan):
    vol, _ = scan
    flat = Volume(np.full_like(vol.array, 7), vol.spacing, vol.origin, vol.direction)
    r = segment_volume(flat, model, SegmentParams())
    assert r.status == "failed" and "flat image" in r.reasons[0] and not r.label.any()


@pytest.mark.parametrize("where", [(0, 0, 5), (3, 5, 7), (-1, -1, -1)])
def test_an_image_flat_but_for_one_voxel_is_not_flat(where):
    """The flat test reads a subsample first: one voxel that differs, on the rows
    read first or off them, makes the image not flat; a NaN too."""
    from shapeprior.segmentation._fit import _flat_value

    a = np.full((20, 30, 40), 7.0, np.float32)
    assert _flat_value(a) == 7.0
    for value in (7.5, np.nan):
        b = a.copy()
        b[where] = value
        assert _flat_value(b) is None


def test_a_coarser_level_ends_at_a_larger_motion_unless_tol_mm_is_given():
    """tol_mm None: FIT_TOL_MM at the finest level, growing with the square root of
    a level's search range over the finest one's (0.1 / 0.071 / 0.05 mm for the
    default schedule); a tol_mm given holds at every level."""
    from shapeprior.segmentation._fit import level_tol

    p = SegmentParams()
    assert [level_tol(p, s) for s, _ in p.schedule] == pytest.approx([0.1, 0.05 * 2 ** 0.5,
                                                                      0.05])
    q = SegmentParams(schedule=((8.0, 1.0), (2.0, 0.0)))
    assert [level_tol(q, s) for s, _ in q.schedule] == pytest.approx([0.1, 0.05])
    given = SegmentParams(tol_mm=0.3)
    assert [level_tol(given, s) for s, _ in given.schedule] == [0.3, 0.3, 0.3]


@pytest.mark.parametrize("tol", [None, 0.02, 0.3])
def test_a_level_ends_once_its_motion_falls_below_tol_mm(model, scan, tol):
    """Each resolution level iterates while the mean vertex motion is at least its
    tolerance (``tol_mm``; None: :func:`level_tol`) and ends at the first motion
    below it, or after max_iter iterations."""
    from shapeprior.segmentation._fit import level_tol

    vol, truth = scan
    centre = vol.index_to_physical(np.argwhere(truth).mean(0)[::-1][None])[0]
    p = SegmentParams(seed_mm=tuple(centre), near_start=0.0, tol_mm=tol)
    r = segment_volume(vol, model, p)
    levels = {s: [h["move_mm"] for h in r.history if h.get("search_mm") == s]
              for s, _ in p.schedule}
    for s, moves in levels.items():
        limit = level_tol(p, s)
        assert moves and all(m >= limit for m in moves[:-1]), (limit, levels)
        assert moves[-1] < limit or len(moves) == p.max_iter, (limit, levels)
    # the value decides: a stricter one iterates longer, a looser one less
    n = sum(map(len, levels.values()))
    assert n > 2 * len(levels) if tol == 0.02 else n < 3 * len(levels), (tol, levels)


@pytest.mark.parametrize("across", [2.9, 3.1])
def test_an_organ_fewer_than_three_voxels_across_is_failed_before_any_search(model, scan,
                                                                            across):
    """A header claiming voxels so large that the organ spans fewer than 3 of
    them along the finest axis (metres written as millimetres): failed at
    once with the reason, no placement search (that search scanned for minutes
    on a 1000 mm grid)."""
    vol, _ = scan
    size = float(np.linalg.norm(model.mean.max(0) - model.mean.min(0)))
    sp = np.asarray(vol.spacing, float) * (size / across / float(np.min(vol.spacing)))
    big = Volume(vol.array, sp, vol.origin, vol.direction)
    # (at 3.1 voxels only the reason's absence is asserted: the model's own placement
    # spares the search over a grid of such voxels, 15 s of the suite)
    r = segment_volume(big, model, SegmentParams(
        placement="search" if across < 3 else "prior"))
    why = "spans fewer than 3 voxels"
    if across < 3:
        assert r.status == "failed" and why in r.reasons[0] and not r.label.any()
        assert r.n_iter == 0 and r.placement is None
    else:
        assert not any(why in x for x in r.reasons)


def test_seed_outside_the_image_is_failed(model, scan):
    vol, _ = scan
    r = segment_volume(vol, model, SegmentParams(seed_mm=(900.0, 900.0, 900.0)))
    assert r.status == "failed" and "outside the image" in r.reasons[0] and not r.label.any()
    assert "--seed-space" not in r.reasons[0]       # in no space inside: no hint


@pytest.mark.parametrize("given,meant", [("lps", "ras"), ("ras", "lps"), ("lps", "voxel")])
def test_seed_in_the_wrong_space_is_named(model, scan, given, meant):
    """A seed outside the image that lies inside read in another space (Slicer's RAS
    numbers given as LPS, the usual slip) fails naming that space; one that lies
    inside in no space (above) gets no such hint."""
    from shapeprior.segmentation._fit import _seed_position

    vol, truth = scan
    ijk = np.argwhere(truth)[:, ::-1].mean(0)
    lps = vol.index_to_physical(ijk[None])[0]
    numbers = {"lps": lps, "ras": lps * np.array([-1.0, -1.0, 1.0]), "voxel": ijk}[meant]
    assert np.allclose(_seed_position(vol, numbers, meant), lps)
    # (the phantom's origin is far from 0: read in ``given`` the numbers lie outside)
    r = segment_volume(vol, model, SegmentParams(seed_mm=tuple(numbers), seed_space=given))
    assert r.status == "failed" and not r.label.any()
    assert "outside the image" in r.reasons[0] and f"--seed-space {meant}?" in r.reasons[0]


def test_organ_absent_is_failed(model, scan):
    """The organ replaced by the background's own texture: nothing matches the
    learned boundary, so the organ is not found."""
    vol, truth = scan
    rng = np.random.default_rng(0)
    bg = vol.array[~truth].astype(np.float64)
    a = rng.normal(bg.mean(), bg.std(), vol.array.shape).astype(vol.array.dtype)
    r = segment_volume(Volume(a, vol.spacing, vol.origin, vol.direction), model,
                       SegmentParams())
    assert r.status == "failed", (r.quality, r.reasons)
    assert any("not found" in s for s in r.reasons)
    # each reason keeps its own level: the ones that failed the result first, then
    # those that alone would make it suspect (here the scale held at its limit and
    # an unusual shape), not all of them 'failed'
    levels = reason_levels(r.reasons, r.status)
    assert levels == sorted(levels) and "suspect" in levels, list(zip(levels, r.reasons))
    for lv, why in zip(levels, r.reasons):
        assert (lv == "failed") == any(w in why for w in ("not found", "outside the field",
                                                          "empty segmentation")), why


def test_each_reason_is_shown_and_reported_at_its_level(phantom_model, scan, tmp_path, capsys):
    """The same organ-free image through the CLI: the screen and report.json give
    each reason its level (before, every reason of a failed result was printed as
    'failed:', a scale held at its limit too)."""
    vol, truth = scan
    rng = np.random.default_rng(0)
    bg = vol.array[~truth].astype(np.float64)
    a = rng.normal(bg.mean(), bg.std(), vol.array.shape).astype(vol.array.dtype)
    img = tmp_path / "noise.nii.gz"
    write_nifti(Volume(a, vol.spacing, vol.origin, vol.direction), img)
    out = tmp_path / "out"
    assert main(["segment", str(img), "-o", str(out), "--model", str(phantom_model[3])]) == 3
    shown = capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "failed" and len(rep["reason_levels"]) == len(rep["reasons"])
    assert "suspect" in rep["reason_levels"] and "failed" in rep["reason_levels"]
    for lv, why in zip(rep["reason_levels"], rep["reasons"]):
        assert f"  {lv}: {why}" in shown
    stats = json.loads((out / "statistics.json").read_text())
    assert stats["reason_levels"] == rep["reason_levels"]


def test_label_descriptions_say_the_status_within_the_header_field():
    """Each status's NIfTI description, of a segmentation and of a refinement,
    names the status and fits the header's 79 characters; a failed refinement's
    label is the mask as given, and says so."""
    from types import SimpleNamespace

    from shapeprior.pipeline._run import label_description

    m = SimpleNamespace(metadata={"organ": "hippocampus"})
    for refined in (False, True):
        for status, word in (("ok", ": ok"), ("suspect", "SUSPECT"), ("failed", "FAILED")):
            said = label_description(status, m, refined)
            assert word in said and "hippocampus" in said and len(said) <= 79, said
    assert "mask as given" in label_description("failed", m, True)
    assert "refined" in label_description("ok", m, True)
    assert "refined" not in label_description("ok", m)


def test_a_failed_fit_is_not_written_as_the_organ(phantom_model, model, scan, tmp_path,
                                                  capsys, monkeypatch):
    """A fit whose evidence says it failed (here the phantom's own fit, made to
    fail: on an organ-free image the voxel classifier already empties it). The
    Python API returns that fit beside its status, but label.nii.gz (the file a
    tool reads alone) holds no organ, on the image's grid; the fit stays in the
    mesh and the QC picture, and the report and the screen say where. Before,
    the label held the failed fit (on the TotalSegmentator example's DICOM slab,
    a 95 ml "kidney"). Dice with a reference scores the label as written."""
    from shapeprior.pipeline import _run

    vol, truth = scan
    fit = _run.segment_volume
    failing = with_status(fit, "failed",
                          "the surface does not match the image: organ not found")
    drawn, qc = [], _run.qc_png

    def recorded(path, image, label, *a, **k):             # what the QC picture draws
        drawn.append(int(np.count_nonzero(label)))
        return qc(path, image, label, *a, **k)

    monkeypatch.setattr(_run, "segment_volume", failing)
    monkeypatch.setattr(_run, "qc_png", recorded)
    r = failing(vol, model, SegmentParams())
    assert r.status == "failed" and r.label.any()           # the API keeps the fit
    images, ref = phantom_model[1], phantom_model[2] / "phantom_005.nii.gz"
    out = tmp_path / "out"
    assert main(["segment", str(images / "phantom_005.nii.gz"), "-o", str(out), "--model",
                 str(phantom_model[3]), "--reference", str(ref)]) == 3
    shown = capsys.readouterr().out
    lab = read_label_map(out / "label.nii.gz")
    assert lab.array.shape == vol.array.shape and not lab.array.any()
    assert np.allclose(lab.spacing, vol.spacing) and np.allclose(lab.origin, vol.origin)
    rep = json.loads((out / "report.json").read_text())
    fit_ml = float(np.count_nonzero(r.label)) * float(np.prod(vol.spacing)) / 1000
    assert rep["status"] == "failed" and rep["volume_ml"] == 0.0
    assert rep["label_withheld"]["fit_volume_ml"] == pytest.approx(fit_ml, rel=1e-3)
    assert rep["label_withheld"]["fit_in"] == ["mesh.vtk", "qc.png"]
    said = [w for w in rep["warnings"] if w.startswith("the label leaves out the failed fit")]
    assert len(said) == 1 and f"  note: {said[0]}" in shown
    assert rep["reference"]["dice"] == 0.0                 # the label as written
    pts, _, data, _ = read_vtk_mesh(out / "mesh.vtk")      # the fit, for a reader to judge
    assert np.allclose(pts, r.verts, atol=1e-4) and (out / "qc.png").stat().st_size > 0
    assert drawn == [int(np.count_nonzero(r.label))]       # the QC draws the failed fit
    organ = model.metadata.get("organ") or "organ"
    assert nifti_description(out / "label.nii.gz") == \
        f"shapeprior {organ}: FAILED, no organ written (see report.json)"
    assert "volume_ml" not in json.loads((out / "statistics.json").read_text())
    # an ok result's label is the fit, as before
    monkeypatch.setattr(_run, "segment_volume", fit)
    assert main(["segment", str(images / "phantom_005.nii.gz"), "-o", str(tmp_path / "ok"),
                 "--model", str(phantom_model[3])]) == 0
    capsys.readouterr()
    assert np.array_equal(read_label_map(tmp_path / "ok" / "label.nii.gz").array > 0,
                          r.label > 0)
    assert "label_withheld" not in json.loads((tmp_path / "ok" / "report.json").read_text())
    assert nifti_description(tmp_path / "ok" / "label.nii.gz") == f"shapeprior {organ}: ok"
    # without the QC picture the report names the mesh alone
    monkeypatch.setattr(_run, "segment_volume", failing)
    assert main(["segment", str(images / "phantom_005.nii.gz"), "-o", str(tmp_path / "noqc"),
                 "--model", str(phantom_model[3]), "--no-qc"]) == 3
    capsys.readouterr()
    rep = json.loads((tmp_path / "noqc" / "report.json").read_text())
    assert rep["label_withheld"]["fit_in"] == ["mesh.vtk"]
    assert not (tmp_path / "noqc" / "qc.png").exists()
    assert not any("qc.png" in w for w in rep["warnings"])


def test_a_population_study_leaves_out_a_failed_segmentations_mesh(phantom_model, tmp_path,
                                                                   capsys, monkeypatch):
    """The meshes segment writes feed `reconstruct` (a population study). A failed
    segmentation's mesh is its failed fit, not the organ: the report beside it says
    so, and reconstruct lists it as failed with that reason instead of measuring it;
    an ok segmentation's mesh is reconstructed."""
    import csv

    from shapeprior.pipeline import _run

    images, model = phantom_model[1], str(phantom_model[3])
    img = str(images / "phantom_005.nii.gz")
    runs = tmp_path / "runs"
    assert main(["segment", img, "-o", str(runs / "ok"), "--model", model]) == 0
    monkeypatch.setattr(_run, "segment_volume", with_status(
        _run.segment_volume, "failed", "the surface does not match the image: organ not found"))
    assert main(["segment", img, "-o", str(runs / "bad"), "--model", model]) == 3
    capsys.readouterr()
    rec = tmp_path / "rec"
    assert main(["reconstruct", str(runs), "-o", str(rec), "--model", model, "--quiet"]) == 3
    with open(rec / "summary.csv") as fh:
        rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert rows["bad/mesh.vtk"]["status"] == "failed"
    assert "is the fit of a failed segmentation, not the organ" in rows["bad/mesh.vtk"]["reasons"]
    assert "organ not found" in rows["bad/mesh.vtk"]["reasons"]
    assert rows["ok/mesh.vtk"]["status"] in ("ok", "suspect")


def test_which_meshes_hold_a_failed_fit(tmp_path):
    """failed_source reads the report beside a mesh that segment or refine wrote:
    a failed result's whole mesh; of a mesh of both sides, each failed side (a
    refinement of both kidneys whose right fit failed keeps the left); an ok or
    suspect result, another file name, a report that is not JSON or no report:
    nothing."""
    from shapeprior.pipeline._reconstruct import failed_source

    def folder(name, report):
        d = tmp_path / name
        d.mkdir()
        (d / "mesh.vtk").write_bytes(b"")
        if report is not None:
            (d / "report.json").write_text(report if isinstance(report, str)
                                           else json.dumps(report))
        return d / "mesh.vtk"

    whole, sides = failed_source(folder("f", {"status": "failed", "reasons": ["organ not found"]}))
    assert "failed segmentation" in whole and "organ not found" in whole and sides == {}
    whole, sides = failed_source(folder("p", {"status": "failed", "sides": {
        "left": {"status": "ok", "reasons": []},
        "right": {"status": "failed", "reasons": ["empty segmentation"]}}}))
    assert whole is None and list(sides) == ["right"] and "empty segmentation" in sides["right"]
    for name, rep in (("ok", {"status": "ok", "reasons": []}),
                      ("s", {"status": "suspect", "reasons": ["weak boundary"]}),
                      ("bad", "{not json"), ("none", None)):
        assert failed_source(folder(name, rep)) == (None, {}), name
    other = tmp_path / "f" / "shape.vtk"           # not the mesh the report speaks of
    other.write_bytes(b"")
    assert failed_source(other) == (None, {})


def test_image_not_in_hounsfield_units_is_failed_under_the_ct_model(model, scan):
    """A model without learned appearance reads intensities as HU (the CT
    intensity model). On an MR (no voxel below -20 HU: no fat, no air) that
    cannot apply: failed before any fit, with the reason, and no label. The same
    image mapped to HU (background as fat, the organ as soft tissue) is fitted,
    with the soft-tissue window when none is given; and the MR is fitted with its
    intensities scaled by percentiles."""
    from dataclasses import replace

    from shapeprior.appearance import HU_MIN_SHARE, hounsfield_share
    from shapeprior.pipeline._run import _report
    from shapeprior.segmentation._fit import CT_SOFT_TISSUE

    vol, truth = scan
    bare = replace(model, profile=None, voxels=None)
    assert vol.array.min() >= 0 and hounsfield_share(vol) < HU_MIN_SHARE
    r = segment_volume(vol, bare, SegmentParams())
    assert r.status == "failed" and r.n_iter == 0 and not r.label.any()
    assert "Hounsfield" in r.reasons[0] and "--normalisation percentile" in r.reasons[0]
    # the same with the CT model asked for explicitly
    r = segment_volume(vol, bare, SegmentParams(normalisation="ct"))
    assert r.status == "failed" and "Hounsfield" in r.reasons[0]
    # in HU (background -100, the organ about 0-80): the check passes, the share is
    # reported, and without a window the soft-tissue one finds the organ
    bg = float(np.median(vol.array[~truth]))
    hu = Volume((vol.array.astype(np.float32) - np.float32(bg)) * 2 - 100, vol.spacing,
                vol.origin, vol.direction)
    r = segment_volume(hu, bare, SegmentParams(refine_iter=0))
    assert r.status == "ok" and not any("Hounsfield" in x for x in r.reasons)
    assert dice(r.label, truth) > 0.95
    assert r.evidence["hounsfield_share_below"] == pytest.approx(hounsfield_share(hu), abs=1e-4)
    assert r.evidence["hounsfield_share_below"] > 0.5
    assert r.evidence["ct_window_hu"] == [-50, 250]
    assert r.evidence["ct_window_source"] == "default (soft tissue)"
    report = _report(r, hu, None, {}, bare, SegmentParams(), None, _Clock(), "c", None, 1.0)
    assert any("no --window given" in w and "-50..250 HU" in w for w in report["warnings"])
    given = segment_volume(hu, bare, SegmentParams(refine_iter=0, window=CT_SOFT_TISSUE))
    assert np.array_equal(given.verts, r.verts) and "ct_window_source" not in given.evidence
    # (a window that takes every intensity: the organ is not found)
    wide = segment_volume(hu, bare, SegmentParams(refine_iter=0, window=(-1.1, 4.0)))
    assert dice(wide.label, truth) < 0.5
    # percentile scaling reads no HU: no check, no share in the evidence
    r = segment_volume(vol, bare, SegmentParams(normalisation="percentile", refine_iter=0))
    assert r.n_iter > 0 and "hounsfield_share_below" not in r.evidence


class _Clock:
    """What ``_report`` reads of a stage clock."""
    seconds = {}


def test_hounsfield_share_counts_a_subsample_of_a_large_image():
    from shapeprior.appearance import HU_BELOW, HU_SAMPLE, hounsfield_share

    a = np.zeros((40, 50, 60), np.int16)
    a[:4] = -1000                                   # 10 % air
    a[4:6, :25] = int(HU_BELOW)                     # at the threshold: not below
    vol = Volume(a, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    assert hounsfield_share(vol) == pytest.approx(0.1)
    big = np.zeros((240, 240, 240), np.int16)       # 13.8 M voxels: read one in 8
    assert big.size > 3 * HU_SAMPLE
    big[:24] = -100
    share = hounsfield_share(Volume(big, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)))
    assert share == pytest.approx(0.1)


def test_padding_below_air_is_left_out_of_the_image_statistics():
    """The image's minimum is padding when it lies below -1024 (air in HU) and
    holds at least 0.1 % of the voxels: an MR padded with -32768 is not a CT;
    a CT's corners at -2048 leave it a CT and its share counts the field of
    view only; one stray voxel below air is not padding."""
    from shapeprior.appearance import hounsfield_share, intensity_scale, padding_value

    mr = np.full((40, 50, 60), 300, np.int16)
    mr[10:30, 10:40, 10:50] = 600
    padded = mr.copy()
    padded[:, :, :24] = -32768                      # 40 % padding
    vol = Volume(padded, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    assert padding_value(padded) == -32768 and hounsfield_share(vol) == 0.0
    # the percentiles of the field of view: those of an image of the same mix
    kept = padded[padded != -32768]
    assert intensity_scale(vol, "percentile") == pytest.approx(
        (float(np.percentile(kept, 1)), float(np.percentile(kept, 99) - np.percentile(kept, 1))))
    ct = np.full((40, 50, 60), 40, np.int16)
    ct[:, :, :12] = -1000                           # air: 20 %
    ct[:, :5] = -2048                               # corners outside the circle: 10 %
    share = hounsfield_share(Volume(ct, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)))
    assert share == pytest.approx(np.count_nonzero(ct == -1000) / np.count_nonzero(ct > -2048))
    stray = ct.copy()
    stray[stray == -2048] = 40
    stray[0, 0, 0] = -1207                          # the example CT's one voxel below air
    assert padding_value(stray) is None
    clipped = stray.copy()
    clipped[:, :5] = -1024                          # air clipped at -1024: not padding
    assert padding_value(clipped) is None


def test_an_mr_padded_below_air_is_segmented_as_without_padding(model, scan):
    """An MR crop whose margin a reformatting tool filled with -32768: it was
    taken for a CT (more than half of its voxels "below -20 HU") and failed as
    the wrong modality; it is fitted as with a margin of zeros."""
    vol, truth = scan
    a = np.asarray(vol.array)
    fits = {}
    for fill in (0, -32768):
        big = np.pad(a.astype(np.int16), 8, constant_values=fill)
        v = Volume(big, vol.spacing, vol.index_to_physical(-8.0 * np.ones((1, 3)))[0],
                   vol.direction)
        r = segment_volume(v, model, SegmentParams())
        fits[fill] = (r, dice(r.label[8:-8, 8:-8, 8:-8], truth))
    (r0, d0), (rp, dp) = fits[0], fits[-32768]
    assert rp.status == r0.status == "ok" and dp > 0.9 and abs(dp - d0) < 0.02, (d0, dp)


def test_organ_cut_by_the_field_of_view_is_not_ok(model, scan):
    """Half of the organ cropped away: the result says so."""
    vol, truth = scan
    zs = np.where(truth.any((1, 2)))[0]
    cut = vol.crop((0, 0, 0), ((zs[0] + zs[-1]) // 2, *vol.array.shape[1:]))
    r = segment_volume(cut, model, SegmentParams())
    assert r.status in ("suspect", "failed")
    assert any("field of view" in s for s in r.reasons), r.reasons
    assert r.evidence["vertices_outside_fov"] > 0.1
    # the vertices beyond the field of view had no evidence (visibility 0: the prior
    # completes the organ there), not the border's replicated values
    from shapeprior.segmentation._assess import outside_fov

    out = outside_fov(cut, r.verts)
    assert out.sum() > 0.1 * len(out)
    assert np.all(r.confidence[out] == 0.0) and r.confidence[~out].mean() > 0.3


def test_status_in_report_summary_exit_code_and_mesh(phantom_model, tmp_path, capsys):
    d, images, labels, model_path = phantom_model
    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copy(images / "phantom_005.nii.gz", batch / "good.nii.gz")
    vol = read_volume(images / "phantom_005.nii.gz")
    write_label(vol, np.zeros(vol.array.shape, np.uint8) + 3, batch / "flat.nii.gz")
    out = tmp_path / "out"
    rc = main(["segment", str(batch), "-o", str(out), "--model", str(model_path)])
    assert rc == 3                                           # a failed result
    rows = {r["case"]: r for r in json.loads((out / "summary.json").read_text())["cases"]}
    assert rows["good"]["status"] == "ok" and rows["flat"]["status"] == "failed"
    assert "flat image" in rows["flat"]["reasons"][0]
    # a rerun keeps both cases: their rows and the exit code still say what they got
    assert main(["segment", str(batch), "-o", str(out), "--model", str(model_path)]) == 3
    kept = {r["case"]: r for r in json.loads((out / "summary.json").read_text())["cases"]}
    assert {r["status"] for r in kept.values()} == {"skipped"}
    assert kept["flat"]["result"] == "failed" and kept["good"]["result"] == "ok"
    assert kept["flat"]["reasons"] == rows["flat"]["reasons"]
    assert "1 ok, 0 suspect, 1 failed" in capsys.readouterr().out
    # against references: the flat case's empty label has Dice 0 and no distance,
    # which the summary counts instead of averaging an infinity
    refs = tmp_path / "refs"
    refs.mkdir()
    for c in ("good", "flat"):
        shutil.copy(labels / "phantom_005.nii.gz", refs / f"{c}.nii.gz")
    assert main(["segment", str(batch), "-o", str(tmp_path / "scored"), "--model",
                 str(model_path), "--reference", str(refs)]) == 3
    printed = capsys.readouterr().out
    assert "Dice 0.000, no surface to compare" in printed
    assert "1 with an empty label or reference" in printed
    doc = json.loads((tmp_path / "scored" / "summary.json").read_text())
    assert doc["reference"]["assd_mm"]["n_without_surface"] == 1
    assert "Infinity" not in (tmp_path / "scored" / "summary.json").read_text()
    # the flat case's report and every other JSON file are standard JSON: its
    # infinite distance is null (JavaScript and jq refuse Infinity and NaN)
    for f in (tmp_path / "scored").rglob("*.json"):
        json.loads(f.read_text(), parse_constant=lambda c: pytest.fail(f"{f.name}: {c}"))
    flat = json.loads((tmp_path / "scored" / "flat" / "report.json").read_text())
    assert flat["reference"]["dice"] == 0.0 and flat["reference"]["assd_mm"] is None
    rep = json.loads((out / "good" / "report.json").read_text())
    assert rep["status"] == "ok" and rep["placement"]["chosen"]["source"] in ("search", "prior")
    assert len(rep["placement"]["hypotheses"]) >= 1
    assert set(rep["evidence"]) >= {"appearance", "overridden_fraction_max", "scale",
                                    "shape_mahalanobis", "vertices_outside_fov"}
    pts, _, data, space = read_vtk_mesh(out / "good" / "mesh.vtk")
    n = len(pts)
    assert space == "LPS"
    for k in ("gross_error_mm", "overridden", "confidence", "distance_to_mean_mm"):
        assert data[k].shape == (n,)
    assert np.all((data["confidence"] >= 0) & (data["confidence"] <= 1))
    capsys.readouterr()
    # single case: ok -> 0; a suspect result is 0 without --strict and 3 with it
    assert main(["segment", str(batch / "good.nii.gz"), "-o", str(tmp_path / "g"),
                 "--model", str(model_path)]) == 0
    cut = vol.crop((0, 0, 0), (vol.array.shape[0] // 2, *vol.array.shape[1:]))
    write_label(cut, cut.array.astype(np.int16), tmp_path / "cut.nii.gz")
    rc = main(["segment", str(tmp_path / "cut.nii.gz"), "-o", str(tmp_path / "c1"),
               "--model", str(model_path)])
    status = json.loads((tmp_path / "c1" / "report.json").read_text())["status"]
    assert status != "ok" and rc == (3 if status == "failed" else 0)
    rc = main(["segment", str(tmp_path / "cut.nii.gz"), "-o", str(tmp_path / "c2"),
               "--model", str(model_path), "--strict"])
    assert rc == 3 and "field of view" in capsys.readouterr().err


class _Score:
    """An appearance score that says what it is told (``assess`` alone is tested)
    and records which vertices it was asked about."""
    kind = "profile"
    uses_background = False

    def __init__(self, quality, reach_mm=0.0):
        self.quality = quality
        self.reach_mm = reach_mm
        self.asked = None

    def reach(self, search_mm=1.5):
        return self.reach_mm

    def __call__(self, verts, faces, search_mm=1.5, vertices=None):
        self.asked = np.arange(len(verts)) if vertices is None else np.asarray(vertices)
        return self.quality


def _assessed(model, vol, verts=None, quality=0.95, label=None, last=0.0, most=0.0):
    """``assess`` of a result whose surface is ``verts`` (default: the model mean
    at the centre of ``vol``): ``(status, reasons, evidence)``."""
    from types import SimpleNamespace

    from shapeprior.segmentation import voxelize
    from shapeprior.segmentation._assess import assess

    if verts is None:
        verts = _scaled(model, vol, 1.0)
    if label is None:
        label = voxelize(verts, model.faces, vol)
    res = SimpleNamespace(verts=verts, faces=model.faces, label=label,
                          overridden_fraction=last, overridden_fraction_max=most)
    status, _, reasons, ev = assess(res, vol, model, _Score(quality))
    return status, reasons, ev


def _scaled(model, vol, f):
    c = model.mean - model.mean.mean(0)
    return f * c + vol.centre()


def test_assess_each_piece_of_evidence_alone(model, scan):
    """Each threshold of the status, one piece of evidence at a time, against
    the model mean placed in the middle of the scan (``ok``)."""
    vol, _ = scan
    status, reasons, ev = _assessed(model, vol)
    assert status == "ok" and reasons == [] and ev["vertices_outside_fov"] == 0.0
    # what the prior overrode: the largest fraction over the fit counts, not only the last
    status, reasons, _ = _assessed(model, vol, most=0.4, last=0.0)
    assert status == "suspect" and "during the fit" in reasons[0]
    status, reasons, _ = _assessed(model, vol, most=0.2, last=0.2)
    assert status == "suspect" and "last projection" in reasons[0]
    # an empty label
    status, reasons, _ = _assessed(model, vol, label=np.zeros(vol.array.shape, np.uint8))
    assert status == "failed" and "empty segmentation" in reasons
    # a label touching the image's border, the surface inside it
    touching = _assessed(model, vol)[2]
    lab = np.zeros(vol.array.shape, np.uint8)
    lab[0, 5:8, 5:8] = 1
    status, reasons, ev = _assessed(model, vol, label=lab)
    assert status == "suspect" and "cut by the field of view" in reasons[0]
    assert ev["label_touches_fov_border"] and not touching["label_touches_fov_border"]


def test_assess_fov_scale_and_shape_thresholds(model, scan):
    vol, _ = scan
    # most of the surface beyond the image: failed
    ext = model.mean.max(0) - model.mean.min(0)
    lo_edge = vol.index_to_physical(np.zeros((1, 3)))[0]
    v = _scaled(model, vol, 1.0)
    far = v.copy()
    far[:, 2] += lo_edge[2] - v[:, 2].max() + 0.3 * ext[2]   # 70 % of it below the first slice
    status, reasons, ev = _assessed(model, vol, verts=far)
    assert status == "failed" and ev["vertices_outside_fov"] > 0.5
    assert any("outside the field of view" in r for r in reasons)
    # the organ's size against the training range (the slack is 1.1 squared)
    lo, hi = model.pose.scale_range
    s0 = _assessed(model, vol)[2]["scale"]
    status, reasons, ev = _assessed(model, vol, verts=_scaled(model, vol, 1.3 * hi / s0))
    assert status == "failed" and any("organ size" in r for r in reasons), reasons
    status, reasons, ev = _assessed(model, vol, verts=_scaled(model, vol, 0.7 * lo / s0))
    assert status == "failed" and any("organ size" in r for r in reasons), reasons
    # the shape's Mahalanobis distance against the training shapes' largest
    from shapeprior.segmentation._assess import training_distance

    from shapeprior.segmentation._assess import mahalanobis

    dmax = training_distance(model)
    # an unusual shape reaches further: a grid with room for it
    ext = model.mean.max(0) - model.mean.min(0)
    n = int(np.ceil(6 * ext.max() / vol.spacing.min()))
    room = Volume(np.zeros((n, n, n), np.uint8), np.full(3, vol.spacing.min()),
                  np.zeros(3), np.eye(3))
    # along the last mode (the alignment absorbs little of it; measured: the
    # distance grows monotonically up to 16 standard deviations, to 5.3 dmax)
    mode = model.pca_components[-1].reshape(-1, 3) * np.sqrt(model.pca_variances[-1])
    for k, want, words in ((2.2, "suspect", "unusual shape"), (4.5, "failed", "implausible")):
        lo_t, hi_t = 0.0, 16.0                  # standard deviations, to k * dmax
        for _ in range(60):
            t = 0.5 * (lo_t + hi_t)
            lo_t, hi_t = (t, hi_t) if mahalanobis(model, model.mean + t * mode) < k * dmax \
                else (lo_t, t)
        v = model.mean + t * mode
        v = v - v.mean(0) + room.centre()
        status, reasons, ev = _assessed(model, room, verts=v)
        assert ev["shape_mahalanobis"] == pytest.approx(k * dmax, rel=0.1)
        assert status == want and any(words in s for s in reasons), (k, reasons)


def test_appearance_is_judged_on_the_vertices_the_image_shows(model, scan):
    """Only vertices whose samples (``reach`` mm along the normal) lie inside the
    image are scored; with none of them, the quality is 0 (no evidence)."""
    from types import SimpleNamespace

    from shapeprior.segmentation import voxelize
    from shapeprior.segmentation._assess import assess, border_distance

    vol, _ = scan
    ext = model.mean.max(0) - model.mean.min(0)
    lo_edge = vol.index_to_physical(np.zeros((1, 3)))[0]
    v = _scaled(model, vol, 1.0)
    v[:, 2] += lo_edge[2] - v[:, 2].min() - 0.3 * ext[2]     # 30 % of it below the image
    res = SimpleNamespace(verts=v, faces=model.faces, label=voxelize(v, model.faces, vol),
                          overridden_fraction=0.0, overridden_fraction_max=0.0)
    score = _Score(0.95, reach_mm=2.0)
    status, q, _, ev = assess(res, vol, model, score)
    want = np.flatnonzero(border_distance(vol, v) >= 2.0)
    assert 0 < len(want) < len(v) and np.array_equal(np.sort(score.asked), want)
    assert ev["appearance_vertices_seen"] == pytest.approx(len(want) / len(v), abs=1e-4)
    assert q == 0.95 and status == "suspect"                 # cut by the field of view
    v2 = v + np.array([0.0, 0.0, lo_edge[2] - v[:, 2].max() - 10.0])   # wholly below it
    res.verts, res.label = v2, np.zeros(vol.array.shape, np.uint8)
    status, q, reasons, ev = assess(res, vol, model, _Score(0.95))
    assert q == 0.0 and ev["appearance_vertices_seen"] == 0.0 and status == "failed"
    assert any("does not match the image" in r for r in reasons)


@pytest.mark.parametrize("kind, quality, want", [
    ("region", 0.45, "failed"), ("region", 0.55, "suspect"), ("region", 0.65, "ok"),
    ("profile", 0.70, "failed"), ("profile", 0.80, "suspect"), ("profile", 0.90, "ok")])
def test_appearance_thresholds_per_score_kind(model, scan, kind, quality, want):
    """The region score (CT intensity model) fails below 0.5 and is suspect below
    0.6: a kidney-free CT crop scored 0.30-0.43 and found kidneys 0.67-0.89. The
    profile score (learned profiles, MR) fails below 0.75 and is suspect below
    0.85: good hippocampus fits scored 0.859-0.999 (bench_status.py)."""
    from types import SimpleNamespace

    from shapeprior.segmentation import voxelize
    from shapeprior.segmentation._assess import assess

    vol, _ = scan
    v = _scaled(model, vol, 1.0)
    res = SimpleNamespace(verts=v, faces=model.faces, label=voxelize(v, model.faces, vol),
                          overridden_fraction=0.0, overridden_fraction_max=0.0)
    score = _Score(quality)
    score.kind = kind
    status, _, reasons, _ = assess(res, vol, model, score)
    assert status == want, reasons


def test_region_score_of_a_cut_organ_counts_the_part_in_view():
    """The CT region score of a bright ellipsoid cut by the image's last slices:
    over the vertices whose samples lie inside the image it is the score of the
    whole organ in a larger image; over all vertices it is diluted."""
    from shapeprior.appearance import intensity_scale
    from shapeprior.mesh import icosphere
    from shapeprior.segmentation import voxelize
    from shapeprior.segmentation._assess import border_distance
    from shapeprior.segmentation._place import AppearanceScore

    v, f = icosphere(3)
    verts = v * np.array([25.0, 18.0, 30.0])
    big = Volume(np.zeros((80, 60, 70), np.float32), np.full(3, 1.5),
                 np.array([-52.0, -44.0, -59.0]), np.eye(3))
    inside = voxelize(verts, f, big) > 0
    big.array[:] = np.where(inside, 40.0, -100.0)
    # the same scan with its top slices (z > 15 mm) gone: the organ reaches 30 mm
    nz = int(np.floor((15.0 - big.origin[2]) / 1.5)) + 1
    cut = Volume(np.ascontiguousarray(big.array[:nz]), big.spacing, big.origin, big.direction)

    def score(vol):
        return AppearanceScore(vol, None, "ct", intensity_scale(vol, "ct"), "numpy", 1.0,
                               3.0, window=(-0.05, 0.15))

    whole = score(big)(verts, f)
    sc = score(cut)
    seen = np.flatnonzero(border_distance(cut, verts) >= sc.reach())
    assert 0.3 * len(verts) < len(seen) < 0.9 * len(verts)
    assert sc(verts, f, vertices=seen) == pytest.approx(whole, abs=0.05)
    assert sc(verts, f) < whole - 0.1


def test_scale_free_score_is_zero_for_chance_and_one_for_a_boundary():
    """Without an intensity window the region score is 2 f - 1 (clipped), f the
    share of vertices brighter inside than outside: a surface on the organ's
    boundary scores about 1; one in noise (f about 0.5), about 0, not 0.5;
    with the contrast reversed (a darker organ asked for), 0."""
    from shapeprior.appearance import intensity_scale
    from shapeprior.mesh import icosphere
    from shapeprior.segmentation import voxelize
    from shapeprior.segmentation._place import AppearanceScore

    v, f = icosphere(3)
    verts = v * np.array([14.0, 10.0, 12.0])
    vol = Volume(np.zeros((60, 50, 110), np.float32), np.full(3, 1.0),
                 np.array([-25.0, -25.0, -30.0]), np.eye(3))
    organ = voxelize(verts, f, vol) > 0
    noise = np.random.default_rng(4).normal(0.0, 20.0, vol.array.shape)
    vol.array[:] = np.where(organ, 100.0, 0.0) + noise

    def score(brighter, at):
        sc = AppearanceScore(vol, None, "percentile", intensity_scale(vol, "percentile"),
                             "numpy", 0.0, 2.0, window=None, inside_brighter=brighter)
        return sc(verts + np.asarray(at, float), f)

    assert score(True, (0, 0, 0)) >= 0.9
    assert score(True, (50, 0, 0)) <= 0.25            # in the noise, 50 mm away
    assert score(False, (0, 0, 0)) == 0.0


def test_border_distance_is_to_the_outer_voxel_boundary():
    """The field of view ends half a voxel beyond the first and last voxel centres."""
    from shapeprior.segmentation._assess import border_distance, outside_fov

    vol = Volume(np.zeros((4, 6, 10), np.uint8), np.array([2.0, 1.0, 3.0]),
                 np.array([10.0, 0.0, 0.0]), np.eye(3))
    # x: centres 10 .. 28 mm, boundary 9 .. 29; y and z well inside
    p = np.array([[9.2, 2.5, 4.5], [8.8, 2.5, 4.5], [28.8, 2.5, 4.5], [29.2, 2.5, 4.5]])
    np.testing.assert_allclose(border_distance(vol, p), [0.2, -0.2, 0.2, -0.2], atol=1e-9)
    assert outside_fov(vol, p).tolist() == [False, True, False, True]


def test_a_ct_given_to_a_model_learned_on_mr_is_failed_and_the_other_way(model, scan):
    """The phantom model's appearance was learned on MR-like images (none in HU):
    the same scan mapped to HU is a CT to it, failed before any fit. A model that
    says it learned on CT refuses the MR; one that does not say (built before the
    range was recorded) fits both."""
    from dataclasses import replace

    from shapeprior.appearance import HU_CT_SHARE, hounsfield_share

    vol, truth = scan
    assert model.profile.hu_share_range == (0.0, 0.0)
    bg = float(np.median(vol.array[~truth]))
    hu = Volume((vol.array.astype(np.float32) - np.float32(bg)) * 2 - 100, vol.spacing,
                vol.origin, vol.direction)
    r = segment_volume(hu, model, SegmentParams())
    assert r.status == "failed" and r.n_iter == 0 and not r.label.any()
    assert "learned on images that are not" in r.reasons[0] and "a CT" in r.reasons[0]
    assert r.evidence["hounsfield_share_below"] > 0.5
    ct_model = replace(model, profile=replace(model.profile, hu_share_range=(0.6, 0.7)))
    r = segment_volume(vol, ct_model, SegmentParams(refine_iter=0))
    assert r.status == "failed" and "learned on CT" in r.reasons[0]
    old = replace(model, profile=replace(model.profile, hu_share_range=None))
    assert segment_volume(hu, old, SegmentParams(refine_iter=0)).n_iter > 0
    # training images of both kinds: no refusal either way
    mixed = replace(model, profile=replace(model.profile, hu_share_range=(0.0, 0.7)))
    assert segment_volume(hu, mixed, SegmentParams(refine_iter=0)).n_iter > 0
    # the model's own kind of image is fitted, also with a few negative values
    # (5 % below -20: no conclusion under HU_CT_SHARE)
    assert segment_volume(vol, model, SegmentParams(refine_iter=0)).status == "ok"
    a = np.array(vol.array, dtype=np.float32)     # a copy: the scan is the module's
    a.reshape(-1)[::20] = -50.0
    few = Volume(a, vol.spacing, vol.origin, vol.direction)
    assert 0.04 < hounsfield_share(few) < HU_CT_SHARE
    assert segment_volume(few, model, SegmentParams(refine_iter=0)).n_iter > 0


def test_the_appearance_records_its_images_hu_share_through_save_and_update():
    from shapeprior.appearance import ProfileModel

    rng = np.random.default_rng(0)
    pm = ProfileModel(rng.random((5, 4)), rng.random((5, 4)) + 0.1, 0.75, 2, "percentile", 3,
                      0.01, (0.0, 0.001))
    back = ProfileModel.from_arrays(pm.to_arrays(), pm.to_meta())
    assert back.hu_share_range == (0.0, 0.001)
    new = rng.random((2, 5, 4))
    assert pm.merged(new, [0.0, 0.004]).hu_share_range == (0.0, 0.004)
    assert pm.merged(new).hu_share_range == (0.0, 0.001)
    none = ProfileModel.from_arrays(pm.to_arrays(), {**pm.to_meta(),
                                                     "image_hounsfield_share": None})
    assert none.hu_share_range is None and none.merged(new, [0.5]).hu_share_range is None


def test_a_paired_organ_without_a_side_is_fitted_as_each_side_and_the_better_kept(model,
                                                                                  scan):
    """A model of one side of a paired organ (the other mirrored onto it) and no
    side given: both sides are fitted, the one with the better status (then
    quality) is returned, the same as asking for that side, and the evidence and
    the report say which side was kept and how the other ended."""
    from dataclasses import replace

    from shapeprior.pipeline._run import _report
    from shapeprior.segmentation import paired_model
    from shapeprior.segmentation._fit import STATUS_RANK

    vol, truth = scan
    paired = replace(model, metadata={**model.metadata, "side": "left (right mirrored)"})
    assert paired_model(paired) and not paired_model(model)
    p = SegmentParams(refine_iter=0)
    r = segment_volume(vol, paired, p)
    kept, other = r.evidence["side"], r.evidence["other_side"]
    assert {kept, other["side"]} == {"left", "right"}
    assert r.evidence["side_source"] == "both fitted, the better kept"
    same = segment_volume(vol, paired, replace(p, side=kept))
    alt = segment_volume(vol, paired, replace(p, side=other["side"]))
    assert np.array_equal(r.verts, same.verts) and r.status == same.status
    assert r.mirrored == (kept == "right") and "other_side" not in same.evidence
    assert (alt.status, round(alt.quality, 4)) == (other["status"], other["quality"])
    assert (STATUS_RANK[r.status], -r.quality) <= (STATUS_RANK[alt.status], -alt.quality)
    report = _report(r, vol, None, {}, paired, p, None, _Clock(), "c", None, 1.0)
    assert report["side"] == kept
    assert any(f"both sides were fitted and the {kept} kept" in w
               and f"--side {other['side']}" in w for w in report["warnings"])
    # a model of an unpaired organ is fitted once, its side 'none'
    one = segment_volume(vol, model, p)
    assert "side" not in one.evidence
    assert _report(one, vol, None, {}, model, p, None, _Clock(), "c", None, 1.0)["side"] == "none"


def _with_air(vol, n_air=40, seed=1):
    """``vol`` with ``n_air`` columns of dark noise (the air around a body) added on
    the low-x side: (volume, LPS centre of the air block)."""
    rng = np.random.default_rng(seed)
    nz, ny, _ = vol.array.shape
    air = np.abs(rng.normal(0.0, 2.0, (nz, ny, n_air))).astype(vol.array.dtype)
    a = np.concatenate([air, vol.array], axis=2)
    origin = vol.origin - vol.direction[:, 0] * vol.spacing[0] * n_air
    out = Volume(a, vol.spacing, origin, vol.direction)
    centre = out.index_to_physical(np.array([[n_air / 2.0, ny / 2.0, nz / 2.0]]))[0]
    return out, centre


def test_background_is_the_dark_region_connected_to_the_border(scan):
    from shapeprior.appearance import Background

    vol, truth = scan
    a = vol.array.astype(np.float64).copy()
    a[18:22, 26:30, 30:34] = 0.0           # a dark cavity inside the body: not air
    withcav = Volume(a, vol.spacing, vol.origin, vol.direction)
    air, centre = _with_air(withcav)
    bg = Background(air)
    cavity = air.index_to_physical(np.array([[40 + 31.5, 27.5, 19.5]]))
    organ = air.index_to_physical(np.argwhere(truth)[:, ::-1][:50] + [40, 0, 0])
    far = centre + 1000.0
    assert bg.contains(centre[None])[0]
    assert not bg.contains(cavity)[0] and not bg.contains(organ).any()
    assert not bg.contains(far[None])[0]                  # outside the field of view
    assert 0.35 < bg.fraction < 0.45                        # 40 of 104 columns
    # the phantom alone holds no air around a body; a dark region at the border of
    # under a tenth of the grid (cerebrospinal fluid cut by a brain crop) is none either
    assert Background(vol).fraction == 0.0
    small, _ = _with_air(vol, n_air=6)
    assert Background(small).fraction == 0.0
    assert Background(_with_air(vol, n_air=9)[0]).fraction > 0.1


def test_background_mask_on_a_strided_grid_of_a_large_image(monkeypatch):
    from shapeprior.appearance import _background

    monkeypatch.setattr(_background, "MAX_VOXELS", 1000)
    a = np.full((20, 20, 30), 100.0)
    a[:, :, :10] = 0.0
    vol = Volume(a, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    bg = _background.Background(vol)
    assert np.prod(bg.mask.shape) <= 1000 and bg.strides[0] > 1
    assert bg.contains(np.array([[2.0, 10.0, 10.0]]))[0]
    assert not bg.contains(np.array([[25.0, 10.0, 10.0]]))[0]


def test_background_threshold_starts_at_the_darkest_intensity_and_looks_inward():
    """A CT in HU: air -1000, fat -100 reaching the border, an organ at 40. The dark
    threshold is a tenth of the range above the darkest values (-896 HU), so the
    fat is body, not air; a vertex on the skin with its normal pointing into the air
    has the body inside it."""
    from shapeprior.appearance import Background

    a = np.full((20, 20, 30), -100.0)
    a[:, :, :10] = -1000.0
    a[5:15, 5:15, 15:25] = 40.0
    vol = Volume(a, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    bg = Background(vol)
    assert bg.contains(np.array([[3.0, 10.0, 10.0]]))[0]
    assert not bg.contains(np.array([[12.0, 1.0, 1.0], [20.0, 10.0, 10.0]])).any()
    skin = np.array([[9.5, 10.0, 10.0], [9.5, 4.0, 4.0]])
    into_air = np.array([[-1.0, 0.0, 0.0]] * 2)
    assert not bg.insides_in_background(skin, into_air).any()
    assert bg.insides_in_background(skin, -into_air).all()


def test_a_fit_in_the_air_around_the_body_is_failed_and_the_search_avoids_it(model, scan):
    """A normalised boundary profile matches the air's noise: seeded there, the fit
    is failed because its surface encloses the background (held there: no
    positions near the seed are tried); without a seed the search finds the organ
    beside that air, and the result is ok."""
    vol, truth = scan
    assert model.profile.background_share_max is not None
    assert model.profile.background_share_max <= 0.1
    air, centre = _with_air(vol)
    r = segment_volume(air, model, SegmentParams(seed_mm=tuple(centre), near_start=0.0))
    assert r.status == "failed", (r.reasons, r.evidence)
    assert any("background around the body" in s for s in r.reasons)
    assert r.evidence["surface_inside_background"] > 0.5
    found = segment_volume(air, model, SegmentParams())
    assert found.status == "ok", found.reasons
    assert found.evidence["surface_inside_background"] == 0.0
    assert dice(found.label[:, :, 40:], truth) > 0.95


def test_the_background_rule_is_off_for_an_organ_in_the_air_or_an_older_model(model, scan):
    """A model whose training surfaces lay in the air (a lung) or that does not
    record it scores the vertices in the air as before (the same score both ways)."""
    from dataclasses import replace

    from shapeprior.segmentation._place import AppearanceScore

    vol, _ = scan
    air, centre = _with_air(vol)
    verts = _scaled(model, air, 1.0) - air.centre() + centre
    scores = {}
    for bg in (0.0, 0.5, None):
        pm = replace(model.profile, background_share_max=bg)
        s = AppearanceScore(air, pm, "percentile", (0.0, 1.0), "numpy", 1.0, 2.0)
        assert s.uses_background == (bg == 0.0)
        scores[bg] = s(verts, model.faces)
    assert scores[0.0] == 0.0 and scores[0.5] == scores[None] > 0.1


def test_the_appearance_records_its_training_background_share_through_save_and_update():
    from shapeprior.appearance import ProfileModel

    rng = np.random.default_rng(0)
    pm = ProfileModel(rng.random((5, 4)), rng.random((5, 4)) + 0.1, 0.75, 2, "percentile", 3,
                      0.01, (0.0, 0.001), 0.02)
    back = ProfileModel.from_arrays(pm.to_arrays(), pm.to_meta())
    assert back.background_share_max == 0.02
    new = rng.random((2, 5, 4))
    assert pm.merged(new, None, [0.0, 0.07]).background_share_max == 0.07
    assert pm.merged(new, None, [0.01]).background_share_max == 0.02
    assert pm.merged(new).background_share_max == 0.02
    meta = pm.to_meta()
    del meta["image_background_share_max"]
    old = ProfileModel.from_arrays(pm.to_arrays(), meta)
    assert old.background_share_max is None
    assert old.merged(new, None, [0.3]).background_share_max is None


def test_kept_share_counts_the_surface_voxels_the_classifier_kept(model, scan):
    from shapeprior.segmentation import voxelize
    from shapeprior.segmentation._assess import kept_share, mesh_box

    vol, _ = scan
    verts = _scaled(model, vol, 1.0)
    surf = voxelize(verts, model.faces, vol)
    box = mesh_box(vol, verts)
    outside = surf.copy()
    outside[box] = 0
    assert surf.any() and not outside.any()          # the box holds the whole label
    assert kept_share(surf, surf, box) == 1.0
    half = surf.copy()
    zs = np.flatnonzero(surf.any((1, 2)))
    half[zs[: len(zs) // 2]] = 0
    want = np.count_nonzero(half) / np.count_nonzero(surf)
    assert kept_share(surf, half, box) == pytest.approx(want) and 0.2 < want < 0.8
    grown = surf.copy()
    grown[box] = 1                                     # voxels added do not count
    assert kept_share(surf, grown, box) == 1.0
    assert kept_share(np.zeros_like(surf), surf) is None
    r = segment_volume(vol, model, SegmentParams())
    assert r.voxels_kept is not None and r.evidence["voxels_kept"] == round(r.voxels_kept, 4)
    assert r.voxels_kept > 0.9
    assert segment_volume(vol, model, SegmentParams(voxel_refine=False)).voxels_kept is None


@pytest.mark.parametrize("kept, failed", [(None, False), (0.66, False), (0.64, True),
                                          (0.0, True)])
def test_a_fit_whose_voxels_the_classifier_rejects_is_failed(model, scan, kept, failed):
    from types import SimpleNamespace

    from shapeprior.segmentation import voxelize
    from shapeprior.segmentation._assess import assess

    vol, _ = scan
    verts = _scaled(model, vol, 1.0)
    res = SimpleNamespace(verts=verts, faces=model.faces, overridden_fraction=0.0,
                          overridden_fraction_max=0.0, voxels_kept=kept,
                          label=voxelize(verts, model.faces, vol))
    status, _, reasons, ev = assess(res, vol, model, _Score(0.95))
    assert status == ("failed" if failed else "ok"), reasons
    assert failed == any("voxel classifier kept" in r for r in reasons)
    assert ev.get("voxels_kept") == kept


def test_a_reason_is_a_string_with_a_level():
    """A Reason compares, prints and serialises as its text, survives pickling
    (process pools) with its level, keeps it when reworded, and refuses a level
    that is no status; a plain string takes the level of its result."""
    import pickle

    from shapeprior.segmentation import Reason, reason_level
    from shapeprior.segmentation._assess import reworded

    r = Reason("weak boundary evidence", "suspect")
    assert r == "weak boundary evidence" and json.dumps([r]) == '["weak boundary evidence"]'
    back = pickle.loads(pickle.dumps(r))
    assert back == r and back.level == "suspect" and isinstance(back, Reason)
    w = reworded(r, "weak mask evidence")
    assert w == "weak mask evidence" and w.level == "suspect"
    assert type(reworded("plain", "other")) is str
    assert reason_level("plain", "failed") == "failed" and reason_level(r, "failed") == "suspect"
    with pytest.raises(ValueError, match="level='ok' is not 'failed' or 'suspect'"):
        Reason("x", "ok")


def test_both_sides_keep_each_sides_reason_levels(model, scan):
    """Both sides of a paired organ: a failed side's reasons stay 'failed' in a
    result that is only suspect, and what makes it suspect (a side left out of
    the label) is 'suspect'."""
    from dataclasses import replace

    from shapeprior.segmentation import Reason, combine_sides, reason_levels

    vol, _ = scan
    good = segment_volume(vol, model, SegmentParams())
    bad = replace(good, status="failed", label=np.zeros_like(good.label),
                  reasons=[Reason("the surface does not match the image: organ not found",
                                  "failed"), Reason("unusual shape", "suspect")])
    res = combine_sides({"left": good, "right": bad}, vol.spacing)
    assert res.status == "suspect"
    assert list(zip(reason_levels(res.reasons, res.status), res.reasons)) == [
        ("failed", "right: the surface does not match the image: organ not found"),
        ("suspect", "right: unusual shape"),
        ("suspect", "right: left out of the label (its fit failed: no such organ found)")]


def test_a_seed_or_a_start_off_the_organ_is_fitted_from_the_position_near_it(model, scan):
    """A seed 0.3 of the organ's extent off its centre: fitted from the seed alone
    (near_start 0) the fit misses and is failed; by default positions near the seed
    are tried and the one matching the image is kept (its source 'near seed'). A
    starting surface (``init``: the mean shape placed there) alike, and one on
    the organ is not led away."""
    vol, truth = scan
    c = vol.index_to_physical(np.argwhere(truth).mean(0)[::-1][None])[0]
    extent = float(np.linalg.norm(model.mean.max(0) - model.mean.min(0)))
    off = c + [0.0, 0.3 * extent, 0.0]
    alone = segment_volume(vol, model, SegmentParams(seed_mm=tuple(off), near_start=0.0))
    assert alone.status == "failed" and dice(alone.label, truth) < 0.5
    near = segment_volume(vol, model, SegmentParams(seed_mm=tuple(off)))
    assert near.status == "ok" and dice(near.label, truth) > 0.95
    assert near.placement["chosen"]["source"] == "near seed"
    assert near.placement["hypotheses"][0]["source"] == "seed"
    one = segment_volume(vol, model, SegmentParams(seed_mm=tuple(off), n_hypotheses=1))
    assert [h["source"] for h in one.placement["hypotheses"]] == ["seed"]
    mean = model.mean - model.mean.mean(0)
    for start in (off, c):
        r = segment_volume(vol, model, SegmentParams(), init=mean + start)
        assert r.status == "ok" and dice(r.label, truth) > 0.95, start
        assert r.placement["hypotheses"][0]["source"] == "init"
