"""The public data sets: one data root, and a check against the registry.

The data are never copied into the repository (several licences are
non-commercial or share-alike); ``data_samples/registry.json`` lists every
file with its size and SHA-256 (written by ``data_samples/make_registry.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ._provenance import sha256_file

ENV_VAR = "SHAPEPRIOR_DATA"
_CHECKOUT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """``$SHAPEPRIOR_DATA``, else ``../shared/data`` from the current folder, else
    ``shared/data`` beside the source checkout shapeprior was imported from."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    for cand in (Path.cwd().parent / "shared" / "data", _CHECKOUT.parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return Path.cwd().parent / "shared" / "data"


def registry_path() -> Path:
    """``$SHAPEPRIOR_REGISTRY``, else ``data_samples/registry.json`` of the checkout."""
    env = os.environ.get("SHAPEPRIOR_REGISTRY")
    return Path(env) if env else _CHECKOUT / "data_samples" / "registry.json"


def verify(root=None, registry=None, datasets=None, hashes=False):
    """Check data files against the registry.

    Parameters
    ----------
    root : path, optional
        Data root (default :func:`data_root`).
    registry : path, optional
        Registry file (default :func:`registry_path`).
    datasets : iterable of str, optional
        Data sets to check (default all in the registry).
    hashes : bool
        Compare SHA-256 too (slow on the large sets); sizes are always compared.

    Returns
    -------
    dict
        ``{dataset: {"ok": int, "missing": [...], "changed": [...]}}``.

    Raises
    ------
    FileNotFoundError
        No registry or no data root.
    """
    root = Path(root) if root is not None else data_root()
    reg_file = Path(registry) if registry is not None else registry_path()
    if not reg_file.is_file():
        raise FileNotFoundError(f"no data registry at {reg_file} (set SHAPEPRIOR_REGISTRY)")
    if not root.is_dir():
        raise FileNotFoundError(f"no data under {root} (set {ENV_VAR})")
    reg = json.loads(reg_file.read_bytes())["datasets"]
    names = list(reg) if datasets is None else list(datasets)
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise ValueError(f"datasets={unknown!r} are not in the registry ({sorted(reg)})")
    out = {}
    for name in names:
        res = {"ok": 0, "missing": [], "changed": []}
        for rel, rec in reg[name]["files"].items():
            p = root / name / rel
            if not p.is_file():
                res["missing"].append(rel)
            elif p.stat().st_size != rec["bytes"] or (hashes and sha256_file(p) != rec["sha256"]):
                res["changed"].append(rel)
            else:
                res["ok"] += 1
        out[name] = res
    return out
