"""QC picture: the segmentation (and reference) over three orthogonal planes."""

from __future__ import annotations

import numpy as np


def qc_png(path, vol, label, reference=None, title=""):
    """Write a PNG with axial, coronal and sagittal slices through the
    segmentation's centre (voxel grid, aspect from spacing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = vol.array
    sx, sy, sz = vol.spacing
    if label.any():
        idx = np.argwhere(label)
        c = idx.mean(0).round().astype(int)
        # zoom to the organ: its bounding box plus 50 % of its size (at least 30 mm)
        size = idx.max(0) - idx.min(0) + 1
        pad = np.maximum(0.5 * size, 30.0 / np.array([sz, sy, sx])).astype(int)
        lo = np.maximum(idx.min(0) - pad, 0)
        hi = np.minimum(idx.max(0) + pad + 1, a.shape)
    else:
        c = np.array(a.shape) // 2
        lo, hi = np.zeros(3, int), np.array(a.shape)
    z, y, x = (slice(lo[k], hi[k]) for k in range(3))

    def planes(v):
        if v is None:
            return None, None, None
        return v[c[0], y, x], v[z, c[1], x], v[z, y, c[2]]

    ia, ic, isg = planes(a)
    la, lc, ls = planes(label)
    ra, rc, rs = planes(reference)
    # display window from the shown planes only: a whole 512 x 512 x 300 CT
    # would cost seconds of percentile work for the same picture
    shown = np.concatenate([ia.ravel(), ic.ravel(), isg.ravel()]).astype(np.float32)
    lo_v, hi_v = np.percentile(shown, [1, 99])
    views = [("axial", ia, la, ra, sy / sx), ("coronal", ic, lc, rc, sz / sx),
             ("sagittal", isg, ls, rs, sz / sy)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (name, img, lab, ref, aspect) in zip(axes, views):
        ax.imshow(img, cmap="gray", vmin=lo_v, vmax=hi_v, aspect=aspect, origin="lower")
        if lab.any():
            ax.contour(lab, levels=[0.5], colors="lime", linewidths=1.2)
        if ref is not None and ref.any():
            ax.contour(ref, levels=[0.5], colors="red", linewidths=0.8, linestyles="--")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title + ("  (green: shapeprior, red dashed: reference)" if reference is not None
                          else "  (green: shapeprior)"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
