"""Deformable segmentation with the SSC shape prior."""

from ._appearance import ProfileModel, learn_profiles
from ._fit import SegmentParams, SegmentResult, pose_prior, segment_volume
from ._metrics import dice, surface_distances
from ._voxelize import voxelize

__all__ = ["SegmentParams", "SegmentResult", "segment_volume", "pose_prior", "voxelize",
           "dice", "surface_distances", "ProfileModel", "learn_profiles"]
