"""Shape models: build from label maps, PCA, dictionary learning, file format."""

from ._build import (BuildParams, build_model, case_name, find_label_maps, label_map_inputs,
                     label_root, model_from_shapes, organ_radius, pair_images,
                     surfaces_from_label_map, training_images)
from ._dictlearn import DictionaryLearner, learn_shape_dictionary, update_shape_dictionary
from ._inspect import mode_shape, model_summary, organ_labels, vertex_sd
from ._lineage import lineage_of
from ._pose import PosePrior, fit_pose_prior
from ._ranking import CRITERIA as RANKING_CRITERIA, rank_candidates
from ._update import (align_to_model, correspond_to_model, extend_model, new_label_maps,
                      params_from_model, update_model)
from ._model import (
    FORMAT_VERSION,
    read_model_metadata,
    ModelFormatError,
    ShapeModel,
    load_model,
    pca_from_shapes,
    pca_reconstruct,
    save_model,
)

__all__ = ["ShapeModel", "save_model", "load_model", "ModelFormatError", "FORMAT_VERSION",
           "read_model_metadata", "pca_from_shapes", "pca_reconstruct", "DictionaryLearner",
           "learn_shape_dictionary", "update_shape_dictionary",
           "BuildParams", "build_model", "find_label_maps", "surfaces_from_label_map",
           "PosePrior", "fit_pose_prior", "model_summary", "mode_shape", "vertex_sd",
           "organ_labels", "training_images",
           "label_root", "pair_images", "update_model", "extend_model", "rank_candidates",
           "params_from_model", "correspond_to_model", "align_to_model", "lineage_of",
           "new_label_maps", "RANKING_CRITERIA", "model_from_shapes", "organ_radius",
           "case_name", "label_map_inputs"]
