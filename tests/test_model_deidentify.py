"""build-model and update-model --deidentify: a model is made to be shared, and no
label map's name or path may reach it, its report and manifest, the screen or an
error line."""

import json
import shutil

import numpy as np
import pytest

from _safety import leftovers, tree_state
from shapeprior.cli import main

PATIENTS = ["DOE^JOHN_1965", "SMITH_ANNA_1970", "MILLER_BOB_1980", "BROWN_EVE_1990",
            "LEE_KIM_2001"]
NEW = ["GARCIA_LUIS_1955", "KOWALSKI_JAN_1949"]
FAST = ["--vertices", "162", "--iso-spacing", "1", "--smooth", "1", "--quiet"]


def _words(names):
    return {w for n in names for w in n.replace("^", "_").split("_") if not w.isdigit()}


@pytest.fixture(scope="module")
def named(tmp_path_factory):
    """Phantom label maps and images named after patients; two more in case folders
    that share one file name (``GARCIA_LUIS_1955/segmentation.nii.gz``)."""
    from shapeprior.synthetic import write_phantom_cases

    d = tmp_path_factory.mktemp("named")
    images, labels = write_phantom_cases(d / "src", n_cases=7, seed=3)
    lab, img, new = d / "PATIENTS_labels", d / "PATIENTS_images", d / "NEW_cases"
    for f in (lab, img, new):
        f.mkdir()
    pairs = list(zip(sorted(labels.iterdir()), sorted(images.iterdir())))
    for (lf, imf), name in zip(pairs, PATIENTS):
        shutil.copy(lf, lab / f"{name}.nii.gz")
        shutil.copy(imf, img / f"{name}.nii.gz")
    for (lf, _), name in zip(pairs[5:], NEW):
        (new / name).mkdir()
        shutil.copy(lf, new / name / "segmentation.nii.gz")
    # the image of the first new case only
    (d / "PATIENTS_new_images" / NEW[0]).mkdir(parents=True)
    shutil.copy(pairs[5][1], d / "PATIENTS_new_images" / NEW[0] / "segmentation.nii.gz")
    return d, lab, img, new


def _model_text(path):
    z = np.load(path, allow_pickle=False)
    return str(z["metadata_json"])


def _written(root, printed):
    """``printed``, then every name and text a run left under ``root``: a model
    file by its metadata (its arrays are numbers, whose bytes could spell a
    short name by chance: 'EVE' in 300 KB of floats)."""
    text = printed
    for f in sorted(root.rglob("*")):
        text += " " + f.name
        if f.is_file():
            text += _model_text(f) if f.suffix == ".npz" else f.read_bytes().decode("latin-1")
    return text


def test_build_model_deidentify_keeps_names_out_of_the_model_and_its_records(
        named, tmp_path, monkeypatch, capsys):
    d, lab, img, _ = named
    monkeypatch.setenv("SHAPEPRIOR_DEID_SALT", "test-salt")
    out = tmp_path / "model.npz"
    assert main(["build-model", str(lab), "--images", str(img), "--no-voxel-classifier",
                 "-o", str(out), "--deidentify", *FAST]) == 0
    printed = capsys.readouterr()
    meta = json.loads(_model_text(out))
    text = _written(tmp_path, printed.out + printed.err)
    for word in _words(PATIENTS) | {"PATIENTS", str(d)}:
        assert word not in text, word
    assert len(meta["sources"]) == 5 and all(s["name"].startswith("case-")
                                             for s in meta["sources"])
    assert len(set(meta["shape_ids"])) == 5
    assert meta["parameters"]["images_dir"] == "<images>"
    record = json.loads((tmp_path / "model.npz.report" / "manifest.json").read_text())
    assert record["parameters"]["label_maps"] == ["<labels>"]
    assert set(record["inputs"]) == {s["name"] for s in meta["sources"]}
    # the same build without --deidentify records the names (what the option removes)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert main(["build-model", str(lab), "-o", str(plain / "m.npz"), *FAST]) == 0
    assert "SMITH_ANNA_1970" in _model_text(plain / "m.npz")


def test_build_model_deidentify_keeps_names_out_of_an_error_line(named, tmp_path, monkeypatch,
                                                                 capsys):
    import nibabel as nib

    d, lab, img, _ = named
    monkeypatch.setenv("SHAPEPRIOR_DEID_SALT", "test-salt")
    other = tmp_path / "PATIENTS_images"
    shutil.copytree(img, other)
    im = nib.load(other / "SMITH_ANNA_1970.nii.gz")     # an image on another grid
    nib.save(nib.Nifti1Image(np.asarray(im.dataobj)[:-3], im.affine),
             other / "SMITH_ANNA_1970.nii.gz")
    args = ["build-model", str(lab), "--images", str(other), "-o", str(tmp_path / "m.npz"),
            *FAST]
    before = tree_state(lab, other)
    assert main(args) == 1
    assert "SMITH_ANNA_1970" in capsys.readouterr().err      # named without the option
    assert main([*args, "--deidentify"]) == 1
    err = capsys.readouterr().err
    assert "not on the same grid" in err and "case-" in err
    for word in _words(PATIENTS) | {"PATIENTS"}:
        assert word not in err, word
    assert main(["build-model", str(lab / "NOBODY_X.nii.gz"), "-o", str(tmp_path / "n.npz"),
                 "--deidentify"]) == 1
    err = capsys.readouterr().err
    assert "<labels>" in err and "NOBODY" not in err
    assert not (tmp_path / "m.npz").exists() and not (tmp_path / "n.npz").exists()
    assert tree_state(lab, other) == before and not leftovers(tmp_path)


def test_update_model_deidentify_names_new_maps_by_pseudonym(named, tmp_path, monkeypatch,
                                                             capsys):
    d, lab, img, new = named
    monkeypatch.setenv("SHAPEPRIOR_DEID_SALT", "test-salt")
    base = tmp_path / "base.npz"
    assert main(["build-model", str(lab), "--images", str(img), "--no-voxel-classifier",
                 "-o", str(base), "--deidentify", *FAST]) == 0
    capsys.readouterr()
    assert main(["update-model", str(base), str(new), "--rank-only", "--deidentify",
                 "--quiet"]) == 0
    ranked = capsys.readouterr().out
    # the image of one new case only: the other is refused, its reason naming the
    # images' folder
    new_img = d / "PATIENTS_new_images"
    out = tmp_path / "grown.npz"
    args = ["update-model", str(base), str(new), "--images", str(new_img), "--quiet"]
    assert main([*args, "--rank-only"]) == 1          # --images is refused there
    capsys.readouterr()
    assert main([*args, "-o", str(out), "--deidentify"]) == 0
    printed = capsys.readouterr()
    meta = json.loads(_model_text(out))
    report = json.loads((tmp_path / "grown.npz.report" / "report.json").read_text())
    assert [r["stage"] for r in report["rejected"]] == ["image"]
    assert "<images>" in report["rejected"][0]["reason"]
    text = _written(tmp_path, ranked + printed.out + printed.err)
    for word in _words(PATIENTS + NEW) | {"NEW_cases", "PATIENTS", str(d)}:
        assert word not in text, word
    added = [s["id"] for s in meta["lineage"]["shapes"] if s["model_version"] == 2]
    # two case folders, one file name: two pseudonyms, each in the ranking
    assert len(added) == 1 and added[0].split(":")[0] in ranked
    assert report["rejected"][0]["source"] in ranked
    assert added[0].split(":")[0] != report["rejected"][0]["source"]
    record = json.loads((tmp_path / "grown.npz.report" / "manifest.json").read_text())
    assert record["inputs"]["model"]["path"] == "<model>"
    assert record["parameters"]["images"] == "<images>"
    # nothing was left (the notes of what an update does not retrain name nothing)
    assert not any("keep the names" in w for w in report.get("warnings", []))
    assert "note: the model's" not in printed.out


def test_update_model_deidentify_says_what_it_left_in_a_model_built_with_names(
        named, tmp_path, monkeypatch, capsys):
    d, lab, _, new = named
    monkeypatch.setenv("SHAPEPRIOR_DEID_SALT", "test-salt")
    plain = tmp_path / "plain.npz"
    assert main(["build-model", str(lab), "-o", str(plain), *FAST]) == 0
    capsys.readouterr()
    out = tmp_path / "grown.npz"
    assert main(["update-model", str(plain), str(new), "-o", str(out), "--deidentify",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "grown.npz.report" / "report.json").read_text())
    said = "the model's 5 earlier shapes keep the names it was built with"
    assert any(said in w for w in report["warnings"]) and f"note: {said}" in printed
    meta = json.loads(_model_text(out))
    assert "SMITH_ANNA_1970" in _model_text(out)             # what the note is about
    assert all(not s["id"].startswith(("GARCIA", "KOWALSKI", "NEW"))
               for s in meta["lineage"]["shapes"])


def test_run_deidentifier_leaves_shared_and_short_parts_and_numbers(tmp_path, monkeypatch):
    from shapeprior.cli._deidentify import RunDeidentifier

    monkeypatch.setenv("SHAPEPRIOR_DEID_SALT", "test-salt")
    root = tmp_path / "kits"
    items = [(root / c / "segmentation.nii.gz", f"{c}/segmentation", root)
             for c in ("case_00001", "case_00002")]
    items.append((root / "01.nii.gz", "01", root))
    items.append((root / "123.nii.gz", "123", root))         # numbered cases
    deid = RunDeidentifier(items, {tmp_path / "imgs": "<images>"})
    p1, p2, p3, p4 = (deid.pseudonym[n] for _, n, _ in items)
    assert len({p1, p2, p3, p4}) == 4 and p1.startswith("case-")
    said = deid.text(f"{items[0][0]} and case_00002_0000.nii.gz in {tmp_path / 'imgs'}: "
                     "segmentation.nii.gz is 0.01 mm off, 01 slices")
    assert said == (f"{p1} and {p2}_0000.nii.gz in <images>: segmentation.nii.gz is 0.01 mm "
                    "off, 01 slices")
    # a case's name inside a number or a longer name stays; on its own it goes
    assert deid.text("123.nii.gz: 0.123 mm, 1234 voxels, 123 of them") == \
        f"{p4}: 0.123 mm, 1234 voxels, {p4} of them"
    assert deid.data({"a": [str(items[1][0]), 3, None]}) == {"a": [p2, 3, None]}
    assert deid.items(items)[0] == (items[0][0], p1, root)
    err = deid.error(FileNotFoundError(f"no such file: {items[0][0]}"))
    assert isinstance(err, FileNotFoundError) and str(err) == f"no such file: {p1}"
    # two scans of one patient: the patient's folder is shared by both (no part
    # of a path names it alone), so only each whole case name replaces it
    scans = [(root / "SMITH_ANNA" / f"scan{i}.nii.gz", f"SMITH_ANNA/scan{i}", root)
             for i in (1, 2)]
    deid = RunDeidentifier(scans, {})
    q1, q2 = (deid.pseudonym[n] for _, n, _ in scans)
    assert deid.text("SMITH_ANNA/scan1: empty label; SMITH_ANNA/scan2: 2 pieces") == \
        f"{q1}: empty label; {q2}: 2 pieces"


def test_named_shapes_counts_every_id_that_is_not_wholly_a_pseudonym_or_a_number():
    from types import SimpleNamespace

    from shapeprior.cli._deidentify import named_shapes

    ids = ["case-0123456789ab", "case-0123456789ab:left", "shape_12", "shape_3:right",
           "case-0123456789ab_SMITH", "SMITH_ANNA/scan1", "shape_12x", "case-0123"]
    assert named_shapes(SimpleNamespace(metadata={"shape_ids": ids})) == 4
    assert named_shapes(SimpleNamespace(metadata=None)) == 0
