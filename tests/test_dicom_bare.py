"""A slice written without the DICOM preamble is read as a slice of its series.

An older writer's file (ACR-NEMA-era software, some PACS exports) holds the data
set alone: no 128-byte preamble, no ``DICM``, no file meta. GDCM (SimpleITK's
series reader, the reference here) reads it as a slice of its series. The folder
scan passed it over: a series with such a slice at either end was read one
slice short with exit code 0 (at the first position, its origin moved by a
slice), and one in the middle was refused for "non-uniform slice spacing".
"""

import json

import numpy as np
import pytest

from shapeprior.cli import main
from shapeprior.io import ImageReadError, Volume, read_image

N_SLICES = 5
UID = "1.2.826.0.1.3680043.2.1125.1"
#: (implicit VR, little endian) of the data sets written without the preamble
ENCODINGS = {"implicit-le": (True, True), "explicit-le": (False, True),
             "explicit-be": (False, False)}


def _volume():
    arr = ((np.arange(N_SLICES * 6 * 8).reshape(N_SLICES, 6, 8) * 37) % 1001 - 300)
    D = np.array([[1.0, 0.0, 0.0], [0.0, 0.8, -0.6], [0.0, 0.6, 0.8]])    # oblique
    return Volume(arr.astype(np.int16), [0.7, 0.9, 2.5], [-10.0, 20.0, -30.0], D)


def _series(folder):
    from _phantoms import write_dicom_series

    write_dicom_series(_volume(), folder, series_uid=UID)
    return sorted(folder.iterdir())


def _strip(path, encoding="implicit-le", name=None, pixels=True):
    """Rewrite the DICOM file ``path`` as its data set alone (no preamble, no
    file meta) in ``encoding``, as ``name`` in its folder (default: itself);
    ``pixels`` False drops its pixel data. Returns the new path."""
    import pydicom
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(path)
    bare = Dataset()
    bare.update(ds)
    implicit, little = ENCODINGS[encoding]
    if not pixels:
        del bare.PixelData
    elif not little:        # pydicom writes the pixel bytes as they are
        bare.PixelData = ds.pixel_array.astype(">i2").tobytes()
    out = path.with_name(name) if name else path
    path.unlink()
    pydicom.dcmwrite(out, bare, enforce_file_format=False, implicit_vr=implicit,
                     little_endian=little)
    head = out.read_bytes()[:132]
    assert head[128:132] != b"DICM" and head[:2] in (b"\x08\x00", b"\x00\x08")
    return out


def _gdcm(folder):
    """SimpleITK's (GDCM's) read of the series in ``folder``: (array, origin, spacing,
    direction)."""
    import SimpleITK as sitk

    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    r = sitk.ImageSeriesReader()
    r.SetFileNames(names)
    img = r.Execute()
    return (sitk.GetArrayFromImage(img), np.array(img.GetOrigin()), np.array(img.GetSpacing()),
            np.array(img.GetDirection()).reshape(3, 3))


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("at", [0, 2, -1], ids=["first", "middle", "last"])
def test_a_slice_without_the_preamble_is_read_with_its_series(tmp_path, at, encoding):
    """The whole series, voxel for voxel and with the geometry GDCM reads (little
    endian: GDCM finds no reader for a big-endian data set without file meta); before,
    4 of 5 slices (first, last: exit 0; the first moved the origin) or a refusal
    (middle)."""
    files = _series(tmp_path / "s")
    _strip(files[at], encoding)
    vol, info = read_image(tmp_path / "s")
    want = _volume()
    assert info["n_slices"] == N_SLICES
    assert np.array_equal(vol.array, want.array)
    np.testing.assert_allclose(vol.origin, want.origin, atol=1e-6)
    np.testing.assert_allclose(vol.spacing, want.spacing, atol=1e-6)
    np.testing.assert_allclose(vol.direction, want.direction, atol=1e-6)
    if encoding == "explicit-be":
        return              # GDCM finds no reader for it; pydicom's byte order is checked above
    arr, origin, spacing, direction = _gdcm(tmp_path / "s")
    assert np.array_equal(arr, vol.array)
    np.testing.assert_allclose(origin, vol.origin, atol=1e-6)
    np.testing.assert_allclose(spacing, vol.spacing, atol=1e-6)
    np.testing.assert_allclose(direction, vol.direction, atol=1e-6)


def test_a_series_written_without_the_preamble_throughout_reads(tmp_path):
    """Every slice so, one of them without a suffix (as PACS exports name files):
    the same volume."""
    files = _series(tmp_path / "s")
    for i, f in enumerate(files):
        _strip(f, "explicit-le" if i % 2 else "implicit-le",
               name=f"IM{i}" if i == 3 else None)
    vol, info = read_image(tmp_path / "s")
    assert info["n_slices"] == N_SLICES and np.array_equal(vol.array, _volume().array)


def test_a_slice_that_kept_its_file_meta_but_lost_the_preamble_is_read(tmp_path):
    """Its first 132 bytes (preamble and ``DICM``) gone, its file meta (group 0002)
    first: the transfer syntax is the meta's, and the series reads whole."""
    files = _series(tmp_path / "s")
    files[-1].write_bytes(files[-1].read_bytes()[132:])
    assert files[-1].read_bytes()[:2] == b"\x02\x00"
    vol, info = read_image(tmp_path / "s")
    assert info["n_slices"] == N_SLICES and np.array_equal(vol.array, _volume().array)


@pytest.mark.parametrize("at", [0, -1], ids=["first", "last"])
def test_such_a_slice_cut_short_is_refused_naming_it(tmp_path, at):
    """Cut in its header (before its rows), right before its pixel data, or inside
    them: refused in one line naming the file, never read one slice short."""
    files = _series(tmp_path / "s")
    bare = _strip(files[at])
    data = bare.read_bytes()
    rows, pixels = data.find(b"\x28\x00\x10\x00"), data.rfind(b"\xe0\x7f\x10\x00")
    assert 0 < rows < pixels
    bare.write_bytes(data[:rows])
    with pytest.raises(ImageReadError, match=rf"{bare.name} is a damaged DICOM file \(its "
                                             rf"header ends at byte {rows}, before its pixel"):
        read_image(tmp_path / "s")
    for cut in (pixels, pixels + 8 + 20):
        bare.write_bytes(data[:cut])
        with pytest.raises(ImageReadError, match=rf"slice {bare.name}: .*(no 'Pixel Data'|"
                                                 r"bytes of pixel data is less)"):
            read_image(tmp_path / "s")


def test_files_that_are_not_dicom_beside_the_series_are_still_passed_over(tmp_path):
    """The scan takes a file without the preamble for a slice only when it is not
    hidden, starts like a data set and names a SOP class of the standard: a text
    file, a binary of zeros, a data set of no standard class and a hidden copy of a
    slice are passed over."""
    import pydicom

    files = _series(tmp_path / "s")
    (tmp_path / "s" / "README").write_text("exported by a viewer\n")
    (tmp_path / "s" / "LOCK").write_bytes(b"\x00" * 4096)
    (tmp_path / "s" / ".hidden").write_bytes(files[0].read_bytes()[132:])
    odd = _strip(_copy(files[1], tmp_path / "s" / "ODD.dcm"), name="ODD")
    ds = pydicom.dcmread(odd, force=True)
    ds.SOPClassUID = "1.3.6.1.4.1.9590.100.1.1"
    pydicom.dcmwrite(odd, ds, enforce_file_format=False, implicit_vr=True, little_endian=True)
    vol, info = read_image(tmp_path / "s")
    assert info["n_slices"] == N_SLICES and np.array_equal(vol.array, _volume().array)


def test_a_raw_file_of_zeros_beside_the_series_is_not_read_as_a_data_set(tmp_path,
                                                                          monkeypatch):
    """A raw volume's data file (an Analyze ``.img``, a MetaImage ``.raw``) often
    starts with zeros; pydicom forced to read it as a data set walks it eight bytes at
    a time. Only a file that starts with group 0002 or 0008 is read so."""
    import pydicom

    _series(tmp_path / "s")
    for name in ("volume.img", "volume.raw", "DATA"):
        (tmp_path / "s" / name).write_bytes(b"\x00" * 65536)
    forced = []
    real = pydicom.dcmread

    def spy(fp, *a, **kw):
        if kw.get("force"):
            forced.append(getattr(fp, "name", fp))
        return real(fp, *a, **kw)

    monkeypatch.setattr(pydicom, "dcmread", spy)
    assert read_image(tmp_path / "s")[1]["n_slices"] == N_SLICES
    assert not [f for f in forced if str(f).endswith(("volume.img", "volume.raw", "DATA"))]


def test_a_file_meta_that_lost_its_transfer_syntax_is_not_read_as_if_intact(tmp_path):
    """Only a data set without any file meta has its syntax inferred: a slice whose
    file meta holds no Transfer Syntax UID (its tag's bytes flipped, as the fuzzer
    did) is damaged, and refused in one line, as GDCM refuses it."""
    files = _series(tmp_path / "s")
    data = files[-1].read_bytes()
    at = data.find(b"\x02\x00\x10\x00", 132)
    assert 132 < at < 400
    files[-1].write_bytes(data[:at + 2] + b"\x10\x9b" + data[at + 4:])
    with pytest.raises(ImageReadError, match="cannot read"):
        read_image(tmp_path / "s")


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def test_segment_writes_a_seg_and_structure_set_that_refer_to_such_a_slice(phantom_model,
                                                                            tmp_path):
    """segment on a phantom series whose first and last slices were written without
    the preamble: the label has every slice, and the DICOM-SEG and the structure set
    refer to the bare slices' instances too; the input folder is unchanged."""
    import pydicom

    from _phantoms import write_dicom_series
    from _safety import tree_state

    _, images, _, model = phantom_model
    vol, _ = read_image(images / "phantom_006.nii.gz")
    series = write_dicom_series(vol, tmp_path / "dicom")
    files = sorted(series.iterdir())
    bare = [_strip(files[0]), _strip(files[-1], "explicit-be")]
    uids = {str(pydicom.dcmread(b, force=True).SOPInstanceUID) for b in bare}
    state = tree_state(series)
    out = tmp_path / "out"
    assert main(["segment", str(series), "-o", str(out), "--model", str(model),
                 "--output-type", "nifti,dicom-seg,rtstruct"]) == 0
    assert tree_state(series) == state
    rep = json.loads((out / "report.json").read_text())
    assert rep["dicom_seg"]["written"] and rep["rtstruct"]["written"]
    from shapeprior.io import read_label_map

    label = read_label_map(out / "label.nii.gz")
    assert label.array.shape == vol.array.shape
    np.testing.assert_allclose(label.origin, vol.origin, atol=1e-4)
    rs = pydicom.dcmread(out / "rtstruct.dcm")
    listed = {str(c.ReferencedSOPInstanceUID) for c in rs.ReferencedFrameOfReferenceSequence[0]
              .RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
              .ContourImageSequence}
    assert uids <= listed and len(listed) == len(files)
    sg = pydicom.dcmread(out / "seg.dcm")
    refs = {str(i.ReferencedSOPInstanceUID)
            for s in sg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert uids <= refs and len(refs) == len(files)
