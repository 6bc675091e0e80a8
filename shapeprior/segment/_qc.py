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
    c = np.argwhere(label).mean(0).round().astype(int) if label.any() else \
        (np.array(a.shape) // 2)
    # display window from the three shown planes only: a whole 512 x 512 x 300
    # CT would cost seconds of percentile work for the same picture
    planes = np.concatenate([a[c[0]].ravel(), a[:, c[1]].ravel(), a[:, :, c[2]].ravel()])
    lo, hi = np.percentile(planes.astype(np.float32), [1, 99])
    sx, sy, sz = vol.spacing
    views = [("axial", a[c[0]], label[c[0]], None if reference is None else reference[c[0]], sy / sx),
             ("coronal", a[:, c[1]], label[:, c[1]],
              None if reference is None else reference[:, c[1]], sz / sx),
             ("sagittal", a[:, :, c[2]], label[:, :, c[2]],
              None if reference is None else reference[:, :, c[2]], sz / sy)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (name, img, lab, ref, aspect) in zip(axes, views):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, origin="lower")
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
