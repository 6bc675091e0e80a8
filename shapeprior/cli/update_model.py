"""``shapeprior update-model``: add confirmed label maps to a model without a rebuild,
or rank candidate label maps by how much each would add."""

from __future__ import annotations

from .._outputs import json_text
from ._common import (Parser, add_case_folder_options, add_label_map_options,
                      note_skipped_case_folders)
from ._deidentify import add_deidentify, deidentified, named_shapes

#: ``shapeprior.model.RANKING_CRITERIA`` (default first), written out so that the
#: command's help does not import the model package
RANKING_CRITERIA = ("coverage", "novelty", "representative")

#: what ``gain_mm`` measures under each criterion
GAIN_MEANING = {
    "coverage": "gain_mm: RMS per vertex of the new variation the candidate brings (summed "
                "over all candidates it explains) beyond the model and the candidates ranked "
                "above it",
    "novelty": "gain_mm: RMS per vertex of the new variation the candidate brings (its own) "
               "beyond the model and the candidates ranked above it",
    "representative": "gain_mm: RMS vertex distance to the nearest shape of the model or of "
                      "the candidates ranked above it",
}


def _inputs(paths, limit, mask_name=None, deidentify=False):
    """``[(file, case name, root)]`` from files and folders of label maps (a
    folder's named with the folder given: case_00001/segmentation, not
    segmentation; the root: where its image is looked for from); with
    ``mask_name``, the file of that name in each case folder."""
    from ..model import label_map_inputs

    skipped = []
    out = label_map_inputs(paths, prefix_folders=True, mask_name=mask_name, skipped=skipped)
    note_skipped_case_folders(skipped, mask_name, deidentify)
    return out[:limit] if limit else out


def main(argv):
    """Add label maps to a model (online update), or rank candidates (--rank-only)."""
    ap = Parser(
        prog="shapeprior update-model",
        description="Add confirmed label maps to a shape model without rebuilding it: each "
                    "is put in correspondence with the model, aligned into its frame and "
                    "appended; mean, PCA, learned dictionary, pose prior (and appearance, "
                    "with --images) are updated from running statistics. The old shapes are "
                    "kept bit for bit, the input model is never modified, duplicates (same "
                    "content hash) are skipped, and a bad label map is refused with its "
                    "reason while the others are added. With --rank-only, nothing is "
                    "written: the candidates are listed, most informative first.")
    ap.add_argument("model", help="model file (.npz) from build-model or update-model")
    ap.add_argument("labels", nargs="+", help="label map files or folders (as build-model)")
    ap.add_argument("-o", "--output", help="new model file to write (.npz)")
    ap.add_argument("--rank-only", action="store_true",
                    help="write nothing: order the candidates by how much each would add "
                         "(what the model cannot yet express)")
    ap.add_argument("--criterion", choices=RANKING_CRITERIA, default=None,
                    help="with --rank-only: first the candidates whose new variation the "
                         "most candidates share (coverage), the most unusual ones "
                         "(novelty), or those that make the model's shapes the closest "
                         f"sample of all shapes known (representative); default "
                         f"{RANKING_CRITERIA[0]}")
    ap.add_argument("--labels", dest="label_values", default=None,
                    help="label values of the organ in the new maps (default: the model's)")
    ap.add_argument("--organ", default=None, help="must match the model's organ")
    ap.add_argument("--split-sides", action="store_true", default=None,
                    help="must match how the model was built (default: the model's setting)")
    ap.add_argument("--images", default=None,
                    help="training images of the new label maps (as build-model): update the "
                         "model's boundary appearance too")
    ap.add_argument("--json", action="store_true", help="with --rank-only: print JSON")
    ap.add_argument("--force", action="store_true",
                    help="replace a previous shapeprior model file (never the input model, "
                         "an input or a foreign file)")
    add_case_folder_options(ap)
    add_label_map_options(ap)
    add_deidentify(ap)
    a = ap.parse_args(argv)

    from pathlib import Path

    from ..model import load_model, params_from_model, training_images
    from ._common import parse_labels, refuse_unused

    if a.rank_only == bool(a.output):
        raise ValueError("give -o NEW_MODEL to add the label maps, or --rank-only to rank "
                         "them (not both)")
    refuse_unused(
        (a.criterion is not None and not a.rank_only, "--criterion has no effect without "
                                                      "--rank-only (it orders the ranking)"),
        (a.json and not a.rank_only, "--json has no effect without --rank-only"),
        (a.force and a.rank_only, "--force has no effect with --rank-only (nothing is written)"),
        ((a.images or a.image_name) and a.rank_only,
         "--images and --image-name have no effect with --rank-only (the ranking reads "
         "the label maps only)"))
    a.criterion = a.criterion or RANKING_CRITERIA[0]
    out = Path(a.output) if a.output else None
    inputs = [a.model, *a.labels, a.images]
    from .._outputs import check_not_input, check_replaceable, own_model_file

    if out is not None:
        check_not_input(out, inputs)
        check_replaceable(out, a.force, own_model_file)          # before the slow stages
    with deidentified(a.deidentify, {**{p: "<labels>" for p in a.labels},
                                     a.images: "<images>", a.model: "<model>",
                                     out: "<output>"}) as deid:
        model = load_model(a.model)
        params = params_from_model(
            model, labels=None if a.label_values is None else parse_labels(a.label_values),
            organ=a.organ, split_sides=a.split_sides, n_jobs=a.jobs, images_dir=a.images,
            image_name=a.image_name,
            allow_no_orientation=a.allow_no_orientation or None)
        items = deid.start(_inputs(a.labels, a.limit, a.mask_name, a.deidentify))
        if not items:
            raise ValueError("no label maps given")
        if a.rank_only:
            return _rank(model, items, params, a, deid)
        # the files read, a detached header's data files with them, wherever they lie
        files = [f for f, _, _ in items]
        if a.images or a.image_name:
            files += training_images(files, [r for _, _, r in items], a.images, a.image_name)
        check_not_input(out, files)
        return _update(model, items, params, a, out, [*inputs, *files], deid)


def _rank(model, items, params, a, deid):
    import numpy as np

    from ..model import correspond_to_model, new_label_maps, rank_candidates

    todo, skipped = new_label_maps(model, [f for f, _, _ in items], [n for _, n, _ in items])
    accepted, rejected = correspond_to_model(model, todo, params, not a.quiet)
    skipped, rejected = deid.data(skipped), deid.data(rejected)
    rows = []
    if accepted:
        order, novelty, gain = rank_candidates(model, np.stack([c["verts"] for c in accepted]),
                                               a.criterion)
        rows = [{"rank": r + 1, "candidate": accepted[i]["source"],
                 "side": accepted[i]["side"], "gain_mm": round(float(g), 4),
                 "novelty_mm": round(float(novelty[i]), 4)}
                for r, (i, g) in enumerate(zip(order, gain))]
    if a.json:
        print(json_text({"ranking": rows, "skipped": skipped, "rejected": rejected}))
        return 0
    print("rank  gain_mm  novelty_mm  candidate")
    for r in rows:
        side = "" if r["side"] == "none" else f" ({r['side']})"
        print(f"{r['rank']:4d}  {r['gain_mm']:7.3f}  {r['novelty_mm']:10.3f}  "
              f"{r['candidate']}{side}")
    for s in skipped:
        print(f"skipped   {s['source']}: {s['reason']}")
    for r in rejected:
        print(f"refused   {r['source']}: {r['reason']}")
    print(GAIN_MEANING[a.criterion] + "; novelty_mm: its own residual against the model "
          "alone")
    return 0


def _update(model, items, params, a, out, inputs, deid):
    from .._outputs import OutputDir, manifest, show_path
    from ..model import update_model
    from ._common import publish_model

    side_path = out.with_name(out.name + ".report")
    side = OutputDir(side_path, force=a.force, inputs=inputs)   # checked before the slow stages
    try:
        new, report = update_model(model, [f for f, _, _ in items], params,
                                   progress=not a.quiet, names=[n for _, n, _ in items],
                                   roots=[r for _, _, r in items])
        report = deid.data(report)    # (the model records the new maps by pseudonym)
        named = named_shapes(model) if a.deidentify else 0
        if named:
            report["warnings"] = list(report.get("warnings", [])) + [
                f"the model's {named} earlier shapes keep the names it was built with "
                "(--deidentify renames the new label maps only; build the model with "
                "--deidentify to leave every name out)"]
        publish_model(side, out, new, report, manifest(
            command="update-model", parameters=deid.data(vars(a)), seed=None,
            inputs={"model": a.model, **{n: f for f, n, _ in items}},
            input_paths=None if not a.deidentify else
            {"model": "<model>", **deid.shown(items)}), a.force, inputs)
    finally:
        side.discard()
    for s in report["skipped"]:
        print(f"skipped  {s['source']}: {s['reason']}")
    for r in report["rejected"]:
        print(f"refused  {r['source']}: {r['reason']}")
    for w in report.get("warnings", []):
        print(f"note: {w}")
    print(f"model version {report['model_version']}: {report['n_shapes_before']} -> "
          f"{report['n_shapes']} shapes ({len(report['added'])} added, "
          f"{len(report['skipped'])} skipped, {len(report['rejected'])} refused"
          + ("; appearance updated" if report["appearance_updated"] else "") + ")")
    print(f"wrote {show_path(out)}")
    return 0
