"""Shape models: build from label maps, PCA, dictionary learning, file format."""

from ._build import (BuildParams, build_model, find_label_maps, label_root, pair_images,
                     surfaces_from_label_map)
from ._dictlearn import DictionaryLearner
from ._inspect import mode_shape, model_summary, vertex_sd
from ._pose import PosePrior, fit_pose_prior
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
           "BuildParams", "build_model", "find_label_maps", "surfaces_from_label_map",
           "PosePrior", "fit_pose_prior", "model_summary", "mode_shape", "vertex_sd",
           "label_root", "pair_images"]
