"""Acceptance test of the distributed batch on real data.

A hippocampus model (shape + learned appearance) is built from 10 MSD Task04
training cases; ``shapeprior segment`` then runs on a folder of 6 held-out
MR cases plus one deliberately corrupt case (a download cut short) on a dask
LocalCluster over loopback. The corrupt case must be reported as failed with a
clear reason, every other case must finish with outputs on its image's grid
and a plausible segmentation, and a second run must resume.
"""

import json
import re
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.slow       # real data, a dask cluster: about 30 s

from shapeprior.cli import main
from shapeprior.io import read_label_map, read_volume
from shapeprior.segmentation import dice


def _num(p):
    return int(re.findall(r"\d+", p.name)[0])


@pytest.fixture(scope="module")
def hippocampus(data_root, tmp_path_factory):
    root = data_root / "msd_hippocampus"
    if not (root / "images").is_dir():
        pytest.skip(f"MSD hippocampus not found under {root}")
    labels = sorted((root / "labels").glob("hippocampus_*.nii.gz"))
    train = [p for p in labels if _num(p) % 5 != 0][:10]
    test = [p for p in labels if _num(p) % 5 == 0][:6]
    d = tmp_path_factory.mktemp("hippo")
    tdir = d / "train"
    tdir.mkdir()
    for p in train:
        shutil.copy(p, tdir / p.name)
    model = d / "model.npz"
    assert main(["build-model", str(tdir), "-o", str(model), "--labels", "1,2",
                 "--organ", "hippocampus", "--vertices", "642", "--iso-spacing", "0.5",
                 "--smooth", "0.75", "--images", str(root / "images"), "--quiet"]) == 0
    return root, test, model


def test_batch_of_real_cases_with_one_corrupt_case_on_dask(hippocampus, tmp_path, capsys):
    pytest.importorskip("distributed")
    root, test, model = hippocampus
    cases = tmp_path / "cases"
    cases.mkdir()
    for p in test:
        shutil.copy(root / "images" / p.name, cases / p.name)
    whole = (root / "images" / test[0].name).read_bytes()
    (cases / "hippocampus_cut.nii.gz").write_bytes(whole[: len(whole) // 3])
    before = {p.name: p.read_bytes() for p in cases.iterdir()}
    out = tmp_path / "out"
    rc = main(["segment", str(cases), "-o", str(out), "--model", str(model), "--workers", "2"])
    printed = capsys.readouterr().out
    assert rc == 1                                        # a failure is not hidden
    rows = {r["case"]: r for r in json.loads((out / "summary.json").read_text())["cases"]}
    assert len(rows) == len(test) + 1
    bad = rows.pop("hippocampus_cut")
    assert bad["status"] == "failed" and "truncated" in bad["error"]
    assert "hippocampus_cut" in printed and "1 failed (1 with errors)" in printed
    assert not (out / "hippocampus_cut").exists()
    # a 10-shape model: every segmented case has a status from evidence, none failed
    assert all(r["status"] in ("ok", "suspect") and 0 <= r["quality"] <= 1
               for r in rows.values()), rows
    dices = []
    for p in test:
        name = p.name.split(".")[0]
        for f in ("label.nii.gz", "mesh.vtk", "report.json", "qc.png", "manifest.json"):
            assert (out / name / f).is_file(), (name, f)
        seg, img = read_label_map(out / name / "label.nii.gz"), read_volume(cases / p.name)
        assert seg.same_grid(img)
        dices.append(dice(seg.array > 0, read_label_map(p).array > 0))
    print("Dice per held-out case:", np.round(dices, 3))
    # a 10-shape model on unseen subjects; measured Dice 0.80-0.91, mean 0.875
    assert min(dices) > 0.77 and np.mean(dices) > 0.85, dices
    assert {p.name: p.read_bytes() for p in cases.iterdir()} == before   # inputs untouched
    # resume: complete cases are skipped, the corrupt one is tried again and fails again
    rc = main(["segment", str(cases), "-o", str(out), "--model", str(model)])
    rows = {r["case"]: r["status"] for r in json.loads((out / "summary.json").read_text())["cases"]}
    assert rc == 1 and rows.pop("hippocampus_cut") == "failed"
    assert set(rows.values()) == {"skipped"}


def _digests(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_batch_with_a_folder_of_references_reports_dice_per_case_and_the_worst(
        hippocampus, tmp_path, capsys):
    """``segment IMAGES --reference LABELS``: each case's label map is found by
    its name (one under nnU-Net's x_0000 name, one without a label map); each
    row's Dice is the Dice of the label written against that map, and the
    summary names the mean, median and worst case. A rerun keeps the cases and
    their numbers; a changed reference compares its case again, its
    segmentation kept; the inputs and the references are never touched."""
    root, test, model = hippocampus
    cases, labels = tmp_path / "images", tmp_path / "labels"
    cases.mkdir()
    labels.mkdir()
    test = test[:4]
    for i, p in enumerate(test):
        name = p.name.replace(".nii.gz", "_0000.nii.gz") if i == 0 else p.name
        shutil.copy(root / "images" / p.name, cases / name)
        if i != 3:                                           # the last one has no label map
            shutil.copy(p, labels / p.name)
    before = {**_digests(cases), **{"labels/" + k: v for k, v in _digests(labels).items()}}
    out = tmp_path / "out"
    rc = main(["segment", str(cases), "-o", str(out), "--model", str(model),
               "--reference", str(labels)])
    printed = capsys.readouterr().out
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["case"]: r for r in summary["cases"]}
    names = [test[0].name.replace(".nii.gz", "_0000")] + [p.name[:-7] for p in test[1:]]
    assert sorted(rows) == sorted(names)
    assert "dice" not in rows[names[3]]
    for name, p in zip(names[:3], test[:3]):
        seg = read_label_map(out / name / "label.nii.gz").array > 0
        want = dice(seg, np.isin(read_label_map(p).array, (1, 2)))
        assert abs(rows[name]["dice"] - want) < 1e-9, (name, rows[name]["dice"], want)
        assert rows[name]["assd_mm"] >= 0 and rows[name]["hd95_mm"] >= 0
    ref = summary["reference"]
    worst = min(names[:3], key=lambda n: rows[n]["dice"])
    assert ref["n_cases_with_reference"] == 3 and ref["n_compared"] == 3
    assert ref["dice"]["worst_case"] == worst and ref["dice"]["worst"] == rows[worst]["dice"]
    assert f"({worst})" in printed and "3 of 4 cases compared (3 have one)" in printed
    # a rerun keeps every case, with its results
    rc = main(["segment", str(cases), "-o", str(out), "--model", str(model),
               "--reference", str(labels)])
    again = {r["case"]: r for r in json.loads((out / "summary.json").read_text())["cases"]}
    assert rc == 0 and {r["status"] for r in again.values()} == {"skipped"}
    assert all(again[n]["dice"] == rows[n]["dice"] for n in names[:3])
    assert {again[n]["result"] for n in names} == {rows[n]["status"] for n in names}
    # another reference for one case: that case alone is compared again with it
    kept = (out / names[1] / "label.nii.gz").read_bytes()
    other = tmp_path / "labels2"
    shutil.copytree(labels, other)
    lab = read_label_map(other / test[1].name)
    from shapeprior.io import write_label
    arr = lab.array.copy()
    arr[:, :, : arr.shape[2] // 2] = 0                       # half of it erased
    (other / test[1].name).unlink()
    write_label(lab, arr, other / test[1].name)
    rc = main(["segment", str(cases), "-o", str(out), "--model", str(model),
               "--reference", str(other)])
    third = {r["case"]: r for r in json.loads((out / "summary.json").read_text())["cases"]}
    assert third[names[1]]["status"] == "skipped"
    assert "compared again: the reference differs" in third[names[1]]["reason"]
    assert (out / names[1] / "label.nii.gz").read_bytes() == kept
    assert third[names[1]]["dice"] < rows[names[1]]["dice"] - 0.1
    assert [third[n]["status"] for n in (names[0], names[2], names[3])] == ["skipped"] * 3
    after = {**_digests(cases), **{"labels/" + k: v for k, v in _digests(labels).items()}}
    assert after == before
