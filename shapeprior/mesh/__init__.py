"""Surface meshes from label maps (and back: :func:`voxelize`), templates, mesh
measures and mesh files."""

from ._operators import mean_neighbour_operator, mesh_edges, same_triangles
from ._read import READ_SUFFIXES, read_mesh
from ._sphere import icosphere, level_for_vertices
from ._voxelize import voxelize
from ._surface import (
    MESH_FORMATS,
    Surface,
    crop_to_labels,
    dice,
    grown_box,
    kidney_masks,
    label_mask,
    mask_box,
    mask_to_surface,
    signed_distance,
)

__all__ = ["Surface", "MESH_FORMATS", "mask_to_surface", "label_mask", "kidney_masks", "crop_to_labels",
           "mask_box", "grown_box", "signed_distance", "voxelize", "dice",
           "icosphere",
           "level_for_vertices", "mean_neighbour_operator", "mesh_edges", "same_triangles",
           "read_mesh", "READ_SUFFIXES"]
