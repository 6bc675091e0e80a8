"""Point-set alignment: weighted Procrustes (rigid/similarity/affine) and GPA."""

from ._procrustes import (
    GPAResult,
    Transform,
    apply_many,
    centroid_size,
    generalized_procrustes,
    procrustes,
    procrustes_many,
)

__all__ = ["Transform", "procrustes", "procrustes_many", "apply_many", "generalized_procrustes",
           "GPAResult", "centroid_size"]
