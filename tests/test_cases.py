"""Case discovery, safe unique names and de-identification (pipeline/_cases.py)."""

import os
import re
import stat
from pathlib import Path

import pytest

from shapeprior.pipeline._cases import (RESERVED, Deidentifier, discover_cases, safe_name, scrub,
                                        unique_names)


@pytest.mark.parametrize("raw, want", [
    ("case 01", "case_01"), ("../../etc", "_.._etc"), (".hidden", "hidden"),
    ("...", "unnamed"), ("", "unnamed"), ("Müller, Hans", "M_ller_Hans"),
    ("summary.json", "summary.json_case"), ("manifest.json", "manifest.json_case")])
def test_safe_name(raw, want):
    got = safe_name(raw)
    assert got == want
    assert not got.startswith(".") and "/" not in got and got not in RESERVED


def test_unique_names_are_unique_and_deterministic():
    raw = ["x.nii", "x.nii.gz", "x.mha", "y.nii", "y.nii", "x_nii-2.nii", "x_nii.nii"]
    got = unique_names(raw)
    assert len(set(got)) == len(got) == len(raw)
    assert got == unique_names(raw)
    assert got[3] == "y_nii" and got[4] == "y_nii-2"
    # a counter that recreates a name taken by another file keeps counting
    clash = unique_names(["x.nii", "x.nii", "x_nii-2.nii"])
    assert len(set(clash)) == 3


def test_deidentified_names_are_salted_stable_and_hide_the_source(tmp_path, monkeypatch):
    monkeypatch.delenv("SHAPEPRIOR_DEID_SALT", raising=False)
    salt_file = tmp_path / "cfg" / "deid-salt"
    a = Deidentifier(salt_file)
    assert salt_file.exists()
    if os.name == "posix":
        assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600     # a secret
    b = Deidentifier(salt_file)                                   # the stored salt again
    p = tmp_path / "Smith_John.nii.gz"
    assert a.name(p) == b.name(p) and a.name(p).startswith("case-")
    assert "Smith" not in a.name(p)
    monkeypatch.setenv("SHAPEPRIOR_DEID_SALT", "another salt")
    c = Deidentifier(salt_file)
    assert c.name(p) != a.name(p)                                 # the salt matters
    monkeypatch.setenv("SHAPEPRIOR_DEID_SALT", "another salt!")
    assert Deidentifier(salt_file).name(p) != c.name(p)


def test_scrub_removes_every_form_of_the_name(tmp_path):
    p = tmp_path / "Smith_John.nii.gz"
    text = (f"cannot read {p}: Smith_John.nii.gz is truncated (Smith_John, "
            f"{os.path.basename(str(p))})")
    got = scrub(text, p, "(withheld)")
    assert "Smith" not in got and "John" not in got and "(withheld)" in got


def test_scrub_replaces_a_short_name_only_where_it_stands_alone(tmp_path):
    """TotalSegmentator names every scan ``ct.nii.gz``: its stem is in "expected"
    and "correct", which stay words; the name itself goes wherever it stands
    alone, or is run on with ``_``, ``.`` or ``/``."""
    p = tmp_path / "s0011" / "ct.nii.gz"
    text = (f"ct: expected a 3-D image, got 2-D (ct.nii.gz; {p}; 'ct'; ct_fast, "
            "correct ACT)")
    got = scrub(text, p, "case-1")
    assert got == ("case-1: expected a 3-D image, got 2-D (case-1; case-1; 'case-1'; "
                   "case-1_fast, correct ACT)")
    # a path that starts with a separator needs no boundary before it
    assert scrub(f"file{p}", p, "X") == "fileX"


def test_discover_cases_lists_images_and_reports_empty_folders(tmp_path):
    (tmp_path / "b.nii.gz").write_bytes(b"x")
    (tmp_path / "a.mha").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "empty").mkdir()
    # macOS companions (the MSD archives carry them) and Finder files are not cases
    (tmp_path / "._b.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    cases = discover_cases(tmp_path, list_series=lambda d: [])
    assert [c.name for c in cases] == ["a", "b", "empty"]
    assert [c.error for c in cases][:2] == [None, None]
    assert cases[2].error == "no DICOM image series in this folder"


def test_cases_and_label_maps_are_found_by_one_list_of_suffixes(tmp_path):
    """segment's folder scan and build-model's label-map scan take the same
    files: every suffix the readers read, in any case (a converter's
    ``X.NII.GZ``, a detached NRRD header), and never a volume's data file."""
    from shapeprior.model import case_name, find_label_maps
    from shapeprior.model._build import image_candidates

    for name in ("a.NII.GZ", "b.nhdr", "b.raw", "c.mha", "d.img", "e.Nii", "f.nrrd.bak",
                 "g.hdr", "g.img", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    cases = discover_cases(tmp_path, list_series=lambda d: [])
    assert [c.name for c in cases] == ["a", "b", "c", "e", "g"]
    labels = find_label_maps(tmp_path)
    assert [f.name for f in labels] == ["a.NII.GZ", "b.nhdr", "c.mha", "e.Nii", "g.hdr"]
    assert [case_name(f, tmp_path) for f in labels] == ["a", "b", "c", "e", "g"]
    # the image of an upper-case label map: its nnU-Net channel keeps the suffix as written
    assert (tmp_path / "img" / "a_0000.NII.GZ") in image_candidates(
        tmp_path / "a.NII.GZ", tmp_path, tmp_path / "img")


@pytest.mark.parametrize("side", ["left", "right", "none"])
def test_a_batch_summary_row_names_the_side_of_a_paired_organ(side, monkeypatch, tmp_path):
    """A folder segmented with a paired organ's model: each summary row says which
    side the case's fit took (both are tried when no --side is given); a model of
    an unpaired organ adds nothing."""
    from types import SimpleNamespace

    from shapeprior.pipeline import _batch, _run
    from shapeprior.segmentation import SegmentParams

    rep = {"status": "ok", "quality": 0.9, "volume_ml": 150.0, "iterations": 20,
           "time_s": 1.0, "reasons": [], "side": side}
    monkeypatch.setattr(_batch, "_model", lambda path, prior: (None, None))
    monkeypatch.setattr(_run, "run_case", lambda *a, **k: rep)
    case = SimpleNamespace(name="case_1", path=tmp_path / "case_1.nii.gz")
    row = _batch.run_one(case, tmp_path / "out", tmp_path / "m.npz", SegmentParams(), None,
                         "vtk", False, [], False, False, None)
    assert row["status"] == "ok" and row.get("side") == (None if side == "none" else side)


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"x")


def test_references_are_matched_by_the_case_file_name(tmp_path):
    """images/x.nii.gz takes labels/x.<any image suffix>, a DICOM folder takes
    the label map named like it, nnU-Net's x_0000 takes x; a case without one
    gets None; files that are not label maps by suffix are ignored."""
    from shapeprior.pipeline import match_references

    _touch(tmp_path / "img", "a.nii.gz", "b.mha", "c_0000.nii.gz", "d.nii.gz", "e_0001.nii")
    (tmp_path / "img" / "dicom_case").mkdir()
    _touch(tmp_path / "lab", "a.nii.gz", "b.nii", "c.nii.gz", "dicom_case.nrrd", "e.nii.gz",
           "d.txt", ".d.nii.gz")
    cases = discover_cases(tmp_path / "img",
                           list_series=lambda d: ["s"] if d.name == "dicom_case" else [])
    assert [c.name for c in cases] == ["a", "b", "c_0000", "d", "e_0001", "dicom_case"]
    got = match_references(cases, tmp_path / "lab")
    assert [p.name if p else None for p in got] == [
        "a.nii.gz", "b.nii", "c.nii.gz", None, "e.nii.gz", "dicom_case.nrrd"]
    # an exact name wins over the channel-less one
    _touch(tmp_path / "lab", "c_0000.mha")
    assert match_references(cases, tmp_path / "lab")[2].name == "c_0000.mha"


def test_reference_folder_refusals_name_the_cause(tmp_path):
    from shapeprior.pipeline import match_references

    _touch(tmp_path / "img", "Smith_John.nii.gz")
    cases = discover_cases(tmp_path / "img", list_series=lambda d: [])
    _touch(tmp_path / "other", "x.nii.gz")
    with pytest.raises(ValueError, match=r"holds no label map named like a case \(for "
                                         r"Smith_John.nii.gz it looked for Smith_John.nii.gz"):
        match_references(cases, tmp_path / "other")
    with pytest.raises(ValueError, match="is a file; with a folder of cases it names a folder"):
        match_references(cases, tmp_path / "other" / "x.nii.gz")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        match_references(cases, tmp_path / "nowhere")
    _touch(tmp_path / "two", "Smith_John.nii.gz", "Smith_John.mha")
    with pytest.raises(ValueError, match="2 files could be the reference of Smith_John.nii.gz: "
                                         "Smith_John.mha, Smith_John.nii.gz"):
        match_references(cases, tmp_path / "two")
    # de-identified: neither message names the case or its files
    hidden = Deidentifier(tmp_path / "salt").apply(cases)
    for folder in ("other", "two"):
        with pytest.raises(ValueError) as e:
            match_references(hidden, tmp_path / folder, deidentify=True)
        assert "Smith" not in str(e.value) and "John" not in str(e.value), str(e.value)


def test_reference_summary_reports_mean_median_and_the_worst_case():
    from shapeprior.pipeline import reference_summary

    rows = [{"case": "a", "dice": 0.9, "assd_mm": 0.5, "hd95_mm": 1.0},
            {"case": "b", "dice": 0.6, "assd_mm": 0.4, "hd95_mm": 3.0},
            {"case": "c", "dice": 0.8, "assd_mm": 2.0, "hd95_mm": 2.0},
            {"case": "d", "status": "failed", "error": "truncated"}]
    s = reference_summary(rows)
    assert s["n_compared"] == 3
    assert s["dice"]["worst"] == 0.6 and s["dice"]["worst_case"] == "b"
    assert s["dice"]["median"] == 0.8 and abs(s["dice"]["mean"] - 2.3 / 3) < 1e-12
    assert s["assd_mm"]["worst_case"] == "c" and s["hd95_mm"]["worst_case"] == "b"
    assert s["assd_mm"]["n_without_surface"] == 0
    assert reference_summary(rows[3:]) is None
    # an empty label (a failed fit) has Dice 0 and no distance: counted, never averaged
    empty = {"case": "e", "dice": 0.0, "assd_mm": None, "hd95_mm": None}
    s = reference_summary(rows + [empty])
    assert s["n_compared"] == 4 and s["dice"]["worst_case"] == "e"
    assert s["assd_mm"]["n_without_surface"] == 1 and s["assd_mm"]["worst_case"] == "c"
    assert s["assd_mm"]["mean"] == pytest.approx(2.9 / 3)
    alone = reference_summary([empty])["assd_mm"]
    assert alone == {"n_without_surface": 1}


def test_batch_reference_rows_and_resume_follow_the_reference_given(phantom_model, tmp_path):
    """Phantoms against their label maps: a row's Dice is the written label's
    Dice; a rerun with no --reference keeps the cases but shows no Dice; one
    given to cases compared with none before, or with another map or other
    labels, keeps their segmentations and compares them again (the label, mesh
    and statistics unchanged byte for byte, the report's reference replaced)."""
    import json
    import shutil

    import numpy as np

    from shapeprior.cli import main
    from shapeprior.io import read_label_map, write_label
    from shapeprior.segmentation import dice

    d, images, labels, model = phantom_model
    cases, refs = tmp_path / "cases", tmp_path / "refs"
    cases.mkdir()
    refs.mkdir()
    for i in (5, 6):                                # 6 holds the planted leak
        shutil.copy(images / f"phantom_00{i}.nii.gz", cases / f"c{i}.nii.gz")
        shutil.copy(labels / f"phantom_00{i}.nii.gz", refs / f"c{i}.nii.gz")
    out = tmp_path / "out"

    def run(*extra):
        rc = main(["segment", str(cases), "-o", str(out), "--model", str(model), *extra])
        doc = json.loads((out / "summary.json").read_text())
        return rc, doc, {r["case"]: r for r in doc["cases"]}

    rc, doc, rows = run()
    assert "reference" not in doc and all("dice" not in r for r in rows.values())

    def written():
        return {f"{c}/{f.name}": f.read_bytes() for c in ("c5", "c6")
                for f in (out / c).iterdir() if f.name not in ("report.json", "manifest.json")}

    fitted = written()
    rc, doc, rows = run("--reference", str(refs))
    assert all(r["status"] == "skipped" and r["reason"].endswith(
        "compared again: it was not compared with a reference") for r in rows.values()), rows
    assert written() == fitted                  # nothing fitted again
    for c in ("c5", "c6"):
        seg = read_label_map(out / c / "label.nii.gz").array > 0
        assert rows[c]["dice"] == dice(seg, read_label_map(refs / f"{c}.nii.gz").array > 0)
    assert doc["reference"]["dice"]["worst"] == min(r["dice"] for r in rows.values())
    import csv

    table = {r["case"]: r for r in csv.DictReader(open(out / "summary.csv", newline=""))}
    assert sorted(table) == ["c5", "c6"]
    for c in ("c5", "c6"):
        assert float(table[c]["dice"]) == pytest.approx(rows[c]["dice"], abs=1e-6)
        assert table[c]["status"] == rows[c]["status"] == "skipped"
        assert table[c]["result"] == rows[c]["result"] == "ok"
    rc, doc, kept = run()
    assert {r["status"] for r in kept.values()} == {"skipped"}
    assert all("dice" not in r for r in kept.values()) and "reference" not in doc
    lab = read_label_map(refs / "c5.nii.gz")
    (refs / "c5.nii.gz").unlink()
    write_label(lab, np.zeros(lab.array.shape, np.uint8), refs / "c5.nii.gz")
    rc, doc, again = run("--reference", str(refs))
    # compared again, and left out: an empty reference scores nothing (its Dice was 0)
    assert "reference differs" in again["c5"]["reason"] and "dice" not in again["c5"]
    assert again["c5"]["note"] == "the reference holds no organ: not compared"
    rep5 = json.loads((out / "c5" / "report.json").read_text())
    assert rep5["reference"]["empty"] and any("holds no voxel" in w for w in rep5["warnings"])
    assert again["c6"]["status"] == "skipped" and again["c6"]["dice"] == rows["c6"]["dice"]
    assert doc["reference"]["dice"]["worst_case"] == "c6" and doc["reference"]["n_compared"] == 1
    # other labels of the same maps: no case keeps a Dice computed on label 1
    rc, doc, other = run("--reference", str(refs), "--reference-labels", "2")
    assert "compared with the reference's labels [1], not [2]" in other["c6"]["reason"]
    assert "dice" not in other["c6"]            # the phantoms' maps hold label 1 only
    assert doc["reference"]["n_compared"] == 0
    rep6 = json.loads((out / "c6" / "report.json").read_text())
    assert rep6["reference"]["labels"] == [2]
    assert sum("holds no voxel" in w for w in rep6["warnings"]) == 1
    # the label the map does hold is named, once, as another the organ may be
    other_note = ("the reference holds 1 other label (1) besides the one scored (2); if the "
                  "organ is another of them, name it with --reference-labels")
    assert rep6["warnings"].count(other_note) == 1 and rep6["reference"]["other_labels"] == 1
    rep5 = json.loads((out / "c5" / "report.json").read_text())
    assert sum("holds no voxel" in w for w in rep5["warnings"]) == 1     # not one per run
    rc, doc, same = run("--reference", str(refs), "--reference-labels", "2")
    assert {r["status"] for r in same.values()} == {"skipped"}
    assert all(r["reason"] == "complete outputs exist (inputs unchanged)"
               for r in same.values())              # complete: the manifest agrees
    assert written() == fitted
    # compared again on label 1: the note goes with the comparison it was about
    rc, doc, back = run("--reference", str(refs))
    assert "not [1]" in back["c6"]["reason"] and back["c6"]["dice"] == rows["c6"]["dice"]
    rep6 = json.loads((out / "c6" / "report.json").read_text())
    assert other_note not in rep6["warnings"] and rep6["reference"]["other_labels"] == 0
    assert not any("holds no voxel" in w for w in rep6["warnings"])
    # one case with the folder as --reference: its own label map is found in it
    one = tmp_path / "one"
    assert main(["segment", str(cases / "c6.nii.gz"), "-o", str(one), "--model", str(model),
                 "--reference", str(refs)]) == 0
    rep = json.loads((one / "report.json").read_text())
    assert rep["reference"]["dice"] == rows["c6"]["dice"]


def test_a_dataset_root_names_its_folders_of_images(tmp_path):
    """An nnU-Net/MSD dataset root given as the input: the error names the
    subfolders that hold the scans and the label maps."""
    _touch(tmp_path / "ds" / "imagesTs", "a_0000.nii.gz")
    _touch(tmp_path / "ds" / "labelsTs", "a.nii.gz")
    (tmp_path / "ds" / "notes").mkdir()
    with pytest.raises(ValueError, match="no DICOM series; its subfolders imagesTs, labelsTs "
                                         "hold image files: give the scans' folder"):
        discover_cases(tmp_path / "ds", list_series=lambda d: [])
    with pytest.raises(ValueError, match="no DICOM series$"):
        discover_cases(tmp_path / "ds" / "notes", list_series=lambda d: [])


def test_summary_csv_cells_never_start_a_formula():
    """A reason or error that starts like a spreadsheet formula is written as text."""
    from shapeprior.pipeline._batch import summary_csv

    text = summary_csv([{"case": "c", "status": "failed", "error": "=HYPERLINK(\"x\")",
                         "reasons": ["+1", "@SUM(A1)"], "volume_ml": -0.5}])
    row = text.splitlines()[1]
    assert "'=HYPERLINK" in row and "'+1; @SUM" in row and ",-0.5," in row


def test_compared_again_safely_or_not_at_all(phantom_model, tmp_path, capsys):
    """A rerun that only adds a reference: one on another grid fails its row in one
    line and leaves the case's outputs as they were, byte for byte; with
    --deidentify the manifest records the reference without its path; a rerun
    after that is complete."""
    import json
    import shutil

    from shapeprior.cli import main
    from shapeprior.io import Volume, read_label_map, write_label

    d, images, labels, model = phantom_model
    cases, refs = tmp_path / "cases", tmp_path / "Doe_refs"
    cases.mkdir()
    refs.mkdir()
    for i in (4, 5):
        shutil.copy(images / f"phantom_00{i}.nii.gz", cases / f"c{i}.nii.gz")
        shutil.copy(labels / f"phantom_00{i}.nii.gz", refs / f"c{i}.nii.gz")
    lab = read_label_map(labels / "phantom_004.nii.gz")        # c4's reference: coarser grid
    (refs / "c4.nii.gz").unlink()
    write_label(Volume(lab.array, lab.spacing * 2, lab.origin, lab.direction), lab.array,
                refs / "c4.nii.gz")
    out = tmp_path / "out"
    args = ["segment", str(cases), "-o", str(out), "--model", str(model), "--deidentify"]
    assert main(args) == 0
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    before = {f: f.read_bytes() for p in folders for f in p.iterdir()}
    capsys.readouterr()
    assert main(args + ["--reference", str(refs)]) == 1
    doc = json.loads((out / "summary.json").read_text())
    bad = [r for r in doc["cases"] if r["status"] == "failed"]
    good = [r for r in doc["cases"] if r["status"] == "skipped"]
    assert len(bad) == 1 and len(good) == 1 and "dice" in good[0]
    assert "not on the image's grid" in bad[0]["error"] and "Doe" not in bad[0]["error"]
    failed_folder = out / bad[0]["case"]
    assert {f: f.read_bytes() for f in failed_folder.iterdir()} == {
        f: b for f, b in before.items() if f.parent == failed_folder}
    man = json.loads((out / good[0]["case"] / "manifest.json").read_text())
    assert man["inputs"]["reference"]["path"] == "reference"
    assert "Doe" not in json.dumps(man) and man["parameters"]["reference_labels"] == [1]
    assert main(args + ["--reference", str(refs)]) == 1
    again = {r["case"]: r for r in json.loads((out / "summary.json").read_text())["cases"]}
    assert again[good[0]["case"]]["reason"] == "complete outputs exist (inputs unchanged)"
    assert again[good[0]["case"]]["dice"] == good[0]["dice"]


def test_a_folder_of_case_folders_takes_image_name(tmp_path):
    """KiTS19's layout (``case_x/imaging.nii.gz`` beside its
    ``segmentation.nii.gz``): without --image-name every case folder was a failed
    'no DICOM image series' and the root's hint said to give the scans' folder;
    now the hint names the option and the file the folders share (their names
    counted, not shown, when de-identifying), and with it each folder is a case
    named after it, the scan a file or a DICOM folder."""
    from shapeprior.pipeline import discover_cases

    root = tmp_path / "kits"
    _touch(root / "Doe_John", "imaging.nii.gz", "segmentation.nii.gz")
    _touch(root / "Roe_Jane", "imaging.nii.gz", "segmentation.nii.gz")
    _touch(root / "no_scan", "segmentation.nii.gz")
    (root / "dicom_case" / "imaging.nii.gz").mkdir(parents=True)    # a DICOM folder so named
    (root / ".cache").mkdir()
    series = {root / "dicom_case" / "imaging.nii.gz": ["1.2.3"]}
    ls = lambda d: series.get(d, [])                                 # noqa: E731
    with pytest.raises(ValueError, match=r"its subfolders Doe_John, Roe_Jane, no_scan hold image "
                                         r"files, each segmentation.nii.gz: a folder of case "
                                         r"folders takes --image-name NAME"):
        discover_cases(root, list_series=ls)
    with pytest.raises(ValueError, match="3 of its subfolders hold image files, each a file "
                                         "of one name: a folder of case folders takes "
                                         "--image-name NAME") as err:
        discover_cases(root, list_series=ls, deidentify=True)
    assert "Doe" not in str(err.value) and "Roe" not in str(err.value)
    assert "segmentation.nii.gz" not in str(err.value)
    cases = discover_cases(root, list_series=ls, image_name="imaging.nii.gz")
    assert [c.name for c in cases] == ["Doe_John", "Roe_Jane", "dicom_case", "no_scan"]
    assert [c.folder for c in cases] == [root / n for n in ("Doe_John", "Roe_Jane", "dicom_case",
                                                            "no_scan")]
    assert cases[0].path == root / "Doe_John" / "imaging.nii.gz"
    assert [c.error for c in cases[:3]] == [None] * 3
    assert cases[3].error == "no imaging.nii.gz in this folder"
    series.clear()
    assert discover_cases(root, list_series=ls, image_name="imaging.nii.gz")[2].error == \
        "imaging.nii.gz in this folder holds no DICOM image series"
    (root / "Doe_John" / "notes.txt").write_text("x")
    (root / "Roe_Jane" / "notes.txt").mkdir()
    series[root / "Roe_Jane" / "notes.txt"] = ["1.2.3"]
    assert discover_cases(root, list_series=ls, image_name="notes.txt")[0].error.startswith(
        "notes.txt is not an image file")
    series.clear()
    for bad in ("", "..", "sub/imaging.nii.gz"):
        with pytest.raises(ValueError, match="--image-name .* is not a file or folder name"):
            discover_cases(root, list_series=ls, image_name=bad)
    with pytest.raises(ValueError, match="no case folder in it holds ct.nii.gz"):
        discover_cases(root, list_series=ls, image_name="ct.nii.gz")
    with pytest.raises(ValueError, match="is not a folder"):
        discover_cases(root / "Doe_John" / "imaging.nii.gz", list_series=ls,
                       image_name="imaging.nii.gz")
    # beside image files, a case folder is a failed row that names the option, no file
    _touch(root, "loose.nii.gz")
    rows = {c.name: c.error for c in discover_cases(root, list_series=ls)}
    assert rows["loose"] is None
    assert rows["Doe_John"] == ("no DICOM image series in this folder; it holds 2 image files: a "
                                "folder of case folders takes --image-name NAME, the scan's file "
                                "name in each")
    assert rows["dicom_case"] == "no DICOM image series in this folder"


def test_files_in_case_folders_are_matched_by_name(tmp_path):
    """--reference-name / --image-name: the file in each case's folder, in its
    segmentations/ (TotalSegmentator's case layout, label maps only), or in
    FOLDER/<case folder>/; a case without it gets None, none at all, a plain
    file's cases or the case's own input are refused."""
    from shapeprior.pipeline import discover_cases, match_in_case_folders

    root, other = tmp_path / "cases", tmp_path / "other"
    _touch(root / "a", "ct.nii.gz", "ref.nii.gz")
    _touch(root / "b" / "segmentations", "ref.nii.gz")
    _touch(root / "b", "ct.nii.gz")
    _touch(root / "c", "ct.nii.gz")
    (root / "c" / "ref.nii.gz").mkdir()             # a folder is no label map
    _touch(other / "b", "ref.nii.gz")
    (other / "c" / "scan").mkdir(parents=True)
    cases = discover_cases(root, list_series=lambda d: [], image_name="ct.nii.gz")
    got = match_in_case_folders(cases, "ref.nii.gz", "--reference-name")
    assert got == [root / "a" / "ref.nii.gz", root / "b" / "segmentations" / "ref.nii.gz", None]
    got = match_in_case_folders(cases, "ref.nii.gz", "--reference-name", other)
    assert got == [None, other / "b" / "ref.nii.gz", None]
    assert match_in_case_folders(cases, "scan", "--image-name", other, scans=True) == \
        [None, None, other / "c" / "scan"]
    with pytest.raises(ValueError, match="--reference-name 'scan' is not a label map file's name"):
        match_in_case_folders(cases, "scan", "--reference-name", other)
    with pytest.raises(ValueError, match="--reference-name ct.nii.gz is the case's own input"):
        match_in_case_folders(cases, "ct.nii.gz", "--reference-name")
    with pytest.raises(ValueError, match="--reference-name x.nii.gz: no case folder in .*other "
                                         "holds it"):
        match_in_case_folders(cases, "x.nii.gz", "--reference-name", other)
    flat = discover_cases(root / "a", list_series=lambda d: [])
    with pytest.raises(ValueError, match="the input is not a folder of case folders"):
        match_in_case_folders(flat, "ref.nii.gz", "--reference-name")


def test_segment_and_refine_a_folder_of_case_folders(phantom_model, tmp_path, capsys):
    """The KiTS19 layout end to end: ``segment --image-name --reference-name``
    fits each case folder's scan and scores it against the label map beside it
    (the same Dice as one case with --reference); ``refine --mask-name
    --image-name --reference-name`` takes the three from each folder; with
    --deidentify no output names a case folder."""
    import json
    import shutil

    from shapeprior.cli import main

    d, images, labels, model = phantom_model
    root = tmp_path / "kits"
    for i, name in ((5, "Doe_John"), (6, "Roe_Jane")):
        (root / name).mkdir(parents=True)
        shutil.copy(images / f"phantom_00{i}.nii.gz", root / name / "imaging.nii.gz")
        shutil.copy(labels / f"phantom_00{i}.nii.gz", root / name / "segmentation.nii.gz")
    out, one = tmp_path / "out", tmp_path / "one"
    assert main(["segment", str(root), "-o", str(out), "--model", str(model), "--image-name",
                 "imaging.nii.gz", "--reference-name", "segmentation.nii.gz"]) in (0, 3)
    rows = {r["case"]: r for r in json.loads((out / "summary.json").read_text())["cases"]}
    assert sorted(rows) == ["Doe_John", "Roe_Jane"] and all("dice" in r for r in rows.values())
    doe = root / "Doe_John"
    assert main(["segment", str(doe / "imaging.nii.gz"), "-o", str(one), "--model", str(model),
                 "--reference", str(doe / "segmentation.nii.gz")]) in (0, 3)
    assert json.loads((one / "report.json").read_text())["reference"]["dice"] == \
        rows["Doe_John"]["dice"]
    capsys.readouterr()
    assert main(["segment", str(root), "-o", str(tmp_path / "x"), "--model", str(model),
                 "--reference-name", "segmentation.nii.gz"]) == 1
    assert "--reference-name names the reference in each case folder; give --image-name" in \
        capsys.readouterr().err
    assert main(["segment", str(root), "-o", str(tmp_path / "x"), "--model", str(model)]) == 1
    assert "takes --image-name NAME" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # refine: the masks are the fits just written, as another tool's output would be
    for name in rows:
        shutil.copy(out / name / "label.nii.gz", root / name / "pred.nii.gz")
    ref = tmp_path / "ref"
    assert main(["refine", str(root), "-o", str(ref), "--model", str(model), "--mask-name",
                 "pred.nii.gz", "--image-name", "imaging.nii.gz", "--reference-name",
                 "segmentation.nii.gz"]) in (0, 3)
    for name in rows:
        rep = json.loads((ref / name / "report.json").read_text())
        assert rep["input"]["image"] is not None and rep["reference"]["dice"] > 0.5
    anon = tmp_path / "anon"
    assert main(["segment", str(root), "-o", str(anon), "--model", str(model), "--image-name",
                 "imaging.nii.gz", "--reference-name", "segmentation.nii.gz",
                 "--deidentify"]) in (0, 3)
    for f in anon.rglob("*"):
        assert "Doe" not in f.name and "Roe" not in f.name
        if f.suffix in (".json", ".csv"):
            text = f.read_text()
            assert "Doe" not in text and "Roe" not in text, f


def test_names_in_case_folders_may_be_patterns(tmp_path):
    """Scans named per case (``p1/p1_ct.nii.gz``, ``p2/p2_ct.nii.gz``): --image-name,
    --reference-name and --mask-name take a pattern, each folder's one matching
    image file (or DICOM folder for a scan); none is a case error, several are an
    error naming the count."""
    from shapeprior.pipeline import discover_cases, discover_masks, match_in_case_folders

    root = tmp_path / "cases"
    _touch(root / "p1", "p1_ct.nii.gz", "p1_seg.nii.gz", "notes_ct.txt")
    _touch(root / "p2", "p2_ct.nii.gz", "p2_seg.nii.gz", ".p2_ct.nii.gz")
    _touch(root / "p3" / "segmentations", "p3_seg.nii.gz")
    (root / "p3" / "p3_ct").mkdir()                      # a DICOM folder
    _touch(root / "p4", "a_ct.nii.gz", "b_ct.nii.gz")
    ls = lambda d: ["1.2"] if d.name == "p3_ct" else []     # noqa: E731
    cases = discover_cases(root, list_series=ls, image_name="*_ct*")
    got = {c.name: (c.path.name, c.error) for c in cases}
    assert got["p1"] == ("p1_ct.nii.gz", None) and got["p2"] == ("p2_ct.nii.gz", None)
    assert got["p3"] == ("p3_ct", None)
    assert got["p4"][1] == "2 entries in this folder match *_ct*"
    refs = match_in_case_folders(cases[:3], "*_seg.nii.gz", "--reference-name")
    assert [r.name for r in refs] == ["p1_seg.nii.gz", "p2_seg.nii.gz", "p3_seg.nii.gz"]
    assert refs[2].parent.name == "segmentations"
    with pytest.raises(ValueError, match=r"--reference-name \*.nii.gz: 2 entries in p1 match"):
        match_in_case_folders(cases[:3], "*.nii.gz", "--reference-name")
    masks = {c.name: (c.path.name, c.error) for c in
             discover_masks(root, mask_name="*_seg.nii.gz")}
    assert masks["p1"] == ("p1_seg.nii.gz", None) and masks["p3"] == ("p3_seg.nii.gz", None)
    assert masks["p4"][1] == "no *_seg.nii.gz in this folder or its segmentations/"


def test_case_folders_whose_series_lie_deeper_are_cases(tmp_path, monkeypatch):
    """A TCIA download keeps each patient's series in patient/study/series/; a CD
    export in DICOM/PA0/ST0/SE0/. Each patient folder that leads to one series is a
    case, read (and hashed for the manifest) from that series' folder; one that
    leads to two is a failed row naming them (counted with --deidentify); a CD
    export is one case, the folder given."""
    from shapeprior.pipeline._run import input_files

    def series(folder):
        folder.mkdir(parents=True)
        for k in range(2):
            (folder / f"IM{k}").write_bytes(b"x")
        return folder

    def lister(d):
        return [(0, "k", 2, "u")] if (Path(d) / "IM0").is_file() else []

    root = tmp_path / "download"
    series(root / "Pat-1" / "study" / "CT")
    series(root / "Pat-2" / "study" / "CT")
    series(root / "Pat-3" / "a" / "CT")
    series(root / "Pat-3" / "b" / "CT")
    (root / "Pat-4" / "study").mkdir(parents=True)
    for deid, shown in ((False, r"2 folders \(a/CT, b/CT\)"), (True, "2 folders")):
        cases = discover_cases(root, list_series=lister, deidentify=deid)
        assert [(c.name, c.path.name, c.error is None) for c in cases] == [
            ("Pat-1", "Pat-1", True), ("Pat-2", "Pat-2", True), ("Pat-3", "Pat-3", False),
            ("Pat-4", "Pat-4", False)]
        assert re.fullmatch(f"no DICOM image series in this folder itself; {shown} below "
                            "it hold one each: give the one to read", cases[2].error)
        assert cases[3].error == "no DICOM image series in this folder"
    # a patient folder that cannot be read fails its own row (as a flat DICOM subfolder
    # always did); the others run, and one readable series is no CD export
    def unreadable(d):
        if Path(d).name == "Pat-1":
            raise PermissionError(13, "Permission denied")
        return lister(d)

    cases = discover_cases(root, list_series=unreadable)
    assert [(c.name, c.error) for c in cases][:2] == [
        ("Pat-1", "[Errno 13] Permission denied"), ("Pat-2", None)]
    two = tmp_path / "two"
    series(two / "Pat-1" / "study" / "CT")
    series(two / "Pat-2" / "study" / "CT")
    cases = discover_cases(two, list_series=unreadable)
    assert [(c.name, c.path, c.error is None) for c in cases] == [
        ("Pat-1", two / "Pat-1", False), ("Pat-2", two / "Pat-2", True)]
    cd = tmp_path / "cd"
    se = series(cd / "DICOM" / "PA0" / "ST0" / "SE0")
    (cd / "DICOMDIR").write_bytes(b"x")
    cases = discover_cases(cd, list_series=lister)
    assert [(c.name, c.path, c.error) for c in cases] == [("cd", cd, None)]
    # the manifest hashes the files of the series read, not the export's DICOMDIR
    import shapeprior.io._dicom as dicom

    monkeypatch.setattr(dicom, "list_series", lister)
    assert input_files(cd) == [se / "IM0", se / "IM1"]
    assert input_files(root / "Pat-3") == []


def test_a_dicom_seg_is_a_label_map_name_in_case_folders(tmp_path):
    """A case folder's mask or reference may be a DICOM-SEG (read as a label map
    wherever one is taken): --mask-name seg.dcm and --reference-name seg.dcm were
    refused as "not a label map's file name"."""
    from shapeprior.io import check_mask_name, in_case_folder
    from shapeprior.pipeline import discover_masks

    for good in ("seg.dcm", "SEG.DCM", "kidney.nii.gz", "*_seg.dcm"):
        check_mask_name(good)
    for bad in ("seg.txt", "a/seg.dcm", ""):
        with pytest.raises(ValueError, match="is not a label map's file name"):
            check_mask_name(bad)
    for case in ("p1", "p2"):
        _touch(tmp_path / case, f"{case}_seg.dcm", "ct.nii.gz")
    assert in_case_folder(tmp_path / "p1", "*_seg.dcm")[0] == tmp_path / "p1" / "p1_seg.dcm"
    cases = discover_masks(tmp_path, mask_name="*_seg.dcm")
    assert [(c.name, c.path.name, c.error) for c in cases] == [
        ("p1", "p1_seg.dcm", None), ("p2", "p2_seg.dcm", None)]
