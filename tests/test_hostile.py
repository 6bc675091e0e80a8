"""Hostile input and output paths: nothing lost, one clear line, honest resume.

Each test hashes the whole input tree before and after, and checks the exit
code, that stderr holds exactly one line, and that nothing was written
(no output, no staging folder, no temporary file, no new parent folder).
"""

import hashlib
import json
import os
import shutil
import signal
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from _phantoms import write_dicom_series, written_text
from _safety import _subprocess, leftovers, tree_state
from shapeprior._outputs import OutputExistsError
from shapeprior.cli import Terminated, main
from shapeprior.io import read_label_map, read_volume

def one_line_error(capsys, rc, *words):
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    for w in words:
        assert w in err, err
    return err


@pytest.fixture
def case(phantom_model, tmp_path):
    """A private copy of one phantom image and a folder around it."""
    _, images, labels, model = phantom_model
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(images / "phantom_000.nii.gz", d / "scan.nii.gz")
    (d / "notes.txt").write_text("a file of the user's, beside the scan")
    return d / "scan.nii.gz", model


# -- the output policy: never an input, never a foreign file ------------------------------

@pytest.mark.parametrize("where", ["input-file", "input-parent", "input-dicom-folder",
                                   "inside-input-folder", "symlink-to-input-parent"])
@pytest.mark.parametrize("force", [False, True])
def test_output_may_not_overlap_an_input(case, tmp_path, capsys, where, force):
    scan, model = case
    src = scan
    if where == "input-dicom-folder":
        src = write_dicom_series(read_volume(scan), tmp_path / "dicom")
    out = {"input-file": scan, "input-parent": scan.parent, "input-dicom-folder": src,
           "inside-input-folder": src / "out" if src.is_dir() else scan.parent / "x" / "y",
           "symlink-to-input-parent": tmp_path / "link"}[where]
    if where == "symlink-to-input-parent":
        out.symlink_to(scan.parent)
    if where == "inside-input-folder" and not src.is_dir():
        out = scan.parent                       # a file input: its folder is "contains"
    before = tree_state(tmp_path)
    rc = main(["segment", str(src), "-o", str(out), "--model", str(model)]
              + (["--force"] if force else []))
    one_line_error(capsys, rc, "input")
    assert tree_state(tmp_path) == before
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("force", [False, True])
def test_force_never_replaces_a_foreign_folder(case, tmp_path, capsys, force):
    scan, model = case
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.docx").write_bytes(b"years of work")
    before = tree_state(tmp_path)
    rc = main(["segment", str(scan), "-o", str(foreign), "--model", str(model)]
              + (["--force"] if force else []))
    one_line_error(capsys, rc, "never replaces")
    assert tree_state(tmp_path) == before and not leftovers(tmp_path)


def test_force_replaces_a_previous_output_only(case, tmp_path, capsys):
    scan, model = case
    out = tmp_path / "out"
    assert main(["segment", str(scan), "-o", str(out), "--model", str(model)]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["producer"] == "shapeprior" and "label.nii.gz" in man["outputs"]
    inputs = tree_state(scan.parent, model)
    assert main(["segment", str(scan), "-o", str(out), "--model", str(model), "--force"]) == 0
    assert tree_state(scan.parent, model) == inputs
    # a user's file dropped into our output makes it foreign: --force refuses
    (out / "my_notes.txt").write_text("keep me")
    capsys.readouterr()
    rc = main(["segment", str(scan), "-o", str(out), "--model", str(model), "--force"])
    one_line_error(capsys, rc, "my_notes.txt", "never replaces")
    assert (out / "my_notes.txt").read_text() == "keep me"
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("target", ["a-label-map", "inside-labels", "foreign-file",
                                    "images-folder"])
def test_build_model_output_policy(phantom_model, tmp_path, capsys, target):
    _, images, labels, _ = phantom_model
    lab = tmp_path / "labels"
    shutil.copytree(labels, lab)
    img = tmp_path / "images"
    shutil.copytree(images, img)
    (tmp_path / "foreign.npz").write_bytes(b"PK\x03\x04 not ours")
    out = {"a-label-map": lab / "phantom_000.nii.gz", "inside-labels": lab / "model.npz",
           "foreign-file": tmp_path / "foreign.npz", "images-folder": img}[target]
    before = tree_state(tmp_path)
    rc = main(["build-model", str(lab), "-o", str(out), "--images", str(img), "--force",
               "--vertices", "162", "--quiet"])
    one_line_error(capsys, rc)
    assert tree_state(tmp_path) == before and not leftovers(tmp_path)


# -- a detached header's data files are inputs too -------------------------------------

def _detached_header(path, data, fmt):
    """A detached 8x8x8 uint8 header at ``path`` whose voxels are the last 512
    bytes of the file ``data`` (any path, named relative to the header)."""
    rel = os.path.relpath(data, path.parent)
    if fmt == "mhd":
        path.write_text("ObjectType = Image\nNDims = 3\nBinaryData = True\n"
                        "BinaryDataByteOrderMSB = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\n"
                        "Offset = 0 0 0\nElementSpacing = 1 1 1\nDimSize = 8 8 8\n"
                        f"ElementType = MET_UCHAR\nHeaderSize = -1\nElementDataFile = {rel}\n")
    else:
        path.write_text("NRRD0004\ntype: uint8\ndimension: 3\nspace: left-posterior-superior\n"
                        "sizes: 8 8 8\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n"
                        "space origin: (0,0,0)\nencoding: raw\nbyte skip: -1\n"
                        f"data file: {rel}\n\n")
    return path


@pytest.mark.parametrize("fmt", ["mhd", "nhdr"])
@pytest.mark.parametrize("how", ["segment", "segment-batch", "refine"])
def test_force_never_replaces_the_data_file_of_a_detached_header(case, phantom_model, tmp_path,
                                                                 capsys, fmt, how):
    """A detached MetaImage/NRRD header names its voxel data anywhere: a header
    whose data is a file of an earlier output of ours read as input, and that
    output replaced with --force, lost the data (probe of 2026-12-06). Its data
    files are inputs: refused in one line, nothing changed."""
    scan, model = case
    out = tmp_path / "out"
    if how == "refine":
        mask = phantom_model[2] / "phantom_000.nii.gz"
        write = ["refine", str(mask), "--model", str(model)]
    else:
        write = ["segment", str(scan), "--model", str(model), "--no-qc"]
    first = out / "evil" if how == "segment-batch" else out
    assert main([*write[:2], "-o", str(first), *write[2:]]) in (0, 2, 3)
    data = first / "report.json"
    assert data.is_file()
    cases = tmp_path / "cases"
    cases.mkdir()
    header = _detached_header(cases / f"evil.{fmt}", data, fmt)
    arg = cases if how == "segment-batch" else header
    capsys.readouterr()
    before = tree_state(tmp_path)
    rc = main([write[0], str(arg), "-o", str(out if how != "segment" else first),
               *write[2:], "--force"])
    one_line_error(capsys, rc, "report.json", f"the data of {header}")
    assert tree_state(tmp_path) == before and not leftovers(tmp_path)


@pytest.mark.parametrize("whose", ["label-map", "image"])
@pytest.mark.parametrize("command", ["build-model", "update-model"])
def test_force_never_replaces_a_model_that_is_a_label_maps_data(phantom_model, tmp_path, capsys,
                                                                command, whose):
    """The model a build or an update would replace is the data of a detached
    label map among its inputs, or of the training image found for one
    (``--images``): refused in one line before anything is read."""
    _, images, labels, model = phantom_model
    lab, img = tmp_path / "labels", tmp_path / "images"
    shutil.copytree(labels, lab)
    shutil.copytree(images, img)
    out = tmp_path / "out.npz"
    shutil.copy(model, out)                                  # a model file of ours
    if whose == "image":
        (lab / "evil.raw").write_bytes(bytes(512))
        _detached_header(lab / "evil.mhd", lab / "evil.raw", "mhd")
    _detached_header((img if whose == "image" else lab) / "evil.mhd", out, "mhd")
    before = tree_state(tmp_path)
    args = (["build-model", str(lab), "--vertices", "162"] if command == "build-model"
            else ["update-model", str(model), str(lab)])
    rc = main([*args, "--images", str(img), "-o", str(out), "--force", "--quiet"])
    one_line_error(capsys, rc, "is the input", f"the data of {(img if whose == 'image' else lab)}")
    assert tree_state(tmp_path) == before and not leftovers(tmp_path)


@pytest.mark.parametrize("fmt", ["mhd", "nhdr"])
@pytest.mark.parametrize("data", ["fifo", "device", "missing", "folder"])
def test_a_detached_header_whose_data_is_no_regular_file_is_one_line(case, tmp_path, fmt, data):
    """A detached header naming a named pipe as its data made the run wait for
    ever (ITK opened it); a device (/dev/urandom) is no data a run can hash or
    repeat. Each is refused in one line, in a subprocess with a time limit."""
    scan, model = case
    target = {"fifo": tmp_path / "pipe.raw", "device": Path("/dev/zero"),
              "missing": tmp_path / "gone.raw", "folder": tmp_path / "sub"}[data]
    if data == "fifo":
        os.mkfifo(target)
    elif data == "folder":
        target.mkdir()
    header = _detached_header(tmp_path / f"x.{fmt}", target, fmt)
    before = tree_state(tmp_path)
    rc, _, err = _subprocess(["segment", str(header), "-o", str(tmp_path / "o"), "--model",
                              str(model)], timeout=120)
    assert rc == 1 and err.count("\n") == 1, err
    assert f"x.{fmt}: its data file {target.name} " in err, err
    assert tree_state(tmp_path) == before and not leftovers(tmp_path)


@pytest.mark.parametrize("batch", [False, True])
def test_deidentify_withholds_the_name_of_a_headers_data_file(case, tmp_path, capsys, batch):
    """A detached header's data file may be named after the patient: with
    --deidentify the error of a case whose data file is missing withheld the
    header's name but printed the rest of the data file's (Doe_John_1957.raw
    became case-..._1957.raw), in the summary and on the terminal."""
    scan, model = case
    cases = tmp_path / "cases"
    cases.mkdir()
    header = _detached_header(cases / "Doe_John.mhd", cases / "Doe_John_1957.raw", "mhd")
    out = tmp_path / "out"
    rc = main(["segment", str(cases if batch else header), "-o", str(out), "--model",
               str(model), "--deidentify"])
    text = capsys.readouterr()
    assert rc == 1 if not batch else rc in (1, 3), text.err
    shown = text.out + text.err + "".join(
        f.read_text() for f in out.rglob("*") if f.suffix in (".json", ".csv"))
    assert "its data file (withheld) is missing" in shown, shown
    assert "Doe" not in shown and "John" not in shown and "1957" not in shown, shown


def test_detached_data_files_every_form(tmp_path):
    """The data files of each form a MetaImage or NRRD header names them in."""
    from shapeprior.io import detached_data_files, image_files

    d = tmp_path
    for n in ("a.raw", "s001.raw", "s003.raw", "s005.raw", "x.raw", "y.raw"):
        (d / n).write_bytes(b"0")

    def names(text, name):
        (d / name).write_text(text)
        return [p.name for p in detached_data_files(d / name)]

    head = "ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\n"
    assert names(head + "ElementDataFile = a.raw\n", "m.mhd") == ["a.raw"]
    assert names(head + "ElementDataFile = LOCAL\n", "m.mha") == []
    assert names(head + "ElementDataFile = LIST 2D\nx.raw\n\ny.raw\n", "m.mhd") == \
        ["x.raw", "y.raw"]
    assert names(head + "ElementDataFile = s%03d.raw 1 5 2\n", "m.mhd") == \
        ["s001.raw", "s003.raw", "s005.raw"]
    assert names(head + f"ElementDataFile = {d / 'a.raw'}\n", "m.mhd") == ["a.raw"]
    nrrd = "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2 2\n"
    assert names(nrrd + "data file: a.raw\n\n", "n.nhdr") == ["a.raw"]
    assert names(nrrd + "datafile: s%03d.raw 5 1 -2\n\n", "n.nhdr") == \
        ["s005.raw", "s003.raw", "s001.raw"]
    assert names(nrrd + "data file: LIST\nx.raw\ny.raw\n", "n.nhdr") == ["x.raw", "y.raw"]
    assert names(nrrd + "encoding: raw\n\nbinary data: a.raw\n", "n.nrrd") == []
    assert names(nrrd + "data file:=a.raw\n\n", "n.nhdr") == []       # a key/value pair
    assert names(head + "ElementDataFile = a.raw\n", "m.nii") == []    # not a header format
    (d / "m.mhd").write_text(head + "ElementDataFile = a.raw\n")
    assert [p.name for p in image_files(d / "m.mhd")] == ["m.mhd", "a.raw"]
    assert [p.name for p in image_files(d / "gone.mhd")] == []


def test_the_manifest_hashes_a_detached_headers_data(case, tmp_path):
    """Changing the voxels behind a detached header changes the run's input
    hashes (the header alone did not say what was read)."""
    import SimpleITK as sitk

    scan, model = case
    hdr = tmp_path / "scan.mhd"
    sitk.WriteImage(sitk.ReadImage(str(scan)), str(hdr))
    assert main(["segment", str(hdr), "-o", str(tmp_path / "out"), "--model", str(model),
                 "--no-qc"]) in (0, 2)
    inputs = json.loads((tmp_path / "out" / "manifest.json").read_text())["inputs"]
    raw = tmp_path / "scan.raw"
    assert {k for k in inputs if k.startswith("input/")} == {"input/scan.mhd", "input/scan.raw"}
    assert inputs["input/scan.raw"]["sha256"] == hashlib.sha256(raw.read_bytes()).hexdigest()
    # a batch rerun keeps the case while its voxels are the same, and redoes it when
    # only the data file changed (the header alone had vouched for it)
    cases = tmp_path / "cases"
    cases.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(scan)), str(cases / "c.mhd"))
    batch = ["segment", str(cases), "-o", str(tmp_path / "b"), "--model", str(model), "--no-qc"]

    def status():
        assert main(batch) in (0, 2)
        return json.loads((tmp_path / "b" / "summary.json").read_text())["cases"][0]["status"]

    status()
    assert status() == "skipped"
    data = bytearray((cases / "c.raw").read_bytes())
    data[:64] = bytes(64)
    (cases / "c.raw").write_bytes(bytes(data))
    assert status() != "skipped"


# -- case names in batches -------------------------------------------------------------

def test_batch_names_are_safe_unique_and_complete(case, tmp_path, capsys):
    import SimpleITK as sitk

    scan, model = case
    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copy(scan, batch / ".nii.gz")                 # hidden (empty stem): not a case
    shutil.copy(scan, batch / "x.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(scan)), str(batch / "x.mha"))   # same stem
    shutil.copy(scan, batch / "summary.json.nii.gz")     # would shadow the summary
    (batch / "empty_dir").mkdir()                        # no series: a failed row
    (batch / "README.txt").write_text("not an image")
    out = tmp_path / "out"
    out.mkdir()
    (out / "unrelated").mkdir()
    (out / "unrelated" / "keep.txt").write_text("keep")
    before = tree_state(batch, out / "unrelated")
    rc = main(["segment", str(batch), "-o", str(out), "--model", str(model), "--force",
               "--placement", "prior"])
    assert rc == 1                                        # the empty folder failed
    rows = json.loads((out / "summary.json").read_text())["cases"]
    names = [r["case"] for r in rows]
    assert len(rows) == 4 and len(set(names)) == 4
    assert sorted(n for n, r in zip(names, rows) if r["status"] == "ok") == \
        sorted(["x_nii_gz", "x_mha", "summary.json_case"])
    assert [r for r in rows if r["case"] == "empty_dir"][0]["status"] == "failed"
    for n in names:
        if n != "empty_dir":
            assert (out / n / "label.nii.gz").is_file()
    assert tree_state(batch, out / "unrelated") == before
    assert not leftovers(tmp_path)


def test_non_utf8_file_names_single_and_batch(case, tmp_path):
    scan, model = case
    batch = tmp_path / "batch"
    batch.mkdir()
    bad = os.fsdecode(b"\xff\xfe-scan.nii.gz")
    shutil.copy(scan, batch / bad)
    (batch / os.fsdecode(b"\xfa.nii.gz")).write_bytes(b"\x1f\x8b broken")
    before = tree_state(batch)
    rc, out, err = _subprocess(["segment", str(batch / bad), "-o", str(tmp_path / "one"),
                                "--model", str(model),
                 "--placement", "prior"])
    assert rc == 0, err
    assert read_label_map(tmp_path / "one" / "label.nii.gz").array.sum() > 0
    rc, out, err = _subprocess(["segment", str(batch), "-o", str(tmp_path / "many"),
                                "--model", str(model),
                 "--placement", "prior"])
    assert rc == 1, err                                   # the broken one, as a row
    rows = json.loads((tmp_path / "many" / "summary.json").read_text())["cases"]
    assert sorted(r["status"] for r in rows) == ["failed", "ok"]
    assert all(r["case"].isascii() for r in rows)
    assert tree_state(batch) == before and not leftovers(tmp_path)


# -- readers that validate before allocating ----------------------------------------------

def _nifti(path, arr, dtype=np.float32, **hdr):
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(arr, dtype=dtype), np.diag([1.0, 1.0, 1.5, 1.0]))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    for k, v in hdr.items():
        img.header[k] = v
    nib.save(img, str(path))
    return path


def _patch(path, offset, fmt, value):
    b = bytearray(Path(path).read_bytes())
    struct.pack_into(fmt, b, offset, *np.atleast_1d(value))
    Path(path).write_bytes(bytes(b))
    return path


def _hostile_images(d):
    rng = np.random.default_rng(0)
    arr = rng.normal(100, 10, (24, 24, 20))
    nan = arr.copy()
    nan[3, 4, 5] = np.nan
    _nifti(d / "nan.nii", nan)
    inf = arr.copy()
    inf[1, 1, 1] = np.inf
    _nifti(d / "inf.nii.gz", inf)
    # datatype int16 but bitpix 8: a reader trusting bitpix misses the truncation
    _patch(_nifti(d / "bitpix.nii", arr, np.int16), 72, "<h", 8)
    # 103 bytes of gzip claiming 2048 x 2048 x 1024 voxels
    import gzip

    hdr = bytearray(Path(_nifti(d / "small.nii", arr[:2, :2, :2], np.uint8)).read_bytes()[:352])
    struct.pack_into("<8h", hdr, 40, 3, 2048, 2048, 1024, 1, 1, 1, 1)
    (d / "bomb.nii.gz").write_bytes(gzip.compress(bytes(hdr)))
    # header claiming more than memory holds: refused before the data are even looked at
    big = bytearray(hdr)
    struct.pack_into("<8h", big, 40, 3, 30000, 30000, 30000, 1, 1, 1, 1)
    (d / "huge.nii").write_bytes(bytes(big))
    for name, val in (("zero", 0.0), ("nan", np.nan), ("neg", -1.0)):
        p = _nifti(d / f"spacing_{name}.nii", arr)
        _patch(p, 254, "<h", 0)                  # sform_code 0: the qform (pixdim) rules
        _patch(p, 80, "<f", val)                 # pixdim[1]
    p = _nifti(d / "sform_degenerate.nii", arr)
    _patch(p, 280, "<4f", [0.0, 0.0, 0.0, 0.0])  # srow_x = 0: a flat axis
    p = _nifti(d / "sheared.nii", arr)
    _patch(p, 280, "<4f", [1.0, 0.5, 0.0, 0.0])  # srow_x with shear
    p = _nifti(d / "noorient.nii", arr)
    _patch(p, 252, "<2h", [0, 0])
    p = _nifti(d / "slope_nan.nii", arr)
    _patch(p, 112, "<f", np.nan)                 # scl_slope: NaN (ITK: every voxel NaN)
    import SimpleITK as sitk

    p = _nifti(d / "slope_huge.nii", arr)
    _patch(p, 112, "<f", 1e38)                   # scl_slope: beyond float32 once applied
    m64 = sitk.GetImageFromArray(np.where(arr > arr.mean(), -1e300, arr).astype(np.float64))
    sitk.WriteImage(m64, str(d / "float64_huge.mha"))
    p = _nifti(d / "offset_in_header.nii", arr)
    _patch(p, 108, "<f", 100.0)                  # vox_offset inside the 348-byte header
    _nifti(d / "fourd.nii", np.stack([arr, arr, arr], -1))
    p = _nifti(d / "trunc.nii", arr)
    p.write_bytes(p.read_bytes()[:-500])
    import nibabel as nib

    pair = nib.Nifti1Pair(arr.astype(np.float32), np.eye(4))
    pair.set_sform(np.eye(4), code=1)
    nib.save(pair, str(d / "pair.img"))
    (d / "pair.img").write_bytes((d / "pair.img").read_bytes()[:1000])
    rgb = sitk.Compose([sitk.GetImageFromArray(arr.astype(np.uint8))] * 3)
    sitk.WriteImage(rgb, str(d / "rgb.mha"))
    m = sitk.GetImageFromArray(arr.astype(np.float32))
    m.SetSpacing([1.0, 1.0, 1.0])
    sitk.WriteImage(m, str(d / "spacing0.mha"))
    t = (d / "spacing0.mha").read_bytes().replace(b"ElementSpacing = 1 1 1",
                                                  b"ElementSpacing = 1 0 1")
    (d / "spacing0.mha").write_bytes(t)
    # MetaIO reads a value it cannot parse, or one missing, as 0: a silent origin of 0
    m.SetOrigin([5.0, 6.0, 7.0])
    sitk.WriteImage(m, str(d / "placed.mha"))
    ok = (d / "placed.mha").read_bytes()
    assert b"Offset = 5 6 7" in ok
    for name, text in (("offset_text.mha", b"Offset = abc 6 7"),
                       ("offset_short.mha", b"Offset = 5 6"),
                       ("offset_nan.mha", b"Offset = nan 6 7")):
        (d / name).write_bytes(ok.replace(b"Offset = 5 6 7", text))
    (d / "matrix_nan.mha").write_bytes(ok.replace(b"TransformMatrix = 1 0 0",
                                                  b"TransformMatrix = nan 0 0"))
    # NRRD: no space directions (ITK: unrotated at 0), an unknown (NaN) spacing (ITK: 1 mm)
    raw = arr.astype("<i2").tobytes()
    head = "NRRD0004\ntype: short\ndimension: 3\nsizes: 20 24 24\nendian: little\nencoding: raw\n"
    (d / "nrrd_unoriented.nrrd").write_bytes(f"{head}spacings: 1 1 1.5\n\n".encode() + raw)
    (d / "nrrd_spacing_nan.nrrd").write_bytes(f"{head}spacings: nan 1 1.5\n\n".encode() + raw)
    (d / "nrrd_spacing_neg.nrrd").write_bytes(f"{head}spacings: 1 -1 1.5\n\n".encode() + raw)
    # NRRD directions in a space without a patient's axes: ITK took them for LPS
    dirs = "space directions: (1,0,0) (0,1,0) (0,0,1.5)\nspace origin: (5,6,7)\n"
    (d / "nrrd_left_handed.nrrd").write_bytes(
        f"{head}space: 3D-left-handed\n{dirs}\n".encode() + raw)
    (d / "nrrd_no_space.nrrd").write_bytes(f"{head}space dimension: 3\n{dirs}\n".encode() + raw)
    # a 3D Slicer segmentation whose segments overlap: one layer per segment
    layers = np.stack([arr > arr.mean(), arr > 2 * arr.mean()]).astype(np.uint8)
    seg = ("NRRD0004\ntype: uint8\ndimension: 4\nspace: left-posterior-superior\n"
           "sizes: 2 20 24 24\nspace directions: none (1,0,0) (0,1,0) (0,0,1.5)\n"
           "kinds: list domain domain domain\nencoding: raw\nspace origin: (0,0,0)\n"
           "Segment0_Name:=organ\nSegment1_Name:=lesion\n\n")
    (d / "slicer.seg.nrrd").write_bytes(
        seg.encode() + np.ascontiguousarray(np.moveaxis(layers, 0, -1)).tobytes())
    # formats without orientation: TIFF (ITK: origin 0, 1 mm slices), VTK legacy images
    m.SetSpacing([0.7, 0.7, 2.5])
    for name in ("stack.tif", "grid.vtk"):
        sitk.WriteImage(sitk.Cast(m, sitk.sitkUInt16), str(d / name))
    (d / "empty.nii.gz").write_bytes(b"")
    return d


@pytest.mark.parametrize("name,words", [
    ("nan.nii", ["NaN"]), ("inf.nii.gz", ["infinite"]),
    ("bitpix.nii", ["bitpix"]), ("bomb.nii.gz", ["truncated"]), ("huge.nii", ["GiB"]),
    ("spacing_zero.nii", ["spacing"]), ("spacing_nan.nii", ["spacing"]),
    ("spacing_neg.nii", ["spacing"]), ("sform_degenerate.nii", ["degenerate"]),
    ("sheared.nii", ["sheared", "sform_code"]), ("noorient.nii", ["no orientation"]),
    ("slope_nan.nii", ["scaling", "scl_slope nan"]),
    ("slope_huge.nii", ["32-bit float range"]), ("float64_huge.mha", ["reach 1e+300"]),
    ("offset_in_header.nii", ["vox_offset 100.0", "at least 352"]),
    ("fourd.nii", ["3 volumes"]), ("trunc.nii", ["truncated"]), ("pair.img", ["truncated"]),
    ("rgb.mha", ["values per voxel"]), ("spacing0.mha", ["spacing"]),
    ("slicer.seg.nrrd", ["3D Slicer segmentation in 2 layers", "export the segments"]),
    ("offset_text.mha", ["Offset = 'abc 6 7'", "not 3 finite numbers"]),
    ("offset_short.mha", ["Offset = '5 6'"]), ("offset_nan.mha", ["Offset = 'nan 6 7'"]),
    ("matrix_nan.mha", ["TransformMatrix", "not 9 finite numbers"]),
    ("nrrd_unoriented.nrrd", ["no orientation", "--allow-no-orientation"]),
    ("nrrd_spacing_nan.nrrd", ["spacings: 'nan 1 1.5'"]),
    ("nrrd_spacing_neg.nrrd", ["spacings: '1 -1 1.5'", "finite and positive"]),
    ("nrrd_left_handed.nrrd", ["space '3D-left-handed' has no patient axes",
                               "--allow-no-orientation"]),
    ("nrrd_no_space.nrrd", ["in no named space", "--allow-no-orientation"]),
    ("stack.tif", ["a .tif image records no orientation", "1 mm slices"]),
    ("grid.vtk", ["a .vtk image records no orientation", "--allow-no-orientation"]),
    ("empty.nii.gz", ["empty.nii.gz"]),
])
def test_readers_refuse_lying_headers(case, tmp_path, capsys, name, words):
    _, model = case
    d = tmp_path / "bad"
    d.mkdir()
    _hostile_images(d)
    before = tree_state(d, model)
    rc = main(["segment", str(d / name), "-o", str(tmp_path / "out" / "x"), "--model",
               str(model)])
    one_line_error(capsys, rc, *words)
    assert tree_state(d, model) == before
    assert not (tmp_path / "out").exists()                # no new parent folders either
    assert not leftovers(tmp_path)


def test_a_metaimage_placed_by_its_header_is_read_as_written(tmp_path):
    """The header check refuses only what MetaIO would misread: the file the
    refused ones were made from reads with its origin as written."""
    d = tmp_path / "bad"
    d.mkdir()
    _hostile_images(d)
    vol = read_volume(d / "placed.mha")
    assert np.allclose(vol.origin, [5.0, 6.0, 7.0]) and np.allclose(vol.spacing, 1.0)


def test_no_orientation_is_read_when_allowed(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    _hostile_images(d)
    vol = read_volume(d / "noorient.nii", allow_no_orientation=True)
    assert np.allclose(vol.spacing, [1.0, 1.0, 1.5])     # nibabel's fallback: pixdim
    vol = read_volume(d / "nrrd_unoriented.nrrd", allow_no_orientation=True)
    assert np.allclose(vol.spacing, [1.0, 1.0, 1.5]) and vol.array.shape == (24, 24, 20)
    vol = read_volume(d / "grid.vtk", allow_no_orientation=True)
    assert np.allclose(vol.spacing, [0.7, 0.7, 2.5]) and np.allclose(vol.origin, [5, 6, 7])
    for name in ("nrrd_left_handed.nrrd", "nrrd_no_space.nrrd"):    # as ITK takes them
        vol = read_volume(d / name, allow_no_orientation=True)
        assert np.allclose(vol.origin, [5, 6, 7]) and np.allclose(vol.direction, np.eye(3))


@pytest.mark.parametrize("space,sign", [
    ("left-posterior-superior", [1, 1, 1]), ("right-anterior-superior", [-1, -1, 1]),
    ("left-anterior-superior", [1, -1, 1]), ("RAS", [-1, -1, 1]),
    ("Right-Anterior-Superior", [-1, -1, 1]), ("lps", [1, 1, 1])])
def test_a_nrrd_in_a_patients_space_is_read_in_lps(tmp_path, space, sign):
    """The spaces of a patient's axes, in teem's full and short names and any case,
    still read, turned into LPS."""
    raw = np.arange(4 * 5 * 6, dtype="<i2").tobytes()
    f = tmp_path / "v.nrrd"
    f.write_bytes((f"NRRD0004\ntype: short\ndimension: 3\nspace: {space}\nsizes: 4 5 6\n"
                   "space directions: (1.5,0,0) (0,2,0) (0,0,3)\nendian: little\n"
                   "encoding: raw\nspace origin: (10,20,30)\n\n").encode() + raw)
    vol = read_volume(f)
    assert np.allclose(vol.origin, np.multiply(sign, [10, 20, 30]))
    assert np.allclose(vol.direction, np.diag(sign)) and np.allclose(vol.spacing, [1.5, 2, 3])


def test_a_header_nibabel_repairs_prints_nothing(case, tmp_path, capsys):
    """pixdim 0 under a valid sform: the sform places the voxels (as ITK does), and
    nibabel's repair message ("pixdim[1,2,3] should be non-zero") stays off
    stderr, reading alone and through segment, whose stderr holds its own lines
    only."""
    _, model = case
    rng = np.random.default_rng(0)
    p = _nifti(tmp_path / "pix0.nii", rng.normal(100, 10, (24, 24, 20)))
    _patch(p, 80, "<f", 0.0)                                  # pixdim[1], sform_code 1
    capsys.readouterr()
    vol = read_volume(p)
    assert np.allclose(vol.spacing, [1.0, 1.0, 1.5])
    assert capsys.readouterr().err == ""
    assert main(["segment", str(p), "-o", str(tmp_path / "o"), "--model", str(model)]) in (0, 3)
    err = capsys.readouterr().err
    assert "pixdim" not in err and "should be non-zero" not in err, err


def test_a_truncated_metaimage_is_one_line_on_the_process_stderr(case, tmp_path, capfd):
    """MetaIO printed two lines of its own on file descriptor 2 (which capsys never
    sees) before SimpleITK's "No such file or directory": now the process's stderr
    holds the one error line, and it says what is wrong."""
    import SimpleITK as sitk

    _, model = case
    img = sitk.GetImageFromArray(np.random.default_rng(0).random((10, 10, 10)).astype("f4"))
    sitk.WriteImage(img, str(tmp_path / "ok.mha"))
    data = (tmp_path / "ok.mha").read_bytes()
    (tmp_path / "trunc.mha").write_bytes(data[:-100])
    before = (tmp_path / "trunc.mha").read_bytes()
    capfd.readouterr()
    assert main(["segment", str(tmp_path / "trunc.mha"), "-o", str(tmp_path / "o"), "--model",
                 str(model)]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1, err
    assert "data not read completely" in err and "No such file" not in err, err
    assert (tmp_path / "trunc.mha").read_bytes() == before and not (tmp_path / "o").exists()


# -- model files ---------------------------------------------------------------------------

def _model_variants(model, d):
    src = Path(model)
    z = dict(np.load(src, allow_pickle=False))
    out = {}

    def save(name, **changes):
        arrays = {**z, **changes}
        arrays = {k: v for k, v in arrays.items() if v is not None}
        np.savez_compressed(d / name, **arrays)
        out[name] = d / name

    meta = json.loads(str(z["metadata_json"]))
    save("meta_list.npz", metadata_json=np.array(json.dumps([1, 2])))
    save("meta_badjson.npz", metadata_json=np.array("{not json"))
    save("organ_int.npz", metadata_json=np.array(json.dumps({**meta, "organ": 5})))
    save("pose_bad.npz", metadata_json=np.array(json.dumps({**meta, "pose_prior": {"x": 1}})))
    f = z["faces"].copy()
    f[0, 0] = -3
    save("neg_face.npz", faces=f)
    save("nan_shapes.npz", shapes=np.where(np.arange(z["shapes"].size).reshape(
        z["shapes"].shape) == 7, np.nan, z["shapes"]))
    save("faces_float.npz", faces=z["faces"].astype(float))
    save("no_mean.npz", mean=None)
    np.save(d / "array.npy", z["shapes"])
    out["array.npy"] = d / "array.npy"
    raw = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo("shapes.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    raw[start:start + 64] = bytes(64)
    (d / "bad_crc.npz").write_bytes(bytes(raw))
    out["bad_crc.npz"] = d / "bad_crc.npz"
    (d / "cut.npz").write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    out["cut.npz"] = d / "cut.npz"
    (d / "text.npz").write_text("hello")
    out["text.npz"] = d / "text.npz"
    return out


def test_damaged_model_files_one_line_each(case, tmp_path, capsys):
    scan, model = case
    d = tmp_path / "models"
    d.mkdir()
    variants = _model_variants(model, d)
    before = tree_state(d, scan)
    for name, path in variants.items():
        rc = main(["segment", str(scan), "-o", str(tmp_path / "o"), "--model", str(path)])
        err = one_line_error(capsys, rc)
        assert name in err or "model" in err, (name, err)
        assert not (tmp_path / "o").exists(), name
    assert tree_state(d, scan) == before and not leftovers(tmp_path)


def test_a_model_path_that_is_a_pipe_or_device_is_named_so_and_never_opened(case, tmp_path,
                                                                            capsys):
    """A named pipe (or /dev/zero) given as the model: one line that says what
    it is, not "no such model file"; it is never opened (a pipe would block)."""
    scan, _ = case
    pipe = tmp_path / "model.npz"
    os.mkfifo(pipe)
    for path, kind in ((pipe, "a named pipe"), (Path("/dev/zero"), "a device")):
        for argv in (["model-info", str(path)],
                     ["segment", str(scan), "-o", str(tmp_path / "o"), "--model", str(path)]):
            err = one_line_error(capsys, main(argv), kind, "not a model file")
            assert "no such" not in err
    assert not (tmp_path / "o").exists()


def _inflating_model(src, dest, key, shape):
    """``src`` with member ``key`` replaced by zeros of ``shape`` (float64), written
    as a deflate stream: a small file that inflates to ``8 * prod(shape)`` bytes."""
    z = dict(np.load(src, allow_pickle=False))
    z.pop(key)
    np.savez_compressed(dest, **z)
    with zipfile.ZipFile(dest, "a", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(key + ".npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f8", "fortran_order": False, "shape": shape})
            block = bytes(1 << 20)
            for _ in range(int(np.prod(shape)) * 8 // len(block)):
                f.write(block)
    return dest


@pytest.mark.parametrize("key", ["shapes", "pca_components"])
def test_a_model_whose_arrays_inflate_far_beyond_its_metadata_is_refused_unread(
        case, tmp_path, capsys, key):
    """A small model file can declare an array of gigabytes (a 9 MB file held 8 GB
    of shapes, read for 33 s before it was refused): the sizes the .npy headers
    declare are checked against the metadata and the shapes before any array is
    inflated."""
    scan, model = case
    n, v = np.load(model)["shapes"].shape[:2]
    shape = (n * 64, v, 3) if key == "shapes" else (256 << 20 >> 3,)
    bomb = _inflating_model(model, tmp_path / "bomb.npz", key, shape)
    assert bomb.stat().st_size < 2 << 20
    before = tree_state(tmp_path)
    rc = main(["segment", str(scan), "-o", str(tmp_path / "o"), "--model", str(bomb)])
    one_line_error(capsys, rc, "bomb.npz", "declares")
    assert tree_state(tmp_path) == before and not leftovers(tmp_path)


# -- resume by manifest ------------------------------------------------------------------------

def _three_cases(images, tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    for i in range(3):
        shutil.copy(images / f"phantom_00{i}.nii.gz", batch / f"c{i}.nii.gz")
    return batch, tmp_path / "out"


def test_resume_trusts_the_manifest_not_the_report(phantom_model, tmp_path, capsys):
    _, images, _, model = phantom_model
    batch, out = _three_cases(images, tmp_path)
    assert main(["segment", str(batch), "-o", str(out), "--model", str(model),
                 "--placement", "prior"]) == 0

    def status():
        return {r["case"]: r for r in json.loads((out / "summary.json").read_text())["cases"]}

    (out / "c0" / "label.nii.gz").unlink()                  # an output lost
    (out / "c1" / "report.json").unlink()                   # another
    shutil.copy(images / "phantom_004.nii.gz", batch / "c2.nii.gz")   # input replaced
    assert main(["segment", str(batch), "-o", str(out), "--model", str(model),
                 "--placement", "prior"]) == 0
    rows = status()
    assert {k: r["status"] for k, r in rows.items()} == {"c0": "ok", "c1": "ok", "c2": "ok"}
    assert "missing" in rows["c0"]["note"] and "missing" in rows["c1"]["note"]
    assert "changed" in rows["c2"]["note"]
    for i in range(3):
        assert (out / f"c{i}" / "label.nii.gz").is_file()
    new = json.loads((out / "c2" / "manifest.json").read_text())["inputs"]
    assert new["input/c2.nii.gz"]["sha256"] == hashlib.sha256(
        (batch / "c2.nii.gz").read_bytes()).hexdigest()
    # now complete: all skipped
    assert main(["segment", str(batch), "-o", str(out), "--model", str(model),
                 "--placement", "prior"]) == 0
    assert {r["status"] for r in status().values()} == {"skipped"}
    # a folder the user made at a case's place is reported, never replaced
    shutil.rmtree(out / "c1")
    (out / "c1").mkdir()
    (out / "c1" / "mine.txt").write_text("keep")
    rc = main(["segment", str(batch), "-o", str(out), "--model", str(model), "--force",
               "--placement", "prior"])
    assert rc == 1 and status()["c1"]["status"] == "failed"
    assert (out / "c1" / "mine.txt").read_text() == "keep"
    assert not leftovers(tmp_path)


def test_resume_redoes_edited_outputs_other_parameters_and_force(phantom_model, tmp_path):
    """A resumed batch skips a case only when its outputs are as written, its
    inputs unchanged and its parameters the same; --force redoes complete cases."""
    _, images, _, model = phantom_model
    batch, out = tmp_path / "batch", tmp_path / "out"
    batch.mkdir()
    for i in range(2):
        shutil.copy(images / f"phantom_00{i}.nii.gz", batch / f"c{i}.nii.gz")
    args = ["segment", str(batch), "-o", str(out), "--model", str(model), "--placement",
            "prior"]

    def rows():
        return {r["case"]: r for r in json.loads((out / "summary.json").read_text())["cases"]}

    assert main(args) == 0
    with open(out / "c0" / "label.nii.gz", "ab") as f:     # an output edited since
        f.write(b"\0")
    assert main(args) == 0
    r = rows()
    assert r["c0"]["status"] == "ok" and "changed since it was written" in r["c0"]["note"]
    assert r["c1"]["status"] == "skipped"
    assert main(args + ["--surface-offset", "0.2"]) == 0      # other parameters
    assert all(x["status"] == "ok" and "parameters differ" in x["note"] for x in rows().values())
    assert main(args + ["--surface-offset", "0.2"]) == 0
    assert {x["status"] for x in rows().values()} == {"skipped"}
    assert main(args + ["--surface-offset", "0.2", "--force"]) == 0  # --force redoes them
    assert {x["status"] for x in rows().values()} == {"ok"}
    # other outputs asked for: a case without them is redone, and holds them after
    args += ["--surface-offset", "0.2"]
    for extra, there, gone in ((["--mesh-format", "ply"], "mesh.ply", "mesh.vtk"),
                               (["--mesh-format", "ply", "--no-qc"], "mesh.ply", "qc.png")):
        assert main(args + extra) == 0
        assert all(x["status"] == "ok" and "other outputs were asked for" in x["note"]
                   for x in rows().values()), rows()
        assert (out / "c0" / there).is_file() and not (out / "c0" / gone).exists()
        assert main(args + extra) == 0
        assert {x["status"] for x in rows().values()} == {"skipped"}


@pytest.mark.parametrize("content, ours", [
    ([{"case": "c0", "status": "ok"}], True),                   # an older version's summary
    ({"producer": "shapeprior", "cases": []}, True),
    ([{"name": "c0", "result": "fine"}], False),                # another tool's list
    ({"cases": []}, False),
    ("not json", False),
])
def test_only_a_shapeprior_summary_is_replaced(tmp_path, content, ours):
    from shapeprior.pipeline._batch import own_summary, write_summary

    s = tmp_path / "summary.json"
    s.write_text(content if isinstance(content, str) else json.dumps(content))
    before = s.read_bytes()
    assert (own_summary(s) is None) == ours
    if ours:
        write_summary(tmp_path, [{"case": "c1", "status": "ok"}], 1)
        assert json.loads(s.read_text())["cases"] == [{"case": "c1", "status": "ok"}]
    else:
        with pytest.raises(OutputExistsError):
            write_summary(tmp_path, [{"case": "c1", "status": "ok"}], 1)
        assert s.read_bytes() == before
        assert not (tmp_path / "summary.csv").exists()        # nothing written beside it


@pytest.mark.parametrize("content, ours", [
    ("case,status,result,quality,volume_ml,iterations,time_s,side,dice,assd_mm,hd95_mm,"
     "reasons,error,note\nc0,ok\n", True),
    ("case,status\nc0,ok\n", False),                           # another tool's table
    ("patient,dice\nDoe,0.9\n", False),
    (b"\xff\xfe binary", False),
])
def test_only_a_shapeprior_summary_csv_is_replaced(tmp_path, content, ours):
    from shapeprior.pipeline._batch import own_summary_csv, write_summary

    s = tmp_path / "summary.csv"
    s.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = s.read_bytes()
    assert (own_summary_csv(s) is None) == ours
    rows = [{"case": "c1", "status": "ok", "reasons": ["a", "b"], "dice": 0.91234567}]
    if ours:
        write_summary(tmp_path, rows, 1)
        lines = s.read_text().splitlines()
        assert lines[1].startswith("c1,ok,,") and "a; b" in lines[1] and ",0.912346," in lines[1]
    else:
        with pytest.raises(OutputExistsError, match="summary.csv exists"):
            write_summary(tmp_path, rows, 1)
        assert s.read_bytes() == before and not (tmp_path / "summary.json").exists()


# -- leftovers: kills and signals ------------------------------------------------------------

@pytest.mark.parametrize("point", ["wrote-report.json", "before-commit", "after-commit",
                                   "mid-replace"])
def test_sigkill_then_rerun_leaves_nothing_behind(case, tmp_path, point):
    scan, model = case
    out = tmp_path / "res" / "case"
    # (the prior placement: these runs test what is left on disk, not where the fit starts)
    args = ["segment", str(scan), "-o", str(out), "--model", str(model), "--placement", "prior"]
    if point == "mid-replace":          # killed between moving the old output away and
        rc, _, err = _subprocess(args)  # putting the new one in place
        assert rc == 0, err
        args.append("--force")
    before = tree_state(scan.parent, model)
    rc, _, _ = _subprocess(args, env={"SHAPEPRIOR_TEST_KILL_AT": point})
    assert rc == -signal.SIGKILL
    assert tree_state(scan.parent, model) == before
    rc, _, err = _subprocess(args + (["--force"] if point == "after-commit" else []))
    assert rc == 0, err
    assert read_label_map(out / "label.nii.gz").array.sum() > 0
    assert json.loads((out / "manifest.json").read_text())["producer"] == "shapeprior"
    assert not leftovers(tmp_path)
    assert tree_state(scan.parent, model) == before


@pytest.mark.parametrize("sig,code,word", [("SIGTERM", 143, "terminated"),
                                           ("SIGINT", 130, "interrupted")])
def test_signals_give_one_line_and_clean_up(case, tmp_path, sig, code, word):
    scan, model = case
    out = tmp_path / "new" / "deeper" / "case"
    before = tree_state(scan.parent, model)
    rc, _, err = _subprocess(["segment", str(scan), "-o", str(out), "--model", str(model),
                              "--placement", "prior"],
                             env={"SHAPEPRIOR_TEST_KILL_AT": f"wrote-report.json:{sig}"})
    assert rc == code and err.count("\n") == 1 and word in err, err
    assert not (tmp_path / "new").exists()          # the parents it made are gone too
    assert tree_state(scan.parent, model) == before and not leftovers(tmp_path)


def test_stale_staging_of_a_dead_run_is_removed(case, tmp_path):
    scan, model = case
    out = tmp_path / "o"
    stale = tmp_path / ".shapeprior-staging" / "run-999999-x"
    (stale / "out").mkdir(parents=True)
    (stale / "out" / "label.nii.gz").write_bytes(b"partial")
    (stale / "lock").write_text("")
    assert main(["segment", str(scan), "-o", str(out), "--model", str(model)]) == 0
    assert not (tmp_path / ".shapeprior-staging").exists()


# -- names reach outputs: --deidentify -----------------------------------------------------------

def test_deidentify_keeps_names_out_of_every_output(case, tmp_path, monkeypatch, capsys):
    scan, model = case
    monkeypatch.setenv("SHAPEPRIOR_DEID_SALT", "test-salt")
    batch = tmp_path / "DOE^JOHN_export"
    batch.mkdir()
    shutil.copy(scan, batch / "DOE^JOHN.nii.gz")
    (batch / "SMITH^JANE.nii.gz").write_bytes(b"\x1f\x8b broken")
    write_dicom_series(read_volume(scan), batch / "ROE^RICHARD")
    out = tmp_path / "out"
    rc = main(["segment", str(batch), "-o", str(out), "--model", str(model), "--deidentify"])
    printed = capsys.readouterr()
    assert rc == 1                                           # SMITH^JANE is broken
    single = tmp_path / "single"
    assert main(["segment", str(batch / "DOE^JOHN.nii.gz"), "-o", str(single), "--model",
                 str(model), "--deidentify"]) == 0
    printed2 = capsys.readouterr()
    rc = main(["segment", str(batch / "SMITH^JANE.nii.gz"), "-o", str(tmp_path / "s2"),
               "--model", str(model), "--deidentify"])
    printed3 = capsys.readouterr()
    assert rc == 1
    printed = "".join(p.out + p.err for p in (printed, printed2, printed3))
    text = written_text(tmp_path, [batch], printed)         # the inputs, named by the user
    for name in ("DOE", "JOHN", "SMITH", "JANE", "ROE", "RICHARD"):
        assert name not in text, name
    rows = json.loads((out / "summary.json").read_text())["cases"]
    assert len(rows) == 3 and all(r["case"].startswith("case-") for r in rows)
    # stable: the same name hashes the same way in a batch and alone
    rep = json.loads((single / "report.json").read_text())
    assert rep["input"]["name"] in {r["case"] for r in rows}


def test_deidentify_leaves_the_words_of_an_error_line_whole(case, tmp_path, monkeypatch, capsys):
    """A scan named as TotalSegmentator names them (``ct.nii.gz``) whose error line
    is deidentified: the name goes, "expected" stays a word."""
    import SimpleITK as sitk

    _, model = case
    monkeypatch.setenv("SHAPEPRIOR_DEID_SALT", "test-salt")
    scan = tmp_path / "s0011" / "ct.nii.gz"
    scan.parent.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.float32)), str(scan))
    rc = main(["segment", str(scan), "-o", str(tmp_path / "o"), "--model", str(model),
               "--deidentify"])
    err = capsys.readouterr().err
    assert rc == 1 and "expected a 3-D image, got 2-D" in err, err
    assert "ct.nii.gz" not in err and "s0011" not in err and "case-" in err


def test_deidentify_names_no_folder_the_readers_find_below_an_input(phantom_model, tmp_path,
                                                                    capsys):
    """A download keeps each patient's series below a folder named after them
    (``collection/DOE^JOHN/study/series``). With ``--deidentify`` the lines that
    say where the series lie count those folders, and name neither them nor the
    folder given; the same commands without it name them (so the withholding
    ends with the command)."""
    _, images, labels, model = phantom_model
    vol = read_volume(images / "phantom_000.nii.gz")
    dl = tmp_path / "ACME_download"
    for k, sub in enumerate(("ST_DOE/SE_A", "ST_DOE/SE_B")):
        write_dicom_series(vol, dl / "DOE^JOHN" / sub, series_uid=f"1.2.3.{k + 1}")
    (tmp_path / "ROE^RICHARD" / "SMITH^JANE").mkdir(parents=True)   # no series at all
    (tmp_path / "EMPTY^EVE").mkdir()
    mask = labels / "phantom_000.nii.gz"

    def said(args):
        rc = main(args)
        err = capsys.readouterr().err
        assert rc == 1, err
        return err

    runs = [["segment", str(dl), "-o", str(tmp_path / "o1"), "--model", str(model)],
            ["segment", str(dl / "DOE^JOHN"), "-o", str(tmp_path / "o2"), "--model", str(model)],
            ["segment", str(tmp_path / "EMPTY^EVE"), "-o", str(tmp_path / "o3"), "--model",
             str(model)],
            ["refine", str(mask), "--image", str(dl / "DOE^JOHN"), "-o", str(tmp_path / "o4"),
             "--model", str(model)],
            ["refine", str(mask), "--image", str(tmp_path / "ROE^RICHARD"), "-o",
             str(tmp_path / "o5"), "--model", str(model)]]
    withheld = [said([*r, "--deidentify"]) for r in runs]
    text = "".join(withheld)
    for name in ("ACME", "DOE", "JOHN", "ROE", "RICHARD", "SMITH", "JANE", "EVE", "SE_A"):
        assert name not in text, (name, text)
    assert "(withheld input) holds no DICOM image series itself; 2 folders below it do" \
        in withheld[0] and "(withheld input) holds no DICOM image series itself; 2 folders " \
        "below it do" in withheld[1], withheld[:2]
    assert "(withheld input) holds no image files" in withheld[2], withheld[2]
    assert "(withheld image) holds no DICOM image series itself; 2 folders below it do" \
        in withheld[3], withheld[3]
    assert "(it has 1 subfolder; point at the one that holds the series)" in withheld[4]
    named = [said(r) for r in runs]
    assert "DOE^JOHN/ST_DOE/SE_A" in named[0] and "ST_DOE/SE_B" in named[1]
    assert "EMPTY^EVE holds no image files" in named[2]
    assert "2 folders (ST_DOE/SE_A, ST_DOE/SE_B) below it do" in named[3], named[3]
    assert "(it has subfolders: SMITH^JANE; point at one of them)" in named[4], named[4]


# -- the README's list of bad inputs, each with hashes before and after ------------------------

def _readme_bad_inputs(d, scan, model):
    import SimpleITK as sitk

    from shapeprior.io import Volume
    from shapeprior.model import load_model, save_model

    vol = read_volume(scan)
    (d / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    data = scan.read_bytes()
    (d / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    (d / "empty").mkdir()
    (d / "notdicom").mkdir()
    (d / "notdicom" / "x.dcm").write_bytes(b"\0" * 300)
    s = write_dicom_series(vol, d / "gap")
    (s / "IM0010.dcm").unlink()                           # a missing slice
    write_dicom_series(vol, d / "two", series_uid="1.2.3.4")
    other = write_dicom_series(vol, d / "other", series_uid="1.2.3.5")
    for f in other.iterdir():
        f.rename(d / "two" / ("B" + f.name))
    other.rmdir()
    mixed = write_dicom_series(vol, d / "mixed")
    tilted = Volume(vol.array[:5], vol.spacing, vol.origin, np.eye(3))
    write_dicom_series(tilted, d / "tilt")
    shutil.copy(d / "tilt" / "IM0003.dcm", mixed / "IM0003.dcm")   # same series, other plane
    nan = sitk.GetImageFromArray(np.full((8, 8, 8), np.nan, np.float32))
    sitk.WriteImage(nan, str(d / "nan.mha"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.int16)), str(d / "flat.nii.gz"))
    np.savez(d / "wrong_model.npz", x=np.zeros(3))
    z = dict(np.load(model, allow_pickle=False))
    meta = json.loads(str(z["metadata_json"]))
    z["metadata_json"] = np.array(json.dumps({**meta, "format_version": 99}))
    np.savez_compressed(d / "future_model.npz", **z)
    m = load_model(model)
    m.mean, m.shapes = m.mean * 12.0, m.shapes * 12.0
    save_model(m, d / "big_model.npz")


@pytest.mark.parametrize("name,model_name,words", [
    ("corrupt.nii.gz", None, ["cannot read"]), ("truncated.nii.gz", None, ["truncated"]),
    ("empty", None, ["no image files"]), ("notdicom", None, ["no image files"]),
    ("gap", None, ["non-uniform slice spacing"]), ("two", None, ["2 DICOM series"]),
    ("mixed", None, ["mixes slice orientations"]), ("nan.mha", None, ["NaN"]),
    ("flat.nii.gz", None, ["3-D"]), ("scan", "wrong_model.npz", ["not a shapeprior model"]),
    ("scan", "future_model.npz", ["version 99"]),
])
def test_readme_bad_inputs_one_line_inputs_untouched(case, tmp_path, capsys, name, model_name,
                                                     words):
    scan, model = case
    d = tmp_path / "bad"
    d.mkdir()
    _readme_bad_inputs(d, scan, model)
    src = scan if name == "scan" else d / name
    m = d / model_name if model_name else model
    before = tree_state(d, scan.parent, model)
    rc = main(["segment", str(src), "-o", str(tmp_path / "o" / "case"), "--model", str(m)])
    one_line_error(capsys, rc, *words)
    assert tree_state(d, scan.parent, model) == before
    assert not (tmp_path / "o").exists() and not leftovers(tmp_path)


def test_model_that_cannot_fit_the_image_is_a_failed_result(case, tmp_path, capsys):
    """A wrong model (an organ larger than the field of view) is not an input
    error but a result: status failed with the reason, exit 3, one stderr
    line, inputs untouched."""
    scan, model = case
    d = tmp_path / "bad"
    d.mkdir()
    _readme_bad_inputs(d, scan, model)
    before = tree_state(d, scan.parent, model)
    rc = main(["segment", str(scan), "-o", str(tmp_path / "o" / "case"), "--model",
               str(d / "big_model.npz")])
    err = capsys.readouterr().err
    assert rc == 3 and err.count("\n") == 1 and "cannot fit" in err, err
    rep = json.loads((tmp_path / "o" / "case" / "report.json").read_text())
    assert rep["status"] == "failed" and rep["volume_ml"] == 0
    assert tree_state(d, scan.parent, model) == before and not leftovers(tmp_path)


def test_batch_killed_mid_run_resumes_cleanly(phantom_model, tmp_path):
    _, images, _, model = phantom_model
    batch, out = _three_cases(images, tmp_path)
    before = tree_state(batch)
    # the first case's manifest is written, then the process dies before publishing it
    rc, _, _ = _subprocess(["segment", str(batch), "-o", str(out), "--model", str(model),
                 "--placement", "prior"],
                           env={"SHAPEPRIOR_TEST_KILL_AT": "wrote-manifest.json"})
    assert rc == -signal.SIGKILL and leftovers(tmp_path)   # the dead run's staging
    rc, _, err = _subprocess(["segment", str(batch), "-o", str(out), "--model", str(model),
                 "--placement", "prior"])
    assert rc == 0, err
    rows = json.loads((out / "summary.json").read_text())["cases"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    assert not leftovers(tmp_path) and tree_state(batch) == before


def test_concurrent_runs_in_one_folder_never_take_each_other_for_dead(tmp_path):
    """Many runs stage in the same parent at once (dask workers do): each one's
    staging is locked before another can see it, so none is cleaned away."""
    from concurrent.futures import ThreadPoolExecutor

    from shapeprior._outputs import OutputDir, manifest

    def one(i):
        out = OutputDir(tmp_path / f"case{i:03d}")
        out.file("label.nii.gz").write_bytes(b"x" * 100)
        out.write_json("manifest.json", manifest("test", {}, None, {}))
        out.commit()
        return i

    with ThreadPoolExecutor(8) as ex:
        done = list(ex.map(one, range(80)))
    assert done == list(range(80))
    assert all((tmp_path / f"case{i:03d}" / "label.nii.gz").is_file() for i in range(80))
    assert not leftovers(tmp_path)


def test_a_staging_root_another_run_removed_meanwhile_is_no_error(tmp_path, monkeypatch):
    """A run that finds the shared staging folder, which another run removes (empty,
    after its commit) before the first one lists it, goes on. Before, it failed
    with FileNotFoundError (a case of a --workers batch lost; seen once in the 80
    concurrent runs of the test above, in a full-suite run)."""
    from shapeprior._outputs import STAGING, OutputDir, clean_stale_staging, manifest

    root = tmp_path / STAGING
    listing = Path.iterdir

    def removed_first(self):
        if self == root and root.is_dir() and not any(os.scandir(root)):
            root.rmdir()            # the other run's cleanup, between check and listing
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", removed_first)
    root.mkdir()
    assert clean_stale_staging(tmp_path) == 0
    root.mkdir()
    out = OutputDir(tmp_path / "case")
    out.write_json("manifest.json", manifest("test", {}, None, {}))
    out.commit()
    assert (tmp_path / "case" / "manifest.json").is_file() and not leftovers(tmp_path)


@pytest.mark.parametrize("deidentify", [False, True])
def test_a_case_gone_before_its_turn_fails_its_row_not_the_batch(phantom_model, tmp_path,
                                                                 deidentify):
    """A case found, then removed (or made unreadable) before the batch reaches
    it: its row fails with the cause, the other cases run, the summary is
    written; de-identified, the row names neither the file nor its folder."""
    from shapeprior.pipeline import Deidentifier, discover_cases, run_batch, write_summary
    from shapeprior.segmentation import SegmentParams

    _, images, _, model = phantom_model
    batch, out = _three_cases(images, tmp_path)
    cases = discover_cases(batch)
    if deidentify:
        cases = Deidentifier(tmp_path / "salt").apply(cases)
    (batch / "c1.nii.gz").unlink()
    rows = run_batch(cases, out, model, SegmentParams(placement="prior"), progress=False,
                     deidentify=deidentify, inputs=[batch])
    write_summary(out, rows, len(cases))
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    err = rows[1]["error"]
    assert "No such file" in err
    if deidentify:
        # the pseudonym is random hex and may itself hold "c1"
        assert cases[1].name in err
        rest = err.replace(cases[1].name, "")
        assert "c1" not in rest and str(batch) not in rest
    assert not (out / cases[1].name).exists() and not leftovers(tmp_path)
    assert [r["case"] for r in json.loads((out / "summary.json").read_text())["cases"]] == [
        c.name for c in cases]


# -- Ctrl-C / SIGTERM whose handler ran inside compiled code's callback ----------------------

def _interrupted_inside_compiled_code(kind):
    """What Numba's dispatcher raises when a signal handler raised ``kind`` in
    a callback it made: a SystemError caused by the interruption."""
    try:
        raise kind()
    except BaseException as exc:
        raise SystemError("CPUDispatcher(<function _sample_numba>) returned a result with an "
                          "exception set") from exc


def test_the_interruption_behind_an_exception_is_found_through_causes_and_contexts():
    from shapeprior._interrupt import interruption

    with pytest.raises(SystemError) as caused:
        _interrupted_inside_compiled_code(Terminated)
    assert isinstance(interruption(caused.value), Terminated)
    try:                    # an error while cleaning up after Ctrl-C: implicit context
        try:
            raise KeyboardInterrupt()
        except KeyboardInterrupt:
            raise OSError("cleanup failed")
    except OSError as exc:
        assert isinstance(interruption(exc), KeyboardInterrupt)
    loop = ValueError("a")
    loop.__context__ = ValueError("b")
    loop.__context__.__context__ = loop     # a cycle ends the walk
    assert interruption(loop) is None and interruption(SystemError("x")) is None


@pytest.mark.parametrize("kind,code,word", [(KeyboardInterrupt, 130, "interrupted"),
                                            (Terminated, 143, "terminated")])
def test_an_interruption_inside_compiled_code_is_still_one_line(monkeypatch, capsys, kind,
                                                                code, word):
    """A SystemError whose cause is Ctrl-C or SIGTERM is that interruption
    (its line and exit code), not an internal error."""
    import shapeprior.cli as cli

    def run(argv):
        _interrupted_inside_compiled_code(kind)

    monkeypatch.setattr(cli, "command", lambda name: run)
    rc = cli.main(["segment", "x.nii.gz"])
    err = capsys.readouterr().err
    assert rc == code and err.count("\n") == 1 and word in err and "internal" not in err, err


@pytest.mark.parametrize("refine", [False, True])
def test_an_interruption_inside_compiled_code_stops_the_batch(phantom_model, tmp_path,
                                                              monkeypatch, refine):
    """Ctrl-C during one case's compiled kernel stops the batch there: the
    case is not counted as failed, and no later case runs."""
    from shapeprior.pipeline import (discover_cases, discover_masks, run_batch,
                                     run_refine_batch)
    from shapeprior.pipeline import _refine as refine_mod
    from shapeprior.pipeline import _run as run_mod
    from shapeprior.segmentation import SegmentParams

    _, images, labels, model = phantom_model
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args[0])
        _interrupted_inside_compiled_code(KeyboardInterrupt)

    if refine:
        monkeypatch.setattr(refine_mod, "refine_case", interrupted)
        batch = tmp_path / "masks"
        batch.mkdir()
        for i in range(3):
            shutil.copy(labels / f"phantom_00{i}.nii.gz", batch / f"c{i}.nii.gz")
        args = (run_refine_batch, discover_masks(batch), SegmentParams())
    else:
        monkeypatch.setattr(run_mod, "run_case", interrupted)
        batch, _ = _three_cases(images, tmp_path)
        args = (run_batch, discover_cases(batch), SegmentParams(placement="prior"))
    run, cases, params = args
    with pytest.raises(KeyboardInterrupt):
        run(cases, tmp_path / "out", model, params, progress=False, inputs=[batch])
    assert len(calls) == 1 and not leftovers(tmp_path)


def test_ctrl_c_at_a_terminal_stops_a_batch_on_workers_in_one_line(phantom_model, tmp_path):
    """Ctrl-C at a terminal signals every process of the group: the dask
    workers too. They start with SIGINT ignored, so the run ends with the
    interruption's one line (not 40-80 lines of worker tracebacks and dask
    warnings), and no process of the group is left. Port 8787, dask's default for
    the scheduler's HTTP server, is held meanwhile, as another run's cluster would
    hold it: dask printed "Port 8787 is already in use" (a CI run failed so)."""
    import socket
    import subprocess
    import sys
    import time

    _, images, _, model = phantom_model
    batch, out = _three_cases(images, tmp_path)
    before = tree_state(batch)
    env = {k: v for k, v in os.environ.items() if k != "SHAPEPRIOR_TEST_KILL_AT"}
    held = socket.socket()
    try:
        held.bind(("127.0.0.1", 8787))
        held.listen()
    except OSError:             # taken already: the case this checks
        pass
    p = subprocess.Popen([sys.executable, "-m", "shapeprior.cli", "segment", str(batch), "-o",
                          str(out), "--model", str(model), "--workers", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        t0 = time.monotonic()
        while not (out.is_dir() and any(out.iterdir())) and time.monotonic() - t0 < 120:
            time.sleep(0.02)        # the first case is staged: the workers run
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        held.close()
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    err = err.decode(errors="replace")
    assert p.returncode == 130 and err.count("\n") == 1 and "interrupted" in err, err
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        try:
            os.killpg(p.pid, 0)     # a worker or nanny still alive?
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("worker processes outlived the interrupted run")
    assert tree_state(batch) == before
