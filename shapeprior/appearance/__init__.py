"""Boundary appearance: intensities sampled along vertex normals.

* :class:`NormalSampler`, :func:`intensity_scale`, :func:`normalise_intensity`:
  trilinear samples along normals on a backend, in a comparable intensity scale;
  :func:`hounsfield_share`: whether an image is in HU (a CT) at all;
  :func:`padding_value`, :func:`unpadded`: the value outside the field of view that no
  statistic counts, and an image's values without it;
* :class:`Background`, :func:`background_share`: the dark region around the body
  (border-connected air), where no organ of the model's kind lies;
* :class:`LevelImage`: the smoothed image around the mesh, per resolution level
  (a new region reaches :data:`SLACK_MM` beyond the mesh unless told otherwise);
* :class:`ProfileModel`, :func:`learn_profiles`: per-vertex profile statistics learned
  from training images; :func:`search_profiles` / :func:`search_edges`: the best
  boundary position along each normal (learned profiles, or the strongest edge);
* :class:`VoxelClassifier`, :func:`learn_voxel_classifier`, :func:`band_features`,
  :func:`smoothed_decision`: the voxels next to a fitted surface decided one by one
  from their appearance, then by their neighbours.
"""

from ._background import TRAINING_SHARE_MAX as BACKGROUND_TRAINING_MAX
from ._background import Background, background_share
from ._levels import SLACK_MM, LevelImage
from ._profiles import (ProfileModel, learn_profiles, profile_features, profile_stack,
                        search_edges, search_profiles)
from ._sampler import (HU_BELOW, HU_CT_SHARE, HU_MIN_SHARE, HU_SAMPLE, NormalSampler,
                       hounsfield_share, intensity_scale, normalise_intensity, padding_value,
                       unpadded)
from ._voxels import (SMOOTH_VOX, VoxelClassifier, band_features, learn_voxel_classifier,
                      smoothed_decision)
from ._voxels import PASSES as VOXEL_PASSES

__all__ = ["Background", "background_share", "BACKGROUND_TRAINING_MAX",
           "NormalSampler", "intensity_scale", "normalise_intensity", "hounsfield_share",
           "padding_value", "unpadded",
           "HU_BELOW", "HU_CT_SHARE", "HU_MIN_SHARE", "HU_SAMPLE", "LevelImage", "SLACK_MM",
           "ProfileModel", "learn_profiles", "profile_features", "profile_stack", "search_profiles",
           "search_edges", "VoxelClassifier", "band_features", "learn_voxel_classifier",
           "smoothed_decision", "SMOOTH_VOX", "VOXEL_PASSES"]
