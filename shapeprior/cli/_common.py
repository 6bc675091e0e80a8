"""Helpers shared by the commands: option parsing, case lines, exit codes."""

from __future__ import annotations

import argparse
import sys

from .._outputs import one_line, show_path


class Parser(argparse.ArgumentParser):
    """A command's option parser whose error is one line on stderr,
    ``PROG: error: MESSAGE (see 'PROG --help')``, exit 2: argparse's usage block
    (20 lines for ``segment``) before it is left out."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see '{self.prog} --help')\n")

    def parse_args(self, args=None, namespace=None):
        """The options; with ``--deidentify`` the readers' messages name nothing they
        find below the paths given (:func:`~shapeprior.io.names_withheld`) for the
        rest of the command, which :func:`shapeprior.cli.main` runs in a context
        of its own."""
        a = super().parse_args(args, namespace)
        if getattr(a, "deidentify", False):
            from ..io import withhold_names

            withhold_names()
        return a


def numbers(text, name, cast=float, n=None, skip_empty=False):
    """Comma-separated values of an option; one clear error naming it."""
    what = "numbers" if cast is float else "integers, e.g. 1,2"
    try:
        v = tuple(cast(t) for t in text.split(",") if t.strip() or not skip_empty)
    except ValueError:
        v = ()
    if not v or (n is not None and len(v) != n):
        count = f"{n} " if n is not None else ""
        raise ValueError(f"{name}={text!r} must be {count}comma-separated {what}")
    return v


def floats(text, n, name):
    return numbers(text, name, float, n)


#: the segmentation parameters as segment and refine name them on the command line
PARAM_OPTIONS = {"seed_mm": "--seed", "seed_space": "--seed-space", "window": "--window",
                 "n_hypotheses": "--hypotheses", "surface_offset_mm": "--surface-offset",
                 "method": "--method", "side": "--side", "prior": "--prior",
                 "normalisation": "--normalisation", "backend": "--backend",
                 "placement": "--placement"}


def segment_params(**kwargs):
    """``SegmentParams(**kwargs)``, its error naming the command-line option
    (``--surface-offset -100.0 is invalid``, not the parameter
    ``surface_offset_mm``)."""
    from ..segmentation import SegmentParams

    try:
        return SegmentParams(**kwargs)
    except ValueError as exc:
        raise ValueError(option_words(str(exc))) from None


def option_words(msg):
    """``msg`` with a leading ``parameter=`` of :data:`PARAM_OPTIONS` written as
    its option."""
    name, eq, rest = msg.partition("=")
    return f"{PARAM_OPTIONS[name]} {rest}" if eq and name in PARAM_OPTIONS else msg


def refuse_unused(*checks):
    """Options given where they change nothing are refused, not ignored: the
    first ``(given, message)`` whose ``given`` holds raises ValueError(message)."""
    for given, message in checks:
        if given:
            raise ValueError(message)


def join_negative_values(argv, options):
    """``--seed -64.4,-12,8`` -> ``--seed=-64.4,-12,8``: argparse would take a
    value starting with '-' for an option."""
    import re

    out, i = [], 0
    argv = list(argv)
    while i < len(argv):
        if argv[i] in options and i + 1 < len(argv) and \
                re.fullmatch(r"-[\d.][\d.eE+-]*(,[-+]?[\d.][\d.eE+-]*)*", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def print_case(name, rep):
    line = (f"{name}: {rep['status']} (quality {rep['quality']:.2f}), {rep['volume_ml']:.1f} ml, {rep['iterations']} iterations, "
            f"{rep['time_s']:.2f} s, prior overrode up to "
            f"{100 * rep['overridden_fraction_max']:.1f}% of vertices "
            f"({100 * rep['overridden_fraction']:.1f}% at the end)")
    if "reference" in rep:
        r = rep["reference"]
        line += ("; the reference holds no organ" if r.get("empty") else
                 f"; Dice {r['dice']:.3f}, mean surface distance {r['assd_mm']:.2f} mm")
    print(line)
    if rep.get("side") == "both":       # segment --side both: each side's result
        print("  both sides: " + ", ".join(
            f"{s} {b['status']} ({b['volume_ml']:.1f} ml"
            + ("" if b["in_label"] else ", left out of the label")
            + (f", Dice {b['reference']['dice']:.3f}" if "reference" in b else "") + ")"
            for s, b in rep["sides"].items()))
    print_reasons(rep)
    for w in rep["warnings"]:
        print(f"  note: {w}")


def print_reasons(rep):
    """A report's reasons, each led by its own level (``reason_levels``): a failed
    result's suspect-level reasons are shown as suspect, not as what failed it."""
    levels = rep.get("reason_levels") or []
    for i, r in enumerate(rep["reasons"]):
        print(f"  {levels[i] if i < len(levels) else rep['status']}: {r}")


def finish_case(name, rep, output, strict):
    """After one case: say where the outputs are; a result that is not
    trustworthy gets one stderr line and exit code 3."""
    print(f"wrote {show_path(output)}")
    code = status_code([rep["status"]], strict)
    if code:
        print(f"shapeprior: {name}: {rep['status']}: {'; '.join(rep['reasons'])}",
              file=sys.stderr)
    return code


def status_code(statuses, strict):
    """Exit code for case statuses: 3 when a result is not trustworthy
    ('failed', or 'suspect' with --strict), else 0."""
    bad = {"failed", "suspect"} if strict else {"failed"}
    return 3 if any(s in bad for s in statuses) else 0


def parse_labels(text, name="--labels"):
    vals = numbers(text, name, int, skip_empty=True)
    if any(v <= 0 for v in vals):
        raise ValueError(f"{name}={text!r} must list label values > 0")
    return vals


def add_reference_structure(ap):
    """``--reference-structure``: what a reference that is an RT Structure Set is
    scored on (:func:`organ_selection`)."""
    ap.add_argument("--reference-structure", action="append", default=None, metavar="NAME",
                    help="a reference that is an RT Structure Set (RTSTRUCT .dcm, its contours "
                         "filled on the scan's grid) is scored on this structure: its ROI "
                         "name (case, spaces, underscores and hyphens aside) or #N for ROI "
                         "number N; alternatives joined by | take the first the set holds "
                         "(Kidney_L|L_Kidney); repeat for several (both kidneys with --side "
                         "both). Default: its one structure with contours")


#: each mask whose organ a command chooses by structure or by label: the option
#: that gives it, how the messages name it, and the attributes that hold it
_SELECTIONS = {"reference": ("--reference", "the reference", ("reference", "reference_name")),
               "init": ("--init-mask", "the --init-mask", ("init_mask",))}


def organ_selection(a, model, kind="reference"):
    """What of a mask is the organ: the ``--KIND-structure`` names (an RT
    Structure Set's), the ``--KIND-labels`` (a label map's), or the labels the
    model was built from. ``kind``: 'reference' (what each reference is scored
    on) or 'init' (segment's ``--init-mask``)."""
    from ..model import organ_labels

    option, noun, attrs = _SELECTIONS[kind]
    given = getattr(a, f"{kind}_structure") or ()
    labels = getattr(a, f"{kind}_labels")
    refuse_unused(
        (given and not any(getattr(a, k, None) for k in attrs),
         f"--{kind}-structure has no effect without {option}"),
        (given and labels is not None,
         f"--{kind}-labels picks labels of a label map, --{kind}-structure structures of an "
         f"RT Structure Set: give the one that fits {noun}"),
        (any(not str(n).strip() for n in given), f"--{kind}-structure is empty: give a "
                                                 "structure's ROI name or #N"))
    if given:
        return tuple(str(n).strip() for n in given)
    if labels is not None:
        return parse_labels(labels, f"--{kind}-labels")
    return organ_labels(model)


def check_selection_kinds(a, masks, kind="reference"):
    """``--KIND-labels`` with a mask that is an RT Structure Set is refused: its
    structures are chosen by name (``--KIND-structure``; :func:`organ_selection`)."""
    if getattr(a, f"{kind}_labels") is None:
        return
    from ..io import display_name, is_rtstruct_file

    for r in masks:
        if r is not None and is_rtstruct_file(r):
            raise ValueError(f"{display_name(r)} is an RT Structure Set: --{kind}-labels "
                             "picks labels of a label map; choose its structures with "
                             f"--{kind}-structure")


def _whole(text, least):
    try:
        n = int(text)
    except ValueError:
        n = least - 1
    if n < least:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {least}")
    return n


def _non_negative(text):
    return _whole(text, 0)


def _positive(text):
    return _whole(text, 1)


def add_batch_options(ap):
    """``--workers`` and ``--scheduler``: where the cases of a folder run."""
    ap.add_argument("--workers", type=_non_negative, default=0,
                    help="folder of cases: run on a local dask cluster with N processes, "
                         "each case on one core (default 0: sequential, all cores per case)")
    ap.add_argument("--scheduler", default=None,
                    help="folder of cases: address of an existing dask scheduler")


def add_random_state(ap, dest="seed"):
    """``--random-state``/``--seed``: the seed of the random number generator."""
    ap.add_argument("--random-state", "--seed", dest=dest, type=_non_negative, default=0,
                    help="seed of the random number generator, a whole number >= 0 "
                         "(default 0)")


def add_mesh_format(ap):
    """``--mesh-format`` of the commands that write a mesh."""
    from ..mesh import MESH_FORMATS

    ap.add_argument("--mesh-format", default="vtk", choices=MESH_FORMATS,
                    help="vtk (legacy VTK 4.2 PolyData, the default), vtp (VTK XML), ply, stl "
                         "or obj; LPS mm, declared in vtk/vtp files")


def add_prior(ap):
    """``--prior auto|shapes|dictionary``: what SSC composes from."""
    ap.add_argument("--prior", choices=("auto", "shapes", "dictionary"), default="auto",
                    help="SSC composes from the model's training shapes or its learned "
                         "dictionary (build-model --atoms); auto (default): the dictionary from "
                         "1,000 shapes on (measured in bench/results/online_*.json), else the "
                         "shapes")


def add_label_map_options(ap):
    """The options shared by the commands that read training label maps
    (``build-model``, ``update-model``): ``--limit``, ``--jobs``, ``--quiet``,
    ``--allow-no-orientation``."""
    ap.add_argument("--limit", type=_positive, default=None,
                    help="use only the first N label maps (N >= 1)")
    ap.add_argument("--jobs", type=_positive, default=1, help="worker processes (default 1)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    add_allow_no_orientation(ap, "label maps")


def add_case_folder_options(ap):
    """``--mask-name`` and ``--image-name`` of the commands that learn from label
    maps (``build-model``, ``update-model``): a data set of case folders."""
    ap.add_argument("--mask-name", default=None, metavar="NAME",
                    help="each folder given holds one folder per case, and each case's label "
                         "map is NAME in it or in its segmentations/ (TotalSegmentator's data "
                         "set: --mask-name kidney_left.nii.gz; KiTS19's: segmentation.nii.gz; "
                         "or a pattern, each folder's one match); a case is named by its "
                         "folder, and folders without NAME are skipped with a note")
    ap.add_argument("--image-name", default=None, metavar="NAME",
                    help="each label map's image is NAME in its case folder (the first folder "
                         "of its path below the folder given; TotalSegmentator's: ct.nii.gz, "
                         "KiTS19's: imaging.nii.gz), or with --images FOLDER, in "
                         "FOLDER/<case folder>/; learns appearance as --images does")


def note_skipped_case_folders(skipped, mask_name, deidentify):
    """The notes of the case folders skipped (``[(folder, why)]``,
    :func:`~shapeprior.model.label_map_inputs`): those that hold no ``--mask-name``
    file, and those where its pattern matches several entries (counted, not
    named, with ``--deidentify``), on stderr: ``update-model --rank-only --json``
    keeps stdout for its JSON."""
    def names(folders):
        return "" if deidentify else ": " + ", ".join(d.name for d in folders[:5]) + (
            " ..." if len(folders) > 5 else "")

    none = [d for d, why in skipped if why is None]
    many = [d for d, why in skipped if why is not None]
    if none:
        hold = "s hold" if len(none) > 1 else " holds"
        print(f"note: {len(none)} case folder{hold} no {mask_name} (in it or its "
              f"segmentations/), skipped{names(none)}", file=sys.stderr)
    if many:
        hold = "s hold" if len(many) > 1 else " holds"
        print(f"note: {len(many)} case folder{hold} several entries matching {mask_name} "
              f"(which is the organ's is not guessed), skipped{names(many)}", file=sys.stderr)


def add_allow_no_orientation(ap, what="images"):
    """``--allow-no-orientation``: read files that record no orientation."""
    ap.add_argument("--allow-no-orientation", action="store_true",
                    help=f"accept {what} that record no orientation (NIfTI/Analyze, NRRD, "
                         "TIFF, VTK, ...), placed by their voxel sizes alone")


def publish_model(side, out, model, report, record, force, inputs):
    """Stage ``report.json`` and ``manifest.json`` (``record``) in the side folder
    and the model file beside them, rename the model into place at ``out`` (never
    over an input or a foreign file), then commit the side folder."""
    from .._outputs import own_model_file, publish_file
    from ..model import save_model

    side.write_json("report.json", report)
    side.write_json("manifest.json", record)
    staged = side.scratch(out.name)
    save_model(model, staged)
    publish_file(staged, out, force=force, inputs=inputs, own=own_model_file)
    side.commit()


def print_batch(summary, n_cases, root, st):
    """One line per case, then the counts (cases kept from an earlier run
    counted by the result they got) and, with references, Dice and distances
    over the cases compared (``st``: the summary's ``reference`` block, from
    :func:`~shapeprior.pipeline.write_summary`)."""
    from ..segmentation import BOTH

    for r in summary:
        if "error" in r:
            extra = r["error"]
        elif "volume_ml" not in r:
            extra = r.get("reason")
        else:
            extra = f"{r['volume_ml']:.1f} ml"
            if "input_ml" in r:          # a refinement: from the mask's volume
                extra = (f"{r['input_ml']:.1f} -> {extra} (removed {r['removed_ml']:.1f} ml, "
                         f"added {r['added_ml']:.1f} ml)")
            extra += f", quality {r['quality']:.2f}, {r['time_s']:.2f} s"
            if "dice" in r:
                before = f"{r['input_dice']:.3f} -> " if "input_dice" in r else ""
                extra += f", Dice {before}{r['dice']:.3f}" + (
                    f", {r['assd_mm']:.2f} mm" if r.get("assd_mm") is not None else
                    ", no surface to compare")
            sides = [f"{s} {r[s + '_status']}" + (f" Dice {r[s + '_dice']:.3f}"
                                                  if s + "_dice" in r else "")
                     for s in BOTH if s + "_status" in r]
            if sides:
                extra += " (" + ", ".join(sides) + ")"
            if "result" in r:
                extra = f"{r['result']} (kept: inputs unchanged), {extra}"
            if r.get("reasons"):
                extra += "; " + "; ".join(r["reasons"])
        print(f"{r['case']:30s} {r['status']:8s} {extra}")
    errors = sum("error" in r for r in summary)
    result = [r.get("result", r["status"]) for r in summary]
    counts = {k: result.count(k) for k in ("ok", "suspect", "failed", "skipped")}
    kept = sum("result" in r for r in summary)
    print(f"{n_cases} cases: {counts['ok']} ok, {counts['suspect']} suspect, "
          f"{counts['failed']} failed ({errors} with errors), {counts['skipped']} skipped"
          + (f"; {kept} of them kept from an earlier run" if kept else "")
          + f"; summary in {show_path(root / 'summary.json')} and summary.csv")
    if st is not None:
        n_refs = st["n_cases_with_reference"]
        if not st["n_compared"]:
            print(f"reference: {n_refs} of {n_cases} cases have one; none was compared")
        else:
            d, s = st["dice"], st["assd_mm"]
            dist = (f"mean surface distance {s['mean']:.2f} mm, worst {s['worst']:.2f} mm "
                    f"({s['worst_case']})" if "mean" in s else "no surface distance")
            if s["n_without_surface"]:
                dist += f"; {s['n_without_surface']} with an empty label or reference"
            print(f"reference: {st['n_compared']} of {n_cases} cases compared ({n_refs} have "
                  f"one): Dice mean {d['mean']:.3f}, median {d['median']:.3f}, worst "
                  f"{d['worst']:.3f} ({d['worst_case']}); {dist}")
            if "input_dice" in st:
                b = st["input_dice"]
                print(f"the masks as given: Dice mean {b['mean']:.3f}, median {b['median']:.3f}, "
                      f"worst {b['worst']:.3f} ({b['worst_case']})")
