"""Atomic output folders and run manifests.

Everything a command writes goes to a hidden staging folder next to the
target; :meth:`OutputDir.commit` renames it into place in one step, so an
interrupted or failed run leaves nothing partial behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


class OutputExistsError(FileExistsError):
    pass


class OutputDir:
    """Stage files for ``path`` and publish them atomically on :meth:`commit`."""

    def __init__(self, path, force=False):
        self.path = Path(path)
        if self.path.exists() and not force:
            raise OutputExistsError(f"output folder {self.path} exists; use --force to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.force = force
        self.stage = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.stage, 0o777 & ~umask)   # mkdtemp makes it 0700

    def file(self, name) -> Path:
        return self.stage / name

    def write_json(self, name, obj):
        self.file(name).write_text(json.dumps(obj, indent=1, default=_json_default))

    def write_npz(self, name, **arrays):
        np.savez_compressed(self.file(name), **arrays)

    def commit(self):
        if self.path.exists():
            if not self.force:
                raise OutputExistsError(f"output folder {self.path} appeared during the run")
            old = self.path.with_name(f".{self.path.name}.old")
            shutil.rmtree(old, ignore_errors=True)     # left by an interrupted run
            os.replace(self.path, old)
            os.replace(self.stage, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.stage, self.path)

    def discard(self):
        shutil.rmtree(self.stage, ignore_errors=True)

    def __del__(self):  # a run that never committed leaves nothing behind
        if getattr(self, "stage", None) is not None and self.stage.exists():
            shutil.rmtree(self.stage, ignore_errors=True)


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


def sha256_file(path, chunk=1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def package_versions():
    from importlib import metadata

    out = {}
    for name in ("shapeprior", "numpy", "scipy", "numba", "SimpleITK", "scikit-image",
                 "meshio", "cupy-cuda12x", "cupy-cuda13x"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def manifest(command, parameters, seed, inputs):
    """Reproducibility record: parameters, versions, input hashes, seed.

    ``inputs`` maps a label to a file path (hashed here); no header content
    of any input is recorded.
    """
    return {
        "command": command,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "parameters": parameters,
        "seed": seed,
        "inputs": {k: {"path": str(v), "sha256": sha256_file(v)} for k, v in inputs.items()},
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
