"""Array backends: NumPy (always), Numba (CPU kernels), CuPy (optional GPU).

Array-level algorithms in shapeprior are written against a namespace ``xp``
returned by :func:`get_array_module`, so the same code runs on NumPy in CI and
on CuPy on a GPU. Hot inner loops that do not vectorise well are dispatched to
the kernels in :mod:`shapeprior_kernels` (NumPy reference, Numba twin, CuPy
raw kernel).

The backend is chosen with a ``backend=`` argument or the environment variable
``SHAPEPRIOR_BACKEND`` (``auto``, ``numpy``, ``numba`` or ``cupy``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

import numpy as np

BACKENDS = ("auto", "numpy", "numba", "cupy")
ENV_VAR = "SHAPEPRIOR_BACKEND"


class BackendUnavailableError(RuntimeError):
    """Raised when a backend was requested explicitly but cannot be used."""


def _cupy_or_none():
    try:
        import cupy  # noqa: F401
    except Exception:  # ImportError, or a CUDA runtime failure at import
        return None
    return cupy


def cupy_available() -> bool:
    """True when CuPy imports and at least one CUDA device is visible."""
    cp = _cupy_or_none()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(backend: str | None = None) -> str:
    """Return the concrete backend name for a request.

    Parameters
    ----------
    backend : {'auto', 'numpy', 'numba', 'cupy'} or None
        ``None`` reads ``$SHAPEPRIOR_BACKEND`` (default ``'auto'``). ``'auto'``
        picks ``'numba'`` when Numba imports, else ``'numpy'``; the GPU is
        never chosen implicitly for CPU-resident data.

    Raises
    ------
    ValueError
        For a name outside :data:`BACKENDS`.
    BackendUnavailableError
        When ``'cupy'`` or ``'numba'`` is requested but unusable.
    """
    if backend is None:
        backend = os.environ.get(ENV_VAR, "auto") or "auto"
    backend = str(backend).lower()
    if backend not in BACKENDS:
        raise ValueError(
            f"backend={backend!r} is not one of {BACKENDS} "
            f"(argument or ${ENV_VAR})"
        )
    if backend == "auto":
        return "numba" if numba_available() else "numpy"
    if backend == "cupy" and not cupy_available():
        raise BackendUnavailableError(
            "backend='cupy' needs CuPy and a CUDA GPU: install the 'gpu' extra "
            "(pip install 'shapeprior[gpu]') on a machine with an NVIDIA GPU, "
            "or use backend='numpy'/'numba'"
        )
    if backend == "numba" and not numba_available():
        raise BackendUnavailableError("backend='numba' needs the numba package")
    return backend


#: the one dispatch table: operation -> backend -> twin in :mod:`shapeprior_kernels`
#: (the NumPy references of ``gram_lasso``, ``huber_lasso``, ``lasso_partial`` and ``trimmed_omp`` are
#: array-namespace code and run on CuPy)
KERNELS = {
    "sample_normals": {"numpy": "sample_normals_numpy", "numba": "sample_normals_numba",
                       "cupy": "sample_normals_cupy"},
    "gram_lasso": {"numpy": "gram_lasso_numpy", "numba": "gram_lasso_numba",
                   "cupy": "gram_lasso_numpy"},
    "huber_lasso": {"numpy": "huber_lasso_numpy", "numba": "huber_lasso_numba",
                    "cupy": "huber_lasso_numpy"},
    "huber_lasso_reweighted": {"numpy": "huber_lasso_reweighted_numpy",
                               "numba": "huber_lasso_reweighted_numba",
                               "cupy": "huber_lasso_reweighted_numpy"},
    "lasso_partial": {"numpy": "lasso_partial_numpy", "numba": "lasso_partial_numba",
                      "cupy": "lasso_partial_numpy"},
    "outlier_hessian": {"numpy": "outlier_hessian_numpy", "numba": "outlier_hessian_numba",
                        "cupy": "outlier_hessian_cupy"},
    "trimmed_omp": {"numpy": "trimmed_omp_numpy", "numba": "trimmed_omp_numba",
                    "cupy": "trimmed_omp_numpy"},
    # the template fit (model building) runs on the host
    "nearest_in_list": {"numpy": "nearest_in_list_numpy", "numba": "nearest_in_list_numba",
                        "cupy": "nearest_in_list_numba"},
    "knn": {"numpy": "knn_numpy", "numba": "knn_numba", "cupy": "knn_numba"},
    "knn_index": {"numpy": "knn_index_numpy", "numba": "knn_index_numba",
                  "cupy": "knn_index_numba"},
    "dense_samples": {"numpy": "dense_samples_numpy", "numba": "dense_samples_numba",
                      "cupy": "dense_samples_numba"},
    "template_step": {"numpy": "template_step_numpy", "numba": "template_step_numba",
                      "cupy": "template_step_numba"},
    # samples come back to the host from every sampler: the search runs there
    "profile_search": {"numpy": "profile_search_numpy", "numba": "profile_search_numba",
                       "cupy": "profile_search_numba"},
    # the band voxels' features are computed on the host: the trees run there
    "tree_ensemble": {"numpy": "tree_ensemble_numpy", "numba": "tree_ensemble_numba",
                      "cupy": "tree_ensemble_numba"},
    # a level image on the 'cupy' backend is smoothed on the device by cupyx
    # (LevelImage); this row is the host's
    "gaussian_smooth": {"numpy": "gaussian_smooth_numpy", "numba": "gaussian_smooth_numba",
                        "cupy": "gaussian_smooth_numba"},
    # the placement's downsampled scan is made on the host from the stored voxels
    "block_mean": {"numpy": "block_mean_numpy", "numba": "block_mean_numba",
                   "cupy": "block_mean_numba"},
}


def kernel(op: str, backend: str):
    """The twin of kernel ``op`` for a resolved ``backend`` name.

    Raises
    ------
    ValueError
        An unknown operation or backend.
    """
    import shapeprior_kernels

    if op not in KERNELS:
        raise ValueError(f"op={op!r} is not one of {sorted(KERNELS)}")
    table = KERNELS[op]
    if backend not in table:
        raise ValueError(f"backend={backend!r} is not one of {sorted(table)} for {op}")
    return getattr(shapeprior_kernels, table[backend])


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            import cupy

            return cupy
    return np


def xp_for(backend: str):
    """Array namespace for a resolved backend name."""
    if backend == "cupy":
        import cupy

        return cupy
    return np


def to_numpy(a):
    """Copy a (possibly CuPy) array to host memory as ``numpy.ndarray``."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


_BLAS = {"depth": 0, "limiter": None}


@contextlib.contextmanager
def one_blas_thread():
    """Context manager: the BLAS libraries on one thread, in the main thread.

    The compiled SSC kernels run on one core and call BLAS for their larger
    products; NumPy and SciPy each bring their own OpenBLAS with its own
    threads, and a worker thread of one pool that spins after its last call
    takes the core (or its hyperthread) from the kernel. Measured on the
    2-core development machine, the SSC calls of a kidney segmentation took
    48 ms each with two BLAS threads and 30-38 ms with one, and a cold solve
    at 5000 x 300 twice as long with two.

    Only the main thread sets the limit (nested calls share it; the outermost
    restores the previous limits, about 30 microseconds). BLAS thread limits
    are process-wide in some OpenBLAS builds and per thread in others, so a
    limit set from concurrent threads could outlive them; elsewhere (a
    threaded scheduler) BLAS keeps its settings. Worker processes of
    ``sparse_shape_composition_many`` run on one BLAS thread anyway.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _BLAS["depth"] == 0:
        ctl = _BLAS.get("ctl")
        if ctl is None:
            from threadpoolctl import ThreadpoolController

            import scipy.linalg

            _BLAS["scipy"] = scipy.linalg    # SciPy's BLAS is loaded before the controller looks
            ctl = _BLAS["ctl"] = ThreadpoolController()
        _BLAS["limiter"] = ctl.limit(limits=1, user_api="blas")
    _BLAS["depth"] += 1
    try:
        yield
    finally:
        _BLAS["depth"] -= 1
        if _BLAS["depth"] == 0:
            _BLAS["limiter"].restore_original_limits()
            _BLAS["limiter"] = None


_LOCAL = threading.local()


def thread_budget():
    """Threads the calling thread's own helpers may start (None: no limit;
    see :func:`single_threaded`)."""
    return getattr(_LOCAL, "threads", None)


@contextlib.contextmanager
def single_threaded():
    """Context manager: the enclosed work of this thread on one core.

    For a process pool that runs one case per process at a time (the
    ``--workers`` batches): there the processes are the parallelism, and the
    threads of several processes on the same cores slow each other down.
    Numba's parallel kernels run on one thread (``numba.set_num_threads``
    applies to the calling thread), the smoothing of the level images is not
    split (:func:`thread_budget`), and BLAS runs on one thread. Measured on 2
    cores with 2 dask worker processes, a hippocampus case took 1.4-2.6 s
    instead of 0.45 s: Numba's OpenMP threads of one process spun on the
    cores the other needed.
    """
    prev = getattr(_LOCAL, "threads", None)
    _LOCAL.threads = 1
    nb = None
    if numba_available():
        import numba

        nb = numba.get_num_threads()
        numba.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        if nb is not None:
            numba.set_num_threads(nb)
        _LOCAL.threads = prev


def on_one_blas_thread(fn):
    """Decorator: run ``fn`` inside :func:`one_blas_thread`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with one_blas_thread():
            return fn(*args, **kwargs)

    return wrapper
