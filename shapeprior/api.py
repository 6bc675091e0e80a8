"""The Python API: read an image, build, load or grow a model, segment, refine an
existing mask, reconstruct a shape through the prior.

>>> import shapeprior as sp
>>> vol = sp.read_volume("ct.nii.gz")                 # or a DICOM series folder
>>> model = sp.load_model("kidney.npz")
>>> res = sp.segment(vol, model, side="left")         # no seed: searched in the FOV
>>> res.status, res.label.shape, res.verts.shape      # ('ok', (z, y, x), (N, 3) LPS mm)

Coordinates are LPS millimetres throughout (ITK/DICOM convention); arrays are
indexed (z, y, x). Everything here is a thin layer over the packages
``shapeprior.io``, ``shapeprior.model`` and ``shapeprior.segmentation``.
"""

from __future__ import annotations

from pathlib import Path


def read_volume(path, series=None, allow_no_orientation=False):
    """Read an image with exact geometry.

    Parameters
    ----------
    path : str or Path
        NIfTI (``.nii``, ``.nii.gz``, ``.hdr``/``.img``), NRRD, MetaImage, or a
        folder holding a DICOM series.
    series : int or str, optional
        Which series of a DICOM folder holding several (index or key).
    allow_no_orientation : bool
        Accept NIfTI/Analyze files that record no orientation.

    Returns
    -------
    Volume
        ``array`` (z, y, x); ``spacing`` (3,) mm, ``origin`` (3,) mm LPS,
        ``direction`` (3, 3) with the index axes as columns, in LPS.

    Raises
    ------
    shapeprior.io.ImageReadError
        A file that cannot be trusted (one line saying why).
    """
    from .io import read_image

    return read_image(path, series, allow_no_orientation)[0]


def load_model(path):
    """Load a model file written by :func:`build_model` or ``shapeprior build-model``.

    Returns
    -------
    ShapeModel
        ``shapes`` (M, N, 3) mm, ``mean`` (N, 3), ``faces`` (F, 3), PCA modes,
        appearance and pose prior; ``metadata`` with provenance.
    """
    from .model import load_model as _load

    return _load(path)


def _refuse_existing(output):
    """FileExistsError when anything (a file, a folder, a link) is at ``output``:
    the model functions never write over it."""
    if Path(output).exists() or Path(output).is_symlink():
        raise FileExistsError(f"{output} exists; choose a new model file")


def build_model(labels, output=None, *, images=None, progress=False, **params):
    """Build a shape model from label maps.

    Parameters
    ----------
    labels : str, Path or list of paths
        A folder of label maps (searched recursively; an nnU-Net/MSD dataset
        folder uses ``labelsTr``), or the label map files.
    output : str or Path, optional
        Write the model there (``.npz``); an existing file is not replaced.
    images : str or Path, optional
        Training images (see :class:`~shapeprior.model.BuildParams`
        ``images_dir``): learns the boundary appearance.
    progress : bool
        Show progress bars.
    **params
        Fields of :class:`~shapeprior.model.BuildParams` (``labels`` there is
        called ``label_values`` here), e.g. ``organ='kidney'``,
        ``n_vertices=642``, ``split_sides=True``. The template vertices,
        surface grid and smoothing not given follow the organ's size
        (:func:`~shapeprior.model._build.resolve_resolution`; the report's
        ``resolution`` says what was chosen).

    Returns
    -------
    model : ShapeModel
    report : dict
        Per-shape correspondence quality and rejected inputs with reasons.
    """
    from .model import BuildParams, find_label_maps, label_root, save_model
    from .model import build_model as _build

    if "label_values" in params:
        params["labels"] = tuple(params.pop("label_values"))
    if isinstance(labels, (str, Path)):
        files, root = find_label_maps(labels), label_root(labels)
    else:
        files = [Path(f) for f in labels]
        root = None
    bp = BuildParams(images_dir=None if images is None else str(images), **params)
    if output is not None:
        _refuse_existing(output)
    model, report = _build(files, bp, root=root, progress=progress)
    if output is not None:
        _refuse_existing(output)        # appeared meanwhile
        save_model(model, output)
    return model, report


def _volume(image, series=None, name="image", read=None):
    """``image`` as a :class:`~shapeprior.io.Volume`: itself, checked as a reader
    checks what it returns (:meth:`~shapeprior.io.Volume.check`: one made by hand
    may hold anything), or read from its path (by ``read``, default
    :func:`read_volume`). Anything else is refused naming ``name``: a bare array
    has no spacing, origin or direction."""
    import os

    from .io import Volume

    if isinstance(image, Volume):
        return image.check(name)
    if not isinstance(image, (str, bytes, os.PathLike)):
        raise TypeError(
            f"{name} must be a Volume (shapeprior.read_volume) or a path to one, got "
            f"{type(image).__name__}" + (
                ": an array has no spacing, origin or direction; wrap it as "
                "shapeprior.Volume(array, spacing, origin, direction) with (z, y, x) axes "
                "and LPS mm" if hasattr(image, "shape") else ""))
    return read_volume(image, series) if read is None else read(image)


def segment(image, model, *, seed=None, seed_space="lps", side="none", init=None, **params):
    """Segment an organ with the SSC shape prior.

    Parameters
    ----------
    image : Volume or str or Path
        The scan, or a path for :func:`read_volume`. A Volume made by hand is
        checked as a file is (:meth:`~shapeprior.io.Volume.check`).
    model : ShapeModel or str or Path
    seed : array-like of 3 float, optional
        Organ centre in ``seed_space`` ('lps' mm, 'ras' mm or 'voxel' i, j, k);
        without one the organ is searched for in the whole field of view.
    side : {'none', 'left', 'right', 'both'}
        Side of a paired organ ('none': both sides fitted, the better kept;
        'both': both kept, a :class:`~shapeprior.segmentation.PairedSegmentResult`).
    init : ndarray, shape (N, 3), optional
        A starting surface in correspondence with the model (LPS mm), e.g.
        ``refine(...).fit.verts``; with side 'both' a dict ``{'left': surface,
        'right': surface}`` (either may be missing: that side is searched for).
    **params
        Fields of :class:`~shapeprior.segmentation.SegmentParams`, e.g.
        ``method='l0'``, ``placement='prior'``.

    Returns
    -------
    SegmentResult
        ``label`` (uint8, the image's (z, y, x) grid), ``verts`` (N, 3) LPS mm
        and ``faces``; ``status`` ('ok', 'suspect', 'failed') with ``quality``,
        ``reasons`` and ``evidence``; per vertex ``error_mm`` (gross error |e|),
        ``overridden`` and ``confidence``. With side 'both':
        :class:`~shapeprior.segmentation.PairedSegmentResult`, ``label`` of
        both sides, each side's SegmentResult in ``sides``, ``status`` from
        both (a side not found is left out of the label: ``suspect``).
        A failed result's ``label`` is its fit (possibly on another structure):
        check ``status`` before using it. The files ``shapeprior segment``
        writes for a failed result hold no organ (the fit stays in the mesh).
    """
    from .segmentation import SegmentParams, segment_volume

    if not hasattr(model, "shapes"):
        model = load_model(model)
    p = SegmentParams(seed_mm=None if seed is None else tuple(float(v) for v in seed),
                      seed_space=seed_space, side=side, **params)
    return segment_volume(_volume(image), model, p, init=init)


def refine(mask, model, *, labels=None, image=None, keep=(), **params):
    """Refine an existing segmentation (any tool's) with the shape prior.

    Parameters
    ----------
    mask : Volume or str or Path
        Label map (a Volume made by hand is checked as a file is).
    model : ShapeModel or str or Path
    labels : tuple of int, optional
        Labels of the organ in ``mask``; default: the labels the model was built
        from (:func:`~shapeprior.model.organ_labels`), less ``keep``.
    image : Volume or str or Path, optional
        The scan: continue the fit against its boundary appearance, fill
        the enclosed holes that have the organ's own intensity (a cavity that
        differs, such as sinus fat, is kept; ``fit.evidence["cavities"]``),
        and undo runs of identical slices the scan shows to be inserted rather
        than copied (``fit.evidence["inserted_slices"]``).
    keep : tuple of int
        Labels fitted as part of the organ but never removed, kept with their
        own value (a lesion the model does not know: KiTS tumour label 2).
    **params
        Fields of :class:`~shapeprior.segmentation.SegmentParams`.

    Returns
    -------
    RefineResult or PairedRefineResult
        ``label`` (uint8, on the mask's grid), ``fit`` (the final
        :class:`~shapeprior.segmentation.SegmentResult`, with what the prior
        overrode) and ``corrections`` (regions removed and added, ml). A mask
        holding both sides of a paired organ (a KiTS-style map, both kidneys
        under one label) refined with a model of one side (``build-model
        --split-sides``) gives a
        :class:`~shapeprior.segmentation.PairedRefineResult`: ``label`` and
        ``corrections`` of both, and ``sides`` (each side's RefineResult;
        None for a side kept as given because ``side`` named the other).
    """
    from .io import Volume, as_label_map, read_label_map
    from .segmentation import SegmentParams, refine_mask, refine_paired

    if not hasattr(model, "shapes"):
        model = load_model(model)
    mvol = _volume(mask, name="mask", read=read_label_map)
    if isinstance(mask, Volume):        # a hand-made one: checked as a read label map is
        mvol = as_label_map(mvol, "mask")
    img = None if image is None else _volume(image)
    p = SegmentParams(**params)
    if labels is None:
        from .model import organ_labels

        labels = organ_labels(model, keep)
    return refine_paired(mvol, model, tuple(labels), p, img, keep=tuple(keep)) or \
        refine_mask(mvol, model, tuple(labels), p, img, keep=tuple(keep))


def reconstruct(shape, model, *, weights=None, prior="auto", method="auto", side="auto",
                **options):
    """The shape prior's explanation of one shape in correspondence: SSC with
    its gross errors, in the shape's own frame.

    Parameters
    ----------
    shape : array_like, shape (N, 3)
        Vertices in correspondence with ``model`` (vertex i is the model's
        vertex i), any frame, mm.
    model : ShapeModel or str or Path
    weights : array_like, shape (N,), optional
        Per-vertex confidence S (0: missing).
    prior : {'auto', 'shapes', 'dictionary'}
        Compose from the training shapes or the learned dictionary (see
        ``ShapeModel.resolve_prior``).
    method : {'auto', 'hybrid', 'l1', 'l0'}
        'hybrid': a robust first solve finds the gross errors, then SSC-L1 fits
        the inliers (:func:`~shapeprior.ssc.solver_options`). Composing from the
        training shapes, the first solve is trimmed OMP (L0) and the refit uses
        ``refit`` (default 0.03) times the automatic lambda1: the most accurate
        on held-out KiTS kidneys, chosen on their tuning split. Composing from a
        learned dictionary, the first solve is SSC-L1 with 30 times the default
        weight on x and the refit uses ``refit`` (default 0.01) times its
        lambda1: chosen on the tuning halves of AdrenalMNIST3D and KiTS
        (``bench/README.md``). 'l1' and 'l0': one solver alone (with
        ``refit``, its inliers fitted again). 'auto' (default): the hybrid.
    side : {'auto', 'left', 'right'}
        A model of one side of a paired organ (``build-model --split-sides``:
        right organs mirrored onto the left) explains the other side's shapes
        only mirrored: the shape's side, or 'auto' (default): solved as given
        and mirrored, the closer kept (:func:`~shapeprior.segmentation.solve_sides`;
        ``info['side']`` and ``info['mirrored']`` say which). Other models: 'auto'.
    **options
        Passed to :func:`~shapeprior.ssc.sparse_shape_composition` (e.g.
        ``refit``, ``lambda1``, ``max_align_iter``).

    Returns
    -------
    SSCResult
        ``reconstruction`` (N, 3) in the input's frame, ``error_norm`` (N,) mm,
        ``overridden`` (N,) bool, ``transform`` (input -> model frame).
    """
    import numpy as np

    from .segmentation import solve_sides
    from .ssc import solver_options, sparse_shape_composition

    if not hasattr(model, "shapes"):
        model = load_model(model)
    solver = solver_options(method, options.pop("refit", None), model.resolve_prior(prior),
                            options.pop("alpha1", None))
    dic = model.prior_dictionary(prior)
    shape = np.asarray(shape, dtype=float)
    if shape.ndim != 2:
        raise ValueError(f"shape has shape {shape.shape}; expected (N, 3) vertices")
    return solve_sides(shape[None], model, side, lambda a, w: [
        sparse_shape_composition(y, dic, w, **solver, **options) for y in a], weights)[0][0]


def reconstruct_many(shapes, model, *, weights=None, prior="auto", method="auto", n_jobs=1,
                     progress=False, client=None, side="auto", **options):
    """:func:`reconstruct` for many shapes in correspondence (a population study).

    Parameters
    ----------
    shapes : array_like, shape (M, N, 3), or a sequence of M arrays (N, 3)
        Vertices in correspondence with ``model``, each in any frame, mm.
    model : ShapeModel or str or Path
    weights : array_like, shape (N,) or (M, N), optional
        Per-vertex confidence (0: missing): one vector for all shapes or one
        row per shape.
    prior : {'auto', 'shapes', 'dictionary'}
    method : {'auto', 'hybrid', 'l1', 'l0'}
        As in :func:`reconstruct` (default 'auto').
    n_jobs : int
        Parallel workers (-1: every core): threads of this process, or worker
        processes with ``executor='processes'`` (passed on in ``options``);
        each shape's result is the same whatever the number (to rounding).
    progress : bool
        A progress bar over shapes.
    client : dask.distributed.Client, optional
        Solve on a dask cluster instead of this machine.
    side : {'auto', 'left', 'right'}
        As in :func:`reconstruct` ('auto' solves each shape of a paired
        organ's model twice).
    **options
        Passed to :func:`~shapeprior.ssc.sparse_shape_composition` (e.g.
        ``refit``).

    Returns
    -------
    list of SSCResult
        One per shape, in order: ``reconstruction`` (N, 3) in that shape's
        frame, ``error_norm`` (N,) mm, ``overridden`` (N,) bool, ``x`` (K,),
        ``transform``.
    """
    import numpy as np

    from .segmentation import solve_sides
    from .ssc import solver_options, sparse_shape_composition_many

    if not hasattr(model, "shapes"):
        model = load_model(model)
    solver = solver_options(method, options.pop("refit", None), model.resolve_prior(prior),
                            options.pop("alpha1", None))
    dic = model.prior_dictionary(prior)
    if isinstance(shapes, (list, tuple)):
        shapes = [np.asarray(s, dtype=float) for s in shapes]
        if len({s.shape for s in shapes}) > 1:      # the solver names the bad one
            return sparse_shape_composition_many(shapes, dic, weights, **solver, **options)
    elif np.ndim(shapes) == 2:
        raise ValueError(f"shapes has shape {np.shape(shapes)}: expected (M, "
                         f"{model.n_vertices}, 3), many shapes; for one, use reconstruct "
                         "(or shapes[None])")
    return [r for r, _, _ in solve_sides(
        np.asarray(shapes, dtype=float), model, side,
        lambda a, w: sparse_shape_composition_many(a, dic, w, **solver, n_jobs=n_jobs,
                                                   progress=progress, client=client,
                                                   **options), weights)]


def update_model(model, labels, output=None, *, images=None, progress=False, **params):
    """Add confirmed label maps to a model without rebuilding it.

    Parameters
    ----------
    model : ShapeModel or str or Path
        Left unchanged.
    labels : str or Path or sequence of them
        A folder of label maps, or label map files.
    output : str or Path, optional
        Also write the new model there, atomically. An existing file there is
        never replaced (``FileExistsError``; ``ValueError`` when it is the input
        model), checked before the label maps are read.
    images : str or Path, optional
        The new label maps' images (a folder, as for :func:`build_model`): the
        boundary appearance learns from them too. Without them it is not
        updated, and the report's ``warnings`` say so.
    progress : bool
    **params
        Overrides of the model's build settings (``label_values`` for the organ's
        label values, ``n_jobs``, ...; see
        :func:`shapeprior.model.params_from_model`).

    Returns
    -------
    model : ShapeModel
        The grown model: the old shapes unchanged, the new ones appended;
        ``metadata['lineage']`` records each shape's content hash, when it was
        added and the model version.
    report : dict
        Added, skipped (duplicates) and refused label maps with reasons;
        ``warnings``: what was not updated (the appearance without ``images``;
        the voxel classifier, which only a rebuild retrains).
    """
    from .model import (find_label_maps, label_root, params_from_model, save_model,
                        update_model as _update)

    if "label_values" in params:
        params["labels"] = tuple(params.pop("label_values"))
    if images is not None:
        params["images_dir"] = str(images)
    src = model if isinstance(model, (str, Path)) else None
    if output is not None:      # checked before the slow stages; never overwritten
        if src is not None and Path(output).resolve() == Path(src).resolve():
            raise ValueError(f"output={output} is the input model; choose another path")
        _refuse_existing(output)
    if src is not None:
        model = load_model(src)
    if isinstance(labels, (str, Path)) and Path(labels).is_dir():
        root, files = label_root(labels), find_label_maps(labels)
    else:
        files = [Path(labels)] if isinstance(labels, (str, Path)) else [Path(f) for f in labels]
        root = None
    new, report = _update(model, files, params_from_model(model, **params), root=root,
                          progress=progress)
    if output is not None:
        _refuse_existing(output)        # appeared meanwhile
        save_model(new, output)
    return new, report


__all__ = ["read_volume", "load_model", "build_model", "segment", "refine", "reconstruct",
           "reconstruct_many", "update_model"]
