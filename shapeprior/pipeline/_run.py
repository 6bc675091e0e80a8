"""One segmentation job: input -> outputs folder (atomic), and case discovery."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .._outputs import OutputDir, manifest
from .._profile import StageClock
from ..io import display_name, image_files, read_image, read_label_map, write_label
from ..mesh import Surface
from ..segment import SegmentParams, dice, refine_mask, segment_volume, surface_distances
from ._qc import qc_png

MESH_FORMATS = ("vtk", "ply", "stl", "obj")


def input_files(p: Path):
    """The files a case reads: the image file (with its .img/.hdr partner), or
    every file of a DICOM folder, in a stable order."""
    if p.is_file():
        return image_files(p)
    return sorted((f for f in p.iterdir() if f.is_file()), key=lambda f: os.fsencode(f.name))


def input_hashes(p: Path, deidentify=False):
    """``({key: path}, {key: shown path})`` of a case's input files for the
    manifest; de-identified keys are indices."""
    files = input_files(Path(p))
    if deidentify:
        keys = [f"input/{i:04d}" for i in range(len(files))]
        return dict(zip(keys, files)), {k: k for k in keys}
    keys = [f"input/{display_name(f)}" for f in files]
    return dict(zip(keys, files)), {}


def run_case(input_path, outdir, model, model_path, params: SegmentParams, *, series=None,
             reference=None, reference_labels=(1,), mesh_format="vtk", force=False,
             dictionary=None, argv=None, clock=None, case_name=None, deidentify=False,
             allow_no_orientation=False, partial_ok=False, init_mask=None, init_labels=(1,)):
    """Segment one case and publish ``outdir`` atomically.

    ``outdir`` may not equal, contain or lie inside the input, the model or
    the reference; ``force`` replaces only a previous shapeprior output.
    ``clock`` (a :class:`~shapeprior._profile.StageClock`) receives the time
    of the stages read, prepare, search, ssc, refine, voxelize and write.
    ``case_name`` is the name written into the report (default: the input's
    file name); with ``deidentify`` no input file name or path reaches the
    outputs. ``init_mask``: an existing label map (``init_labels``) whose
    refined surface (:func:`~shapeprior.segment.refine_mask`) starts the fit
    instead of the placement search. Returns the report dict. Raises on bad
    input; nothing is left behind.
    """
    if mesh_format not in MESH_FORMATS:
        raise ValueError(f"mesh format {mesh_format!r} is not one of {MESH_FORMATS}")
    input_path = Path(input_path)
    inputs = [input_path, *input_files(input_path), model_path, reference, init_mask]
    out = OutputDir(outdir, force=force, inputs=inputs, partial_ok=partial_ok)
    try:
        return _run_case(out, input_path, model, model_path, params, series, reference,
                         reference_labels, mesh_format, dictionary, argv, clock,
                         case_name, deidentify, allow_no_orientation, init_mask, init_labels)
    except BaseException:
        out.discard()          # a failed case leaves nothing behind
        raise


def _run_case(out, input_path, model, model_path, params, series, reference,
              reference_labels, mesh_format, dictionary, argv, clock, case_name, deidentify,
              allow_no_orientation, init_mask=None, init_labels=(1,)):
    t0 = time.perf_counter()
    clock = clock or StageClock()     # times only (no sampling thread) for the report
    with clock("read"):
        vol, info = read_image(input_path, series, allow_no_orientation)
        ref = None
        if reference is not None:
            rvol = read_label_map(reference, allow_no_orientation)
            if not rvol.same_grid(vol):
                raise ValueError("the reference label map does not share the image's grid")
            ref = np.isin(rvol.array, reference_labels)
    init = None
    if init_mask is not None:
        with clock("place"):
            mvol = read_label_map(init_mask, allow_no_orientation)
            init = refine_mask(mvol, model, init_labels, params, None, dictionary).mask_fit.verts
    res = segment_volume(vol, model, params, dictionary, clock=clock, init=init)
    voxel_ml = float(np.prod(vol.spacing)) / 1000.0
    warnings = []
    if info.get("slice_gap_mm", 0) > 0:
        warnings.append(f"slices are {info['slice_gap_mm']} mm apart beyond their thickness "
                        "(gaps): boundaries between slabs are interpolated")
    if info.get("oblique"):
        warnings.append("oblique acquisition: handled exactly in physical space")
    if not res.converged and res.n_iter:
        warnings.append("did not converge within the iteration limit")
    report = {
        "status": res.status, "quality": round(res.quality, 4), "reasons": res.reasons,
        "input": {"name": case_name or display_name(input_path), **info,
                  "shape_zyx": list(vol.array.shape), "spacing_mm": vol.spacing.tolist(),
                  "origin_mm": vol.origin.tolist(), "direction": vol.direction.ravel().tolist()},
        "model": {"organ": model.metadata.get("organ"), "n_shapes": int(model.shapes.shape[0]),
                  "n_vertices": model.n_vertices, "appearance": model.profile is not None},
        "volume_ml": float(res.label.sum()) * voxel_ml,
        "mesh_volume_ml": Surface(res.verts, res.faces).volume() / 1000.0,
        "iterations": res.n_iter, "converged": res.converged,
        "overridden_fraction": res.overridden_fraction,
        "overridden_fraction_max": res.overridden_fraction_max,
        "overridden_vertices": int(res.overridden.sum()),
        "time_s": res.time_s, "backend": res.backend,
        "stage_seconds": {k: round(v, 4) for k, v in clock.seconds.items()},
        "warnings": warnings, "evidence": res.evidence, "placement": res.placement,
        "history": res.history,
    }
    if ref is not None:
        report["reference"] = {"dice": dice(res.label, ref),
                               **surface_distances(res.label, ref, vol.spacing)}
    with clock("write"):
        _write_outputs(out, vol, res, ref, report, model, model_path, input_path, reference,
                       mesh_format, params, argv, info, deidentify, init_mask)
    report["total_time_s"] = time.perf_counter() - t0
    return report


def _write_outputs(out, vol, res, ref, report, model, model_path, input_path, reference,
                   mesh_format, params, argv, info, deidentify, init_mask=None):
    write_label(vol, res.label, out.file("label.nii.gz"), code=info.get("xform_code") or 1)
    Surface(res.verts, res.faces).write(out.file(f"mesh.{mesh_format}"),
                                        point_data=vertex_data(res))
    qc_png(out.file("qc.png"), vol, res.label, ref,
           title=f"{model.metadata.get('organ', 'organ')}: {report['volume_ml']:.1f} ml")
    out.write_json("report.json", report)
    inputs, shown = input_hashes(Path(input_path), deidentify)
    inputs["model"] = Path(model_path)
    if reference is not None:
        inputs["reference"] = Path(reference)
    if init_mask is not None:
        inputs["init_mask"] = Path(init_mask)
    if deidentify:
        shown["model"] = display_name(model_path)
        shown["reference"] = "reference"
        shown["init_mask"] = "init_mask"
        argv = scrub_argv(argv, {input_path: "<input>", reference: "<reference>",
                                 out.path: "<output>"})
    out.write_json("manifest.json", manifest(
        command="segment", parameters={"argv": argv, **params_record(params)},
        seed=None, inputs=inputs, input_paths=shown))
    out.commit()


def vertex_data(res) -> dict:
    """Per-vertex results written with the mesh: the gross error |e| (mm), the
    vertices the prior overrode in any iteration (1/0) and the last search's
    confidence."""
    n = len(res.verts)
    pick = lambda a: np.zeros(n) if a is None else np.asarray(a, dtype=np.float64)  # noqa: E731
    return {"gross_error_mm": pick(res.error_mm), "overridden": pick(res.overridden),
            "confidence": pick(res.confidence)}


def params_record(params) -> dict:
    """The segmentation parameters as recorded (and compared when resuming)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(params).items()}


def scrub_argv(argv, replace):
    """``argv`` with the given paths (and anything under them) replaced by placeholders."""
    if argv is None:
        return None
    real = {os.path.realpath(str(k)): v for k, v in replace.items() if k is not None}
    out = []
    for a in argv:
        r = os.path.realpath(a) if a and not a.startswith("-") else None
        hit = next((v for k, v in real.items() if r and (r == k or r.startswith(k + os.sep))),
                   None)
        out.append(hit or os.fsencode(a).decode("utf-8", "backslashreplace"))
    return out


__all__ = ["run_case", "input_files", "input_hashes", "params_record", "vertex_data"]
