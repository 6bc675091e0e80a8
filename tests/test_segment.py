import json
import os

import numpy as np
import pytest

from shapeprior.cli import main
from shapeprior.io import read_image, read_label_map, read_volume


def test_segment_phantom_outputs_and_geometry(phantom_model, tmp_path):
    d, images, labels, model = phantom_model
    img = images / "phantom_006.nii.gz"
    out = tmp_path / "seg"
    before = img.read_bytes()
    assert main(["segment", str(img), "-o", str(out), "--model", str(model),
                 "--reference", str(labels / "phantom_006.nii.gz"), "--mesh-format", "ply"]) == 0
    assert img.read_bytes() == before                       # input untouched
    for f in ("label.nii.gz", "mesh.ply", "report.json", "qc.png", "manifest.json"):
        assert (out / f).is_file(), f
    rep = json.loads((out / "report.json").read_text())
    # a leak touches the organ; measured Dice 0.97-0.98 (seed 3), a half-voxel
    # shift of the label drops it to about 0.92
    assert rep["reference"]["dice"] > 0.95
    # the model learned its voxel classifier from the training images: applied
    assert isinstance(rep["voxels_changed"], int) and rep["voxels_changed"] > 0
    src, lab = read_volume(img), read_label_map(out / "label.nii.gz")
    # the label overlays the input exactly: same grid, spacing, origin, direction
    assert lab.array.shape == src.array.shape
    assert np.allclose(lab.spacing, src.spacing) and np.allclose(lab.origin, src.origin, atol=1e-4)
    assert np.allclose(lab.direction, src.direction, atol=1e-6)
    assert rep["volume_ml"] == pytest.approx(lab.array.sum() * np.prod(lab.spacing) / 1000)
    # the distances to the reference are the written label's, on the input's voxel
    # sizes (1 x 1 x 1.5 mm: read in z, y, x order they come out other)
    from shapeprior.segmentation import surface_distances

    ref = read_label_map(labels / "phantom_006.nii.gz").array > 0
    dist = surface_distances(lab.array > 0, ref, src.spacing)
    for k in ("assd_mm", "hd95_mm", "hd_mm"):
        assert rep["reference"][k] == pytest.approx(dist[k], rel=1e-9), k
    other = surface_distances(lab.array > 0, ref, src.spacing[::-1])["assd_mm"]
    assert other != pytest.approx(dist["assd_mm"], rel=1e-6)
    man = json.loads((out / "manifest.json").read_text())
    assert {"input/phantom_006.nii.gz", "model", "reference"} <= set(man["inputs"])
    # the input hashes (computed on a thread while the image was read) are the files'
    import hashlib

    for key, path in (("input/phantom_006.nii.gz", img), ("model", model),
                      ("reference", labels / "phantom_006.nii.gz")):
        assert man["inputs"][key]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # refuses to overwrite
    assert main(["segment", str(img), "-o", str(out), "--model", str(model)]) == 1
    assert main(["segment", str(img), "-o", str(tmp_path / "plain"), "--model", str(model),
                 "--no-voxel-refine", "--no-qc"]) == 0
    assert json.loads((tmp_path / "plain" / "report.json").read_text())["voxels_changed"] is None


def test_segment_batch_reports_failures_and_continues(phantom_model, tmp_path, capsys):
    d, images, labels, model = phantom_model
    batch = tmp_path / "batch"
    batch.mkdir()
    import shutil

    shutil.copy(images / "phantom_000.nii.gz", batch / "a.nii.gz")
    shutil.copy(images / "phantom_001.nii.gz", batch / "b.nii.gz")
    (batch / "broken.nii.gz").write_bytes(b"\x1f\x8b corrupt")
    rc = main(["segment", str(batch), "-o", str(tmp_path / "out"), "--model", str(model),
               "--no-qc"])
    assert rc == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["cases"]
    status = {r["case"]: r["status"] for r in summary}
    assert status == {"a": "ok", "b": "ok", "broken": "failed"}
    assert not (tmp_path / "out" / "broken").exists()     # nothing partial
    for case in ("a", "b"):                               # --no-qc reaches every case
        assert (tmp_path / "out" / case / "label.nii.gz").is_file()
        assert not (tmp_path / "out" / case / "qc.png").exists()


def _bad_inputs(tmp_path):
    import SimpleITK as sitk

    nan = sitk.GetImageFromArray(np.full((8, 8, 8), np.nan, np.float32))
    sitk.WriteImage(nan, str(tmp_path / "nan.mha"))   # NIfTI IO would zero NaNs
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.int16)), str(tmp_path / "flat.nii.gz"))
    (tmp_path / "corrupt.nii.gz").write_bytes(b"garbage")
    # cut-short downloads: ITK alone reads these without error, zero-filled
    noise = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(24, 24, 24)).astype(np.float32))
    for name in ("whole.nii.gz", "whole.nii"):
        sitk.WriteImage(noise, str(tmp_path / name))
        data = (tmp_path / name).read_bytes()
        (tmp_path / ("cut" + name[5:])).write_bytes(data[: len(data) // 2])
    (tmp_path / "empty").mkdir()
    nodcm = tmp_path / "notdicom"
    nodcm.mkdir()
    (nodcm / "x.dcm").write_bytes(b"\x00" * 200)
    os.mkfifo(tmp_path / "pipe.nii.gz")        # never opened: reading it would block
    return tmp_path


@pytest.mark.parametrize("name,msg", [
    ("nan.mha", "NaN"),
    ("flat.nii.gz", "3-D"),
    ("corrupt.nii.gz", "cannot read"),
    ("cut.nii.gz", "truncated"),
    ("cut.nii", "truncated"),
    ("empty", "no image files"),
    ("notdicom", "no image files"),
    ("missing.nii.gz", "no such"),
    ("pipe.nii.gz", "named pipe"),
])
def test_segment_bad_input_one_clear_error(phantom_model, tmp_path, capsys, name, msg):
    _, _, _, model = phantom_model
    src = _bad_inputs(tmp_path)
    out = tmp_path / "o"
    rc = main(["segment", str(src / name), "-o", str(out), "--model", str(model)])
    err = capsys.readouterr().err
    assert rc == 1 and msg in err and err.count("\n") == 1
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]   # no staging left


def test_segment_wrong_model_file(phantom_model, tmp_path, capsys):
    _, images, _, _ = phantom_model
    bad = tmp_path / "m.npz"
    np.savez(bad, x=np.zeros(2))
    rc = main(["segment", str(images / "phantom_000.nii.gz"), "-o", str(tmp_path / "o"),
               "--model", str(bad)])
    assert rc == 1 and "not a shapeprior model" in capsys.readouterr().err


def test_segment_mismatched_model_organ(phantom_model, tmp_path, capsys):
    """A model of a large organ on a small field of view: status failed, exit 3."""
    _, images, _, model = phantom_model
    from shapeprior.model import load_model, save_model

    m = load_model(model)
    m.mean = m.mean * 12.0
    m.shapes = m.shapes * 12.0
    save_model(m, tmp_path / "big.npz")
    rc = main(["segment", str(images / "phantom_000.nii.gz"), "-o", str(tmp_path / "o"),
               "--model", str(tmp_path / "big.npz")])
    err = capsys.readouterr().err
    assert rc == 3 and "cannot fit" in err and len(err.strip().splitlines()) == 1
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["status"] == "failed" and "cannot fit" in rep["reasons"][0]
    assert rep["volume_ml"] == 0


def test_dicom_oblique_with_gaps(data_root):
    d = data_root / "tcia_mr_dicom" / "Study3_T1post_oblique"
    if not d.is_dir():
        pytest.skip("TCIA oblique series not present")
    vol, info = read_image(d)
    assert vol.array.shape == (22, 320, 280)
    assert info["oblique"] and info["slice_gap_mm"] == pytest.approx(1.5, abs=1e-3)
    n = np.cross(vol.direction[:, 0], vol.direction[:, 1])
    assert abs(n[2]) == pytest.approx(0.982, abs=1e-3)     # slices tilted ~11 degrees
    text = json.dumps(info)
    assert "PGBM" not in text and "Patient" not in text   # no identifiers leave the reader


def test_dicom_jpeg2000_ct_matches_reference_label_grid(data_root):
    d = data_root / "totalsegmentator_example" / "example_ct_dicom"
    if not d.is_dir():
        pytest.skip("TotalSegmentator DICOM example not present")
    vol, info = read_image(d)
    assert info["modality"] == "CT" and vol.array.shape == (20, 512, 512)
    seg = read_label_map(data_root / "totalsegmentator_example" / "example_seg_dicom.nii.gz")
    # the label map is stored y-flipped (LAS); both cover the same physical box
    def box(v):
        idx = np.array([[i, j, k] for i in (0, v.array.shape[2] - 1)
                        for j in (0, v.array.shape[1] - 1) for k in (0, v.array.shape[0] - 1)])
        p = v.index_to_physical(idx.astype(float))
        return p.min(0), p.max(0)
    (a0, a1), (b0, b1) = box(vol), box(seg)
    assert np.allclose(a0, b0, atol=0.6) and np.allclose(a1, b1, atol=0.6)


def test_dicom_parent_folder_points_to_series(data_root, capsys):
    d = data_root / "tcia_mr_dicom"
    if not d.is_dir():
        pytest.skip("TCIA data not present")
    with pytest.raises(ValueError, match="no DICOM image series"):
        read_image(d)


def test_segment_batch_on_dask_local_cluster_resumes(phantom_model, tmp_path):
    pytest.importorskip("distributed")
    d, images, labels, model = phantom_model
    batch = tmp_path / "batch"
    batch.mkdir()
    import shutil

    for i in range(3):
        shutil.copy(images / f"phantom_00{i}.nii.gz", batch / f"c{i}.nii.gz")
    (batch / "zz_broken.nii.gz").write_bytes(b"not gzip at all")
    out = tmp_path / "out"
    rc = main(["segment", str(batch), "-o", str(out), "--model", str(model), "--workers", "2"])
    assert rc == 1
    rows = {r["case"]: r for r in json.loads((out / "summary.json").read_text())["cases"]}
    assert [rows[f"c{i}"]["status"] for i in range(3)] == ["ok"] * 3
    assert rows["zz_broken"]["status"] == "failed" and "cannot read" in rows["zz_broken"]["error"]
    # dask results equal a sequential run of the same case
    seq = tmp_path / "seq"
    assert main(["segment", str(batch / "c1.nii.gz"), "-o", str(seq), "--model", str(model)]) == 0
    a = read_label_map(out / "c1" / "label.nii.gz").array
    b = read_label_map(seq / "label.nii.gz").array
    assert np.array_equal(a, b)
    # resume: complete cases are skipped, the broken one is retried
    rc = main(["segment", str(batch), "-o", str(out), "--model", str(model)])
    rows = {r["case"]: r["status"] for r in json.loads((out / "summary.json").read_text())["cases"]}
    assert rc == 1 and rows == {"c0": "skipped", "c1": "skipped", "c2": "skipped",
                                "zz_broken": "failed"}


def _unit_vectors(rng, k):
    n = rng.normal(size=(k, 3))
    return n / np.linalg.norm(n, axis=1)[:, None]


def _smoothed_whole(vol, sigma_mm):
    """The whole image normalised and smoothed as a level does it, by scipy."""
    from scipy import ndimage

    from shapeprior.appearance import intensity_scale

    off, sc = intensity_scale(vol, "percentile")
    img = (vol.array.astype(np.float32) - np.float32(off)) / np.float32(sc)
    return ndimage.gaussian_filter(img, sigma_mm / vol.spacing[::-1])


def test_level_image_crop_equals_whole_image_smoothing():
    from shapeprior.io import Volume
    from shapeprior.appearance import LevelImage, NormalSampler

    rng = np.random.default_rng(0)
    arr = rng.normal(100, 30, size=(120, 130, 140)).astype(np.int16)
    th = np.deg2rad(20)
    R = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, -1.0]])
    vol = Volume(arr, np.array([0.8, 0.9, 1.5]), np.array([-30.0, 10.0, 40.0]), R)
    centre = vol.centre()
    v = centre + rng.normal(size=(200, 3)) * 2
    n = _unit_vectors(rng, 200)
    t = np.linspace(-4, 4, 9)
    whole = _smoothed_whole(vol, 1.5)
    ref = NormalSampler(vol, whole, "numpy")(v, n, t)
    # the crop's values beyond the filter's reach of its faces: the whole image's,
    # bit for bit
    r = (4.0 * 1.5 / vol.spacing[::-1] + 0.5).astype(int)
    for backend in ("numpy", "numba"):
        one = LevelImage(vol, "percentile", 1.5, backend)
        got = one.sampler(v, reach_mm=4.0).image
        lo, hi = one._regions[0][:2]
        inner = tuple(slice(a + k, b + 1 - k) for a, b, k in zip(lo, hi, r))
        part = got[tuple(slice(k, size - k) for k, size in zip(r, got.shape))]
        assert part.size and np.array_equal(part, whole[inner]), backend
    level = LevelImage(vol, "percentile", 1.5, "numba")
    s = level.sampler(v, reach_mm=4.0)
    assert s.image.size < arr.size / 2              # it did crop
    assert np.allclose(s(v, n, t), ref, atol=1e-5)
    # with no slack the crop still holds the filter's support around every sample
    tight = LevelImage(vol, "percentile", 1.5, "numba").sampler(v, reach_mm=4.0, slack_mm=0.0)
    assert tight.image.size < s.image.size and np.allclose(tight(v, n, t), ref, atol=1e-5)
    # a small move reuses the crop; leaving it recrops, with the same values
    assert level.sampler(v + 1.0, 4.0) is s and level.n_crops == 1
    far = v + np.array([0.0, 0.0, 25.0])
    s2 = level.sampler(far, 4.0)
    assert level.n_crops == 2
    assert np.allclose(s2(far, n, t), NormalSampler(vol, whole, "numpy")(far, n, t), atol=1e-5)
    # going back (another placement hypothesis) finds the first region kept
    assert level.sampler(v, 4.0) is s and level.n_crops == 2
    # at most MAX_REGIONS are kept: the least recently used one goes
    from shapeprior.appearance._levels import MAX_REGIONS

    away = [(40, 0, 0), (-40, 0, 0), (0, 40, 0), (0, -40, 0), (0, 0, -50)]
    assert len(away) == MAX_REGIONS - 1
    for d in away:                                          # tight regions, apart
        level.sampler(v + np.array(d, dtype=float), 4.0, slack_mm=0.0)
    assert level.n_crops == MAX_REGIONS + 1
    assert level.sampler(v, 4.0) is s                       # used last, kept
    level.sampler(far, 4.0)
    assert level.n_crops == MAX_REGIONS + 2                 # far was the oldest


def test_segment_backends_agree_and_cupy_fails_clearly(phantom_model, tmp_path, capsys):
    from shapeprior.backend import cupy_available
    from shapeprior.model import load_model
    from shapeprior.segmentation import SegmentParams, segment_volume

    d, images, labels, model_path = phantom_model
    model = load_model(model_path)
    vol = read_volume(images / "phantom_006.nii.gz")
    a = segment_volume(vol, model, SegmentParams(backend="numpy"))
    b = segment_volume(vol, model, SegmentParams(backend="numba"))
    assert a.backend == "numpy" and b.backend == "numba"
    assert np.allclose(a.verts, b.verts, atol=1e-6)
    assert np.array_equal(a.label, b.label)
    if not cupy_available():
        rc = main(["segment", str(images / "phantom_006.nii.gz"), "-o", str(tmp_path / "g"),
                   "--model", str(model_path), "--backend", "cupy"])
        err = capsys.readouterr().err
        assert rc == 1 and "needs CuPy and a CUDA GPU" in err
        assert not (tmp_path / "g").exists()
    else:
        c = segment_volume(vol, model, SegmentParams(backend="cupy"))
        assert np.allclose(c.verts, b.verts, atol=1e-4)


def test_reference_labels_default_to_the_models(phantom_model, tmp_path):
    """A model built from labels 1,2 is scored against both by default (the
    hippocampus case: head and body; label 1 alone gave Dice 0.64 for 0.90)."""
    from shapeprior.io import write_label
    from shapeprior.model import load_model, save_model

    d, images, labels, model_path = phantom_model
    m = load_model(model_path)
    m.metadata["parameters"]["labels"] = [1, 2]
    save_model(m, tmp_path / "m12.npz")
    ref = read_label_map(labels / "phantom_006.nii.gz")
    two = ref.array.copy()
    zs = np.nonzero(two.any(axis=(1, 2)))[0]
    two[zs[len(zs) // 2]:] *= 2                          # the upper half is label 2
    write_label(ref, two, tmp_path / "ref12.nii.gz")
    img = images / "phantom_006.nii.gz"
    scores = {}
    for name, extra in (("default", []), ("one", ["--reference-labels", "1"])):
        out = tmp_path / name
        assert main(["segment", str(img), "-o", str(out), "--model", str(tmp_path / "m12.npz"),
                     "--reference", str(tmp_path / "ref12.nii.gz")] + extra) == 0
        scores[name] = json.loads((out / "report.json").read_text())["reference"]["dice"]
    assert scores["default"] > 0.95 and scores["one"] < 0.8


def test_level_image_crop_at_the_far_corner_keeps_the_last_voxels():
    """A mesh against the image's far corner (the last voxel along every axis
    inside its reach): the crop's upper bound is inclusive, so the samples there
    equal the whole image smoothed, the last voxel layer included."""
    from shapeprior.appearance import LevelImage, NormalSampler
    from shapeprior.io import Volume

    rng = np.random.default_rng(3)
    arr = rng.normal(100, 30, size=(40, 44, 48)).astype(np.int16)
    vol = Volume(arr, np.array([0.9, 1.0, 2.0]), np.array([5.0, -3.0, 12.0]), np.eye(3))
    corner = np.array(arr.shape[::-1]) - 1.0                    # x, y, z of the last voxel
    v = vol.index_to_physical(corner - 1.5 + rng.uniform(-0.5, 0.5, size=(50, 3)))
    n = _unit_vectors(rng, 50)
    t = np.linspace(-1.0, 1.0, 5)
    ref = NormalSampler(vol, _smoothed_whole(vol, 1.0), "numpy")(v, n, t)
    s = LevelImage(vol, "percentile", 1.0, "numpy").sampler(v, reach_mm=1.0, slack_mm=0.0)
    assert s.image.shape != arr.shape                          # it did crop
    assert np.allclose(s(v, n, t), ref, atol=1e-5)
