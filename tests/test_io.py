"""Volume geometry against the file headers themselves (not against our own
reader's other paths): NIfTI affines, DICOM position/orientation/spacing."""

import numpy as np
import pytest

from shapeprior.io import Volume, read_image, read_volume

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

LPS = np.diag([-1.0, -1.0, 1.0])


def _oblique_affine():
    th = np.deg2rad(23)
    R = np.array([[np.cos(th), 0, np.sin(th)], [0, 1, 0], [-np.sin(th), 0, np.cos(th)]])
    A = np.eye(4)
    A[:3, :3] = R @ np.diag([0.7, 1.3, 2.9]) @ np.diag([1, -1, 1])   # anisotropic, flipped y
    A[:3, 3] = [12.5, -40.0, 7.25]
    return A


def test_volume_geometry_equals_the_nifti_affine(tmp_path):
    A = _oblique_affine()
    data = np.arange(9 * 7 * 5, dtype=np.float32).reshape(9, 7, 5)
    img = nib.Nifti1Image(data, A)
    img.set_qform(A, code=1)
    img.set_sform(A, code=1)
    nib.save(img, str(tmp_path / "o.nii.gz"))
    vol = read_volume(tmp_path / "o.nii.gz")
    ijk = np.array([[0, 0, 0], [8, 0, 0], [0, 6, 0], [0, 0, 4], [8, 6, 4], [3.5, 2.25, 1.5]])
    want = (A[:3, :3] @ ijk.T).T + A[:3, 3]
    assert np.allclose(vol.index_to_physical(ijk), want @ LPS, atol=1e-4)
    assert np.allclose(vol.physical_to_index(want @ LPS), ijk, atol=1e-6)
    # the field-of-view centre is the physical position of the middle index
    mid = (np.array(data.shape) - 1) / 2.0
    assert np.allclose(vol.centre(), (A[:3, :3] @ mid + A[:3, 3]) @ LPS, atol=1e-4)
    assert np.allclose(vol.spacing, [0.7, 1.3, 2.9], atol=1e-5)
    assert np.array_equal(vol.array, data.transpose(2, 1, 0))


@pytest.fixture(params=["isal", "zlib"])
def gzip_backend(request, monkeypatch):
    """Inflate and deflate through ISA-L, and through zlib as without ``isal``."""
    from shapeprior.io import _gzip

    if request.param == "isal":
        if not _gzip.accelerated():
            pytest.skip("isal is not installed")
    else:
        monkeypatch.setattr(_gzip, "_igzip", None)
    return request.param


@pytest.mark.parametrize("kind", ["scaled_int16", "big_endian_float", "nifti2"])
def test_gzipped_nifti_reads_as_nibabel_does(tmp_path, gzip_backend, kind):
    A = _oblique_affine()
    rng = np.random.default_rng(3)
    data = rng.integers(-1000, 1000, (9, 7, 5)).astype(np.int16)
    if kind == "big_endian_float":
        data = (data / 7.0).astype(">f4")
    klass = nib.Nifti2Image if kind == "nifti2" else nib.Nifti1Image
    img = klass(data, A)
    img.set_sform(A, code=2)
    if kind == "scaled_int16":
        img.header.set_slope_inter(0.5, -1024.0)
    nib.save(img, str(tmp_path / "s.nii.gz"))
    vol, info = read_image(tmp_path / "s.nii.gz")
    ref = nib.load(str(tmp_path / "s.nii.gz"))
    want = np.asanyarray(ref.dataobj).transpose(2, 1, 0)
    assert vol.array.dtype == want.dtype.newbyteorder("=")
    assert np.array_equal(vol.array, want)
    assert info["nifti_version"] == (2 if kind == "nifti2" else 1)
    assert np.allclose(vol.index_to_physical(np.zeros((1, 3)))[0], A[:3, 3] @ LPS)


def test_gzipped_nifti_holds_its_voxels_once(tmp_path, gzip_backend, monkeypatch):
    """Reading a .nii.gz allocates the voxels once plus one piece of the
    inflated stream (the inherited ``readinto`` inflated the whole request into
    a temporary first: twice the voxels at the peak), and pieces of an odd size
    give the same voxels."""
    import tracemalloc

    from shapeprior.io import _gzip

    rng = np.random.default_rng(5)
    data = (rng.random((128, 128, 256)) < 0.01).astype(np.uint8)        # 4 MiB
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0])), str(tmp_path / "m.nii.gz"))
    got = {}
    for piece in (1 << 18, 12345):
        monkeypatch.setattr(_gzip, "READ_PIECE", piece)
        tracemalloc.start()
        vol, info = read_image(tmp_path / "m.nii.gz")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        got[piece] = vol.array
        assert peak < 1.5 * data.nbytes, (piece, peak / data.nbytes)      # was 2.15
    want = data.transpose(2, 1, 0)
    assert all(np.array_equal(a, want) for a in got.values())


def test_gzipped_label_is_standard_deterministic_and_nameless(tmp_path, gzip_backend):
    import gzip

    import SimpleITK as sitk

    from shapeprior.io import write_label

    vol = Volume(np.zeros((6, 7, 8), np.int16), np.array([0.5, 0.9, 2.0]),
                 np.array([3.0, -1.0, 2.0]), _oblique_affine()[:3, :3] / [0.7, 1.3, 2.9])
    lab = np.zeros((6, 7, 8), bool)
    lab[2:5, 1:6, 3:7] = True
    out = tmp_path / "patient_name_label.nii.gz"
    write_label(vol, lab, out)
    first = out.read_bytes()
    assert first[3] == 0                       # gzip FLG: no file name in the header
    assert first[4:8] == b"\0\0\0\0"          # and no time stamp
    assert b"patient_name" not in gzip.decompress(first)
    write_label(vol, lab, out)
    assert out.read_bytes() == first           # same label, same bytes
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), lab)
    back = read_image(out)[0]
    assert back.array.dtype == np.uint8 and np.array_equal(back.array, lab)
    assert np.allclose(back.direction, vol.direction) and np.allclose(back.origin, vol.origin)
    # written as named, whatever a file of that name held before
    plain, packed = tmp_path / "l.nii", tmp_path / "m.nii.gz"
    plain.write_bytes(gzip.compress(b"x" * 400))
    packed.write_bytes(b"x" * 400)
    write_label(vol, lab, plain)
    write_label(vol, lab, packed)
    assert plain.read_bytes()[:2] != b"\x1f\x8b" and packed.read_bytes()[:2] == b"\x1f\x8b"


def test_volume_crop_keeps_physical_positions():
    vol = Volume(np.zeros((6, 7, 8)), np.array([0.5, 0.9, 2.0]), np.array([3.0, -1.0, 2.0]),
                 _oblique_affine()[:3, :3] / np.array([0.7, 1.3, 2.9]))
    sub = vol.crop((1, 2, 3), (5, 6, 7))
    assert np.allclose(sub.index_to_physical(np.zeros((1, 3))),
                       vol.index_to_physical(np.array([[3.0, 2.0, 1.0]])))


def _series(src_name, folder, pixel_spacing=(0.5, 0.8), descending=True, n=4):
    """A series from a pydicom test file with anisotropic pixels, written with
    its slices in descending position order (file order != slice order)."""
    from pydicom.data import get_testdata_file

    folder.mkdir()
    base = pydicom.dcmread(get_testdata_file(src_name))
    iop = np.array([0.9, 0.1, 0.0, -0.1, 0.9, 0.0])
    iop[:3] /= np.linalg.norm(iop[:3])
    iop[3:] /= np.linalg.norm(iop[3:])
    normal = np.cross(iop[:3], iop[3:])
    ipp0 = np.array([-50.0, 20.0, 10.0])
    for k in range(n):
        ds = pydicom.dcmread(get_testdata_file(src_name))
        pos = ipp0 + 3.0 * (n - 1 - k if descending else k) * normal
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
        ds.PixelSpacing = [f"{pixel_spacing[0]}", f"{pixel_spacing[1]}"]
        ds.SOPInstanceUID = f"{base.SOPInstanceUID}.{k + 1}"
        ds.InstanceNumber = k + 1
        ds.save_as(folder / f"f{k}.dcm")
    return folder, iop, normal, ipp0, base


@pytest.mark.parametrize("src", ["CT_small.dcm", "MR_small_bigendian.dcm"])
def test_volume_geometry_equals_the_dicom_headers(tmp_path, src):
    folder, iop, normal, ipp0, base = _series(src, tmp_path / "s")
    vol, info = read_image(folder)
    rows, cols = int(base.Rows), int(base.Columns)
    assert vol.array.shape == (4, rows, cols)
    # DICOM PS3.3 C.7.6.2.1.1: P = IPP + col * dc * X + row * dr * Y
    # (PixelSpacing = [row spacing dr, column spacing dc])
    dr, dc = 0.5, 0.8
    for k in range(4):
        ipp = ipp0 + 3.0 * k * normal                       # the k-th slice in space
        for r, c in ((0, 0), (rows - 1, 0), (0, cols - 1), (rows - 1, cols - 1)):
            want = ipp + c * dc * iop[:3] + r * dr * iop[3:]
            got = vol.index_to_physical(np.array([[c, r, k]], dtype=float))[0]
            assert np.allclose(got, want, atol=1e-4), (k, r, c)
    # values with the modality LUT, slice k = the k-th position (file f{3-k})
    from pydicom.pixels import apply_modality_lut

    ref = apply_modality_lut(pydicom.dcmread(folder / "f3.dcm").pixel_array,
                             pydicom.dcmread(folder / "f3.dcm"))
    assert np.array_equal(vol.array[0], ref)
    if "RescaleIntercept" in base:
        assert vol.array.min() < 0            # CT_small: intercept -1024 applied


def test_dicom_spacing_tolerance_is_honoured(tmp_path):
    """One slice 0.1 mm off a 3 mm step: refused at the default 1 % tolerance,
    read when the caller allows 5 %."""
    from shapeprior.io import ImageReadError, read_dicom_series

    folder, iop, normal, ipp0, base = _series("MR_small.dcm", tmp_path / "s", n=4)
    ds = pydicom.dcmread(folder / "f1.dcm")
    pos = np.array([float(v) for v in ds.ImagePositionPatient]) + 0.1 * normal
    ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
    ds.save_as(folder / "f1.dcm")
    with pytest.raises(ImageReadError, match="non-uniform"):
        read_dicom_series(folder)
    vol, _ = read_dicom_series(folder, spacing_tol=0.05)
    assert vol.array.shape[0] == 4


def test_same_grid_needs_the_same_voxel_positions():
    """Two volumes are on the same grid only when shape, spacing, direction and
    origin all agree (to ``atol`` mm): one voxel of origin apart is another grid."""
    a = Volume(np.zeros((4, 5, 6), np.uint8), np.array([0.8, 0.8, 2.0]),
               np.array([10.0, -20.0, 30.0]), np.eye(3))
    same = Volume(np.ones((4, 5, 6), np.uint8), a.spacing.copy(), a.origin + 1e-4, np.eye(3))
    assert a.same_grid(same) and same.same_grid(a)
    for origin, spacing, direction, shape in (
            (a.origin + np.array([0.8, 0.0, 0.0]), a.spacing, np.eye(3), (4, 5, 6)),
            (a.origin + np.array([0.0, 0.0, 2.0]), a.spacing, np.eye(3), (4, 5, 6)),
            (a.origin, np.array([0.8, 0.8, 2.5]), np.eye(3), (4, 5, 6)),
            (a.origin, a.spacing, np.diag([1.0, -1.0, -1.0]), (4, 5, 6)),
            (a.origin, a.spacing, np.eye(3), (4, 5, 7))):
        b = Volume(np.zeros(shape, np.uint8), np.asarray(spacing), np.asarray(origin),
                   np.asarray(direction))
        assert not a.same_grid(b) and not b.same_grid(a)


def test_header_checks_refuse_an_empty_grid_and_too_little_memory(monkeypatch):
    """check_size: a zero-length axis is refused, and so is an image whose
    working copies (three times its voxels) would not fit in the memory left,
    even where the voxels alone would."""
    from shapeprior.io._checks import ImageReadError, check_size

    for size in ((0, 10, 10), (10, 0, 10), (10, 10, 0)):
        with pytest.raises(ImageReadError, match="empty grid"):
            check_size("scan.nii", size, 2)
    nbytes = 100 * 100 * 50 * 2
    monkeypatch.setenv("SHAPEPRIOR_MAX_IMAGE_BYTES", str(int(2.5 * nbytes)))
    with pytest.raises(ImageReadError, match="needs about"):
        check_size("scan.nii", (100, 100, 50), 2)
    monkeypatch.setenv("SHAPEPRIOR_MAX_IMAGE_BYTES", str(int(3.5 * nbytes)))
    check_size("scan.nii", (100, 100, 50), 2)
    for bad in ("2G", "0", "-5", "1.5e9"):       # names the variable, not int()'s words
        monkeypatch.setenv("SHAPEPRIOR_MAX_IMAGE_BYTES", bad)
        with pytest.raises(ValueError, match=r"^\$SHAPEPRIOR_MAX_IMAGE_BYTES='.*' must be a"):
            check_size("scan.nii", (100, 100, 50), 2)


def test_an_image_given_as_a_label_map_is_refused(tmp_path, capsys):
    """An image where a label map belongs (KiTS19's imaging.nii.gz beside its
    segmentation.nii.gz; a CT or an MR given to refine) is refused in one line,
    naming what it holds; label maps of many labels, of 8 bits, or with a negative
    'ignore' value are read."""
    import hashlib

    from shapeprior.cli import main
    from shapeprior.io import ImageReadError, read_label_map
    from shapeprior.io._nifti import write_nifti
    from shapeprior.mesh import icosphere
    from shapeprior.model import model_from_shapes, save_model

    rng = np.random.default_rng(0)
    grid = (24, 40, 40)

    def write(name, a):
        f = tmp_path / name
        write_nifti(Volume(a, np.array([1.0, 1.0, 2.0]), np.zeros(3), np.eye(3)), f)
        return f

    ct = write("ct.nii.gz", rng.integers(-1024, 2000, grid).astype(np.int16))
    mr = write("mr.nii.gz", rng.integers(-30, 800, grid).astype(np.int16))
    for f in (ct, mr):       # the sample's extremes: near -1024 / -30
        with pytest.raises(ImageReadError, match=r"an image, not a label map \(\d+ distinct "
                                                 r"values from -\d+ to \d+"):
            read_label_map(f)
    many = write("parcels.nii.gz", (np.arange(np.prod(grid)) % 900).reshape(grid)
                 .astype(np.int16))
    ignore = np.zeros(grid, np.int16)
    ignore[:4] = -1
    ignore[8:12, 10:20, 10:20] = 2
    for f in (many, write("ignore.nii.gz", ignore),
              write("bytes.nii.gz", rng.integers(0, 256, grid).astype(np.uint8))):
        assert read_label_map(f).array.shape == grid
    # the command line: one line, exit 1, the input untouched
    v, faces = icosphere(2)
    save_model(model_from_shapes(np.stack([v * (10 + i) for i in range(4)]), faces),
               tmp_path / "m.npz")
    before = hashlib.sha256(ct.read_bytes()).hexdigest()
    rc = main(["refine", str(ct), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "m.npz")])
    err = capsys.readouterr().err
    assert rc == 1 and "ct.nii.gz: an image, not a label map" in err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()
    assert hashlib.sha256(ct.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_formats_under_non_utf8_names_are_read_and_leave_no_link(suffix, tmp_path,
                                                                     monkeypatch):
    """SimpleITK aborts the process on a path that is not UTF-8; such a file is
    read through a link with a clean name that keeps its suffix (the reader
    picks the format by it), and the link's folder is removed afterwards."""
    import os
    import tempfile

    import SimpleITK as sitk

    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetOrigin((-10.0, 20.0, 5.0))
    clean = tmp_path / f"clean{suffix}"
    sitk.WriteImage(img, str(clean))
    bad = tmp_path / os.fsdecode(b"\xff\xfe-scan" + suffix.encode())
    bad.write_bytes(clean.read_bytes())
    links = tmp_path / "tmp"
    links.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(links))
    a, b = read_volume(clean), read_volume(bad)
    assert np.array_equal(a.array, arr) and np.array_equal(b.array, arr)
    assert np.allclose(b.spacing, (0.7, 0.8, 2.5)) and np.allclose(b.origin, (-10, 20, 5))
    assert list(links.iterdir()) == []


def test_geometry_difference_names_the_first_field_and_agrees_with_volumes():
    """One implementation for header tuples and volumes: size in x, y, z order,
    the first argument's value first; spacing, direction, origin each within
    1e-3; "voxel positions" when each agrees alone but together they place the
    far voxels apart; '' on the same grid."""
    from shapeprior.io import geometry_difference

    a = Volume(np.zeros((4, 5, 6), np.uint8), np.array([0.5, 0.5, 10.0]),
               np.array([1.0, 2.0, 3.0]), np.eye(3))
    assert geometry_difference(a.geometry, a.geometry) == ""
    b = Volume(np.zeros((4, 5, 7), np.uint8), a.spacing, a.origin, a.direction)
    assert geometry_difference(b.geometry, a.geometry) == "size [7, 5, 4] vs [6, 5, 4]"
    assert a.grid_difference(b) == "size [7, 5, 4] vs [6, 5, 4]"
    moved = Volume(a.array, a.spacing, a.origin + [0, 0, 0.5], a.direction)
    assert a.grid_difference(moved) == "origin (LPS) [1.0, 2.0, 3.5] vs [1.0, 2.0, 3.0]"
    wider = Volume(a.array, a.spacing + [0, 0.01, 0], a.origin, a.direction)
    assert geometry_difference(wider.geometry, a.geometry).startswith("spacing [0.5, 0.51, 10.0]")
    # a tilt of 8e-4 rad: each direction entry within 1e-3, but 10 mm slices move 8e-3 mm
    t = 8e-4
    tilt = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    tilted = Volume(a.array, a.spacing, a.origin, tilt)
    assert geometry_difference(tilted.geometry, a.geometry) == "voxel positions"
    assert a.grid_difference(tilted) == "voxel positions" and not a.same_grid(tilted)
    # the same tilt on 0.5 mm voxels everywhere: within 1e-3 mm, the same grid
    fine = Volume(a.array, np.full(3, 0.5), a.origin, np.eye(3))
    fine_tilted = Volume(a.array, fine.spacing, a.origin, tilt)
    assert geometry_difference(fine_tilted.geometry, fine.geometry) == ""
    assert fine.grid_difference(fine_tilted) == "" and fine.same_grid(fine_tilted)


def test_geometry_checks_refuse_what_cannot_place_a_voxel(tmp_path):
    """check_geometry, the check every ITK-read header goes through: spacing 0,
    below 0 or not finite; an origin not finite; a direction matrix sheared by
    3 degrees. A rotated orthonormal matrix within float32 rounding passes. A
    MetaImage with a 3-degree shear, which MetaIO reads as given, is refused."""
    import SimpleITK as sitk

    from shapeprior.io import ImageReadError
    from shapeprior.io._checks import check_geometry

    t = np.deg2rad(25.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])
    check_geometry("ok.mha", [0.7, 0.7, 3.0], rot.astype(np.float32).astype(float), [1, 2, 3])
    shear = rot.copy()
    shear[0, 1] += np.sin(np.deg2rad(3.0))
    for spacing, direction, origin, words in (
            ([1.0, 0.0, 1.0], rot, [0, 0, 0], "spacing"),
            ([1.0, -1.0, 1.0], rot, [0, 0, 0], "spacing"),
            ([1.0, np.nan, 1.0], rot, [0, 0, 0], "spacing"),
            ([1.0, 1.0, 1.0], rot, [0, np.nan, 0], "origin"),
            ([1.0, 1.0, 1.0], rot, [np.inf, 0, 0], "origin"),
            ([1.0, 1.0, 1.0], shear, [0, 0, 0], "not orthonormal")):
        with pytest.raises(ImageReadError, match=words):
            check_geometry("bad.mha", spacing, direction, origin)
    img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    sitk.WriteImage(img, str(tmp_path / "a.mha"))
    text = (tmp_path / "a.mha").read_bytes()
    m = " ".join(f"{v:.6f}" for v in shear.T.ravel()).encode()
    (tmp_path / "sheared.mha").write_bytes(text.replace(b"TransformMatrix = 1 0 0 0 1 0 0 0 1",
                                                        b"TransformMatrix = " + m))
    with pytest.raises(ImageReadError, match="sheared.mha: the direction matrix is not orthon"):
        read_volume(tmp_path / "sheared.mha")


def test_a_folder_of_several_series_lists_what_tells_them_apart(tmp_path):
    """The error that asks for --series names each series' modality, slice size and
    plane (an axial CT, a sagittal MR, an axial MR tilted 11 degrees), so the user
    can choose without opening the files; nothing that names anyone."""
    from _phantoms import rotation, write_dicom_series

    from shapeprior.io import ImageReadError

    arr = np.zeros((4, 6, 8), np.int16)
    write_dicom_series(Volume(arr, [1.0, 1.0, 2.0], [0.0, 0.0, 0.0], np.eye(3)),
                       tmp_path / "a", modality="CT", series_uid="1.2.3.1")
    sag = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])   # rows y, cols z
    write_dicom_series(Volume(arr, [1.0, 1.0, 2.0], [0.0, 0.0, 0.0], sag),
                       tmp_path / "b", series_uid="1.2.3.2")
    write_dicom_series(Volume(arr[:, :5], [1.0, 1.0, 2.0], [0.0, 0.0, 0.0],
                              rotation(0, 11.0)), tmp_path / "c", series_uid="1.2.3.3")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for sub in "abc":
        for f in (tmp_path / sub).iterdir():
            f.rename(mixed / f"{sub}{f.name}")
    with pytest.raises(ImageReadError) as err:
        read_image(mixed)
    msg = str(err.value)
    assert "holds 3 DICOM series" in msg
    for words in ("4 files, CT, 6 x 8, axial, 2 mm slices)",
                  "4 files, MR, 6 x 8, sagittal, 2 mm slices)",
                  "4 files, MR, 5 x 8, axial tilted 11 deg, 2 mm slices)"):
        assert words in msg, msg


def test_series_without_uids_are_told_apart(tmp_path):
    """Two series whose anonymiser removed every Series Instance UID (as in
    TotalSegmentator's example series), a second reconstruction 100 mm higher
    with thinner slices, in one folder: before, they were one 'series' with
    non-uniform spacing that no --series could split; now each is its own
    series, listed with its number and thickness, and each reads as written."""
    import pydicom

    from _phantoms import write_dicom_series

    from shapeprior.io import ImageReadError

    arr = np.arange(4 * 6 * 8, dtype=np.int16).reshape(4, 6, 8)
    vols = {"a": Volume(arr, [1.0, 1.0, 2.0], [0.0, 0.0, 0.0], np.eye(3)),
            "b": Volume(arr[::-1].copy(), [1.0, 1.0, 1.0], [0.0, 0.0, 100.0], np.eye(3))}
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for sub, number in (("a", 1), ("b", 2)):
        write_dicom_series(vols[sub], tmp_path / sub, modality="CT", series_uid=f"1.2.3.{number}")
        for f in (tmp_path / sub).iterdir():
            ds = pydicom.dcmread(f)
            del ds.SeriesInstanceUID
            ds.SeriesNumber = number
            ds.save_as(mixed / f"{sub}{f.name}")
    with pytest.raises(ImageReadError) as err:
        read_image(mixed)
    msg = str(err.value)
    assert "holds 2 DICOM series" in msg
    assert "4 files, CT, series 1, 6 x 8, axial, 2 mm slices)" in msg
    assert "4 files, CT, series 2, 6 x 8, axial, 1 mm slices)" in msg
    seen = set()
    for index in (0, 1):
        vol, info = read_image(mixed, series=index)
        want = vols["a" if vol.spacing[2] == 2.0 else "b"]
        assert np.array_equal(vol.array, want.array)
        assert np.allclose(vol.origin, want.origin) and np.allclose(vol.spacing, want.spacing)
        seen.add(info["series_key"])
    assert len(seen) == 2
    # by key: the same series again; and a SEG of each refers to a derived series UID
    # of its own
    from shapeprior.io import write_dicom_seg

    refs = set()
    for key in sorted(seen):
        vol, info = read_image(mixed, series=key)
        assert info["series_key"] == key
        write_dicom_seg(tmp_path / f"{key}.dcm", (vol.array > 100).astype(np.uint8), vol, mixed,
                        series_key=key, organ="kidney")
        seg = pydicom.dcmread(tmp_path / f"{key}.dcm")
        refs.add(str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID))
    assert len(refs) == 2
    # an oblique series whose direction cosines differ in their last digits (and
    # signs of zero) from slice to slice stays one series
    from _phantoms import rotation

    write_dicom_series(Volume(arr, [1.0, 1.0, 2.0], [0.0, 0.0, 0.0], rotation(0, 45.0)),
                       tmp_path / "obl", series_uid="1.2.3.9")
    for k, f in enumerate(sorted((tmp_path / "obl").iterdir())):
        ds = pydicom.dcmread(f)
        del ds.SeriesInstanceUID
        ds.ImageOrientationPatient = [float(v) + (-1) ** k * 5e-7
                                      for v in ds.ImageOrientationPatient]
        ds.save_as(f)
    vol, info = read_image(tmp_path / "obl")
    assert info["n_series_in_folder"] == 1 and vol.array.shape == arr.shape


def test_the_same_voxels_in_another_axis_order_are_placed_as_itk_places_them():
    """A label map that stores the image's voxels in another order and sense of its
    axes (any of the 48 orientations ITK's DICOMOrient gives, here of an oblique
    grid) is placed on the image's grid voxel for voxel; a grid rotated by a few
    degrees is not (it would need interpolation)."""
    import itertools

    import SimpleITK as sitk

    rng = np.random.default_rng(4)
    a = np.radians(20.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0, 0, 1.0]])
    base = Volume(rng.integers(0, 5, (7, 6, 5)).astype(np.uint8), np.array([0.8, 0.9, 2.5]),
                  np.array([-12.0, 30.5, 7.25]), rot)
    img = base.to_sitk()
    codes = {"".join(p) for p in itertools.product("LR", "PA", "SI")}
    codes = {"".join(c[i] for i in perm) for c in codes for perm in itertools.permutations(range(3))}
    assert len(codes) == 48
    for code in sorted(codes):
        o = sitk.DICOMOrient(img, code)
        other = Volume(sitk.GetArrayFromImage(o), np.array(o.GetSpacing()),
                       np.array(o.GetOrigin()), np.array(o.GetDirection()).reshape(3, 3))
        assert np.array_equal(other.placed_on(base), base.array), code
        # and a crop of it: zeros where it holds no voxel
        crop = other.crop((1, 1, 1), (other.array.shape[0], other.array.shape[1] - 1,
                                      other.array.shape[2]))
        placed = crop.placed_on(base)
        assert placed is not None and np.count_nonzero(placed) == np.count_nonzero(crop.array)
    b = np.radians(3.0)
    tilt = np.array([[1.0, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    tilted = Volume(base.array, base.spacing, base.origin, rot @ tilt)
    assert tilted.reoriented_like(base) is None and tilted.placed_on(base) is None
    assert base.reoriented_like(base) is base


@pytest.mark.parametrize("qfac", [-1.0, -0.5, -3.0, 0.0, 0.5, 1.0, 2.0])
def test_a_qform_only_nifti_is_placed_as_itk_places_it_whatever_its_qfac(tmp_path, qfac):
    """pixdim[0] (qfac) should be 1 or -1. niftilib (ITK, FSL, AFNI) takes any
    negative value for -1 and any other for 1; nibabel resets every value but
    -1 to 1, so a qfac of -0.5 was read as the mirror image of what every
    other reader shows (the third axis flipped). A rotated, qform-only file
    with each qfac is placed here as SimpleITK places it."""
    import struct

    import nibabel as nib
    import SimpleITK as sitk
    from scipy.spatial.transform import Rotation

    aff = np.eye(4)
    aff[:3, :3] = Rotation.from_euler("xyz", [10, 20, 30], degrees=True).as_matrix() @ \
        np.diag([0.8, 0.9, 2.5])
    aff[:3, 2] *= -1.0                          # a left-handed grid: its qfac is -1
    aff[:3, 3] = [10.0, -20.0, 30.0]
    img = nib.Nifti1Image(np.arange(120, dtype=np.int16).reshape(4, 5, 6), None)
    img.header.set_qform(aff, code=1)
    img.header.set_sform(None, code=0)
    p = tmp_path / "q.nii"
    nib.save(img, p)
    raw = bytearray(p.read_bytes())
    struct.pack_into("<f", raw, 76, qfac)       # pixdim[0]
    p.write_bytes(bytes(raw))
    vol = read_volume(p)
    ref = sitk.ReadImage(str(p))
    assert np.allclose(vol.direction, np.reshape(ref.GetDirection(), (3, 3)), atol=1e-6)
    assert np.allclose(vol.spacing, ref.GetSpacing(), atol=1e-6)
    assert np.allclose(vol.origin, ref.GetOrigin(), atol=1e-5)
    assert np.array_equal(vol.array, sitk.GetArrayFromImage(ref))
