"""Provenance helpers: content hashes and the versions of what ran."""

from __future__ import annotations

import hashlib


def sha256_file(path, chunk=1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


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
