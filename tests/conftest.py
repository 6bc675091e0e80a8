import os
from pathlib import Path

import numpy as np
import pytest


def _data_root():
    root = os.environ.get("SHAPEPRIOR_DATA")
    if root:
        return Path(root)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root():
    root = _data_root()
    if not root.is_dir():
        pytest.skip(f"public data not found at {root} (set SHAPEPRIOR_DATA)")
    return root


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def gpu_available():
    from shapeprior.backend import cupy_available

    return cupy_available()


requires_gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")
