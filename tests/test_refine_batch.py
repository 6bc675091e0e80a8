"""``shapeprior refine FOLDER``: a folder of masks (a network's predictions)
refined as one run: each mask with its image and reference found by name,
one summary with Dice before and after, resumable, failures isolated, and one
scan's per-organ folder told apart from a folder of cases."""

import csv
import hashlib
import json
import shutil

import numpy as np
import pytest
from _phantoms import leak_at_tip, written_text

from shapeprior.cli import main
from shapeprior.io import Volume, read_label_map, write_label
from shapeprior.pipeline import Case, discover_masks, match_images
from shapeprior.pipeline._batch import REFINE_COLUMNS

CASES = ("phantom_004", "phantom_005", "phantom_006")


def _hashes(folder):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def _copies(labels, folder):
    """``folder`` (made) holding the label maps of CASES from ``labels``."""
    folder.mkdir()
    for c in CASES:
        shutil.copy(labels / f"{c}.nii.gz", folder / f"{c}.nii.gz")
    return folder


@pytest.fixture
def masks(phantom_model, tmp_path):
    """Three of the phantoms' label maps as masks to refine, phantom_005's with a
    leak ball at its tip: ``(masks folder, images, labels, model)``."""
    d, images, labels, model = phantom_model
    m = _copies(labels, tmp_path / "masks")
    vol = read_label_map(m / "phantom_005.nii.gz")
    write_label(vol, leak_at_tip(vol.array > 0).astype(np.uint8), m / "phantom_005.nii.gz")
    return m, images, labels, model


def _refine(*args):
    return main(["refine", *map(str, args)])


def _rows(out):
    doc = json.loads((out / "summary.json").read_text())
    assert doc["command"] == "refine" and doc["n_cases"] == len(doc["cases"])
    return doc, {r["case"]: r for r in doc["cases"]}


def test_a_folder_of_masks_is_refined_case_by_case(masks, tmp_path, capsys):
    """Every mask gets its folder (label, mesh, report, statistics, QC, manifest)
    with the image and reference named like it; the leak is removed (Dice against
    the reference rises, in the row and the summary's before/after block), the
    clean masks stay; summary.csv has the refinement's columns; the label is the
    one a single refine of that mask writes; no input changes."""
    m, images, labels, model = masks
    before = {k: _hashes(v) for k, v in (("m", m), ("i", images), ("l", labels))}
    out = tmp_path / "out"
    assert _refine(m, "-o", out, "--model", model, "--image", images,
                   "--reference", labels) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "3 cases: 3 ok" in text and "the masks as given: Dice mean" in text
    doc, rows = _rows(out)
    assert list(rows) == list(CASES)
    for c in CASES:
        assert {f.name for f in (out / c).iterdir()} == {
            "label.nii.gz", "mesh.vtk", "report.json", "statistics.json", "qc.png",
            "manifest.json"}
        rep = json.loads((out / c / "report.json").read_text())
        assert rep["input"]["image"] == f"{c}.nii.gz"
        assert rows[c]["dice"] == rep["reference"]["dice"]
        assert rows[c]["input_dice"] == rep["reference"]["input"]["dice"]
    leak = rows["phantom_005"]
    assert leak["input_dice"] < 0.98 and leak["dice"] > leak["input_dice"] + 0.01
    assert leak["removed_ml"] > 0.1 and leak["volume_ml"] < leak["input_ml"]
    for c in ("phantom_004", "phantom_006"):
        assert rows[c]["input_dice"] == 1.0 and rows[c]["dice"] > 0.98
    ref = doc["reference"]
    assert ref["n_compared"] == 3 and ref["input_dice"]["worst_case"] == "phantom_005"
    assert ref["dice"]["mean"] > ref["input_dice"]["mean"]
    with open(out / "summary.csv", newline="") as f:
        table = list(csv.reader(f))
    assert tuple(table[0]) == REFINE_COLUMNS and len(table) == 4
    assert {k: _hashes(v) for k, v in (("m", m), ("i", images), ("l", labels))} == before
    one = tmp_path / "one"
    assert _refine(m / "phantom_005.nii.gz", "-o", one, "--model", model, "--image",
                   images / "phantom_005.nii.gz", "--reference",
                   labels / "phantom_005.nii.gz") == 0
    assert "against the reference: Dice" in capsys.readouterr().out
    np.testing.assert_array_equal(read_label_map(one / "label.nii.gz").array,
                                  read_label_map(out / "phantom_005" / "label.nii.gz").array)


def test_a_rerun_keeps_what_is_complete_and_redoes_what_changed(masks, tmp_path, capsys):
    """A rerun keeps every case (skipped, with the result it had) and touches no
    output; --force redoes them all; a changed mask, a dropped image, other labels or another mesh format
    redo exactly the cases they concern, each saying why."""
    m, images, labels, model = masks
    out = tmp_path / "out"
    base = [m, "-o", out, "--model", model, "--image", images]
    assert _refine(*base) == 0
    first = _hashes(out)
    assert _refine(*base) == 0
    _, rows = _rows(out)
    assert all(r["status"] == "skipped" and r["result"] == "ok" for r in rows.values())
    assert {k: v for k, v in _hashes(out).items() if not k.startswith("summary")} == \
        {k: v for k, v in first.items() if not k.startswith("summary")}
    assert _refine(*base, "--force") == 0                # --force redoes every case
    _, rows = _rows(out)
    assert all(r["status"] == "ok" and "note" not in r for r in rows.values())
    vol = read_label_map(m / "phantom_004.nii.gz")
    write_label(vol, np.roll(vol.array, 1, axis=2), m / "phantom_004.nii.gz")
    assert _refine(*base) == 0
    _, rows = _rows(out)
    assert rows["phantom_004"]["note"] == \
        "redone: the input or the model changed since it was refined"
    assert [r["status"] for r in rows.values()] == ["ok", "skipped", "skipped"]
    assert _refine(m, "-o", out, "--model", model) == 0
    _, rows = _rows(out)
    assert all(r["note"] == "redone: it was refined from other input files"
               for r in rows.values())
    for extra in (["--keep-labels", "2"], ["--labels", "1,2"]):   # one change at a time
        assert _refine(m, "-o", out, "--model", model, *extra) == 0
        _, rows = _rows(out)
        assert all(r["note"] == "redone: refinement parameters differ" for r in rows.values())
    assert _refine(m, "-o", out, "--model", model, "--labels", "1,2", "--mesh-format",
                   "stl") == 0
    _, rows = _rows(out)
    assert all("other outputs were asked for" in r["note"] for r in rows.values())
    assert not (out / "phantom_004" / "mesh.vtk").exists()
    capsys.readouterr()


def test_a_rerun_with_a_reference_compares_again(masks, tmp_path, capsys):
    """A case refined without a reference keeps its refinement when one is given,
    compared with it (the refined label's Dice and the input mask's); kept as it
    is when the same reference is given again; compared again when the
    reference's labels change. The refined labels are never rewritten."""
    from shapeprior.io import read_label_map
    from shapeprior.segmentation import dice

    m, images, labels, model = masks
    out = tmp_path / "out"
    assert _refine(m, "-o", out, "--model", model) == 0
    refined = {f.parent.name: f.read_bytes() for f in out.glob("*/label.nii.gz")}
    assert _refine(m, "-o", out, "--model", model, "--reference", labels) == 0
    _, rows = _rows(out)
    assert all(r["status"] == "skipped" and "dice" in r and "input_dice" in r and
               r["reason"].endswith("compared again: it was not compared with a reference")
               for r in rows.values())
    for case, r in rows.items():
        ref = read_label_map(labels / f"{case}.nii.gz").array > 0
        got = read_label_map(out / case / "label.nii.gz").array > 0
        given = read_label_map(m / f"{case}.nii.gz").array > 0
        assert r["dice"] == pytest.approx(dice(got, ref), abs=1e-12)
        assert r["input_dice"] == pytest.approx(dice(given, ref), abs=1e-12)
    assert _refine(m, "-o", out, "--model", model, "--reference", labels) == 0
    _, rows = _rows(out)
    assert all(r["status"] == "skipped" and "input_dice" in r and
               r["reason"] == "complete outputs exist (inputs unchanged)" for r in rows.values())
    assert _refine(m, "-o", out, "--model", model, "--reference", labels,
                   "--reference-labels", "1,7") == 0
    _, rows = _rows(out)
    assert all("compared with the reference's labels" in r["reason"] for r in rows.values())
    assert {f.parent.name: f.read_bytes() for f in out.glob("*/label.nii.gz")} == refined
    capsys.readouterr()


def test_a_reference_without_the_organ_leaves_its_case_out_of_the_comparison(masks, tmp_path,
                                                                             capsys):
    """A case whose reference holds none of the organ's labels has nothing to be
    scored against: its row says so and carries no Dice, and the summary's mean
    and worst case are over the others (its Dice 0 pulled them down)."""
    from shapeprior.pipeline._batch import EMPTY_REFERENCE_NOTE

    m, images, labels, model = masks
    refs = _copies(labels, tmp_path / "refs")
    vol = read_label_map(refs / "phantom_006.nii.gz")
    write_label(vol, np.zeros_like(vol.array), refs / "phantom_006.nii.gz")
    out = tmp_path / "out"
    assert _refine(m, "-o", out, "--model", model, "--reference", refs) == 0
    doc, rows = _rows(out)
    empty = rows["phantom_006"]
    assert empty["note"] == EMPTY_REFERENCE_NOTE and "dice" not in empty
    assert "input_dice" not in empty and empty["status"] in ("ok", "suspect")
    assert all(rows[c]["dice"] > 0.8 for c in CASES[:2])
    ref = doc["reference"]
    assert ref["n_cases_with_reference"] == 3 and ref["n_compared"] == 2
    assert ref["dice"]["worst_case"] != "phantom_006" and ref["dice"]["worst"] > 0.8
    assert EMPTY_REFERENCE_NOTE in (out / "summary.csv").read_text()
    capsys.readouterr()
    # segment's rows alike
    from shapeprior.pipeline._batch import result_fields

    rep = {"status": "ok", "quality": 1.0, "volume_ml": 6.8, "iterations": 9, "time_s": 1.0,
           "reference": {"dice": 0.0, "assd_mm": None, "hd95_mm": None, "empty": True}}
    row = result_fields(rep)
    assert row["note"] == EMPTY_REFERENCE_NOTE and "dice" not in row
    rep["reference"] = {"dice": 0.9, "assd_mm": 0.5, "hd95_mm": 1.0}
    assert result_fields(rep)["dice"] == 0.9 and "note" not in result_fields(rep)


def test_one_bad_mask_fails_alone(masks, tmp_path, capsys):
    """A truncated mask, a mask with no image in the --image folder and a case
    folder shapeprior did not write each fail in their own row; the other cases
    are refined; the exit code is 1; the foreign folder is untouched."""
    m, images, labels, model = masks
    data = (m / "phantom_006.nii.gz").read_bytes()
    (m / "phantom_006.nii.gz").write_bytes(data[: len(data) // 2])
    shutil.copy(m / "phantom_004.nii.gz", m / "no_image.nii.gz")
    shutil.copy(m / "phantom_004.nii.gz", m / "foreign.nii.gz")
    imgs = tmp_path / "imgs"
    shutil.copytree(images, imgs)
    shutil.copy(images / "phantom_004.nii.gz", imgs / "foreign.nii.gz")
    out = tmp_path / "out"
    (out / "foreign").mkdir(parents=True)
    (out / "foreign" / "notes.txt").write_text("mine")
    assert _refine(m, "-o", out, "--model", model, "--image", imgs) == 1
    _, rows = _rows(out)
    assert rows["phantom_004"]["status"] == "ok" and rows["phantom_005"]["status"] == "ok"
    assert rows["phantom_006"]["status"] == "failed" and "\n" not in rows["phantom_006"]["error"]
    assert rows["no_image"]["error"] == "no image named like it in the --image folder"
    assert "shapeprior never replaces it" in rows["foreign"]["error"]
    assert (out / "foreign" / "notes.txt").read_text() == "mine"
    assert not (out / "phantom_006").exists() and not (out / "no_image").exists()
    capsys.readouterr()


def test_one_scans_per_organ_folder_is_not_a_batch(masks, tmp_path, capsys):
    """Masks on one grid whose organs do not overlap (a file per organ of one scan,
    as TotalSegmentator writes) are refused in one line, whatever their names;
    copies of one mask on one grid (cases registered to one space) overlap and are
    a batch."""
    m, images, labels, model = masks
    vol = read_label_map(m / "phantom_004.nii.gz")
    organs = tmp_path / "organs"
    organs.mkdir()
    n = vol.array.shape[2]
    for i, name in enumerate(("liver", "spleen", "aorta")):
        a = np.zeros_like(vol.array)
        a[:, :, i * n // 3:(i + 1) * n // 3][vol.array[:, :, i * n // 3:(i + 1) * n // 3] > 0] = 1
        a[0, 0, i] = 1
        write_label(vol, a, organs / f"{name}.nii.gz")
    out = tmp_path / "o"
    assert _refine(organs, "-o", out, "--model", model) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "3 label maps on one grid whose organs do not overlap" in err
    assert not out.exists()
    for k, name in enumerate(("liver", "spleen", "aorta")):      # on three grids: cases
        part = read_label_map(organs / f"{name}.nii.gz")
        part = part.crop((0, 0, k), part.array.shape)
        write_label(part, part.array, organs / f"{name}.nii.gz")
    assert [c.name for c in discover_masks(organs, "organ")] == ["aorta", "liver", "spleen"]
    for name in ("liver", "spleen", "aorta"):
        shutil.copy(m / "phantom_004.nii.gz", organs / f"{name}.nii.gz")
    assert len(discover_masks(organs, "organ")) == 3
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    shutil.copy(m / "phantom_004.nii.gz", empty / "sub" / "x.nii.gz")
    with pytest.raises(ValueError, match="holds no label map files .*subfolders sub hold"):
        discover_masks(empty)


def test_images_are_found_by_the_masks_names(tmp_path):
    """x.nii.gz takes x.<suffix>, nnU-Net's x_0000.<suffix> or a DICOM folder x/;
    two candidates, the masks' own folder and a folder with none are refused; a
    hidden file is neither an image nor a mask."""
    m, i = tmp_path / "m", tmp_path / "i"
    m.mkdir()
    i.mkdir()
    cases = [Case(n, m / f"{n}.nii.gz", f"{n}.nii.gz") for n in ("a", "b", "c", "d")]
    for c in cases:
        c.path.write_bytes(b"x")
    (i / "a.mha").write_bytes(b"x")
    (i / "b_0000.nii.gz").write_bytes(b"x")
    (i / "c").mkdir()
    (i / ".hidden.nii.gz").write_bytes(b"x")
    assert match_images(cases, i) == [i / "a.mha", i / "b_0000.nii.gz", i / "c", None]
    (m / "._a.nii.gz").write_bytes(b"\0\x05\x16\x07")     # macOS's AppleDouble twin: no case
    assert [c.name for c in discover_masks(m)] == ["a", "b", "c", "d"]
    (i / "a_0000.nii.gz").write_bytes(b"x")
    with pytest.raises(ValueError, match="2 entries could be the image of a.nii.gz"):
        match_images(cases, i)
    with pytest.raises(ValueError, match="the masks' own folder"):
        match_images(cases, m)
    with pytest.raises(ValueError, match="is not a folder"):
        match_images(cases, i / "a.mha")
    with pytest.raises(ValueError, match="holds no image named like a mask .for d.nii.gz it "
                                         "looked for d.nii.gz, d_0000.nii.gz"):
        match_images(cases[3:], i)


def test_refine_refuses_what_does_not_fit_the_input(masks, tmp_path, capsys):
    """Batch options with one mask, a folder reference with one mask, a
    reference on another grid, a negative worker count (refine's and segment's)
    and an output inside
    the masks' folder: one line each, exit 1 (2 from the argument parser),
    nothing written."""
    m, images, labels, model = masks
    one = m / "phantom_004.nii.gz"
    out = tmp_path / "o"
    for args, msg in (
            ([one, "--workers", "2"], "--workers and --scheduler refine a folder of masks"),
            ([one, "--reference", labels], "--reference is a folder; with one mask"),
            ([one, "--reference-labels", "1"], "--reference-labels has no effect without"),
            ([m, "--image", images / "phantom_004.nii.gz"], "--image phantom_004.nii.gz is "
                                                           "not a folder"),
            ([m, "--reference", m], "names the folder of the masks themselves")):
        assert _refine(*args, "-o", out, "--model", model) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err
        assert not out.exists()
    vol = read_label_map(one)
    spilled = np.pad(vol.array, ((0, 0), (0, 0), (2, 0)))       # organ beyond the mask
    spilled[3, 4, 0] = 1
    at = vol.index_to_physical(np.array([[-2.0, 0.0, 0.0]]))[0]
    write_label(Volume(spilled, vol.spacing, at, vol.direction), spilled,
                tmp_path / "ref.nii.gz")
    assert _refine(one, "-o", out, "--model", model, "--reference", tmp_path / "ref.nii.gz") == 1
    assert "part of its organ lies outside the mask" in capsys.readouterr().err
    assert not out.exists()
    moved = Volume(vol.array, vol.spacing, vol.origin + 0.5 * vol.spacing, vol.direction)
    write_label(moved, moved.array, tmp_path / "ref.nii.gz")
    assert _refine(one, "-o", out, "--model", model, "--reference", tmp_path / "ref.nii.gz") == 1
    assert "the reference label map is not on the mask's grid" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit) as e:
        _refine(m, "-o", out, "--model", model, "--workers", "-1")
    assert e.value.code == 2 and "'-1' is not a whole number >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:       # segment's too (dask waited forever on -1)
        main(["segment", str(images), "-o", str(out), "--model", str(model), "--workers", "-1"])
    assert e.value.code == 2 and "'-1' is not a whole number >= 0" in capsys.readouterr().err
    before = _hashes(m)
    assert _refine(m, "-o", m / "out", "--model", model) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert _hashes(m) == before and not (m / "out").exists()


def test_deidentify_keeps_mask_names_out_of_every_output(masks, tmp_path, monkeypatch, capsys):
    """--deidentify, for a folder and for one mask: no mask, image or reference
    name in any output file, folder name, summary, message or manifest (the
    errors of an unreadable mask and of an unreadable image included); the same
    mask hashes the same way in both."""
    m, images, labels, model = masks
    monkeypatch.setenv("SHAPEPRIOR_DEID_SALT", "test-salt")
    src = tmp_path / "DOE^JOHN_masks"
    imgs = tmp_path / "DOE^JOHN_images"
    refs = tmp_path / "DOE^JOHN_refs"
    for d in (src, imgs, refs):
        d.mkdir()
    shutil.copy(m / "phantom_005.nii.gz", src / "DOE^JOHN.nii.gz")
    shutil.copy(images / "phantom_005.nii.gz", imgs / "DOE^JOHN_0000.nii.gz")
    shutil.copy(labels / "phantom_005.nii.gz", refs / "DOE^JOHN.nii.gz")
    (src / "SMITH^JANE.nii.gz").write_bytes(b"\x1f\x8b broken")
    shutil.copy(images / "phantom_004.nii.gz", imgs / "SMITH^JANE.nii.gz")
    shutil.copy(m / "phantom_004.nii.gz", src / "ROE^RICHARD.nii.gz")  # its image is broken
    (imgs / "ROE^RICHARD_0000.nii.gz").write_bytes(b"\x1f\x8b broken")
    out = tmp_path / "out"
    assert _refine(src, "-o", out, "--model", model, "--image", imgs, "--reference", refs,
                   "--deidentify") == 1                        # SMITH^JANE is broken
    printed = capsys.readouterr()
    single = tmp_path / "single"
    assert _refine(src / "DOE^JOHN.nii.gz", "-o", single, "--model", model, "--image",
                   imgs / "DOE^JOHN_0000.nii.gz", "--reference", refs / "DOE^JOHN.nii.gz",
                   "--deidentify") == 0
    printed2 = capsys.readouterr()
    assert _refine(src / "SMITH^JANE.nii.gz", "-o", tmp_path / "s2", "--model", model,
                   "--deidentify") == 1
    printed3 = capsys.readouterr()
    printed = "".join(p.out + p.err for p in (printed, printed2, printed3))
    text = written_text(tmp_path, [src, imgs, refs, m], printed)   # inputs: named by the user
    for name in ("DOE", "JOHN", "SMITH", "JANE", "ROE", "RICHARD"):
        assert name not in text, name
    _, rows = _rows(out)
    assert len(rows) == 3 and all(c.startswith("case-") for c in rows)
    assert sorted(r["status"] for r in rows.values()) == ["failed", "failed", "ok"]
    rep = json.loads((single / "report.json").read_text())
    assert rep["input"]["mask"] in rows and rep["input"]["image"] == "(withheld)"
    assert rep["reference"]["dice"] > rep["reference"]["input"]["dice"]
    # a rerun keeps the case: the numbered manifest keys compare as they were written
    assert _refine(src, "-o", out, "--model", model, "--image", imgs, "--reference", refs,
                   "--deidentify") == 1
    _, rows = _rows(out)
    assert sorted(r["status"] for r in rows.values()) == ["failed", "failed", "skipped"]
    capsys.readouterr()


def test_case_folders_with_one_mask_name(masks, tmp_path, monkeypatch, capsys):
    """--mask-name: a folder of case folders as TotalSegmentator writes them
    (caseA/segmentations/<organ>.nii.gz, or the file in the case folder itself):
    each case named by its folder, its scan and reference found by that name,
    a folder without the mask a failed row; the case folders are never taken for
    scans; with --deidentify the folder names (a patient's) appear nowhere."""
    m, images, labels, model = masks
    root, imgs, refs = tmp_path / "ts", tmp_path / "imgs", tmp_path / "refs"
    for d in (imgs, refs):
        d.mkdir()
    for i, c in enumerate(CASES):
        case = root / f"DOE^{i}"
        (case / "segmentations").mkdir(parents=True)
        target = case / "segmentations" if i else case           # both layouts
        shutil.copy(m / f"{c}.nii.gz", target / "organ.nii.gz")
        shutil.copy(m / "phantom_004.nii.gz", target / "liver.nii.gz")   # another organ
        shutil.copy(images / f"{c}.nii.gz", imgs / f"DOE^{i}_0000.nii.gz")
        shutil.copy(labels / f"{c}.nii.gz", refs / f"DOE^{i}.nii.gz")
    (root / "DOE^empty").mkdir()
    out = tmp_path / "out"
    assert _refine(root, "-o", out, "--model", model, "--mask-name", "organ.nii.gz",
                   "--image", imgs, "--reference", refs) == 1       # DOE^empty
    _, rows = _rows(out)
    assert list(rows) == ["DOE_0", "DOE_1", "DOE_2", "DOE_empty"]
    assert rows["DOE_empty"]["error"] == "no organ.nii.gz in this folder or its segmentations/"
    leak = rows["DOE_1"]                                  # phantom_005, with the leak
    assert leak["input_dice"] < 0.98 and leak["dice"] > leak["input_dice"] + 0.01
    rep = json.loads((out / "DOE_2" / "report.json").read_text())
    assert rep["input"]["image"] == "DOE^2_0000.nii.gz"
    assert _refine(root, "-o", tmp_path / "o2", "--model", model, "--mask-name",
                   "organ.nii.gz", "--image", root) == 1
    assert "holds no image named like a mask" in capsys.readouterr().err
    for bad in ("segmentations/organ.nii.gz", "organ.txt"):
        assert _refine(root, "-o", tmp_path / "o3", "--model", model, "--mask-name", bad) == 1
        assert "is not a label map's file name" in capsys.readouterr().err
    monkeypatch.setenv("SHAPEPRIOR_DEID_SALT", "test-salt")
    hidden = tmp_path / "hidden"
    assert _refine(root, "-o", hidden, "--model", model, "--mask-name", "organ.nii.gz",
                   "--image", imgs, "--reference", refs, "--deidentify") == 1
    printed = capsys.readouterr()
    text = written_text(hidden, (), printed.out + printed.err) + " ".join(
        f.name for f in hidden.iterdir())
    assert "DOE" not in text
    _, rows = _rows(hidden)
    assert len(rows) == 4 and all(c.startswith("case-") for c in rows)
    assert sorted(r["status"] for r in rows.values()) == ["failed", "ok", "ok", "ok"]


@pytest.mark.parametrize("deidentify", [False, True])
def test_an_image_gone_before_its_turn_fails_its_row_not_the_batch(masks, tmp_path, deidentify):
    """A mask's image found, then removed before the batch reaches it: that row
    fails with the cause, the other masks are refined, nothing is left for it;
    de-identified, the row names neither the mask nor the image."""
    from shapeprior.pipeline import Deidentifier, run_refine_batch
    from shapeprior.segmentation import SegmentParams

    m, images, labels, model = masks
    imgs = tmp_path / "imgs"
    shutil.copytree(images, imgs)
    cases = discover_masks(m)
    found = match_images(cases, imgs)
    if deidentify:
        cases = Deidentifier(tmp_path / "salt").apply(cases)
    (imgs / "phantom_005.nii.gz").unlink()
    out = tmp_path / "out"
    rows = run_refine_batch(cases, out, model, SegmentParams(), images=found, progress=False,
                            deidentify=deidentify, inputs=[m, imgs])
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    err = rows[1]["error"]
    assert "No such file" in err and not (out / cases[1].name).exists()
    if deidentify:
        assert "phantom" not in err and str(imgs) not in err and "(withheld image)" in err
    else:
        assert str(imgs / "phantom_005.nii.gz") in err
