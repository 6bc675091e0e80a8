"""Grow a model with new, confirmed shapes without revisiting the old ones.

Each new label map goes through the steps of :func:`build_model` (surface,
correspondence with the model's mean as template, quality check), is
similarity-aligned into the model frame (onto the target GPA aligned the
model's shapes onto: :func:`alignment_target`) and appended to the shape
repository. What the model derives from the repository is updated from running
statistics only:

* mean and PCA: incremental SVD of the old modes (scaled by their variance),
  the new shapes and the mean shift (Ross et al. 2008); the total variance,
  which sets how many modes are kept, is updated exactly;
* dictionary atoms: the online block-coordinate update (Mairal et al. 2009) on
  the stored statistics A = sum x x^T and B = sum y x^T;
* pose prior: running sums of rotation, scale and offset;
* boundary appearance (when images are given): pairwise mean/variance update.

The old shapes stay bit for bit; the lineage records each new shape's
content hash, when and by which shapeprior it was added, and the model version.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..io import image_sha256
from ..align import apply_many, procrustes, procrustes_many
from ._build import (BuildParams, case_name, _job_fit, _job_surfaces, _map, find_image_for,
                     images_place, looked_for, pair_images, rms_radius)
from ._lineage import extend_lineage, lineage_of
from ._model import ShapeModel, total_variance
from ._pose import add_pose_stats, pose_from_stats, pose_stats

#: a new shape whose size (similarity scale onto the model mean) lies outside the
#: training range widened by this factor is refused (wrong spacing, wrong organ)
SCALE_MARGIN = 2.0
#: PCA keeps the modes that explain this fraction of the total variance (as build)
VAR_KEPT = 0.98
#: parameters of the model that new label maps must be processed with
_SHAPE_PARAMS = ("labels", "organ", "split_sides", "side", "mirror_right", "n_vertices",
                 "iso_spacing", "smooth_mm", "n_iter", "normalisation", "profile_step",
                 "profile_half", "n_nonzero", "seed")


def params_from_model(model: ShapeModel, **overrides) -> BuildParams:
    """The :class:`BuildParams` a model was built with, updated by ``overrides``.

    ``organ``, ``split_sides`` and ``mirror_right`` must agree with the model
    (a different organ or side handling would mix shapes that do not
    correspond); ``labels`` may differ (the new maps may code the organ
    differently); ``n_jobs``, ``images_dir`` and ``allow_no_orientation`` are
    free.
    """
    stored = dict(model.metadata.get("parameters") or {})
    kw = {k: stored[k] for k in _SHAPE_PARAMS if k in stored}
    if "labels" in kw:
        kw["labels"] = tuple(kw["labels"])
    kw["n_vertices"] = model.n_vertices
    for k in ("organ", "split_sides", "mirror_right"):
        if overrides.get(k) is not None and k in kw and overrides[k] != kw[k]:
            raise ValueError(f"{k}={overrides[k]!r} disagrees with the model, built with "
                             f"{k}={kw[k]!r}")
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return BuildParams(**kw)


def _pca_update(model: ShapeModel, Z, total_old):
    """Mean, modes, variances and total variance of the old shapes plus rows Z (m, 3N)."""
    n_old, m = model.n_shapes, len(Z)
    n = n_old + m
    mu_a = model.mean.ravel()
    mu_b = Z.mean(0)
    mean = (n_old * mu_a + m * mu_b) / n
    shift = np.sqrt(n_old * m / n) * (mu_a - mu_b)
    A = np.vstack([np.sqrt(model.pca_variances * (n_old - 1))[:, None] * model.pca_components,
                   Z - mu_b, shift[None]])
    # SVD of the short, wide A from the eigen-decomposition of A A^T (rows << 3N)
    lam, u = np.linalg.eigh(A @ A.T)
    order = np.argsort(lam)[::-1]
    lam, u = np.maximum(lam[order], 0.0), u[:, order]
    s = np.sqrt(lam)
    good = s > 1e-9 * max(float(s[0]), 1e-300)
    s, u = s[good], u[:, good]
    # the rows of A for the new shapes hold Z - mu_b: its squared norm is their scatter
    total = (total_old * (n_old - 1) + float(np.einsum("ij,ij->", A[-m - 1:-1], A[-m - 1:-1]))
             + float(shift @ shift)) / (n - 1)
    var = s ** 2 / (n - 1)
    keep = int(np.searchsorted(np.cumsum(var) / max(total, 1e-300), VAR_KEPT) + 1)
    keep = max(1, min(keep, len(var), n - 1))
    vt = (u[:, :keep].T @ A) / s[:keep, None]
    return mean.reshape(-1, 3), vt, var[:keep], total


def _dictionary_update(model: ShapeModel, aligned, n_sweeps, centre=None):
    from ._dictlearn import DictionaryLearner, update_shape_dictionary

    info = dict(model.metadata.get("dictionary_learning") or {})
    info.setdefault("n_seen", model.n_shapes)
    state = model.dictionary_state
    if state is None:   # a model from before the state was stored: code its shapes once
        k = model.atoms.shape[0]
        dl = DictionaryLearner(k, int(info.get("n_nonzero", min(5, k))))
        dl.atoms_ = model.atoms.reshape(k, -1)
        X = dl.transform(model.shapes).T
        state = {"A": X @ X.T, "B": model.shapes.reshape(model.n_shapes, -1).T @ X.T}
    return update_shape_dictionary(model.atoms, state, info, aligned, n_sweeps, centre)


def recorded_total_variance(model: ShapeModel) -> float:
    """The model's total shape variance (mm^2, over all 3N coordinates) as recorded
    at build or update; computed from its shapes for a model from before it was."""
    total = model.metadata.get("pca_total_variance_mm2")
    return float(total_variance(model.shapes) if total is None else total)


def alignment_target(model: ShapeModel):
    """The shape (N, 3) that GPA aligned the model's shapes onto: its mean, scaled
    by ``beta = mean_i |a_i|^2 / |mean|^2`` over the aligned shapes a_i.

    A least-squares similarity fit a_i of a shape onto a target T satisfies
    <a_i, T> = |a_i|^2, so the target of a converged GPA is ``beta * mean``,
    not the mean: averaging shapes that differ shrinks them (the mean of 1,150
    aligned AdrenalMNIST3D glands is smaller than any of them). A new shape
    aligned onto the mean itself comes out scaled by 1 / beta, and each
    online update, whose mean mixes both sizes, shrinks the next ones further.
    ``beta = 1 + (M - 1) / M * total_variance / |mean|^2``, from the model's
    recorded total variance (its shapes otherwise)."""
    mean = np.asarray(model.mean, dtype=float)
    m = model.n_shapes
    total = recorded_total_variance(model)
    msq = float(np.sum((mean - mean.mean(0)) ** 2))
    if m < 2 or msq <= 0:
        return mean
    return mean * (1.0 + (m - 1) / m * float(total) / msq)


def align_to_model(model: ShapeModel, shapes):
    """Shapes (M, N, 3) in correspondence, similarity-aligned into the model frame:
    onto :func:`alignment_target`, as GPA aligned the model's own shapes (a shape
    of the model, aligned again, is itself)."""
    Y = np.asarray(shapes, dtype=float)
    return apply_many(procrustes_many(Y, alignment_target(model)), Y)


def extend_model(model: ShapeModel, shapes, ids=None, hashes=None, *, fov_centres=None,
                 profiles=None, n_sweeps=None, summary=None, hu_shares=None,
                 background_shares=None) -> ShapeModel:
    """A new model: ``model`` plus shapes already in correspondence with it.

    Parameters
    ----------
    model : ShapeModel
        Left unchanged.
    shapes : ndarray, shape (M, N, 3)
        New shapes in correspondence with ``model`` (vertex i is vertex i of
        the model), in any frame; with ``fov_centres`` they must be in their
        scans' physical space (LPS mm) to update the pose prior.
    ids, hashes : sequence of str, optional
        Shape ids (``case:side``) and content hashes for the lineage.
    fov_centres : sequence of ndarray (3,), optional
        Centre of each new shape's field of view: updates the pose prior.
    profiles : ndarray, shape (M', N, 2*half), optional
        Appearance profiles of new training images: updates the appearance.
    hu_shares : sequence of float, optional
        :func:`~shapeprior.appearance.hounsfield_share` of those images (CT or
        not): widens the appearance's recorded range.
    background_shares : sequence of float, optional
        :func:`~shapeprior.appearance.background_share` of the new shapes on
        those images: raises the appearance's recorded largest share.
    n_sweeps : int, optional
        Block-coordinate sweeps of the online dictionary update. Default: one
        (as in Mairal et al.) for raw-shape atoms (three gave the same held-out
        error on KiTS kidneys at twice the cost); for a deviations dictionary,
        whose centre moves to the new mean, ``MOVED_CENTRE_SWEEPS`` (see
        :func:`~shapeprior.model._dictlearn.update_shape_dictionary`).
    summary : dict, optional
        Stored in the lineage's update record.

    Returns
    -------
    ShapeModel
        Shapes = the old shapes (unchanged) followed by the new ones aligned
        into the model frame; mean, PCA, atoms, pose and appearance updated.
    """
    Y = np.asarray(shapes, dtype=float)
    if Y.ndim != 3 or Y.shape[1:] != model.mean.shape or len(Y) < 1:
        raise ValueError(f"shapes must have shape (M, {model.n_vertices}, 3), got {Y.shape}")
    if not np.all(np.isfinite(Y)):
        raise ValueError("shapes contain NaN or infinite coordinates")
    m = len(Y)
    ids = [f"added_{model.n_shapes + i}" for i in range(m)] if ids is None else list(ids)
    hashes = [None] * m if hashes is None else list(hashes)
    aligned = align_to_model(model, Y)
    meta = dict(model.metadata)
    mean, comps, var, total = _pca_update(model, aligned.reshape(m, -1),
                                          recorded_total_variance(model))
    atoms, state = model.atoms, model.dictionary_state
    if model.atoms is not None:
        atoms, state, meta["dictionary_learning"] = _dictionary_update(model, aligned, n_sweeps,
                                                                      centre=mean)
    pose = model.pose
    if pose is not None and fov_centres is not None:
        new = pose_stats(mean, Y, fov_centres)
        lo, hi = pose.scale_range if pose.scale_range is not None else (pose.scale, pose.scale)
        pose = pose_from_stats(add_pose_stats(pose.running_stats(model.n_shapes), new),
                               (min(lo, float(new["scales"].min())),
                                max(hi, float(new["scales"].max()))))
    profile = model.profile
    if profiles is not None and len(profiles):
        if profile is None:
            raise ValueError("the model has no boundary appearance to update")
        profile = profile.merged(profiles, hu_shares, background_shares)
    meta["n_shapes"] = model.n_shapes + m
    meta["shape_ids"] = list(meta.get("shape_ids", [])) + ids
    known = {s.get("sha256") for s in meta.get("sources", []) if isinstance(s, dict)}
    sources = list(meta.get("sources", []))
    for i, h in zip(ids, hashes):
        if h is not None and h not in known:
            sources.append({"name": str(i).rsplit(":", 1)[0], "sha256": h})
            known.add(h)
    meta["sources"] = sources
    meta["pca_total_variance_mm2"] = total
    meta["lineage"] = extend_lineage(lineage_of(model.metadata), list(zip(ids, hashes)),
                                     {"n_added": m, **(summary or {})})
    # the voxel classifier decides voxels from appearance and the distance to the
    # fitted surface, not from the shapes: it is kept as learned
    return ShapeModel(np.concatenate([model.shapes, aligned]), mean, model.faces, comps, var,
                      atoms, meta, profile, pose, state, model.voxels)


def new_label_maps(model: ShapeModel, files, names):
    """``[(file, name, sha256)]`` not yet in the model, and the duplicates skipped
    (same content hash as a shape of the model or an earlier file)."""
    known = {}
    for s in lineage_of(model.metadata)["shapes"]:
        if s.get("sha256"):
            known.setdefault(s["sha256"], str(s["id"]).rsplit(":", 1)[0])
    todo, skipped, batch = [], [], {}
    for f, name in zip(files, names):
        h = image_sha256(f)
        if h in batch:
            skipped.append({"source": name, "reason": f"same content as {batch[h]}, given "
                                                      "earlier"})
            continue
        if h in known:
            skipped.append({"source": name, "reason": "already in the model" if known[h] == name
                            else f"same content as {known[h]}, already in the model"})
            continue
        batch[h] = name
        todo.append((f, name, h))
    return todo, skipped


def correspond_to_model(model: ShapeModel, label_files, params: BuildParams, progress=True):
    """New label maps put in correspondence with ``model`` and checked.

    Parameters
    ----------
    model : ShapeModel
    label_files : sequence of (path, str, str)
        ``(file, case name, sha256)`` as :func:`new_label_maps` returns them.
    params : BuildParams
    progress : bool

    Returns
    -------
    accepted : list of dict
        ``source``, ``side``, ``file``, ``sha256``, ``fov_centre``, ``verts``
        (physical LPS mm, in correspondence) and ``fit`` (quality).
    rejected : list of dict
        ``source``, ``stage``, ``reason`` for each refused label map or shape.
    """
    items = [(Path(f), *rest) for f, *rest in label_files]
    pose = model.pose
    lo, hi = (pose.scale_range if pose is not None and pose.scale_range is not None
              else (1.0, 1.0))
    # a cheap size check before surfaces: the mean's vertices are on the surface, a
    # solid organ's voxels inside it (RMS radius about 0.6-0.8 of the surface's)
    r_mean = rms_radius(model.mean)
    radius = (0.5 * r_mean * lo / SCALE_MARGIN, r_mean * hi * SCALE_MARGIN)
    res = _map(_job_surfaces, [(f, params, True, radius) for f, _, _ in items], params.n_jobs,
               "surfaces", progress)
    shapes_in, rejected = [], []
    for (f, name, h), (out, err) in zip(items, res):
        if err is not None:
            rejected.append({"source": name, "stage": "surface", "reason": err})
            continue
        for side, s, c, _ in out:
            shapes_in.append({"source": name, "side": side, "surface": s, "file": f,
                              "sha256": h, "fov_centre": c})
    fits = _map(_job_fit, [(model.mean, model.faces, s["surface"], params.n_iter)
                           for s in shapes_in], params.n_jobs, "fit", progress)
    mc = model.mean - model.mean.mean(0)
    accepted = []
    for s, (v, q) in zip(shapes_in, fits):
        scale = procrustes(mc, v).scale   # even a poor fit has the organ's size
        if not lo / SCALE_MARGIN <= scale <= hi * SCALE_MARGIN:
            rejected.append({"source": s["source"], "side": s["side"], "stage": "size",
                             "reason": f"{scale:.2f} times the model mean's size, outside what "
                                       f"the training shapes support ({lo:.2f}-{hi:.2f}, "
                                       f"x{SCALE_MARGIN:g} margin); wrong spacing or organ?"})
            continue
        if not q.ok:
            rejected.append({"source": s["source"], "side": s["side"],
                             "stage": "correspondence", "reason": q.reason})
            continue
        accepted.append({**{k: s[k] for k in ("source", "side", "file", "sha256",
                                                "fov_centre")},
                         "verts": v, "fit": q.to_dict()})
    return accepted, rejected


def _new_profiles(model, accepted, params, pairs):
    from ..appearance import background_share, hounsfield_share, profile_stack
    from ..io import read_volume

    cases = []
    for a in accepted:
        if a["side"] == "right" and params.mirror_right:
            continue   # mirrored shapes do not sit on their image
        vol = read_volume(pairs[Path(a["file"])], params.allow_no_orientation)
        cases.append((vol, a["verts"]))
    if not cases:
        return None, None, None
    p = model.profile
    return (profile_stack(cases, model.faces, p.step, p.half, p.normalisation),
            [hounsfield_share(vol) for vol, _ in cases],
            [background_share(vol, v, model.faces) for vol, v in cases])


def update_model(model: ShapeModel, label_files, params: BuildParams | None = None, root=None,
                 progress=True, names=None, roots=None):
    """Add label maps to a model (see the module docstring).

    Parameters
    ----------
    model : ShapeModel
        Left unchanged.
    label_files : sequence of path
    params : BuildParams, optional
        Default: the model's own (:func:`params_from_model`). With
        ``images_dir`` (and a model with appearance), the appearance is
        updated from the new images too.
    root : path, optional
        Case names are paths relative to it (default: the first file's folder).
    progress : bool
    names : sequence of str, optional
        Case names of the files (instead of ``root``).
    roots : sequence of path, optional
        Per file, the folder its image is looked for from (as in
        :func:`~shapeprior.model.build_model`; default: ``root`` for the
        files below it, else each file's folder).

    Returns
    -------
    model : ShapeModel
        The grown model.
    report : dict
        ``added``, ``skipped`` (duplicates), ``rejected`` (with reasons),
        ``model_version``, ``n_shapes`` and timings.

    Raises
    ------
    ValueError
        No new shape could be added (all duplicates or refused).
    """
    t0 = time.perf_counter()
    params = params or params_from_model(model)
    files = [Path(f) for f in label_files]
    if not files:
        raise ValueError("no label maps given")
    root = Path(root) if root else Path(files[0]).parent
    names = [case_name(f, root) for f in files] if names is None else list(names)
    todo, skipped = new_label_maps(model, files, names)
    pairs, unpaired = None, []
    if params.with_images and todo:
        if model.profile is None:
            raise ValueError("the model has no boundary appearance; images cannot update it")
        pairs, paired = {}, []
        root_of = dict(zip(files, roots)) if roots is not None else {}
        for f, name, h in todo:   # each file pairs from its own folder unless under root
            r = root_of.get(f) or (root if f.resolve().is_relative_to(root.resolve())
                                   else f.parent)
            r = Path(r)
            try:
                pairs.update(pair_images([f], r, params.images_dir, params.allow_no_orientation,
                                         params.image_name))
                paired.append((f, name, h))
            except ValueError as exc:   # no image, or not on the label map's grid
                why = str(exc)
                if find_image_for(f, r, params.images_dir, params.image_name) is None:
                    why = (f"no image in {images_place(params.images_dir, params.image_name)} "
                           f"({looked_for(f, r, params.images_dir, params.image_name)})")
                unpaired.append({"source": name, "stage": "image", "reason": why})
        todo = paired
    accepted, rejected = (correspond_to_model(model, todo, params, progress)
                          if todo else ([], []))
    rejected = unpaired + rejected
    if not accepted:
        why = "; ".join(f"{r['source']}: {r['reason']}" for r in (skipped + rejected)[:3])
        raise ValueError(f"no shape added ({len(skipped)} duplicates, {len(rejected)} refused"
                         + (f": {why})" if why else ")"))
    profiles, hu_shares, bg_shares = (_new_profiles(model, accepted, params, pairs) if pairs
                                      else (None, None, None))
    t_fit = time.perf_counter() - t0
    t1 = time.perf_counter()
    new = extend_model(
        model, np.stack([a["verts"] for a in accepted]),
        [f"{a['source']}:{a['side']}" for a in accepted], [a["sha256"] for a in accepted],
        fov_centres=[a["fov_centre"] for a in accepted], profiles=profiles, hu_shares=hu_shares,
        background_shares=bg_shares,
        summary={"n_skipped": len(skipped), "n_rejected": len(rejected),
                 "appearance_images": 0 if profiles is None else len(profiles)})
    t_update = time.perf_counter() - t1
    warnings = []
    if model.profile is not None and profiles is None:
        why = ("the new shapes are right-side organs mirrored onto the model's side, which "
               "do not sit on their images" if pairs else
               "no training image was given for the new label maps (update-model --images; "
               "the Python API: images=)")
        warnings.append(f"the boundary appearance (learned from {model.profile.n_images} "
                        f"images) was not updated: {why}")
    if model.voxels is not None:
        n = model.voxels.info.get("n_cases")
        warnings.append(
            "the voxel classifier stays as built" + (f" (learned from {n} images)" if n else "")
            + ": update-model does not retrain it; a rebuild with --images or --image-name "
            "does")
    report = {
        "model_version": new.metadata["lineage"]["model_version"],
        "n_shapes_before": model.n_shapes, "n_shapes": new.n_shapes,
        "added": [{"source": a["source"], "side": a["side"], "sha256": a["sha256"], **a["fit"]}
                  for a in accepted],
        "skipped": skipped, "rejected": rejected,
        "appearance_updated": profiles is not None,
        "warnings": warnings,
        "time_s": {"correspondence": t_fit, "update": t_update,
                   "total": time.perf_counter() - t0},
    }
    return new, report
