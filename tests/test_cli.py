"""The command line's own logic: option parsing, what reaches the pipeline, exit codes.

The pipeline is replaced by recorders here (its results are tested elsewhere,
end to end): these tests check that each option the user typed arrives where
it acts, and that the exit code says what happened.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

import shapeprior.model
import shapeprior.pipeline
from shapeprior.cli import main
from shapeprior.cli._common import (finish_case, join_negative_values, parse_labels,
                                    status_code)


def test_exit_code_follows_status_and_strict():
    assert status_code(["ok"], False) == 0 and status_code(["ok"], True) == 0
    assert status_code(["suspect"], False) == 0
    assert status_code(["suspect"], True) == 3
    assert status_code(["failed"], False) == 3 and status_code(["ok", "failed"], False) == 3
    assert status_code(["ok", "suspect"], True) == 3


def test_finish_case_strict_makes_a_suspect_case_an_error(tmp_path, capsys):
    rep = {"status": "suspect", "reasons": ["weak boundary"]}
    assert finish_case("case", rep, tmp_path, strict=False) == 0
    assert capsys.readouterr().err == ""
    assert finish_case("case", rep, tmp_path, strict=True) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "case: suspect: weak boundary" in err


@pytest.mark.parametrize("exc,code,words", [
    (ValueError("bad value"), 1, "model-info: error: bad value"),
    (OSError("disk full"), 1, "model-info: error: disk full"),
    (RuntimeError("solver stalled"), 1, "model-info: error: solver stalled"),
    (KeyError("oops"), 1, "model-info: internal error: KeyError"),
    (MemoryError(), 1, "model-info: error: out of memory"),
    (KeyboardInterrupt(), 130, "interrupted; nothing partial was kept"),
    (BrokenPipeError(), 141, None),
])
def test_every_way_a_command_ends_has_its_code_and_one_line(exc, code, words, monkeypatch,
                                                            capsys):
    """What ``main`` makes of each exception a command raises: bad input (also a
    RuntimeError from a library) is one 'error:' line and 1, a bug is an
    'internal error' line, Ctrl-C is 130, a reader of stdout that left is 141
    (as SIGPIPE), quietly."""
    import shapeprior.cli as cli

    def command(argv):
        raise exc

    monkeypatch.setattr(cli, "command", lambda name: command)
    monkeypatch.delenv("SHAPEPRIOR_DEBUG", raising=False)
    assert main(["model-info", "x"]) == code
    err = capsys.readouterr().err
    if words is None:
        assert err == ""
    else:
        assert words in err and err.count("\n") == 1, err
        assert ("internal error" in err) == isinstance(exc, KeyError)


def test_negative_values_join_their_option():
    argv = ["in.nii", "--seed", "-64.4,-125.3,118.2", "--window", "-1,2.5e-1", "--other",
            "-3", "--seed-space", "ras"]
    assert join_negative_values(argv, ("--seed", "--window")) == [
        "in.nii", "--seed=-64.4,-125.3,118.2", "--window=-1,2.5e-1", "--other", "-3",
        "--seed-space", "ras"]
    # every value of the list may be negative, and only a number list is joined
    assert join_negative_values(["--seed", "1,-2,-3"], ("--seed",)) == ["--seed", "1,-2,-3"]
    assert join_negative_values(["--seed", "-1,-2,-3"], ("--seed",)) == ["--seed=-1,-2,-3"]
    assert join_negative_values(["--seed", "-o", "x"], ("--seed",)) == ["--seed", "-o", "x"]


def test_labels_must_be_positive_integers():
    assert parse_labels("1,2") == (1, 2) and parse_labels("3, ,4") == (3, 4)
    for bad in ("0", "1,0", "-1", "a", ""):
        with pytest.raises(ValueError, match="--labels"):
            parse_labels(bad)


# -- what reaches the pipeline --------------------------------------------------------------

def _stub_model(labels=(1, 2)):
    return types.SimpleNamespace(metadata={"parameters": {"labels": list(labels)}},
                                 prior_dictionary=lambda prior: None, profile=None)


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """``segment`` and ``refine`` with the pipeline replaced by recorders:
    ``(calls, image, model)``; each call's keyword arguments land in ``calls``."""
    calls = []
    monkeypatch.setattr(shapeprior.model, "load_model", lambda path: _stub_model())

    def run_case(path, out, model, model_path, params, **kw):
        calls.append({"params": params, **kw})
        return {"status": "ok", "quality": 0.9, "volume_ml": 1.0, "iterations": 1,
                "time_s": 0.1, "overridden_fraction_max": 0.0, "overridden_fraction": 0.0,
                "reasons": [], "warnings": []}

    def refine_case(mask, out, model, model_path, params, **kw):
        calls.append({"params": params, **kw})
        return {"status": "ok", "quality": 0.9, "reasons": [], "input": {"mask": "m"},
                "corrections": {"input_ml": 1.0, "refined_ml": 1.0, "removed_ml": 0.0,
                                "added_ml": 0.0, "regions": []},
                "warnings": [] if kw["labels_given"] else ["the mask holds other labels"]}

    monkeypatch.setattr(shapeprior.pipeline, "run_case", run_case)
    monkeypatch.setattr(shapeprior.pipeline, "refine_case", refine_case)
    image = tmp_path / "case.nii.gz"
    image.write_bytes(b"not read: the pipeline is a recorder")
    return calls, image, tmp_path / "model.npz"


def test_segment_options_reach_the_fit(recorded, tmp_path):
    calls, image, model = recorded
    assert main(["segment", str(image), "-o", str(tmp_path / "o"), "--model", str(model),
                 "--seed", "-64.4,-12,8", "--seed-space", "ras", "--dark-organ",
                 "--window", "-0.2,0.3"]) == 0
    p = calls[-1]["params"]
    assert p.seed_mm == (-64.4, -12.0, 8.0) and p.seed_space == "ras"
    assert p.inside_brighter is False and p.window == (-0.2, 0.3)
    # the reference is compared on the labels the model was built from
    assert calls[-1]["reference_labels"] == (1, 2)
    assert main(["segment", str(image), "-o", str(tmp_path / "o2"), "--model", str(model),
                 "--reference", str(tmp_path / "ref.nii.gz"), "--reference-labels", "2"]) == 0
    p = calls[-1]["params"]
    assert p.seed_mm is None and p.seed_space == "lps" and p.inside_brighter is True
    assert calls[-1]["reference_labels"] == (2,)


def test_segment_strict_exit_code_for_a_suspect_case(recorded, tmp_path, monkeypatch, capsys):
    calls, image, model = recorded
    suspect = {"status": "suspect", "quality": 0.5, "volume_ml": 1.0, "iterations": 1,
               "time_s": 0.1, "overridden_fraction_max": 0.0, "overridden_fraction": 0.0,
               "reasons": ["weak boundary"], "warnings": []}
    monkeypatch.setattr(shapeprior.pipeline, "run_case", lambda *a, **k: suspect)
    args = ["segment", str(image), "-o", str(tmp_path / "o"), "--model", str(model)]
    assert main(args) == 0
    assert main(args + ["--strict"]) == 3
    assert "suspect: weak boundary" in capsys.readouterr().err


def test_segment_folder_with_an_unreadable_case_exits_1(recorded, tmp_path, monkeypatch,
                                                         capsys):
    _, _, model = recorded
    folder = tmp_path / "cases"
    folder.mkdir()
    for n in ("a.nii.gz", "b.nii.gz"):
        (folder / n).write_bytes(b"x")
    summary = [{"case": "a", "status": "failed", "error": "a: not a NIfTI file"},
               {"case": "b", "status": "ok", "volume_ml": 3.0, "quality": 0.9, "time_s": 1.0,
                "reasons": []}]
    monkeypatch.setattr(shapeprior.pipeline, "run_batch", lambda *a, **k: summary)
    monkeypatch.setattr(shapeprior.pipeline, "write_summary", lambda *a, **k: None)
    rc = main(["segment", str(folder), "-o", str(tmp_path / "out"), "--model", str(model)])
    out = capsys.readouterr().out
    assert rc == 1 and "not a NIfTI file" in out and "(1 with errors)" in out
    summary[0] = {"case": "a", "status": "ok", "volume_ml": 2.0, "quality": 0.9,
                  "time_s": 1.0, "reasons": []}
    assert main(["segment", str(folder), "-o", str(tmp_path / "out2"), "--model",
                 str(model)]) == 0


def test_refine_passes_kept_labels_and_method(recorded, tmp_path):
    calls, image, model = recorded
    assert main(["refine", str(image), "-o", str(tmp_path / "r"), "--model", str(model),
                 "--labels", "1", "--keep-labels", "2,3", "--method", "l0"]) == 0
    c = calls[-1]
    assert c["labels"] == (1,) and c["keep"] == (2, 3) and c["params"].method == "l0"
    assert main(["refine", str(image), "-o", str(tmp_path / "r2"), "--model", str(model),
                 "--labels", "1,2"]) == 0
    assert calls[-1]["labels"] == (1, 2) and calls[-1]["keep"] == ()
    assert calls[-1]["labels_given"] is True
    # the reference is compared on the labels the model was built from, as segment's
    assert calls[-1]["reference_labels"] == (1, 2)
    assert main(["refine", str(image), "-o", str(tmp_path / "r3"), "--model", str(model),
                 "--reference", str(image), "--reference-labels", "2"]) == 0
    assert calls[-1]["reference_labels"] == (2,)


def test_refine_without_labels_takes_the_models_and_says_it_was_the_default(recorded, tmp_path,
                                                                            capsys):
    """Without --labels the organ is the labels the model was built from (an MSD
    hippocampus mask, head 1 and body 2, refined with a model built from 1,2 was
    refined as its head alone, suspect, under the old default of 1), less a label
    kept aside with --keep-labels; the report's note says they were the default."""
    calls, image, model = recorded
    assert main(["refine", str(image), "-o", str(tmp_path / "r"), "--model", str(model)]) == 0
    assert calls[-1]["labels"] == (1, 2) and calls[-1]["labels_given"] is False
    assert "  note: the mask holds other labels" in capsys.readouterr().out
    assert main(["refine", str(image), "-o", str(tmp_path / "k"), "--model", str(model),
                 "--keep-labels", "2"]) == 0
    assert calls[-1]["labels"] == (1,) and calls[-1]["keep"] == (2,)
    assert main(["refine", str(image), "-o", str(tmp_path / "g"), "--model", str(model),
                 "--labels", "3"]) == 0
    assert calls[-1]["labels"] == (3,) and calls[-1]["labels_given"] is True


def test_init_mask_labels_default_to_the_models(recorded, tmp_path):
    """--init-mask without --init-labels takes the labels the model was built from."""
    calls, image, model = recorded
    mask = tmp_path / "mask.nii.gz"
    mask.write_bytes(b"not read: the pipeline is a recorder")
    assert main(["segment", str(image), "-o", str(tmp_path / "s"), "--model", str(model),
                 "--init-mask", str(mask)]) == 0
    assert calls[-1]["init_labels"] == (1, 2)
    assert main(["segment", str(image), "-o", str(tmp_path / "t"), "--model", str(model),
                 "--init-mask", str(mask), "--init-labels", "4"]) == 0
    assert calls[-1]["init_labels"] == (4,)


@pytest.mark.parametrize("name", sorted(shapeprior.cli.COMMANDS))
def test_an_option_error_is_one_line_naming_the_help(name, capsys):
    """An option argparse cannot take is one line (the command, the error and where
    the help is), exit 2, without argparse's usage block (20 lines for segment)."""
    with pytest.raises(SystemExit) as exc:
        main([name, "--no-such-option"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"shapeprior {name}: error: "), err
    assert err.rstrip().endswith(f"(see 'shapeprior {name} --help')"), err


def test_label_zero_is_refused_with_one_line(recorded, tmp_path, capsys):
    _, image, model = recorded
    rc = main(["refine", str(image), "-o", str(tmp_path / "r"), "--model", str(model),
               "--labels", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "--labels" in err
    assert not (tmp_path / "r").exists()
    assert np.all([not p.name.startswith(".") for p in tmp_path.iterdir()])


def test_update_model_needs_exactly_one_of_output_and_rank_only(tmp_path, capsys):
    lab = tmp_path / "new.nii.gz"
    lab.write_bytes(b"x")
    for extra in ([], ["-o", str(tmp_path / "m2.npz"), "--rank-only"]):
        rc = main(["update-model", str(tmp_path / "m.npz"), str(lab), *extra])
        err = capsys.readouterr().err
        assert rc == 1 and "give -o NEW_MODEL" in err and err.count("\n") == 1


def test_update_model_refuses_a_taken_output_before_reading_anything(tmp_path, monkeypatch,
                                                                     capsys):
    """A foreign file where the new model should go: refused before the model
    is even read (the correspondence fits of the label maps take minutes)."""
    def read(path):
        raise AssertionError("the model was read before the output was checked")

    monkeypatch.setattr(shapeprior.model, "load_model", read)
    taken = tmp_path / "new_model.npz"
    taken.write_bytes(b"someone else's file")
    lab = tmp_path / "new.nii.gz"
    lab.write_bytes(b"x")
    rc = main(["update-model", str(tmp_path / "m.npz"), str(lab), "-o", str(taken), "--force"])
    err = capsys.readouterr().err
    assert rc == 1 and "never replaces it" in err and "was read before" not in err
    assert taken.read_bytes() == b"someone else's file"


def test_reconstruct_exit_codes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shapeprior.model, "load_model", lambda path: _stub_model())
    rep = {"n_shapes": 3, "status_counts": {"ok": 2, "suspect": 1, "failed": 0},
           "shapes_per_s": 10.0, "failed": [],
           "suspect": [{"name": "s2", "reasons": ["40% of vertices overridden"]}],
           "side": {"counts": {"left": 0, "right": 0, "none": 3}}}
    monkeypatch.setattr(shapeprior.pipeline, "reconstruct_shapes", lambda *a, **k: rep)
    args = ["reconstruct", str(tmp_path / "meshes"), "-o", str(tmp_path / "o"), "--model",
            str(tmp_path / "m.npz")]
    assert main(args) == 0
    assert main(args + ["--strict"]) == 3
    rep["status_counts"] = {"ok": 3, "suspect": 0, "failed": 0}
    rep["suspect"] = []
    assert main(args + ["--strict"]) == 0
    # a shape that failed (an unreadable mesh) is an untrustworthy result: 3 without
    # --strict too, and it is named on screen
    rep["status_counts"] = {"ok": 2, "suspect": 0, "failed": 1}
    rep["failed"] = [{"name": "s1", "reasons": "mesh 's1' could not be read"}]
    capsys.readouterr()
    assert main(args) == 3
    assert "  failed: s1: mesh 's1' could not be read" in capsys.readouterr().out
    capsys.readouterr()
    for bad in ("0", "1.5", "-0.1"):
        assert main(args + ["--refit", bad]) == 1
        assert "--refit" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--reference-labels", "1"], "--reference-labels has no effect without --reference"),
    (["--init-labels", "3"], "--init-labels has no effect without --init-mask"),
    (["--seed-space", "lps"], "--seed-space has no effect without --seed"),
    (["--seed", "1,2,3", "--init-mask", "m.nii.gz"], "--seed and --init-mask both place"),
    (["--seed", "1,2,3", "--placement", "search"], "--placement has no effect with --seed"),
    (["--placement", "prior", "--hypotheses", "3"],
     "--hypotheses has no effect with --placement prior"),
    (["--series", "1"], "--series picks a series in a DICOM folder; the input is a file"),
    (["--workers", "2"], "--workers and --scheduler run a folder of cases; the input is one"),
    (["--scheduler", "tcp://127.0.0.1:1"], "--workers and --scheduler run a folder of cases"),
])
def test_segment_refuses_options_that_would_change_nothing(extra, message, phantom_model,
                                                            tmp_path, capsys):
    """An option given where it has no effect is one error line and exit 1,
    before anything is read or written; the same option where it acts runs."""
    d, images, labels, model = phantom_model
    out = tmp_path / "out"
    rc = main(["segment", str(images / "phantom_000.nii.gz"), "-o", str(out), "--model",
               str(model), *extra])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("command, extra, words", [
    ("segment", ["--surface-offset", "-100"], "--surface-offset -100.0 is invalid"),
    ("segment", ["--hypotheses", "0"], "--hypotheses 0 is invalid"),
    ("segment", ["--seed", "nan,1,2"], "--seed (nan, 1.0, 2.0) is invalid"),
    ("segment", ["--window", "5,1"], "--window (5.0, 1.0) is invalid"),
    ("refine", ["--window", "5,1", "--image", "IMAGE"], "--window (5.0, 1.0) is invalid"),
])
def test_a_bad_value_is_refused_naming_the_option(command, extra, words, phantom_model,
                                                  tmp_path, capsys):
    """A value the fit's parameters refuse is named by its option, as typed
    (it said ``surface_offset_mm=-100.0``, ``n_hypotheses=0``, ``seed_mm=``)."""
    d, images, labels, model = phantom_model
    scan = images / "phantom_000.nii.gz"
    first = scan if command == "segment" else labels / "phantom_000.nii.gz"
    extra = [str(scan) if e == "IMAGE" else e for e in extra]
    out = tmp_path / "out"
    rc = main([command, str(first), "-o", str(out), "--model", str(model), *extra])
    err = capsys.readouterr().err
    assert rc == 1 and words in err and len(err.strip().splitlines()) == 1, err
    assert "_mm" not in err and "n_hypotheses" not in err
    assert not out.exists()


def test_options_that_act_are_accepted_and_refine_window_needs_an_image(phantom_model,
                                                                       tmp_path, capsys):
    d, images, labels, model = phantom_model
    scan = str(images / "phantom_000.nii.gz")
    assert main(["segment", scan, "-o", str(tmp_path / "a"), "--model", str(model),
                 "--placement", "search", "--hypotheses", "2"]) == 0
    capsys.readouterr()
    rc = main(["refine", str(labels / "phantom_000.nii.gz"), "-o", str(tmp_path / "r"),
               "--model", str(model), "--window", "0,0.2"])
    assert rc == 1 and "--window has no effect without --image" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("extra, message", [
    (["--side", "left"], "--side has no effect without --split-sides"),
    (["--no-mirror"], "--no-mirror has no effect without --split-sides"),
    (["--nonzero", "3"], "--nonzero has no effect without --atoms"),
    (["--dictionary-kind", "deviations"], "--dictionary-kind has no effect without --atoms"),
    (["--normalisation", "ct"], "--normalisation has no effect without --images"),
    (["--no-voxel-classifier"], "--no-voxel-classifier has no effect without --images"),
])
def test_build_model_refuses_options_that_would_change_nothing(extra, message, tmp_path,
                                                               capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    out = tmp_path / "m.npz"
    assert main(["build-model", str(labels), "-o", str(out), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and list(tmp_path.iterdir()) == [labels]


@pytest.mark.parametrize("argv, option, value", [
    (["build-model", "labels", "-o", "m.npz", "--limit"], "--limit", "0"),
    (["build-model", "labels", "-o", "m.npz", "--limit"], "--limit", "-1"),
    (["build-model", "labels", "-o", "m.npz", "--jobs"], "--jobs", "0"),
    (["build-model", "labels", "-o", "m.npz", "--random-state"], "--random-state", "-5"),
    (["update-model", "m.npz", "labels", "-o", "new.npz", "--limit"], "--limit", "-1"),
    (["update-model", "m.npz", "labels", "-o", "new.npz", "--jobs"], "--jobs", "-2"),
    (["demo", "-o", "out", "--seed"], "--seed", "-1"),
    (["ssc-demo", "-o", "out", "--seed"], "--seed", "-1"),
])
def test_counts_and_seeds_out_of_range_are_refused_naming_the_option(argv, option, value,
                                                                     tmp_path, capsys,
                                                                     monkeypatch):
    """``--limit -1`` used to drop the last label map and ``--limit 0`` meant no limit;
    ``--jobs 0`` ran one process; a negative seed got numpy's "expected non-negative
    integer" once the slow stages were done (or not at all without --atoms)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "labels").mkdir()
    with pytest.raises(SystemExit) as exc:
        main([*argv, value])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert option in last and repr(value) in last, last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels"]


@pytest.mark.parametrize("option, value", [("--points", "50001"), ("--points", "49"),
                                           ("--atoms", "201"), ("--atoms", "4")])
def test_ssc_demo_sizes_are_bounded(option, value, tmp_path, capsys):
    """--points 100000000 allocated until the machine gave up: sizes outside the
    demo's range are refused naming the option and the range, nothing written."""
    with pytest.raises(SystemExit) as exc:
        main(["ssc-demo", "-o", str(tmp_path / "out"), option, value])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{option}={value} must be in [" in last, last
    assert list(tmp_path.iterdir()) == []


def test_a_build_seed_below_zero_is_refused_by_the_api():
    from shapeprior.model import BuildParams

    with pytest.raises(ValueError, match="seed=-1 is invalid"):
        BuildParams(seed=-1)


@pytest.mark.parametrize("extra, message", [
    (["-o", "new.npz", "--criterion", "novelty"], "--criterion has no effect without --rank-only"),
    (["-o", "new.npz", "--json"], "--json has no effect without --rank-only"),
    (["--rank-only", "--force"], "--force has no effect with --rank-only"),
    (["--rank-only", "--images", "imgs"], "--images and --image-name have no effect with "
                                           "--rank-only"),
])
def test_update_model_refuses_options_that_would_change_nothing(extra, message, tmp_path,
                                                                capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["update-model", "m.npz", "labels", *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []
