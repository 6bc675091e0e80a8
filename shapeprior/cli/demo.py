"""``shapeprior demo``: the whole pipeline on built-in synthetic phantoms (no download)."""

from __future__ import annotations

from pathlib import Path

from .._outputs import OutputDir, show_path
from . import build_model, segment
from ._common import Parser, add_random_state


#: the model build's report, published beside the model
BUILD_REPORT = "model_build_report.json"


def _run(command, work, output, argv):
    """``command(argv)`` with its printed lines naming the files where the demo
    publishes them (``output``), not in its scratch folder ``work``, which is
    removed at the end."""
    import contextlib
    import io

    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            return command(argv)
    finally:
        text = buf.getvalue().replace(str(work / "seg"), str(output)).replace(
            str(work / "model.npz.report" / "report.json"), str(Path(output) / BUILD_REPORT))
        print(text.replace(str(work), str(output)), end="")


def main(argv):
    """Whole pipeline on built-in synthetic phantoms (no download)."""
    ap = Parser(
        prog="shapeprior demo",
        description="Whole pipeline on built-in synthetic phantoms (no download): write "
                    "phantom image/label pairs, build a small model with appearance, and "
                    "segment a held-out phantom that has a bright leak next to the organ.")
    ap.add_argument("-o", "--output", required=True, help="output folder")
    ap.add_argument("--cases", type=int, default=12, help="training phantoms (default 12)")
    add_random_state(ap)
    ap.add_argument("--force", action="store_true",
                    help="replace a previous demo output (never a foreign folder)")
    a = ap.parse_args(argv)
    if a.cases < 4:
        ap.error(f"--cases={a.cases} must be >= 4")
    import shutil
    import tempfile

    from ..synthetic import write_phantom_cases

    out = OutputDir(a.output, force=a.force)        # checked before the slow stages
    work = Path(tempfile.mkdtemp(prefix="shapeprior-demo-"))
    try:
        images, labels = write_phantom_cases(work / "phantoms", a.cases + 1, a.seed,
                                             with_leak=(a.cases,))
        test = f"phantom_{a.cases:03d}.nii.gz"
        (work / "train_labels").mkdir()
        for f in sorted(labels.iterdir()):
            if f.name != test:
                shutil.copy(f, work / "train_labels" / f.name)
        print(f"[1/2] building a model from {a.cases} synthetic image/label pairs")
        rc = _run(build_model.main, work, a.output, [
            str(work / "train_labels"), "-o", str(work / "model.npz"), "--images", str(images),
            "--vertices", "642", "--iso-spacing", "0.75", "--smooth", "0.75",
            "--organ", "phantom", "--quiet", "--random-state", str(a.seed)])
        if rc:
            return rc
        print("[2/2] segmenting a held-out phantom with a bright leak beside the organ")
        rc = _run(segment.main, work, a.output, [
            str(images / test), "-o", str(work / "seg"), "--model", str(work / "model.npz"),
            "--reference", str(labels / test)])
        if rc == 0:
            for f in sorted((work / "seg").iterdir()):
                shutil.copy(f, out.file(f.name))
            shutil.copy(work / "model.npz", out.file("model.npz"))
            shutil.copy(work / "model.npz.report" / "report.json", out.file(BUILD_REPORT))
            out.commit()
            print(f"published {show_path(a.output)}")
        return rc
    finally:
        out.discard()
        shutil.rmtree(work, ignore_errors=True)
