"""Surface meshes from label maps, templates, mesh measures and mesh files."""

from ._sphere import icosphere
from ._surface import (
    Surface,
    kidney_masks,
    label_mask,
    mask_to_surface,
)

__all__ = ["Surface", "mask_to_surface", "label_mask", "kidney_masks", "icosphere"]
