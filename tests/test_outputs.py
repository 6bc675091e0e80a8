"""Outputs and interfaces: CLI help, meshes read by VTK, DICOM-SEG round trips,
statistics.json, model inspection, the QC picture's orientation, nnU-Net
layouts for build-model."""

import json
import re
import shutil
import warnings

import numpy as np
import pytest

from _phantoms import read_vtk_mesh

from shapeprior.cli import COMMANDS, main
from shapeprior.io import Volume, read_image, read_label_map, write_dicom_seg


def test_help_lists_every_command_and_each_command_has_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"\n    {name}" in out, name
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert f"shapeprior {name}" in capsys.readouterr().out
    assert main(["no-such-command"]) == 2


@pytest.fixture(scope="module")
def segmented(phantom_model, tmp_path_factory):
    """The held-out phantom segmented, with a .vtp mesh."""
    d, images, labels, model = phantom_model
    out = tmp_path_factory.mktemp("seg") / "out"
    assert main(["segment", str(images / "phantom_006.nii.gz"), "-o", str(out), "--model",
                 str(model), "--mesh-format", "vtp"]) == 0
    return out, model


def test_vtp_mesh_has_point_data_and_declares_lps(segmented):
    out, _ = segmented
    pts, n_polys, data, space = read_vtk_mesh(out / "mesh.vtp")
    assert space == "LPS"
    for name in ("gross_error_mm", "overridden", "confidence", "distance_to_mean_mm"):
        assert name in data and len(data[name]) == len(pts), name
    # the mesh lies on the label: its centroid is the label's centroid (LPS mm)
    lab = read_label_map(out / "label.nii.gz")
    c = lab.index_to_physical(np.argwhere(lab.array > 0).mean(0)[::-1][None])[0]
    assert np.linalg.norm(pts.mean(0) - c) < 1.0
    # a phantom of the training family stays close to the mean shape
    assert np.abs(data["distance_to_mean_mm"]).mean() < 2.0


@pytest.mark.parametrize("ext", ["vtk", "vtp", "ply", "stl", "obj"])
def test_every_mesh_format_writes_without_warnings_and_reads_back(tmp_path, ext):
    from shapeprior.mesh import Surface, icosphere

    v, f = icosphere(2)
    s = Surface(v * 10 + np.array([5.0, -3.0, 2.0]), f)
    pd = {"gross_error_mm": np.linspace(0, 1, len(v))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.write(tmp_path / f"m.{ext}", point_data=pd)
    if ext in ("vtk", "vtp"):
        pts, n_polys, data, space = read_vtk_mesh(tmp_path / f"m.{ext}")
        assert space == "LPS" and n_polys == len(f)
        np.testing.assert_allclose(data["gross_error_mm"], pd["gross_error_mm"])
    else:
        import meshio

        with warnings.catch_warnings():    # meshio's STL reader overflows a uint32 check
            warnings.simplefilter("ignore", RuntimeWarning)
            m = meshio.read(tmp_path / f"m.{ext}")
        pts = m.points
        if ext == "ply":        # PLY keeps the per-vertex values
            np.testing.assert_allclose(m.point_data["gross_error_mm"], pd["gross_error_mm"])
        if ext == "stl":        # STL stores triangles, not shared vertices
            from scipy.spatial import cKDTree

            assert cKDTree(s.verts).query(pts)[0].max() < 1e-4
            return
    np.testing.assert_allclose(pts, s.verts, atol=1e-4)
    if ext == "vtk":   # legacy 4.2: the version 3D Slicer's writer pins
        assert (tmp_path / "m.vtk").read_bytes().startswith(b"# vtk DataFile Version 4.2\n")


def test_statistics_json(segmented):
    out, model_path = segmented
    st = json.loads((out / "statistics.json").read_text())
    rep = json.loads((out / "report.json").read_text())
    assert st["status"] == rep["status"] and st["quality"] == pytest.approx(rep["quality"])
    assert st["volume_ml"] == pytest.approx(rep["volume_ml"])
    assert st["mesh_volume_ml"] == pytest.approx(st["volume_ml"], rel=0.05)
    ext = st["principal_axes"]["extent_mm"]
    assert ext == sorted(ext, reverse=True) and ext[0] > 0
    d = np.array(st["principal_axes"]["direction_lps"])
    np.testing.assert_allclose(d @ d.T, np.eye(3), atol=1e-8)
    m = st["mahalanobis"]
    assert 0 < m["rms_per_mode"] < 1.5 * m["training_max"]     # a typical phantom
    assert 0 <= m["training_fraction_closer"] <= 1
    assert len(st["shape_modes"]["coefficients_sd"]) >= 1


def test_statistics_flag_an_unusual_shape(phantom_model):
    """A shape stretched far along its first mode is more unusual than every
    training shape; the mean shape is more typical than most."""
    from shapeprior.model import load_model, mode_shape
    from shapeprior.segmentation import shape_statistics

    model = load_model(phantom_model[3])
    typical = shape_statistics(model, model.mean, model.faces)
    odd = shape_statistics(model, mode_shape(model, 0, 6.0), model.faces)
    assert typical["mahalanobis"]["training_fraction_closer"] <= 0.2
    assert odd["mahalanobis"]["training_fraction_closer"] == 1.0
    # the similarity alignment takes out the size part of the mode: most of it is left
    b = np.abs(odd["shape_modes"]["coefficients_sd"])
    assert b[0] > 3.0 and b[0] == b.max()


def test_model_info_and_export(phantom_model, tmp_path, capsys):
    from shapeprior.model import load_model

    model_path = phantom_model[3]
    before = model_path.read_bytes()
    assert main(["model-info", str(model_path), "--json"]) == 0
    printed = capsys.readouterr().out
    info = json.loads(printed)
    # no training file or folder name (they may name patients)
    assert info["provenance"]["build_parameters"]["images_dir"] is True
    assert "phantom_00" not in printed and str(phantom_model[0]) not in printed
    model = load_model(model_path)
    assert info["n_shapes"] == model.shapes.shape[0] and info["n_vertices"] == model.n_vertices
    assert info["appearance"] is not None and info["labels"] == [1]
    assert main(["model-info", str(model_path)]) == 0
    said = capsys.readouterr().out
    # the surface resolution it was built with (chosen by the organ's size when not given)
    bp = info["provenance"]["build_parameters"]
    assert "training shapes" in said and \
        f"surfaces on a {bp['iso_spacing']:g} mm grid, smoothed by {bp['smooth_mm']:g} mm" in said
    out = tmp_path / "export"
    assert main(["export-model", str(model_path), "-o", str(out), "--modes", "2"]) == 0
    assert model_path.read_bytes() == before
    pts, _, data, space = read_vtk_mesh(out / "mean.vtp")
    np.testing.assert_allclose(pts, model.mean, atol=1e-6)
    assert space == "LPS" and "training_sd_mm" in data
    plus, _, d, _ = read_vtk_mesh(out / "mode_1_plus.vtp")
    minus, _, _, _ = read_vtk_mesh(out / "mode_1_minus.vtp")
    # +3 sd and -3 sd lie 6 sd apart along the first mode
    step = (plus - minus).ravel() @ model.pca_components[0]
    assert step == pytest.approx(6 * np.sqrt(model.pca_variances[0]), rel=1e-6)
    shapes = sorted((out / "training").iterdir())
    assert len(shapes) == model.shapes.shape[0]
    np.testing.assert_allclose(read_vtk_mesh(shapes[2])[0], model.shapes[2], atol=1e-6)
    assert (out / "variance.png").stat().st_size > 0
    assert not (out / "mode_3_plus.vtp").exists()
    # never into (or over) the model itself; a missing model leaves nothing behind
    assert main(["export-model", str(model_path), "-o", str(model_path.parent)]) == 1
    assert main(["export-model", str(model_path), "-o", str(model_path), "--force"]) == 1
    assert main(["export-model", str(tmp_path / "none.npz"), "-o", str(tmp_path / "x")]) == 1
    assert model_path.read_bytes() == before and not (tmp_path / "x").exists()


def test_export_model_force_replaces_its_own_training_folder_only(phantom_model, tmp_path,
                                                                    capsys):
    """The training meshes sit in a subfolder: the manifest lists them by their
    path, so ``--force`` replaces a previous export whole, while a file, folder
    or link of the user's inside that subfolder makes the export foreign."""
    model_path = phantom_model[3]
    out = tmp_path / "export"
    assert main(["export-model", str(model_path), "-o", str(out), "--modes", "1"]) == 0
    listed = json.loads((out / "manifest.json").read_text())["outputs"]
    assert "training/shape_0000.vtp" in listed
    assert main(["export-model", str(model_path), "-o", str(out), "--modes", "1"]) == 1
    assert "use --force" in capsys.readouterr().err
    assert main(["export-model", str(model_path), "-o", str(out), "--modes", "2", "--force"]) == 0
    assert (out / "mode_2_plus.vtp").is_file()
    for plant in ("file", "folder", "link"):
        theirs = out / "training" / "theirs"
        if plant == "file":
            theirs.write_text("notes")
        elif plant == "folder":
            theirs.mkdir()
        else:
            theirs.symlink_to(out / "mean.vtp")
        capsys.readouterr()
        assert main(["export-model", str(model_path), "-o", str(out), "--force"]) == 1
        err = capsys.readouterr().err
        assert "training/theirs" in err and "did not write" in err
        assert theirs.exists() or theirs.is_symlink()
        theirs.unlink() if plant != "folder" else theirs.rmdir()
    # a listed mesh swapped for a link is not ours either
    shape = out / "training" / "shape_0001.vtp"
    shape.unlink()
    shape.symlink_to(out / "mean.vtp")
    assert main(["export-model", str(model_path), "-o", str(out), "--force"]) == 1
    assert shape.is_symlink()


@pytest.mark.parametrize("direction", [
    np.eye(3), np.diag([-1.0, -1.0, 1.0]),                     # LPS, RAS
    np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]),             # permuted axes
    np.array([[0.0, -1, 0], [0, 0, -1], [1, 0, 0]]),           # permuted and flipped
])
def test_qc_views_are_radiological(direction):
    """Whatever the grid's orientation, the QC array runs (S, P, L): a marker
    at the patient's left, posterior and superior lands at high indices."""
    from shapeprior.pipeline._qc import _lps_index, to_lps_array

    vol = Volume(np.zeros((20, 24, 28), np.float32), np.array([1.0, 1.5, 2.0]),
                 np.array([3.0, -7.0, 11.0]), direction)
    centre = vol.centre()
    marker = centre + np.array([8.0, 6.0, 5.0])          # left, posterior, superior
    ijk = np.round(vol.physical_to_index(marker[None])[0]).astype(int)
    vol.array[ijk[2], ijk[1], ijk[0]] = 1
    c = to_lps_array(vol.array, vol.direction)
    where = np.argwhere(c == 1)[0]
    mid = np.round(_lps_index(vol, centre[None])[0]).astype(int)
    assert np.all(where > mid), (where, mid)
    np.testing.assert_allclose(_lps_index(vol, marker[None])[0], where, atol=0.51)


@pytest.mark.parametrize("direction, lps_spacing", [
    (np.eye(3), (0.6, 0.9, 3.0)),
    (np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]), (3.0, 0.6, 0.9)),   # i: P, j: S, k: L
])
def test_qc_views_keep_the_voxels_physical_proportions(direction, lps_spacing, tmp_path,
                                                       monkeypatch):
    """Each plane is drawn with the aspect of its voxels, row mm over column mm, so
    that 3 mm slices under 0.6 mm pixels are not drawn squashed: axial rows run
    posterior (columns left), coronal and sagittal rows run superior (columns left,
    posterior)."""
    import matplotlib.axes

    from shapeprior.pipeline._qc import qc_png

    vol = Volume(np.zeros((20, 24, 28), np.float32), np.array([0.6, 0.9, 3.0]),
                 np.zeros(3), direction)
    vol.array[...] = np.random.default_rng(0).random(vol.array.shape)
    lab = np.zeros(vol.array.shape, np.uint8)
    lab[8:12, 10:14, 12:16] = 1
    seen = []
    real = matplotlib.axes.Axes.imshow

    def spy(self, x, *args, **kwargs):
        seen.append(kwargs["aspect"])
        return real(self, x, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    qc_png(tmp_path / "qc.png", vol, lab)
    sl, sp, ss = lps_spacing
    assert seen == [pytest.approx(sp / sl), pytest.approx(ss / sl), pytest.approx(ss / sp)]


def test_qc_picture_with_outliers(segmented, tmp_path):
    from shapeprior.pipeline._qc import qc_png

    out, _ = segmented
    lab = read_label_map(out / "label.nii.gz")
    pts = read_vtk_mesh(out / "mesh.vtp")[0]
    flags = np.zeros(len(pts), bool)
    flags[::7] = True
    qc_png(tmp_path / "qc.png", lab, lab.array, title="t", verts=pts, outliers=flags)
    assert (tmp_path / "qc.png").stat().st_size > 10_000


@pytest.mark.parametrize("seed", range(4))
def test_qc_draws_from_a_crop_that_holds_the_whole_label(seed):
    """The QC picture is drawn from a crop of the grid: every labelled voxel
    (and the reference's voxels nearby) is in it, at the same physical place,
    with the margin asked for (50 % of the organ's size, at least 30 mm)."""
    from shapeprior.io import Volume
    from shapeprior.pipeline._qc import _organ_view

    rng = np.random.default_rng(seed)
    shape = (60, 70, 80)
    lab = np.zeros(shape, bool)
    lo = rng.integers(0, 30, 3)
    size = rng.integers(1, 25, 3)
    lab[tuple(rng.integers(a, a + n, 40) for a, n in zip(lo, size))] = True
    ref = np.roll(lab, 2, axis=int(seed % 3))
    D = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    vol = Volume(rng.normal(size=shape).astype(np.float32), np.array([0.8, 1.1, 2.5]),
                 rng.normal(size=3) * 50, D)
    sub, sl, sr = _organ_view(vol, lab.astype(np.uint8), ref)
    shift = np.rint(vol.physical_to_index(sub.origin[None])[0][::-1]).astype(int)   # zyx
    assert np.allclose(vol.index_to_physical(shift[::-1][None].astype(float))[0], sub.origin)
    assert np.array_equal(np.argwhere(sl) + shift, np.argwhere(lab))
    assert np.array_equal(sub.array, vol.array[tuple(slice(a, a + n) for a, n in
                                                     zip(shift, sl.shape))])
    assert np.array_equal(sr, ref[tuple(slice(a, a + n) for a, n in zip(shift, sl.shape))])
    box_lo, box_hi = np.argwhere(lab).min(0), np.argwhere(lab).max(0) + 1
    want = np.maximum(0.5 * (box_hi - box_lo), 30.0 / vol.spacing[::-1]).astype(int)
    assert np.array_equal(shift, np.maximum(box_lo - want, 0))
    assert np.array_equal(shift + sl.shape, np.minimum(box_hi + want, shape))
    # an empty label: the whole grid
    whole, el, _ = _organ_view(vol, np.zeros(shape, bool), None)
    assert whole is vol and el.shape == shape


def _seg_frames(path):
    """Every frame of a SEG file: (ImagePositionPatient, mask) with the
    shared orientation and pixel spacing, read with pydicom alone."""
    import pydicom

    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    spacing = np.array(shared.PixelMeasuresSequence[0].PixelSpacing, float)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    pos = [np.array(g.PlanePositionSequence[0].ImagePositionPatient, float)
           for g in ds.PerFrameFunctionalGroupsSequence]
    refs = [g.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for g in ds.PerFrameFunctionalGroupsSequence]
    return ds, iop, spacing, list(zip(pos, frames, refs))


def _check_seg_against(path, folder, label_lps):
    """Each SEG frame lies on the source slice it references, and its pixels
    equal ``label_lps(points LPS) -> bool``; every label voxel is stored."""
    import pydicom

    src = {}
    for f in sorted(folder.iterdir()):
        d = pydicom.dcmread(f, stop_before_pixels=True)
        uid = str(d.get("SOPInstanceUID", "") or "") or str(d.file_meta.MediaStorageSOPInstanceUID)
        src[uid] = d
    ds, iop, (dr, dc), frames = _seg_frames(path)
    total = 0
    for pos, mask, ref in frames:
        s = src[str(ref)]
        np.testing.assert_allclose(pos, np.array(s.ImagePositionPatient, float), atol=1e-3)
        np.testing.assert_allclose(iop, np.array(s.ImageOrientationPatient, float), atol=1e-5)
        r, c = np.mgrid[0:ds.Rows, 0:ds.Columns]
        pts = pos + c[..., None] * dc * iop[:3] + r[..., None] * dr * iop[3:]
        np.testing.assert_array_equal(mask.astype(bool), label_lps(pts.reshape(-1, 3))
                                      .reshape(mask.shape))
        total += int(mask.sum())
    return ds, total


def _nibabel_lookup(path, value=None):
    """LPS points -> inside the label (non-zero, or == ``value``), through
    nibabel's own affine: a reader independent of shapeprior's."""
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    inside = data > 0 if value is None else data == value
    inv = np.linalg.inv(img.affine)

    def lookup(p):
        ras = p * np.array([-1.0, -1.0, 1.0])
        ijk = np.round(ras @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        ok = np.all((ijk >= 0) & (ijk < data.shape[:3]), axis=1)
        out = np.zeros(len(p), bool)
        out[ok] = inside[ijk[ok, 0], ijk[ok, 1], ijk[ok, 2]]
        return out
    return lookup


def test_dicom_seg_round_trip_totalsegmentator_series(data_root, tmp_path):
    folder = data_root / "totalsegmentator_example" / "example_ct_dicom"
    seg_nii = data_root / "totalsegmentator_example" / "example_seg_dicom.nii.gz"
    vol, info = read_image(folder)
    ref = read_label_map(seg_nii)                     # stored y-flipped: same voxels
    liver = np.zeros(vol.array.shape, np.uint8)
    centres = vol.index_to_physical(np.argwhere(np.ones(vol.array.shape, bool))[:, ::-1])
    idx = np.round(ref.physical_to_index(centres)).astype(int)
    liver.ravel()[:] = ref.array[idx[:, 2], idx[:, 1], idx[:, 0]] == 5
    rec = write_dicom_seg(tmp_path / "seg.dcm", liver, vol, folder, info["series_key"],
                          organ="liver")
    assert rec["source_frames"] == 20 and rec["frames"] >= 1
    ds, total = _check_seg_against(tmp_path / "seg.dcm", folder,
                                   lambda p: _nibabel_lookup(seg_nii, value=5)(p))
    import nibabel as nib

    assert total == int((np.asanyarray(nib.load(str(seg_nii)).dataobj) == 5).sum())
    assert ds.SegmentSequence[0].SegmentLabel == "liver"
    assert ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Liver"
    # the anonymised series has no study/series UIDs: the SEG says so in the notes
    assert any("SeriesInstanceUID" in n for n in rec["notes"])


def test_totalsegmentators_label_of_a_dicom_series_is_a_reference_of_it(data_root):
    """TotalSegmentator writes its label of a DICOM series y-flipped (LAS) beside the
    series' LPS: the same voxels in another axis order. As a --reference it was
    refused ("not on the image's grid ... resample it"); it is now placed on the
    series voxel for voxel, as SimpleITK's nearest-neighbour resampling places it."""
    import SimpleITK as sitk

    from shapeprior.pipeline._run import reference_mask

    folder = data_root / "totalsegmentator_example" / "example_ct_dicom"
    seg_nii = data_root / "totalsegmentator_example" / "example_seg_dicom.nii.gz"
    vol, _ = read_image(folder)
    ref = read_label_map(seg_nii)
    assert vol.grid_difference(ref).startswith("direction")
    want = sitk.GetArrayFromImage(sitk.Resample(ref.to_sitk(), vol.to_sitk(), sitk.Transform(),
                                                sitk.sitkNearestNeighbor, 0.0,
                                                ref.to_sitk().GetPixelID()))
    assert np.array_equal(ref.placed_on(vol), want)
    others = []
    liver = reference_mask(seg_nii, (5,), vol, "image", others=others)
    assert np.array_equal(liver, want == 5) and liver.sum() > 100_000 and 5 not in others


def test_dicom_seg_round_trip_oblique_series(data_root, tmp_path):
    """The oblique TCIA MR: a SEG frame lies on each source slice it covers."""
    folder = data_root / "tcia_mr_dicom" / "Study3_T1post_oblique"
    vol, info = read_image(folder)
    assert info["oblique"]
    lab = np.zeros(vol.array.shape, np.uint8)
    lab[4:11, 90:200, 70:150] = 1
    lab[6, 120:130, 150:160] = 1                       # an asymmetric notch
    from shapeprior.io import write_label

    write_label(vol, lab, tmp_path / "label.nii.gz")
    rec = write_dicom_seg(tmp_path / "seg.dcm", lab, vol, folder, info["series_key"],
                          organ="tumour")
    assert rec["frames"] == 7 and rec["notes"] == []
    lookup = _nibabel_lookup(tmp_path / "label.nii.gz")
    ds, total = _check_seg_against(tmp_path / "seg.dcm", folder, lookup)
    assert total == int(lab.sum())
    assert ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Organ"


def _segmented_series(phantom_model, tmp_path, output_type):
    """A phantom written as a DICOM series and segmented with ``--output-type
    output_type`` into ``tmp_path/out`` (exit 0, the series unchanged):
    ``(volume, series folder, output folder, the series' tree_state)``."""
    from _phantoms import write_dicom_series
    from _safety import tree_state

    _, images, _, model = phantom_model
    vol, _ = read_image(images / "phantom_006.nii.gz")
    series = write_dicom_series(vol, tmp_path / "dicom")
    state = tree_state(series)
    out = tmp_path / "out"
    assert main(["segment", str(series), "-o", str(out), "--model", str(model),
                 "--output-type", output_type]) == 0
    assert tree_state(series) == state
    return vol, series, out, state


def test_a_suspect_result_says_so_in_its_dicom_series_description(phantom_model, tmp_path,
                                                                    monkeypatch):
    """A DICOM-SEG or structure set is read in a viewer, where report.json is not:
    a suspect result's Series Description says SUSPECT (an ok one's is the plain
    one), and the report records it."""
    import pydicom
    from _phantoms import with_status

    from shapeprior.pipeline import _run

    vol, series, out, _ = _segmented_series(phantom_model, tmp_path, "dicom-seg,rtstruct")
    for name in ("seg.dcm", "rtstruct.dcm"):
        assert pydicom.dcmread(out / name).SeriesDescription == "shapeprior segmentation"
    monkeypatch.setattr(_run, "segment_volume", with_status(
        _run.segment_volume, "suspect", "weak boundary evidence"))
    sus = tmp_path / "suspect"
    assert main(["segment", str(series), "-o", str(sus), "--model", str(phantom_model[3]),
                 "--output-type", "nifti,dicom-seg,rtstruct"]) == 0
    rep = json.loads((sus / "report.json").read_text())
    assert rep["status"] == "suspect"
    from _phantoms import nifti_description                 # and the NIfTI header's too

    from shapeprior.model import load_model

    organ = load_model(phantom_model[3]).metadata.get("organ") or "organ"
    assert nifti_description(sus / "label.nii.gz") == \
        f"shapeprior {organ}: SUSPECT, review before use"
    for name, key in (("seg.dcm", "dicom_seg"), ("rtstruct.dcm", "rtstruct")):
        said = pydicom.dcmread(sus / name).SeriesDescription
        assert "SUSPECT" in said and len(said) <= 64
        assert rep[key]["series_description"] == said


def test_segment_dicom_input_writes_dicom_seg(phantom_model, tmp_path):
    import contextlib
    import hashlib
    import io

    import pydicom

    d, images, labels, model = phantom_model
    vol, series, out, _ = _segmented_series(phantom_model, tmp_path, "both")
    rep = json.loads((out / "report.json").read_text())
    assert rep["dicom_seg"]["written"] and rep["dicom_seg"]["source_frames"] == vol.array.shape[0]
    lookup = _nibabel_lookup(out / "label.nii.gz")
    _, total = _check_seg_against(out / "seg.dcm", series, lookup)
    assert total == int(read_label_map(out / "label.nii.gz").array.sum())
    # a file input has no series to refer to; --deidentify would strip what a SEG needs
    assert main(["segment", str(images / "phantom_006.nii.gz"), "-o", str(tmp_path / "x"),
                 "--model", str(model), "--output-type", "dicom-seg"]) == 1
    assert main(["segment", str(series), "-o", str(tmp_path / "y"), "--model", str(model),
                 "--output-type", "dicom-seg", "--deidentify"]) == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    # the SEG is a mask another run takes: a reference of the same series (Dice 1), and
    # a mask to refine, whose label lies on the SEG's grid, the series' own
    again = tmp_path / "again"
    assert main(["segment", str(series), "-o", str(again), "--model", str(model),
                 "--reference", str(out / "seg.dcm")]) == 0
    assert json.loads((again / "report.json").read_text())["reference"]["dice"] == 1.0
    # ... and not one made on another scan of the same geometry (a follow-up acquired
    # alike: another Frame of Reference UID), which would be compared voxel for voxel
    other = pydicom.dcmread(out / "seg.dcm")
    other.FrameOfReferenceUID = "1.2.826.0.1.3680043.2.1125.99.1"
    other.save_as(tmp_path / "other_seg.dcm")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["segment", str(series), "-o", str(tmp_path / "z"), "--model", str(model),
                     "--reference", str(tmp_path / "other_seg.dcm")]) == 1
    assert "the reference other_seg.dcm was made on another scan (its Frame of Reference " \
        "UID differs from the image's): the two cannot be compared" in err.getvalue()
    assert not (tmp_path / "z").exists()
    # as the mask that starts the fit alike: the series' own SEG starts it, another's not
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["segment", str(series), "-o", str(tmp_path / "z"), "--model", str(model),
                     "--init-mask", str(tmp_path / "other_seg.dcm")]) == 1
    assert "the --init-mask other_seg.dcm was made on another scan (its Frame of Reference " \
        "UID differs from the image's): its coordinates do not place it on the image" \
        in err.getvalue()
    assert not (tmp_path / "z").exists()
    assert main(["segment", str(series), "-o", str(tmp_path / "z"), "--model", str(model),
                 "--init-mask", str(out / "seg.dcm"), "--no-qc"]) == 0
    # ... and as the mask refine refines against the image: the series' own SEG, not another's
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["refine", str(tmp_path / "other_seg.dcm"), "-o", str(tmp_path / "r"),
                     "--model", str(model), "--image", str(series)]) == 1
    assert "the mask other_seg.dcm was made on another scan (its Frame of Reference UID " \
        "differs from the image's): its coordinates do not place it on the image" \
        in err.getvalue()
    assert not (tmp_path / "r").exists()
    assert main(["refine", str(out / "seg.dcm"), "-o", str(tmp_path / "r"), "--model",
                 str(model), "--image", str(series)]) == 0
    # a SEG cut short is refused, however short: pydicom reads what is left without a
    # word (one byte short, only the pixel data's padding byte is missing)
    whole = (out / "seg.dcm").read_bytes()
    for cut in (1, 100, len(whole) // 3):
        (tmp_path / "cut_seg.dcm").write_bytes(whole[:-cut])
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(["refine", str(tmp_path / "cut_seg.dcm"), "-o", str(tmp_path / "c"),
                         "--model", str(model)]) == 1
        assert re.search(r"^shapeprior refine: error: cut_seg\.dcm: truncated DICOM-SEG \(the "
                         r"file ends inside element \([0-9A-F]{4},[0-9A-F]{4}\): \d+ of its "
                         r"\d+ bytes; a copy or download cut short\?\)$", err.getvalue()), \
            err.getvalue()
        assert not (tmp_path / "c").exists()
    seg_digest = hashlib.sha256((out / "seg.dcm").read_bytes()).hexdigest()
    refined = tmp_path / "refined"
    assert main(["refine", str(out / "seg.dcm"), "-o", str(refined), "--model",
                 str(model)]) == 0
    got = read_label_map(refined / "label.nii.gz")
    placed = got.placed_on(read_label_map(out / "label.nii.gz"))
    assert placed is not None
    from shapeprior.segmentation import dice

    assert dice(placed > 0, read_label_map(out / "label.nii.gz").array > 0) > 0.95
    assert hashlib.sha256((out / "seg.dcm").read_bytes()).hexdigest() == seg_digest
    # ... but never as the scan to segment, or the image of a refinement
    for args in (["segment", str(out / "seg.dcm"), "-o", str(tmp_path / "s1")],
                 ["refine", str(out / "label.nii.gz"), "-o", str(tmp_path / "s2"), "--image",
                  str(out / "seg.dcm")]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main([*args, "--model", str(model)]) == 1
        assert "seg.dcm is a DICOM-SEG (a segmentation), not a scan" in err.getvalue()
        assert err.getvalue().count("\n") == 1
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()
    # a folder of SEGs is no batch of masks: said so, not "no label map files"
    segs = tmp_path / "segs"
    segs.mkdir()
    shutil.copy(out / "seg.dcm", segs / "a.dcm")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["refine", str(segs), "-o", str(tmp_path / "s3"), "--model",
                     str(model)]) == 1
    assert "segs holds 1 DICOM-SEG files and no other label map" in err.getvalue()
    assert "refine each SEG file" in err.getvalue() and not (tmp_path / "s3").exists()


def _nnunet_dataset(root, data_root, cases):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    hip = data_root / "msd_hippocampus"
    for c in cases:
        shutil.copy(hip / "images" / f"hippocampus_{c}.nii.gz",
                    root / "imagesTr" / f"hippocampus_{c}_0000.nii.gz")
        shutil.copy(hip / "labels" / f"hippocampus_{c}.nii.gz", root / "labelsTr")
    return root


def test_build_model_accepts_nnunet_layout(data_root, tmp_path):
    ds = _nnunet_dataset(tmp_path / "Dataset004_Hippocampus", data_root,
                         ["001", "003", "004", "006"])
    # the MSD archives carry macOS resource forks beside each file
    (ds / "labelsTr" / "._hippocampus_001.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    out = tmp_path / "m.npz"
    assert main(["build-model", str(ds), "--images", str(ds), "-o", str(out), "--labels", "1,2",
                 "--vertices", "162", "--quiet"]) == 0
    from shapeprior.model import load_model

    m = load_model(out)
    assert m.shapes.shape[0] == 4 and m.profile is not None and m.profile.n_images == 4


def test_build_model_refuses_bad_pairs_before_the_slow_stage(data_root, tmp_path, monkeypatch,
                                                              capsys):
    import shapeprior.model._build as build

    def slow_stage(*a, **k):
        raise AssertionError("the slow stage ran before the pairing check")

    monkeypatch.setattr(build, "_map", slow_stage)
    ds = _nnunet_dataset(tmp_path / "D", data_root, ["001", "003", "004", "006"])
    # an image of another case, on another grid
    shutil.copy(data_root / "msd_hippocampus" / "images" / "hippocampus_007.nii.gz",
                ds / "imagesTr" / "hippocampus_006_0000.nii.gz")
    assert main(["build-model", str(ds), "--images", str(ds), "-o", str(tmp_path / "m.npz"),
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "hippocampus_006" in err and "same grid" in err and len(err.strip().splitlines()) == 1
    (ds / "imagesTr" / "hippocampus_006_0000.nii.gz").unlink()
    assert main(["build-model", str(ds), "--images", str(ds), "-o", str(tmp_path / "m.npz"),
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "1 of 4 label maps have no image" in err and "hippocampus_006_0000.nii.gz" in err
    assert not (tmp_path / "m.npz").exists()


def test_a_cd_export_is_segmented_from_its_one_series(phantom_model, tmp_path):
    """A CD export (DICOMDIR beside DICOM/PA0/ST0/SE0/) given as the input: the run
    reads its one series, refers its DICOM-SEG to it and hashes its files in the
    manifest; before, the folder held "no image files and no DICOM series"."""
    from _phantoms import write_dicom_series

    d, images, labels, model = phantom_model
    vol, _ = read_image(images / "phantom_006.nii.gz")
    cd = tmp_path / "cd"
    series = write_dicom_series(vol, cd / "DICOM" / "PA0" / "ST0" / "SE0")
    (cd / "DICOMDIR").write_bytes(b"an index the reader does not need")
    out = tmp_path / "out"
    assert main(["segment", str(cd), "-o", str(out), "--model", str(model),
                 "--output-type", "both"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["input"]["series_levels_below"] == 4 and rep["input"]["name"] == "cd"
    assert rep["dicom_seg"]["written"]
    _, total = _check_seg_against(out / "seg.dcm", series, _nibabel_lookup(out / "label.nii.gz"))
    assert total == int(read_label_map(out / "label.nii.gz").array.sum())
    hashed = json.loads((out / "manifest.json").read_text())["inputs"]
    assert sorted(k for k in hashed if k.startswith("input/")) == \
        sorted(f"input/{f.name}" for f in series.iterdir())


def test_dicom_seg_frame_on_non_square_pixels_and_off_grid_refused():
    """A source frame with rectangular pixels (0.5 mm between columns, 0.8 mm
    between rows) takes the label's slice voxel for voxel; a frame half a
    voxel off the label's grid is refused."""
    from pydicom.dataset import Dataset

    from shapeprior.io._dicom_seg import frame_mask

    rng = np.random.default_rng(0)
    lab = (rng.random((5, 12, 9)) > 0.5).astype(np.uint8)            # z, y, x
    vol = Volume(np.zeros(lab.shape, np.int16), np.array([0.5, 0.8, 2.0]),
                 np.array([-10.0, 20.0, 30.0]), np.eye(3))

    def frame(z, shift=(0.0, 0.0, 0.0)):
        ds = Dataset()
        ds.Rows, ds.Columns = lab.shape[1], lab.shape[2]
        ds.ImagePositionPatient = [float(v) for v in vol.index_to_physical(
            np.array([[0.0, 0.0, z]]))[0] + np.asarray(shift)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.8, 0.5]                        # between rows, between columns
        return ds

    for z in range(lab.shape[0]):
        np.testing.assert_array_equal(frame_mask(lab, vol, frame(z)), lab[z])
    with pytest.raises(ValueError, match="not on the DICOM series' voxel grid"):
        frame_mask(lab, vol, frame(2, shift=(0.25, 0.0, 0.0)))


def _small_series(tmp_path, drop=()):
    """A 6-slice phantom DICOM series (SimpleITK) with the tags ``drop`` removed
    from every dataset (file meta kept): ``(folder, volume)``."""
    import pydicom

    from _phantoms import write_dicom_series

    arr = np.zeros((6, 10, 12), np.int16)
    arr[1:5, 2:8, 3:9] = 100
    vol = Volume(arr, np.array([0.7, 0.9, 2.5]), np.array([-20.0, 15.0, 40.0]), np.eye(3))
    folder = write_dicom_series(vol, tmp_path / "dicom")
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        for tag in drop:
            delattr(ds, tag)
        ds.save_as(f)
    vol, _ = read_image(folder)
    return folder, vol


def test_dicom_seg_codes_organ_and_side_and_refuses_uncovered_voxels(tmp_path):
    import pydicom

    folder, vol = _small_series(tmp_path)
    lab = (vol.array > 0).astype(np.uint8)
    rec = write_dicom_seg(tmp_path / "seg.dcm", lab, vol, folder, organ="Kidney", side="left")
    ds = pydicom.dcmread(tmp_path / "seg.dcm")
    seg = ds.SegmentSequence[0]
    assert seg.SegmentLabel == "Kidney (left)"
    assert seg.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Kidney"
    lat = seg.SegmentedPropertyTypeModifierCodeSequence[0]
    assert (lat.CodeValue, lat.CodingSchemeDesignator, lat.CodeMeaning) == \
        ("7771000", "SCT", "Left")
    assert rec["frames"] == 4 and rec["notes"] == []
    # one segment per side, each its own laterality; an unpaired organ has none
    write_dicom_seg(tmp_path / "both.dcm", [lab, lab], vol, folder, organ="Kidney",
                    side=["left", "right"])
    both = pydicom.dcmread(tmp_path / "both.dcm").SegmentSequence
    assert [s.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue for s in both] == \
        ["7771000", "24028007"]
    write_dicom_seg(tmp_path / "liver.dcm", lab, vol, folder, organ="Liver")
    assert "SegmentedPropertyTypeModifierCodeSequence" not in \
        pydicom.dcmread(tmp_path / "liver.dcm").SegmentSequence[0]
    # a source slice that holds label voxels is gone from the series: refused, not truncated
    (folder / "IM0003.dcm").unlink()
    with pytest.raises(ValueError, match="does not cover the whole segmentation"):
        write_dicom_seg(tmp_path / "seg2.dcm", lab, vol, folder, organ="kidney")
    assert not (tmp_path / "seg2.dcm").exists()


def test_a_seg_whose_header_asks_for_more_memory_than_there_is_is_refused_as_a_seg(
        tmp_path, monkeypatch):
    """A corrupt element length makes pydicom ask for gigabytes (found by
    bench/fuzz_readers.py under a memory limit: a MemoryError escaped the SEG
    probe). The file meta still says SEG, so the file is refused as an unreadable
    DICOM-SEG in one line, not passed to the image readers or left to crash."""
    import pydicom

    from shapeprior.io import ImageReadError, is_dicom_seg

    folder, vol = _small_series(tmp_path)
    write_dicom_seg(tmp_path / "seg.dcm", (vol.array > 0).astype(np.uint8), vol, folder,
                    organ="kidney")
    assert is_dicom_seg(tmp_path / "seg.dcm")

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(pydicom, "dcmread", no_memory)
    assert is_dicom_seg(tmp_path / "seg.dcm")
    assert not is_dicom_seg(next(folder.iterdir()))        # an image slice stays one
    with pytest.raises(ImageReadError) as err:
        read_label_map(tmp_path / "seg.dcm")
    assert str(err.value) == ("seg.dcm: not a readable DICOM-SEG (MemoryError: it asks for "
                              "more memory than there is (a corrupt length?))")


def test_dicom_seg_of_a_paired_organ_names_the_side_the_fit_took(tmp_path):
    """A paired organ's model fitted without --side (both sides tried): the
    DICOM-SEG and the report carry the side the kept fit took, not 'none'."""
    import pydicom
    from types import SimpleNamespace

    from shapeprior.pipeline._run import _write_seg, fitted_side
    from shapeprior._outputs import OutputDir
    from shapeprior.segmentation import SegmentParams

    folder, vol = _small_series(tmp_path)
    lab = (vol.array > 0).astype(np.uint8)
    paired = SimpleNamespace(metadata={"organ": "kidney", "side": "left (right mirrored)"})
    single = SimpleNamespace(metadata={"organ": "liver", "side": "none"})
    none, left = SegmentParams(), SegmentParams(side="left")
    for mirrored, want in ((True, "right"), (False, "left")):
        res = SimpleNamespace(status="ok", label=lab, mirrored=mirrored)
        assert fitted_side(res, paired, none) == want
        out = OutputDir(tmp_path / f"out_{want}")
        _write_seg(out, vol, res, paired, folder, {}, none)
        out.commit()
        seg = pydicom.dcmread(tmp_path / f"out_{want}" / "seg.dcm").SegmentSequence[0]
        assert seg.SegmentLabel == f"kidney ({want})"
    res = SimpleNamespace(status="ok", label=lab, mirrored=False)
    assert fitted_side(res, single, none) is None
    assert fitted_side(res, single, left) == "left"


def test_dicom_seg_of_an_anonymised_series(tmp_path):
    """SOP instance UIDs only in the file meta, no series or frame-of-reference
    UID: the SEG refers to the instances by their meta UIDs and derives distinct
    series and frame-of-reference UIDs, with notes saying so."""
    import pydicom

    folder, vol = _small_series(tmp_path, drop=("SOPInstanceUID", "SeriesInstanceUID",
                                                "FrameOfReferenceUID"))
    lab = (vol.array > 0).astype(np.uint8)
    rec = write_dicom_seg(tmp_path / "seg.dcm", lab, vol, folder, organ="kidney")
    notes = " ".join(rec["notes"])
    assert "SOPInstanceUID taken from the file meta header" in notes
    assert "SeriesInstanceUID" in notes and "FrameOfReferenceUID" in notes
    ds = pydicom.dcmread(tmp_path / "seg.dcm")
    metas = {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID)
             for f in folder.iterdir()}
    refs = {str(r.ReferencedSOPInstanceUID)
            for r in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == metas
    series = str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    assert series != str(ds.FrameOfReferenceUID)
    assert series != str(ds.StudyInstanceUID)


def test_dicom_seg_of_a_series_without_patient_attributes(tmp_path):
    """A series re-saved by a script without the patient's and the study's type-2
    attributes (the TCIA hippocampus crop lacks the birth date and sex): highdicom
    needs them present; they are given empty, with a note each, instead of an
    internal error."""
    import pydicom

    drop = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
            "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")

    folder, vol = _small_series(tmp_path, drop=drop)
    assert not any(k in pydicom.dcmread(f, stop_before_pixels=True)
                   for f in folder.iterdir() for k in drop)
    lab = (vol.array > 0).astype(np.uint8)
    rec = write_dicom_seg(tmp_path / "seg.dcm", lab, vol, folder, organ="kidney")
    for k in drop:
        assert f"the source has no {k}: the SEG has it empty" in rec["notes"]
    ds = pydicom.dcmread(tmp_path / "seg.dcm")
    assert all(k in ds and not str(ds[k].value or "") for k in drop)
    assert np.array_equal(read_label_map(tmp_path / "seg.dcm").placed_on(vol), lab)


def test_export_model_modes_displacements_and_options(tmp_path, capsys):
    """``export-model`` on a model with 2 PCA modes asked for 5: both modes
    exported, nothing beyond; each mode mesh carries its displacement from
    the mean in mm; --no-training writes no training mesh and says so; --sd 0
    is refused."""
    from shapeprior.mesh import icosphere
    from shapeprior.model import model_from_shapes, save_model

    v, f = icosphere(1)
    rng = np.random.default_rng(0)
    m = model_from_shapes(np.stack([v * [20.0, 14.0, 9.0] * (1 + rng.normal(0, [0.1, 0.05, 0.02]))
                                    for _ in range(5)]), f)
    n = len(m.pca_variances)
    path = tmp_path / "m.npz"
    save_model(m, path)
    out = tmp_path / "export"
    assert main(["export-model", str(path), "-o", str(out), "--modes", str(n + 3), "--sd", "2",
                 "--format", "vtk", "--no-training"]) == 0
    for k in range(1, n + 1):
        for side, sign in (("plus", 1.0), ("minus", -1.0)):
            pts, _, data, _ = read_vtk_mesh(out / f"mode_{k}_{side}.vtk")
            disp = pts - m.mean
            np.testing.assert_allclose(disp.ravel() @ m.pca_components[k - 1],
                                       sign * 2.0 * np.sqrt(m.pca_variances[k - 1]), rtol=1e-5)
            np.testing.assert_allclose(data["displacement_mm"], np.linalg.norm(disp, axis=1),
                                       rtol=1e-5, atol=1e-5)
    assert not (out / f"mode_{n + 1}_plus.vtk").exists() and not (out / "training").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["export"] == {"format": "vtk", "modes": n, "sd": 2.0, "training_shapes": 0}
    assert f"note: --modes {n + 3}: the model has {n} PCA modes" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["export-model", str(path), "-o", str(tmp_path / "zero"), "--sd", "0"])
    assert "--sd=0.0 must be in (0, 10]" in capsys.readouterr().err
    assert not (tmp_path / "zero").exists()


def test_model_info_text_says_what_the_summary_holds(phantom_model, capsys, monkeypatch):
    """The human-readable model-info: the cumulative variance of the first five modes,
    the training scale range, the calibrated surface offset with its sign, and the
    kind of images the appearance was learned on (CT, MR, or both)."""
    import shapeprior.model
    from shapeprior.model import load_model, model_summary

    s = model_summary(load_model(phantom_model[3]))
    ev = [0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05]              # more modes than shown
    s["pca"].update(n_modes=8, explained_variance=ev, cumulative=np.cumsum(ev).tolist())
    s["surface_offset"] = {**(s.get("surface_offset") or {"dice_at_offset": 0.9,
                                                         "dice_at_0": 0.8, "n_shapes": 6}),
                           "mm": -0.3}
    s["appearance"]["images_hounsfield_share"] = [0.0, 0.8]      # MR and CT images
    monkeypatch.setattr(shapeprior.model, "model_summary", lambda m: s)
    assert main(["model-info", str(phantom_model[3])]) == 0
    out = capsys.readouterr().out
    assert "8 modes; first modes explain 30.0%, 20.0%, 10.0%, 10.0%, 10.0% (cumulative " \
        "80.0%)" in out
    lo, hi = s["pose"]["scale_range"]
    assert f"(training range {lo:.2f}-{hi:.2f})" in out
    assert "final surface moved -0.3 mm outward" in out
    assert "learned on images of both kinds: 0-80 %" in out
    s["appearance"]["images_hounsfield_share"] = [0.7, 0.9]
    s["appearance"]["training_background_share_max"] = 0.3
    assert main(["model-info", str(phantom_model[3])]) == 0
    out = capsys.readouterr().out
    assert "learned on images in HU (CT)" in out
    assert "at most 30 % of a training surface inside the air around the body: the " \
        "background rule is off (an organ in the air)" in out


def test_statistics_principal_axes_of_a_known_ellipsoid():
    """An ellipsoid with semi-axes 30, 20, 10 mm along a known rotated frame:
    the principal axes are that frame's columns, longest first, and the extents
    about twice the semi-axes."""
    from scipy.spatial.transform import Rotation

    from shapeprior.model import model_from_shapes
    from shapeprior.segmentation import shape_statistics
    from shapeprior.synthetic import ShapePopulation, star_mesh_faces

    pop = ShapePopulation(n_points=642, seed=4)
    faces = star_mesh_faces(pop.directions)
    model = model_from_shapes(pop.sample(20), faces)
    R = Rotation.from_euler("zyx", [35, -20, 50], degrees=True).as_matrix()
    verts = (pop.directions * [30.0, 20.0, 10.0]) @ R.T + [100.0, -50.0, 20.0]
    st = shape_statistics(model, verts, faces)
    d = np.array(st["principal_axes"]["direction_lps"])
    np.testing.assert_allclose(np.abs(np.sum(d * R.T, axis=1)), 1.0, atol=1e-6)
    np.testing.assert_allclose(st["principal_axes"]["extent_mm"], [60, 40, 20], rtol=0.03)
    np.testing.assert_allclose(st["centroid_lps_mm"], [100, -50, 20], atol=0.5)


def test_a_dicom_seg_reads_back_as_the_label_on_its_series_grid(data_root, tmp_path):
    """A DICOM-SEG (ours here; TotalSegmentator writes them too) read as a label map:
    the same voxels at the same LPS positions as the label it was written from, on
    the series' own grid (slices stacked along x cross y, as the series is read):
    the cropped slab of the frames it covers, so it places onto the series' grid."""
    folder = data_root / "tcia_mr_dicom" / "Study3_T1post_oblique"
    vol, info = read_image(folder)
    lab = np.zeros(vol.array.shape, np.uint8)
    lab[4:11, 90:200, 70:150] = 1
    lab[6, 120:130, 150:160] = 1                       # an asymmetric notch
    write_dicom_seg(tmp_path / "seg.dcm", lab, vol, folder, info["series_key"], organ="tumour")
    back, read_info = read_image(tmp_path / "seg.dcm")
    assert read_info["format"] == "dicom-seg"
    # the 7 frames the label covers, and an empty slice past each end its segment
    # reaches (what the SEG says of the frames it left out)
    n = 1
    assert back.array.shape == (7 + 2 * n, 320, 280)
    assert back.array.dtype == np.uint8
    assert not back.array[:n].any() and not back.array[-n:].any()
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6)
    np.testing.assert_allclose(back.spacing, vol.spacing, rtol=1e-6)
    placed = back.placed_on(vol)
    assert placed is not None and np.array_equal(placed, lab)
    assert np.array_equal(read_label_map(tmp_path / "seg.dcm").array, back.array)


def test_a_model_built_from_dicom_seg_masks_is_not_cut_by_their_frames(tmp_path, capsys):
    """A SEG omits its empty frames, so its frames end where its segment ends. Built
    into a model, such a mask was an organ cut by the field of view at both ends
    (every shape listed under cut_by_fov, and all rejected with --exclude-cut); its
    left-out slices are empty, and the organ is whole."""
    folder, vol = _small_series(tmp_path)
    lab = np.zeros(vol.array.shape, np.uint8)
    lab[2:4, 2:8, 3:9] = 1                       # 2 of 6 slices: frames 2 and 3 only
    segs = []
    for i in range(3):
        (tmp_path / f"c{i}").mkdir()
        write_dicom_seg(tmp_path / f"c{i}" / "seg.dcm", lab, vol, folder, organ="Kidney")
        segs.append(str(tmp_path / f"c{i}" / "seg.dcm"))
    from shapeprior.io import read_label_map
    from shapeprior.model._build import cut_by_fov

    back = read_label_map(segs[0])
    assert cut_by_fov(back, back, back.array > 0) is None
    assert np.array_equal(back.placed_on(vol), lab)
    out = tmp_path / "m.npz"
    rc = main(["build-model", *segs, "-o", str(out), "--labels", "1", "--vertices", "42",
               "--iso-spacing", "0.5", "--smooth", "0.5", "--exclude-cut"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "cut by" not in printed.out
    report = json.loads((tmp_path / "m.npz.report" / "report.json").read_text())
    assert report["n_shapes_kept"] == 3 and not report.get("cut_by_fov")
    # the same SEGs as each case folder's mask (TCIA keeps a case's SEG in its folder):
    # --mask-name seg.dcm names them, a folder without one skipped with a note
    import shutil

    ds = tmp_path / "ds"
    for i in range(3):
        (ds / f"c{i}").mkdir(parents=True)
        shutil.copy(segs[i], ds / f"c{i}" / "seg.dcm")
    (ds / "notes").mkdir()
    again = tmp_path / "again.npz"
    rc = main(["build-model", str(ds), "-o", str(again), "--mask-name", "seg.dcm",
               "--labels", "1", "--vertices", "42", "--iso-spacing", "0.5", "--smooth", "0.5",
               "--exclude-cut"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "holds no seg.dcm (in it or its segmentations/), skipped: notes" in printed.err
    from shapeprior.model import load_model

    assert np.array_equal(load_model(again).shapes, load_model(out).shapes)


def test_a_dicom_seg_that_cannot_be_one_label_map_is_refused_in_one_line(tmp_path):
    """Overlapping segments (a label map holds one label per voxel), frames off one
    regular grid, a frame grid too large for memory, and a damaged file: each
    refused with its reason, nothing allocated for the large one."""
    import pydicom

    from shapeprior.io import ImageReadError

    folder, vol = _small_series(tmp_path)
    lab = (vol.array > 0).astype(np.uint8)
    write_dicom_seg(tmp_path / "two.dcm", [lab, lab], vol, folder, organ="Kidney",
                    side=["left", "right"])
    with pytest.raises(ImageReadError, match="segments overlap"):
        read_image(tmp_path / "two.dcm")
    write_dicom_seg(tmp_path / "one.dcm", lab, vol, folder, organ="Kidney")
    ds = pydicom.dcmread(tmp_path / "one.dcm")
    frames = ds.PerFrameFunctionalGroupsSequence
    assert len(frames) >= 3
    # the last frame moved off the slices' spacing along their normal: no regular grid
    off = ds.copy()
    pos = off.PerFrameFunctionalGroupsSequence[-1].PlanePositionSequence[0]
    pos.ImagePositionPatient = [float(v) + 1.3 * n for v, n in zip(
        pos.ImagePositionPatient, (0.0, 0.0, 1.0))]
    off.save_as(tmp_path / "off.dcm")
    with pytest.raises(ImageReadError, match="off.dcm: a DICOM-SEG whose frames do not lie "
                                             "on one regular grid"):
        read_image(tmp_path / "off.dcm")
    # frames 1 mm apart but one a million slices on: a regular grid with gaps that
    # would hold 10^6 slices; refused by its size before any voxel is decoded
    gap = ds.copy()
    first = [float(v) for v in gap.PerFrameFunctionalGroupsSequence[0]
             .PlanePositionSequence[0].ImagePositionPatient]
    step = np.array([float(v) for v in gap.PerFrameFunctionalGroupsSequence[1]
                     .PlanePositionSequence[0].ImagePositionPatient]) - first
    gap.PerFrameFunctionalGroupsSequence[-1].PlanePositionSequence[0].ImagePositionPatient = \
        list(first + step * 10 ** 9)
    gap.save_as(tmp_path / "gap.dcm")
    with pytest.raises(ImageReadError, match="gap.dcm: its header describes a 12x10x"):
        read_image(tmp_path / "gap.dcm")
    (tmp_path / "cut.dcm").write_bytes((tmp_path / "one.dcm").read_bytes()[:2000])
    with pytest.raises((ImageReadError, ValueError), match="cut.dcm"):
        read_image(tmp_path / "cut.dcm")


def test_segment_dicom_input_writes_an_rt_structure_set(phantom_model, tmp_path, capsys):
    """--output-type nifti,rtstruct on a DICOM series: rtstruct.dcm holds the
    label's outlines on the series' slices (filled, the label voxel for voxel),
    beside label.nii.gz; convert-rtstruct reads it back the same. A file input
    and --deidentify are refused as for the SEG; a bad type is a usage error."""
    from _safety import tree_state
    from shapeprior.io import list_structures, read_rtstruct
    from shapeprior.pipeline._run import output_names

    d, images, labels, model = phantom_model
    vol, series, out, state = _segmented_series(phantom_model, tmp_path, "nifti,rtstruct")
    assert sorted(f.name for f in out.iterdir()) == sorted(
        output_names("nifti,rtstruct") | {"manifest.json"})
    rep = json.loads((out / "report.json").read_text())
    assert rep["rtstruct"]["written"] and rep["rtstruct"]["file"] == "rtstruct.dcm"
    assert "dicom_seg" not in rep
    label = read_label_map(out / "label.nii.gz")
    got, info = read_rtstruct(out / "rtstruct.dcm", read_image(series)[0])
    assert label.array.any() and np.array_equal(got.array, label.array)
    assert info["frame_of_reference_checked"] is False       # (not given here)
    organ = json.loads((out / "report.json").read_text())["model"]["organ"]
    assert [s["name"] for s in list_structures(out / "rtstruct.dcm")] == [organ]
    assert main(["convert-rtstruct", str(out / "rtstruct.dcm"), "--image", str(series), "-o",
                 str(tmp_path / "back")]) == 0
    assert np.array_equal(read_label_map(tmp_path / "back" / "label.nii.gz").array,
                          label.array)
    assert tree_state(series) == state
    capsys.readouterr()
    assert main(["segment", str(images / "phantom_006.nii.gz"), "-o", str(tmp_path / "x"),
                 "--model", str(model), "--output-type", "rtstruct"]) == 1
    assert "--output-type rtstruct needs a DICOM series folder" in capsys.readouterr().err
    assert main(["segment", str(series), "-o", str(tmp_path / "y"), "--model", str(model),
                 "--output-type", "nifti,rtstruct", "--deidentify"]) == 1
    assert "--output-type rtstruct keeps the source's patient and study identifiers" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["segment", str(series), "-o", str(tmp_path / "z"), "--model", str(model),
              "--output-type", "nifti,rt"])
    assert e.value.code == 2 and "'rt' is not one of nifti, dicom-seg, rtstruct, both" in \
        capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "xyz")


@pytest.mark.parametrize("per_frame", [False, True], ids=["shared", "per-frame"])
def test_an_enhanced_multiframe_input_gets_its_seg_and_structure_set(phantom_model, tmp_path,
                                                                     per_frame):
    """One enhanced MR file (a multi-frame object, its frames stored out of
    order; its orientation and pixel spacing shared, or repeated in each frame as
    a Philips scanner writes them, where highdicom does not look) segmented with
    --output-type nifti,dicom-seg,rtstruct: the SEG and the structure set refer
    to that file's frames (by frame number) and read back as the label voxel for
    voxel. Before, both were refused: "needs a DICOM series folder"."""
    import pydicom

    from _phantoms import write_enhanced_mr
    from shapeprior.io import read_rtstruct

    d, images, labels, model = phantom_model
    vol, _ = read_image(images / "phantom_006.nii.gz")
    perm = np.random.default_rng(5).permutation(vol.array.shape[0])
    enhanced = write_enhanced_mr(vol, tmp_path / "enhanced.dcm", perm, per_frame)
    before = enhanced.read_bytes()
    out = tmp_path / "out"
    assert main(["segment", str(enhanced), "-o", str(out), "--model", str(model),
                 "--output-type", "nifti,dicom-seg,rtstruct"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["dicom_seg"]["written"] and rep["rtstruct"]["written"]
    assert rep["dicom_seg"]["source_frames"] == vol.array.shape[0]
    label = read_label_map(out / "label.nii.gz")
    assert label.array.any()
    seg = read_label_map(out / "seg.dcm").placed_on(label)
    assert seg is not None and np.array_equal(seg > 0, label.array > 0)
    got, _ = read_rtstruct(out / "rtstruct.dcm", read_image(enhanced)[0])
    assert np.array_equal(got.array, label.array)
    rs = pydicom.dcmread(out / "rtstruct.dcm")
    refs = [c.ContourImageSequence[0] for c in rs.ROIContourSequence[0].ContourSequence]
    assert {str(r.ReferencedSOPInstanceUID) for r in refs} == {"1.2.826.0.1.3680043.2.1125.5.1"}
    z = np.flatnonzero(label.array.any((1, 2)))
    want = {int(np.flatnonzero(perm == k)[0]) + 1 for k in z}     # the stored frames
    assert {int(r.ReferencedFrameNumber) for r in refs} == want
    sg = pydicom.dcmread(out / "seg.dcm")
    frames = {int(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
              for f in sg.PerFrameFunctionalGroupsSequence}
    assert frames == want
    assert enhanced.read_bytes() == before


@pytest.mark.parametrize("charset,name,written,note", [
    ("ISO-IR 100", "Müller^Jörg", "ISO_IR 100", "a misspelt DICOM term"),
    ("ISO_IR 999", "Albus^Dumbledore", "ISO_IR 192", "no term DICOM defines"),
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎", ["ISO 2022 IR 6", "ISO 2022 IR 87"],
     None),
    (["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동", "ISO_IR 192",
     "one highdicom writes no SEG in"),
    ("", "Albus^Dumbledore", None, None),
    ("ISO_IR 192", b"M\xfcller^J\xf6rg", "ISO_IR 192",
     "holds bytes its Specific Character Set does not decode"),
], ids=["misspelt", "unknown", "japanese", "korean", "empty", "undecodable"])
def test_dicom_outputs_of_a_series_in_any_character_set(phantom_model, tmp_path, charset, name,
                                                         written, note):
    """A series whose Specific Character Set is misspelt ('ISO-IR 100', which
    pydicom corrects), unknown, Korean (a set highdicom does not write), an empty
    first value before a code extension (Japanese), or empty: the SEG and the
    structure set are written, with the patient's name as pydicom read it and a
    set that says so, and a note where the set changed (or, in a set that
    cannot decode the name's bytes, where the name holds replacement
    characters). highdicom refused the first five, and the run's outputs were
    lost after the fit; the structure set declared several terms as their
    Python list ("['', 'ISO 2022 IR 87']")."""
    import warnings

    import pydicom
    from _phantoms import write_dicom_series

    _, images, _, model = phantom_model
    vol, _ = read_image(images / "phantom_006.nii.gz")
    series = write_dicom_series(vol, tmp_path / "dicom")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # pydicom on the misspelt and unknown sets
        for f in sorted(series.iterdir()):
            ds = pydicom.dcmread(f)
            ds.SpecificCharacterSet = charset
            ds.PatientName = name
            # a name no reader has looked at yet: decoded only once the outputs copy it
            ds.ReferringPhysicianName = name
            ds.save_as(f)
    out = tmp_path / "out"
    assert main(["segment", str(series), "-o", str(out), "--model", str(model),
                 "--output-type", "nifti,dicom-seg,rtstruct"]) == 0
    rep = json.loads((out / "report.json").read_text())
    for key, file, what, unset in (("dicom_seg", "seg.dcm", "the SEG", None),
                                   ("rtstruct", "rtstruct.dcm", "the structure set",
                                    "ISO_IR 100")):
        ds = pydicom.dcmread(out / file)
        want = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        assert str(ds.PatientName) == want and str(ds.ReferringPhysicianName) == want, file
        got = ds.get("SpecificCharacterSet", unset)
        assert (list(got) if isinstance(got, pydicom.multival.MultiValue) else got) == \
            (written or unset), file
        said = [n for n in rep[key]["notes"] if "Specific Character Set" in n]
        # (an undecodable name: one note for each of the two names)
        assert len(said) == (0 if not note else 2 if isinstance(name, bytes) else 1), said
        assert all(note in n and what in n for n in said), said


def test_a_series_in_a_misspelt_character_set_prints_nothing_of_pydicom(phantom_model,
                                                                         tmp_path):
    """pydicom warns on the terminal about a Specific Character Set it corrects
    or does not know, wherever a text element is first read: the command line
    prints its own lines only."""
    import pydicom
    from _phantoms import write_dicom_series
    from _safety import _subprocess

    _, images, _, model = phantom_model
    vol, _ = read_image(images / "phantom_006.nii.gz")
    series = write_dicom_series(vol, tmp_path / "dicom")
    for f in sorted(series.iterdir()):
        ds = pydicom.dcmread(f)
        ds.SpecificCharacterSet = "ISO_IR 999"
        ds.save_as(f)
    rc, _, err = _subprocess(["segment", str(series), "-o", str(tmp_path / "out"), "--model",
                              str(model), "--output-type", "dicom-seg"])
    assert rc == 0 and "pydicom" not in err and "Warning" not in err, err


def _with_a_shifted_sform(src, dest, sform_code):
    """``src`` written as ``dest`` with its affine as the qform (code 1) and, as
    the sform (``sform_code``), that affine moved by (5, -3, 2) mm (6.16 mm):
    ``(qform, sform)``, RAS."""
    import nibabel as nib

    img = nib.load(src)
    out = nib.Nifti1Image(np.asarray(img.dataobj), None)
    q = img.affine.copy()
    s = q.copy()
    s[:3, 3] += [5.0, -3.0, 2.0]
    out.header.set_qform(q, code=1)
    out.header.set_sform(s, code=sform_code)
    nib.save(out, dest)
    return q, s


@pytest.mark.parametrize("sform_code", [1, 2])
def test_a_label_lies_on_its_image_in_every_reader_when_qform_and_sform_differ(
        phantom_model, tmp_path, sform_code):
    """An image whose qform places it 6 mm from where its sform does (a
    registration written into the sform, sform_code 2): nibabel and FSL use
    the sform, ITK (3D Slicer, ITK-SNAP) the qform. The label was written
    with qform = sform, so in ITK it lay 6 mm off its own image. It now holds
    both of the image's transforms, so each reader puts it on the image; the
    report says where the readers part (not for sform_code 1, which ITK uses)."""
    import nibabel as nib
    import SimpleITK as sitk

    _, images, _, model = phantom_model
    scan = tmp_path / "scan.nii.gz"
    q, s = _with_a_shifted_sform(images / "phantom_006.nii.gz", scan, sform_code)
    out = tmp_path / "out"
    assert main(["segment", str(scan), "-o", str(out), "--model", str(model)]) == 0
    lab = nib.load(out / "label.nii.gz").header
    assert np.allclose(lab.get_qform(), q, atol=1e-5) and int(lab["qform_code"]) == 1
    assert np.allclose(lab.get_sform(), s, atol=1e-5) and int(lab["sform_code"]) == sform_code
    a, b = sitk.ReadImage(str(scan)), sitk.ReadImage(str(out / "label.nii.gz"))
    assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    assert np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    said = [w for w in json.loads((out / "report.json").read_text())["warnings"]
            if "qform places the image up to 6.16 mm" in w]
    assert len(said) == (1 if sform_code != 1 else 0)


def test_a_refined_label_lies_on_its_mask_in_every_reader_when_qform_and_sform_differ(
        phantom_model, tmp_path):
    """The refinement of a mask whose qform places it 6 mm from where its sform
    does (sform_code 2) keeps both of the mask's transforms and codes, as a
    segmentation keeps its image's: the refined label was written with qform =
    sform and code 1, so ITK put it 6 mm off the mask and a reader lost the
    sform's code."""
    import nibabel as nib
    import SimpleITK as sitk

    _, _, labels, model = phantom_model
    mask = tmp_path / "mask.nii.gz"
    q, s = _with_a_shifted_sform(labels / "phantom_006.nii.gz", mask, 2)
    out = tmp_path / "out"
    assert main(["refine", str(mask), "-o", str(out), "--model", str(model)]) in (0, 3)
    lab = nib.load(out / "label.nii.gz").header
    assert np.allclose(lab.get_qform(), q, atol=1e-5) and int(lab["qform_code"]) == 1
    assert np.allclose(lab.get_sform(), s, atol=1e-5) and int(lab["sform_code"]) == 2
    a, b = sitk.ReadImage(str(mask)), sitk.ReadImage(str(out / "label.nii.gz"))
    assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    rep = json.loads((out / "report.json").read_text())
    assert any("qform places the mask up to 6.16 mm" in w for w in rep["warnings"])


def test_refine_writes_dicom_outputs_on_the_series_of_its_image(phantom_model, tmp_path):
    """refine --output-type: the refined label as a DICOM-SEG and a structure set on
    the slices of --image (a DICOM series), referring to it, the description saying
    it was refined. A SEG mask of that series, which stores only the frames its
    organ covers, is refined on the series' whole grid (before: on the SEG's frames
    and one slice each side, so a refined organ reaching further was cut there)."""
    import contextlib
    import io

    import pydicom
    from _safety import tree_state

    from shapeprior.io import read_rtstruct, write_label
    from shapeprior.segmentation import dice

    vol, series, out, state = _segmented_series(phantom_model, tmp_path, "dicom-seg")
    model = phantom_model[3]
    seg_grid = read_label_map(out / "seg.dcm")
    assert seg_grid.array.shape[0] < vol.array.shape[0]         # the organ's frames only
    mask_state = tree_state(out)
    ref = tmp_path / "refined"
    assert main(["refine", str(out / "seg.dcm"), "-o", str(ref), "--model", str(model),
                 "--image", str(series), "--output-type", "nifti,dicom-seg,rtstruct"]) == 0
    assert tree_state(series) == state and tree_state(out) == mask_state
    rep = json.loads((ref / "report.json").read_text())
    assert rep["status"] == "ok", rep["reasons"]
    label = read_label_map(ref / "label.nii.gz")
    assert label.same_grid(vol)                                 # the series' grid
    assert rep["input"]["shape_zyx"] == list(vol.array.shape)
    lookup = _nibabel_lookup(ref / "label.nii.gz")
    ds, total = _check_seg_against(ref / "seg.dcm", series, lookup)
    assert total == np.count_nonzero(label.array) > 0
    assert ds.SeriesDescription == "shapeprior refined segmentation"
    assert rep["dicom_seg"]["written"] and rep["dicom_seg"]["source_frames"] == \
        vol.array.shape[0]
    assert rep["rtstruct"]["series_description"] == \
        pydicom.dcmread(ref / "rtstruct.dcm").SeriesDescription
    drawn, _ = read_rtstruct(ref / "rtstruct.dcm", vol)
    assert dice(drawn.array > 0, label.array > 0) > 0.9
    # a folder holding another series too: refused, listing them, until --series picks
    # one (refine had no --series, and the error told the user to give it)
    from _phantoms import write_dicom_series

    two = tmp_path / "scans" / "case1"
    shutil.copytree(series, two)
    decoy = write_dicom_series(Volume(vol.array[:5], vol.spacing, vol.origin, vol.direction),
                               tmp_path / "decoy", series_uid="1.2.826.0.1.3680043.2.1125.7")
    for f in decoy.iterdir():
        shutil.copy(f, two / f"decoy_{f.name}")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["refine", str(ref / "label.nii.gz"), "-o", str(tmp_path / "t"),
                     "--model", str(model), "--image", str(two)]) == 1
    assert "choose one with --series INDEX or KEY" in err.getvalue()
    index, key = re.search(rf"#(\d+) \(key (\w+), {vol.array.shape[0]} files",
                           err.getvalue()).groups()
    source_uid = ds.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert main(["refine", str(ref / "label.nii.gz"), "-o", str(tmp_path / "t"), "--model",
                 str(model), "--image", str(two), "--series", key, "--output-type",
                 "dicom-seg"]) == 0
    assert pydicom.dcmread(tmp_path / "t" / "seg.dcm").ReferencedSeriesSequence[0] \
        .SeriesInstanceUID == source_uid
    # ... and a SEG names the series it was made on: that one is read, unasked
    assert main(["refine", str(out / "seg.dcm"), "-o", str(tmp_path / "t2"), "--model",
                 str(model), "--image", str(two), "--output-type", "dicom-seg"]) == 0
    assert json.loads((tmp_path / "t2" / "report.json").read_text())["input"]["series"] == key
    from shapeprior.io import series_named_by           # a structure set names its too

    assert [series_named_by(m, two) for m in (ref / "rtstruct.dcm", out / "seg.dcm",
                                              ref / "label.nii.gz")] == [key, key, None]
    assert pydicom.dcmread(tmp_path / "t2" / "seg.dcm").ReferencedSeriesSequence[0] \
        .SeriesInstanceUID == source_uid
    # a folder of masks alike, each with its series (the same --series); a rerun keeps
    # the case (its SEG is one of the outputs a complete case holds)
    (tmp_path / "masks").mkdir()
    shutil.copy(ref / "label.nii.gz", tmp_path / "masks" / "case1.nii.gz")
    batch = tmp_path / "batch"
    for rerun in (False, True):
        assert main(["refine", str(tmp_path / "masks"), "-o", str(batch), "--model",
                     str(model), "--image", str(tmp_path / "scans"), "--series", index,
                     "--output-type", "dicom-seg,nifti"]) == 0
        row = json.loads((batch / "summary.json").read_text())["cases"][0]
        assert row["status"] == ("skipped" if rerun else "ok"), row
    assert sorted(f.name for f in (batch / "case1").iterdir()) == [
        "label.nii.gz", "manifest.json", "mesh.vtk", "qc.png", "report.json", "seg.dcm",
        "statistics.json"]
    _, total = _check_seg_against(batch / "case1" / "seg.dcm", series,
                                  _nibabel_lookup(batch / "case1" / "label.nii.gz"))
    assert total == np.count_nonzero(read_label_map(batch / "case1" / "label.nii.gz").array)
    # case folders holding a SEG and its series; a rerun that only adds a reference
    # compares the kept refinement, the SEG's organ placed on the series' grid (it failed:
    # "operands could not be broadcast together")
    case = tmp_path / "cases" / "caseA"
    shutil.copytree(series, case / "series")
    shutil.copy(out / "seg.dcm", case / "seg.dcm")
    shutil.copy(ref / "label.nii.gz", case / "ref.nii.gz")
    kept = tmp_path / "kept"
    for more in ([], ["--reference-name", "ref.nii.gz"]):
        assert main(["refine", str(tmp_path / "cases"), "--mask-name", "seg.dcm",
                     "--image-name", "series", "-o", str(kept), "--model", str(model),
                     *more]) == 0
    row = json.loads((kept / "summary.json").read_text())["cases"][0]
    assert row["status"] == "skipped" and "compared again" in row["reason"], row
    assert row["dice"] > 0.95 and row["input_dice"] == 1.0, row
    # a scan that cuts the organ (its top slices gone): the refined voxels beyond it are
    # not in the SEG, and the report counts them
    organ = label.array > 0
    top = int(np.flatnonzero(organ.any((1, 2))).max())
    short = write_dicom_series(Volume(vol.array[:top - 1], vol.spacing, vol.origin,
                                      vol.direction), tmp_path / "short",
                               series_uid="1.2.826.0.1.3680043.2.1125.8")
    cut = tmp_path / "cut"
    assert main(["refine", str(ref / "label.nii.gz"), "-o", str(cut), "--model", str(model),
                 "--image", str(short), "--output-type", "dicom-seg,nifti"]) == 0
    rep = json.loads((cut / "report.json").read_text())
    refined = read_label_map(cut / "label.nii.gz").array > 0
    beyond = int(np.count_nonzero(refined[top - 1:]))
    assert rep["status"] == "suspect" and beyond > 0, rep["reasons"]
    assert f"{beyond} voxels of the refined label lie outside the scan and are not in " \
        "seg.dcm" in rep["warnings"]
    assert int(np.count_nonzero(read_label_map(cut / "seg.dcm").array)) == \
        np.count_nonzero(refined) - beyond
    # refused before anything is fitted or written: no --image, a mask off the scan's
    # lattice, a scan that is no DICOM series, --deidentify
    half = Volume(label.array[:, ::2, ::2], label.spacing * [2, 2, 1], label.origin,
                  label.direction)
    write_label(half, half.array, tmp_path / "coarse.nii.gz")
    for args, said in (
            ([str(out / "seg.dcm")], "--output-type dicom-seg writes the refined label on "
                                     "the slices of --image: give the DICOM series"),
            ([str(tmp_path / "coarse.nii.gz"), "--image", str(series)],
             "--output-type dicom-seg writes the refined label on the slices of --image, "
             "and the mask is not on its grid (size [32, 28, 40] vs [64, 56, 40]; mask vs "
             "image): resample the mask onto the scan"),
            ([str(ref / "label.nii.gz"), "--image", str(ref / "label.nii.gz")],
             "--output-type dicom-seg needs a DICOM series folder (or an enhanced "
             "multi-frame DICOM file) as --image; label.nii.gz is not one"),
            ([str(out / "seg.dcm"), "--image", str(series), "--deidentify"],
             "not with --deidentify"),
            ([str(out / "seg.dcm"), "--image", str(ref / "label.nii.gz"), "--series", "0"],
             "--series picks a series in a DICOM folder; --image is a file")):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(["refine", *args, "-o", str(tmp_path / "x"), "--model", str(model),
                         "--output-type", "dicom-seg"]) == 1
        assert said in err.getvalue() and err.getvalue().count("\n") == 1, err.getvalue()
        assert not (tmp_path / "x").exists()
