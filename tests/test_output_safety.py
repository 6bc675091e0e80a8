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
