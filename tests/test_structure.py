"""The package's shape: no reaching into another package's private modules,
no import from a lower layer into a higher one, validated parameters."""

import ast
from pathlib import Path

import pytest

import shapeprior

ROOT = Path(shapeprior.__file__).parent
#: lower numbers are lower layers; a module may import its own layer or lower ones
LAYERS = {"io": 0, "mesh": 0, "align": 0, "ssc": 0, "backend": 0, "_validation": 0,
          "_profile": 0, "_provenance": 0, "_interrupt": 0, "correspond": 1, "appearance": 1,
          "model": 2, "segmentation": 3, "synthetic": 4, "_outputs": 4, "api": 4, "pipeline": 5,
          "cli": 6}


def _modules():
    for f in sorted(ROOT.rglob("*.py")):
        rel = f.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield f, ".".join(parts), f.name == "__init__.py"


def _imports(path, modname, is_pkg):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = modname if is_pkg else modname.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod
            for a in node.names:          # "from . import _x" imports a module
                yield f"{mod}.{a.name}"


def _top(mod):
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "shapeprior" else None


def test_no_import_of_another_packages_private_module():
    bad = []
    for f, mod, is_pkg in _modules():
        own = _top(mod)
        for imp in _imports(f, mod, is_pkg):
            parts = imp.split(".")
            if parts[0] != "shapeprior" or len(parts) < 3:
                continue                      # stdlib, third party, shapeprior.<x>
            target, rest = parts[1], parts[2:]
            if target != own and any(p.startswith("_") for p in rest):
                bad.append(f"{mod} imports {imp}")
    assert not bad, "\n".join(bad)


def test_no_import_from_a_lower_layer_into_a_higher_one():
    bad = []
    for f, mod, is_pkg in _modules():
        own = _top(mod)
        if own not in LAYERS:
            continue
        for imp in _imports(f, mod, is_pkg):
            target = _top(imp)
            if target in LAYERS and LAYERS[target] > LAYERS[own]:
                bad.append(f"{mod} (layer {LAYERS[own]}) imports {imp} "
                           f"(layer {LAYERS[target]})")
    assert not bad, "\n".join(bad)


def test_every_subpackage_has_a_layer():
    subs = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert subs <= set(LAYERS), subs - set(LAYERS)


@pytest.mark.parametrize("kw,name", [
    ({"side": "up"}, "side"), ({"method": "l2"}, "method"), ({"max_iter": 0}, "max_iter"),
    ({"tol_mm": -1.0}, "tol_mm"), ({"seed_mm": (1.0, 2.0)}, "seed_mm"),
    ({"window": (0.5, 0.1)}, "window"), ({"normalisation": "z"}, "normalisation"),
    ({"backend": "fortran"}, "backend"), ({"schedule": ((-1.0, 0.0),)}, "schedule"),
    ({"refine_iter": 1.5}, "refine_iter"), ({"inside_brighter": "yes"}, "inside_brighter"),
])
def test_segment_params_are_validated(kw, name):
    from shapeprior.segmentation import SegmentParams

    with pytest.raises(ValueError, match=f"{name}.*is invalid: expected"):
        SegmentParams(**kw)


@pytest.mark.parametrize("kw,name", [
    ({"labels": (0,)}, "labels"), ({"side": "up"}, "side"), ({"n_vertices": 5}, "n_vertices"),
    ({"iso_spacing": 0.0}, "iso_spacing"), ({"n_jobs": 0}, "n_jobs"),
    ({"normalisation": "z"}, "normalisation"), ({"organ": ""}, "organ"),
])
def test_build_params_are_validated(kw, name):
    from shapeprior.model import BuildParams

    with pytest.raises(ValueError, match=f"{name}.*is invalid: expected"):
        BuildParams(**kw)


def test_defaults_are_valid_and_unchanged():
    from shapeprior.model import BuildParams
    from shapeprior.segmentation import SegmentParams
    from shapeprior.segmentation._fit import DEFAULT_SCHEDULE

    p = SegmentParams()
    assert p.schedule == DEFAULT_SCHEDULE and p.method == "l1" and p.side == "none"
    b = BuildParams(labels=[1, 2])
    # the template and surface resolution: chosen by the organ's size at build time
    assert b.labels == (1, 2) and (b.n_vertices, b.iso_spacing, b.smooth_mm) == (None,) * 3


def test_every_public_name_is_documented():
    """Each class and function a package exports has its own docstring (not
    the dataclass's generated signature); the facade's say Parameters/Returns."""
    import importlib
    import inspect

    bad = []
    for pkg in ("", ".io", ".mesh", ".align", ".ssc", ".correspond", ".appearance", ".model",
                ".segmentation", ".pipeline", ".api"):
        mod = importlib.import_module("shapeprior" + pkg)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            doc = (obj.__doc__ or "").strip()
            if not doc or doc.startswith(f"{obj.__name__}("):
                bad.append(f"shapeprior{pkg}.{name}")
    assert not bad, bad
    from shapeprior import api

    for name in api.__all__:
        doc = getattr(api, name).__doc__
        assert "Returns\n" in doc and ("Parameters\n" in doc or name == "load_model"), name
