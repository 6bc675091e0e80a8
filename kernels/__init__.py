"""Hot loops of shapeprior, each with a NumPy/xp reference, a Numba twin and,
where a GPU helps, a CuPy kernel. Installed as ``shapeprior_kernels``.

Modules
-------
gram_lasso      exact Lasso on an explicit Gram (feature-sign active set)
batched_cd      batched Gram Lasso by coordinate descent (NumPy/Numba/CUDA)
soft_threshold  gross-error split e = soft(r, tau)
normal_sampling trilinear image samples along vertex normals (NumPy/Numba/CUDA)
"""

from .batched_cd import batched_gram_cd_cupy, batched_gram_cd_numba, batched_gram_cd_numpy
from .gram_lasso import gram_lasso_numba, gram_lasso_xp, lasso_objective
from .normal_sampling import sample_normals_cupy, sample_normals_numba, sample_normals_numpy
from .soft_threshold import soft_threshold_cupy, soft_threshold_numba, soft_threshold_xp

__all__ = [
    "gram_lasso_xp", "gram_lasso_numba", "lasso_objective",
    "batched_gram_cd_numpy", "batched_gram_cd_numba", "batched_gram_cd_cupy",
    "soft_threshold_xp", "soft_threshold_numba", "soft_threshold_cupy",
    "sample_normals_numpy", "sample_normals_numba", "sample_normals_cupy",
]
