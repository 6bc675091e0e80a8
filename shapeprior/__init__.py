"""shapeprior: sparse shape-prior (SSC) segmentation for CT and MRI.

The facade (:mod:`shapeprior.api`): :func:`read_volume`, :func:`load_model`,
:func:`build_model`, :func:`update_model`, :func:`segment`, :func:`refine`,
:func:`reconstruct`, :func:`reconstruct_many`. SSC itself:
:func:`sparse_shape_composition` with a :class:`ShapeDictionary`. Coordinates
are LPS millimetres; arrays are indexed (z, y, x).
"""

__version__ = "0.1.0"

from .align import Transform, generalized_procrustes, procrustes  # noqa: E402
from .ssc import (  # noqa: E402
    ShapeDictionary,
    SparseShapeComposition,
    SSCResult,
    sparse_composition,
    sparse_shape_composition,
)

_API = ("read_volume", "load_model", "build_model", "update_model", "segment", "refine",
        "reconstruct", "reconstruct_many")
_TYPES = {"Volume": "io", "ShapeModel": "model", "BuildParams": "model",
          "SegmentParams": "segmentation", "SegmentResult": "segmentation",
          "RefineResult": "segmentation"}

__all__ = [
    "__version__", *_API, *_TYPES,
    "Transform", "procrustes", "generalized_procrustes",
    "ShapeDictionary", "sparse_composition", "sparse_shape_composition",
    "SparseShapeComposition", "SSCResult",
]


def __dir__():
    """The module's names with the facade's, which load when first used (so that
    tab completion offers ``shapeprior.segment``)."""
    return sorted(set(globals()) | set(__all__))


def __getattr__(name):
    """The facade and its types, imported when first used (``import shapeprior``
    stays light)."""
    import importlib

    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    if name in _TYPES:
        return getattr(importlib.import_module(f".{_TYPES[name]}", __name__), name)
    raise AttributeError(f"module 'shapeprior' has no attribute {name!r}")
