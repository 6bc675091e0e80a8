"""Hot loops of shapeprior, installed as ``shapeprior_kernels``.

Each operation comes as twins with identical results: ``<op>_numpy`` (the
reference, written against NumPy or, where noted, any array namespace
``xp``), ``<op>_numba`` (CPU) and, where a GPU helps, ``<op>_cupy`` (with
its ``.cu`` source beside it). shapeprior picks a twin through the one
dispatch table in :mod:`shapeprior.backend`. See README.md in this folder.

Modules
-------
gram_lasso       exact Lasso on an explicit Gram (feature-sign active set);
                 the reference runs on NumPy and CuPy arrays
huber_lasso      Huber regression with an L1 penalty on a dictionary (the
                 SSC-L1 inner solve: semismooth Newton on the outlier set);
                 the reference runs on NumPy and CuPy arrays; with reweighted
                 solves on e (``huber_lasso_reweighted``) in one call; and its
                 start, the Lasso on a working set of the weighted Gram's
                 columns (``lasso_partial``)
outlier_hessian  the Newton systems of the batched SSC-L1 solve (one per shape:
                 the Gram on its working set minus its outlier rows' part)
block_mean       means of the blocks of a 3-D image (the whole-scan placement
                 search's downsampled image)
dense_samples    points on a barycentric lattice of every triangle (the
                 template fit's quality check)
gaussian_smooth  separable Gaussian smoothing of a 3-D image in place (the
                 level images of the boundary search), scipy's values
neighbour_list   the k nearest cloud points of each query point (``knn``),
                 and the nearest from each query point's list of them with
                 whether it is certified the nearest of the whole cloud
                 (``nearest_in_list``): the template fit's closest points
normal_sampling  trilinear image samples along vertex normals
profile_search   the best learned-profile match along each normal
template_step    one non-rigid round of the template fit (the pull both ways,
                 the smoothed displacement, the tangential relaxation)
tree_ensemble    the summed leaf values of boosted decision trees
trimmed_omp      trimmed OMP (the SSC-L0 inner solve: OMP on the kept rows,
                 trimming by residual norm); the reference runs on NumPy and
                 CuPy arrays
"""

from .block_mean import block_mean_numba, block_mean_numpy
from .dense_samples import dense_samples_numba, dense_samples_numpy
from .gaussian_smooth import gaussian_smooth_numba, gaussian_smooth_numpy
from .gram_lasso import gram_lasso_numba, gram_lasso_numpy, lasso_objective
from .huber_lasso import (huber_lasso_numba, huber_lasso_numpy, huber_lasso_reweighted_numba,
                          huber_lasso_reweighted_numpy, lasso_partial_numba, lasso_partial_numpy)
from .neighbour_list import (knn_index_numba, knn_index_numpy, knn_numba, knn_numpy,
                             nearest_in_list_numba, nearest_in_list_numpy)
from .outlier_hessian import (outlier_hessian_cupy, outlier_hessian_numba,
                              outlier_hessian_numpy)
from .normal_sampling import sample_normals_cupy, sample_normals_numba, sample_normals_numpy
from .profile_search import profile_search_numba, profile_search_numpy
from .tree_ensemble import tree_ensemble_numba, tree_ensemble_numpy
from .template_step import template_step_numba, template_step_numpy
from .trimmed_omp import (new_state, omp_columns_numpy, trimmed_gram_column,
                          trimmed_gram_set_rows, trimmed_omp_numba, trimmed_omp_numpy)

__all__ = ["block_mean_numpy", "block_mean_numba",
           "dense_samples_numpy", "dense_samples_numba",
           "gaussian_smooth_numpy", "gaussian_smooth_numba",
           "gram_lasso_numpy", "gram_lasso_numba", "lasso_objective",
           "huber_lasso_numpy", "huber_lasso_numba",
           "huber_lasso_reweighted_numpy", "huber_lasso_reweighted_numba",
           "lasso_partial_numpy", "lasso_partial_numba",
           "nearest_in_list_numpy", "nearest_in_list_numba",
           "knn_numpy", "knn_numba",
           "knn_index_numpy", "knn_index_numba",
           "outlier_hessian_numpy", "outlier_hessian_numba", "outlier_hessian_cupy",
           "sample_normals_numpy", "sample_normals_numba", "sample_normals_cupy",
           "profile_search_numpy", "profile_search_numba",
           "tree_ensemble_numpy", "tree_ensemble_numba",
           "template_step_numpy", "template_step_numba",
           "trimmed_omp_numpy", "trimmed_omp_numba", "omp_columns_numpy",
           "trimmed_gram_set_rows", "trimmed_gram_column", "new_state"]
