"""Surface meshes from label maps, templates, mesh measures and mesh files."""

from ._operators import mean_neighbour_operator
from ._sphere import icosphere, level_for_vertices
from ._surface import (
    MESH_FORMATS,
    Surface,
    kidney_masks,
    label_mask,
    mask_to_surface,
)

__all__ = ["Surface", "MESH_FORMATS", "mask_to_surface", "label_mask", "kidney_masks", "icosphere",
           "level_for_vertices", "mean_neighbour_operator"]
