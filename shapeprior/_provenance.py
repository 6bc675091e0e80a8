"""Provenance helpers: content hashes and the versions of what ran."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor


def sha256_file(path, chunk=1 << 20, stop=None):
    """The hex sha256 of a file; with ``stop`` (a :class:`threading.Event`) None
    once it is set, checked before each ``chunk`` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            if stop is not None and stop.is_set():
                return None
            h.update(block)
    return h.hexdigest()


class FileDigests:
    """sha256 of files, started on a background thread while other work runs.

    A run's manifest hashes its inputs; a whole CT's ``.nii.gz`` takes about
    50 ms to hash, which overlaps for free with reading it (ISA-L and
    hashlib both release the GIL). Only regular files are hashed ahead (a
    FIFO or device given as input is never opened here); :meth:`sha256` of
    any other path hashes it when asked, as :func:`sha256_file` does.

    Parameters
    ----------
    paths : iterable of path-like or None
        Files to hash ahead (``None`` entries are skipped).
    """

    def __init__(self, paths=()):
        keys = dict.fromkeys(os.path.realpath(p) for p in paths if p is not None)
        todo = [k for k in keys if _regular_file(k)]
        self._stop = threading.Event()
        self._futures = {}
        if todo:
            pool = ThreadPoolExecutor(1, thread_name_prefix="shapeprior-sha256")
            self._futures = {k: pool.submit(sha256_file, k, stop=self._stop) for k in todo}
            pool.shutdown(wait=False)

    def sha256(self, path) -> str:
        """The hex digest of ``path`` (hashed ahead when it was listed)."""
        f = self._futures.get(os.path.realpath(path))
        got = f.result() if f is not None and not self._stop.is_set() else None
        return got if got is not None else sha256_file(path)

    def cancel(self):
        """Stop hashing (a failed run needs no hash): the file being hashed is
        left at its next megabyte, so a huge input given by mistake does not
        keep the process from exiting."""
        self._stop.set()
        for f in self._futures.values():
            f.cancel()


def _regular_file(path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def package_versions():
    from importlib import metadata

    out = {}
    for name in ("shapeprior", "numpy", "scipy", "numba", "SimpleITK", "nibabel",
                 "scikit-image", "meshio", "cupy-cuda12x", "cupy-cuda13x"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
