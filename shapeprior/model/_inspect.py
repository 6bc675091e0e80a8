"""Looking at a model: a summary of what it holds, and its shapes as meshes."""

from __future__ import annotations

import numpy as np

from ._model import ShapeModel


def model_summary(model: ShapeModel) -> dict:
    """What a model holds, for ``model-info``.

    Returns
    -------
    dict
        ``organ``, ``side`` (``mirrored`` models hold right-side organs
        mirrored onto the left), ``labels``, ``n_shapes``, ``n_vertices``,
        ``n_faces``, ``coordinates``; ``pca`` (modes, explained variance of the
        first ten and their cumulative sum, sd of the first modes in mm);
        ``dictionary`` (learned atoms); ``appearance`` (profile samples and
        normalisation, or None); ``voxel_classifier`` (trees, training cases and
        voxels, or None); ``surface_offset`` (the calibrated outward offset of
        the final surface, mm, and the training Dice without and with it, or
        None); ``pose`` (training scale range, offset from the
        FOV centre in LPS mm); ``provenance`` (versions, template, number of
        source files and rejected ones); ``lineage`` (model version, shapes
        added per version with when and by which shapeprior, online updates).
        Training file names and folders are not listed (``images_dir`` becomes
        True/False): they may name patients.
    """
    from ._lineage import lineage_of

    meta = model.metadata
    params = meta.get("parameters") or {}
    var = np.asarray(model.pca_variances, dtype=float)
    frac = var / var.sum() if var.size and var.sum() > 0 else var
    prof = model.profile
    pose = model.pose
    lin = lineage_of(meta)
    per_version = {}
    for sh in lin["shapes"]:
        v = per_version.setdefault(int(sh.get("model_version") or 1), {
            "n_shapes": 0, "added": sh.get("added"), "shapeprior": sh.get("shapeprior")})
        v["n_shapes"] += 1
    return {
        "organ": meta.get("organ"), "side": meta.get("side"),
        "labels": params.get("labels"),
        "n_shapes": int(model.shapes.shape[0]), "n_vertices": model.n_vertices,
        "n_faces": int(len(model.faces)),
        "coordinates": meta.get("units", "mm (LPS)"),
        "pca": {"n_modes": int(var.size),
                "explained_variance": frac[:10].round(4).tolist(),
                "cumulative": np.cumsum(frac)[:10].round(4).tolist(),
                "sd_mm": np.sqrt(var[:10]).round(3).tolist()},
        "dictionary": None if model.atoms is None else {
            "n_atoms": int(model.atoms.shape[0]),
            "learning": meta.get("dictionary_learning")},
        "appearance": None if prof is None else {
            "normalisation": prof.normalisation, "n_images": prof.n_images,
            "profile_samples": 2 * int(prof.half) + 1, "step_mm": float(prof.step),
            "images_hounsfield_share": None if prof.hu_share_range is None
            else [round(float(x), 4) for x in prof.hu_share_range],
            "training_background_share_max": None if prof.background_share_max is None
            else round(float(prof.background_share_max), 4)},
        "voxel_classifier": None if model.voxels is None else {
            k: model.voxels.info.get(k) for k in ("n_trees", "n_cases", "n_voxels",
                                                  "displacement_sd_mm", "training_agreement")},
        "surface_offset": None if not isinstance(meta.get("surface_offset"), dict) else {
            k: meta["surface_offset"].get(k) for k in ("mm", "dice_at_0", "dice_at_offset",
                                                        "n_shapes")},
        "pose": None if pose is None else {
            "scale": float(pose.scale),
            "scale_range": None if pose.scale_range is None else list(pose.scale_range),
            "offset_from_fov_centre_lps_mm": np.asarray(pose.offset_from_fov_centre_mm)
            .round(2).tolist()},
        "provenance": {"format_version": meta.get("format_version"),
                       "versions": meta.get("versions"), "template": meta.get("template"),
                       "n_sources": len(meta.get("sources") or []),
                       "n_rejected": len(meta.get("rejected") or []),
                       "build_parameters": {k: (v is not None if k == "images_dir" else v)
                                            for k, v in params.items()}},
        "lineage": {"model_version": int(lin.get("model_version", 1)),
                    "created": lin.get("created"),
                    "hashed_shapes": sum(1 for sh in lin["shapes"] if sh.get("sha256")),
                    "versions": [{"model_version": k, **v}
                                 for k, v in sorted(per_version.items())],
                    "updates": [{k: u.get(k) for k in ("model_version", "when", "shapeprior",
                                                       "n_added", "n_skipped", "n_rejected")}
                                for u in lin.get("updates", [])]},
    }


def organ_labels(model: ShapeModel, kept=()) -> tuple:
    """The label values of the organ in the label maps the model was built from
    (``build-model --labels``; ``(1,)`` for a model that does not record them),
    less those in ``kept`` (labels a refinement keeps aside, KiTS' tumour) unless
    that leaves none: the default organ labels of a mask to refine, of an initial
    mask and of a reference."""
    values = tuple(int(v) for v in
                   (model.metadata.get("parameters") or {}).get("labels") or (1,))
    return tuple(v for v in values if v not in tuple(kept)) or values


def mode_shape(model: ShapeModel, mode: int, sd: float) -> np.ndarray:
    """The mean shape moved ``sd`` standard deviations along PCA ``mode``.

    Returns
    -------
    ndarray, shape (N, 3)
        Model frame, mm.
    """
    if not 0 <= mode < len(model.pca_variances):
        raise ValueError(f"mode={mode} must be in [0, {len(model.pca_variances)})")
    step = sd * np.sqrt(model.pca_variances[mode]) * model.pca_components[mode]
    return model.mean + step.reshape(-1, 3)


def vertex_sd(model: ShapeModel) -> np.ndarray:
    """RMS distance (mm) of each vertex from its mean position over the
    training shapes, shape (N,): where the organ varies."""
    d = np.linalg.norm(model.shapes - model.mean[None], axis=2)
    return np.sqrt(np.mean(d ** 2, axis=0))
