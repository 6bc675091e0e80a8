"""SSC for many observed shapes against one dictionary (population studies).

Each shape gets the solve :func:`sparse_shape_composition` gives it alone
(the same alignment rounds, penalties and stopping rules), so a result never
depends on which other shapes were in the batch or on how the batch was split;
between a worker (one BLAS thread) and a multi-threaded BLAS in this process
only the summation order differs (the optimum agrees to rounding, ~1e-13). The batch runs on a local process pool (one BLAS and Numba thread per
worker, the dictionary sent once per worker and rebuilt there on the same
backend) or on a dask.distributed cluster.
"""

from __future__ import annotations

import os

import numpy as np

from .._validation import check_number
from ._compose import _check_shape, _check_vertex_weights, sparse_shape_composition
from ._dictionary import ShapeDictionary

_W: dict = {}


def _limit_threads():
    """One BLAS and one Numba thread in a worker: the pool is the parallelism."""
    try:
        import numba

        numba.set_num_threads(1)
    except (ImportError, ValueError):
        pass
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def _init_worker(atoms, mean, backend, options):
    _W["limits"] = _limit_threads()
    _W["dic"] = ShapeDictionary(atoms, mean, backend=backend)
    _W["options"] = options


def _solve_chunk(items):
    dic, options = _W["dic"], _W["options"]
    return [sparse_shape_composition(y, dic, w, **options) for y, w in items]


def _fingerprint(dic):
    import hashlib

    h = hashlib.sha1(np.ascontiguousarray(dic.atoms).tobytes())
    h.update(np.ascontiguousarray(dic.mean).tobytes())
    h.update(dic.backend.encode())
    return h.hexdigest()


def _solve_chunk_with(dic_parts, key, options, items):
    """dask task: the dictionary arrives once per worker (scattered) and is
    prepared once per worker (``key``: its content fingerprint)."""
    if _W.get("dask_key") != key:
        _W["dask_key"] = key
        _W["dask_dic"] = ShapeDictionary(dic_parts[0], dic_parts[1], backend=dic_parts[2])
    return [sparse_shape_composition(y, _W["dask_dic"], w, **options) for y, w in items]


def _weights_for(weights, n_shapes, n_points):
    """Per-shape weight vectors: None, one (N,) for all, or (M, N)."""
    if weights is None:
        return [None] * n_shapes
    w = np.asarray(weights, dtype=float)
    if w.ndim == 1:
        w = _check_vertex_weights(w, n_points)
        return [w] * n_shapes
    if w.shape != (n_shapes, n_points):
        raise ValueError(f"weights has shape {w.shape}; expected ({n_points},) for every "
                         f"shape or ({n_shapes}, {n_points}), one row per shape")
    return [_check_vertex_weights(row, n_points) for row in w]


def sparse_shape_composition_many(shapes, dictionary, weights=None, *, n_jobs=1,
                                  chunk_size=None, progress=False, client=None, **options):
    """:func:`sparse_shape_composition` for many shapes and one dictionary.

    Parameters
    ----------
    shapes : array_like, shape (M, N, d), or a sequence of M arrays (N, d)
        Observed shapes in correspondence with the dictionary, each in any
        frame (mm).
    dictionary : ShapeDictionary
    weights : array_like, shape (N,) or (M, N), optional
        Per-vertex confidence: one vector for every shape, or one row per shape.
    n_jobs : int
        Worker processes (-1: every core this process may use). 1 solves in
        this process.
    chunk_size : int, optional
        Shapes per task (default: about four tasks per worker).
    progress : bool
        A progress bar (tqdm) over shapes.
    client : dask.distributed.Client, optional
        Solve on this cluster instead of a local pool (``n_jobs`` is then
        ignored); the dictionary is scattered to every worker once.
    **options
        Passed to :func:`sparse_shape_composition` (``method``, ``lambda1``,
        ``refit``, ...).

    Returns
    -------
    list of SSCResult
        In the order of ``shapes``; each the single-shape solve's result (to
        rounding: BLAS sums in another order with other thread counts).

    Notes
    -----
    The first shape is solved here before any worker starts, so a bad option
    or a bad shape fails at once with the single solver's message; every
    shape is checked (shape, finite values) before the pool starts.
    """
    from tqdm import tqdm

    dic = dictionary
    if not isinstance(dic, ShapeDictionary):
        raise TypeError(f"dictionary must be a ShapeDictionary, got {type(dic).__name__}")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or \
            (n_jobs < 1 and n_jobs != -1):
        raise ValueError(f"n_jobs={n_jobs!r} must be a positive integer or -1 (every core)")
    if chunk_size is not None:
        check_number("chunk_size", chunk_size, 1, integer=True)
    ys = []
    for i, y in enumerate(shapes):
        try:
            ys.append(_check_shape(y, dic))
        except ValueError as exc:
            raise ValueError(f"shapes[{i}]: {exc}") from None
    M = len(ys)
    if M == 0:
        return []
    ws = _weights_for(weights, M, dic.n_points)
    if n_jobs == -1:
        n_jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
    workers = n_jobs if client is None else max(len(client.scheduler_info()["workers"]), 1)
    parallel = M > 1 and (client is not None or n_jobs > 1)
    if parallel and dic.backend == "cupy":
        raise ValueError("n_jobs > 1 or a dask client needs a CPU dictionary (backend numpy "
                         "or numba); on a GPU solve in one process (n_jobs=1)")
    bar = tqdm(total=M, desc="SSC", unit="shape", disable=not progress)
    try:
        out = [sparse_shape_composition(ys[0], dic, ws[0], **options)]
        bar.update()
        rest = list(zip(ys[1:], ws[1:]))
        if not parallel:
            for y, w in rest:
                out.append(sparse_shape_composition(y, dic, w, **options))
                bar.update()
            return out
        size = chunk_size or max(1, -(-len(rest) // (4 * workers)))
        chunks = [rest[i:i + size] for i in range(0, len(rest), size)]
        if client is not None:
            parts = client.scatter((dic.atoms, dic.mean, dic.backend), broadcast=True)
            key = _fingerprint(dic)
            futures = [client.submit(_solve_chunk_with, parts, key, options, c, pure=False)
                       for c in chunks]
            for f in futures:          # in order; the bar moves as each chunk lands
                res = f.result()
                out.extend(res)
                bar.update(len(res))
        else:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(min(n_jobs, len(chunks)), initializer=_init_worker,
                                     initargs=(dic.atoms, dic.mean, dic.backend, options)) as pool:
                for res in pool.map(_solve_chunk, chunks):
                    out.extend(res)
                    bar.update(len(res))
    finally:
        bar.close()
    return out
