"""Build a shape model from a folder of label maps.

Pipeline per label map: read (SimpleITK, exact geometry) -> organ masks
(kidneys split by connected component and side, tumour included) ->
surface (marching cubes, physical mm) -> optional mirroring of right-side
organs onto the left -> template fit (pass 1: icosphere; pass 2: the pass-1
mean shape as template, for anatomically consistent correspondence) ->
quality check (failed fits are reported and left out) -> GPA -> PCA and
optional learned dictionary.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from .._provenance import package_versions
from ..align import generalized_procrustes
from ..correspond import fit_template
from ..io import VOLUME_SUFFIXES, edge_name, image_sha256, read_label_map, volume_suffix
from ..mesh import (Surface, crop_to_labels, icosphere, kidney_masks, label_mask,
                    level_for_vertices, mask_to_surface)
from ._calibrate import MAX_SHAPES, choose_offset, offset_dice, offset_grid
from ._lineage import new_lineage
from ._model import ShapeModel, pca_from_shapes, total_variance
from ._pose import fit_pose_prior


@dataclass
class BuildParams:
    """Settings of :func:`build_model` (checked on construction).

    Parameters
    ----------
    labels : tuple of int
        Label values of the organ (merged), each > 0.
    organ : str
        Organ name stored in the model (and coded in DICOM-SEG output).
    split_sides : bool
        A paired organ under one label (KiTS kidneys): split by connected
        component and side.
    side : {'both', 'left', 'right'}
        With ``split_sides``: the sides kept.
    mirror_right : bool
        Mirror right-side organs onto the left (LPS x -> -x), so one model
        serves both sides.
    n_vertices : int or None
        Template vertices (icosphere: 162, 642, 2562, 10242).
    iso_spacing, smooth_mm : float or None
        Surface extraction grid and Gaussian smoothing, mm. Any of these three
        left None is chosen by the organ's size (:func:`resolve_resolution`):
        2562 / 1.5 / 1.5, or 642 / 0.5 / 0.75 for a small organ.
    n_iter : int
        Correspondence (template fit) iterations.
    template_shapes : int
        Shapes fitted in pass 1 (icosphere -> the provisional mean that is the
        template of pass 2), evenly spread over the inputs; 0: every shape.
        Pass 1 is about half the fitting time. On the 180 KiTS maps a sample
        of 32 built 2.2x faster; the median fit distance was 0.37 mm (0.36 mm
        for a default build of 144 maps) and pass 2's check kept 348 shapes
        instead of 352
        (``bench/results/build.json``).
    n_atoms, n_nonzero : int
        Learned dictionary size (0: none, else >= 2) and learned atoms per shape.
    dictionary_kind : {'deviations', 'shapes'}
        What the atoms code: the aligned shapes themselves (default), or the
        unit mean shape and K-SVD atoms of the deviations from it
        (:func:`~shapeprior.model.learn_shape_dictionary`).
    seed : int
        Random state of the dictionary learning.
    n_jobs : int
        Worker processes.
    images_dir : str or None
        Training images (same relative path or file name, or the nnU-Net
        ``X_0000`` name, or an nnU-Net dataset folder): learn boundary appearance.
    image_name : str or None
        Each label map's image is the file of this name (or the one match of this
        pattern) in its case folder, the first folder of its path below its root
        (``s0011/segmentations/kidney_left.nii.gz`` -> ``s0011/ct.nii.gz``): in that
        folder itself, or in ``images_dir/<case folder>/``. Learns appearance too.
    profile_step, profile_half : float, int
        Appearance profiles: sample step (mm) and samples on each side.
    normalisation : {'percentile', 'ct'}
        Intensity scale of the appearance (MR percentiles, or CT HU).
    voxel_classifier : bool
        With ``images_dir``: also learn the classifier that decides the voxels
        next to a fitted surface (:class:`~shapeprior.appearance.VoxelClassifier`;
        needs scikit-learn).
    allow_no_orientation : bool
        Accept NIfTI/Analyze label maps that record no orientation.
    exclude_cut : bool
        Reject organs cut by their scan's field of view (they reach its first
        or last slice, row or column; :func:`cut_by_fov`): their surface is
        closed at the scan's edge, not the organ's. Kept by default, and listed
        in the build report's ``cut_by_fov`` either way.
    """

    labels: tuple = (1,)
    organ: str = "organ"
    split_sides: bool = False       # KiTS-style: both kidneys under one label
    side: str = "both"              # with split_sides: 'left', 'right' or 'both'
    mirror_right: bool = True       # map right organs onto the left (x -> -x)
    n_vertices: int | None = None   # None: by the organ's size (resolve_resolution)
    iso_spacing: float | None = None
    smooth_mm: float | None = None
    n_iter: int = 80
    template_shapes: int = 0        # pass-1 shapes for the template (0: all)
    n_atoms: int = 0                # learned dictionary size (0: none)
    n_nonzero: int = 5
    dictionary_kind: str = "shapes"
    seed: int = 0
    n_jobs: int = 1
    images_dir: str | None = None   # training images (same relative path or file name)
    image_name: str | None = None   # or each one's file of this name in its case folder
    profile_step: float = 0.75
    profile_half: int = 4
    normalisation: str = "percentile"   # 'percentile' (MR) or 'ct' (HU)
    voxel_classifier: bool = True   # with images: learn the boundary-voxel classifier
    allow_no_orientation: bool = False  # accept NIfTI/Analyze without q/sform
    exclude_cut: bool = False       # reject organs cut by the scan's field of view

    def __post_init__(self):
        from .._validation import check_bool, check_choice, check_labels, check_number

        self.labels = check_labels("labels", self.labels)
        if not isinstance(self.organ, str) or not self.organ:
            raise ValueError(f"organ={self.organ!r} is invalid: expected a non-empty text")
        self.split_sides = check_bool("split_sides", self.split_sides)
        check_choice("side", self.side, ("both", "left", "right"))
        self.mirror_right = check_bool("mirror_right", self.mirror_right)
        if self.n_vertices is not None:
            self.n_vertices = check_number("n_vertices", self.n_vertices, 12, integer=True)
        if self.iso_spacing is not None:
            self.iso_spacing = check_number("iso_spacing", self.iso_spacing, 0, low_open=True)
        if self.smooth_mm is not None:
            self.smooth_mm = check_number("smooth_mm", self.smooth_mm, 0)
        self.n_iter = check_number("n_iter", self.n_iter, 1, integer=True)
        self.template_shapes = check_number("template_shapes", self.template_shapes, 0,
                                            integer=True)
        if 0 < self.template_shapes < 3:
            raise ValueError(f"template_shapes={self.template_shapes} is invalid: expected 0 "
                             "(every shape) or at least 3")
        self.n_atoms = check_number("n_atoms", self.n_atoms, 0, integer=True)
        if self.n_atoms == 1:
            raise ValueError("n_atoms=1 is invalid: expected 0 (no dictionary) or at least 2 "
                             "(the mean and one learned atom)")
        self.n_nonzero = check_number("n_nonzero", self.n_nonzero, 1, integer=True)
        from ._dictlearn import DICTIONARY_KINDS

        check_choice("dictionary_kind", self.dictionary_kind, DICTIONARY_KINDS)
        self.seed = check_number("seed", self.seed, 0, integer=True)
        self.n_jobs = check_number("n_jobs", self.n_jobs, 1, integer=True)
        self.profile_step = check_number("profile_step", self.profile_step, 0, low_open=True)
        self.profile_half = check_number("profile_half", self.profile_half, 1, integer=True)
        check_choice("normalisation", self.normalisation, ("percentile", "ct"))
        self.allow_no_orientation = check_bool("allow_no_orientation",
                                               self.allow_no_orientation)
        self.exclude_cut = check_bool("exclude_cut", self.exclude_cut)
        self.voxel_classifier = check_bool("voxel_classifier", self.voxel_classifier)
        if self.image_name is not None and (
                not isinstance(self.image_name, str) or not self.image_name
                or Path(self.image_name).name != self.image_name
                or self.image_name in (".", "..")):
            raise ValueError(f"image_name={self.image_name!r} is invalid: expected a file "
                             "name (or a pattern) without a folder part, e.g. ct.nii.gz")

    @property
    def with_images(self) -> bool:
        """Whether training images are given (``images_dir`` or ``image_name``)."""
        return bool(self.images_dir or self.image_name)


#: an organ whose RMS radius (median of the first label maps) is below this (mm)
#: is small: MSD hippocampus 12-14 mm, KiTS19 kidneys 31-36 mm
SMALL_ORGAN_MM = 20.0
#: (template vertices, surface grid mm, smoothing mm) by organ size. The default
#: is the KiTS19 kidney's (every kidney benchmark). The small organ's was chosen on
#: the hippocampus validation split (cases 1 mod 5, model from 2-4 mod 5; Dice mean
#: / min, bench/results/hippocampus_resolution.json): 642 / 0.5 / 0.75 0.9017 /
#: 0.8459; 2562 / 0.5 / 0.75 0.8973 / 0.8177 (117 of 133 shapes kept, 0.86 against
#: 0.58 s per case); at the default 2562 / 1.5 / 1.5 every shape was rejected (its
#: 1.5 mm surfaces of ~950 vertices are coarser than the template: faces flipped)
RESOLUTIONS = {"default": (2562, 1.5, 1.5), "small": (642, 0.5, 0.75)}
#: label maps read to measure the organ's size, at most; reading stops as soon as
#: their median radius lies more than SIZE_MARGIN (a fraction of SMALL_ORGAN_MM)
#: from the threshold (the first map of KiTS19 or the MSD hippocampus: 0.7 s for
#: a KiTS map instead of 2.1 s for three)
SIZE_MAPS = 3
SIZE_MARGIN = 0.25


def resolve_resolution(params, files):
    """``params`` with the template vertices, surface grid and smoothing left
    None chosen by the organ's size, and a record of the choice (None when all
    three were given).

    The size is the median :func:`organ_radius` of the organs in the first
    :data:`SIZE_MAPS` label maps that can be read (a map that cannot is
    reported by the build itself; fewer maps when the first are clearly on
    one side, :data:`SIZE_MARGIN`): below :data:`SMALL_ORGAN_MM` the organ is
    small (:data:`RESOLUTIONS`)."""
    from dataclasses import replace

    if None not in (params.n_vertices, params.iso_spacing, params.smooth_mm):
        return params, None
    radii = []
    for f in files:
        if len(radii) >= SIZE_MAPS or (radii and abs(np.median(radii) - SMALL_ORGAN_MM)
                                       > SIZE_MARGIN * SMALL_ORGAN_MM):
            break
        try:
            vol, masks, _, _ = organ_masks(f, params)
        except (ValueError, OSError):
            continue
        radii.append(float(np.median([organ_radius(vol, m) for m in masks.values()])))
    r = float(np.median(radii)) if radii else None
    size = "small" if r is not None and r < SMALL_ORGAN_MM else "default"
    n, iso, smooth = RESOLUTIONS[size]
    chosen = replace(params, n_vertices=n if params.n_vertices is None else params.n_vertices,
                     iso_spacing=iso if params.iso_spacing is None else params.iso_spacing,
                     smooth_mm=smooth if params.smooth_mm is None else params.smooth_mm)
    return chosen, {"organ_rms_radius_mm": None if r is None else round(r, 2),
                    "label_maps_measured": len(radii), "organ_size": size,
                    "small_below_mm": SMALL_ORGAN_MM, "n_vertices": chosen.n_vertices,
                    "iso_spacing": chosen.iso_spacing, "smooth_mm": chosen.smooth_mm,
                    "given": [k for k in ("n_vertices", "iso_spacing", "smooth_mm")
                              if getattr(params, k) is not None]}


def find_label_maps(folder):
    """Label map files below ``folder``, sorted.

    Layouts: any tree of label maps (KiTS ``case_*/segmentation.nii.gz`` too);
    an nnU-Net / Medical Segmentation Decathlon dataset folder, whose label
    maps are in ``labelsTr`` (the images in ``imagesTr`` are not label maps).
    Hidden files and folders (``._X.nii.gz`` in the MSD archives) are skipped.
    """
    root = label_root(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    # hidden files are skipped: the MSD archives carry macOS "._X.nii.gz" companions
    files = sorted(p for p in root.rglob("*") if p.is_file() and volume_suffix(p.name)
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise ValueError(f"no label maps ({', '.join(VOLUME_SUFFIXES)}) found under {root}")
    return files


def _per_organ_files(files):
    """The name shared by the label maps of several ``segmentations/`` folders that
    each hold more than one (TotalSegmentator's data set: ``s0011/segmentations/``
    holds a file per organ), or None."""
    by_dir = {}
    for f in files:
        if f.parent.name.lower() == "segmentations":
            by_dir.setdefault(f.parent, []).append(f.name)
    many = [set(v) for v in by_dir.values() if len(v) > 1]
    if len(many) < 2:
        return None
    shared = sorted(set.intersection(*many))
    return shared[0] if shared else None


def _masks_in_case_folders(p, mask_name, prefix, skipped):
    """``[(file, case name, root)]``: ``mask_name`` in each visible subfolder of
    ``p`` (or its ``segmentations/``); the folders without it, or where the
    pattern matches several entries, in ``skipped`` as ``(folder, why)`` (``why``
    None: no such file)."""
    from ..io import in_case_folders

    if not p.is_dir():
        raise ValueError(f"--mask-name names the label map in each case folder of a folder; "
                         f"{p.name} is not a folder")
    out = []
    for d, f, err in in_case_folders(p, mask_name):
        if err is not None or f is None:    # which of several is the organ's is not guessed
            skipped.append((d, err))
        else:
            out.append((f, f"{p.name}/{d.name}" if prefix else d.name, p))
    if not out:
        many = sum(1 for d, why in skipped if why is not None and d.parent == p)
        raise ValueError(f"--mask-name {mask_name}: no case folder of {p.name} holds it (in "
                         "it or in its segmentations/)" + (
                             f"; in {many} of them several entries match it" if many else ""))
    return out


def label_map_inputs(paths, prefix_folders=False, mask_name=None, skipped=None):
    """Label map files from files and folders, each named and with its root.

    Parameters
    ----------
    paths : sequence of str or Path
        Label map files and folders of them (searched as :func:`find_label_maps`).
    prefix_folders : bool
        Name a folder's label maps with the folder's name first
        (``new_cases/case_00001/segmentation``); also whenever several paths are given.
    mask_name : str, optional
        Each path is a folder of case folders, and each case's label map is the
        file of this name (or the one match of this pattern) in its folder or its
        ``segmentations/`` (TotalSegmentator's data set: ``kidney_left.nii.gz``;
        KiTS19's: ``segmentation.nii.gz``), named by its case folder, the folder
        given its root (where ``BuildParams.image_name`` looks for its image).
    skipped : list, optional
        With ``mask_name``: receives ``(case folder, why)`` of the case folders
        skipped: ``why`` None where it holds no such file, else why it is not
        taken (a pattern that matches several entries).

    Returns
    -------
    list of (Path, str, Path)
        ``(file, case name, root)``: the root is the folder its image's
        relative path is taken from (a folder's label root; for files given
        one by one, their common folder). A file given twice
        (itself and within a folder) is listed once. Names are unique: where
        two would be the same (``segmentation`` of two case folders), every
        name is the file's path below the files' common folder.

    Raises
    ------
    FileNotFoundError, ValueError
        A path that is neither a file nor a folder (named), a folder without
        label maps, or, without ``mask_name``, a folder of case folders whose
        ``segmentations/`` hold a file per organ (TotalSegmentator's).
    """
    from ..io import check_mask_name, input_path_error

    paths = [Path(p) for p in paths]
    prefix = prefix_folders or len(paths) > 1
    for p in paths:
        if not (p.is_dir() or p.is_file()):
            raise input_path_error(p, str(p))
    if mask_name is not None:
        check_mask_name(mask_name)
        skipped = [] if skipped is None else skipped
        out = [item for p in paths for item in _masks_in_case_folders(p, mask_name, prefix,
                                                                       skipped)]
        return out
    # files given one by one (a shell's case_*/segmentation.nii.gz): their images are
    # looked for from their common folder, as for the files of a folder
    parents = [os.path.abspath(p.parent) for p in paths if p.is_file()]
    file_root = Path(os.path.commonpath(parents)) if parents else None
    out, seen = [], set()
    for p in paths:
        if p.is_dir():
            root = label_root(p)
            maps = find_label_maps(p)
            organ_file = _per_organ_files(maps)
            if organ_file is not None:
                raise ValueError(f"{p.name} holds case folders whose segmentations/ hold a "
                                 "file per organ (TotalSegmentator's data set): name the "
                                 f"organ's file with --mask-name, e.g. --mask-name {organ_file} "
                                 "(and each case's scan with --image-name, e.g. ct.nii.gz)")
            found = [(f, f"{p.name}/{case_name(f, root)}" if prefix else case_name(f, root), root)
                     for f in maps]
        else:
            found = [(p, case_name(p, p.parent), file_root)]
        for item in found:
            key = os.path.realpath(item[0])
            if key not in seen:
                seen.add(key)
                out.append(item)
    if len({n for _, n, _ in out}) < len(out):    # distinct files: distinct paths below
        common = Path(os.path.commonpath([os.path.abspath(f) for f, _, _ in out]))
        out = [(f, case_name(Path(os.path.abspath(f)), common), r) for f, _, r in out]
    return out


def case_name(path: Path, root: Path) -> str:
    """A label map's case name: its path below ``root`` without the image suffix."""
    rel = Path(path).relative_to(root)
    name = str(rel)
    suf = volume_suffix(name)
    return name[: len(name) - len(suf)]


#: with ``strict_components``: a second component holding at least this fraction
#: of the largest one's voxels makes the mask ambiguous (refused)
STRAY_COMPONENT = 0.1


def organ_radius(vol, mask, max_points=20000):
    """RMS distance (mm) of the organ's voxel centres from their centroid: its size,
    from the mask alone (any orientation)."""
    idx = np.argwhere(mask)
    if len(idx) > max_points:
        idx = idx[:: len(idx) // max_points + 1]
    return rms_radius(vol.index_to_physical(idx[:, ::-1].astype(float)))


def rms_radius(points) -> float:
    """RMS distance (mm) of points (P, 3) from their centroid."""
    p = np.asarray(points, dtype=float)
    return float(np.sqrt(np.mean(np.sum((p - p.mean(0)) ** 2, axis=1))))


def cut_by_fov(full, crop, mask):
    """Where the organ ``mask`` (on ``crop``, a box of the grid ``full``)
    reaches the edge of the scan's field of view: text naming each edge, its
    plane and voxel count (e.g. "the scan's superior edge (i = 49): 77 voxels"),
    or None when the whole organ lies inside. An organ cut by the edge is not
    the organ's shape."""
    off = np.rint(full.physical_to_index(crop.origin[None])[0][::-1]).astype(int)
    size = np.array(full.array.shape)
    cut = []
    for ax in range(3):                     # array axis (k, j, i); index axis 2 - ax
        for end, last in ((0, False), (-1, True)):
            at = off[ax] + mask.shape[ax] - 1 if last else off[ax]
            if at != (size[ax] - 1 if last else 0):
                continue
            n = int(np.count_nonzero(mask.take(end, axis=ax)))
            if n:
                side = edge_name(full.direction, 2 - ax, last)
                cut.append(f"the scan's {side} edge ({'ijk'[2 - ax]} = {at}): {n} voxels")
    return "; ".join(cut) or None


def organ_masks(path, params: BuildParams, strict_components=False):
    """``(volume, {side: mask}, fov_centre, {side: cut})`` of one label map as
    the build sees the organ: the volume cropped to the labels' box, a mask per
    side kept (``split_sides``) or the largest component, the whole scan's FOV
    centre, and where each side's organ is cut by the field of view
    (:func:`cut_by_fov`; None: not cut). ``strict_components``: see
    :func:`surfaces_from_label_map`."""
    vol, masks, centre, full = _organ_masks(path, params, strict_components)
    return vol, masks, centre, {k: cut_by_fov(full, vol, m) for k, m in masks.items()}


def _organ_masks(path, params, strict_components):
    full = read_label_map(path, params.allow_no_orientation)
    centre = full.centre()
    # everything below works on the organ's bounding box (same physical
    # positions): on a whole CT grid each pass over the voxels costs ~0.1 s
    vol = crop_to_labels(full, params.labels)
    if params.split_sides:
        masks = kidney_masks(vol, params.labels, fov_centre=centre)
        if params.side != "both":
            masks = {k: v for k, v in masks.items() if k == params.side}
        return vol, masks, centre, full
    from scipy import ndimage

    m = label_mask(vol, params.labels)
    lab, n = ndimage.label(m, structure=np.ones((3, 3, 3)))
    if n > 1:  # keep the largest component
        sizes = np.bincount(lab.ravel())[1:]
        order = np.argsort(-sizes)
        if strict_components and sizes[order[1]] >= STRAY_COMPONENT * sizes[order[0]]:
            raise ValueError(f"the organ is in {n} pieces (the second has "
                             f"{sizes[order[1]] / sizes[order[0]]:.0%} of the largest's "
                             "voxels); one connected organ expected")
        m = lab == (int(order[0]) + 1)
    return vol, {"none": m}, centre, full


def surfaces_from_label_map(path, params: BuildParams, strict_components=False,
                            radius_range=None):
    """[(side, Surface, fov_centre, cut)] for one file (``cut``: where the organ
    is cut by the field of view, :func:`cut_by_fov`, or None); raises
    ValueError on bad content.

    Right-side organs mirrored onto the left come with a mirrored FOV centre.
    An organ in several pieces keeps its largest; with ``strict_components``
    a second piece of at least ``STRAY_COMPONENT`` of the largest, or an organ
    cut by the field of view, is refused instead (a confirmed case added to a
    model should be one whole organ). With
    ``radius_range`` (lo, hi) in mm, an organ whose :func:`organ_radius` lies
    outside is refused before its surface is extracted (wrong spacing, wrong
    organ: a ten times larger surface costs a thousand times more)."""
    vol, masks, centre, cuts = organ_masks(path, params, strict_components)
    out = []
    for side, m in masks.items():
        if strict_components and cuts[side]:
            raise ValueError(f"the {'' if side == 'none' else side + ' '}organ is cut by the "
                             f"scan's field of view (it reaches {cuts[side]}); a whole organ "
                             "expected")
        if radius_range is not None:
            r = organ_radius(vol, m)
            lo, hi = radius_range
            if not lo <= r <= hi:
                raise ValueError(f"the organ's size (RMS radius {r:.1f} mm) is outside what "
                                 f"the model's shapes support ({lo:.1f}-{hi:.1f} mm); wrong "
                                 "spacing or organ?")
        s = mask_to_surface(vol, m, params.iso_spacing, params.smooth_mm)
        c = centre
        if side == "right" and params.mirror_right:
            s = Surface(s.verts * np.array([-1.0, 1.0, 1.0]), s.faces[:, ::-1].copy())
            c = centre * np.array([-1.0, 1.0, 1.0])
        out.append((side, s, c, cuts[side]))
    return out


def label_root(folder) -> Path:
    """The folder that holds the label maps: ``folder/labelsTr`` for an
    nnU-Net / MSD dataset folder, else ``folder``."""
    root = Path(folder)
    return root / "labelsTr" if (root / "labelsTr").is_dir() else root


def image_root(folder) -> Path:
    """The folder that holds the images: ``folder/imagesTr`` for an nnU-Net /
    MSD dataset folder, else ``folder``."""
    root = Path(folder)
    return root / "imagesTr" if (root / "imagesTr").is_dir() else root


def image_candidates(label_file: Path, labels_root: Path, images_dir, image_name=None):
    """Where the image of a label map may be: the same relative path, the same
    file name, or the nnU-Net name of its first channel (``X.nii.gz`` ->
    ``X_0000.nii.gz``). With ``image_name``: that file (or the one match of that
    pattern) in the label map's case folder, the first folder of its path below
    ``labels_root``, there or (``images_dir``) in ``images_dir/<case folder>/``."""
    label_file = Path(label_file)
    rel = Path(os.path.relpath(os.path.abspath(label_file), os.path.abspath(labels_root)))
    if image_name:
        if len(rel.parts) < 2 or rel.parts[0] == os.pardir:     # not in a case folder
            return []
        from ..io import in_case_folder

        base = Path(images_dir or labels_root) / rel.parts[0]
        hit, _ = in_case_folder(base, image_name, scans=True)
        return [hit if hit is not None else base / image_name]
    images_dir = image_root(images_dir)
    suf = volume_suffix(label_file.name)
    stem = label_file.name[: len(label_file.name) - len(suf)]
    channel0 = f"{stem}_0000{suf}"
    if rel.parts[0] == os.pardir:       # not below the root: by name only
        return [images_dir / label_file.name, images_dir / channel0]
    return [images_dir / rel, images_dir / label_file.name, images_dir / rel.parent / channel0,
            images_dir / channel0]


def find_image_for(label_file: Path, labels_root: Path, images_dir, image_name=None):
    """The training image for a label map (see :func:`image_candidates`), or None.
    The label map itself is never its image (``--images`` naming the labels'
    own folder)."""
    return next((c for c in image_candidates(label_file, labels_root, images_dir, image_name)
                 if c.is_file() and not os.path.samefile(c, label_file)), None)


def training_images(label_files, labels_roots, images_dir, image_name=None) -> list:
    """The training images found for ``label_files`` (one root each), without any
    check: the files the output of a build or an update must not touch (a
    detached image header's data files among them), known before the slow stages."""
    if images_dir is not None and not Path(images_dir).is_dir():
        return []
    if images_dir is None and not image_name:
        return []
    found = (find_image_for(Path(f), Path(r), images_dir, image_name)
             for f, r in zip(label_files, labels_roots))
    return [c for c in found if c is not None]


def looked_for(label_file, labels_root, images_dir, image_name=None):
    """Where a label map's image was looked for (:func:`image_candidates`), and
    whether the label map itself was found there (``--images`` naming the label
    maps' own folder)."""
    cands = image_candidates(label_file, labels_root, images_dir, image_name)
    if image_name and not cands:
        return "it lies in no case folder below the folder given"
    text = "looked for " + ", ".join(sorted({c.name for c in cands}))
    if any(c.is_file() and os.path.samefile(c, label_file) for c in cands):
        text += ("; found the label map itself: --images names the folder of the scans, "
                 "not of the label maps")
    return text


def images_place(images_dir, image_name=None) -> str:
    """Where the training images are looked for, for a message."""
    if image_name:
        return (f"{image_root(images_dir)}/<case folder>" if images_dir else
                "the label maps' case folders")
    return str(image_root(images_dir))


def pair_images(label_files, labels_root, images_dir, allow_no_orientation=False,
                image_name=None):
    """``{label file: image file}``, checked before any slow stage.

    ``labels_root`` is the folder the label maps' relative paths are taken
    from, or one such folder per label map.

    Every label map needs an image on the same grid (shape, spacing, origin,
    direction, from the headers alone). Raises ValueError naming the first
    label map without an image, or the first pair whose grids differ.
    """
    from ..io import geometry_difference, read_geometry

    if images_dir is not None:
        images_dir = Path(images_dir)
        if not images_dir.is_dir():
            raise FileNotFoundError(f"no such images folder: {images_dir}")
    roots = ([Path(labels_root)] * len(label_files) if isinstance(labels_root, (str, Path))
             else [Path(r) for r in labels_root])
    pairs, missing = {}, []
    for f, r in zip(label_files, roots):
        img = find_image_for(Path(f), r, images_dir, image_name)
        if img is None:
            missing.append((Path(f), r))
        else:
            pairs[Path(f)] = img
    if missing:
        f, r = missing[0]
        first = f.name
        if image_name:          # every case's file has one name: its folder tells them apart
            rel = Path(os.path.relpath(os.path.abspath(f), os.path.abspath(r)))
            first = f"{f.name} of {rel.parts[0]}" if len(rel.parts) > 1 else first
        raise ValueError(f"{len(missing)} of {len(label_files)} label maps have no image in "
                         f"{images_place(images_dir, image_name)} (first: {first}; "
                         f"{looked_for(f, r, images_dir, image_name)})")
    for f, img in pairs.items():
        gl = read_geometry(f, allow_no_orientation)
        gi = read_geometry(img, allow_no_orientation)
        what = geometry_difference(gl, gi)
        if what:
            raise ValueError(f"label map {f.name} and image {img.name} are not on the same "
                             f"grid ({what})")
    return pairs


def _appearance_cases(kept, faces, params, pairs):
    """One read of each kept shape's image and label map (the grids must agree):
    ``(profile cases, voxel cases)``.

    Profile cases are ``(image, verts)`` of the shapes that sit on their image (not
    the mirrored ones). Voxel cases are, with ``params.voxel_classifier``,
    ``(image, organ mask, verts, faces)`` of every shape for
    :func:`learn_voxel_classifier`, cropped to the organ and copied, so that they
    hold no whole scan (a mirrored shape goes back onto its own scan's side)."""
    from ..io import read_volume

    profile, voxel = [], []
    for s, v in kept:
        img = pairs[Path(s["file"])]
        vol = read_volume(img, params.allow_no_orientation)
        lab = read_label_map(s["file"], params.allow_no_orientation)
        if not vol.same_grid(lab):
            raise ValueError(f"{img.name}: image and label map differ in geometry")
        mirrored = s["side"] == "right" and params.mirror_right
        if not mirrored:
            profile.append((vol, v))
        if not params.voxel_classifier:
            continue
        f = faces
        if mirrored:
            v, f = v * np.array([-1.0, 1.0, 1.0]), faces[:, ::-1].copy()
        idx = np.round(vol.physical_to_index(v)[:, ::-1]).astype(int)
        pad = np.ceil(12.0 / np.asarray(vol.spacing)[::-1]).astype(int)
        lo = np.clip(idx.min(0) - pad, 0, vol.array.shape)
        hi = np.clip(idx.max(0) + 1 + pad, 0, vol.array.shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        crop = vol.crop(lo, hi)
        crop.array = crop.array.copy()
        voxel.append((crop, label_mask(lab, params.labels)[box].copy(), v, f))
    if len(profile) < 3:
        raise ValueError(f"only {len(profile)} training images matched the label maps under "
                         f"{images_place(params.images_dir, params.image_name)}; need >= 3")
    return profile, voxel


def template_sample(n_shapes, template_shapes):
    """Indices of the pass-1 shapes (and of those the surface calibration
    measures): all (``template_shapes`` 0 or >= ``n_shapes``), or ``template_shapes``
    of them evenly spread over the input order (deterministic)."""
    if not template_shapes or template_shapes >= n_shapes:
        return list(range(n_shapes))
    return sorted({int(round(i)) for i in np.linspace(0, n_shapes - 1, template_shapes)})


def _job_surfaces(args):
    path, params, *more = args
    try:
        return surfaces_from_label_map(path, params, *more), None
    except (ValueError, RuntimeError) as exc:
        return None, str(exc)


def _job_fit(args):
    tv, tf, surf, n_iter = args
    return fit_template(tv, tf, surf, n_iter=n_iter)


def _job_offset(args):
    """Dice over the offset grid of one fitted training surface against its label."""
    path, side, verts, faces, params, grid = args
    vol, masks, _, _ = organ_masks(path, params)
    if side not in masks:
        return None
    if side == "right" and params.mirror_right:       # back onto the scan's own side
        verts, faces = verts * np.array([-1.0, 1.0, 1.0]), faces[:, ::-1].copy()
    return offset_dice(verts, faces, vol, masks[side], grid)


def surface_calibration(kept, faces, params, n_jobs=1, progress=False):
    """The model's surface offset (:mod:`._calibrate`) from fitted training
    shapes ``kept`` ``[(record, verts)]``; None without any measurable shape."""
    from ..io import read_geometry

    sample = [kept[i] for i in template_sample(len(kept), MAX_SHAPES)]
    if not sample:
        return None
    grid = offset_grid(read_geometry(sample[0][0]["file"], params.allow_no_orientation)[1])
    rows = _map(_job_offset, [(s["file"], s["side"], v, faces, params, grid)
                              for s, v in sample], n_jobs, "surface offset", progress)
    rows = [r for r in rows if r is not None]
    return choose_offset(grid, rows) if rows else None


def _map(fn, items, n_jobs, desc, progress):
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc=desc, disable=not progress, unit="shape")
    out = []
    if n_jobs > 1:
        with ProcessPoolExecutor(n_jobs) as ex:
            for r in ex.map(fn, items):
                out.append(r)
                bar.update()
    else:
        for it in items:
            out.append(fn(it))
            bar.update()
    bar.close()
    return out


def model_from_shapes(shapes, faces, *, n_atoms=0, n_nonzero=5, seed=0, fov_centres=None,
                      ids=None, hashes=None, metadata=None,
                      dictionary_kind="shapes") -> ShapeModel:
    """A model (without appearance) from shapes already in correspondence.

    GPA (similarity), PCA, an optional K-SVD dictionary, the pose prior (with
    ``fov_centres``) and a fresh lineage: the steps of :func:`build_model` after
    correspondence.

    Parameters
    ----------
    shapes : ndarray, shape (M, N, 3)
        Shapes in correspondence; in their scans' physical space (LPS mm) when
        ``fov_centres`` is given.
    faces : ndarray, shape (F, 3)
    n_atoms, n_nonzero, seed : int
        Dictionary size (0: none), atoms per shape, random state.
    dictionary_kind : {'deviations', 'shapes'}
        What the atoms code (:func:`learn_shape_dictionary`).
    fov_centres : sequence of ndarray (3,), optional
        Centre of each shape's field of view: learns the pose prior.
    ids, hashes : sequence of str, optional
        Shape ids and content hashes for the lineage.
    metadata : dict, optional
        Extra metadata (organ, parameters, ...).
    """
    shapes = np.asarray(shapes, dtype=float)
    M = len(shapes)
    gpa = generalized_procrustes(shapes, max_iter=50, tol=1e-8)
    mean, comps, var = pca_from_shapes(gpa.aligned)
    atoms = dl_info = dl_state = None
    if n_atoms:
        from ._dictlearn import learn_shape_dictionary

        atoms, dl_state, dl_info = learn_shape_dictionary(gpa.aligned, mean, n_atoms,
                                                          n_nonzero, seed,
                                                          kind=dictionary_kind)
    pose = None if fov_centres is None else fit_pose_prior(mean, shapes, fov_centres)
    ids = [f"shape_{i}" for i in range(M)] if ids is None else list(ids)
    hashes = [None] * M if hashes is None else list(hashes)
    meta = {**(metadata or {}), "n_vertices": int(mean.shape[0]), "n_shapes": M,
            "shape_ids": ids, "dictionary_learning": dl_info,
            "pca_total_variance_mm2": total_variance(gpa.aligned),
            "lineage": new_lineage(list(zip(ids, hashes)))}
    return ShapeModel(gpa.aligned, mean, faces, comps, var, atoms, meta, None, pose, dl_state)


def correspondence_failure(kept, shapes_in, rejected, n_template):
    """The error line of a build whose fits mostly failed: how many passed, the
    commonest reason with an example, and for faces flipped on surfaces coarser
    than the template (a small organ at the default resolution: MSD hippocampus,
    ~900 surface vertices against 2562) what to give instead. No report is
    written for a failed build: this line is all the user gets."""
    fits = [r for r in rejected if r.get("stage") == "correspondence"]
    kinds = {}
    for r in fits:
        kinds.setdefault(re.sub(r"[0-9.]+", "N", r["reason"]), []).append(r)
    msg = f"only {len(kept)} of {len(shapes_in)} shapes passed the correspondence check"
    if kinds:
        common = max(kinds.values(), key=len)
        msg += f" ({len(common)} of them: {common[0]['reason']}, e.g. {common[0]['source']})"
    coarse = [len(s["surface"].verts) for s in shapes_in]
    if any("flipped" in r["reason"] for r in fits) and np.median(coarse) < 2 * n_template:
        msg += (f"; the label maps' surfaces (median {int(np.median(coarse))} vertices) are "
                f"too coarse for a {n_template}-vertex template: for a small organ give a "
                "finer surface and a smaller template, e.g. --iso-spacing 0.5 --smooth 0.75 "
                "--vertices 642")
    return msg


def build_model(label_files, params: BuildParams, root=None, progress=True, names=None,
                roots=None):
    """Build a :class:`ShapeModel` from label map files.

    Parameters
    ----------
    label_files : sequence of Path
    params : BuildParams
    root : Path, optional
        The folder the files are named from and their images looked for from
        (default: the first file's parent).
    progress : bool
    names, roots : sequence, optional
        Per file: its case name and its root, instead of ``root``
        (:func:`label_map_inputs` gives both, for files from several folders).

    Returns
    -------
    model : ShapeModel
    report : dict
        Per-shape fit quality, rejected inputs and shapes with reasons,
        timings and model statistics.
    """
    t0 = time.perf_counter()
    files = [Path(f) for f in label_files]
    if not files:
        raise ValueError("no label maps given")
    root = Path(root) if root else Path(files[0]).parent
    roots = [root] * len(files) if roots is None else [Path(r) for r in roots]
    names = [case_name(f, r) for f, r in zip(files, roots)] if names is None else list(names)
    params, resolution = resolve_resolution(params, files)
    if params.n_vertices < 12:
        raise ValueError(f"n_vertices={params.n_vertices} must be >= 12")
    level = level_for_vertices(params.n_vertices)
    sv, sf = icosphere(level)
    # image/label pairing and geometry, from the headers, before the slow stages
    pairs = (pair_images(files, roots, params.images_dir, params.allow_no_orientation,
                         params.image_name) if params.with_images else None)
    surf_res = _map(_job_surfaces, [(f, params) for f in files], params.n_jobs,
                    "surfaces", progress)
    shapes_in, rejected = [], []
    for f, name, (res, err) in zip(files, names, surf_res):
        if err is not None:
            rejected.append({"source": name, "stage": "surface", "reason": err})
            continue
        for side, s, c, cut in res:
            if cut and params.exclude_cut:
                rejected.append({"source": name, "side": side, "stage": "surface",
                                 "reason": f"cut by the scan's field of view (it reaches {cut})"})
                continue
            shapes_in.append({"source": name, "side": side, "surface": s, "file": f,
                              "fov_centre": c, "cut_by_fov": cut})
    if len(shapes_in) < 3:
        why = "; ".join(f"{r['source']}: {r['reason']}" for r in rejected[:3])
        raise ValueError(f"only {len(shapes_in)} usable shapes; a model needs at least 3"
                         + (f" ({why})" if why else ""))
    t_surf = time.perf_counter() - t0
    # pass 1: icosphere template, on every shape or an even sample of them
    sample = template_sample(len(shapes_in), params.template_shapes)
    fits = _map(_job_fit, [(sv, sf, shapes_in[i]["surface"], params.n_iter) for i in sample],
                params.n_jobs, "fit (pass 1)", progress)
    good = [i for i, (_, q) in enumerate(fits) if q.ok]
    if len(good) < 3:   # the provisional mean needs a few shapes; pass 2 re-checks all
        good = list(range(len(fits)))
    gpa1 = generalized_procrustes(np.stack([fits[i][0] for i in good]), max_iter=30, tol=1e-7)
    template = gpa1.mean
    t_pass1 = time.perf_counter() - t0 - t_surf
    # pass 2: the mean shape as template
    fits = _map(_job_fit, [(template, sf, s["surface"], params.n_iter) for s in shapes_in],
                params.n_jobs, "fit (pass 2)", progress)
    kept, per_shape = [], []
    for s, (v, q) in zip(shapes_in, fits):
        rec = {"source": s["source"], "side": s["side"], **q.to_dict(),
               "surface_volume_ml": s["surface"].volume() / 1000.0,
               "cut_by_fov": s["cut_by_fov"]}
        per_shape.append(rec)
        if q.ok:
            kept.append((s, v))
        else:
            rejected.append({"source": s["source"], "side": s["side"], "stage": "correspondence",
                             "reason": q.reason})
    if len(kept) < 3:
        raise ValueError(correspondence_failure(kept, shapes_in, rejected, len(sv)))
    t_pass2 = time.perf_counter() - t0 - t_surf - t_pass1
    profile = voxel_cases = None
    if params.with_images:
        from ..appearance import learn_profiles

        profile_cases, voxel_cases = _appearance_cases(kept, sf, params, pairs)
        profile = learn_profiles(profile_cases, sf, params.profile_step, params.profile_half,
                                 params.normalisation)
        del profile_cases
    # the offset serves fits that follow learned appearance (see segment's
    # surface_offset): measured when the model learns it
    offset = (surface_calibration(kept, sf, params, params.n_jobs, progress)
              if profile is not None else None)
    t_vox = time.perf_counter()
    voxels, vox_report = None, None
    if profile is not None and params.voxel_classifier:
        from ..appearance import learn_voxel_classifier

        try:
            voxels = learn_voxel_classifier(voxel_cases, seed=params.seed, n_cases=len(kept))
            vox_report = voxels.info
        except ValueError as exc:   # too little to learn from, or no scikit-learn:
            vox_report = {"skipped": str(exc)}     # the model works without it
    t_vox = time.perf_counter() - t_vox
    hashes = {}
    for s, _ in kept:
        if s["source"] not in hashes:
            hashes[s["source"]] = image_sha256(s["file"])
    ids = [f"{s['source']}:{s['side']}" for s, _ in kept]
    meta = {
        "organ": params.organ,
        "side": "left (right mirrored)" if params.split_sides and params.mirror_right
        and params.side == "both" else params.side,
        "units": "mm (LPS physical space, GPA frame)",
        "sources": [{"name": k, "sha256": v} for k, v in hashes.items()],
        "parameters": {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in vars(params).items()},
        "versions": {"shapeprior": __version__, **package_versions()},
        "template": f"icosphere level {level}, refined by the pass-1 mean of "
                    f"{len(sample)} shapes",
    }
    if offset is not None:
        meta["surface_offset"] = offset
    model = model_from_shapes(np.stack([v for _, v in kept]), sf, n_atoms=params.n_atoms,
                              n_nonzero=params.n_nonzero, seed=params.seed,
                              dictionary_kind=params.dictionary_kind,
                              fov_centres=[s["fov_centre"] for s, _ in kept], ids=ids,
                              hashes=[hashes[s["source"]] for s, _ in kept], metadata=meta)
    model.profile = profile
    model.voxels = voxels
    var = model.pca_variances
    d = np.array([r["mean_target_to_fit"] for r in per_shape])
    report = {
        "n_inputs": len(files), "n_shapes_extracted": len(shapes_in), "n_shapes_kept": len(kept),
        "resolution": resolution,
        "rejected": rejected, "per_shape": per_shape,
        # kept shapes whose organ reaches the edge of its scan (exclude_cut rejects them)
        "cut_by_fov": [{"source": s["source"], "side": s["side"], "where": s["cut_by_fov"]}
                       for s, _ in kept if s["cut_by_fov"]],
        "fit_mean_target_to_fit_mm": {"median": float(np.median(d)), "max": float(d.max())},
        "pca_modes": int(len(var)), "pca_variance_mm2_top5": var[:5].tolist(),
        "surface_offset": offset,
        "voxel_classifier": vox_report,
        "time_s": {"surfaces": t_surf, "fit_pass1": t_pass1, "fit_pass2": t_pass2,
                   "voxel_classifier": t_vox, "total": time.perf_counter() - t0},
    }
    return model, report
