"""SSC for many observed shapes against one dictionary (population studies).

Each shape gets the solve :func:`sparse_shape_composition` gives it alone
(the same alignment rounds, penalties and stopping rules), so a result does
not depend on which other shapes were in the batch. Only the summation order
of the first pass over D differs: one matrix product for a group of shapes
instead of one product per shape. With alignment the results agree with the
single solves to rounding (bit for bit in ``bench/bench_batched.py``). Without
alignment, rounding in D^T W y can move the automatic lambda2 (a median of
residuals), so x agrees to ~1e-7 relative, with KKT certified either way.

The batch runs on threads of this process (the default: the compiled solver
releases the GIL, every thread solves against its own view of the one
dictionary, BLAS on one thread each, nothing is copied or pickled), on a local
process pool (the dictionary sent once per worker and rebuilt there on the same
backend) or on a dask.distributed cluster.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from .._validation import check_choice, check_number
from ..backend import one_blas_thread
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


# shapes whose pass over D is made at once (:meth:`ShapeDictionary.prepare`):
# D is read once per group instead of once per shape; the group's right-hand
# sides (12 columns per 3-D shape with alignment) stay under PREPARE_BYTES
PREPARE_GROUP = 16
PREPARE_BYTES = 32 * 2**20


def _group_size(dic, aligned):
    width = 1 if aligned else dic.n_dims * dic.n_dims + dic.n_dims
    per_shape = 8 * dic.n_rows * width
    return int(max(1, min(PREPARE_GROUP, PREPARE_BYTES // per_shape)))


def _solve_items(dic, items, options, bar=None):
    """The single-shape solve of each (shape, weights) item, the pass over D
    prepared for a group of them at a time."""
    out = []
    l1 = options.get("method", "l1") == "l1"
    aligned = options.get("alignment", "similarity") == "none"
    size = _group_size(dic, aligned)
    try:
        for g in range(0, len(items), size):
            group = items[g:g + size]
            if l1 and len(group) > 1:
                s2 = [np.square(_check_vertex_weights(w, dic.n_points)) for _, w in group]
                dic.prepare([y for y, _ in group], s2, aligned)
            for y, w in group:
                out.append(sparse_shape_composition(y, dic, w, **options))
                if bar is not None:
                    bar.update()
    finally:                          # the store holds a group's products: drop it
        dic.prepare([], [], aligned)
    return out


def _solve_chunk(items):
    return _solve_items(_W["dic"], items, _W["options"])


def _solve_threaded(dic, options, chunks, n_threads, bar):
    """Chunks on a thread pool, one dictionary view per thread, in order."""
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()

    def solve(items):
        view = getattr(local, "dic", None)
        if view is None:
            view = local.dic = dic.view()
        return _solve_items(view, items, options)

    out = []
    with one_blas_thread(), ThreadPoolExecutor(n_threads) as pool:
        for res in pool.map(solve, chunks):
            out.extend(res)
            bar.update(len(res))
    return out


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
    return _solve_items(_W["dask_dic"], items, options)


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
                                  chunk_size=None, progress=False, client=None,
                                  executor="threads", **options):
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
        Parallel workers (-1: every core this process may use). 1 solves in
        this thread.
    chunk_size : int, optional
        Shapes per task (default: about four tasks per worker).
    progress : bool
        A progress bar (tqdm) over shapes.
    client : dask.distributed.Client, optional
        Solve on this cluster instead of a local pool (``n_jobs`` and
        ``executor`` are then ignored); the dictionary is scattered to every
        worker once.
    executor : {'threads', 'processes'}
        The local pool for ``n_jobs > 1``: threads of this process (the
        solver releases the GIL; no start-up cost) or worker processes (each
        rebuilds the dictionary; for option combinations whose Python share
        is large, e.g. many alignment rounds of small shapes).
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
    check_choice("executor", executor, ("threads", "processes"))
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
            out.extend(_solve_items(dic, rest, options, bar))
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
        elif executor == "threads":
            out.extend(_solve_threaded(dic, options, chunks, min(n_jobs, len(chunks)), bar))
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
