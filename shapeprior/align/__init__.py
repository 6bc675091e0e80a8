"""Point-set alignment: weighted Procrustes (rigid/similarity/affine) and GPA."""

from ._procrustes import (
    GPAResult,
    Transform,
    centroid_size,
    generalized_procrustes,
    procrustes,
)

__all__ = ["Transform", "procrustes", "generalized_procrustes", "GPAResult", "centroid_size"]
