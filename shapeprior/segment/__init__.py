"""Deformable segmentation with the SSC shape prior: initialise -> search along
normals -> SSC projection -> repeat, coarse to fine -> voxelise."""

from ._fit import SegmentParams, SegmentResult, segment_volume
from ._metrics import dice, surface_distances
from ._voxelize import voxelize

__all__ = ["SegmentParams", "SegmentResult", "segment_volume", "voxelize", "dice",
           "surface_distances"]
