"""The readers against the reference libraries, on the test files they ship.

Every NIfTI file shipped inside nibabel and every DICOM file and series
shipped inside pydicom (plus nibabel's enhanced multi-frame MR), and
variants derived from them (q/s-form code combinations, shear, byte order,
bit depth, scaling, truncation, NaN, 32-bit big-endian series, an RT dose
beside a CT series), must either be read with the same physical position
of the corner voxels as nibabel/pydicom place them (<= 1e-3 mm) and the
same values, or be refused with one clear line. Never a different geometry,
never a traceback.
"""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from shapeprior.io import ImageReadError, read_image, read_volume

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

LPS = np.diag([-1.0, -1.0, 1.0])
NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
NIB_NICOM = Path(nib.__file__).parent / "nicom" / "tests" / "data"


def _corners(shape_xyz):
    return np.array([[i, j, k] for i in (0, shape_xyz[0] - 1) for j in (0, shape_xyz[1] - 1)
                     for k in (0, shape_xyz[2] - 1)], dtype=float)


def _refused_cleanly(exc):
    msg = str(exc)
    assert isinstance(exc, (ImageReadError, FileNotFoundError)), repr(exc)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


def compare_nifti(path, allow=False):
    """'read' when shapeprior and nibabel agree, or the refusal message."""
    try:
        vol = read_volume(path, allow_no_orientation=allow)
    except Exception as exc:  # noqa: BLE001 - judged below
        return _refused_cleanly(exc)
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    data = data.reshape(data.shape[:3])
    assert vol.array.shape == data.shape[::-1]
    assert np.array_equal(vol.array, data.transpose(2, 1, 0), equal_nan=True)
    c = _corners(data.shape)
    ref = (img.affine @ np.c_[c, np.ones(len(c))].T).T[:, :3] @ LPS
    assert np.abs(vol.index_to_physical(c) - ref).max() <= 1e-3, path
    return "read"


def nibabel_files():
    files = []
    for f in sorted(NIB_DATA.iterdir()):
        n = f.name.lower()
        if n.endswith((".nii", ".nii.gz")) or (n.endswith(".hdr") and "+" not in n):
            files.append(f)
    return files


@pytest.mark.parametrize("path", nibabel_files(), ids=lambda p: p.name)
def test_nibabel_shipped_nifti(path):
    compare_nifti(path)
    compare_nifti(path, allow=True)


@pytest.fixture(scope="module")
def base_image():
    img = nib.load(str(NIB_DATA / "anatomical.nii"))
    data = np.asanyarray(img.dataobj).astype(np.float32)
    return data, img.affine


def _save(path, data, qform, qcode, sform, scode, cls=None, dtype=None, endian=None):
    cls = cls or nib.Nifti1Image
    dt = np.dtype(dtype or data.dtype)
    img = cls(np.asarray(data, dtype=dt), sform, dtype=dt)
    img.set_qform(qform, code=qcode)
    img.set_sform(sform, code=scode)
    if endian:
        hdr = img.header.as_byteswapped(endian)
        img = cls(img.get_fdata().astype(dtype or data.dtype), None, header=hdr)
    nib.save(img, str(path))
    return path


CODES = [(0, 0), (1, 0), (0, 1), (1, 1), (1, 2), (2, 4), (2, 0), (0, 3), (4, 2)]


@pytest.mark.parametrize("q,s", CODES)
@pytest.mark.parametrize("cls", ["Nifti1Image", "Nifti2Image"])
def test_qform_sform_precedence_as_nibabel(tmp_path, base_image, q, s, cls):
    data, aff = base_image
    rot = np.eye(4)
    th = np.deg2rad(12)
    rot[:3, :3] = [[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]]
    qaff = aff.copy()
    saff = rot @ aff
    saff[:3, 3] += [25.6, -10.0, 3.0]                    # q and s disagree by 25.6+ mm
    p = _save(tmp_path / "x.nii.gz", data, qaff, q, saff, s, getattr(nib, cls))
    res = compare_nifti(p)
    if q == 0 and s == 0:
        assert "no orientation" in res
        assert compare_nifti(p, allow=True) == "read"
    else:
        assert res == "read"
        vol = read_volume(p)
        want = saff if s > 0 else qaff
        assert np.allclose(vol.origin, LPS @ want[:3, 3], atol=1e-3)


def test_sheared_sform_is_refused_naming_the_codes(tmp_path, base_image):
    data, aff = base_image
    sh = aff.copy()
    sh[0, 1] += 0.4
    p = _save(tmp_path / "s.nii", data, aff, 1, sh, 1)
    msg = compare_nifti(p)
    assert "sheared" in msg and "sform_code 1" in msg and "qform_code 1" in msg


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "uint16", "int32", "uint32",
                                   "int64", "uint64", "float32", "float64"])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_bit_depth_and_byte_order(tmp_path, base_image, dtype, endian):
    data, aff = base_image
    d = np.clip(data, 0, 120).astype(dtype)
    p = _save(tmp_path / "b.nii", d, aff, 1, aff, 1, dtype=dtype, endian=endian)
    assert compare_nifti(p) == "read"
    assert read_volume(p).array.dtype == np.dtype(dtype)


def test_compression_is_read_by_content_as_itk_does(tmp_path, base_image):
    """A ``.nii.gz`` that holds an uncompressed NIfTI is read as ITK reads it
    (zlib's gzopen passes plain bytes through; nibabel refuses it), voxels and
    geometry as its plain twin; a gzip stream named ``.nii`` is refused in one
    line naming the fix, as ITK and nibabel refuse it."""
    sitk = pytest.importorskip("SimpleITK")
    from shapeprior.io import read_geometry

    data, aff = base_image
    plain = _save(tmp_path / "plain.nii", data, aff, 1, aff, 1)
    named_gz = tmp_path / "plain_bytes.nii.gz"
    named_gz.write_bytes(plain.read_bytes())
    ref = read_volume(plain)
    vol = read_volume(named_gz)
    assert np.array_equal(vol.array, ref.array)
    assert vol.same_grid(ref) and np.allclose(vol.origin, ref.origin, atol=0)
    assert read_geometry(named_gz)[0] == ref.array.shape
    itk = sitk.ReadImage(str(named_gz))                 # ITK reads it, to the same voxels
    assert np.array_equal(sitk.GetArrayFromImage(itk), vol.array)
    assert np.allclose(itk.GetOrigin(), vol.origin, atol=1e-4)
    named_plain = tmp_path / "stream.nii"
    named_plain.write_bytes(gzip.compress(plain.read_bytes()))
    msg = compare_nifti(named_plain)
    assert "gzip stream" in msg and "stream.nii.gz" in msg
    with pytest.raises(RuntimeError):                   # ITK refuses it too
        sitk.ReadImage(str(named_plain))


def test_scaling_nan_and_truncation(tmp_path, base_image):
    data, aff = base_image
    img = nib.Nifti1Image(np.clip(data, 0, 200).astype(np.int16), aff)
    img.header.set_slope_inter(2.5, -3.0)
    nib.save(img, str(tmp_path / "scaled.nii"))
    assert compare_nifti(tmp_path / "scaled.nii") == "read"
    bad = data.copy()
    bad[1, 2, 3] = np.nan
    _save(tmp_path / "nan.nii.gz", bad, aff, 1, aff, 1)
    assert "NaN" in compare_nifti(tmp_path / "nan.nii.gz")
    for name in ("t.nii", "t.nii.gz"):
        p = _save(tmp_path / name, data, aff, 1, aff, 1)
        raw = p.read_bytes()
        p.write_bytes(raw[: len(raw) * 2 // 3])
        assert "truncated" in compare_nifti(p)
    pair = nib.Nifti1Pair(data, aff)
    nib.save(pair, str(tmp_path / "pair.img"))
    assert compare_nifti(tmp_path / "pair.hdr") == "read"
    raw = (tmp_path / "pair.img").read_bytes()
    (tmp_path / "pair.img").write_bytes(raw[:1000])
    assert "truncated" in compare_nifti(tmp_path / "pair.hdr")
    ana = nib.AnalyzeImage(data, aff)
    nib.save(ana, str(tmp_path / "ana.img"))
    assert "Analyze" in compare_nifti(tmp_path / "ana.hdr")
    assert compare_nifti(tmp_path / "ana.hdr", allow=True) == "read"


# -- DICOM -----------------------------------------------------------------------------------

def dicom_reference(files):
    """pydicom's own reading of a single-frame series: values (with the modality
    LUT) and per-slice corner positions, sorted along the slice normal."""
    from pydicom.pixels import apply_modality_lut

    dss = [pydicom.dcmread(f) for f in files]
    iop = np.array([float(v) for v in dss[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    dss.sort(key=lambda d: np.array([float(v) for v in d.ImagePositionPatient]) @ normal)
    vals = np.stack([apply_modality_lut(d.pixel_array, d) for d in dss])
    ps = [float(v) for v in dss[0].PixelSpacing]
    corners = []
    for d in dss:
        ipp = np.array([float(v) for v in d.ImagePositionPatient])
        for i in (0, int(d.Columns) - 1):
            for j in (0, int(d.Rows) - 1):
                corners.append(ipp + i * ps[1] * iop[:3] + j * ps[0] * iop[3:])
    return vals, np.array(corners)


def compare_dicom_folder(folder):
    """For each series of ``folder``: 'read' (agrees with pydicom) or the refusal."""
    from shapeprior.io import list_series

    out = []
    try:
        found = list_series(folder)
    except Exception as exc:  # noqa: BLE001
        return [_refused_cleanly(exc)]
    if not found:
        try:
            read_image(folder)
        except Exception as exc:  # noqa: BLE001
            return [_refused_cleanly(exc)]
        raise AssertionError("a folder without series was read")
    for idx, _, _, uid in found:
        try:
            vol, info = read_image(folder, series=idx)
        except Exception as exc:  # noqa: BLE001
            out.append(_refused_cleanly(exc))
            continue
        files = [f for f in sorted(Path(folder).iterdir()) if f.is_file()
                 and _uid(f) == uid]
        if info.get("multiframe"):
            compare_multiframe(files[0], vol)
        else:
            vals, corners = dicom_reference(files)
            assert np.array_equal(vol.array, vals.astype(vol.array.dtype)) and \
                np.allclose(vol.array, vals), folder
            n, r, c = vol.array.shape
            idx3 = np.array([[i, j, k] for k in range(n) for i in (0, c - 1)
                             for j in (0, r - 1)], dtype=float)
            assert np.abs(vol.index_to_physical(idx3) - corners).max() <= 1e-3, folder
        out.append("read")
    return out


def _uid(f):
    try:
        return str(pydicom.dcmread(f, stop_before_pixels=True).get("SeriesInstanceUID", ""))
    except Exception:  # noqa: BLE001
        return None


def compare_multiframe(path, vol):
    ds = pydicom.dcmread(path)
    a = ds.pixel_array
    pos = np.array([[float(v) for v in g.PlanePositionSequence[0].ImagePositionPatient]
                    for g in ds.PerFrameFunctionalGroupsSequence])
    g0 = ds.PerFrameFunctionalGroupsSequence[0]
    sh = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else g0
    po = (g0 if "PlaneOrientationSequence" in g0 else sh).PlaneOrientationSequence[0]
    iop = np.array([float(v) for v in po.ImageOrientationPatient])
    order = np.argsort(pos @ np.cross(iop[:3], iop[3:]))
    pm = (g0 if "PixelMeasuresSequence" in g0 else sh).PixelMeasuresSequence[0]
    ps = [float(v) for v in pm.PixelSpacing]            # (row step, column step)
    n, r, c = a.shape
    assert vol.array.shape == a.shape
    # values: the frames in slice order (with each frame's modality LUT)
    for k, f in enumerate(order):
        pvt = ds.PerFrameFunctionalGroupsSequence[f].get("PixelValueTransformationSequence") \
            or sh.get("PixelValueTransformationSequence")
        slope = float(pvt[0].RescaleSlope) if pvt else 1.0
        inter = float(pvt[0].RescaleIntercept) if pvt else 0.0
        assert np.allclose(vol.array[k], a[f] * slope + inter, atol=1e-3)
        assert np.abs(vol.index_to_physical(np.array([[0.0, 0.0, k]]))[0] - pos[f]).max() \
            <= 1e-3
        far = pos[f] + (c - 1) * ps[1] * iop[:3] + (r - 1) * ps[0] * iop[3:]
        assert np.abs(vol.index_to_physical(np.array([[c - 1.0, r - 1.0, k]]))[0]
                      - far).max() <= 1e-3


def pydicom_files():
    from pydicom.data import get_testdata_files

    return sorted(Path(f) for f in get_testdata_files() if Path(f).is_file())


@pytest.mark.parametrize("path", pydicom_files(), ids=lambda p: p.name)
def test_pydicom_shipped_file_alone_in_a_folder(tmp_path, path):
    shutil.copy(path, tmp_path / path.name)
    for r in compare_dicom_folder(tmp_path):
        assert r == "read" or r, r


@pytest.mark.parametrize("path", pydicom_files(), ids=lambda p: p.name)
def test_pydicom_shipped_file_given_as_a_file(tmp_path, path):
    """A DICOM file given where an image file is expected: read only when it is a
    volume of its own (an enhanced multi-frame image), then exactly as its folder
    reads; one slice of a series or a non-image object is refused in one line
    (ITK read a slice as a one-slice volume "that records no orientation")."""
    f = tmp_path / path.name
    shutil.copy(path, f)
    try:
        vol, info = read_image(f)
    except Exception as exc:  # noqa: BLE001 - judged below
        msg = _refused_cleanly(exc)
        assert "records no orientation" not in msg, msg
        return
    if info["format"] == "dicom-seg":           # a mask: read as a label map
        return
    assert info["multiframe"], info
    ref, _ = read_image(tmp_path)
    assert np.array_equal(vol.array, ref.array)
    assert all(np.allclose(a, b) for a, b in zip(vol.geometry[1:], ref.geometry[1:]))


def pydicom_series_folders():
    from pydicom.data import get_testdata_files

    roots = {Path(f).parent for f in get_testdata_files()}
    return sorted({p for r in roots for p in r.rglob("*") if p.is_dir()
                   and any(q.is_file() for q in p.iterdir())})


@pytest.mark.parametrize("folder", pydicom_series_folders(), ids=lambda p: p.name)
def test_pydicom_shipped_series(folder):
    res = compare_dicom_folder(folder)
    assert res


def _series_from(src, folder, n=4, bits32=False, offset=0):
    """A series of ``n`` slices made from one pydicom test file, keeping its
    transfer syntax (byte order); optionally re-encoded as 32-bit signed."""
    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(src)
    iop = np.array([float(v) for v in base.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    ipp = np.array([float(v) for v in base.ImagePositionPatient])
    a = base.pixel_array
    for k in range(n):
        ds = pydicom.dcmread(src)
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp + 2.5 * k * normal]
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{k + 1}"
        if bits32:
            big = ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2"
            v = (a.astype(np.int32) - offset + 7 * k)
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 1
            ds.PixelData = v.astype(">i4" if big else "<i4").tobytes()
        ds.save_as(folder / f"s{k}.dcm")
    return folder


def _edit_series(folder, **tags):
    """Set DICOM attributes (keyword=value) in every file of ``folder``."""
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        for k, v in tags.items():
            setattr(ds, k, v)
        ds.save_as(f)
    return folder


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
                                  "MR_small_implicit.dcm", "CT_small.dcm", "MR_small_RLE.dcm",
                                  "MR_small_padded.dcm"])
@pytest.mark.parametrize("bits32", [False, True])
def test_derived_series_byte_order_and_bit_depth(tmp_path, name, bits32):
    from pydicom.data import get_testdata_file

    if bits32 and "RLE" in name:
        pytest.skip("re-encoding RLE pixel data is out of scope")
    folder = _series_from(get_testdata_file(name), tmp_path / "s", bits32=bits32, offset=1000)
    assert compare_dicom_folder(folder) == ["read"]
    if bits32:       # the 32-bit big-endian case: negative values, not garbage
        vol, _ = read_image(folder)
        assert vol.array.min() < 0 and vol.array.max() < 5000


def test_rt_dose_beside_a_ct_series_is_skipped(tmp_path):
    from pydicom.data import get_testdata_file

    folder = _series_from(get_testdata_file("CT_small.dcm"), tmp_path / "ct")
    for n in ("rtdose.dcm", "rtdose_expb.dcm", "rtplan.dcm", "reportsi.dcm"):
        shutil.copy(get_testdata_file(n), folder / n)
    (folder / "notes.txt").write_text("not DICOM")
    from shapeprior.io import list_series

    assert len(list_series(folder)) == 1
    assert compare_dicom_folder(folder) == ["read"]
    vol, _ = read_image(folder, series=0)
    assert vol.array.shape[0] == 4


def test_a_series_mixing_pixel_spacings_is_refused(tmp_path):
    """ITK and GDCM read such a series with the first slice's spacing for all
    (one slice stretched onto the grid): it is refused instead."""
    from pydicom.data import get_testdata_file

    folder = _series_from(get_testdata_file("CT_small.dcm"), tmp_path / "s")
    assert compare_dicom_folder(folder) == ["read"]
    ds = pydicom.dcmread(folder / "s2.dcm")
    ds.PixelSpacing = [0.9, 0.9]
    ds.save_as(folder / "s2.dcm")
    with pytest.raises(ImageReadError, match="mixes pixel spacings"):
        read_image(folder)


@pytest.mark.parametrize("slope, intercept", [(20.0, -100.0), (0.37, 0.0), (1.0, 0.5)])
def test_a_compressed_series_whose_slices_scale_differently_keeps_each_slices_values(
        tmp_path, slope, intercept):
    """ITK decodes a series into the pixel type of its first slice: a later slice
    with a larger rescale slope wrapped round int16 (MR_small's values × 20, exit 0),
    one with a fractional slope or intercept was cut to integers. Each slice now gets
    its own modality LUT exactly, as the uncompressed series (pydicom's path) does:
    the same values and type."""
    from pydicom.data import get_testdata_file

    folder = _series_from(get_testdata_file("MR_small_RLE.dcm"), tmp_path / "s")
    ds = pydicom.dcmread(folder / "s2.dcm")
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.save_as(folder / "s2.dcm")
    raw = np.stack([pydicom.dcmread(folder / f"s{k}.dcm").pixel_array for k in range(4)])
    want = raw.astype(np.float64)
    want[2] = want[2] * slope + intercept
    assert np.abs(want).max() > 32767 or want[2].round().tolist() != want[2].tolist()
    got = read_image(folder)[0].array
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    for f in folder.iterdir():          # the same series uncompressed
        d = pydicom.dcmread(f)
        d.decompress()
        d.save_as(f)
    native = read_image(folder)[0].array
    assert native.dtype == got.dtype and np.array_equal(native, got)


def test_a_compressed_series_with_an_unsigned_slice_keeps_its_values(tmp_path):
    """The same for the stored bits: a native unsigned slice (values above 32767)
    in a series of signed RLE slices, the modality LUT the same throughout, was
    decoded into the first slice's int16 and wrapped round."""
    from pydicom.data import get_testdata_file

    folder = _series_from(get_testdata_file("MR_small_RLE.dcm"), tmp_path / "s")
    ds = pydicom.dcmread(folder / "s2.dcm")
    ds.decompress()
    assert ds.PixelRepresentation == 1
    high = ds.pixel_array.astype(np.int64) + 40000
    ds.PixelRepresentation = 0
    ds.PixelData = high.astype("<u2").tobytes()
    ds.save_as(folder / "s2.dcm")
    got = read_image(folder)[0].array
    assert got.dtype == np.int32 and np.array_equal(got[2], high)
    assert np.array_equal(got[1], pydicom.dcmread(folder / "s1.dcm").pixel_array)


def test_a_native_slice_short_of_pixel_data_in_a_compressed_series_is_refused(tmp_path):
    """A series mixing transfer syntaxes is decoded by GDCM, which pads a native
    slice's short pixel data with zeros (pydicom refuses it): that slice is
    refused in one line, and the same series with the slice whole reads as the
    compressed one."""
    from pydicom.data import get_testdata_file

    folder = _series_from(get_testdata_file("MR_small_RLE.dcm"), tmp_path / "s")
    whole = read_image(folder)[0].array
    ds = pydicom.dcmread(folder / "s2.dcm")
    ds.decompress()
    ds.save_as(folder / "s2.dcm")
    assert np.array_equal(read_image(folder)[0].array, whole)
    for cut in (len(ds.PixelData) // 2, 2):
        ds.PixelData = ds.PixelData[:-cut]
        ds.save_as(folder / "s2.dcm")
        with pytest.raises(ImageReadError, match="s2.dcm holds .* bytes of pixel data") as exc:
            read_image(folder)
        _refused_cleanly(exc.value)
        ds = pydicom.dcmread(folder / "s2.dcm")
        ds.PixelData = ds.PixelData + b"\0" * cut
    raw = (folder / "s2.dcm").read_bytes()
    (folder / "s2.dcm").write_bytes(raw[:-10])          # the file itself cut short
    with pytest.raises(ImageReadError, match="s2.dcm"):
        read_image(folder)


def test_a_series_with_several_images_per_position_is_refused_saying_so(tmp_path):
    """Two echoes stored as one series (each position twice) are no single
    volume; one slice stored twice is named as a duplicate."""
    from pydicom.data import get_testdata_file

    folder = _series_from(get_testdata_file("CT_small.dcm"), tmp_path / "s")
    for k in range(4):
        ds = pydicom.dcmread(folder / f"s{k}.dcm")
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.2"
        ds.save_as(folder / f"echo2_{k}.dcm")
    with pytest.raises(ImageReadError, match=r"8 images at 4 positions \(2 per position"):
        read_image(folder)
    for k in range(1, 4):
        (folder / f"echo2_{k}.dcm").unlink()
    with pytest.raises(ImageReadError, match=r"duplicate slice positions \(5 images at 4"):
        read_image(folder)


def test_a_fractional_rescale_intercept_gives_float_values(tmp_path):
    """RescaleIntercept -1024.5 (slope 1): the values keep their half, as
    pydicom's modality LUT gives them, instead of being cut to integers."""
    from pydicom.data import get_testdata_file

    folder = _edit_series(_series_from(get_testdata_file("CT_small.dcm"), tmp_path / "s"),
                          RescaleSlope="1", RescaleIntercept="-1024.5")
    assert compare_dicom_folder(folder) == ["read"]
    vol, _ = read_image(folder)
    assert vol.array.dtype.kind == "f" and np.allclose(vol.array % 1.0, 0.5)


@pytest.mark.parametrize("photometric", ["PALETTE COLOR", "YBR_FULL"])
def test_one_sample_colour_is_refused(tmp_path, photometric):
    """A palette image holds one sample per pixel, but its samples are indices
    into a colour table, not grey values."""
    from pydicom.data import get_testdata_file

    folder = _edit_series(_series_from(get_testdata_file("CT_small.dcm"), tmp_path / "s"),
                          PhotometricInterpretation=photometric)
    with pytest.raises(ImageReadError, match="colour data"):
        read_image(folder)


def test_an_rt_or_seg_object_without_a_modality_is_no_image_series(tmp_path):
    """Objects are told apart by their SOP class even when their Modality is
    blank: a segmentation or RT object with rows and columns is no CT."""
    from pydicom.data import get_testdata_file

    from shapeprior.io import list_series

    folder = _series_from(get_testdata_file("CT_small.dcm"), tmp_path / "ct")
    for k, sop in enumerate(("1.2.840.10008.5.1.4.1.1.66.4",       # segmentation
                             "1.2.840.10008.5.1.4.1.1.481.1")):    # RT image
        ds = pydicom.dcmread(folder / "s0.dcm")
        ds.SOPClassUID, ds.Modality = sop, ""
        ds.SeriesInstanceUID = f"{ds.SeriesInstanceUID}.9{k}"
        ds.save_as(folder / f"other{k}.dcm")
    assert len(list_series(folder)) == 1
    assert read_image(folder)[0].array.shape[0] == 4


def test_a_folder_is_listed_again_after_its_files_change(tmp_path):
    """The listing of a folder's headers is reused only while its files are
    the same: a slice added later is read."""
    from pydicom.data import get_testdata_file

    folder = _series_from(get_testdata_file("CT_small.dcm"), tmp_path / "s", n=5)
    (folder / "s4.dcm").rename(tmp_path / "s4.dcm")
    assert read_image(folder)[0].array.shape[0] == 4
    (tmp_path / "s4.dcm").rename(folder / "s4.dcm")
    assert read_image(folder)[0].array.shape[0] == 5


@pytest.mark.parametrize("thickness,gap", [(1.0, 1.5), (2.5, 0.0), (4.0, 0.0)])
def test_slice_gap_is_the_step_beyond_the_thickness(tmp_path, thickness, gap):
    """Slices 2.5 mm apart: 1 mm thick leaves a 1.5 mm gap between them;
    touching (2.5 mm) or overlapping (4 mm) slices leave none."""
    from pydicom.data import get_testdata_file

    folder = _edit_series(_series_from(get_testdata_file("CT_small.dcm"), tmp_path / "s"),
                          SliceThickness=f"{thickness:g}")
    _, info = read_image(folder)
    assert info["slice_spacing_mm"] == pytest.approx(2.5, abs=1e-4)
    assert info["slice_thickness_mm"] == thickness
    assert info["slice_gap_mm"] == pytest.approx(gap, abs=1e-4)


def test_rt_dose_alone_is_not_segmented(tmp_path):
    from pydicom.data import get_testdata_file

    shutil.copy(get_testdata_file("rtdose_expb.dcm"), tmp_path / "d.dcm")
    with pytest.raises(ImageReadError, match="no DICOM image series"):
        read_image(tmp_path)


def test_colour_dicom_refused_in_one_line(tmp_path):
    from pydicom.data import get_testdata_file

    folder = tmp_path / "rgb"
    folder.mkdir()
    src = pydicom.dcmread(get_testdata_file("SC_rgb_small_odd.dcm"))
    for k in range(3):
        src.ImagePositionPatient = [0, 0, 2 * k]
        src.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        src.PixelSpacing = [1, 1]
        src.SOPInstanceUID = f"1.2.3.{k}"
        src.save_as(folder / f"{k}.dcm")
    with pytest.raises(ImageReadError, match="colour"):
        read_image(folder)


def test_enhanced_multiframe_mr_in_a_folder(tmp_path):
    src = NIB_NICOM / "philips_mprage.dcm.gz"
    if not src.is_file():
        pytest.skip("nibabel's enhanced MR test file is not installed")
    (tmp_path / "mf.dcm").write_bytes(gzip.decompress(src.read_bytes()))
    assert compare_dicom_folder(tmp_path) == ["read"]
    vol, info = read_image(tmp_path)
    assert info["multiframe"] and vol.array.shape == (176, 256, 256)


def test_enhanced_multiframe_mr_given_as_a_file(tmp_path):
    """One enhanced multi-frame file is a volume: given as a file (segment's image,
    refine's --image) it reads as its folder does; so does its grid."""
    from shapeprior.io import read_geometry

    src = NIB_NICOM / "philips_mprage.dcm.gz"
    if not src.is_file():
        pytest.skip("nibabel's enhanced MR test file is not installed")
    import io

    ds = pydicom.dcmread(io.BytesIO(gzip.decompress(src.read_bytes())))
    for g in ds.PerFrameFunctionalGroupsSequence:       # slabs thinner than their step
        g.PixelMeasuresSequence[0].SliceThickness = "0.5"
    f = tmp_path / "mf.dcm"
    ds.save_as(f)
    vol, info = read_image(f)
    ref, ref_info = read_image(tmp_path)
    assert info["multiframe"] and info["format"] == "dicom" and info["source"] == "dicom"
    for key in ("slice_spacing_mm", "slice_thickness_mm", "slice_gap_mm", "oblique"):
        assert info[key] == ref_info[key], key
    assert info["slice_gap_mm"] > 0
    assert np.array_equal(vol.array, ref.array)
    assert all(np.allclose(a, b) for a, b in zip(vol.geometry[1:], ref.geometry[1:]))
    shape, spacing, origin, direction = read_geometry(f)
    assert shape == vol.array.shape and np.allclose(spacing, vol.spacing)
    assert np.allclose(origin, vol.origin) and np.allclose(direction, vol.direction)


def test_one_slice_or_a_contour_set_given_as_a_file_says_what_to_give(tmp_path):
    """A slice of a series given instead of its folder, and an RTSTRUCT given as a
    mask or reference, are refused naming what they are and what to give."""
    from pydicom.data import get_testdata_file

    from shapeprior.io import read_label_map

    ct = tmp_path / "slice.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), ct)
    with pytest.raises(ImageReadError, match=r"slice\.dcm is one slice of a DICOM series "
                       r"\(a single-frame CT image\); give the folder"):
        read_image(ct)
    rt = tmp_path / "rt.dcm"
    shutil.copy(get_testdata_file("rtstruct.dcm"), rt)
    with pytest.raises(ImageReadError, match=r"rt\.dcm is a DICOM file holding an RT "
                       r"Structure Set \(contours, not a label map\): convert its "
                       r"structure to a label map on the scan's grid and give that "
                       r"\(shapeprior convert-rtstruct rt\.dcm --image SCAN -o FOLDER\)"):
        read_label_map(rt)


@pytest.mark.parametrize("luts", ["own", "identity"])
def test_enhanced_multiframe_shuffled_frames_own_luts_and_rectangular_pixels(tmp_path, luts):
    """nibabel's enhanced MR rewritten with its frames in a shuffled order,
    rectangular pixels (0.9 mm between rows, 1.2 mm between columns), and each
    frame with its own rescale slope (or none: the raw values): read in slice
    order, each frame through its own modality LUT, every corner where
    pydicom's headers put it."""
    src = NIB_NICOM / "philips_mprage.dcm.gz"
    if not src.is_file():
        pytest.skip("nibabel's enhanced MR test file is not installed")
    import io

    ds = pydicom.dcmread(io.BytesIO(gzip.decompress(src.read_bytes())))
    keep = np.arange(0, int(ds.NumberOfFrames), 8)          # 22 frames: a small file
    perm = np.random.default_rng(3).permutation(keep)
    groups = ds.PerFrameFunctionalGroupsSequence
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence([groups[int(i)] for i in perm])
    # the shipped pixels are all 0: each frame gets its own pattern
    r, c = np.mgrid[:int(ds.Rows), :int(ds.Columns)]
    pix = np.stack([300 * int(i) + (r + 2 * c) % 256 for i in perm]).astype(np.uint16)
    ds.PixelData = pix.tobytes()
    ds.NumberOfFrames = len(perm)
    for k, g in enumerate(ds.PerFrameFunctionalGroupsSequence):
        g.PixelMeasuresSequence[0].PixelSpacing = [0.9, 1.2]
        own = luts == "own"
        g.PixelValueTransformationSequence[0].RescaleSlope = f"{1.0 + 0.25 * k * own:g}"
        g.PixelValueTransformationSequence[0].RescaleIntercept = f"{-3 * k * own}"
    ds.save_as(tmp_path / "mf.dcm")
    assert compare_dicom_folder(tmp_path) == ["read"]
    vol, _ = read_image(tmp_path)
    assert np.allclose(vol.spacing[:2], [1.2, 0.9])


def test_nibabel_shipped_dicom_pair_is_a_sheared_stack(tmp_path):
    """Its two slices differ only in z while the slice normal is tilted: a
    rectilinear grid would misplace the second slice by 0.016 mm."""
    for f in ("0.dcm", "1.dcm"):
        shutil.copy(NIB_DATA / f, tmp_path / f)
    [res] = compare_dicom_folder(tmp_path)
    assert "sheared stack" in res


# -- round trip: segment, then open the label with nibabel -------------------------------------

@pytest.mark.parametrize("q,s", [(1, 0), (0, 1), (1, 1), (1, 2), (2, 4), (0, 2), (3, 0)])
def test_segment_label_lands_on_the_input_voxels_in_nibabel(phantom_model, tmp_path, q, s):
    from shapeprior.cli import main
    from shapeprior.segmentation import dice

    _, images, labels, model = phantom_model
    img = nib.load(str(images / "phantom_006.nii.gz"))
    truth = np.asanyarray(nib.load(str(labels / "phantom_006.nii.gz")).dataobj) > 0
    true_aff = nib.load(str(labels / "phantom_006.nii.gz")).affine
    data = np.asanyarray(img.dataobj)
    off = true_aff.copy()
    off[:3, 3] += [25.6, 0, 0]                 # the transform that must be ignored
    qaff, saff = (off, true_aff) if s > 0 else (true_aff, off)
    p = _save(tmp_path / "in.nii.gz", data, qaff, q, saff, s)
    out = tmp_path / "out"
    assert main(["segment", str(p), "-o", str(out), "--model", str(model)]) == 0
    lab = nib.load(str(out / "label.nii.gz"))
    assert np.allclose(lab.affine, true_aff, atol=1e-3)
    assert lab.shape == data.shape
    h = lab.header
    code = s if s > 0 else q
    assert int(h["sform_code"]) == code
    if q > 0 and s > 0:     # the input's own qform kept: ITK reads the label as the input
        assert int(h["qform_code"]) == q and np.allclose(h.get_qform(), qaff, atol=1e-4)
    else:
        assert int(h["qform_code"]) == code
        assert np.allclose(h.get_qform(), h.get_sform(), atol=1e-4)
    # measured on this phantom: 0.97-0.98 with either transform; the 25.6 mm offset gives < 0.5
    assert dice(np.asanyarray(lab.dataobj) > 0, truth) > 0.93


def test_itk_errors_keep_the_reason(tmp_path):
    head = "ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_FLOAT\n"
    (tmp_path / "x.mhd").write_text(head + "ElementDataFile = short.raw\n")
    (tmp_path / "short.raw").write_bytes(bytes(100))
    (tmp_path / "y.mha").write_text("garbage")
    # a data file that is not there is named before ITK is asked
    (tmp_path / "z.mhd").write_text(head + "ElementDataFile = missing.raw\n")
    for name, why in (("x.mhd", "data not read completely"),
                      ("y.mha", "Unable to determine ImageIO"),
                      ("z.mhd", "z.mhd: its data file missing.raw is missing")):
        with pytest.raises(ImageReadError) as e:
            read_volume(tmp_path / name)
        msg = _refused_cleanly(e.value)
        assert why in msg and ".cxx" not in msg and "0x" not in msg, msg


def _rotation_from(v):
    """A rotation matrix from 3 numbers in [-1, 1] (a rotation vector of up to pi)."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.pi * np.asarray(v, float) / max(1.0, np.sqrt(3))).as_matrix()


def _geometry_strategy():
    from hypothesis import strategies as st

    unit = st.floats(-1.0, 1.0, allow_nan=False)
    return st.fixed_dictionaries({
        "q_rot": st.tuples(unit, unit, unit), "s_rot": st.tuples(unit, unit, unit),
        "q_flip": st.booleans(), "s_flip": st.sampled_from([None, 0, 1, 2]),
        "spacing": st.tuples(*[st.floats(0.3, 5.0) for _ in range(3)]),
        "q_shift": st.tuples(*[st.floats(-300.0, 300.0) for _ in range(3)]),
        "s_shift": st.tuples(*[st.floats(-300.0, 300.0) for _ in range(3)]),
        "qcode": st.integers(0, 4), "scode": st.integers(0, 4),
        "shape": st.tuples(*[st.integers(2, 5) for _ in range(3)]),
        "two": st.booleans(), "shear": st.sampled_from([0.0, 0.0, 0.0, 0.3])})


def _geometry_case(g):
    """``(qform, sform)`` 4x4 affines of an orthogonal geometry from a drawn ``g``:
    the sform is the qform's unless ``two`` (another rotation, axis flip and shift),
    sheared by ``shear``."""
    def affine(rot, flip, shift):
        r = _rotation_from(rot)
        if flip is not None:
            r = r @ np.diag([-1.0 if k == flip else 1.0 for k in range(3)])
        a = np.eye(4)
        a[:3, :3] = r @ np.diag(g["spacing"])
        a[:3, 3] = shift
        return a

    q = affine(g["q_rot"], 2 if g["q_flip"] else None, g["q_shift"])
    s = affine(g["s_rot"], g["s_flip"], g["s_shift"]) if g["two"] else q.copy()
    s[:3, 1] += g["shear"] * s[:3, 0]          # a sheared sform: its columns not orthogonal
    return q, s


def test_random_orthogonal_geometries_are_placed_as_nibabel_places_them(tmp_path_factory):
    """A geometry oracle over random headers: orthogonal qforms (a proper or an
    improper rotation, qfac -1) and sforms, which may disagree or be sheared,
    under every pair of codes. Wherever nibabel places the voxels (its affine:
    the sform when its code is set, else the qform), shapeprior places them at
    the same LPS positions within 1e-3 mm, as an image and as a label map; with
    both codes 0, or a sheared sform in use, it refuses in one line."""
    from hypothesis import HealthCheck, given, settings

    from shapeprior.io import read_label_map

    tmp = tmp_path_factory.mktemp("geometry")

    @settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_geometry_strategy())
    def check(g):
        q, s = _geometry_case(g)
        data = np.arange(np.prod(g["shape"]), dtype=np.uint8).reshape(g["shape"])
        img = nib.Nifti1Image(data, s)
        img.set_qform(q, code=g["qcode"])
        img.set_sform(s, code=g["scode"])
        p = tmp / "g.nii.gz"
        nib.save(img, str(p))
        back = nib.load(str(p))
        c = _corners(g["shape"])
        for read in (read_volume, read_label_map):
            if g["qcode"] == 0 and g["scode"] == 0:
                with pytest.raises(ImageReadError, match="no orientation"):
                    read(p)
                continue
            if g["scode"] > 0 and g["shear"]:
                with pytest.raises(ImageReadError, match="sheared"):
                    read(p)
                continue
            vol = read(p)
            want = (back.affine @ np.c_[c, np.ones(len(c))].T).T[:, :3] @ LPS
            assert np.abs(vol.index_to_physical(c) - want).max() <= 1e-3, g
            assert np.array_equal(vol.array, data.transpose(2, 1, 0))

    check()


def test_a_scout_beside_the_scan_is_not_asked_for(tmp_path):
    """A CT or MR download keeps its scout (one image) or its three-plane survey
    (ImageType LOCALIZER) beside the scan, in the scan's folder or a sibling:
    neither can be a volume, so the scan is read without --series and the
    download's patient folder is one case. Two volumes are still refused, each
    named; a scout alone is refused as a single slice."""
    from pydicom.data import get_testdata_file

    from shapeprior.io import series_folder, series_folders
    from shapeprior.pipeline import discover_cases

    ct = get_testdata_file("CT_small.dcm")
    scan = _series_from(ct, tmp_path / "both")
    ref, _ = read_image(scan)
    scout = _series_from(ct, tmp_path / "scout", n=1)
    _edit_series(scout, SeriesInstanceUID="1.2.3.4.1")
    shutil.copy(scout / "s0.dcm", scan / "scout.dcm")
    survey = _series_from(ct, tmp_path / "survey", n=3)
    _edit_series(survey, SeriesInstanceUID="1.2.3.4.2", ImageType=["ORIGINAL", "PRIMARY",
                                                                    "LOCALIZER"])
    for f in survey.iterdir():
        shutil.copy(f, scan / f"survey_{f.name}")
    vol, info = read_image(scan)
    assert np.array_equal(vol.array, ref.array) and info["n_slices"] == 4
    assert info["series_skipped_not_volumes"] == 2 and info["n_series_in_folder"] == 3
    # a download: patient/study/{1-CT, 2-scout}
    study = tmp_path / "dl" / "P1" / "ST"
    shutil.copytree(tmp_path / "both", study / "1-CT",
                    ignore=shutil.ignore_patterns("scout*", "survey*"))
    shutil.copytree(scout, study / "2-scout")
    assert series_folders(tmp_path / "dl" / "P1") == [study / "1-CT"]
    assert series_folder(tmp_path / "dl" / "P1") == study / "1-CT"
    shutil.copytree(tmp_path / "dl" / "P1", tmp_path / "dl" / "P2")
    assert [(c.name, c.error) for c in discover_cases(tmp_path / "dl")] == [("P1", None),
                                                                            ("P2", None)]
    vol, info = read_image(tmp_path / "dl" / "P1")
    assert np.array_equal(vol.array, ref.array) and info["series_levels_below"] == 2
    # two volumes: the user chooses, as before (the scout listed too)
    other = _series_from(ct, tmp_path / "other")
    _edit_series(other, SeriesInstanceUID="1.2.3.4.3")
    for f in other.iterdir():
        shutil.copy(f, scan / f"other_{f.name}")
    with pytest.raises(ImageReadError, match=r"both holds 4 DICOM series: .*; choose one") \
            as e:
        read_image(scan)
    assert str(e.value).count("not a volume (a localizer or one image)") == 2
    shutil.copytree(other, study / "3-CT")
    assert series_folders(tmp_path / "dl" / "P1") == [study / "1-CT", study / "3-CT"]
    # a scout alone is no volume: said as before
    with pytest.raises(ImageReadError, match=r"has a single slice; a 3-D volume is needed"):
        read_image(scout)
    assert series_folders(tmp_path / "scout") == [scout]


def test_a_series_kept_deeper_is_read_from_the_one_folder_that_holds_it(tmp_path):
    """A CD or USB export keeps its series in DICOM/PA0/ST0/SE0/ beside a DICOMDIR: the
    export's folder reads as that series does. Two series folders below are refused
    naming both; so is a folder with none, as before."""
    from pydicom.data import get_testdata_file

    from shapeprior.io import series_folder, series_folders

    cd = tmp_path / "cd"
    se = _series_from(get_testdata_file("CT_small.dcm"), cd / "DICOM" / "PA0" / "ST0" / "SE0")
    (cd / "DICOMDIR").write_bytes(b"not parsed")
    (cd / ".Trashes").mkdir()
    vol, info = read_image(cd)
    ref, _ = read_image(se)
    assert np.array_equal(vol.array, ref.array)
    assert all(np.allclose(a, b) for a, b in zip(vol.geometry[1:], ref.geometry[1:]))
    assert info["series_levels_below"] == 4 and info["n_slices"] == 4
    assert series_folder(cd) == se and series_folders(se) == [se]
    other = _series_from(get_testdata_file("CT_small.dcm"), cd / "DICOM" / "PA0" / "ST0" / "SE1")
    assert series_folders(cd) == [se, other] and series_folder(cd) == cd
    with pytest.raises(ImageReadError, match=r"^cd holds no DICOM image series itself; 2 "
                       r"folders \(DICOM/PA0/ST0/SE0, DICOM/PA0/ST0/SE1\) below it do: give "
                       r"the one to read$"):
        read_image(cd)
    # deeper than the search goes: not found, and said as before
    deep = tmp_path / "deep"
    _series_from(get_testdata_file("CT_small.dcm"), deep.joinpath(*"abcdefg"))
    assert series_folders(deep) == []
    with pytest.raises(ImageReadError, match="no DICOM image series found in deep"):
        read_image(deep)
