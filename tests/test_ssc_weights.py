"""SSC with fractional vertex weights and reported quantities, against
independent references (ADMM on the stated objective, weighted Procrustes,
planted leaks of known size in input millimetres)."""

import numpy as np
import pytest

from shapeprior.align import procrustes
from shapeprior.ssc import ShapeDictionary, sparse_composition, sparse_shape_composition
from shapeprior.ssc._admm import solve_admm
from shapeprior.ssc._l1 import full_objective
from shapeprior.synthetic import make_ssc_problem


def _problem(seed=0, N=160, K=15, frac=0.1):
    p = make_ssc_problem(N, K, gross_fraction=frac, seed=seed, transform=False)
    return p, ShapeDictionary(p.atoms)


def test_fractional_weights_solve_the_stated_objective():
    """sum s^2 (z - Dx - e)^2 + l1|x| + l2|e| with s in (0, 1]: the same optimum as
    ADMM run directly on per-coordinate weights s^2."""
    p, dic = _problem(1)
    s = np.random.default_rng(2).uniform(0.1, 1.0, p.observed.shape[0])
    out = sparse_composition(p.observed, dic, s, lambda1=1.0, lambda2=1.0)
    z = p.observed.ravel()
    w = np.repeat(s * s, 3)
    xa, ea, _ = solve_admm(dic, z, w, 1.0, 1.0, tol=1e-11, max_iter=300000)
    fa = full_objective(z, np.asarray(dic.D) @ xa, xa, w, 1.0, 1.0)
    assert out.objective <= fa * (1 + 1e-9)
    assert out.objective == pytest.approx(fa, rel=1e-6)
    assert np.allclose(out.x, xa, atol=1e-4 * max(1.0, np.abs(xa).max()))


def test_alignment_uses_squared_weights():
    """beta is the weighted (s^2) similarity Procrustes of the observed shape onto
    the composed shape D x (whose size is gauge-fixed, which leaves the rotation)."""
    p = make_ssc_problem(200, 20, gross_fraction=0.0, seed=3, transform=True)
    dic = ShapeDictionary(p.atoms)
    s = np.random.default_rng(4).uniform(0.05, 1.0, 200)
    res = sparse_shape_composition(p.observed, dic, s, max_align_iter=3, reweight=0)
    assert not res.overridden.any()
    recon = np.tensordot(res.x, p.atoms, axes=1)
    ref = procrustes(p.observed, recon, s * s, kind="similarity")
    assert np.allclose(res.transform.rotation, ref.rotation, atol=1e-9)
    wrong = procrustes(p.observed, recon, s, kind="similarity")
    assert not np.allclose(wrong.rotation, ref.rotation, atol=1e-6)   # the test can tell


@pytest.mark.parametrize("method, refit", [("l1", None), ("l0", None), ("l0", 0.5),
                                           ("l1", 0.5)])
def test_error_norm_is_the_planted_leak_in_input_mm(method, refit):
    """Shapes given at 3x the model's scale with a 20 mm leak on 8 % of the
    vertices: error_norm reads about 20 there (input mm, not model units),
    with and without the refit of the inliers (the hybrid)."""
    p = make_ssc_problem(400, 30, gross_fraction=0.0, seed=5, transform=False)
    dic = ShapeDictionary(p.atoms)
    y = 3.0 * p.clean
    rng = np.random.default_rng(6)
    leak = rng.choice(400, 32, replace=False)
    d = rng.normal(size=(32, 3))
    y[leak] += 20.0 * d / np.linalg.norm(d, axis=1)[:, None]
    res = sparse_shape_composition(y, dic, method=method, n_nonzero=10, refit=refit)
    assert res.transform.scale == pytest.approx(1 / 3, rel=0.05)
    flagged = res.overridden
    assert flagged[leak].mean() >= 0.9
    # measured: median 19.3-20.0 mm on the leak (L1 shrinks |e| by its threshold)
    assert np.median(res.error_norm[leak]) == pytest.approx(20.0, rel=0.15)
    assert np.median(res.error_norm[~flagged]) < 1.0


def test_unseen_vertices_are_never_overridden():
    p, dic = _problem(7, N=300, K=20, frac=0.05)
    y = p.observed.copy()
    hidden = np.zeros(300, dtype=bool)
    hidden[:90] = True
    y[hidden] += 60.0                       # garbage where the weight is 0
    s = np.where(hidden, 0.0, 1.0)
    for method in ("l1", "l0"):
        res = sparse_shape_composition(y, dic, s, method=method, n_nonzero=10)
        assert not res.overridden[hidden].any()
        assert res.outlier_fraction == pytest.approx(res.overridden[~hidden].mean())
        assert res.outlier_fraction > 0.02                # the planted gross errors


def test_l0_threshold_ignores_unseen_vertices():
    """Garbage on weight-0 vertices must not raise the trimming threshold: the
    planted gross errors on visible vertices are still all trimmed."""
    rng = np.random.default_rng(8)
    N, K = 300, 25
    atoms = rng.normal(size=(K, N, 3))
    x = np.zeros(K)
    x[:4] = [1.5, -1.2, 1.0, 2.0]
    y = np.tensordot(x, atoms, axes=1) + 0.05 * rng.normal(size=(N, 3))
    hidden = np.zeros(N, dtype=bool)
    hidden[:140] = True
    y[hidden] += 500.0
    bad = np.arange(140, 160)
    y[bad] += 6.0
    out = sparse_composition(y, ShapeDictionary(atoms), np.where(hidden, 0.0, 1.0),
                             method="l0", n_nonzero=4)
    trimmed = np.any(out.e != 0, axis=1)
    assert trimmed[bad].all()
