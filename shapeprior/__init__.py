"""shapeprior: sparse shape-prior (SSC) segmentation for CT and MRI."""

__version__ = "0.1.0"

from .align import Transform, generalized_procrustes, procrustes  # noqa: E402
from .ssc import (  # noqa: E402
    ShapeDictionary,
    SparseShapeComposition,
    SSCResult,
    sparse_composition,
    sparse_shape_composition,
)

__all__ = [
    "__version__", "Transform", "procrustes", "generalized_procrustes",
    "ShapeDictionary", "sparse_composition", "sparse_shape_composition",
    "SparseShapeComposition", "SSCResult",
]
