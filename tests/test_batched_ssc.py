"""Batched exact SSC-L1 (``sparse_composition_batched``): the single solver's
optimum for every shape, certified by KKT, on every backend."""

import numpy as np
import pytest

from shapeprior.ssc import (ShapeDictionary, sparse_composition_batched,
                            sparse_shape_composition)
from shapeprior.ssc._batched import _padded_sets, feature_sign_batched
from shapeprior.synthetic import ShapePopulation, corrupt_patches
from shapeprior.testing import each_backend


def _problems(M=6, N=300, K=40, seed=0, frac=0.1):
    from shapeprior.align import generalized_procrustes

    rng = np.random.default_rng(seed)
    pop = ShapePopulation(n_points=N, seed=seed)
    atoms = generalized_procrustes(pop.sample(K), max_iter=20, tol=1e-8).aligned
    obs = []
    for _ in range(M):
        y = pop.sample(1, rng)[0] + rng.normal(0, 0.3, (N, 3))
        obs.append(corrupt_patches(y, frac, rng)[0])
    return atoms, np.stack(obs)


@pytest.fixture(scope="module")
def problems():
    return _problems()


def _single(obs, dic, lam2, weights=None):
    return [sparse_shape_composition(y, dic, weights, alignment="none", lambda2=lam2,
                                     reweight=0) for y in obs]


def test_same_optimum_as_the_single_solver(problems):
    atoms, obs = problems
    dic = ShapeDictionary(atoms, backend="numpy")
    lam2 = 3.0
    ref = _single(obs, dic, lam2)
    got = sparse_composition_batched(obs, dic, lambda2=lam2, chunk_size=4)   # two chunks
    assert got.certified.all() and not got.solved_alone.any()
    assert got.kkt.max() <= 1e-10
    for m, r in enumerate(ref):
        assert np.abs(got.x[m] - r.x).max() <= 1e-7 * np.abs(r.x).max()
        assert got.objective[m] == pytest.approx(r.objective, rel=1e-10)
        assert got.lambda1[m] == pytest.approx(r.lambda1, rel=1e-12)
        np.testing.assert_allclose(got.e[m], r.error, atol=1e-6)
        # gross errors found where the single solver finds them
        assert np.array_equal(np.linalg.norm(got.e[m], axis=1) > 0, r.overridden)
    # the residual is y - D x
    np.testing.assert_allclose(got.residual[0], obs[0] - np.tensordot(got.x[0], atoms, 1),
                               atol=1e-9)


def test_shared_weights_with_missing_vertices(problems):
    atoms, obs = problems
    dic = ShapeDictionary(atoms, backend="numpy")
    s = np.ones(atoms.shape[1])
    s[:40] = 0.0                      # missing
    s[40:80] = 0.5                    # low confidence
    ref = _single(obs[:3], dic, 2.0, s)
    got = sparse_composition_batched(obs[:3], dic, s, lambda2=2.0)
    assert got.certified.all()
    for m, r in enumerate(ref):
        assert np.abs(got.x[m] - r.x).max() <= 1e-7 * np.abs(r.x).max()
        assert got.objective[m] == pytest.approx(r.objective, rel=1e-10)


def test_uncertified_shapes_are_solved_alone_or_reported(problems):
    atoms, obs = problems
    dic = ShapeDictionary(atoms, backend="numpy")
    ref = _single(obs[:2], dic, 3.0)
    cut = sparse_composition_batched(obs[:2], dic, lambda2=3.0, max_iter=2, solve_alone=False)
    assert not cut.certified.any() and not cut.solved_alone.any()
    assert (cut.kkt > 1e-10).all()
    fixed = sparse_composition_batched(obs[:2], dic, lambda2=3.0, max_iter=2)
    assert fixed.solved_alone.all() and not fixed.certified.any()
    for m, r in enumerate(ref):
        assert np.abs(fixed.x[m] - r.x).max() <= 1e-7 * np.abs(r.x).max()
        assert fixed.kkt[m] <= 1e-7


def test_per_shape_penalties(problems):
    atoms, obs = problems
    dic = ShapeDictionary(atoms, backend="numpy")
    lam1 = np.array([0.5, 2.0, 8.0])
    lam2 = np.array([1.0, 3.0, 9.0])
    got = sparse_composition_batched(obs[:3], dic, lambda1=lam1, lambda2=lam2)
    for m in range(3):
        r = sparse_shape_composition(obs[m], dic, alignment="none", lambda1=lam1[m],
                                     lambda2=lam2[m], reweight=0)
        assert got.objective[m] == pytest.approx(r.objective, rel=1e-10)
        assert got.lambda1[m] == lam1[m] and got.lambda2[m] == lam2[m]


@pytest.mark.parametrize("kwargs, match", [
    ({"lambda2": "auto"}, "lambda2='auto' is not supported"),
    ({"lambda2": -1.0}, "lambda2 must be a finite number > 0"),
    ({"lambda2": [1.0, 2.0]}, "lambda2 must be a finite number > 0 or 6 of them"),
    ({"lambda2": 1.0, "lambda1": "big"}, "lambda1='big' is invalid"),
    ({"lambda2": 1.0, "lambda1": np.nan}, "lambda1 must be"),
    ({"lambda2": 1.0, "tol": 0.0}, "tol"),
    ({"lambda2": 1.0, "max_add": 0}, "max_add"),
    ({"lambda2": 1.0, "chunk_size": 0}, "chunk_size"),
])
def test_bad_arguments_name_the_parameter(problems, kwargs, match):
    atoms, obs = problems
    dic = ShapeDictionary(atoms, backend="numpy")
    with pytest.raises(ValueError, match=match):
        sparse_composition_batched(obs, dic, **kwargs)


def test_bad_shapes(problems):
    atoms, obs = problems
    dic = ShapeDictionary(atoms, backend="numpy")
    with pytest.raises(ValueError, match=r"expected \(M, 300, 3\)"):
        sparse_composition_batched(obs[:, :10], dic, lambda2=1.0)
    bad = obs.copy()
    bad[4, 7, 1] = np.nan
    with pytest.raises(ValueError, match=r"shapes\[4\] contains NaN"):
        sparse_composition_batched(bad, dic, lambda2=1.0)
    with pytest.raises(TypeError, match="ShapeDictionary"):
        sparse_composition_batched(obs, atoms, lambda2=1.0)


def test_padded_sets_list_each_rows_entries_in_order():
    rng = np.random.default_rng(3)
    mask = rng.random((7, 13)) < 0.3
    mask[2] = False
    idx, count = _padded_sets(mask, np)
    assert idx.shape == (7, max(int(mask.sum(1).max()), 1))
    for m in range(7):
        want = np.flatnonzero(mask[m])
        assert count[m] == want.size
        assert np.array_equal(idx[m, :want.size], want)
        assert (idx[m, want.size:] == 13).all()


def test_feature_sign_batched_solves_each_lasso_exactly():
    rng = np.random.default_rng(5)
    m, s = 9, 12
    A = rng.normal(size=(m, 30, s))
    A[:, :, 1] = A[:, :, 0] + 0.05 * A[:, :, 1]          # correlated columns
    H = np.matmul(A.transpose(0, 2, 1), A)
    b = np.einsum("mks,mk->ms", A, rng.normal(size=(m, 30)))
    l1 = 0.2 * np.abs(b).max(axis=1)
    allowed = np.ones((m, s), dtype=bool)
    allowed[0, 5:] = False                                # a padded problem
    H[0, 5:, :] = 0.0
    H[0, :, 5:] = 0.0
    H[0, 5:, 5:] += np.eye(s - 5)
    x = feature_sign_batched(H, b, l1, np.zeros((m, s)), allowed, 1e-12, np)
    q = np.einsum("mij,mj->mi", H, x) - b
    for k in range(m):
        on = x[k] != 0
        assert np.abs(q[k][on] + l1[k] * np.sign(x[k][on])).max(initial=0) <= 1e-9
        assert (np.abs(q[k][~on & allowed[k]]) <= l1[k] + 1e-9).all()
        assert (x[k][~allowed[k]] == 0).all()
    assert (x != 0).sum() > m                            # not the trivial answer


@each_backend(atol=1e-8, rtol=1e-8)
def test_batched_on_every_backend(problems, backend):
    atoms, obs = problems
    dic = ShapeDictionary(atoms, backend=backend)
    got = sparse_composition_batched(obs, dic, lambda2=3.0)
    assert got.certified.all() and got.kkt.max() <= 1e-10
    return got.x, got.objective
