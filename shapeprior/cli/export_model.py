"""``shapeprior export-model``: a model's shapes as meshes for ParaView or 3D Slicer."""

from __future__ import annotations

from .._outputs import OutputDir, manifest, show_path
from ..mesh import MESH_FORMATS
from ._common import Parser


def main(argv):
    """Write a model's mean, mode and training meshes for ParaView/Slicer."""
    ap = Parser(
        prog="shapeprior export-model",
        description="Write a model's shapes as meshes (model frame, mm; LPS axes, declared in "
                    "the files): mean.EXT with the per-vertex training sd (point data "
                    "'training_sd_mm'), mode_K_minus|plus.EXT at -/+ --sd standard deviations "
                    "of the first --modes PCA modes, training/shape_NNNN.EXT for every "
                    "training shape in correspondence (same vertex order everywhere), a "
                    "variance plot and summary.json.")
    ap.add_argument("model", help="model file (.npz)")
    ap.add_argument("-o", "--output", required=True, help="output folder (created)")
    ap.add_argument("--modes", type=int, default=3, help="PCA modes to export (default 3)")
    ap.add_argument("--sd", type=float, default=3.0,
                    help="standard deviations for the mode meshes (default 3)")
    ap.add_argument("--format", choices=MESH_FORMATS, default="vtp",
                    help="mesh format (default vtp)")
    ap.add_argument("--no-training", action="store_true",
                    help="do not write the training shapes")
    ap.add_argument("--force", action="store_true",
                    help="replace a previous export (never an input or a foreign folder)")
    a = ap.parse_args(argv)
    if a.modes < 0:
        ap.error(f"--modes={a.modes} must be >= 0")
    if not 0 < a.sd <= 10:
        ap.error(f"--sd={a.sd} must be in (0, 10]")

    from ..mesh import Surface
    from ..model import load_model, mode_shape, model_summary, vertex_sd

    out = OutputDir(a.output, force=a.force, inputs=[a.model])
    try:
        model = load_model(a.model)
        ext = a.format
        faces = model.faces
        Surface(model.mean, faces).write(out.file(f"mean.{ext}"),
                                         point_data={"training_sd_mm": vertex_sd(model)})
        n_modes = min(a.modes, len(model.pca_variances))
        for k in range(n_modes):
            for sign, name in ((-1, "minus"), (1, "plus")):
                v = mode_shape(model, k, sign * a.sd)
                disp = (v - model.mean)
                Surface(v, faces).write(
                    out.file(f"mode_{k + 1}_{name}.{ext}"),
                    point_data={"displacement_mm": (disp ** 2).sum(1) ** 0.5})
        if not a.no_training:
            out.file("training").mkdir()
            for i, s in enumerate(model.shapes):
                Surface(s, faces).write(out.file(f"training/shape_{i:04d}.{ext}"))
        _variance_plot(out.file("variance.png"), model.pca_variances)
        summary = model_summary(model)
        summary["export"] = {"format": ext, "modes": n_modes, "sd": a.sd,
                             "training_shapes": 0 if a.no_training else len(model.shapes)}
        out.write_json("summary.json", summary)
        out.write_json("manifest.json", manifest(
            command="export-model", parameters=vars(a), seed=None, inputs={"model": a.model}))
        out.commit()
    finally:
        out.discard()
    print(f"wrote {show_path(a.output)}: mean, {2 * n_modes} mode meshes"
          + ("" if a.no_training else f", {len(model.shapes)} training meshes")
          + f" (.{ext}), variance.png, summary.json")
    if n_modes < a.modes:
        print(f"note: --modes {a.modes}: the model has {n_modes} PCA modes; all were written")
    return 0


def _variance_plot(path, variances):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    var = np.asarray(variances, dtype=float)
    frac = var / var.sum()
    k = np.arange(1, len(var) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(k, 100 * frac, color="tab:blue", label="per mode")
    ax.plot(k, 100 * np.cumsum(frac), "o-", color="tab:orange", ms=3, label="cumulative")
    ax.set_xlabel("PCA mode")
    ax.set_ylabel("explained variance (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
