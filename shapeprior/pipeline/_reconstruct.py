"""A population run: many shapes in correspondence -> SSC reconstructions.

Input: a folder of meshes in correspondence with the model (vtk, vtp, ply,
obj; searched recursively, hidden files skipped), one mesh file, or a NumPy
``.npy`` array of shapes (M, N, 3). A mesh of both sides of a paired organ, as
``refine`` writes one (twice the model's vertices, each side's triangles among
its own), is two shapes: ``NAME [left]`` and ``NAME [right]``. Output,
published atomically in one folder:

* ``reconstructions.npz``: names, reconstructions (M, N, 3) in each input's
  frame, gross error |e| (M, N) in mm, overridden flags (M, N), coefficients
  x (M, K), and each transform beta (input -> model frame);
* ``mesh_NAME.FORMAT`` (mesh inputs; NAME: the input's path below the folder,
  made file-safe): the reconstruction on the model's triangles, point data
  ``gross_error_mm`` and ``overridden``;
* ``summary.csv``: one row per shape (status, side, overridden fraction, |e|);
* ``report.json`` and ``manifest.json`` (parameters, versions, input hashes).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._outputs import OutputDir, manifest, show_path
from .._validation import shape_problem
from ..io import VOLUME_SUFFIXES, input_path_error, reason_text
from ..mesh import MESH_FORMATS, READ_SUFFIXES, Surface, read_mesh, same_triangles
from ..segmentation import SCALE_SLACK, check_side, median_residual, solve_sides
from ..ssc import ALIGN_TOL
from ._cases import unique_names

#: a shape is 'suspect' when the prior overrode more than this fraction of its
#: visible vertices: the model explains less than half of it
SUSPECT_OVERRIDDEN = 0.5
#: ... or when the median visible vertex lies farther from its reconstruction
#: than this fraction of the reconstruction's RMS radius: more than half of the
#: shape is unexplained, whatever the solver flagged (the trimmed OMP's
#: threshold, a multiple of the median residual, breaks down there; held-out
#: KiTS kidneys with 40 % of their vertices displaced 10-30 mm stay below 0.11)
SUSPECT_MEDIAN_RESIDUAL = 0.25
#: alignment rounds that ran out while still moving less than this (RMS, in RMS
#: radii of the model's mean; 0.04 mm on a kidney) have settled for any use of
#: the result: half-visible kidneys creep by 0.006-0.01 mm per round after 20
#: rounds (the L1 fit of the hybrid's inliers slides slowly along the surface).
#: The default tolerance of the rounds is the same move
SETTLED_MOVE = ALIGN_TOL
#: what a folder is searched for (STL is listed so that it is refused by name)
_FOUND = READ_SUFFIXES + (".stl",)


def find_shape_inputs(path):
    """``[(name, path)]`` of the meshes under a folder (or the one file), sorted;
    a name is the file's path below the folder."""
    p = Path(path)
    if p.is_file():
        if p.name.lower().endswith(VOLUME_SUFFIXES):
            raise ValueError(f"{show_path(p.name)} is an image or label map; reconstruct "
                             "takes meshes in correspondence with the model (segment, refine "
                             "and export-model write them) or a .npy array of shapes")
        if p.suffix.lower() == ".npz":      # reconstruct's own reconstructions.npz, say
            raise ValueError(f"{show_path(p.name)} is an .npz archive, which holds several "
                             "arrays; give the shapes as one .npy array (M, N, 3), e.g. "
                             "numpy.save of the archive's array of shapes, or as meshes")
        return [(p.name, p)]
    if not p.is_dir():
        raise input_path_error(p, show_path(p))
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _FOUND
                   and not any(part.startswith(".") for part in f.relative_to(p).parts))
    if not files:
        raise ValueError(f"no meshes ({', '.join(READ_SUFFIXES)}) found under {show_path(p)}")
    return [(str(f.relative_to(p)), f) for f in files]


def failed_source(mesh_path):
    """Why a mesh that ``segment`` or ``refine`` wrote holds a failed fit rather than
    the organ, from the ``report.json`` beside it: ``(why or None, {side: why})``,
    the second for each failed side of a mesh of both sides. A mesh without such a
    report (another tool's, export-model's) gives ``(None, {})``."""
    rep = Path(mesh_path).with_name("report.json")
    if Path(mesh_path).stem != "mesh" or not rep.is_file():
        return None, {}
    try:
        r = json.loads(rep.read_bytes())
    except (OSError, ValueError):
        return None, {}
    if not isinstance(r, dict):
        return None, {}

    def why(block):
        first = (block.get("reasons") or ["no reason given"])[0]
        return (f"is the fit of a failed segmentation, not the organ (report.json beside "
                f"it: {' '.join(str(first).split())})")

    sides = r.get("sides")
    if isinstance(sides, dict) and sides:
        return None, {s: why(b) for s, b in sides.items()
                      if isinstance(b, dict) and b.get("status") == "failed"}
    return (why(r) if r.get("status") == "failed" else None), {}


#: how a side of a mesh of both sides of a paired organ is named after its file
_SIDE_NAME = " [{}]"


def mesh_file_names(names, halves=None):
    """Flat, safe and unique output file stems for the files ``names`` of the
    shapes (``sub/a.vtk`` -> ``sub_a``); ``halves``: the side each shape is of a
    mesh of both sides, or None (``sub/a.vtk`` as its left side -> ``sub_a_left``).
    Clashes get a counter."""
    halves = [None] * len(names) if halves is None else halves
    return unique_names([n[: len(n) - len(Path(n).suffix)] + ("" if h is None else f"_{h}")
                         for n, h in zip(names, halves)])


def paired_halves(surface, n_points):
    """The two sides of a mesh of both sides of a paired organ, as ``refine``
    writes one (the left side's ``n_points`` vertices, then the right's, each
    side's triangles among its own vertices): ``[('left', (N, 3), (F, 3)),
    ('right', (N, 3), (F', 3))]`` (vertices and each side's own triangles), or
    None for any other mesh."""
    v, f = surface.verts, surface.faces
    if len(v) != 2 * n_points or not len(f):
        return None
    first = f < n_points
    left = first.all(axis=1)
    if not np.all(left | ~first.any(axis=1)):
        return None         # a triangle joins the two halves: one surface
    return [("left", v[:n_points], f[left]), ("right", v[n_points:], f[~left] - n_points)]


def _not_in_correspondence(faces, model_faces):
    """Why a mesh with the model's vertex count is not in correspondence with it
    (its triangles are not the model's on the same vertex numbers), or None."""
    if model_faces is None or faces is None or not len(faces) or \
            same_triangles(faces, model_faces):
        return None
    return ("has the model's vertex count but not its triangles: its vertices are not "
            "numbered as the model's (vertex i must be the model's vertex i; a tool that "
            "reorders vertices when it cleans or re-exports a mesh breaks that)")


@dataclass
class ShapeInputs:
    """What :func:`load_shapes` found: every shape in order, and the usable ones.

    ``names`` (every shape, in order); ``shapes`` (M, N, 3): the usable ones,
    which are ``names[i]`` for ``i`` in ``kept``; ``failed``: ``{i: reason}``
    for the others, each reason one line naming its input; ``meshes``: whether
    the inputs are mesh files; ``files``: the files read (one for ``.npy``),
    ``file_names`` their names below the input, and ``sources`` the index in
    ``files`` of each shape's file, ``halves`` the side each is of a mesh of
    both sides of a paired organ or None (such a mesh gives two shapes,
    ``NAME [left]`` and ``NAME [right]``).
    """

    names: list
    shapes: np.ndarray
    kept: list
    failed: dict
    meshes: bool
    files: list
    file_names: list = None
    sources: list = None
    halves: list = None


def _load_npy(p):
    """The array of a ``.npy`` file, its header checked against the file first: a
    damaged shape field asks NumPy for gigabytes (112 GiB for a file of 1 KiB)
    and ends in a MemoryError, a damaged header length makes it read gigabytes of
    header, and a damaged header text raises what Python's tokenizer raises
    (TokenError; found by bench/fuzz_readers.py). Each is refused in one line
    naming the file."""
    fmt = np.lib.format
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            version = fmt.read_magic(fh)
            width = 2 if version == (1, 0) else 4
            raw = fh.read(width)
            length = int.from_bytes(raw, "little") if len(raw) == width else None
            if length is None or fh.tell() + length > size:
                raise ValueError(f"its header says it is {length} bytes long; the file "
                                 f"holds {size}")
            fh.seek(-width, 1)
            read = fmt.read_array_header_1_0 if version == (1, 0) else \
                fmt.read_array_header_2_0
            try:
                shape, _, dtype = read(fh)
            except Exception as exc:  # noqa: BLE001 - ValueError, TokenError, SyntaxError
                raise ValueError(f"its header does not parse ({type(exc).__name__})") \
                    from None
            start = fh.tell()
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if dtype.hasobject or need > size - start:
            raise ValueError(f"its header promises {need} bytes of {dtype} values, shape "
                             f"{shape}; the file holds {size - start}")
        return np.load(p, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - NumPy's header parser raises many kinds
        raise ValueError(f"{show_path(p.name)} is not a readable .npy array "
                         f"({reason_text(exc)})") from None


def load_shapes(path, n_points, faces=None):
    """:class:`ShapeInputs` from a folder, a mesh or a ``.npy`` array.

    A shape that cannot be used (a mesh that cannot be read, with another
    vertex count than the model's, or, given the model's ``faces`` (F, 3), with
    other triangles than the model's: vertices numbered otherwise; the mesh of a
    failed segmentation or of a failed side, :func:`failed_source`; a shape that
    :func:`~shapeprior._validation.shape_problem` finds unusable: not finite,
    beyond 1e9 mm, all its points at one place) is listed in ``failed`` with
    one line naming it, and the others are kept, as a batch of cases keeps
    going past a failed case. A file that is no array of shapes, or inputs of
    which none can be used, are refused in one line (``ValueError``).
    """
    p = Path(path)
    failed = {}
    if p.is_file() and p.suffix.lower() == ".npy":
        a = _load_npy(p)
        real = np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
        if not real:
            raise ValueError(f"{show_path(p.name)} holds {a.dtype} values; expected real "
                             "coordinates in mm")
        shape = a.shape
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3 or a.shape[1:] != (n_points, 3):
            raise ValueError(f"{show_path(p.name)} holds an array of shape {shape}; expected "
                             f"(M, {n_points}, 3) shapes in correspondence with the model")
        if a.shape[0] == 0:
            raise ValueError(f"{show_path(p.name)} holds no shapes (shape {shape})")
        a = a.astype(np.float64)
        names = [f"shape_{i:05d}" for i in range(len(a))]
        for i, y in enumerate(a):
            why = shape_problem(y)
            if why is not None:
                failed[i] = f"{show_path(p.name)}: shape {i} {why}"
        loaded, meshes, files, sources = a, False, [p], [0] * len(a)
        file_names, halves = [p.name], [None] * len(a)
    else:
        found = find_shape_inputs(p)
        names, loaded, sources, halves = [], [], [], []
        for j, (name, f) in enumerate(found):
            whole, failed_sides = failed_source(f)
            try:
                if whole is not None:
                    raise ValueError(f"mesh {show_path(name)!r} {whole}")
                s = read_mesh(f)
            except (ValueError, OSError) as exc:
                failed[len(names)] = " ".join(str(exc).split())
                names.append(name), loaded.append(None), sources.append(j)
                halves.append(None)
                continue
            for side, verts, tri in paired_halves(s, n_points) or [(None, s.verts, s.faces)]:
                shown = name if side is None else name + _SIDE_NAME.format(side)
                if side in failed_sides:
                    failed[len(names)] = f"mesh {show_path(shown)!r} {failed_sides[side]}"
                    names.append(shown), loaded.append(verts), sources.append(j)
                    halves.append(side)
                    continue
                why = shape_problem(verts)
                if verts.shape[0] != n_points:
                    why = (f"has {verts.shape[0]} vertices; the model's shapes have "
                           f"{n_points} (meshes must be in correspondence with the model, "
                           "e.g. written by segment, refine or export-model)")
                else:
                    why = why or _not_in_correspondence(tri, faces)
                if why is not None:
                    failed[len(names)] = f"mesh {show_path(shown)!r} {why}"
                names.append(shown), loaded.append(verts), sources.append(j)
                halves.append(side)
        meshes, files, file_names = True, [f for _, f in found], [n for n, _ in found]
    kept = [i for i in range(len(names)) if i not in failed]
    if not kept:
        first = failed[0]
        more = "" if len(names) == 1 else \
            f" (and none of the other {len(names) - 1} inputs can be used either)"
        raise ValueError(first + more)
    shapes = np.stack([np.asarray(loaded[i], dtype=np.float64) for i in kept])
    return ShapeInputs(names, shapes, kept, failed, meshes, files, file_names, sources, halves)


def _failed_row(name, why):
    """The summary row of an input that could not be used."""
    return {"name": name, "status": "failed", "side": None, "median_residual_mm": None,
            "other_side_median_residual_mm": None, "overridden_fraction": None,
            "gross_error_mean_mm": None, "gross_error_max_mm": None, "scale": None,
            "converged": None, "alignment_move": None, "alignment_rounds": None,
            "reasons": why}


def _readable(path):
    return Path(path).is_file() and os.access(path, os.R_OK)


def _status(r, y, scale_range=None):
    """``(status, overridden fraction, reasons)`` of the solve ``r`` of the shape
    ``y`` (N, 3), in whose frame its reconstruction is."""
    frac = float(np.count_nonzero(r.overridden)) / max(int(np.count_nonzero(r.visible)), 1)
    reasons = []
    if scale_range is not None:
        # the alignment scales the shape onto the model's mean: its size relative
        # to the mean is the inverse, as the segmentation's status measures it
        size, (lo, hi) = 1.0 / float(r.transform.scale), scale_range
        if size < lo / SCALE_SLACK ** 2 or size > hi * SCALE_SLACK ** 2:
            reasons.append(f"the shape is {size:.3g} times the size of the model's mean "
                           f"(training shapes {lo:.2f}-{hi:.2f}): other units than mm (cm, "
                           "m?) or another organ")
    rec = r.reconstruction
    radius = float(np.sqrt(np.mean(np.sum((rec - rec.mean(0)) ** 2, axis=1))))
    median = median_residual(r, y)
    if median > SUSPECT_MEDIAN_RESIDUAL * radius:
        reasons.append(f"the median vertex lies {median:.1f} mm from its reconstruction "
                       f"(> {100 * SUSPECT_MEDIAN_RESIDUAL:.0f}% of the shape's RMS radius, "
                       f"{radius:.1f} mm): the model explains less than half of this shape")
    if frac > SUSPECT_OVERRIDDEN:
        reasons.append(f"the prior overrode {100 * frac:.0f}% of the vertices (> "
                       f"{100 * SUSPECT_OVERRIDDEN:.0f}%): the model explains less than half "
                       "of this shape")
    if r.info.get("trimming_capped"):
        reasons.append("the L0 trimming reached its cap (half of the visible vertices): "
                       "more of this shape than that are gross errors")
    move = r.info.get("alignment_move")
    if not r.info.get("solver_converged", r.converged):
        reasons.append("the sparse solve did not converge")
    elif not r.converged and (move is None or move > SETTLED_MOVE):
        reasons.append("the alignment did not settle" + (
            "" if move is None else f" (last round moved {move:.1e} of the shape's radius)"))
    return ("suspect" if reasons else "ok"), frac, reasons


def _load_deidentified(input_path, n_points, faces=None):
    """:func:`load_shapes` with every input named by its index, in the names,
    the reasons of the shapes that failed and an error message alike."""
    from ._cases import scrub

    p = Path(input_path)
    try:                        # listed once, for every message hidden below
        found = find_shape_inputs(p) if p.is_dir() else [(p.name, p)]
    except (ValueError, OSError):     # an empty folder: its path is scrubbed below
        found = []

    def hide(msg, which=None):
        """``msg`` with the input's path and the names of the files ``which``
        (indices into ``found``; default every file) replaced."""
        msg = scrub(msg, input_path, "<input>")
        which = range(len(found)) if which is None else which
        # the names below the folder first, longest first (a/b/x.vtk before b/x.vtk)
        for i in sorted(which, key=lambda i: -len(found[i][0])):
            msg = msg.replace(repr(found[i][0]), repr(f"shape_{i:05d}"))
        for i in which:
            msg = scrub(msg, found[i][1], f"shape_{i:05d}")
        return msg

    try:
        got = load_shapes(input_path, n_points, faces)
    except (ValueError, OSError) as exc:
        raise type(exc)(hide(str(exc))) from None
    # shapes by their file's index, the side of a mesh of both sides kept
    got.names = [f"shape_{j:05d}" + ("" if h is None else _SIDE_NAME.format(h))
                 for j, h in zip(got.sources, got.halves)]
    got.file_names = [f"shape_{j:05d}" for j in range(len(got.files))]
    # a failed shape's reason names its own file alone
    got.failed = {i: hide(why, [got.sources[i]]) for i, why in got.failed.items()}
    return got


def reconstruct_shapes(input_path, outdir, model, model_path, *, prior="auto", method="auto",
                       refit=None, n_jobs=1, mesh_format="vtk", force=False, progress=False,
                       argv=None, client=None, deidentify=False, side="auto"):
    """Reconstruct every shape under ``input_path`` with the model; publish ``outdir``.

    Returns the report dict. Every input is read and checked before any solve:
    one that cannot be used (:func:`load_shapes`) is reported ``failed`` with
    its reason and the others are reconstructed; none usable is an error.
    Nothing is left behind on error; ``outdir`` may not overlap an input.
    With ``deidentify`` no input file name or path reaches the outputs or an
    error message: shapes are ``shape_00000``, ... in input order.

    ``side`` (a model of one side of a paired organ, the other mirrored onto
    it: :func:`~shapeprior.segmentation.paired_model`): the side of the
    shapes, 'left' or 'right', or 'auto' (default): each shape is solved as
    given and mirrored, and the closer fit kept
    (:func:`~shapeprior.segmentation.solve_sides`).
    A mirrored fit's reconstruction, mesh and |e| are in the input's frame;
    its stored transform maps the input with x negated into the model frame.
    For other models only 'auto' is accepted.
    """
    from ..ssc import solver_options, sparse_shape_composition_many
    from ._run import scrub_argv

    used = model.resolve_prior(prior)
    options = solver_options(method, refit, used)
    solver, refit = options["method"], options["refit"]
    check_side(model, side)
    if mesh_format not in MESH_FORMATS:
        raise ValueError(f"mesh format {mesh_format!r} is not one of {MESH_FORMATS}")
    t0 = time.perf_counter()
    if deidentify:
        got = _load_deidentified(input_path, model.n_vertices, model.faces)
        argv = scrub_argv(argv, {input_path: "<input>", outdir: "<output>"})
    else:
        got = load_shapes(input_path, model.n_vertices, model.faces)
    names, shapes, meshes, files = got.names, got.shapes, got.meshes, got.files
    out = OutputDir(outdir, force=force, inputs=[Path(input_path), Path(model_path)])
    try:
        dic = model.prior_dictionary(prior)
        t1 = time.perf_counter()
        picked = solve_sides(shapes, model, side, lambda a, w: sparse_shape_composition_many(
            a, dic, w, **options, n_jobs=n_jobs, progress=progress, client=client))
        t_solve = time.perf_counter() - t1
        rows, res = {i: _failed_row(names[i], why) for i, why in got.failed.items()}, []
        pose = model.pose
        scale_range = None if pose is None else pose.scale_range
        for i, (r, mirrored, other_mm), y in zip(got.kept, picked, shapes):
            y = np.asarray(y, dtype=float)     # the reconstruction is in its frame
            status, frac, reasons = _status(r, y, scale_range)
            res.append(r)
            rows[i] = {"name": names[i], "status": status, "side": r.info["side"],
                       "median_residual_mm": round(median_residual(r, y), 4),
                       "other_side_median_residual_mm": (None if other_mm is None
                                                         else round(other_mm, 4)),
                       "overridden_fraction": round(frac, 4),
                       "gross_error_mean_mm": round(float(r.error_norm.mean()), 4),
                       "gross_error_max_mm": round(float(r.error_norm.max()), 4),
                       "scale": round(r.transform.scale, 6), "converged": bool(r.converged),
                       "alignment_move": (None if r.info.get("alignment_move") is None
                                          else float(f"{r.info['alignment_move']:.3g}")),
                       "alignment_rounds": int(r.n_align_iter), "reasons": "; ".join(reasons)}
        rows = [rows[i] for i in range(len(names))]
        out.write_npz("reconstructions.npz", names=np.array([names[i] for i in got.kept]),
                      reconstructions=np.stack([r.reconstruction for r in res]),
                      gross_error_mm=np.stack([r.error_norm for r in res]),
                      overridden=np.stack([r.overridden for r in res]),
                      coefficients=np.stack([np.asarray(r.x) for r in res]),
                      linear=np.stack([r.transform.linear for r in res]),
                      translation=np.stack([r.transform.translation for r in res]),
                      mirrored=np.array([m for _, m, _ in picked]))
        if meshes:
            stems = mesh_file_names([got.file_names[j] for j in got.sources], got.halves)
            for i, r, (_, m, _) in zip(got.kept, res, picked):
                # a mirrored reconstruction's triangles turn inside out: reversed
                Surface(r.reconstruction, model.faces[:, ::-1] if m else model.faces).write(
                    out.file(f"mesh_{stems[i]}.{mesh_format}"), point_data={"gross_error_mm": r.error_norm,
                                      "overridden": r.overridden.astype(float)})
        with open(out.file("summary.csv"), "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "suspect", "failed")}
        report = {
            "n_shapes": len(rows), "status_counts": counts,
            **{s: [{"name": r["name"], "reasons": r["reasons"]} for r in rows
                   if r["status"] == s] for s in ("suspect", "failed")},
            "model": {"organ": model.metadata.get("organ"), "n_shapes": int(model.n_shapes),
                      "n_vertices": int(model.n_vertices)},
            "prior": {"requested": prior, "used": used,
                      "n_atoms": int(dic.n_atoms)},
            "side": {"requested": side, "model": model.metadata.get("side"),
                     "counts": {k: sum(r["side"] == k for r in rows)
                                for k in ("left", "right", "none")}},
            "method": method, "solver": solver, "refit": refit,
            "alpha1": options["alpha1"], "n_jobs": n_jobs,
            "coordinates": "each reconstruction in its input's frame (shapeprior meshes: LPS mm)",
            "time_s": {"solve": round(t_solve, 3), "total": round(time.perf_counter() - t0, 3)},
            "shapes_per_s": round(len(got.kept) / max(t_solve, 1e-9), 2),
        }
        out.write_json("report.json", report)
        # an input that failed is recorded when it can be read (a mesh that could
        # not be read for want of permission cannot be hashed either)
        used = {got.sources[i] for i in got.kept}
        inputs = {f"input/{j:05d}": f for j, f in enumerate(files)
                  if j in used or _readable(f)}
        inputs["model"] = Path(model_path)
        out.write_json("manifest.json", manifest(
            command="reconstruct",
            parameters={"argv": argv, "prior": prior, "side": side, "method": method,
                        "solver": solver,
                        "refit": refit, "alpha1": options["alpha1"]},
            seed=None, inputs=inputs,
            input_paths={f"input/{j:05d}": (f"input/{j:05d}" if deidentify else
                                            show_path(got.file_names[j]))
                         for j, f in enumerate(files) if f"input/{j:05d}" in inputs}
            | ({"model": Path(model_path).name} if deidentify else {})))
        out.commit()
        return report
    except BaseException:
        out.discard()
        raise


__all__ = ["reconstruct_shapes", "find_shape_inputs", "load_shapes", "mesh_file_names",
           "SUSPECT_OVERRIDDEN"]
