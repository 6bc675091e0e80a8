"""Deformable segmentation with the SSC shape prior: initialise (a seed, an
existing mask, or a search over the field of view) -> search along normals ->
SSC projection -> repeat, coarse to fine -> voxelise -> status from evidence."""

from ._assess import SCALE_SLACK, Reason, reason_level, reason_levels
from ._both_sides import BOTH, PairedSegmentResult, check_paired, combine_sides, segment_both
from ._fit import SegmentParams, SegmentResult, check_window, segment_volume
from ._metrics import surface_distances
from ._paired import (PairedRefineResult, organ_min_ml, paired_parts, part_alone,
                      refine_paired, split_at_midline)
from ._place import Hypothesis, find_placements
from ._refine import (RefineResult, describe_corrections, missing_slices, refine_mask,
                      repeated_slices)
from ._sides import (SIDES, check_side, median_residual, model_side, paired_model,
                     solve_sides, starting_side)
from ._statistics import distance_to_mean, shape_statistics
from ..mesh import dice, voxelize

__all__ = ["SegmentParams", "SegmentResult", "segment_volume", "voxelize", "dice",
           "surface_distances", "refine_mask", "RefineResult", "describe_corrections",
           "Hypothesis", "find_placements", "shape_statistics", "distance_to_mean",
           "missing_slices", "repeated_slices", "paired_model", "SCALE_SLACK",
           "check_window", "SIDES", "check_side", "median_residual", "model_side",
           "solve_sides", "starting_side", "refine_paired", "PairedRefineResult",
           "paired_parts", "organ_min_ml", "PairedSegmentResult", "segment_both",
           "combine_sides", "part_alone", "check_paired", "split_at_midline", "Reason",
           "reason_level", "reason_levels", "BOTH"]
