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
