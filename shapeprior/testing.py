"""Test helpers: one test body run on every backend.

:func:`each_backend` turns a test that takes a ``backend`` argument and
returns an array (or a tuple of arrays) into one test per backend
(``numpy``, ``numba``, ``cupy``), each compared with the reference
backend's result, as CuPy's ``numpy_cupy_allclose`` does. The CuPy case
carries the ``gpu`` marker and is skipped, visibly, where no CUDA device
is present. Requires pytest (a test dependency).
"""

from __future__ import annotations

import functools

import numpy as np

from .backend import cupy_available, numba_available, to_numpy

BACKEND_NAMES = ("numpy", "numba", "cupy")


def available_backends():
    """Backends usable on this machine (``numpy`` always)."""
    out = ["numpy"]
    if numba_available():
        out.append("numba")
    if cupy_available():
        out.append("cupy")
    return out


def _as_tuple(r):
    return tuple(r) if isinstance(r, (tuple, list)) else (r,)


def each_backend(fn=None, *, reference="numpy", atol=1e-9, rtol=1e-7):
    """Run the decorated test once per backend and compare with ``reference``.

    The test takes a ``backend`` argument (plus any fixtures) and returns the
    array(s) to compare; arrays may be CuPy arrays. With ``reference=None``
    nothing is compared (the body asserts by itself).
    """
    import pytest

    def deco(test):
        @functools.wraps(test)
        def run(*args, backend, **kwargs):
            if backend == "cupy" and not cupy_available():
                pytest.skip("needs CuPy and a CUDA GPU")
            if backend == "numba" and not numba_available():
                pytest.skip("needs numba")
            got = test(*args, backend=backend, **kwargs)
            if reference is None or backend == reference:
                return
            want = test(*args, backend=reference, **kwargs)
            got, want = _as_tuple(got), _as_tuple(want)
            assert len(got) == len(want), (f"{backend} returned {len(got)} arrays, "
                                           f"{reference} {len(want)}")
            for g, w in zip(got, want):
                np.testing.assert_allclose(to_numpy(g), to_numpy(w), atol=atol, rtol=rtol,
                                           err_msg=f"{backend} differs from {reference}")

        params = [pytest.param(b, marks=pytest.mark.gpu) if b == "cupy" else b
                  for b in BACKEND_NAMES]
        return pytest.mark.parametrize("backend", params)(run)

    return deco(fn) if fn is not None else deco
