"""One segmentation job: input -> outputs folder (atomic), and case discovery."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .._outputs import OutputDir, manifest
from .._profile import StageClock
from ..io import Volume, read_image, read_label_map
from ..mesh import Surface
from ._fit import SegmentParams, segment_volume
from ._metrics import dice, surface_distances
from ._qc import qc_png

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
MESH_FORMATS = ("vtk", "ply", "stl", "obj")


def discover_cases(path):
    """``[(name, path)]``: a file or DICOM folder is one case; a folder of
    image files and/or DICOM subfolders is many."""
    from ..io._dicom import list_series

    p = Path(path)
    if p.is_file():
        return [(_stem(p), p)]
    if not p.is_dir():
        raise FileNotFoundError(f"no such file or folder: {p}")
    if list_series(p):
        return [(p.name, p)]
    cases = [(_stem(f), f) for f in sorted(p.iterdir())
             if f.is_file() and f.name.endswith(IMAGE_SUFFIXES)]
    cases += [(d.name, d) for d in sorted(p.iterdir()) if d.is_dir() and list_series(d)]
    if not cases:
        raise ValueError(f"{p} holds no image files ({', '.join(IMAGE_SUFFIXES)}) "
                         "and no DICOM series")
    return cases


def _stem(p: Path):
    for s in IMAGE_SUFFIXES:
        if p.name.endswith(s):
            return p.name[: -len(s)]
    return p.stem


def _inputs_for_hash(p: Path):
    if p.is_file():
        return {p.name: p}
    return {f.name: f for f in sorted(p.iterdir()) if f.is_file()}


def write_label(vol: Volume, label, path):
    """Label map with exactly the input's geometry (atomic)."""
    import os

    import SimpleITK as sitk

    img = Volume(label.astype(np.uint8), vol.spacing, vol.origin, vol.direction).to_sitk()
    tmp = Path(path).with_name(".tmp_" + Path(path).name)
    sitk.WriteImage(img, str(tmp), True)
    os.replace(tmp, path)


def run_case(input_path, outdir, model, model_path, params: SegmentParams, *, series=None,
             reference=None, reference_labels=(1,), mesh_format="vtk", force=False,
             dictionary=None, argv=None, clock=None):
    """Segment one case and publish ``outdir`` atomically.

    ``clock`` (a :class:`~shapeprior._profile.StageClock`) receives the time
    of the stages read, prepare, search, ssc, refine, voxelize and write.
    Returns the report dict. Raises on bad input; nothing is left behind.
    """
    if mesh_format not in MESH_FORMATS:
        raise ValueError(f"mesh format {mesh_format!r} is not one of {MESH_FORMATS}")
    out = OutputDir(outdir, force=force)
    try:
        return _run_case(out, input_path, model, model_path, params, series, reference,
                         reference_labels, mesh_format, dictionary, argv, clock)
    except BaseException:
        out.discard()          # a failed case leaves nothing behind
        raise


def _run_case(out, input_path, model, model_path, params, series, reference,
              reference_labels, mesh_format, dictionary, argv, clock):
    t0 = time.perf_counter()
    clock = clock or StageClock()     # times only (no sampling thread) for the report
    with clock("read"):
        vol, info = read_image(input_path, series)
        ref = None
        if reference is not None:
            rvol = read_label_map(reference)
            if not rvol.same_grid(vol):
                raise ValueError("the reference label map does not share the image's grid")
            ref = np.isin(rvol.array, reference_labels)
    res = segment_volume(vol, model, params, dictionary, clock=clock)
    voxel_ml = float(np.prod(vol.spacing)) / 1000.0
    warnings = []
    if info.get("slice_gap_mm", 0) > 0:
        warnings.append(f"slices are {info['slice_gap_mm']} mm apart beyond their thickness "
                        "(gaps): boundaries between slabs are interpolated")
    if info.get("oblique"):
        warnings.append("oblique acquisition: handled exactly in physical space")
    if not res.converged:
        warnings.append("did not converge within the iteration limit")
    report = {
        "input": {"name": Path(input_path).name, **{k: v for k, v in info.items()},
                  "shape_zyx": list(vol.array.shape), "spacing_mm": vol.spacing.tolist(),
                  "origin_mm": vol.origin.tolist(), "direction": vol.direction.ravel().tolist()},
        "model": {"organ": model.metadata.get("organ"), "n_shapes": int(model.shapes.shape[0]),
                  "n_vertices": model.n_vertices, "appearance": model.profile_mean is not None},
        "volume_ml": float(res.label.sum()) * voxel_ml,
        "mesh_volume_ml": Surface(res.verts, res.faces).volume() / 1000.0,
        "iterations": res.n_iter, "converged": res.converged,
        "overridden_fraction": res.overridden_fraction,
        "time_s": res.time_s, "backend": res.backend,
        "stage_seconds": {k: round(v, 4) for k, v in clock.seconds.items()},
        "warnings": warnings, "history": res.history,
    }
    if ref is not None:
        report["reference"] = {"dice": dice(res.label, ref),
                               **surface_distances(res.label, ref, vol.spacing)}
    with clock("write"):
        _write_outputs(out, vol, res, ref, report, model, model_path, input_path, reference,
                       mesh_format, params, argv)
    report["total_time_s"] = time.perf_counter() - t0
    return report


def _write_outputs(out, vol, res, ref, report, model, model_path, input_path, reference,
                   mesh_format, params, argv):
    write_label(vol, res.label, out.file("label.nii.gz"))
    Surface(res.verts, res.faces).write(out.file(f"mesh.{mesh_format}"))
    qc_png(out.file("qc.png"), vol, res.label, ref,
           title=f"{model.metadata.get('organ', 'organ')}: {report['volume_ml']:.1f} ml")
    out.write_json("report.json", report)
    inputs = {f"input/{k}": v for k, v in _inputs_for_hash(Path(input_path)).items()}
    inputs["model"] = Path(model_path)
    if reference is not None:
        inputs["reference"] = Path(reference)
    out.write_json("manifest.json", manifest(
        command="segment", parameters={"argv": argv, **{k: v for k, v in vars(params).items()}},
        seed=None, inputs=inputs))
    out.commit()


__all__ = ["run_case", "discover_cases", "write_label"]
