"""The installed package must contain every module the source tree has."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_declared_in_pyproject():
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = set(cfg["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "shapeprior").rglob("__init__.py")}
    assert on_disk <= declared, f"missing from pyproject packages: {sorted(on_disk - declared)}"
    assert "shapeprior_kernels" in declared


def test_installed_package_imports_every_subpackage():
    import importlib

    for name in ("align", "ssc", "io", "mesh", "correspond", "model", "segmentation", "cli",
                 "appearance", "pipeline", "api",
                 "synthetic"):
        importlib.import_module(f"shapeprior.{name}")
    importlib.import_module("shapeprior_kernels")
