"""RT Structure Sets: contours filled on the scan's grid (``read_rtstruct``,
``shapeprior convert-rtstruct``)."""

import json
import os
import re
import shutil
import warnings

import numpy as np
import pytest

from _phantoms import rotation, write_dicom_series, write_rtstruct
from _safety import tree_state
from shapeprior.cli import main
from shapeprior.io import (ImageReadError, Volume, list_structures, read_label_map,
                           read_rtstruct, read_scan, scan_frame_of_reference)
from shapeprior.io._rtstruct import fill_polygon
from shapeprior.pipeline._run import UNCHECKED_INIT_FRAME_WARNING

FOR = "1.2.826.0.1.3680043.2.1125.1.9"       # write_dicom_series' Frame of Reference UID


def _ellipsoid(shape, centre, radii):
    zz, yy, xx = np.indices(shape)
    return sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre, radii)) < 1


# -- the fill --------------------------------------------------------------------------------

def test_fill_polygon_is_the_even_odd_rule_on_voxel_centres():
    """Random polygons, self-intersecting ones too, at positions where no voxel
    centre lies on an edge: exactly the centres that matplotlib's point-in-path
    test puts inside."""
    from matplotlib.path import Path as MPath

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:40, :37]
    centres = np.c_[xx.ravel(), yy.ravel()]
    for _ in range(150):
        n = int(rng.integers(3, 16))
        r, c = rng.uniform(-6, 46, n) + 0.123, rng.uniform(-6, 43, n) + 0.377
        want = MPath(np.c_[c, r]).contains_points(centres).reshape(40, 37)
        assert np.array_equal(fill_polygon(r, c, (40, 37)), want)


def test_fill_polygon_gives_each_voxel_of_a_tiling_to_one_polygon():
    """Two squares sharing an edge through voxel centres: no centre in both, none
    in neither (a structure drawn as two touching outlines has no seam)."""
    a = fill_polygon([2, 2, 8, 8], [1, 5, 5, 1], (12, 12))
    b = fill_polygon([2, 2, 8, 8], [5, 9, 9, 5], (12, 12))
    both = fill_polygon([2, 2, 8, 8], [1, 9, 9, 1], (12, 12))
    assert not (a & b).any() and np.array_equal(a | b, both)
    assert both.sum() == 6 * 8


# -- real scans --------------------------------------------------------------------------------

def test_contours_of_the_example_ct_series_fill_back_to_its_labels(data_root, tmp_path):
    """TotalSegmentator's example DICOM series, with four organs of its own
    label map drawn as a planning system stores them (outlines on each slice,
    holes as inner outlines, 3 decimals): filled back voxel for voxel, in the
    order asked for, by name (case aside) or ROI number; the Frame of Reference
    is checked against the series'."""
    d = data_root / "totalsegmentator_example"
    series = d / "example_ct_dicom"
    if not series.is_dir():
        pytest.skip("the example DICOM series is not in the shared data")
    vol, _ = read_scan(series)
    lab = read_label_map(d / "example_seg_dicom.nii.gz").reoriented_like(vol).array
    organs = {"Liver": lab == 5, "Spleen": lab == 1, "Stomach": lab == 6, "Aorta": lab == 52,
              "Isocentre": None}
    fr = scan_frame_of_reference(series)
    assert fr and fr.startswith("1.3.12.2.1107.5.1.4.60064")
    rt = write_rtstruct(tmp_path / "rt.dcm", vol, organs, frame_of_reference=fr)
    got, info = read_rtstruct(rt, vol, ["aorta", "#1", "STOMACH", "Spleen"], fr)
    assert got.same_grid(vol) and got.array.dtype == np.uint8
    for value, name in enumerate(("Aorta", "Liver", "Stomach", "Spleen"), start=1):
        assert np.array_equal(got.array == value, organs[name]), name
    assert info["frame_of_reference_checked"] and info["slice_axis"] == "z"
    assert info["overlap_voxels"] == 0
    liver = info["structures"][1]
    assert (liver["name"], liver["number"], liver["slices"]) == ("Liver", 1, 20)
    assert liver["contours"] > 20          # outlines of separate parts and holes
    assert liver["volume_ml"] == pytest.approx(organs["Liver"].sum() * np.prod(vol.spacing)
                                               / 1000)
    assert [(s["name"], s["closed_contours"], s["other_contours"])
            for s in list_structures(rt)][-1] == ("Isocentre", 0, 1)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_a_hollow_structure_on_the_oblique_mr_series_in_each_slice_orientation(
        data_root, tmp_path, slice_axis):
    """The TCIA oblique MR series (tilted 10.8 degrees): a shell (each slice's
    outline with a hole in it) drawn on axial-like, coronal-like or
    sagittal-like planes of its grid is filled back exactly."""
    series = data_root / "tcia_mr_dicom" / "Study3_T1post_oblique"
    if not series.is_dir():
        pytest.skip("the oblique TCIA series is not in the shared data")
    vol, info = read_scan(series)
    assert info["oblique"]
    c = np.array(vol.array.shape) / 2
    shell = _ellipsoid(vol.array.shape, c, 0.3 * c * [1, 1.3, 0.9]) & \
        ~_ellipsoid(vol.array.shape, c, 0.15 * c * [1, 1.3, 0.9])
    fr = scan_frame_of_reference(series)
    rt = write_rtstruct(tmp_path / "rt.dcm", vol, {"shell": shell}, frame_of_reference=fr,
                        slice_axis=slice_axis)
    got, got_info = read_rtstruct(rt, vol, frame_of_reference=fr)
    assert np.array_equal(got.array == 1, shell)
    assert got_info["slice_axis"] == "zyx"[slice_axis]


def test_pydicoms_structure_set_fills_its_outline_and_lists_its_isocentres():
    """pydicom's own RTSTRUCT (a 400 x 300 mm outline on three slices, two
    isocentre points) on a 10 mm grid that covers it."""
    from pydicom.data import get_testdata_file

    rt = get_testdata_file("rtstruct.dcm")
    assert [(s["number"], s["name"], s["closed_contours"], s["other_contours"])
            for s in list_structures(rt)] == [(1, "patient", 3, 0), (2, "Isocenter 1", 0, 1),
                                              (3, "Isocenter 2", 0, 1)]
    grid = Volume(np.zeros((5, 64, 64), np.int16), [10, 10, 10], [-300, -300, -200], np.eye(3))
    got, info = read_rtstruct(rt, grid)             # the one structure with outlines
    assert [int(n) for n in np.count_nonzero(got.array, axis=(1, 2))] == [1200] * 3 + [0, 0]
    assert not info["frame_of_reference_checked"]


# -- refusals ----------------------------------------------------------------------------------

@pytest.fixture
def scan():
    """A 24 x 40 x 36 oblique grid with a ball in it, and the ball's mask."""
    D = rotation(2, 20) @ rotation(0, 8)
    vol = Volume(np.zeros((24, 40, 36), np.int16), [0.8, 0.9, 2.5], [10.0, -40.0, 25.0], D)
    return vol, _ellipsoid(vol.array.shape, (12, 20, 18), (6, 12, 11))


def test_each_kind_of_wrong_structure_set_is_refused_in_one_line(scan, tmp_path):
    import pydicom

    vol, ball = scan
    rt = write_rtstruct(tmp_path / "rt.dcm", vol, {"Ball": ball, "ball": ball, "Iso": None},
                        frame_of_reference=FOR)
    with pytest.raises(ImageReadError, match=r"rt\.dcm holds 2 structures with contours: Ball "
                       r"\(#1\), ball \(#2\); choose with --structure"):
        read_rtstruct(rt, vol)
    with pytest.raises(ImageReadError, match=r"holds 2 structures named 'BALL' \(ROI numbers "
                       r"1, 2\): name one by its number, e\.g\. #1"):
        read_rtstruct(rt, vol, ["BALL"])
    with pytest.raises(ImageReadError, match=r"holds no structure 'kidney'; it holds Ball "
                       r"\(#1\), ball \(#2\), Iso \(#3\)"):
        read_rtstruct(rt, vol, ["kidney"])
    with pytest.raises(ImageReadError, match=r"structure 'Iso' of rt\.dcm holds no closed "
                       r"contour"):
        read_rtstruct(rt, vol, ["iso"])
    with pytest.raises(ImageReadError, match=r"structure '#1' is named twice"):
        read_rtstruct(rt, vol, ["#1", "#1"])
    with pytest.raises(ImageReadError, match=r"drawn in another frame of reference than the "
                       r"scan"):
        read_rtstruct(rt, vol, ["#1"], "1.2.3.4")
    # drawn on another scan: shifted by 0.4 of a slice, or lying wholly outside
    for shift, what in ((0.4 * 2.5, r"lies between two of the scan's slices \(0\.40 of a "
                                     r"slice off"),
                        (-400.0, r"all its \d+ contours lie outside the scan's grid")):
        moved = Volume(vol.array, vol.spacing, vol.origin + shift * vol.direction[:, 2],
                       vol.direction)
        other = write_rtstruct(tmp_path / "other.dcm", moved, {"Ball": ball})
        with pytest.raises(ImageReadError, match=what):
            read_rtstruct(other, vol)
    # a contour across the slices (drawn on a tilted plane of another scan)
    tilted = Volume(vol.array, vol.spacing, vol.origin, vol.direction @ rotation(0, 30))
    write_rtstruct(tmp_path / "tilted.dcm", tilted, {"Ball": ball})
    with pytest.raises(ImageReadError, match=r"a contour is not drawn on the scan's slices"):
        read_rtstruct(tmp_path / "tilted.dcm", vol)
    # broken files
    ds = pydicom.dcmread(rt)
    ds.ROIContourSequence[0].ContourSequence[0].ContourData = ["1.0", "2.0"]
    ds.save_as(tmp_path / "short.dcm")
    with pytest.raises(ImageReadError, match=r"malformed RT Structure Set \(a contour of "
                       r"structure 1 holds 2 coordinates, not a multiple of 3\)"):
        read_rtstruct(tmp_path / "short.dcm", vol, ["#1"])
    with warnings.catch_warnings():         # pydicom warns of the value it is given
        warnings.simplefilter("ignore")
        ds.ROIContourSequence[0].ContourSequence[0].ContourData = ["nan", "2.0", "3.0"] * 3
        ds.save_as(tmp_path / "nan.dcm")
    with pytest.raises(ImageReadError, match=r"not finite numbers"):
        read_rtstruct(tmp_path / "nan.dcm", vol, ["#1"])
    data = rt.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.dcm: truncated RT Structure Set \(the "
                       r"file ends inside element \(3006,0039\): \d+ of its \d+ bytes"):
        read_rtstruct(tmp_path / "cut.dcm", vol, ["#1"])
    # pydicom reads a file cut inside an element without a word: cut anywhere, in the
    # contours (fewer contours), one byte short, or in the file meta, it is refused;
    # sequences of undefined length, as some planning systems write them, raise
    ds = pydicom.dcmread(rt)
    for sq in (e for e in ds.iterall() if e.VR == "SQ"):
        sq.is_undefined_length = True
    ds.save_as(tmp_path / "undefined.dcm")
    undefined = (tmp_path / "undefined.dcm").read_bytes()
    assert read_rtstruct(tmp_path / "undefined.dcm", vol, ["#1"])[0].array.any()
    for whole in (data, undefined):
        for n in (150, 260, len(whole) // 5, len(whole) // 3, 2 * len(whole) // 3,
                  len(whole) - 1):
            (tmp_path / "cut.dcm").write_bytes(whole[:n])
            words = r"cut\.dcm is not a DICOM RT Structure Set" if n == 150 else \
                r"cut\.dcm: (truncated|unreadable|malformed) RT Structure Set"
            with pytest.raises(ImageReadError, match=words):
                read_rtstruct(tmp_path / "cut.dcm", vol, ["#1"])
            with pytest.raises(ImageReadError, match=words):
                list_structures(tmp_path / "cut.dcm")
    write_dicom_series(vol, tmp_path / "series")
    with pytest.raises(ImageReadError, match=r"IM0001\.dcm is not a DICOM RT Structure Set"):
        read_rtstruct(tmp_path / "series" / "IM0001.dcm", vol)
    # not a file: never opened (a named pipe would block a reader for good)
    with pytest.raises(ImageReadError, match=r"series is a folder; give the RT Structure Set "
                       r"file in it"):
        list_structures(tmp_path / "series")
    with pytest.raises(FileNotFoundError, match=r"no such file or folder: gone\.dcm"):
        read_rtstruct(tmp_path / "gone.dcm", vol)
    os.mkfifo(tmp_path / "pipe.dcm")
    with pytest.raises(ValueError, match=r"pipe\.dcm is a named pipe"):
        read_rtstruct(tmp_path / "pipe.dcm", vol)


def test_a_value_pydicom_cannot_decode_is_refused_in_one_line(scan, tmp_path, capsys):
    """pydicom decodes an element when it is first read, and raises
    NotImplementedError for a value representation it does not know (found by
    bench/fuzz_readers.py: a structure set with three bytes changed gave a
    traceback); in a sequence item it reads on as implicit VR, and one element
    swallows the rest of the file (a contour's type: its listing said 0 closed
    contours). At the top level, in the ROI and contour items and in the
    references to the scan, such an element is refused in one line naming the
    file, by every reader and by convert-rtstruct, which leaves its inputs alone."""
    from shapeprior.io import referenced_series

    vol, ball = scan
    rt = write_rtstruct(tmp_path / "rt.dcm", vol, {"Ball": ball}, frame_of_reference=FOR,
                        series_uid="1.2.826.0.1.3680043.2.1125.1")
    series = write_dicom_series(vol, tmp_path / "series",
                                series_uid="1.2.826.0.1.3680043.2.1125.1")
    good = rt.read_bytes()
    before = tree_state(series, rt)
    # (tag, VR): the frame of reference sequence, its study sequence, an ROI's frame of
    # reference, a contour's type and its points
    for tag, vr in (("3006,0010", b"SQ"), ("3006,0012", b"SQ"), ("3006,0024", b"UI"),
                    ("3006,0042", b"CS"), ("3006,0050", b"DS")):
        group, element = (int(t, 16) for t in tag.split(","))
        key = group.to_bytes(2, "little") + element.to_bytes(2, "little") + vr
        assert good.count(key) >= 1, tag
        bad = tmp_path / f"bad_{tag.replace(',', '_')}.dcm"
        bad.write_bytes(good.replace(key, key[:4] + b"\x4c\x90", 1))
        for read in (lambda: list_structures(bad), lambda: read_rtstruct(bad, vol, ["Ball"], FOR),
                     lambda: referenced_series(bad)):
            with pytest.raises(ImageReadError, match=rf"^{bad.name}: (unreadable|truncated|"
                               rf"malformed) RT Structure Set \(.*\({tag}\)") as err:
                read()
            assert str(err.value).isprintable(), err.value
        out = tmp_path / f"out_{tag.replace(',', '_')}"
        given = tree_state(bad)
        assert main(["convert-rtstruct", str(bad), "--image", str(series), "-o", str(out)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and bad.name in err and "Traceback" not in err, err
        assert not out.exists() and tree_state(bad) == given
    assert tree_state(series, rt) == before


def test_structure_names_match_as_data_sets_spell_them(scan, tmp_path):
    """Planning systems and data sets spell one organ differently (Kidney_L,
    kidney l, KIDNEY-L): case, spaces, underscores and hyphens are set aside, and
    alternatives joined by | take the first the set holds (one command for a
    data set whose sets name it differently)."""
    vol, ball = scan
    small = _ellipsoid(vol.array.shape, (12, 20, 18), (4, 8, 7))
    rt = write_rtstruct(tmp_path / "rt.dcm", vol, {"Kidney_L": ball, "Lung R": small})
    got, info = read_rtstruct(rt, vol, ["LUNG_R", "kidney-l"])
    assert np.array_equal(got.array, np.where(ball, 2, 0))     # the later one wins
    assert info["overlap_voxels"] == int(small.sum())
    assert [s["name"] for s in info["structures"]] == ["Lung R", "Kidney_L"]
    for want, name in (("L_Kidney|Kidney L", "Kidney_L"), ("Kidney_L|Lung_R", "Kidney_L"),
                       ("Liver|#2", "Lung R")):
        _, info = read_rtstruct(rt, vol, [want])
        assert info["structures"][0]["name"] == name, want
    with pytest.raises(ImageReadError, match=r"holds no structure 'Liver\|Spleen'; it holds "
                       r"Kidney_L \(#1\), Lung R \(#2\)"):
        read_rtstruct(rt, vol, ["Liver|Spleen"])


# -- the command -------------------------------------------------------------------------------

def test_convert_rtstruct_writes_the_label_map_on_the_series_grid(scan, tmp_path, capsys,
                                                                  phantom_model):
    """End to end on a DICOM series with its structure set beside it (as a
    planning system exports them): the label map lies on the series' grid, the
    report names each structure's label, the inputs are unchanged, and
    mistakes are one line each with exit 1 or 2."""
    vol, ball = scan
    vol = Volume(np.where(ball, 300, 20).astype(np.int16), vol.spacing, vol.origin,
                 vol.direction)
    series = write_dicom_series(vol, tmp_path / "export", series_uid="1.2.826.0.1.3680043.2.1125.1")
    scout = write_dicom_series(vol, tmp_path / "scout", series_uid="1.2.3.9")
    shutil.copy(scout / "IM0001.dcm", series / "SCOUT.dcm")  # beside the scan, as exported
    inner = _ellipsoid(vol.array.shape, (12, 20, 18), (3, 5, 5))
    rt = write_rtstruct(series / "RS.dcm", vol, {"Ball": ball, "Core": inner, "Iso": None},
                        frame_of_reference=FOR)
    before = tree_state(tmp_path / "export")
    out = tmp_path / "out"
    assert main(["convert-rtstruct", str(rt), "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "#1    Ball: 11 closed contours", "#2    Core: 5 closed contours",
        "#3    Iso: 0 closed contours, 1 points or open lines"]
    assert main(["convert-rtstruct", str(rt), "--image", str(series), "-o", str(out),
                 "--structure", "ball", "--structure", "Core"]) == 0
    said = capsys.readouterr()
    assert "label 1: Ball (11 contours on 11 slices" in said.out
    assert "2 voxels" not in said.err and "in more than one structure" in said.err
    got = read_label_map(out / "label.nii.gz")
    assert got.same_grid(read_scan(series)[0])
    assert np.array_equal(got.array, np.where(inner, 2, np.where(ball, 1, 0)))
    rep = json.loads((out / "report.json").read_text())
    assert [(s["label"], s["name"]) for s in rep["structures"]] == [(1, "Ball"), (2, "Core")]
    assert rep["overlap_voxels"] == int(inner.sum()) and rep["frame_of_reference_checked"]
    assert rep["coordinates"] == "LPS" and "DOE" not in (out / "report.json").read_text()
    man = json.loads((out / "manifest.json").read_text())
    assert "input/RS.dcm" in man["inputs"] and "input/IM0001.dcm" in man["inputs"]
    assert tree_state(tmp_path / "export") == before
    # an existing output is never replaced without --force; a wrong name; no scan
    assert main(["convert-rtstruct", str(rt), "--image", str(series), "-o", str(out),
                 "--structure", "Ball"]) == 1
    assert "exists" in capsys.readouterr().err
    # nor written into the scan's folder, even with --force
    assert main(["convert-rtstruct", str(rt), "--image", str(series), "-o",
                 str(series / "labels"), "--structure", "Ball", "--force"]) == 1
    assert "lies inside the input" in capsys.readouterr().err
    assert tree_state(tmp_path / "export") == before
    assert main(["convert-rtstruct", str(rt), "--image", str(series), "-o",
                 str(tmp_path / "o2"), "--structure", "Kidney"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no structure 'Kidney'; it holds Ball (#1)" in err
    assert not (tmp_path / "o2").exists()
    with pytest.raises(SystemExit) as e:
        main(["convert-rtstruct", str(rt), "-o", str(tmp_path / "o3")])
    assert e.value.code == 2 and "--image (the scan the contours were drawn on) is required " \
        "for one structure set file" in capsys.readouterr().err
    # the structure set of another scan (another frame of reference) is refused
    other = write_rtstruct(tmp_path / "other.dcm", vol, {"Ball": ball},
                           frame_of_reference="1.2.3.4.5")
    assert main(["convert-rtstruct", str(other), "--image", str(series), "-o",
                 str(tmp_path / "o4")]) == 1
    assert "another frame of reference" in capsys.readouterr().err
    assert tree_state(tmp_path / "export") == before
    # outlines smaller than a voxel: an empty label, said so
    import pydicom

    ds = pydicom.dcmread(rt)
    corner = vol.index_to_physical(np.array([[18.5, 20.5, 12.0]]))[0]   # between centres
    square = np.array([[0.0, 0, 0], [0.2, 0, 0], [0.2, 0.2, 0], [0, 0.2, 0]])
    tiny = corner + square @ (vol.direction * vol.spacing).T
    first = ds.ROIContourSequence[0].ContourSequence[0]
    first.ContourData = [f"{v:.4f}" for v in tiny.ravel()]
    first.NumberOfContourPoints = 4
    ds.ROIContourSequence[0].ContourSequence = pydicom.Sequence([first])
    ds.save_as(tmp_path / "tiny.dcm")
    assert main(["convert-rtstruct", str(tmp_path / "tiny.dcm"), "--image", str(series), "-o",
                 str(tmp_path / "o6"), "--structure", "Ball"]) == 0
    assert "note: 'Ball' covers no voxel centre of the scan (its outlines are smaller than " \
        "a voxel): its label is empty" in capsys.readouterr().err
    assert not read_label_map(tmp_path / "o6" / "label.nii.gz").array.any()
    # a structure set as a segmentation's reference: of several structures, one is
    # named; one whose outlines enclose no voxel centre is an empty reference
    shutil.copy(rt, tmp_path / "rt.dcm")
    seg = ["segment", str(series), "--model", str(phantom_model[3]), "--reference"]
    assert main([*seg, str(tmp_path / "rt.dcm"), "-o", str(tmp_path / "o5")]) == 1
    assert "rt.dcm holds 2 structures with contours: Ball (#1), Core (#2); choose with " \
        "--reference-structure NAME" in capsys.readouterr().err
    assert main([*seg, str(tmp_path / "tiny.dcm"), "--reference-structure", "ball", "-o",
                 str(tmp_path / "o5")]) in (0, 3)
    rep = json.loads((tmp_path / "o5" / "report.json").read_text())
    assert rep["reference"]["empty"] and rep["reference"]["structures"][0]["voxels"] == 0
    assert any("(structure Ball: its outlines enclose no voxel centre)" in w
               for w in rep["warnings"])


def test_every_structure_set_of_a_download_is_converted_on_the_series_it_names(
        scan, tmp_path, capsys):
    """A download laid out as TCIA's (patient/study/series/): each structure set
    is paired with the series it names (beside an MR of the same frame of
    reference, and a scout), or with the one volume of its frame of reference;
    one whose scan is missing, or that lacks the structure, is a failed row
    and the others are converted. The label maps lie on their own scans'
    grids, and build-model's --mask-name finds them."""
    from shapeprior.model import label_map_inputs

    vol, ball = scan
    small = _ellipsoid(vol.array.shape, (12, 20, 18), (4, 8, 7))
    dl = tmp_path / "LCTSC"

    def series(patient, folder, uid, grid=vol):
        return write_dicom_series(grid, dl / patient / "ST1" / folder, series_uid=uid)

    # P1: the CT it names, a scout, and a second observer's structure set
    ct1 = series("P1", "1-CT", "1.2.9.1")
    scout = series("P1", "3-scout", "1.2.9.2")
    for f in sorted(scout.iterdir())[1:]:
        f.unlink()
    (dl / "P1" / "ST1" / "2-RT").mkdir()
    write_rtstruct(dl / "P1" / "ST1" / "2-RT" / "1-1.dcm", vol, {"Ball": ball},
                   frame_of_reference="1.2.9.1.9", series_uid="1.2.9.1")
    (dl / "P1" / "ST1" / "4-RT").mkdir()
    write_rtstruct(dl / "P1" / "ST1" / "4-RT" / "1-1.dcm", vol, {"ball": small},
                   frame_of_reference="1.2.9.1.9", series_uid="1.2.9.1")
    # P2: an MR beside the CT in one frame of reference; the CT is named
    shifted = Volume(vol.array, vol.spacing, vol.origin + 30.0, vol.direction)
    series("P2", "1-MR", "1.2.8.1", shifted)
    ct2 = series("P2", "2-CT", "1.2.8.2")
    import pydicom

    for f in ct2.iterdir():                  # one frame of reference for both
        ds = pydicom.dcmread(f)
        ds.FrameOfReferenceUID = "1.2.8.1.9"
        ds.save_as(f)
    write_rtstruct(dl / "P2" / "RS.dcm", vol, {"Ball": small},
                   frame_of_reference="1.2.8.1.9", series_uid="1.2.8.2")
    # P6: the same two without a series named: which one is not guessed
    shutil.copytree(dl / "P2" / "ST1", dl / "P6" / "ST1")
    write_rtstruct(dl / "P6" / "RS.dcm", vol, {"Ball": small}, frame_of_reference="1.2.8.1.9")
    # P3: no series named, one volume of its frame of reference
    series("P3", "1-CT", "1.2.7.1")
    write_rtstruct(dl / "P3" / "ST1" / "RS.dcm", vol, {"BALL": ball},
                   frame_of_reference="1.2.7.1.9")
    # P4: its scan was not downloaded; P5: no structure of that name
    series("P4", "1-CT", "1.2.6.1")
    write_rtstruct(dl / "P4" / "RS.dcm", vol, {"Ball": ball}, frame_of_reference="9.9.9",
                   series_uid="9.9.9.1")
    series("P5", "1-CT", "1.2.5.1")
    write_rtstruct(dl / "P5" / "RS.dcm", vol, {"Heart": ball}, frame_of_reference="1.2.5.1.9")
    before = tree_state(dl)
    out = tmp_path / "labels"
    assert main(["convert-rtstruct", str(dl), "-o", str(out), "--structure", "Ball"]) == 1
    said = capsys.readouterr().out
    assert "7 structure sets: 4 converted, 3 failed" in said, said
    rows = {r["case"]: r for r in json.loads((out / "summary.json").read_text())["cases"]}
    assert sorted(rows) == ["P1", "P1-2", "P2", "P3", "P4", "P5", "P6"]
    assert "RS.dcm: 2 series share its frame of reference and it names none of them" in \
        rows["P6"]["error"]
    assert rows["P1"]["image"] == "P1/ST1/1-CT" and rows["P2"]["image"] == "P2/ST1/2-CT"
    assert rows["P3"]["image"] == "P3/ST1/1-CT"
    assert rows["P4"]["status"] == "failed" and "the series it names is not in the " \
        "folder" in rows["P4"]["error"]
    assert rows["P5"]["status"] == "failed" and "holds no structure 'Ball'; it holds " \
        "Heart (#1)" in rows["P5"]["error"]
    for case, want, ct in (("P1", ball, ct1), ("P1-2", small, ct1), ("P2", small, ct2),
                           ("P3", ball, None)):
        got = read_label_map(out / case / "label.nii.gz")
        assert np.array_equal(got.array == 1, want), case
        if ct is not None:
            assert got.same_grid(read_scan(ct)[0])
    assert not (out / "P4").exists() and not (out / "P5").exists()
    man = json.loads((out / "manifest.json").read_text())
    assert "input/P1/ST1/2-RT/1-1.dcm" in man["inputs"] and \
        "input/P2/ST1/2-CT/IM0001.dcm" in man["inputs"]
    assert not any("1-MR" in k for k in man["inputs"])
    assert tree_state(dl) == before
    found = [n for _, n, _ in label_map_inputs([out], mask_name="label.nii.gz")]
    assert found == ["P1", "P1-2", "P2", "P3"]
    # a folder without a structure set; options of one file refused with a folder
    assert main(["convert-rtstruct", str(dl / "P4" / "ST1"), "-o", str(tmp_path / "x")]) == 1
    assert "holds no DICOM RT Structure Set (RTSTRUCT) file" in capsys.readouterr().err
    for given in (["--image", str(ct1)], ["--series", "1"]):
        with pytest.raises(SystemExit):
            main(["convert-rtstruct", str(dl), *given, "-o", str(tmp_path / "y")])
        assert "in a folder each structure set's scan is found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert-rtstruct", str(dl), "--list"])
    assert "--list lists one structure set's structures; RTSTRUCT is a folder" in \
        capsys.readouterr().err
    assert not (tmp_path / "y").exists() and tree_state(dl) == before


def test_convert_rtstruct_deidentify_keeps_names_out_of_every_output(scan, tmp_path, capsys,
                                                                     monkeypatch):
    """Patient folders and structure set files named after the patient: with
    --deidentify no output, screen line or error line names them; the cases are
    the patient folders' pseudonyms (those of segment --deidentify)."""
    from _phantoms import written_text
    from shapeprior.pipeline import Deidentifier

    monkeypatch.setenv("SHAPEPRIOR_DEID_SALT", "test-salt")
    vol, ball = scan
    dl = tmp_path / "export"
    for patient, organ in (("DOE^JOHN", "Ball"), ("SMITH^JANE", "Heart")):
        ct = write_dicom_series(vol, dl / patient / "CT_SMITH", series_uid="1.2.4.1")
        write_rtstruct(dl / patient / f"RS.{patient}.dcm", vol, {organ: ball},
                       frame_of_reference="1.2.4.1.9", series_uid="1.2.4.1")
    # a second observer's set for the first patient: its own case, "-2" after the pseudonym
    write_rtstruct(dl / "DOE^JOHN" / "RS.DOE^JOHN.2.dcm", vol, {"Ball": ball},
                   frame_of_reference="1.2.4.1.9", series_uid="1.2.4.1")
    out = tmp_path / "out"
    assert main(["convert-rtstruct", str(dl), "-o", str(out), "--structure", "Ball",
                 "--deidentify"]) == 1
    printed = capsys.readouterr()
    single = tmp_path / "single"
    assert main(["convert-rtstruct", str(dl / "DOE^JOHN" / "RS.DOE^JOHN.dcm"), "--image",
                 str(ct), "-o", str(single), "--deidentify"]) == 0
    printed2 = capsys.readouterr()
    assert main(["convert-rtstruct", str(dl / "DOE^JOHN" / "RS.DOE^JOHN.dcm"), "--image",
                 str(ct), "-o", str(tmp_path / "bad"), "--structure", "Kidney",
                 "--deidentify"]) == 1
    printed3 = capsys.readouterr()
    text = written_text(tmp_path, [dl], "".join(p.out + p.err
                                               for p in (printed, printed2, printed3)))
    for name in ("DOE", "JOHN", "SMITH", "JANE", "export"):
        assert name not in text, name
    rows = json.loads((out / "summary.json").read_text())["cases"]
    deid = Deidentifier()
    assert [r["case"] for r in rows] == [deid.token("DOE^JOHN"), deid.token("DOE^JOHN") + "-2",
                                         deid.token("SMITH^JANE")]
    assert [r["status"] for r in rows] == ["converted", "converted", "failed"]
    assert rows[2]["error"] == "(withheld) holds no structure 'Ball'; it holds Heart (#1)"
    assert np.array_equal(read_label_map(out / rows[0]["case"] / "label.nii.gz").array == 1,
                          ball)
    assert "(withheld) holds no structure 'Kidney'" in printed3.err


# -- writing: a segmentation as an RT Structure Set --------------------------------------------

def test_a_structure_set_written_for_the_example_series_reads_back_voxel_for_voxel(
        data_root, tmp_path):
    """write_structure_set on TotalSegmentator's example series (anonymised: no
    series or study UID, which it derives and notes) and on the oblique TCIA
    series: every outline refers to its slice, and filling them gives the label
    back exactly."""
    import pydicom

    from shapeprior.io import write_structure_set

    d = data_root / "totalsegmentator_example"
    series = d / "example_ct_dicom"
    oblique = data_root / "tcia_mr_dicom" / "Study3_T1post_oblique"
    if not series.is_dir() or not oblique.is_dir():
        pytest.skip("the example series are not in the shared data")
    vol, info = read_scan(series)
    lab = read_label_map(d / "example_seg_dicom.nii.gz").reoriented_like(vol).array
    rec = write_structure_set(tmp_path / "rs.dcm", [lab == 5, lab == 1], vol, series,
                              info["series_key"], organ="liver", side=[None, "left"])
    assert [s["name"] for s in rec["structures"]] == ["liver", "liver (left)"]
    assert any("SeriesInstanceUID: a derived one is used; the structure set may not attach"
               in n for n in rec["notes"])
    got, ginfo = read_rtstruct(tmp_path / "rs.dcm", vol, ["#1", "#2"],
                               scan_frame_of_reference(series))
    assert np.array_equal(got.array == 1, lab == 5) and np.array_equal(got.array == 2, lab == 1)
    assert ginfo["frame_of_reference_checked"]
    ds = pydicom.dcmread(tmp_path / "rs.dcm")
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.iterdir()]
    slices = {str(h.get("SOPInstanceUID") or h.file_meta.MediaStorageSOPInstanceUID)
              for h in heads}        # (this anonymised series keeps them in its meta only)
    refs = {str(c.ContourImageSequence[0].ReferencedSOPInstanceUID)
            for rc in ds.ROIContourSequence for c in rc.ContourSequence}
    assert refs <= slices and len(refs) == 20
    study = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert len(study.RTReferencedSeriesSequence[0].ContourImageSequence) == 20
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["ORGAN"] * 2
    vol2, info2 = read_scan(oblique)
    c = np.array(vol2.array.shape) / 2
    blob = _ellipsoid(vol2.array.shape, c, 0.25 * c * [1.2, 0.8, 1])
    write_structure_set(tmp_path / "rs2.dcm", blob, vol2, oblique, info2["series_key"],
                        organ="kidney", side="right")
    got2, _ = read_rtstruct(tmp_path / "rs2.dcm", vol2, frame_of_reference=
                            scan_frame_of_reference(oblique))
    assert np.array_equal(got2.array == 1, blob)
    assert list_structures(tmp_path / "rs2.dcm")[0]["name"] == "kidney (right)"
    # the same structure set as a segmentation's reference on that series
    from shapeprior.pipeline._run import reference_mask

    filled = {}
    ref = reference_mask(tmp_path / "rs2.dcm", ["Kidney (Right)"], vol2, "image",
                         scan=(oblique, None), filled=filled)
    assert np.array_equal(ref, blob) and filled["structures"][0]["name"] == "kidney (right)"
    assert filled["frame_of_reference_checked"]
    with pytest.raises(ValueError, match="the segmentation is empty"):
        write_structure_set(tmp_path / "rs3.dcm", np.zeros_like(blob), vol2, oblique)


def _phantom_series_and_set(phantom_model, tmp_path, name):
    """Phantom case 6 written as a DICOM series, and a structure set on it holding an
    External (the whole grid) and the organ as ``name``: ``(model, series, its
    grid, the organ's mask, RS.dcm)``."""
    _, images, labels, model = phantom_model
    vol, _ = read_scan(images / "phantom_006.nii.gz")
    series = write_dicom_series(vol, tmp_path / "series")
    vol = read_scan(series)[0]
    organ = read_label_map(labels / "phantom_006.nii.gz").array > 0
    rt = write_rtstruct(tmp_path / "RS.dcm", vol, {"External": np.ones_like(organ),
                                                    name: organ}, frame_of_reference=FOR)
    return model, series, vol, organ, rt


def _but_summaries(state):
    """A batch folder's :func:`tree_state` but its summary.json and summary.csv
    (rewritten by every run): what a run that keeps every case leaves as it was."""
    return {k: v for k, v in state.items() if b"summary" not in k}


def _phantom_case_folders(phantom_model, root):
    """Phantom cases 5 and 6 as case folders ``root/case5/scan/`` (a DICOM series):
    ``[(case name, the series' grid, the organ's mask)]``."""
    _, images, labels, _ = phantom_model
    out = []
    for i in (5, 6):
        vol, _ = read_scan(images / f"phantom_00{i}.nii.gz")
        vol = read_scan(write_dicom_series(vol, root / f"case{i}" / "scan"))[0]
        out.append((f"case{i}", vol, read_label_map(labels / f"phantom_00{i}.nii.gz").array > 0))
    return out


def test_refine_takes_a_structure_set_as_its_mask(phantom_model, tmp_path, capsys):
    """A rough contour from a planning system refined directly: refine RS.dcm
    --image SERIES --structure NAME gives the label that refining its converted
    label map gives, on the series' grid; without --image, with --labels, or
    with --structure for a label map, one line and exit 1 or 2."""
    model, series, vol, organ, rt = _phantom_series_and_set(phantom_model, tmp_path,
                                                            "Organ_rough")
    args = ["--model", str(model), "--image", str(series)]
    assert main(["refine", str(rt), "-o", str(tmp_path / "direct"), "--structure",
                 "organ rough", *args]) == 0
    assert main(["convert-rtstruct", str(rt), "--image", str(series), "-o",
                 str(tmp_path / "conv"), "--structure", "Organ_rough"]) == 0
    assert main(["refine", str(tmp_path / "conv" / "label.nii.gz"), "-o",
                 str(tmp_path / "twostep"), *args]) == 0
    direct = read_label_map(tmp_path / "direct" / "label.nii.gz")
    assert direct.same_grid(vol) and direct.array.any()
    assert np.array_equal(direct.array,
                          read_label_map(tmp_path / "twostep" / "label.nii.gz").array)
    rep = json.loads((tmp_path / "direct" / "report.json").read_text())
    assert rep["input"]["mask"] == "RS.dcm" and rep["status"] in ("ok", "suspect")
    capsys.readouterr()
    assert main(["refine", str(rt), "-o", str(tmp_path / "x"), "--model", str(model)]) == 1
    assert "RS.dcm is an RT Structure Set: its contours are filled on the scan they were " \
        "drawn on; give it with --image" in capsys.readouterr().err
    assert main(["refine", str(rt), "-o", str(tmp_path / "x"), *args]) == 1
    assert "2 structures with contours: External (#1), Organ_rough (#2); choose with " \
        "--structure" in capsys.readouterr().err
    assert main(["refine", str(tmp_path / "conv" / "label.nii.gz"), "-o",
                 str(tmp_path / "x"), "--structure", "Organ_rough", *args]) == 1
    assert "--structure names a structure of an RT Structure Set; label.nii.gz is a " \
        "label map" in capsys.readouterr().err
    assert main(["refine", str(rt), "-o", str(tmp_path / "x"), "--structure", "#2",
                 "--labels", "1", *args]) == 1
    assert "--labels names labels of a label map; a structure set's structure is " \
        "--structure" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_segment_starts_from_a_structure_set_as_its_init_mask(phantom_model, tmp_path, capsys):
    """A planning system's contour as the fit's start: segment SERIES --init-mask
    RS.dcm --init-structure NAME fits as the converted label map as --init-mask
    does (the same label), and the report and manifest name the structure; a set
    of another frame of reference, --init-labels for a set, --init-structure for
    a label map or without --init-mask, and a set of two structures without a
    choice: one line, exit 1, nothing written."""
    model, series, vol, organ, rt = _phantom_series_and_set(phantom_model, tmp_path,
                                                            "Organ_rough")
    args = ["--model", str(model), "--no-qc"]
    assert main(["segment", str(series), "-o", str(tmp_path / "direct"), "--init-mask",
                 str(rt), "--init-structure", "organ rough", *args]) == 0
    assert main(["convert-rtstruct", str(rt), "--image", str(series), "-o",
                 str(tmp_path / "conv"), "--structure", "Organ_rough"]) == 0
    conv = tmp_path / "conv" / "label.nii.gz"
    assert main(["segment", str(series), "-o", str(tmp_path / "twostep"), "--init-mask",
                 str(conv), *args]) == 0
    direct = read_label_map(tmp_path / "direct" / "label.nii.gz")
    assert direct.same_grid(vol) and direct.array.any()
    assert np.array_equal(direct.array,
                          read_label_map(tmp_path / "twostep" / "label.nii.gz").array)
    rep = json.loads((tmp_path / "direct" / "report.json").read_text())
    assert rep["placement"]["hypotheses"][0]["source"] == "init"
    assert [s["name"] for s in rep["init_mask"]["structures"]] == ["Organ_rough"]
    assert rep["init_mask"]["structures"][0]["voxels"] == np.count_nonzero(organ)
    assert rep["init_mask"]["frame_of_reference_checked"]
    man = json.loads((tmp_path / "direct" / "manifest.json").read_text())
    assert man["parameters"]["init_structures"] == ["Organ_rough"]
    assert "init_mask" not in json.loads((tmp_path / "twostep" / "report.json").read_text())
    # the scan as a NIfTI file: its frame of reference unknown, the report says so
    nifti = phantom_model[1] / "phantom_006.nii.gz"
    assert main(["segment", str(nifti), "-o", str(tmp_path / "nifti"), "--init-mask", str(rt),
                 "--init-structure", "#2", *args]) == 0
    rep = json.loads((tmp_path / "nifti" / "report.json").read_text())
    assert not rep["init_mask"]["frame_of_reference_checked"]
    assert UNCHECKED_INIT_FRAME_WARNING in rep["warnings"]
    other = write_rtstruct(tmp_path / "other.dcm", vol, {"Organ_rough": organ},
                           frame_of_reference="1.2.3.4")
    import pydicom

    beside = pydicom.dcmread(rt)               # the organ's outlines 500 mm to the left
    for c in beside.ROIContourSequence[1].ContourSequence:
        pts = np.array(c.ContourData, float).reshape(-1, 3) + [500.0, 0.0, 0.0]
        c.ContourData = [f"{v:.3f}" for v in pts.ravel()]
    beside.save_as(tmp_path / "beside.dcm")
    capsys.readouterr()
    before = tree_state(tmp_path, model)       # the series, the sets, the label map, the model
    for extra, said in [
            (["--init-mask", str(other)], "other.dcm was drawn in another frame of reference"),
            (["--init-mask", str(tmp_path / "beside.dcm"), "--init-structure", "#2"],
             "structure Organ_rough of the --init-mask beside.dcm fills no voxel of the "
             "image's grid ("),
            (["--init-mask", str(rt)], "2 structures with contours: External (#1), "
                                 "Organ_rough (#2); choose with --init-structure"),
            (["--init-mask", str(rt), "--init-labels", "1"],
             "RS.dcm is an RT Structure Set: --init-labels picks labels of a label map; "
             "choose its structures with --init-structure"),
            (["--init-mask", str(conv), "--init-structure", "#1"],
             "--init-structure names structures of an RT Structure Set; label.nii.gz is a "
             "label map (its labels: --init-labels)"),
            (["--init-mask", str(rt), "--init-structure", "#2", "--init-labels", "1"],
             "--init-labels picks labels of a label map, --init-structure structures"),
            (["--init-structure", "#2"], "--init-structure has no effect without --init-mask"),
            (["--init-mask", str(rt), "--init-structure", " "], "--init-structure is empty")]:
        assert main(["segment", str(series), "-o", str(tmp_path / "x"), *extra, *args]) == 1
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert not (tmp_path / "x").exists() and tree_state(tmp_path, model) == before


# -- a structure set as the reference -------------------------------------------------------

def _scored(folder):
    rep = json.loads((folder / "report.json").read_text())
    return rep["reference"], json.loads((folder / "manifest.json").read_text())


def test_segment_and_refine_score_against_a_structure_set(phantom_model, tmp_path, capsys):
    """Ground truth kept as a planning system's contours is a reference as it is:
    segment SERIES --reference RS.dcm --reference-structure NAME gives the Dice
    and distances that the same structure as a label map gives, and so does
    refine; the report names the structure filled. A set of several structures
    needs a name, --reference-labels is refused for it, a name for a label map
    too, a set of another frame of reference, or one that reaches beyond the
    grid (its part off the grid would count as missed): one line, exit 1,
    nothing written, no input touched."""
    import pydicom

    model, series, vol, organ, rt = _phantom_series_and_set(phantom_model, tmp_path,
                                                            "Organ_GT")
    truth = Volume(organ.astype(np.uint8), vol.spacing, vol.origin, vol.direction)
    from shapeprior.io import write_label

    write_label(truth, truth.array, tmp_path / "truth.nii.gz")
    before = tree_state(series, rt, tmp_path / "truth.nii.gz", model)
    m = ["--model", str(model)]
    assert main(["segment", str(series), "-o", str(tmp_path / "map"), "--reference",
                 str(tmp_path / "truth.nii.gz"), *m]) in (0, 3)
    assert main(["segment", str(series), "-o", str(tmp_path / "rs"), "--reference", str(rt),
                 "--reference-structure", "organ gt", *m]) in (0, 3)
    (by_map, _), (by_rs, man) = _scored(tmp_path / "map"), _scored(tmp_path / "rs")
    assert 0.5 < by_rs["dice"] == by_map["dice"]
    assert by_rs["assd_mm"] == by_map["assd_mm"] and by_rs["hd95_mm"] == by_map["hd95_mm"]
    assert by_rs["labels"] == ["organ gt"] and man["parameters"]["reference_labels"] == \
        ["organ gt"]
    assert by_rs["structures"] == [{"name": "Organ_GT", "number": 2, "label": 1,
                                    "voxels": int(organ.sum()),
                                    "volume_ml": pytest.approx(organ.sum() *
                                                               np.prod(vol.spacing) / 1e3)}]
    assert by_rs["frame_of_reference_checked"]
    assert not any("frame of reference could not be" in w for w in
                   json.loads((tmp_path / "rs" / "report.json").read_text())["warnings"])
    assert "Dice" in capsys.readouterr().out
    # the scan as NIfTI (converted, as many do, the contours kept): the same fill, and
    # the report says the frame of reference could not be checked
    assert main(["segment", str(phantom_model[1] / "phantom_006.nii.gz"), "-o",
                 str(tmp_path / "nii"), "--reference", str(rt), "--reference-structure",
                 "organ gt", *m]) in (0, 3)
    nii = json.loads((tmp_path / "nii" / "report.json").read_text())
    assert nii["reference"]["frame_of_reference_checked"] is False
    assert nii["reference"]["dice"] > 0.5
    assert [(s["name"], s["voxels"]) for s in nii["reference"]["structures"]] == \
        [("Organ_GT", int(organ.sum()))]
    assert "the reference structure set's frame of reference could not be compared with the " \
        "scan's (not a DICOM scan, or a UID missing): only its slice planes were checked" in \
        nii["warnings"]
    assert "frame of reference could not be" in capsys.readouterr().out
    from shapeprior.pipeline._rescore import rescore_outputs

    for _ in range(2):                  # compared again: the warning replaced, not added
        again = rescore_outputs(tmp_path / "nii", rt, ("organ gt",))
    assert again["warnings"] == nii["warnings"] and again["reference"]["dice"] == \
        nii["reference"]["dice"]
    # refine: a rough mask on the series' grid, scored against the contours
    rough = Volume(np.pad(organ, 2)[2:-2, 4:, 2:-2].astype(np.uint8), vol.spacing, vol.origin,
                   vol.direction)
    write_label(rough, rough.array, tmp_path / "rough.nii.gz")
    r = [str(tmp_path / "rough.nii.gz"), *m, "--image", str(series)]
    assert main(["refine", *r, "-o", str(tmp_path / "rmap"), "--reference",
                 str(tmp_path / "truth.nii.gz")]) in (0, 3)
    assert main(["refine", *r, "-o", str(tmp_path / "rrs"), "--reference", str(rt),
                 "--reference-structure", "#2"]) in (0, 3)
    (rmap, _), (rrs, _) = _scored(tmp_path / "rmap"), _scored(tmp_path / "rrs")
    assert rrs["dice"] == rmap["dice"] and rrs["input"] == rmap["input"]
    assert rrs["input"]["dice"] < 0.99 and rrs["structures"][0]["name"] == "Organ_GT"
    capsys.readouterr()
    # refusals
    other = write_rtstruct(tmp_path / "other.dcm", vol, {"Organ": organ},
                           frame_of_reference="1.2.3.4")
    big = Volume(np.zeros((vol.array.shape[0], vol.array.shape[1] + 8, vol.array.shape[2]),
                          np.int16), vol.spacing, vol.origin, vol.direction)
    grown = np.zeros(big.array.shape, bool)
    H = organ.shape[1]
    grown[:, :H] = organ
    zc, _, xc = np.argwhere(organ).mean(0).astype(int)
    grown[zc - 2:zc + 3, H - 4:H + 4, xc - 3:xc + 3] = True     # on beyond the scan's rows
    beyond = write_rtstruct(tmp_path / "beyond.dcm", big, {"Organ": grown},
                            frame_of_reference=FOR)
    cut = tmp_path / "RS_cut.dcm"                     # a copy cut short in its contours
    cut.write_bytes(rt.read_bytes()[:-len(rt.read_bytes()) // 3])
    ds = pydicom.dcmread(rt)                          # ... and one of undefined lengths
    for sq in (e for e in ds.iterall() if e.VR == "SQ"):
        sq.is_undefined_length = True
    ds.save_as(tmp_path / "RS_undefined.dcm")
    cut_sq = tmp_path / "RS_cut_sq.dcm"
    cut_sq.write_bytes((tmp_path / "RS_undefined.dcm").read_bytes()[:len(rt.read_bytes()) // 3])
    cases = [
        (["--reference", str(rt)], r"RS\.dcm holds 2 structures with contours: External "
                                   r"\(#1\), Organ_GT \(#2\); choose with --reference-structure"),
        (["--reference", str(rt), "--reference-labels", "1"],
         r"RS\.dcm is an RT Structure Set: --reference-labels picks labels of a label map; "
         r"choose its structures with --reference-structure"),
        (["--reference", str(rt), "--reference-labels", "1", "--reference-structure", "#2"],
         r"--reference-labels picks labels of a label map, --reference-structure structures"),
        (["--reference-structure", "#2"], r"--reference-structure has no effect without "
                                          r"--reference"),
        (["--reference", str(rt), "--reference-structure", " "],
         r"--reference-structure is empty"),
        (["--reference", str(tmp_path / "truth.nii.gz"), "--reference-structure", "Organ"],
         r"--reference-structure names structures of an RT Structure Set; truth\.nii\.gz is a "
         r"label map"),
        (["--reference", str(other)], r"other\.dcm was drawn in another frame of reference"),
        (["--reference", str(cut)], r"RS_cut\.dcm: truncated RT Structure Set \(the file ends "
                                    r"inside element \(3006,0039\)"),
        (["--reference", str(cut_sq)], r"RS_cut_sq\.dcm: unreadable RT Structure Set"),
        (["--reference", os.devnull], r"null is a device, not an image file or folder: it is "
                                      r"not read"),
        (["--reference", str(beyond)], r"structure Organ of the reference beyond\.dcm reaches "
                                       r"beyond the image's grid \(\d+ contours beyond its rows "
                                       r"or columns\): the two cannot be compared"),
    ]
    for extra, words in cases:
        assert main(["segment", str(series), "-o", str(tmp_path / "x"), *m, *extra]) == 1, extra
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and re.search(words, err), (extra, err)
        assert not (tmp_path / "x").exists()
    assert main(["refine", *r, "-o", str(tmp_path / "x"), "--reference", str(rt),
                 "--reference-labels", "1"]) == 1
    assert "choose its structures with --reference-structure" in capsys.readouterr().err
    assert main(["refine", *r, "-o", str(tmp_path / "x"), "--reference", str(other)]) == 1
    assert "other.dcm was drawn in another frame of reference" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert tree_state(series, rt, tmp_path / "truth.nii.gz", model) == before
    # converted, the set that runs on beyond the scan says what was cut
    assert main(["convert-rtstruct", str(beyond), "--image", str(series), "-o",
                 str(tmp_path / "conv")]) == 0
    conv = json.loads((tmp_path / "conv" / "report.json").read_text())
    assert conv["structures"][0]["clipped_contours"] == 5
    assert "5 contours of 'Organ' reach beyond the scan's rows or columns: filled within the " \
        "scan only" in conv["warnings"]
    got = read_label_map(tmp_path / "conv" / "label.nii.gz").array > 0
    assert np.array_equal(got, grown[:, :H])


def test_a_structure_reference_without_a_voxel_says_which_structure():
    """The warning of an empty reference names the structures filled and the
    option that chooses them (a label map's: the labels and --reference-labels)."""
    from shapeprior.pipeline._run import note_empty_reference

    for block, words in (
            ({"labels": [], "structures": [{"name": "", "number": 4}, {"name": "Cyst",
                                                                      "number": 2}]},
             "the reference holds no voxel with label(s) [] (structure #4, Cyst: its outlines "
             "enclose no voxel centre): its Dice and surface distances say only whether "
             "anything was segmented (a scan without the organ; else check "
             "--reference-structure)"),
            ({"labels": [1, 2]}, "the reference holds no voxel with label(s) [1, 2]: its Dice "
             "and surface distances say only whether anything was segmented (a scan without "
             "the organ; else check --reference-labels)")):
        report = {"reference": block, "warnings": []}
        note_empty_reference(report, np.zeros(3, bool))
        assert report["warnings"] == [words] and block["empty"]
        report = {"reference": {**block, "empty": False}, "warnings": []}
        note_empty_reference(report, np.ones(3, bool))
        assert report["warnings"] == [] and not report["reference"]["empty"]


def test_a_batch_rescores_against_structure_sets_and_keeps_what_was_compared(
        phantom_model, tmp_path, capsys):
    """Case folders each holding a DICOM series and its structure set: a rerun
    that adds --reference-name RS.dcm compares the written labels again without
    fitting, one that names another structure compares again, and one that
    changes nothing keeps the folder as it is; the summary's Dice is the label
    map's."""
    from scipy.ndimage import binary_erosion

    model = phantom_model[3]
    root = tmp_path / "cases"
    dice = {}
    for case, vol, organ in _phantom_case_folders(phantom_model, root):
        write_rtstruct(root / case / "RS.dcm", vol,
                       {"Organ": organ, "Shrunk": binary_erosion(organ)},
                       frame_of_reference=FOR)
        dice[case] = organ
    out = tmp_path / "out"
    base = ["segment", str(root), "--image-name", "scan", "--model", str(model), "-o", str(out)]
    assert main(base) in (0, 3)
    fitted = {c: (out / c / "mesh.vtk").stat().st_mtime_ns for c in dice}

    def summary():
        return {r["case"]: r for r in json.loads((out / "summary.json").read_text())["cases"]}

    assert main([*base, "--reference-name", "RS.dcm", "--reference-structure", "organ"]) in (0, 3)
    rows = summary()
    for c, organ in dice.items():
        assert "compared again: it was not compared with a reference" in rows[c]["reason"]
        lab = read_label_map(out / c / "label.nii.gz").array > 0
        assert rows[c]["dice"] == pytest.approx(2 * (lab & organ).sum() / (lab.sum() + organ.sum()))
        assert (out / c / "mesh.vtk").stat().st_mtime_ns == fitted[c]
    assert main([*base, "--reference-name", "RS.dcm", "--reference-structure", "shrunk"]) in (0, 3)
    rows2 = summary()
    for c in dice:
        assert "compared with the reference's labels ['organ'], not ['shrunk']" in \
            rows2[c]["reason"] and rows2[c]["dice"] < rows[c]["dice"]
        assert _scored(out / c)[0]["structures"][0]["name"] == "Shrunk"
    state = tree_state(out)
    assert main([*base, "--reference-name", "RS.dcm", "--reference-structure", "shrunk"]) in (0, 3)
    assert all(r["reason"] == "complete outputs exist (inputs unchanged)"
               for r in summary().values())
    assert _but_summaries(tree_state(out)) == _but_summaries(state)
    capsys.readouterr()
    assert main([*base, "--reference-name", "RS.dcm"]) == 1     # two structures, none named
    rows3 = summary()
    assert all("choose with --reference-structure" in r["error"] for r in rows3.values())
    assert main([*base, "--reference-name", "RS.dcm", "--reference-labels", "1"]) == 1
    assert "RS.dcm is an RT Structure Set: --reference-labels picks labels of a label map" in \
        capsys.readouterr().err
    # a set of one structure needs no name, and a rerun keeps what it compared
    for c, organ in dice.items():
        vol = read_scan(root / c / "scan")[0]
        write_rtstruct(root / c / "One.dcm", vol, {"Organ": organ}, frame_of_reference=FOR)
        write_rtstruct(root / c / "Other.dcm", vol, {"Organ": organ},
                       frame_of_reference="1.2.3.4")
    for k in range(2):
        assert main([*base, "--reference-name", "One.dcm"]) in (0, 3)
        rows4 = summary()
        for c in dice:
            assert ("compared again" in rows4[c]["reason"]) == (k == 0)
            assert rows4[c]["dice"] == rows[c]["dice"]
            ref, man = _scored(out / c)
            assert ref["labels"] == [] == man["parameters"]["reference_labels"]
            assert ref["structures"][0]["name"] == "Organ"
    # and so does a batch compared from its first run on
    fresh = [*base[:-1], str(tmp_path / "fresh"), "--reference-name", "One.dcm"]
    for k in range(2):
        assert main(fresh) in (0, 3)
        for c in dice:
            ref, man = _scored(tmp_path / "fresh" / c)
            assert ref["labels"] == [] == man["parameters"]["reference_labels"]
    assert all(r["reason"] == "complete outputs exist (inputs unchanged)" for r in
               json.loads((tmp_path / "fresh" / "summary.json").read_text())["cases"])
    state = tree_state(out)
    assert main([*base, "--reference-name", "Other.dcm"]) == 1
    assert all("Other.dcm was drawn in another frame of reference" in r["error"]
               for r in summary().values())
    assert _but_summaries(tree_state(out)) == _but_summaries(state)


def test_a_refinement_batch_scores_against_structure_sets_in_their_scans_frame(
        phantom_model, tmp_path):
    """refine over case folders (mask, DICOM scan, structure set): the rows are
    scored against each case's set, a rerun that only adds the reference compares
    again on the scan's frame of reference, and a set of another frame fails its
    row, the folder kept as it was."""
    from scipy.ndimage import binary_dilation

    from shapeprior.io import write_label

    model = phantom_model[3]
    root = tmp_path / "cases"
    organs = {}
    for case, vol, organ in _phantom_case_folders(phantom_model, root):
        rough = binary_dilation(organ, iterations=2).astype(np.uint8)
        write_label(Volume(rough, vol.spacing, vol.origin, vol.direction), rough,
                    root / case / "mask.nii.gz")
        write_rtstruct(root / case / "RS.dcm", vol, {"Organ": organ}, frame_of_reference=FOR)
        write_rtstruct(root / case / "Other.dcm", vol, {"Organ": organ},
                       frame_of_reference="1.2.3.4")
        organs[case] = organ
    out = tmp_path / "out"
    base = ["refine", str(root), "--mask-name", "mask.nii.gz", "--image-name", "scan",
            "--model", str(model), "-o", str(out)]
    assert main(base) in (0, 3)

    def rows():
        return {r["case"]: r for r in json.loads((out / "summary.json").read_text())["cases"]}

    assert main([*base, "--reference-name", "RS.dcm"]) in (0, 3)
    for c, r in rows().items():
        lab = read_label_map(out / c / "label.nii.gz").array > 0
        assert "compared again" in r["reason"] and r["dice"] == pytest.approx(
            2 * (lab & organs[c]).sum() / (lab.sum() + organs[c].sum())), r
        ref, man = _scored(out / c)
        assert ref["frame_of_reference_checked"] and ref["structures"][0]["name"] == "Organ"
    state = tree_state(out)
    assert main([*base, "--reference-name", "Other.dcm"]) == 1
    assert all("Other.dcm was drawn in another frame of reference" in r["error"]
               for r in rows().values())
    assert _but_summaries(tree_state(out)) == _but_summaries(state)
