"""Every status path, asserted on the status and its reason (not only the
exit code): a flat image, a seed outside the image, an organ absent from the
scan, an organ cut by the field of view, a wrong model; and a clean case is
'ok'. Also the report, the batch summary, --strict and the mesh's per-vertex
data."""

import json
import shutil

import numpy as np
import pytest

from _phantoms import read_vtk_mesh

from shapeprior.cli import main
from shapeprior.io import Volume, read_label_map, read_volume, write_label
from shapeprior.model import load_model
from shapeprior.segmentation import SegmentParams, dice, segment_volume


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


def test_seed_outside_the_image_is_failed(model, scan):
    vol, _ = scan
    r = segment_volume(vol, model, SegmentParams(seed_mm=(900.0, 900.0, 900.0)))
    assert r.status == "failed" and "outside the image" in r.reasons[0] and not r.label.any()


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


def test_organ_cut_by_the_field_of_view_is_not_ok(model, scan):
    """Half of the organ cropped away: the result says so."""
    vol, truth = scan
    zs = np.where(truth.any((1, 2)))[0]
    cut = vol.crop((0, 0, 0), ((zs[0] + zs[-1]) // 2, *vol.array.shape[1:]))
    r = segment_volume(cut, model, SegmentParams())
    assert r.status in ("suspect", "failed")
    assert any("field of view" in s for s in r.reasons), r.reasons
    assert r.evidence["vertices_outside_fov"] > 0.1


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
