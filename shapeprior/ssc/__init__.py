"""Sparse Shape Composition (Zhang, Zhan, Metaxas et al., MedIA 2012).

Public API
----------
ShapeDictionary           aligned training shapes with cached Gram matrices
sparse_composition        sparse solve (x, e) for a shape in the model frame
sparse_shape_composition  full SSC: alternates similarity alignment and solve
sparse_shape_composition_many  the same for many shapes, one dictionary (process pool or dask)
sparse_composition_batched     exact L1 solves of many aligned shapes as one array program (GPU)
SparseShapeComposition    estimator facade (fit training shapes, transform)
SSCResult                 what the above return
solver_options            the solver settings of a reconstruction method ('hybrid', 'l1', 'l0')
ALIGN_TOL                 default alignment tolerance of the rounds (RMS radii of the mean)
"""

from ._compose import (
    ALIGN_TOL,
    DICTIONARY_HYBRID_ALPHA1,
    HYBRID_REFIT,
    RECONSTRUCTION_METHODS,
    CompositionResult,
    SparseShapeComposition,
    SSCResult,
    sparse_composition,
    solver_options,
    sparse_shape_composition,
)
from ._batched import BatchedComposition, sparse_composition_batched
from ._dictionary import ShapeDictionary
from ._many import sparse_shape_composition_many
from ._l0 import omp_gram, omp_gram_many

__all__ = [
    "ShapeDictionary", "sparse_composition", "sparse_shape_composition",
    "SparseShapeComposition", "SSCResult", "CompositionResult", "omp_gram",
    "omp_gram_many", "sparse_shape_composition_many", "solver_options", "HYBRID_REFIT",
    "DICTIONARY_HYBRID_ALPHA1", "RECONSTRUCTION_METHODS", "ALIGN_TOL",
    "sparse_composition_batched", "BatchedComposition",
]
