"""Small pieces every run goes through: the backend choice, the voxel trees' split
rule, and what ``model-info`` reports (values checked against their definitions)."""

from __future__ import annotations

import numpy as np
import pytest

from shapeprior.backend import numba_available, resolve_backend


def test_backend_choice_reads_the_environment_in_any_case(monkeypatch):
    monkeypatch.delenv("SHAPEPRIOR_BACKEND", raising=False)
    auto = "numba" if numba_available() else "numpy"
    assert resolve_backend(None) == auto and resolve_backend("AUTO") == auto
    monkeypatch.setenv("SHAPEPRIOR_BACKEND", "NumPy")
    assert resolve_backend(None) == "numpy"
    assert resolve_backend("Numpy") == "numpy"          # an argument wins over the variable
    monkeypatch.setenv("SHAPEPRIOR_BACKEND", "tpu")
    with pytest.raises(ValueError, match=r"backend='tpu'.*SHAPEPRIOR_BACKEND"):
        resolve_backend(None)


def test_auto_backend_is_the_compiled_one_when_numba_imports():
    pytest.importorskip("numba")
    assert resolve_backend("auto") == "numba"


@pytest.mark.parametrize("twin", ["tree_ensemble_numpy", "tree_ensemble_numba"])
def test_trees_send_a_sample_equal_to_the_threshold_left(twin):
    """scikit-learn's split rule, ``x <= threshold`` goes left, in both twins: two
    stumps (feature 0 at 1.0; feature 1 at -2.0) summed."""
    import shapeprior_kernels

    fn = getattr(shapeprior_kernels, twin)
    feature = np.array([0, -1, -1, 1, -1, -1])
    threshold = np.array([1.0, 0, 0, -2.0, 0, 0])
    left = np.array([1, -1, -1, 4, -1, -1])
    right = np.array([2, -1, -1, 5, -1, -1])
    value = np.array([0.0, 10.0, 20.0, 0.0, 1.0, 2.0])
    roots = np.array([0, 3])
    X = np.array([[1.0, -2.0], [np.nextafter(1.0, 2.0), -2.0], [0.5, np.nextafter(-2.0, 0)]])
    np.testing.assert_array_equal(fn(X, feature, threshold, left, right, value, roots),
                                  [11.0, 21.0, 12.0])


@pytest.fixture(scope="module")
def family_model():
    """A model of 12 shapes: an ellipsoid whose three semi-axes vary by known amounts."""
    from shapeprior.mesh import icosphere
    from shapeprior.model import model_from_shapes

    v, f = icosphere(2)
    rng = np.random.default_rng(0)
    shapes = [v * np.array([20.0, 14.0, 9.0]) * (1 + rng.normal(0, [0.12, 0.05, 0.02]))
              for _ in range(12)]
    m = model_from_shapes(np.stack(shapes), f)
    m.metadata["parameters"] = {"labels": [1], "images_dir": "/data/DOE_JOHN/images"}
    return m


def test_model_info_hides_the_training_folders(family_model):
    from shapeprior.model import model_summary

    s = model_summary(family_model)
    assert s["provenance"]["build_parameters"]["images_dir"] is True
    assert "DOE_JOHN" not in repr(s)


def test_model_info_variance_mode_shapes_and_vertex_spread(family_model):
    from shapeprior.model import mode_shape, model_summary, vertex_sd

    m = family_model
    var = np.asarray(m.pca_variances)
    s = model_summary(m)["pca"]
    np.testing.assert_allclose(s["explained_variance"], (var / var.sum())[:10].round(4))
    assert s["cumulative"][-1] <= 1.0 and s["explained_variance"][0] > 0.5
    np.testing.assert_allclose(s["sd_mm"], np.sqrt(var[:10]).round(3))
    # two standard deviations along the first mode: 2 sd away from the mean in all
    step = mode_shape(m, 0, 2.0) - m.mean
    assert np.sqrt((step ** 2).sum()) == pytest.approx(2.0 * np.sqrt(var[0]), rel=1e-9)
    # the spread of each vertex: RMS distance from its mean position
    d2 = ((m.shapes - m.mean[None]) ** 2).sum(axis=2)
    np.testing.assert_allclose(vertex_sd(m), np.sqrt(d2.mean(axis=0)), rtol=1e-12)
    assert not np.allclose(vertex_sd(m), np.sqrt(d2).mean(axis=0), rtol=1e-3)
    with pytest.raises(ValueError, match="mode="):
        mode_shape(m, len(var), 1.0)


def test_stage_clock_sums_the_calls_of_each_stage(monkeypatch):
    """A stage entered several times reports the sum of its times and its call
    count; nested stages each get their own time."""
    from shapeprior import _profile

    now = [0.0]
    monkeypatch.setattr(_profile.time, "perf_counter", lambda: now[0])
    clock = _profile.StageClock()
    for dt in (1.5, 2.0, 0.25):
        with clock("search"):
            now[0] += dt
    with clock("ssc"):
        now[0] += 1.0
        with clock("inner"):
            now[0] += 0.5
    got = clock.as_dict()
    assert got["search"] == {"seconds": 3.75, "calls": 3}
    assert got["ssc"] == {"seconds": 1.5, "calls": 1}
    assert got["inner"] == {"seconds": 0.5, "calls": 1}


def test_stage_clock_samples_the_peak_inside_a_stage():
    """With ``rss=True`` the sampler keeps the highest resident size seen while a
    stage runs: 160 MB touched and freed inside the stage show in its peak,
    though the process is back below it at the stage's end."""
    import time

    from shapeprior import _profile

    clock = _profile.StageClock(rss=True, interval=0.001)
    try:
        before = _profile.current_rss_bytes()
        with clock("spike"):
            a = np.ones(20_000_000)             # 160 MB, every page touched
            time.sleep(0.05)
            del a
            time.sleep(0.01)
        after = _profile.current_rss_bytes()
    finally:
        clock.close()
    peak = clock.as_dict()["spike"]["peak_rss_mb"] * 2**20
    assert after < before + 80e6                # freed: the end sample alone misses it
    assert peak > before + 120e6


def _fake_backend_test(results):
    """An each_backend test body returning ``results[backend]``, undecorated."""
    from shapeprior.testing import each_backend

    def body(backend):
        return results[backend]

    return each_backend(body)


@pytest.mark.skipif(not numba_available(), reason="needs numba")
@pytest.mark.parametrize("numba_result, message", [
    ((np.ones(3), np.zeros(2)), None),                       # agrees: passes
    ((np.ones(3) + 1e-3, np.zeros(2)), "numba differs from numpy"),
    ((np.ones(3), np.zeros(2) + 1e-3), "numba differs from numpy"),   # the second array
    ((np.ones(3),), "numba returned 1 arrays, numpy 2"),
])
def test_each_backend_compares_every_array_with_the_reference(numba_result, message):
    """The parity harness itself: a backend whose first or second array differs,
    or that returns fewer arrays, fails; one that agrees passes."""
    run = _fake_backend_test({"numpy": (np.ones(3), np.zeros(2)), "numba": numba_result})
    if message is None:
        run(backend="numba")
    else:
        with pytest.raises(AssertionError, match=message):
            run(backend="numba")
