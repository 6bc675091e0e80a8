"""A DICOM file of a scan's folder that is damaged is never passed over in silence.

pydicom reads a file cut anywhere in its header without a word: the header then
lacks what came after the cut (the rows, the series UID), and the folder scan took
it for an object that is no image and passed it over. A slice cut so at either end
of a series left no gap for the spacing check: the scan was read one slice short,
exit code 0 (found on the TCIA oblique MR series, its last slice cut at 300 to
3,000 bytes: 21 slices of 22). Cut in the middle, the read was refused for
"non-uniform slice spacing", which did not say which file was at fault.
"""

import json

import numpy as np
import pytest

from shapeprior.cli import main
from shapeprior.io import ImageReadError, Volume, read_image

N_SLICES = 5


def _series(folder, uid="1.2.826.0.1.3680043.2.1125.1"):
    from _phantoms import write_dicom_series

    arr = (np.arange(N_SLICES * 6 * 8).reshape(N_SLICES, 6, 8) % 97).astype(np.int16)
    write_dicom_series(Volume(arr, [1.0, 1.0, 2.0], [0.0, 0.0, 0.0], np.eye(3)), folder,
                       series_uid=uid)
    return sorted(folder.iterdir())


def _offset(data, group, element):
    """Where the explicit-VR little-endian tag (group, element) starts in ``data``."""
    tag = group.to_bytes(2, "little") + element.to_bytes(2, "little")
    at = data.find(tag, 132)
    assert at > 0
    return at


def _cut_points(data):
    """Byte counts to cut a slice at: inside its file meta; after the meta, before
    the series UID; inside the series UID (its first digits left); between the series
    UID and the rows; right before the pixel data."""
    return {"in the file meta": 150,
            "before the series UID": _offset(data, 0x0020, 0x000E) - 4,
            "inside the series UID": _offset(data, 0x0020, 0x000E) + 8 + 10,
            "before the rows": _offset(data, 0x0028, 0x0010),
            "before the pixel data": _offset(data, 0x7FE0, 0x0010)}


#: what the refusal says of each cut (None: the pixel reader's own words)
_REASONS = {"in the file meta": "its header holds no data set",
            "before the series UID": "its header ends at byte {n}, before its pixel data",
            "inside the series UID": "its header ends at byte {n}, before its pixel data",
            "before the rows": "its header ends at byte {n}, before its pixel data",
            "before the pixel data": None}


@pytest.mark.parametrize("where", list(_REASONS))
@pytest.mark.parametrize("end", [0, -1, 2])
def test_a_slice_cut_in_its_header_is_refused_naming_it(tmp_path, where, end):
    """Cut inside its series UID, the slice names a series that is not the scan's
    (the UID's first digits): its series is not trusted, and the scan is refused."""
    files = _series(tmp_path / "s")
    assert read_image(tmp_path / "s")[0].array.shape[0] == N_SLICES
    victim = files[end]
    data = victim.read_bytes()
    n = _cut_points(data)[where]
    victim.write_bytes(data[:n])
    with pytest.raises(ImageReadError) as err:
        read_image(tmp_path / "s")
    msg = str(err.value)
    assert victim.name in msg and "\n" not in msg, msg
    assert "spacing" not in msg, msg       # the file at fault, not what its absence did
    if _REASONS[where]:
        assert f"is a damaged DICOM file ({_REASONS[where].format(n=n)}" in msg, msg


def test_an_empty_slice_file_is_refused_and_a_hidden_companion_passed_over(tmp_path):
    files = _series(tmp_path / "s")
    (tmp_path / "s" / f"._{files[0].name}").write_bytes(b"\x00\x05\x16\x07" + bytes(78))
    assert read_image(tmp_path / "s")[0].array.shape[0] == N_SLICES
    files[-1].write_bytes(b"")
    with pytest.raises(ImageReadError, match=f"{files[-1].name} is a damaged DICOM file "
                                             r"\(it is empty\)"):
        read_image(tmp_path / "s")


def test_a_damaged_file_of_another_series_does_not_stop_this_one(tmp_path):
    """A cut file whose header still names its series, another one than the scan's,
    is not one of the scan's slices: the scan reads whole."""
    files = _series(tmp_path / "s")
    other = _series(tmp_path / "o", uid="1.2.826.0.1.3680043.2.1125.2")[0]
    data = other.read_bytes()
    (tmp_path / "s" / "other.dcm").write_bytes(data[:_offset(data, 0x0028, 0x0010)])
    vol, info = read_image(tmp_path / "s")
    assert info["n_slices"] == N_SLICES and vol.array.shape[0] == N_SLICES
    # cut before its series UID, it could be one of the scan's slices
    (tmp_path / "s" / "other.dcm").write_bytes(data[:_offset(data, 0x0020, 0x000E) - 4])
    with pytest.raises(ImageReadError, match="other.dcm is a damaged DICOM file"):
        read_image(tmp_path / "s")
    assert len(files) == N_SLICES


def test_a_folder_of_damaged_files_only_says_so(tmp_path):
    files = _series(tmp_path / "s")
    for f in files:
        data = f.read_bytes()
        f.write_bytes(data[:_offset(data, 0x0028, 0x0010)])
    with pytest.raises(ImageReadError, match=f"no readable DICOM image series in s: "
                                             f"{files[0].name} is a damaged DICOM file "
                                             rf"\(.*\) \(and {N_SLICES - 1} more\)"):
        read_image(tmp_path / "s")


def test_segment_refuses_a_scan_with_a_cut_end_slice_and_a_batch_fails_its_row(
        phantom_model, tmp_path, capsys):
    """One line and exit code 1 for the scan alone; in a folder of cases the case's
    row fails with that reason and no output folder, and so does a case whose every
    DICOM file is damaged (with the files' reason); the other case is segmented.
    The inputs are untouched."""
    _, images, _, model = phantom_model
    from _phantoms import write_dicom_series
    from _safety import tree_state

    vol = read_image(images / "phantom_006.nii.gz")[0]

    cases = tmp_path / "cases"
    write_dicom_series(vol, cases / "whole")
    files = sorted(write_dicom_series(vol, cases / "cut", series_uid="1.2.3.4").iterdir())
    data = files[-1].read_bytes()
    files[-1].write_bytes(data[:_offset(data, 0x0028, 0x0010)])
    # a case whose every file is damaged: its row gave the reason of a folder without
    # DICOM files ("no DICOM image series in this folder")
    broken = sorted(write_dicom_series(vol, cases / "broken", series_uid="1.2.3.5").iterdir())
    for f in broken:
        f.write_bytes(f.read_bytes()[:150])
    before = tree_state(cases)

    rc = main(["segment", str(cases / "cut"), "-o", str(tmp_path / "one"), "--model",
               str(model)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err and f"{files[-1].name} is a damaged DICOM" in err, err
    assert not (tmp_path / "one").exists()

    rc = main(["segment", str(cases), "-o", str(tmp_path / "batch"), "--model", str(model)])
    assert rc == 1
    rows = {r["case"]: r for r in
            json.loads((tmp_path / "batch" / "summary.json").read_text())["cases"]}
    assert rows["cut"]["status"] == "failed" and "damaged DICOM file" in rows["cut"]["error"]
    assert rows["broken"]["status"] == "failed" and rows["broken"]["error"].endswith(
        f"no readable DICOM image series in this folder: {broken[0].name} is a damaged DICOM "
        f"file (its header holds no data set (damaged, or cut short)) (and {len(broken) - 1} "
        "more)"), rows["broken"]["error"]
    assert not (tmp_path / "batch" / "broken").exists()
    assert rows["whole"]["status"] in ("ok", "suspect")
    assert not (tmp_path / "batch" / "cut").exists()
    assert tree_state(cases) == before


def test_a_slice_whose_series_uid_was_damaged_is_refused_not_passed_over(tmp_path):
    """Bytes flipped in a slice's Series Instance UID made it a series of its own,
    passed over as one image beside the scan (the fuzzer found it: the series read
    one slice short). A whole series of UIDs that are not digits and dots, as some
    anonymisers write them, is still read."""
    files = _series(tmp_path / "s")
    data = files[-1].read_bytes()
    at = _offset(data, 0x0020, 0x000E) + 8 + 3          # a digit inside the UID's value
    files[-1].write_bytes(data[:at] + b"\x7f" + data[at + 1:])
    with pytest.raises(ImageReadError, match=f"{files[-1].name} is a damaged DICOM file "
                                             r"\(its Series Instance UID holds other"):
        read_image(tmp_path / "s")
    hexed = _series(tmp_path / "h", uid="1.2.826.0.1.3680043.2.1125.9")
    for f in hexed:
        f.write_bytes(f.read_bytes().replace(b"1.2.826.0.1.3680043.2.1125.9",
                                             b"1.2.826.0.1.3680043.2.1125.a"))
    assert read_image(tmp_path / "h")[1]["n_slices"] == N_SLICES


@pytest.mark.parametrize("damage", ["sop class", "magic", "series uid removed"])
def test_a_slice_damaged_so_that_it_looked_like_no_image_is_refused(tmp_path, damage):
    """Bytes flipped in a slice's file meta (its SOP class, or the DICM magic) made
    pydicom read it as another object or none, and a slice whose Series Instance UID
    is gone was a series of its own: each was passed over and the scan read short."""
    import pydicom

    files = _series(tmp_path / "s")
    victim = files[-1]
    data = victim.read_bytes()
    if damage == "sop class":
        at = data.index(b"1.2.840.10008.5.1.4.1.1.4") + 3
        victim.write_bytes(data[:at] + b"\xfc" + data[at + 1:])
        why = r"its SOP Class UID is missing or damaged"
    elif damage == "magic":
        victim.write_bytes(data[:128] + b"DXCM" + data[132:])
        why = r"named as DICOM, it holds no DICOM header"
    else:
        ds = pydicom.dcmread(victim)
        del ds.SeriesInstanceUID
        ds.save_as(victim)
        why = r"it has no Series Instance UID, unlike the other images beside it"
    with pytest.raises(ImageReadError, match=f"{victim.name} is a damaged DICOM file "
                                             rf"\({why}"):
        read_image(tmp_path / "s")


def test_a_data_set_without_the_preamble_beside_the_scan_is_passed_over(tmp_path):
    """An older writer's DICOM file (no preamble, no ``DICM``) of another series is
    no damage: the scan reads, as before."""
    import pydicom
    from pydicom.dataset import Dataset

    _series(tmp_path / "s")
    other = pydicom.dcmread(_series(tmp_path / "o", uid="1.2.826.0.1.3680043.2.1125.2")[0])
    bare = Dataset()
    bare.update(other)
    pydicom.dcmwrite(tmp_path / "s" / "old.dcm", bare, enforce_file_format=False,
                     implicit_vr=True, little_endian=True)
    assert (tmp_path / "s" / "old.dcm").read_bytes()[128:132] != b"DICM"
    assert read_image(tmp_path / "s")[1]["n_slices"] == N_SLICES


def test_a_damaged_uid_is_never_printed(phantom_model, tmp_path):
    """pydicom warned about a value that does not fit its value representation,
    quoting it: segment printed the damaged Series Instance UID on stderr (two lines
    before its own). Now the one line names the file, never the UID (a fresh
    process: pydicom's setting is the process's)."""
    from _safety import _subprocess

    files = _series(tmp_path / "s", uid="1.2.826.0.1.3680043.2.1125.77")
    data = files[-1].read_bytes()
    at = _offset(data, 0x0020, 0x000E) + 8 + 3
    files[-1].write_bytes(data[:at] + b"\x7f" + data[at + 1:])
    rc, _, err = _subprocess(["segment", str(tmp_path / "s"), "-o", str(tmp_path / "o"),
                              "--model", str(phantom_model[3])])
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert "damaged DICOM file" in err and "3680043" not in err, err
