import logging
import sys

import nibabel.imageglobals
import numpy as np
import pytest


class _CurrentStderr:
    """Whatever ``sys.stderr`` is now (a test's capsys stream, the session's)."""

    def write(self, text):
        return sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()


# nibabel's handler writes to the sys.stderr of its import: a capsys stream when a
# test imported it first, closed after that test, so later messages failed ("Logging
# error") and which test saw them depended on the order the tests ran. Following the
# current sys.stderr, a stray nibabel line reaches capsys as it reaches a user.
for _h in nibabel.imageglobals.logger.handlers:
    if isinstance(_h, logging.StreamHandler):
        _h.setStream(_CurrentStderr())


@pytest.fixture(scope="session")
def data_root():
    from shapeprior.data import data_root as _data_root

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


def requires_gpu(test):
    """Mark a test ``gpu`` and skip it, visibly, without CuPy and a CUDA device."""
    return pytest.mark.gpu(pytest.mark.skipif(not gpu_available(),
                                              reason="needs CuPy and a CUDA GPU")(test))


@pytest.fixture(scope="session")
def phantom_model(tmp_path_factory):
    """Seven phantom MR image/label pairs (case 6 with a planted leak) and a
    model with appearance built from the first six: ``(dir, images, labels, model)``."""
    from _phantoms import build_phantom_model
    from shapeprior.synthetic import write_phantom_cases

    d = tmp_path_factory.mktemp("phantoms")
    images, labels = write_phantom_cases(d, n_cases=7, seed=3, with_leak=(6,))
    return d, images, labels, build_phantom_model(d, images, labels, 6)


@pytest.fixture(scope="session")
def paired(tmp_path_factory):
    """Seven paired-organ phantoms (an organ left and right of the midline) and a
    model built with --split-sides from the first six: ``(dir, images, truth, model)``
    (``truth[name][side]``: the organ's mask)."""
    import shutil

    from _phantoms import write_paired_phantoms
    from shapeprior.cli import main

    d = tmp_path_factory.mktemp("paired")
    images, labels, truth = write_paired_phantoms(d, n_cases=7, seed=11)
    train = d / "train"
    train.mkdir()
    for f in sorted(labels.iterdir())[:6]:
        shutil.copy(f, train / f.name)
    model = d / "model.npz"
    assert main(["build-model", str(train), "-o", str(model), "--split-sides",
                 "--images", str(images), "--vertices", "642", "--iso-spacing", "0.75",
                 "--smooth", "0.75", "--quiet"]) == 0
    return d, images, truth, model
