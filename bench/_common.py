"""Shared by the benchmarks: the data root, the machine, timing, JSON results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

from shapeprior.data import data_root  # noqa: F401  (re-exported for the benchmarks)

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What ran the benchmark: CPU, cores visible to this process, Python."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {"cpu": platform.processor() or platform.machine(), "cores": cores,
            "python": platform.python_version(), "platform": platform.platform()}


def best_of(fn, repeat=5):
    """Minimum wall time (s) of ``repeat`` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def write_json(path, obj) -> Path:
    """Write a result file atomically (temporary file + rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, p)
    return p


def previous_results(path):
    """The committed version of a result file (``git show HEAD:...``), else the
    file on disk: ``(results, where)``, or ``(None, None)`` when there is none."""
    repo = RESULTS.parent.parent
    try:
        rel = Path(path).resolve().relative_to(repo)
        txt = subprocess.run(["git", "show", f"HEAD:{rel.as_posix()}"], cwd=repo,
                             capture_output=True, text=True, check=True).stdout
        return json.loads(txt), f"git HEAD:{rel.as_posix()}"
    except Exception:  # noqa: BLE001 - not a git checkout, not committed, outside the repo
        p = Path(path)
        if p.exists():
            return json.loads(p.read_text()), str(p)
    return None, None


def hippocampus_validation_split():
    """``(MSD folder, model label maps, validation label maps)`` of the hippocampus
    validation benchmarks: the model from the cases whose number % 5 is not 0 or 1,
    the validation cases % 5 == 1 (the test split, % 5 == 0, is never used); None
    (after saying SKIP) when the data is absent."""
    from shapeprior.model import find_label_maps

    root = data_root() / "msd_hippocampus"
    if not root.is_dir():
        print(f"SKIP: MSD hippocampus not found under {root} (set SHAPEPRIOR_DATA)")
        return None
    return (root, hippocampus_model_files("validation", root),
            [f for f in find_label_maps(root / "labels") if case_number(f) % 5 == 1])


def cached_hippocampus_model(path, train, root):
    """The hippocampus model of bench_hippocampus*.py (642 vertices, learned
    appearance) built from the label maps ``train`` under ``root`` (the MSD
    folder), or loaded from ``path`` where an earlier run cached it."""
    from shapeprior.model import BuildParams, build_model, load_model, save_model

    path = Path(path)
    if path.exists():
        return load_model(path)
    model, _ = build_model(train, BuildParams(
        labels=(1, 2), organ="hippocampus", n_vertices=642, iso_spacing=0.5,
        smooth_mm=0.75, images_dir=str(Path(root) / "images"), n_jobs=2),
        root=Path(root) / "labels", progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, path)
    return model


def case_number(f):
    """The case number in a file name (``hippocampus_015.nii.gz`` -> 15)."""
    import re

    return int(re.findall(r"\d+", Path(f).name)[0])


def hippocampus_model_files(split, root):
    """The MSD label maps under ``root`` a split's hippocampus model is built from:
    'test', every case whose number is not a multiple of 5 (the test cases are);
    'validation', neither a multiple of 5 nor 1 more (the validation cases are 1 more)."""
    from shapeprior.model import find_label_maps

    held = (0,) if split == "test" else (0, 1)
    return [f for f in find_label_maps(Path(root) / "labels") if case_number(f) % 5 not in held]


def hippocampus_split_model(split, root):
    """The hippocampus model of a split (:func:`hippocampus_model_files`), built or
    loaded by :func:`cached_hippocampus_model` from the MSD folder ``root``: 'test'
    is the model of ``bench_hippocampus.py``."""
    name = "hippocampus_642.npz" if split == "test" else "hippocampus_val_642.npz"
    return cached_hippocampus_model(Path(__file__).resolve().parent / "cache" / name,
                                    hippocampus_model_files(split, root), root)


def cached_kidney_heldout():
    """``(model path, model, held-out shapes (69, 2562, 3))`` from the cache of
    ``bench_robustness.py``, or None (after saying so) when it has not run."""
    import sys

    import numpy as np

    from shapeprior.model import load_model

    cache = Path(__file__).resolve().parent / "cache"
    mpath, hpath = cache / "kidney_model.npz", cache / "heldout.npz"
    if not mpath.exists() or not hpath.exists():
        print(f"needs {mpath} and {hpath} (run bench_robustness.py first)", file=sys.stderr)
        return None
    return mpath, load_model(mpath), np.load(hpath)["shapes"]


def unpack_rev(rev, dest):
    """The tracked files of the repository at ``rev`` in ``dest`` (``git
    archive``): a baseline's code, for a comparison in the same run.

    ``dest`` on ``PYTHONPATH`` imports that revision's kernels too: its
    ``kernels`` folder is linked as ``dest/shapeprior_kernels``, found before the
    installed (editable) package of this checkout's kernels, which would
    otherwise give the baseline this checkout's faster kernels."""
    repo = Path(__file__).resolve().parents[1]
    arch = subprocess.run(["git", "-C", str(repo), "archive", rev], check=True,
                          capture_output=True).stdout
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=arch, check=True)
    if (dest / "kernels").is_dir() and not (dest / "shapeprior_kernels").exists():
        (dest / "shapeprior_kernels").symlink_to("kernels", target_is_directory=True)
    return dest


#: the first line of code run by ``python -c`` in a child with another tree on
#: ``PYTHONPATH``: ``python -c`` puts the working folder first on ``sys.path``, and a
#: benchmark run from the repository's root would import this checkout's package as
#: the baseline's
CHILD_PATH = "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]\n"


def run_cli(tree, *args):
    """``shapeprior ARGS`` in a subprocess with the package of ``tree`` (this
    checkout, or a baseline from :func:`unpack_rev`): ``(wall seconds, stdout)``.
    Exit codes 0 and 3 (a result that is not trustworthy) are results; any
    other raises, with the end of stderr."""
    import sys

    code = CHILD_PATH + "from shapeprior.cli import main; sys.exit(main(sys.argv[1:]))"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, *[str(a) for a in args]],
                       env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin",
                            "HOME": str(Path.home())}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 3):
        raise RuntimeError(f"{tree}: shapeprior {args[0]} exited {p.returncode}: "
                           f"{p.stderr[-500:]}")
    return wall, p.stdout


#: a child's read of one image (``read_image_in``)
_READ_IMAGE = CHILD_PATH + """
import json
import numpy as np
import shapeprior
assert shapeprior.__file__.startswith(sys.argv[3]), shapeprior.__file__
from shapeprior.io import read_image
try:
    v, i = read_image(sys.argv[1])
    np.save(sys.argv[2], np.asarray(v.array))
    print(json.dumps({"n_slices": i.get("n_slices"), "origin": list(map(float, v.origin))}))
except Exception as e:
    print(json.dumps({"refused": str(e)[:200]}))
"""


def read_image_in(tree, path, npy):
    """``read_image(path)`` by the package of ``tree`` (this checkout, or a baseline
    from :func:`unpack_rev`) in a child process: ``{"n_slices", "origin"}`` with the
    array saved to ``npy``, or ``{"refused": reason}``."""
    import sys

    p = subprocess.run([sys.executable, "-c", _READ_IMAGE, str(path), str(npy),
                        str(Path(tree).resolve())],
                       env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def baseline_cli(doc, out, argv=None):
    """Parse a benchmark's ``--baseline REV`` (default HEAD: the commit before a change
    not yet committed) and ``--out`` (default ``out``): ``(args, the repository's
    root, the baseline's short hash)``."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--baseline", default="HEAD", help="revision read in the same run")
    ap.add_argument("--out", default=str(out))
    args = ap.parse_args(argv)
    here = Path(__file__).resolve().parents[1]
    rev = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", args.baseline],
                         capture_output=True, text=True, check=True).stdout.strip()
    return args, here, rev
