"""QC picture: the segmentation (and reference) over three orthogonal planes,
in radiological convention with orientation letters."""

from __future__ import annotations

import numpy as np

from ..appearance import unpadded
from ..mesh import mask_box

#: orientation letters (screen left, right, top, bottom) of each view in
#: radiological convention: the patient's right on the screen's left,
#: anterior and superior at the top, anterior on the left of the sagittal view
LETTERS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"),
           "sagittal": ("A", "P", "S", "I")}


def lps_axes(direction):
    """For each LPS axis (L, P, S): the index axis (0 = i, 1 = j, 2 = k)
    nearest to it and the sign of their alignment. An oblique grid is shown
    along its nearest axes."""
    d = np.asarray(direction, dtype=float)          # columns: index axes in LPS
    axes = []
    free = [0, 1, 2]
    for m in np.argsort(-np.abs(d).max(1)):         # most decided LPS axis first
        n = max(free, key=lambda c: abs(d[m, c]))
        free.remove(n)
        axes.append((int(m), n, 1 if d[m, n] > 0 else -1))
    axes.sort()
    return [a[1] for a in axes], [a[2] for a in axes]


def to_lps_array(a, direction):
    """``a`` (k, j, i) as an array indexed (S, P, L): the first axis runs to
    the patient's superior, the second to posterior, the third to left."""
    ax, sg = lps_axes(direction)
    c = np.transpose(a, (2 - ax[2], 2 - ax[1], 2 - ax[0]))
    for dim, s in zip((2, 1, 0), sg):               # L -> axis 2, P -> 1, S -> 0
        if s < 0:
            c = np.flip(c, dim)
    return c


def _lps_index(vol, points):
    """Continuous (S, P, L) indices of LPS points in :func:`to_lps_array`'s array."""
    ax, sg = lps_axes(vol.direction)
    idx = vol.physical_to_index(points)               # (i, j, k)
    n = np.array(vol.array.shape[::-1])
    out = np.empty((len(points), 3))
    for m, col in zip(range(3), (2, 1, 0)):
        v = idx[:, ax[m]]
        out[:, col] = v if sg[m] > 0 else n[ax[m]] - 1 - v
    return out


def _organ_view(vol, label, reference):
    """``(vol, label, reference)`` cropped to the organ's bounding box plus
    50 % of its size on each side (at least 30 mm), clipped to the grid; the
    whole grid when the label is empty. The picture is drawn from the crop:
    on a whole CT nothing after this touches more than the organ's region."""
    lab = np.asarray(label)
    if not lab.any():
        return vol, lab, reference
    box = mask_box(lab)
    spacing_zyx = np.asarray(vol.spacing, dtype=float)[::-1]
    lo = np.array([b.start for b in box])
    hi = np.array([b.stop for b in box])
    pad = np.maximum(0.5 * (hi - lo), 30.0 / spacing_zyx).astype(int)
    lo = np.maximum(lo - pad, 0)
    hi = np.minimum(hi + pad, lab.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    ref = None if reference is None else np.asarray(reference)[crop]
    return vol.crop(lo, hi), lab[crop], ref


def _centre_index(lab):
    """The label's centroid as rounded array indices (the array's centre when it
    is empty), from per-axis counts (a whole-CT crop: no list of voxels). Where
    the plane through the centroid misses the label (two organs side by side,
    both kidneys of a paired organ's refinement), the plane of that axis
    cutting most of the label instead."""
    b = np.asarray(lab, dtype=bool)
    n = np.count_nonzero(b)
    if not n:
        return np.array(b.shape) // 2
    counts = [b.sum(axis=tuple(o for o in range(3) if o != ax), dtype=np.int64)
              for ax in range(3)]
    c = np.round([(k * np.arange(len(k))).sum() / n for k in counts]).astype(int)
    return np.array([ci if k[ci] else int(np.argmax(k)) for ci, k in zip(c, counts)])


def qc_png(path, vol, label, reference=None, title="", verts=None, outliers=None):
    """Write a PNG with axial, coronal and sagittal planes through the
    segmentation's centre, zoomed to the organ.

    Radiological convention (the patient's right on the left of the screen),
    orientation letters on every plane, aspect from the voxel spacing. The
    segmentation is green, the reference red dashed, and surface vertices
    that the prior overrode (``outliers``, a boolean per row of ``verts`` in
    LPS mm) magenta where they lie near the plane.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    vol, label, reference = _organ_view(vol, label, reference)
    ax_, _ = lps_axes(vol.direction)
    sl, sp, ss = (float(vol.spacing[ax_[m]]) for m in range(3))
    a = to_lps_array(vol.array, vol.direction)
    lab = to_lps_array(label, vol.direction)
    ref = None if reference is None else to_lps_array(reference, vol.direction)
    c = _centre_index(lab)

    def planes(v):
        if v is None:
            return None, None, None
        return v[c[0]], v[:, c[1]], v[:, :, c[2]]

    shown = planes(a)
    labs, refs = planes(lab), planes(ref)
    # display window from the shown planes only
    vals = np.concatenate([p.ravel() for p in shown]).astype(np.float32)
    lo_v, hi_v = np.percentile(unpadded(vals), [1, 99])     # the field of view's window
    pts = None
    if verts is not None and outliers is not None and np.any(outliers):
        pts = _lps_index(vol, np.asarray(verts)[np.asarray(outliers, bool)])
    # (name, plane, row axis, column axis, row origin, aspect = row mm / column mm)
    views = [("axial", 0, 1, 2, "upper", sp / sl), ("coronal", 1, 0, 2, "lower", ss / sl),
             ("sagittal", 2, 0, 1, "lower", ss / sp)]
    spacing = np.array([ss, sp, sl])
    # the object-oriented figure (no pyplot state): safe off the main thread,
    # and fixed margins instead of tight_layout's text measuring (a third of the time)
    fig = Figure(figsize=(12, 4.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.88, wspace=0.04)
    for k, (ax, (name, normal, row, col, origin, aspect)) in enumerate(zip(axes, views)):
        ax.imshow(shown[k], cmap="gray", vmin=lo_v, vmax=hi_v, aspect=aspect, origin=origin)
        if labs[k].any():
            ax.contour(labs[k], levels=[0.5], colors="lime", linewidths=1.2)
        if refs[k] is not None and refs[k].any():
            ax.contour(refs[k], levels=[0.5], colors="red", linewidths=0.8, linestyles="--")
        if pts is not None:
            near = np.abs(pts[:, normal] - c[normal]) * spacing[normal] <= \
                max(spacing[normal], 2.0)
            ax.scatter(pts[near, col], pts[near, row], s=6, c="magenta", linewidths=0)
        ax.set_xlim(-0.5, shown[k].shape[1] - 0.5)
        ax.set_ylim(*((shown[k].shape[0] - 0.5, -0.5) if origin == "upper"
                      else (-0.5, shown[k].shape[0] - 0.5)))
        left, right, top, bottom = LETTERS[name]
        style = dict(color="yellow", fontsize=11, fontweight="bold", transform=ax.transAxes)
        ax.text(0.02, 0.5, left, ha="left", va="center", **style)
        ax.text(0.98, 0.5, right, ha="right", va="center", **style)
        ax.text(0.5, 0.98, top, ha="center", va="top", **style)
        ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
        # the plane's name as plain text, the axes off before drawing: a title
        # and hidden axes still make Matplotlib build and measure tick labels
        # (over half of the rendering time)
        ax.axis("off")
        ax.text(0.5, 1.01, name, ha="center", va="bottom", fontsize=12,
                transform=ax.transAxes)
    legend = "green: shapeprior" + (", red dashed: reference" if reference is not None else "")
    if pts is not None:
        legend += ", magenta: vertices the prior overrode"
    fig.suptitle(f"{title}  ({legend}; radiological view)", fontsize=9)
    # zlib level 1: the default (6) spends most of the encoding on a few kB
    fig.savefig(path, dpi=90, pil_kwargs={"compress_level": 1})
