"""The output primitives one at a time: what they refuse, and that what they
refuse is left byte for byte as it was (hashed before and after). The CLI
tests (test_hostile.py) go through them end to end; these pin each rule
down where a command may check something else first."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from _safety import tree_state as _digest
from shapeprior._outputs import (OutputDir, OutputExistsError, UnsafeOutputError, own_output,
                                 publish_file, write_text_atomic)


def _our_output(path):
    """A committed shapeprior output folder at ``path``."""
    out = OutputDir(path)
    out.file("label.nii.gz").write_bytes(b"label")
    out.write_json("manifest.json", {"producer": "shapeprior", "command": "segment"})
    out.commit()
    return path


def test_a_link_to_our_output_is_not_ours(tmp_path):
    """--force replaces a shapeprior folder, never a symbolic link to one: the
    link would be replaced and the folder it names left, or worse, followed."""
    real = _our_output(tmp_path / "real")
    assert own_output(real) is None
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    before = _digest(real)
    assert own_output(link) is not None
    with pytest.raises(OutputExistsError, match="never replaces it"):
        OutputDir(link, force=True)
    assert link.is_symlink() and _digest(real) == before


def test_a_folder_with_a_foreign_manifest_is_not_ours(tmp_path):
    """A manifest.json that another tool wrote does not make a folder ours, even
    when the folder's other files bear our output names."""
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps({"tool": "other", "files": 2}))
    (foreign / "label.nii.gz").write_bytes(b"their label")
    before = _digest(foreign)
    assert "no shapeprior manifest" in own_output(foreign)
    with pytest.raises(OutputExistsError, match="never replaces it"):
        OutputDir(foreign, force=True)
    assert _digest(foreign) == before


def test_a_folder_that_appears_during_the_run_is_left_alone(tmp_path):
    """The output path was free when the run began; something else wrote there
    before it finished: the commit refuses and leaves that folder, even with
    --force."""
    path = tmp_path / "out"
    out = OutputDir(path, force=True)
    out.file("label.nii.gz").write_bytes(b"ours")
    out.write_json("manifest.json", {"producer": "shapeprior", "command": "segment"})
    path.mkdir()
    (path / "notes.txt").write_text("someone else's")
    before = _digest(path)
    with pytest.raises(OutputExistsError, match="appeared during the run"):
        out.commit()
    out.discard()
    assert _digest(path) == before
    assert not (tmp_path / ".shapeprior-staging").exists()


def test_a_published_file_never_lands_on_an_input(tmp_path):
    """publish_file refuses an input as its destination even when the caller
    would call the input its own (and with force)."""
    model = tmp_path / "model.npz"
    model.write_bytes(b"the input model")
    before = _digest(model)
    src = tmp_path / "staged.npz"
    src.write_bytes(b"new model")
    with pytest.raises(UnsafeOutputError, match="is the input"):
        publish_file(src, model, force=True, inputs=[model], own=lambda p: None)
    assert _digest(model) == before and src.exists()


def test_a_small_text_output_never_replaces_a_foreign_file(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("someone else's summary")
    before = _digest(target)
    with pytest.raises(OutputExistsError, match="never replaces it"):
        write_text_atomic(target, "{}", own=lambda p: "it is not a shapeprior output")
    assert _digest(target) == before
    assert [f.name for f in tmp_path.iterdir()] == ["summary.json"]     # no temporary left
    write_text_atomic(target, "{}", own=lambda p: None)                 # ours: replaced
    assert target.read_text() == "{}"


def _failed_result(shape=(6, 7, 8)):
    """A failed result that still carries a non-empty label (as a fit that was
    not found may)."""
    label = np.zeros(shape, np.uint8)
    label[2:4, 2:5, 3:6] = 1
    return SimpleNamespace(status="failed", quality=0.1, reasons=["organ not found"],
                           mirrored=False, label=label, verts=np.zeros((4, 3)),
                           faces=np.array([[0, 1, 2]]))


def test_a_failed_result_is_not_measured():
    """statistics.json of a failed result holds its status and reasons, no organ
    measures: its label is not the organ."""
    from shapeprior.pipeline._run import statistics

    model = SimpleNamespace(metadata={"organ": "kidney"})
    st = statistics(_failed_result(), model, np.ones(3))
    assert st["status"] == "failed" and st["reasons"] == ["organ not found"]
    assert "volume_ml" not in st and "mahalanobis" not in st


def test_a_failed_result_gets_no_dicom_seg():
    from shapeprior.pipeline._run import _write_seg

    class _Out:
        def file(self, name):
            raise AssertionError(f"a DICOM-SEG was written for a failed result: {name}")

    rec = _write_seg(_Out(), None, _failed_result(), SimpleNamespace(metadata={}), None, {},
                     SimpleNamespace(side="none"))
    assert rec["written"] is False and "failed" in rec["reason"]


def test_digests_asked_after_cancel_are_still_hashed(tmp_path):
    """A digest asked after the background hashing was stopped is computed
    then, never left out of a manifest."""
    import hashlib

    from shapeprior._provenance import FileDigests

    files = [tmp_path / f"f{i}.bin" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * (3 << 20))
    dig = FileDigests(files + [None])
    dig.cancel()
    for f in files:
        assert dig.sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    # an unlisted file is hashed when asked
    assert FileDigests([]).sha256(files[0]) == hashlib.sha256(files[0].read_bytes()).hexdigest()


def test_inputs_are_hashed_ahead_only_when_regular_files(tmp_path):
    """A named pipe among a run's inputs is never opened by the hashing thread
    (the open would block until a writer came); regular files are hashed ahead
    and agree with hashlib."""
    import hashlib
    import os
    import threading
    import time

    from shapeprior._provenance import FileDigests

    f = tmp_path / "a.bin"
    f.write_bytes(os.urandom(3 << 20))
    pipe = tmp_path / "p.nii.gz"
    os.mkfifo(pipe)
    before = set(threading.enumerate())       # other tests' hash threads are not ours
    d = FileDigests([f, pipe, None])
    try:
        assert d.sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
        time.sleep(0.3)
        assert not any(t.name.startswith("shapeprior-sha256") and t.is_alive()
                       for t in set(threading.enumerate()) - before)
    finally:
        d.cancel()
        try:        # a reader blocked on the pipe (the bug this test is for): release it
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_an_output_beside_an_input_is_not_inside_it(tmp_path):
    """Inside means below the input's folder, not sharing the start of its name:
    ``case1_out`` beside ``case1`` is a free output; ``case1/out`` and ``case1``
    itself are refused, and so is a folder that would contain the input."""
    from shapeprior._outputs import check_not_input

    case = tmp_path / "case1"
    case.mkdir()
    check_not_input(tmp_path / "case1_out", [case])
    check_not_input(tmp_path / "case1.seg", [tmp_path / "case1.nii.gz"])
    with pytest.raises(UnsafeOutputError, match="lies inside the input"):
        check_not_input(case / "out", [case])
    with pytest.raises(UnsafeOutputError, match="is the input"):
        check_not_input(case, [case])
    with pytest.raises(UnsafeOutputError, match="contains the input"):
        check_not_input(tmp_path, [case])


def test_a_small_text_write_that_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    """The rename of a small text output fails (a full disk, a folder in the
    way): the error reaches the caller, the target is as it was and no
    temporary file is left beside it."""
    import os

    target = tmp_path / "summary.json"
    target.write_text("the previous summary")
    before = _digest(tmp_path)

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(target, "{}", own=lambda p: None)
    monkeypatch.undo()
    assert _digest(tmp_path) == before
    assert [f.name for f in tmp_path.iterdir()] == ["summary.json"]


def test_another_users_staging_is_left_alone(tmp_path, monkeypatch):
    """A shared results folder: another user's run staged there, and its lock file
    cannot be opened (their file, mode 0600). A run here takes it neither for a
    dead run's (it leaves it) nor for an error (it writes its own output)."""
    import os

    from shapeprior._outputs import STAGING

    theirs = tmp_path / STAGING / "run-777-abc"
    (theirs / "out").mkdir(parents=True)
    (theirs / "lock").write_text("")
    (theirs / "out" / "label.nii.gz").write_bytes(b"their partial output")
    before = _digest(theirs)
    real_open = os.open

    def as_another_user(path, *args, **kw):
        if str(path).startswith(str(theirs)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", as_another_user)
    out = _our_output(tmp_path / "mine")
    monkeypatch.undo()
    assert own_output(out) is None and _digest(theirs) == before


def test_a_fresh_unlocked_staging_folder_is_another_runs(tmp_path):
    """A ``new-*`` staging folder is another run between making it and locking it:
    a second run leaves it while it is young and removes it only once it is old
    (its run died in that instant); ``run-*`` folders go by their lock."""
    import os
    import time

    from shapeprior._outputs import STAGING, clean_stale_staging

    root = tmp_path / STAGING
    young = root / "new-123-abc"
    old = root / "new-456-def"
    for d in (young, old):
        d.mkdir(parents=True)
        (d / "lock").write_text("")
    t = time.time() - 3600
    os.utime(old, (t, t))
    clean_stale_staging(tmp_path)
    assert young.is_dir() and not old.exists()


def test_a_folder_is_ours_only_with_our_manifest_and_our_plain_files(tmp_path):
    """A manifest of another tool with a 'command' key is not ours (only an older
    shapeprior's, which names shapeprior among its versions); a folder our
    manifest names is not ours when one of the names it lists is now a folder
    (the user's), so --force leaves it."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"command": "predict",
                                                     "versions": {"nnunet": "2.5"}}))
    (other / "label.nii.gz").write_bytes(b"their label")
    assert "no shapeprior manifest" in own_output(other)
    older = tmp_path / "older"
    older.mkdir()
    (older / "manifest.json").write_text(json.dumps({"command": "segment",
                                                     "versions": {"shapeprior": "0.0.9"}}))
    (older / "label.nii.gz").write_bytes(b"our label")
    assert own_output(older) is None
    ours = _our_output(tmp_path / "ours")
    (ours / "label.nii.gz").unlink()
    (ours / "label.nii.gz").mkdir()
    (ours / "label.nii.gz" / "notes.txt").write_text("the user's notes")
    before = _digest(ours)
    assert "which shapeprior did not write" in own_output(ours)
    with pytest.raises(OutputExistsError, match="never replaces it"):
        OutputDir(ours, force=True)
    assert _digest(ours) == before
    # an empty folder of the user's under a listed name counts too (nothing under it
    # is unlisted, but it is no file of ours)
    (ours / "label.nii.gz" / "notes.txt").unlink()
    assert "'label.nii.gz', which shapeprior did not write" in own_output(ours)
