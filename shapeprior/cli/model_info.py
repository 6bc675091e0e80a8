"""``shapeprior model-info``: what a model file holds."""

from __future__ import annotations

from .._outputs import json_text
from ._common import Parser


def main(argv):
    """Describe a model file: organ, shapes, vertices, labels, modes, appearance, provenance."""
    ap = Parser(
        prog="shapeprior model-info",
        description="Describe a model file from build-model: organ and side, labels, training "
                    "shapes, vertices, PCA modes and their variance, learned dictionary, "
                    "boundary appearance, pose prior and provenance (versions, build "
                    "parameters). Training file names are not shown.")
    ap.add_argument("model", help="model file (.npz)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = ap.parse_args(argv)

    from ..appearance import BACKGROUND_TRAINING_MAX, HU_BELOW, HU_MIN_SHARE
    from ..model import load_model, model_summary

    s = model_summary(load_model(a.model))
    if a.json:
        print(json_text(s))
        return 0
    pca, app, pose, prov = s["pca"], s["appearance"], s["pose"], s["provenance"]
    print(f"organ        {s['organ']} (side: {s['side']}; labels {s['labels']})")
    print(f"shapes       {s['n_shapes']} training shapes x {s['n_vertices']} vertices, "
          f"{s['n_faces']} triangles; {s['coordinates']}")
    cum = pca["cumulative"]
    print(f"PCA          {pca['n_modes']} modes; first modes explain "
          + ", ".join(f"{100 * v:.1f}%" for v in pca["explained_variance"][:5])
          + (f" (cumulative {100 * cum[min(4, len(cum) - 1)]:.1f}%)" if cum else ""))
    d = s["dictionary"]
    print(f"dictionary   {'none (SSC composes from the training shapes)' if d is None else str(d['n_atoms']) + ' learned atoms'}")
    print(f"appearance   {'none (edge search in an intensity window)' if app is None else 'profiles of ' + str(app['profile_samples']) + ' samples every ' + format(app['step_mm'], 'g') + ' mm, ' + app['normalisation'] + ' normalisation, ' + str(app['n_images']) + ' images'}")
    hu = app and app.get("images_hounsfield_share")
    if hu is not None:
        kind = "in HU (CT)" if hu[0] >= HU_MIN_SHARE else "not in HU (MR)" \
            if hu[1] < HU_MIN_SHARE else "of both kinds"
        lo, hi = f"{100 * hu[0]:.2g}", f"{100 * hu[1]:.2g}"
        share = f"{lo} %" if lo == hi else f"{lo}-{hi} %"
        where = "in every image" if lo == hi else "per image"
        print(f"             learned on images {kind}: {share} of the voxels below "
              f"{HU_BELOW:g} HU {where}")
    bg = app and app.get("training_background_share_max")
    if bg is not None:
        rule = "on" if bg <= BACKGROUND_TRAINING_MAX else "off (an organ in the air)"
        print(f"             at most {100 * bg:.2g} % of a training surface inside the air "
              f"around the body: the background rule is {rule}")
    vc = s.get("voxel_classifier")
    print("voxels       " + ("the voxelised surface is the label" if vc is None else
                             f"{vc['n_trees']} boosted trees decide the voxels next to the "
                             f"surface (learned from {vc['n_cases']} images, "
                             f"{vc['n_voxels']} voxels)"))
    so = s.get("surface_offset")
    print("surface      " + ("no calibrated offset (segment moves nothing)" if so is None else
                             f"final surface moved {so['mm']:+g} mm outward: training surfaces "
                             f"then cover their labels with Dice {so['dice_at_offset']:.3f} "
                             f"(vs {so['dice_at_0']:.3f}; {so['n_shapes']} shapes)"))
    if pose is not None:
        rng = pose["scale_range"]
        print(f"pose         scale {pose['scale']:.3f}"
              + (f" (training range {rng[0]:.2f}-{rng[1]:.2f})" if rng else "")
              + f"; offset from the FOV centre {pose['offset_from_fov_centre_lps_mm']} mm LPS")
    v = prov["versions"] or {}
    bp = prov.get("build_parameters") or {}
    grid = ("" if bp.get("iso_spacing") is None else
            f"; surfaces on a {bp['iso_spacing']:g} mm grid, smoothed by "
            f"{bp.get('smooth_mm', 0):g} mm")
    print(f"provenance   format {prov['format_version']}, built by shapeprior "
          f"{v.get('shapeprior', '?')} from {prov['n_sources']} files "
          f"({prov['n_rejected']} rejected); template: {prov['template']}{grid}")
    lin = s["lineage"]
    print(f"lineage      model version {lin['model_version']}; "
          + "; ".join(f"v{v['model_version']}: {v['n_shapes']} shape"
                      + ("s" if v["n_shapes"] != 1 else "")
                      + (f" added {v['added']}" if v["added"] else "")
                      + (f" by shapeprior {v['shapeprior']}" if v["shapeprior"] else "")
                      for v in lin["versions"])
          + f"; {lin['hashed_shapes']} of {s['n_shapes']} shapes with a content hash")
    return 0
