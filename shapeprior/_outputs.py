"""Outputs that cannot lose data: safe targets, atomic folders, run manifests.

Policy
------
* An output may not equal, contain or lie inside any input (file or
  folder), with or without ``--force`` (:func:`check_not_input`).
* ``--force`` replaces only a previous shapeprior output, recognised by its
  manifest (``producer: shapeprior`` and the list of files it wrote); a
  foreign file or folder is never replaced or deleted (:func:`own_output`).
* Everything a run writes is staged in one place per output parent,
  ``PARENT/.shapeprior-staging/run-*``, and renamed into place in one step
  on :meth:`OutputDir.commit`. Each staging folder holds a lock
  (``flock``) for as long as its process lives; a later run removes the
  ones whose lock is free (the process died, even by SIGKILL).
* Parent folders a failed run created are removed again.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np

from ._provenance import package_versions, sha256_file
from .io import image_files, image_sha256


PRODUCER = "shapeprior"
STAGING = ".shapeprior-staging"
#: files a shapeprior output folder may hold without a manifest naming them
#: (written by older versions, or left incomplete by an interrupted run)
OWN_FILES = frozenset({"label.nii.gz", "mesh.vtk", "mesh.ply", "mesh.stl", "mesh.obj",
                       "report.json", "qc.png", "manifest.json", "model.npz", "shapes.npz"})


class OutputExistsError(FileExistsError):
    """The output exists and may not (or, being foreign, can never) be replaced."""


class UnsafeOutputError(ValueError):
    """The output would overwrite, contain or sit inside an input."""


def _real(p) -> str:
    return os.path.realpath(os.path.abspath(os.fsencode(Path(p)))).decode(
        "utf-8", "surrogateescape")


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def show_path(p) -> str:
    """A path fit for a message: undecodable bytes as ``\\xNN``."""
    return os.fsencode(str(p)).decode("utf-8", "backslashreplace")


def one_line(text) -> str:
    """A message as one printable line (white space folded, lone surrogates escaped)."""
    t = " ".join(str(text).split())
    return t.encode("utf-8", "backslashreplace").decode("utf-8")


def _with_data_files(inputs):
    """``(path, what)`` of the inputs that are given, each file followed by the
    other files it stands for (named as that file's)."""
    for i in inputs:
        if i is None:
            continue
        yield i, show_path(i)
        if Path(i).is_file():
            for f in image_files(i):
                if _real(f) != _real(i):
                    yield f, f"{show_path(f)} (the data of {show_path(i)})"


def check_not_input(output, inputs) -> None:
    """Refuse an ``output`` path that equals, contains or lies inside an input.

    Symbolic links are resolved first, so a link cannot smuggle an input in.
    An image input stands for all its files: a NIfTI pair's two halves, and
    the data files a detached MetaImage or NRRD header names, wherever they lie
    (:func:`shapeprior.io.image_files`)."""
    o = _real(output)
    for i, what in _with_data_files(inputs):
        r = _real(i)
        if o == r:
            raise UnsafeOutputError(f"output {show_path(output)} is the input {what}; "
                                    "choose another output path")
        if _within(o, r):
            raise UnsafeOutputError(f"output {show_path(output)} lies inside the input "
                                    f"{what}; choose a path outside it")
        if _within(r, o):
            raise UnsafeOutputError(f"output {show_path(output)} contains the input {what}; "
                                    "choose a path that does not")


def read_manifest(folder):
    """The manifest of a shapeprior output folder, or None."""
    try:
        m = json.loads((Path(folder) / "manifest.json").read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict):
        return None
    legacy = "command" in m and PRODUCER in (m.get("versions") or {})
    return m if m.get("producer") == PRODUCER or legacy else None


def own_output(path, partial_ok=False):
    """Why ``path`` is not a shapeprior output folder (a string), or None when it is.

    A folder is ours when it is a real folder holding only regular files
    that our manifest lists (or, for manifests of older versions and with
    ``partial_ok`` for an interrupted case without one, that bear the names
    of our output files). An empty folder is replaceable too."""
    p = Path(path)
    if p.is_symlink() or not p.is_dir():
        return "it is not a folder shapeprior wrote"
    entries = list(p.iterdir())
    if not entries:
        return None
    m = read_manifest(p)
    if m is None and not (partial_ok and not (p / "manifest.json").exists()):
        return "it has no shapeprior manifest"
    allowed = set(OWN_FILES)
    if m is not None and isinstance(m.get("outputs"), dict):
        allowed = set(m["outputs"]) | {"manifest.json"}
    folders = {str(q) for n in allowed for q in PurePosixPath(n).parents} - {"."}
    for e in _entries(p):
        name = e.relative_to(p).as_posix()
        ok = (e.is_dir() and name in folders) or (e.is_file() and name in allowed)
        if e.is_symlink() or not ok:
            return f"it holds {show_path(name)!r}, which shapeprior did not write"
    return None


def _entries(folder: Path):
    """Everything under ``folder``, depth first; never follows a link."""
    for e in sorted(folder.iterdir()):
        yield e
        if e.is_dir() and not e.is_symlink():
            yield from _entries(e)


def own_model_file(path):
    """Why ``path`` is not a shapeprior model file, or None when it is."""
    from .model import ModelFormatError, read_model_metadata

    p = Path(path)
    if p.is_symlink() or not p.is_file():
        return "it is not a model file shapeprior wrote"
    try:
        read_model_metadata(p)
    except (ModelFormatError, OSError, ValueError):
        return "it is not a shapeprior model file"
    return None


def _lock(path: Path, create=True):
    """An exclusive ``flock`` on ``path`` (its fd), or None when another process
    holds it or (``create=False``) the file is gone or not ours to open (another
    user's run in a shared folder: never taken for a dead one's)."""
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
    except (FileNotFoundError, PermissionError):
        if create:
            raise
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def clean_stale_staging(parent) -> int:
    """Remove staging folders under ``parent`` whose process is gone; returns how many."""
    root = Path(parent) / STAGING
    if not root.is_dir() or root.is_symlink():
        return 0
    try:
        runs = sorted(root.iterdir())
    except FileNotFoundError:       # another run removed it, empty, since the check
        return 0
    n = 0
    for run in runs:
        if run.is_symlink() or not run.is_dir():
            continue
        if run.name.startswith("new-"):     # died before it could lock: only once old
            try:
                if time.time() - run.stat().st_mtime > 600:
                    shutil.rmtree(run, ignore_errors=True)
            except OSError:
                pass
            continue
        if not run.name.startswith("run-"):
            continue
        fd = _lock(run / "lock", create=False)
        if fd is None:
            continue                    # a live run holds it
        try:
            shutil.rmtree(run, ignore_errors=True)
            n += 1
        finally:
            os.close(fd)
    _rmdir_if_empty(root)
    return n


def _rmdir_if_empty(p: Path) -> None:
    try:
        p.rmdir()
    except OSError:
        pass


def remove_created(dirs) -> None:
    """Remove, deepest first, the folders :func:`make_dirs` created, if empty."""
    for d in reversed(list(dirs)):
        _rmdir_if_empty(d)


def make_dirs(path: Path) -> list:
    """mkdir -p; returns the folders it created, deepest last."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    created = []
    for d in reversed(missing):
        try:
            d.mkdir()
            created.append(d)
        except FileExistsError:
            pass
    return created


class OutputDir:
    """Stage files for the folder ``path`` and publish them atomically.

    Parameters
    ----------
    path : path
        The output folder.
    force : bool
        Replace ``path`` if it is a previous shapeprior output (never a
        foreign folder).
    inputs : iterable of paths
        Files and folders the run reads; ``path`` may not equal, contain or
        lie inside any of them.
    partial_ok : bool
        Also replace a folder of shapeprior output files without a
        manifest (an interrupted case of a batch).
    """

    def __init__(self, path, force=False, inputs=(), partial_ok=False):
        self.path = Path(path)
        self.force = force
        self.stage = None
        self._run = None
        self._fd = None
        self.partial_ok = partial_ok
        check_not_input(self.path, inputs)
        check_replaceable(self.path, force, self._own)
        self._created = make_dirs(self.path.parent)
        clean_stale_staging(self.path.parent)
        self._run, self._fd = _new_run(self.path.parent)
        self.stage = self._run / "out"
        self.stage.mkdir()        # under the umask; the run folder around it is private

    def file(self, name) -> Path:
        """Path of an output file inside the staged folder."""
        return self.stage / name

    def scratch(self, name) -> Path:
        """Path for a file staged beside the folder (same file system), e.g. a
        file to publish with :func:`publish_file`; removed with the staging."""
        return self._run / name

    def write_json(self, name, obj):
        self.file(name).write_text(json_text(obj))
        _kill_point(f"wrote-{name}")

    def write_npz(self, name, **arrays):
        np.savez_compressed(self.file(name), **arrays)

    def commit(self):
        """Publish the staged folder as ``path`` in one rename."""
        _seal_manifest(self.stage)
        _kill_point("before-commit")
        if self.path.exists() or self.path.is_symlink():
            check_replaceable(self.path, self.force, self._own, during_run=True)
            os.replace(self.path, self._run / "old")
            _kill_point("mid-replace")
        os.replace(self.stage, self.path)
        _kill_point("after-commit")
        self._created = []
        self._release()

    def _own(self, path):
        return own_output(path, partial_ok=self.partial_ok)

    def discard(self):
        """Drop everything staged, and the parent folders this run created."""
        self._release()
        remove_created(self._created)
        self._created = []

    def _release(self):
        if self._run is not None:
            shutil.rmtree(self._run, ignore_errors=True)
            _rmdir_if_empty(self._run.parent)
            self._run = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):  # a run that never committed leaves nothing behind
        try:
            self.discard()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _new_run(parent: Path):
    """A locked staging folder ``run-*``: created as ``new-*``, locked, then renamed,
    so that no other run can see it unlocked and take it for a dead one's."""
    root = parent / STAGING
    for attempt in range(20):       # another run may remove the empty root meanwhile
        try:
            # (mkdir itself raises FileExistsError when the root it found existing
            # is gone by the time it looks again)
            root.mkdir(exist_ok=True)
            new = Path(tempfile.mkdtemp(prefix=f"new-{os.getpid()}-", dir=root))
            break
        except (FileNotFoundError, FileExistsError):
            if attempt == 19 or (root.exists() and not root.is_dir()):
                raise
    fd = _lock(new / "lock")
    run = new.with_name("run-" + new.name[len("new-"):])
    os.rename(new, run)
    return run, fd


def publish_file(src, dest, force=False, inputs=(), own=None):
    """Move the finished file ``src`` to ``dest`` in one rename.

    ``dest`` may not be an input; an existing ``dest`` is replaced only with
    ``force`` and only when ``own(dest)`` (a reason string or None) says it
    is ours."""
    dest = Path(dest)
    check_not_input(dest, inputs)
    check_replaceable(dest, force, own or (lambda p: "it is not a shapeprior output"))
    _kill_point("before-publish")
    os.replace(src, dest)


def check_replaceable(path, force, own, during_run=False):
    """Refuse to replace ``path`` unless ``own(path)`` (a reason, or None) finds it
    ours and ``force`` is set; an empty folder needs no ``force``."""
    if not (path.exists() or path.is_symlink()):
        return
    why = own(path)
    if why is not None:
        if during_run:
            raise OutputExistsError(f"{show_path(path)} appeared during the run and {why}; "
                                    "it was left as it is")
        raise OutputExistsError(f"{show_path(path)} exists and {why}; shapeprior never "
                                "replaces it, even with --force")
    empty_dir = path.is_dir() and not path.is_symlink() and not any(path.iterdir())
    if not force and not empty_dir:
        if during_run:
            raise OutputExistsError(f"{show_path(path)} appeared during the run; it was left "
                                    "as it is")
        raise OutputExistsError(f"{show_path(path)} exists; use --force to replace it")


def _seal_manifest(stage: Path):
    """Record in the manifest every file the output holds, with its SHA-256."""
    mf = stage / "manifest.json"
    if not mf.is_file():
        return
    m = json.loads(mf.read_bytes())
    m["producer"] = PRODUCER
    m["outputs"] = {f.relative_to(stage).as_posix(): sha256_file(f) for f in _entries(stage)
                    if f.is_file() and not f.is_symlink() and f != mf}
    mf.write_text(json_text(m))


def _kill_point(name):
    """Test hook: ``SHAPEPRIOR_TEST_KILL_AT=name[:SIGNAL]`` sends this process
    SIGKILL (or the named signal, e.g. ``SIGTERM``) at the point ``name``."""
    spec = os.environ.get("SHAPEPRIOR_TEST_KILL_AT", "")
    point, _, sig = spec.partition(":")
    if point == name:
        import signal

        os.kill(os.getpid(), getattr(signal, sig or "SIGKILL"))


def json_text(obj) -> str:
    """``obj`` as standard JSON (RFC 8259, indented): numpy scalars and arrays
    as numbers and lists, paths as strings, and a non-finite float (an
    infinite distance to an empty label, a NaN) as null, never as the
    ``Infinity``/``NaN`` that JavaScript, jq and strict parsers refuse."""
    return json.dumps(_finite(obj), indent=1, default=_json_default, allow_nan=False)


def _finite(o):
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, np.ndarray):
        return _finite(o.tolist())
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    return o


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def manifest(command, parameters, seed, inputs, input_paths=None, digests=None):
    """Reproducibility record: parameters, versions, input hashes, seed.

    ``inputs`` maps a label to a file path (hashed here, as an image path is:
    :func:`shapeprior.io.image_sha256`, or taken from
    ``digests``, a :class:`~shapeprior._provenance.FileDigests` that hashed
    them ahead); ``input_paths`` optionally maps the same labels to the path
    text to record (e.g. relative or de-identified). No header content of
    any input is recorded.
    """
    shown = input_paths or {}
    base = sha256_file if digests is None else digests.sha256

    def digest(path):      # a detached header or a NIfTI pair: all its files
        return image_sha256(path, base)
    return {
        "producer": PRODUCER,
        "command": command,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "parameters": parameters,
        "seed": seed,
        "inputs": {k: {"path": shown.get(k, show_path(v)), "sha256": digest(v)}
                   for k, v in inputs.items()},
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def write_text_atomic(path, text, own=None):
    """Write a small text file next to its target, then rename it into place.

    An existing file is replaced only when ``own(path)`` finds it ours."""
    p = Path(path)
    if p.exists() or p.is_symlink():
        why = own(p) if own is not None else None
        if why is not None:
            raise OutputExistsError(f"{show_path(p)} exists and {why}; shapeprior never "
                                    "replaces it")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
        raise
