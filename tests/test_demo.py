"""``shapeprior demo``, the README's first command: the whole pipeline on
built-in phantoms, its result, and what it refuses to overwrite."""

import hashlib
import json
import tempfile
from pathlib import Path

import pytest

from shapeprior.cli import main


def _hashes(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    import contextlib
    import io

    out = tmp_path_factory.mktemp("demo") / "out"
    scratch = tmp_path_factory.mktemp("scratch")      # the demo's temporary folder
    buf = io.StringIO()
    old, tempfile.tempdir = tempfile.tempdir, str(scratch)
    try:
        with contextlib.redirect_stdout(buf):
            assert main(["demo", "--output", str(out), "--cases", "4"]) == 0
    finally:
        tempfile.tempdir = old
    return out, buf.getvalue(), sorted(f.name for f in scratch.iterdir())


@pytest.fixture(scope="module")
def demo_out(demo_run):
    return demo_run[0]


def test_demo_segments_the_leaking_phantom_and_says_so(demo_out):
    names = {p.name for p in demo_out.iterdir()}
    assert {"label.nii.gz", "mesh.vtk", "model.npz", "report.json", "manifest.json",
            "statistics.json", "model_build_report.json"} <= names
    assert not [n for n in names if n.startswith(".")]        # nothing staged left behind
    rep = json.loads((demo_out / "report.json").read_text())
    assert rep["status"] == "ok", rep.get("reasons")
    assert rep["reference"]["dice"] > 0.95
    assert rep["reference"]["assd_mm"] < 0.3
    # the held-out phantom has a bright leak beside the organ: the prior overrode
    # part of the search on the way
    assert rep["overridden_fraction_max"] > 0.0


def test_demo_names_only_files_that_exist_after_it(demo_run):
    """Its scratch folder is removed at the end (nothing is left in the temporary
    folder): the lines it prints name the published files; the held-out phantom
    is not among the training shapes."""
    import re

    out, text, left = demo_run
    assert left == []
    paths = re.findall(r"(?:see |wrote )(\S+?)\)?$", text, flags=re.M)
    assert len(paths) >= 3, text
    for p in paths:
        assert p.startswith(str(out)) and Path(p).exists(), (p, text)
    build = json.loads((out / "model_build_report.json").read_text())
    assert build["n_shapes_kept"] == 4 and not build["rejected"]


def test_demo_never_replaces_its_output_without_force(demo_out, capsys):
    before = _hashes(demo_out)
    assert main(["demo", "--output", str(demo_out), "--cases", "4"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--force" in err
    assert _hashes(demo_out) == before


def test_demo_never_replaces_a_foreign_folder_even_with_force(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    before = _hashes(foreign)
    assert main(["demo", "--output", str(foreign), "--cases", "4", "--force"]) == 1
    assert "never replaces" in capsys.readouterr().err
    assert _hashes(foreign) == before


def test_demo_refuses_too_few_training_phantoms(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--output", str(tmp_path / "o"), "--cases", "3"])
    assert exc.value.code == 2
    assert "--cases=3 must be >= 4" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_ssc_demo_compares_the_methods_and_the_hybrid_absorbs_the_leak(tmp_path):
    import numpy as np

    out = tmp_path / "ssc"
    assert main(["ssc-demo", "--output", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["methods"]) == {"l1", "l0", "hybrid"}
    observed = rep["observed_error_mm"]["mean"]
    for m in rep["methods"].values():
        assert m["surface_error_mm"]["mean"] < observed
        assert m["gross_recall"] > 0.85
    hybrid, l1 = rep["methods"]["hybrid"], rep["methods"]["l1"]
    assert hybrid["surface_error_mm"]["mean"] < l1["surface_error_mm"]["mean"]
    assert hybrid["surface_error_mm"]["max"] < 2.0
    z = np.load(out / "shapes.npz")
    n = rep["points"]
    for k in ("clean", "observed", "reconstruction_l1", "reconstruction_l0",
              "reconstruction_hybrid"):
        assert z[k].shape == (n, 3)
    err = np.linalg.norm(z["reconstruction_hybrid"] - z["clean"], axis=1)
    assert err.mean() == pytest.approx(hybrid["surface_error_mm"]["mean"])
    # --missing (default 0.1) of the vertices get weight 0; the error on them is reported
    missing = z["weights"] == 0
    assert missing.sum() == int(rep["missing_fraction"] * n)
    assert hybrid["surface_error_mm"]["mean_on_missing"] == pytest.approx(err[missing].mean())
    # recall: the share of the displaced vertices flagged; precision: of the flagged
    gross, flagged = z["gross"].astype(bool), z["overridden_hybrid"].astype(bool)
    assert hybrid["gross_recall"] == pytest.approx((gross & flagged).sum() / gross.sum())
    assert hybrid["gross_precision"] == pytest.approx((gross & flagged).sum() / flagged.sum())
    assert hybrid["gross_recall"] != pytest.approx(hybrid["gross_precision"])


@pytest.mark.parametrize("unbuffered", [True, False])
def test_a_closed_stdout_ends_the_run_quietly(tmp_path, unbuffered):
    """``shapeprior ... | head -1``: the reader leaves after one line. Line by line
    (``PYTHONUNBUFFERED``) the run stops at its next line (exit 141, as SIGPIPE
    would) and keeps nothing; block-buffered, its lines leave at the end, after the
    outputs are published, and whether the pipe is still open then decides between
    0 and 141. Never a traceback."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    out = tmp_path / "ssc"
    p = subprocess.Popen([sys.executable, "-m", "shapeprior.cli", "ssc-demo", "-o", str(out),
                          "--points", "600", "--atoms", "40"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    p.wait(timeout=120)
    assert first.startswith("SSC-L1")
    assert p.returncode in ((141,) if unbuffered else (0, 141)), err
    assert err == ""
    assert [q.name for q in tmp_path.iterdir()] == ([] if unbuffered else ["ssc"])
    if not unbuffered:
        assert json.loads((out / "report.json").read_text())["points"] == 600
