"""Property tests of Procrustes alignment against independent optima.

Random rotations (reflections included), anisotropic scales, weights in
(0, 1] and noise, drawn by hypothesis. The reference optimum is computed
without the SVD formula: a multi-start minimisation over rotations (scale and
translation have closed forms for a fixed rotation), or the weighted normal
equations for affine.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.spatial.transform import Rotation

from shapeprior.align import procrustes

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw, reflect=None):
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(8, 40))
    src = rng.normal(size=(n, 3)) * draw(st.sampled_from([1.0, 10.0, 50.0])) \
        * rng.uniform(0.3, 2.0, 3)                       # anisotropic point clouds
    R = Rotation.random(random_state=seed).as_matrix()
    flip = draw(st.booleans()) if reflect is None else reflect
    if flip:
        R = R @ np.diag([1.0, 1.0, -1.0])                 # an improper rotation
    s = draw(st.floats(0.2, 5.0))
    t = rng.normal(size=3) * 20
    w = rng.uniform(0.05, 1.0, n)                         # fractional weights
    noise = draw(st.sampled_from([0.0, 0.01, 0.5]))
    dst = s * src @ R.T + t + noise * rng.normal(size=(n, 3))
    return src, dst, w, R, s, t, noise, flip


def _residual(T, src, dst, w):
    return float(w @ np.sum((T.apply(src) - dst) ** 2, axis=1))


def _best_for_rotation(R, src, dst, w, with_scale):
    """Optimal scale and translation for a fixed rotation, and the residual."""
    ws = w / w.sum()
    ms, mt = ws @ src, ws @ dst
    xs, xt = src - ms, dst - mt
    Rx = xs @ R.T
    s = float(np.sum(w[:, None] * Rx * xt) / np.sum(w[:, None] * Rx * Rx)) if with_scale else 1.0
    s = max(s, 0.0)
    res = float(w @ np.sum((s * Rx - xt) ** 2, axis=1))
    return res, s


def _reference_optimum(src, dst, w, with_scale):
    """Minimum residual over proper rotations, by multi-start local search."""
    def f(rv):
        return _best_for_rotation(Rotation.from_rotvec(rv).as_matrix(), src, dst, w,
                                  with_scale)[0]
    rng = np.random.default_rng(0)
    starts = [np.zeros(3)] + [Rotation.random(random_state=int(k)).as_rotvec()
                              for k in rng.integers(0, 10**6, 11)]
    return min(minimize(f, x0, method="BFGS").fun for x0 in starts)


@SETTINGS
@given(problems())
def test_similarity_reaches_the_optimum_and_never_reflects(p):
    src, dst, w, R, s, t, noise, flip = p
    T = procrustes(src, dst, w, kind="similarity")
    assert np.linalg.det(T.linear) > 0                  # never a reflection
    ref = _reference_optimum(src, dst, w, with_scale=True)
    got = _residual(T, src, dst, w)
    assert got <= ref * (1 + 1e-6) + 1e-9, (got, ref)
    if not flip and noise == 0.0:                       # the known transform comes back
        assert np.allclose(T.rotation, R, atol=1e-6)
        assert T.scale == pytest.approx(s, rel=1e-6)
        assert np.allclose(T.translation, t, atol=1e-5 * max(1.0, np.abs(t).max()))


@SETTINGS
@given(problems())
def test_rigid_reaches_the_optimum_with_unit_scale(p):
    src, dst, w, *_ = p
    T = procrustes(src, dst, w, kind="rigid")
    assert np.linalg.det(T.linear) > 0 and T.scale == pytest.approx(1.0, abs=1e-12)
    ref = _reference_optimum(src, dst, w, with_scale=False)
    assert _residual(T, src, dst, w) <= ref * (1 + 1e-6) + 1e-9


@SETTINGS
@given(problems(reflect=True))
def test_reflection_allowed_recovers_the_mirror(p):
    src, dst, w, R, s, t, noise, _ = p
    T = procrustes(src, dst, w, kind="similarity", reflection=True)
    if noise == 0.0:
        assert np.allclose(T.linear, s * R, atol=1e-6 * s)
    assert np.linalg.det(T.linear) < 0


@SETTINGS
@given(problems())
def test_affine_matches_the_weighted_normal_equations(p):
    src, dst, w, *_ = p
    rng = np.random.default_rng(1)
    A = np.diag(rng.uniform(0.5, 3.0, 3)) @ Rotation.random(random_state=3).as_matrix()
    dst = src @ A.T + dst.mean(0) + 0.3 * rng.normal(size=src.shape)
    T = procrustes(src, dst, w, kind="affine")
    X = np.c_[src, np.ones(len(src))]
    beta = np.linalg.solve(X.T @ (w[:, None] * X), X.T @ (w[:, None] * dst))
    assert np.allclose(T.linear, beta[:3].T, atol=1e-8 * max(1.0, np.abs(beta).max()))
    assert np.allclose(T.translation, beta[3], atol=1e-7 * max(1.0, np.abs(beta).max()))
