import numpy as np
import pytest

from shapeprior import (
    ShapeDictionary,
    SparseShapeComposition,
    sparse_composition,
    sparse_shape_composition,
)
from shapeprior.ssc._admm import solve_admm
from shapeprior.ssc._l1 import full_objective, solve_l1
from shapeprior.synthetic import make_ssc_problem


def _incoherent(seed, N=200, K=40, k=4, n_gross=10, gross=8.0):
    """Random (incoherent) dictionary with a planted sparse x and sparse e."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(K, N, 3))
    x = np.zeros(K)
    x[rng.choice(K, k, replace=False)] = rng.uniform(1, 2, k) * rng.choice([-1, 1], k)
    e = np.zeros((N, 3))
    bad = rng.choice(N, n_gross, replace=False)
    e[bad] = rng.uniform(0.5, 1.0, (n_gross, 3)) * gross * rng.choice([-1, 1], (n_gross, 3))
    y = np.tensordot(x, atoms, axes=1) + e
    return atoms, x, e, y, bad


@pytest.mark.parametrize("seed", range(3))
def test_l1_recovers_planted_x_and_e(seed):
    atoms, x, e, y, bad = _incoherent(seed)
    dic = ShapeDictionary(atoms)
    out = sparse_composition(y, dic, lambda1=1e-3, lambda2=0.2)
    assert out.converged
    assert np.allclose(out.x, x, atol=5e-3)   # |x| in [1, 2]
    found = np.flatnonzero(np.any(out.e != 0, axis=1))
    assert set(found) == set(bad)
    # e absorbs the gross errors up to the soft-threshold shrinkage
    # tau = lambda2 / 2 plus what the error in x moves the residual
    dx = np.abs(np.tensordot(out.x - x, atoms, axes=1))
    assert np.all(np.abs(out.e - e) <= 0.1 + dx + 1e-9)


def test_l0_recovers_planted_support_and_trims_gross_vertices():
    atoms, x, e, y, bad = _incoherent(5)
    dic = ShapeDictionary(atoms)
    out = sparse_composition(y, dic, method="l0", n_nonzero=4, outlier_threshold=1.0)
    assert np.allclose(out.x, x, atol=1e-10)
    found = np.flatnonzero(np.any(out.e != 0, axis=1))
    assert set(found) == set(bad)


def _shape_problem(seed=0, frac=0.1, N=300, K=40):
    p = make_ssc_problem(N, K, gross_fraction=frac, seed=seed, transform=False)
    return p, ShapeDictionary(p.atoms)


@pytest.mark.parametrize("frac", [0.0, 0.1])
def test_l1_matches_sklearn_reference_objective(frac):
    sklearn = pytest.importorskip("sklearn.linear_model")

    p, dic = _shape_problem(1, frac, N=150, K=20)
    z = p.observed.ravel()
    n = z.size
    lam1, lam2 = 2.0, 1.5
    ours = solve_l1(dic, z, np.ones(n), lam1, lam2)
    # sum (z - Dx - e)^2 + lam1|x| + lam2|e| with e = (lam1/lam2) e' is a
    # single-alpha Lasso on [D, (lam1/lam2) I] after dividing by 2n. LARS follows
    # its path exactly to alpha (coordinate descent, sklearn.Lasso, took 500,000
    # sweeps and 6-9 s on these correlated atoms and still stopped 1e-6 short)
    X = np.hstack([np.asarray(dic.D), np.eye(n) * (lam1 / lam2)])
    m = sklearn.LassoLars(alpha=lam1 / (2 * n), fit_intercept=False, max_iter=5000,
                          eps=1e-16).fit(X, z)
    x_ref = m.coef_[: dic.n_atoms]
    f_ref = full_objective(z, np.asarray(dic.D) @ x_ref, x_ref, np.ones(n), lam1, lam2)
    assert ours.kkt < 1e-9
    assert ours.objective <= f_ref * (1 + 1e-9)
    assert ours.objective == pytest.approx(f_ref, rel=1e-9)
    x = np.asarray(ours.x)
    assert np.array_equal(x != 0, x_ref != 0)
    assert np.allclose(x, x_ref, rtol=0, atol=1e-7 * np.abs(x_ref).max())


def test_l1_matches_skglm_huber():
    skglm = pytest.importorskip("skglm")
    from skglm.datafits import Huber
    from skglm.penalties import L1
    from skglm.solvers import AndersonCD

    p, dic = _shape_problem(2, 0.15, N=80, K=12)
    z = p.observed.ravel()
    n = z.size
    lam1, lam2 = 4.0, 2.0
    ours = solve_l1(dic, z, np.ones(n), lam1, lam2)
    # skglm Huber: 1/n sum huber_delta(r), delta = tau = lam2 / 2 ; penalty alpha |x|
    delta = lam2 / 2
    est = skglm.GeneralizedLinearEstimator(
        datafit=Huber(delta), penalty=L1(alpha=lam1 / 2 / n),
        solver=AndersonCD(tol=1e-12, max_iter=5000, fit_intercept=False))
    est.fit(np.asarray(dic.D), z)
    x_ref = est.coef_
    f_ref = full_objective(z, np.asarray(dic.D) @ x_ref, x_ref, np.ones(n), lam1, lam2)
    assert ours.objective <= f_ref * (1 + 1e-8)


def test_l1_matches_admm():
    p, dic = _shape_problem(3, 0.1, N=120, K=15)
    z = p.observed.ravel()
    w = np.ones(z.size)
    ours = solve_l1(dic, z, w, 1.0, 1.0)
    xa, ea, _ = solve_admm(dic, z, w, 1.0, 1.0, tol=1e-10, max_iter=200000)
    fa = full_objective(z, np.asarray(dic.D) @ xa, xa, w, 1.0, 1.0)
    assert ours.objective <= fa * (1 + 1e-9)
    assert ours.objective == pytest.approx(fa, rel=1e-5)


def test_zero_weights_equal_removing_vertices():
    p, dic = _shape_problem(4, 0.0, N=200, K=25)
    y = p.observed.copy()
    hidden = np.zeros(200, dtype=bool)
    hidden[:40] = True
    y[hidden] += 100.0          # garbage where the weight is 0
    s = np.where(hidden, 0.0, 1.0)
    a = sparse_composition(y, dic, s, lambda1=1.0, lambda2=2.0)
    sub = ShapeDictionary(p.atoms[:, ~hidden])
    b = sparse_composition(y[~hidden], sub, lambda1=1.0, lambda2=2.0)
    assert np.allclose(a.x, b.x, atol=1e-9)
    assert not a.e[hidden].any()          # unseen vertices carry no error term
    assert a.objective == pytest.approx(b.objective, rel=1e-10)


def test_weighted_l1_is_exact_and_weights_matter():
    p, dic = _shape_problem(5, 0.1, N=150, K=20)
    z = p.observed.ravel()
    rng = np.random.default_rng(0)
    w = np.repeat(rng.uniform(0.2, 1.0, 150) ** 2, 3)
    sol = solve_l1(dic, z, w, 1.0, 1.0)
    assert sol.converged and sol.kkt < 1e-9
    uni = solve_l1(dic, z, np.ones(z.size), 1.0, 1.0)
    assert not np.allclose(sol.x, uni.x)


def test_warm_start_same_optimum_and_determinism():
    p, dic = _shape_problem(6, 0.1)
    z = p.observed.ravel()
    w = np.ones(z.size)
    cold = solve_l1(dic, z, w, 1.0, 2.0)
    warm = solve_l1(dic, z, w, 1.0, 2.0, x0=cold.x * 0.9)
    assert warm.objective == pytest.approx(cold.objective, rel=1e-12)
    again = solve_l1(dic, z, w, 1.0, 2.0)
    assert np.array_equal(cold.x, again.x) and np.array_equal(cold.e, again.e)
    r1 = sparse_shape_composition(p.observed, dic)
    r2 = sparse_shape_composition(p.observed, dic)
    assert np.array_equal(r1.x, r2.x)
    assert np.array_equal(r1.reconstruction, r2.reconstruction)


def test_full_ssc_recovers_transform_of_planted_composition():
    p = make_ssc_problem(400, 30, gross_fraction=0.0, noise=0.0, planted_sparsity=3, seed=7)
    dic = ShapeDictionary(p.atoms)
    res = sparse_shape_composition(p.observed, dic, lambda1=1e-4, lambda2=1.0)
    assert res.converged
    err = np.linalg.norm(res.reconstruction - p.clean, axis=1)
    assert err.max() < 0.05  # mm, on a shape ~110 mm long
    R, s, t = p.transform
    # beta maps observed -> model frame; its rotation is R^T
    assert np.allclose(res.transform.rotation, R.T, atol=1e-3)


@pytest.mark.parametrize("seed", [11, 12])
@pytest.mark.parametrize("method", ["l1", "l0"])
def test_full_ssc_absorbs_gross_errors(method, seed):
    p = make_ssc_problem(800, 60, gross_fraction=0.1, seed=seed)
    dic = ShapeDictionary(p.atoms)
    res = sparse_shape_composition(p.observed, dic, method=method, n_nonzero=20)
    err = np.linalg.norm(res.reconstruction - p.clean, axis=1)
    naive = np.linalg.norm(p.observed - p.clean, axis=1)
    assert naive[p.gross].min() >= 10.0 - 1.5           # the planted leak is 10-30 mm
    # mean error below 1.5 mm and no vertex dragged as far as the leak
    assert err.mean() < 1.5 and err.max() < naive[p.gross].min()
    recall = (res.overridden & p.gross).sum() / p.gross.sum()
    precision = (res.overridden & p.gross).sum() / max(res.overridden.sum(), 1)
    # L1 also flags vertices bordering the leak (per-coordinate threshold);
    # L0 trims whole vertices
    assert recall > 0.9 and precision > (0.5 if method == "l1" else 0.8)


@pytest.mark.parametrize("seed", [1, 2])
def test_refit_keeps_detail_and_leaves_gross_errors_in_e(seed):
    """A coherent dictionary of shapes: plain SSC-L1 shrinks away ~1 mm of detail
    of an unseen shape; the refit of the inliers keeps it, while the planted
    15 mm gross errors stay fully overridden (e is their whole residual)."""
    from shapeprior.synthetic import ShapePopulation

    pop = ShapePopulation(n_points=400, seed=3)
    dic = ShapeDictionary(pop.sample(60))
    rng = np.random.default_rng(seed)
    clean = pop.sample(1)[0] * 1.2 + np.array([4.0, -3.0, 2.0])
    obs = clean.copy()
    bad = rng.choice(400, 40, replace=False)
    obs[bad] += rng.normal(size=(40, 3)) * 15.0
    errs = {}
    for name, kw in {"l1": {}, "l1_refit": {"refit": 0.03},
                     "l0": {"method": "l0", "n_nonzero": 20},
                     "hybrid": {"method": "l0", "n_nonzero": 20, "refit": 0.03}}.items():
        r = sparse_shape_composition(obs, dic, **kw)
        errs[name] = np.linalg.norm(r.reconstruction - clean, axis=1)
        if "refit" in kw:
            assert r.overridden[bad].all(), name
            assert r.info["refit"] == 0.03 and r.info["first_stage_outliers"] >= 40
            model_recon = np.tensordot(r.x, dic.atoms, axes=1)
            assert np.allclose(r.error[bad], (r.aligned - model_recon)[bad])
    assert errs["l1_refit"].mean() < 0.4 * errs["l1"].mean()
    assert errs["hybrid"].mean() < 0.5 * errs["l1"].mean()
    # nothing dragged to the leak (plain L1 drags up to 12 mm on seed 2)
    assert max(errs["l1_refit"].max(), errs["hybrid"].max()) < 3.0


def test_estimator_fit_transform_and_warm_start():
    p = make_ssc_problem(300, 30, gross_fraction=0.1, seed=8)
    from shapeprior.synthetic import ShapePopulation

    train = ShapePopulation(n_points=300, seed=8).sample(30)
    est = SparseShapeComposition(warm_start=True).fit(train)
    assert est.dictionary_.n_atoms == 30
    r1 = est.transform(p.observed)
    r2 = est.transform(p.observed)
    assert r2.objective == pytest.approx(r1.objective, rel=1e-6)
    # accuracy: a training shape, moved by a similarity and given 10 % gross
    # errors, is reconstructed near its clean form
    rng = np.random.default_rng(9)
    clean = train[3] * 1.3 + np.array([5.0, -2.0, 1.0])
    obs = clean.copy()
    bad = rng.choice(300, 30, replace=False)
    obs[bad] += rng.normal(size=(30, 3)) * 15.0
    r = est.transform(obs)
    err = np.linalg.norm(r.reconstruction - clean, axis=1)
    assert np.median(err) < 0.1 and r.overridden[bad].mean() > 0.8
    # the hybrid through the facade: as accurate, and the refit is recorded
    rh = SparseShapeComposition(method="l0", n_nonzero=10, refit=0.03).fit(train).transform(obs)
    assert rh.info["refit"] == 0.03 and rh.overridden[bad].mean() > 0.8
    assert np.median(np.linalg.norm(rh.reconstruction - clean, axis=1)) < 0.1
    # the dictionary hybrid's settings through the facade: the function's solve
    est2 = SparseShapeComposition(alpha1=0.03, refit=0.01).fit(train)
    r2 = est2.transform(obs)
    r2f = sparse_shape_composition(obs, est2.dictionary_, alpha1=0.03, refit=0.01)
    assert np.array_equal(r2.x, r2f.x) and r2.overridden[bad].mean() > 0.8
    assert not np.allclose(r2.x, sparse_shape_composition(obs, est2.dictionary_).x)
    with pytest.raises(RuntimeError):
        SparseShapeComposition().transform(p.observed)


@pytest.mark.parametrize("kw,match", [
    ({"method": "l2"}, "method"),
    ({"lambda1": -1.0}, "lambda1"),
    ({"lambda2": float("nan")}, "lambda2"),
    ({"method": "l0", "n_nonzero": 0}, "n_nonzero"),
    ({"reweight": -1}, "reweight"),
    ({"alignment": "warp"}, "alignment"),
    ({"refit": 0.0}, "refit"),
    ({"refit": 1.5}, "refit"),
])
def test_invalid_parameters_name_the_value(kw, match):
    p, dic = _shape_problem(0, 0.0, N=50, K=5)
    with pytest.raises(ValueError, match=match):
        sparse_shape_composition(p.observed, dic, **kw)


def test_invalid_shapes_and_weights():
    p, dic = _shape_problem(0, 0.0, N=50, K=5)
    bad = p.observed.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sparse_shape_composition(bad, dic)
    with pytest.raises(ValueError, match="expects"):
        sparse_shape_composition(p.observed[:40], dic)
    with pytest.raises(ValueError, match="weights"):
        sparse_shape_composition(p.observed, dic, -np.ones(50))
    with pytest.raises(TypeError):
        sparse_shape_composition(p.observed, np.zeros((5, 50, 3)))


def test_backend_selection(monkeypatch):
    from shapeprior.backend import BackendUnavailableError, cupy_available, resolve_backend

    monkeypatch.setenv("SHAPEPRIOR_BACKEND", "numpy")
    assert resolve_backend() == "numpy"
    monkeypatch.setenv("SHAPEPRIOR_BACKEND", "fortran")
    with pytest.raises(ValueError, match="fortran"):
        resolve_backend()
    if not cupy_available():
        with pytest.raises(BackendUnavailableError, match="gpu"):
            resolve_backend("cupy")


def test_numpy_and_numba_backends_agree():
    p, dic_nb = _shape_problem(9, 0.1)
    dic_np = ShapeDictionary(p.atoms, backend="numpy")
    a = sparse_composition(p.observed, dic_nb, lambda1=1.0, lambda2=2.0)
    b = sparse_composition(p.observed, dic_np, lambda1=1.0, lambda2=2.0)
    assert a.objective == pytest.approx(b.objective, rel=1e-10)
    assert np.allclose(a.x, b.x, atol=1e-8)


@pytest.mark.parametrize("kind", ["similarity", "affine"])
def test_correlation_from_moments_equals_the_direct_product(kind):
    """D^T W z for z = beta(y), from the moments of y, equals the product
    computed from z (every alignment round reuses one pass over D)."""
    from shapeprior.align import Transform

    p = make_ssc_problem(300, 25, seed=4)
    dic = ShapeDictionary(p.atoms)
    rng = np.random.default_rng(1)
    y = p.observed
    s2 = rng.uniform(0, 1, len(y)) ** 2
    L = rng.normal(size=(3, 3)) if kind == "affine" else 1.3 * np.linalg.qr(rng.normal(size=(3, 3)))[0]
    beta = Transform(L, rng.normal(size=3) * 10, kind)
    c = dic.correlation(dic.moments(y, s2), beta)
    direct = dic.DF.T @ (np.repeat(s2, 3) * beta.apply(y).ravel())
    assert np.allclose(c, direct, rtol=1e-11, atol=1e-11 * np.abs(direct).max())


def test_few_rounds_take_a_pass_per_round_with_the_same_result(monkeypatch):
    """With ``max_align_iter`` up to ``DIRECT_ROUNDS`` each round's D^T W z
    comes from its own pass over D, not from the moments: the same solution
    as the moments give (forced with DIRECT_ROUNDS = 0), and no moments pass."""
    import shapeprior.ssc._compose as compose

    p = make_ssc_problem(300, 40, gross_fraction=0.1, seed=4)
    rng = np.random.default_rng(3)
    s = rng.uniform(0.3, 1, len(p.observed))
    calls = []
    dic = ShapeDictionary(p.atoms)
    moments = dic.moments
    monkeypatch.setattr(dic, "moments", lambda *a: calls.append(1) or moments(*a))
    direct = sparse_shape_composition(p.observed, dic, s, max_align_iter=compose.DIRECT_ROUNDS)
    assert calls == [] and direct.n_align_iter >= 2
    monkeypatch.setattr(compose, "DIRECT_ROUNDS", 0)
    via = sparse_shape_composition(p.observed, dic.view(), s, max_align_iter=3)
    assert calls == [1]
    assert np.allclose(direct.x, via.x, rtol=1e-8, atol=1e-10 * np.abs(via.x).max())
    assert np.allclose(direct.reconstruction, via.reconstruction, atol=1e-8)


def test_l0_rounds_share_the_moments_of_the_l1_solve_they_start_from(monkeypatch):
    """SSC-L0 starts from an SSC-L1 solve of the same shape and weights: the
    moments pass over D is made once for both (the dictionary keeps its last
    one, found by content: other weights or another shape miss), and each
    trimmed-OMP round gets its D^T W z from it, equal to the direct product.
    The reconstruction equals that of a pass per round (the code before)."""
    import shapeprior.ssc._compose as compose

    p = make_ssc_problem(300, 40, gross_fraction=0.2, seed=6)
    rng = np.random.default_rng(2)
    s = rng.uniform(0.3, 1, len(p.observed))
    dic = ShapeDictionary(p.atoms)
    first = dic.moments(p.observed, s * s)
    assert dic.moments(p.observed, s * s) is first
    assert dic.moments(p.observed, s) is not first          # other weights
    assert dic.moments(p.observed + 1.0, s * s) is not first  # another shape
    assert dic.view()._moments == (None, None)
    passes, given = [], []
    rhs = dic._moment_rhs
    inner = compose.solve_l0

    def spy(dic_, z, w, *args, c=None, **kwargs):
        given.append(c is not None and np.allclose(c, dic_.DF.T @ (w * z), rtol=1e-10,
                                                   atol=1e-12 * np.abs(c).max()))
        return inner(dic_, z, w, *args, c=c, **kwargs)

    monkeypatch.setattr(compose, "solve_l0", spy)
    fresh = ShapeDictionary(p.atoms)
    monkeypatch.setattr(fresh, "_moment_rhs", lambda *a: passes.append(1) or rhs(*a))
    shared = sparse_shape_composition(p.observed, fresh, s, method="l0", n_nonzero=8)
    assert passes == [1] and len(given) >= 2 and all(given)
    monkeypatch.setattr(compose, "L0_SHARED_MOMENTS", False)
    given.clear()
    per_round = sparse_shape_composition(p.observed, ShapeDictionary(p.atoms), s,
                                         method="l0", n_nonzero=8)
    assert given and not any(given)
    assert np.array_equal(shared.overridden, per_round.overridden)
    assert np.allclose(shared.reconstruction, per_round.reconstruction, atol=1e-8)


def test_weighted_gram_comes_whole_when_few_rows_are_reweighted():
    """Few rows away from weight 1: the whole weighted Gram (a low-rank update,
    exact) instead of an empty buffer for the solver to fill column by column;
    many rows on a dictionary of more than PARTIAL_COLUMNS atoms: the buffer."""
    p = make_ssc_problem(300, 100, seed=4)
    dic = ShapeDictionary(p.atoms)
    w = np.ones(900)
    w[:60] = 0.25                       # 60 rows x 100 atoms <= 64 columns x 900 rows
    GW, known = dic.weighted_gram_partial(w)
    assert known.all()
    assert np.allclose(GW, dic.D.T @ (w[:, None] * dic.D), rtol=1e-12, atol=1e-9)
    w[:600] = 0.25
    GW, known = dic.weighted_gram_partial(w)
    assert not known.any()


def test_prepared_passes_equal_the_single_ones_and_views_keep_their_own():
    """One matrix product over D for many shapes (``prepare``) gives each
    shape's moments and D^T W y as its own pass does; a result is found by
    content (other weights miss), the next ``prepare`` replaces the store,
    and a view shares D but neither the store nor the solver's caches."""
    p = make_ssc_problem(300, 25, seed=4)
    dic = ShapeDictionary(p.atoms)
    rng = np.random.default_rng(2)
    ys = [p.observed + rng.normal(0, 1, p.observed.shape) for _ in range(3)]
    s2 = [rng.uniform(0, 1, len(p.observed)) ** 2 for _ in range(3)]
    plain_m = [dic.moments(y, w) for y, w in zip(ys, s2)]
    plain_c = [dic.correlation_aligned(y, w) for y, w in zip(ys, s2)]
    assert np.allclose(plain_c[1], dic.DF.T @ (np.repeat(s2[1], 3) * ys[1].ravel()),
                       rtol=1e-12, atol=1e-12 * np.abs(plain_c[1]).max())
    view = dic.view()
    for aligned, plain, get in ((False, plain_m, dic.moments),
                                (True, plain_c, dic.correlation_aligned)):
        dic.prepare(ys, s2, aligned)
        for y, w, ref in zip(ys, s2, plain):
            got = get(y, w)
            assert got.shape == ref.shape and got.flags.c_contiguous
            assert np.allclose(got, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
            assert got is get(y, w)                         # stored, not recomputed
        miss = get(ys[0], s2[1])                            # other weights: computed
        rhs = dic._weighted(ys[0], s2[1]) if aligned else dic._moment_rhs(ys[0], s2[1])
        assert dic._lookup(aligned, ys[0], s2[1]) is None and miss is not get(ys[0], s2[0])
        assert np.allclose(miss, (dic.DF.T @ rhs).reshape(miss.shape), rtol=1e-12,
                           atol=1e-12 * np.abs(miss).max())
        assert view._prepared == {}
    dic.prepare(ys[:1], s2[:1], True)
    assert dic._lookup(False, ys[0], s2[0]) is None         # the moments' store replaced
    assert np.allclose(dic.moments(ys[0], s2[0]), plain_m[0], rtol=1e-12,
                       atol=1e-12 * np.abs(plain_m[0]).max())
    assert view.D is dic.D and view.gram is dic.gram
    sol = sparse_shape_composition(ys[0], view, np.sqrt(s2[0]), alignment="none")
    assert sol.converged and (view._wkey, view._pkey) != (None, None)
    assert (dic._wkey, dic._pkey) == (None, None)


def test_dictionary_caches_answer_for_the_inputs_given_now():
    """Each cache of a dictionary belongs to the input it was made for: the
    working set's columns to their support, the L0 kept rows' Gram to its
    weights, a uniform weight's Gram to that weight (2 is not 1)."""
    p = make_ssc_problem(300, 40, seed=4)
    dic = ShapeDictionary(p.atoms)
    for S in (np.array([1, 5, 9]), np.array([2, 3]), np.array([1, 5, 9])):
        assert np.array_equal(dic.columns(S), dic.DF[:, S])
    rng = np.random.default_rng(6)
    for w in (rng.uniform(0.2, 1.0, 900), rng.uniform(0.2, 1.0, 900)):
        tg = dic.trimmed_gram(w)
        assert np.array_equal(tg.w, w)
        assert np.allclose(tg.GW, dic.D.T @ (w[:, None] * dic.D), rtol=1e-12, atol=1e-9)
    for c in (1.0, 2.0, 0.5):
        GW, known = dic.weighted_gram_partial(np.full(900, c))
        assert known.all() and np.allclose(GW, c * dic.gram, rtol=1e-12)


def test_transform0_starts_the_rounds_at_a_given_alignment():
    """Started from its own converged alignment (and its penalties: 'auto'
    ones depend on the first round's alignment), SSC stops after the first
    round at the same solution; a wrong transform0 is refused."""
    from shapeprior.align import Transform

    p = make_ssc_problem(600, 40, gross_fraction=0.1, seed=5)
    dic = ShapeDictionary(p.atoms)
    # settled to 1e-6 radii: the default tolerance (1e-3) leaves 3e-4 of a move
    a = sparse_shape_composition(p.observed, dic, align_tol=1e-6)
    b = sparse_shape_composition(p.observed, dic, transform0=a.transform, x0=a.x,
                                 lambda1=a.lambda1, lambda2=a.lambda2, align_tol=1e-6)
    assert a.converged and b.converged
    assert a.n_align_iter > 1 and b.n_align_iter == 1
    assert np.allclose(b.reconstruction, a.reconstruction, atol=1e-4)
    far = Transform(np.eye(3), np.array([200.0, 0, 0]))
    c = sparse_shape_composition(p.observed, dic, transform0=far, max_align_iter=1)
    assert np.abs(c.reconstruction - a.reconstruction).max() > 1.0   # it was used
    with pytest.raises(ValueError, match="transform0"):
        sparse_shape_composition(p.observed, dic, transform0=np.eye(3))


@pytest.mark.parametrize("K,M,k", [(40, 30, 6), (8, 12, 8), (6, 5, 10)])
def test_omp_many_equals_one_signal_at_a_time(K, M, k):
    """The vectorised Batch-OMP (dictionary learning) makes the same greedy
    choices as the single-signal one, including the early stop of a signal
    that one atom explains exactly and of an all-zero signal."""
    from shapeprior.ssc import omp_gram, omp_gram_many

    rng = np.random.default_rng(K + M)
    D = rng.normal(size=(3 * K, K))
    D /= np.linalg.norm(D, axis=0)
    Y = rng.normal(size=(3 * K, M))
    Y[:, 0] = 2.5 * D[:, 1]
    Y[:, 1] = 0.0
    G, C = D.T @ D, D.T @ Y
    X = omp_gram_many(G, C, k)
    ref = np.stack([omp_gram(G, C[:, m], k) for m in range(M)], axis=1)
    assert np.array_equal(X != 0, ref != 0)
    assert np.allclose(X, ref, atol=1e-10)
    assert np.count_nonzero(X[:, 0]) == 1 and not X[:, 1].any()
    assert (np.count_nonzero(X, axis=0) <= min(k, K)).all()


def test_one_blas_thread_limits_the_main_thread_and_restores():
    """In the main thread BLAS runs on one thread inside the section (nested
    sections too) and gets its old limits back after the outermost one; from
    another thread the section leaves every limit as it is."""
    import threading

    threadpoolctl = pytest.importorskip("threadpoolctl")
    pytest.importorskip("scipy.linalg")     # SciPy's own BLAS, loaded before the controller looks
    from shapeprior.backend import one_blas_thread

    libs = [lib for lib in threadpoolctl.ThreadpoolController().lib_controllers
            if lib.user_api == "blas"]

    def limits():
        return [lib.get_num_threads() for lib in libs]

    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = limits()
        assert set(before) == {2}
        with one_blas_thread():
            assert set(limits()) == {1}
            with one_blas_thread():
                assert set(limits()) == {1}
            assert set(limits()) == {1}
        assert limits() == before
        seen = {}

        def other():
            with one_blas_thread():
                seen["inside"] = limits()
            seen["after"] = limits()

        t = threading.Thread(target=other)
        t.start()
        t.join(10)
        assert seen == {"inside": before, "after": before}


def test_l0_trimming_stops_when_its_outlier_sets_cycle():
    """The trimmed OMP alternation can go round a cycle of outlier sets; it stops
    at the first set it has seen before instead of running to max_iter, and says
    so. A restart from the set it returns is not a fixed point either."""
    from shapeprior.ssc import ShapeDictionary
    from shapeprior.ssc._l0 import solve_l0
    from shapeprior.synthetic import make_ssc_problem

    p = make_ssc_problem(n_points=300, n_atoms=40, gross_fraction=0.4, seed=0, transform=False)
    dic = ShapeDictionary(p.atoms, p.atoms.mean(0))
    z = p.observed.ravel()
    w = np.ones_like(z)
    s = solve_l0(dic, z, w, 8, max_iter=100)
    assert s.cycled and not s.converged and s.n_iter < 100
    out = np.abs(s.e.reshape(-1, 3)).sum(1) > 0
    again = solve_l0(dic, z, w, 8, max_iter=100, outliers_init=out)
    assert not again.converged and again.cycled
    # a problem whose alternation settles reports convergence, not a cycle
    p = make_ssc_problem(n_points=300, n_atoms=40, gross_fraction=0.1, seed=1, transform=False)
    dic = ShapeDictionary(p.atoms, p.atoms.mean(0))
    z = p.observed.ravel()
    s = solve_l0(dic, z, np.ones_like(z), 8, max_iter=100)
    assert s.converged and not s.cycled


def test_trimmed_gram_follows_its_row_sets():
    """The L0 solver's Gram of the kept rows, moved from set to set (a few rows
    joining and leaving, a jump that restarts from the full Gram, a return
    near the set before the jump), equals the direct product every time, for
    the columns held from earlier sets and for new ones."""
    from shapeprior.ssc import ShapeDictionary
    from shapeprior.synthetic import make_ssc_problem

    p = make_ssc_problem(n_points=200, n_atoms=30, seed=3, transform=False)
    dic = ShapeDictionary(p.atoms)
    rng = np.random.default_rng(0)
    n = dic.n_rows
    w = rng.uniform(0.2, 1.0, n)
    tg = dic.trimmed_gram(w)
    assert dic.trimmed_gram(w) is tg and dic.trimmed_gram(w * 0.5) is not tg
    tg = dic.trimmed_gram(w)
    D = np.asarray(dic.D)
    base = rng.random(n) < 0.3
    sets = [base, base ^ (rng.random(n) < 0.02), rng.random(n) < 0.05,
            base ^ (rng.random(n) < 0.03), np.zeros(n, bool) | (rng.random(n) < 0.6)]
    held = set()
    slots = []
    for i, rows in enumerate(sets):
        tg.set_rows(rows)
        assert np.array_equal(tg.rows, rows)
        slots.append(int(tg.state[4][0]))
        H = D.T @ ((w * ~rows)[:, None] * D)
        for j in rng.choice(dic.n_atoms, 4, replace=False):
            held.add(int(j))
            tg.column(int(j))
        kept = set(np.flatnonzero(tg.state[3][slots[-1]]).tolist())
        if i in (1, 3):                         # columns carried from earlier sets
            assert len(held & kept) > 4
        for j in held & kept:
            assert np.allclose(tg.column(j), H[:, j], rtol=1e-10, atol=1e-8)
        assert np.allclose(tg.diag, np.diag(H), rtol=1e-10, atol=1e-8)
    # the jump to a small set starts from the full Gram in the other slot, and the
    # return near the set before the jump goes back to the slot that kept it
    assert slots[2] != slots[1] and slots[3] == slots[1]


def test_l0_alignment_rounds_stop_at_a_cycle_with_the_lmeds_round(monkeypatch):
    """Trimming is discrete, so the L0 alignment rounds can go round a cycle of
    trimmed sets. They stop when a set comes back, and the answer is the
    cycle's round whose fit has the least median residual, returned with its
    own alignment: solving again at that alignment gives the same x."""
    import shapeprior.ssc._compose as compose
    from shapeprior.ssc import ShapeDictionary, sparse_composition
    from shapeprior.synthetic import make_ssc_problem

    p = make_ssc_problem(n_points=300, n_atoms=40, gross_fraction=0.35, seed=10)
    dic = ShapeDictionary(p.atoms)
    scores = []
    inner = compose._sparse_composition

    def spy(*args, **kwargs):
        sol = inner(*args, **kwargs)
        scores.append(float(np.median(np.linalg.norm(sol.residual, axis=1))))
        return sol

    monkeypatch.setattr(compose, "_sparse_composition", spy)
    # from the mean's pose (from SSC-L1's, the default, this shape does not cycle)
    res = sparse_shape_composition(p.observed, dic, method="l0", n_nonzero=8, start="mean")
    assert res.info.get("alignment_cycle", 0) >= 2
    assert res.n_align_iter == len(scores) < 20
    got = float(np.median(np.linalg.norm(res.aligned - dic.matvec(res.x).reshape(-1, 3),
                                         axis=1)))
    assert got in [pytest.approx(s, rel=1e-12) for s in scores]
    assert got <= scores[-1] and got < max(scores[-res.info["alignment_cycle"] - 1:])
    monkeypatch.undo()
    again = sparse_composition(res.aligned, dic, method="l0", n_nonzero=8)
    assert np.allclose(again.x, res.x, rtol=1e-10, atol=1e-12)


def test_l0_says_when_its_trimming_hit_the_cap():
    """With a fixed threshold that most vertices exceed, the trimmed set stops at
    ``max_outlier_fraction`` and the solution says so (the reconstruction
    status uses it); a threshold few exceed leaves it unset."""
    from shapeprior.ssc import ShapeDictionary
    from shapeprior.ssc._l0 import solve_l0
    from shapeprior.synthetic import make_ssc_problem

    p = make_ssc_problem(n_points=300, n_atoms=40, gross_fraction=0.1, seed=0, transform=False)
    dic = ShapeDictionary(p.atoms)
    z = p.observed.ravel()
    w = np.ones_like(z)
    tight = solve_l0(dic, z, w, 8, threshold=1e-6)
    assert tight.capped
    assert np.count_nonzero(np.any(tight.e.reshape(-1, 3) != 0, axis=1)) == 150
    assert not solve_l0(dic, z, w, 8, threshold=5.0).capped
    res = sparse_shape_composition(p.observed, dic, method="l0", outlier_threshold=1e-6,
                                   alignment="none")
    assert res.info["trimming_capped"]


def test_default_alignment_tolerance_stops_at_the_first_round_under_a_thousandth():
    """Without ``align_tol`` the rounds stop at the first whose move is at most
    1e-3 RMS radii of the mean (``ALIGN_TOL``, chosen on held-out kidneys by
    bench/bench_align_tol.py), where 1e-4 went on; a tighter tolerance given
    by the caller still goes on."""
    from shapeprior.pipeline._reconstruct import SETTLED_MOVE

    p = make_ssc_problem(n_points=300, n_atoms=40, gross_fraction=0.1, seed=3)
    dic = ShapeDictionary(p.atoms)
    # the moves of rounds 1..20: the same rounds, cut off after k of them
    moves = [sparse_shape_composition(p.observed, dic, align_tol=1e-300, max_align_iter=k)
             .info["alignment_move"] for k in range(1, 21)]
    first = next(k for k, m in enumerate(moves, 1) if m <= 1e-3)
    assert moves[first - 1] > 1e-4         # the case tells 1e-3 from 1e-4
    res = sparse_shape_composition(p.observed, dic)
    assert res.converged and res.n_align_iter == first
    assert res.info["alignment_move"] == pytest.approx(moves[first - 1], rel=1e-6)
    tight = sparse_shape_composition(p.observed, dic, align_tol=1e-4)
    assert tight.n_align_iter > first
    # a result stopped by the default tolerance has settled for the reports
    assert res.info["alignment_move"] <= SETTLED_MOVE


def test_l0_rounds_stop_after_two_small_moves_in_a_row():
    """Trimmed OMP's rounds stop only after two consecutive rounds under the
    tolerance: here the second round moves less than 1e-3 radii, the third
    more again, and the rounds that follow take the error from 2.2 mm to
    under 0.2 mm (the rounds from the mean's pose)."""
    p = make_ssc_problem(800, 60, gross_fraction=0.1, seed=11)
    dic = ShapeDictionary(p.atoms)
    kw = dict(method="l0", n_nonzero=20, start="mean")
    moves = [sparse_shape_composition(p.observed, dic, align_tol=1e-300, max_align_iter=k, **kw)
             .info["alignment_move"] for k in range(1, 21)]
    small = [m <= 1e-3 for m in moves]
    assert small[1] and not small[2]       # a lone small move
    pair = next(k for k in range(2, 21) if small[k - 2] and small[k - 1])
    res = sparse_shape_composition(p.observed, dic, **kw)
    assert res.converged and res.n_align_iter == pair
    err = np.linalg.norm(res.reconstruction - p.clean, axis=1).mean()
    early = sparse_shape_composition(p.observed, dic, max_align_iter=2, **kw)
    assert err < 0.2 < 2.0 < np.linalg.norm(early.reconstruction - p.clean, axis=1).mean()


@pytest.mark.parametrize("method, extra", [("l1", {}), ("l0", {"n_nonzero": 10}),
                                           ("l1", {"refit": 0.03})])
@pytest.mark.parametrize("rounds", ["run out", "settle"])
def test_reconstruction_is_the_composition_of_x_in_the_shapes_frame(method, extra, rounds):
    """``reconstruction`` is ``D x`` taken back to the shape's frame by the
    inverse of the returned transform, whether the alignment rounds settle or
    run out (then the last solve was made before the last move: composing D x
    from that solve's residual and the moved shape would be off)."""
    p = make_ssc_problem(n_points=300, n_atoms=40, gross_fraction=0.1, seed=3)
    dic = ShapeDictionary(p.atoms)
    kw = {"align_tol": 1e-300, "max_align_iter": 2} if rounds == "run out" else {}
    res = sparse_shape_composition(p.observed, dic, method=method, **kw, **extra)
    assert (res.n_align_iter == 2) if rounds == "run out" else res.converged
    dx = np.tensordot(res.x, p.atoms, axes=1)
    assert np.abs(res.reconstruction - res.transform.inverse().apply(dx)).max() < 1e-9


def test_l0_gross_error_and_objective_follow_the_weights():
    """SSC-L0 with per-coordinate weights: a gross vertex with one weighted
    coordinate is visible (trimmed: its gross error is its residual), a gross
    vertex of weight 0 is never given one, and the objective is the weighted
    sum over the kept rows."""
    from shapeprior.ssc import ShapeDictionary
    from shapeprior.ssc._l0 import solve_l0
    from shapeprior.synthetic import make_ssc_problem

    p = make_ssc_problem(n_points=300, n_atoms=40, gross_fraction=0.1, seed=1, transform=False)
    dic = ShapeDictionary(p.atoms, p.atoms.mean(0))
    z = p.observed.ravel()
    rng = np.random.default_rng(0)
    W = np.repeat(rng.uniform(0.5, 2.0, size=(300, 1)), 3, axis=1)
    g0, g1 = np.flatnonzero(p.gross)[:2]
    W[g0, 1:] = 0.0                      # seen along x only
    W[g1] = 0.0                          # not seen
    w = W.ravel()
    s = solve_l0(dic, z, w, 8, max_iter=100)
    E, R = s.e.reshape(-1, 3), s.residual.reshape(-1, 3)
    assert not E[g1].any() and np.linalg.norm(R[g1]) > s.threshold
    assert np.array_equal(E[g0], R[g0]) and np.linalg.norm(E[g0]) > s.threshold
    assert s.objective == pytest.approx(float(np.sum(w * (s.residual - s.e) ** 2)), rel=1e-12)
    assert abs(s.objective - float(np.sum((s.residual - s.e) ** 2))) > 1e-3 * s.objective


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_many_shapes_equal_their_single_solves_with_row_weights(n_jobs, monkeypatch):
    """Eight shapes, one row of confidences each (some vertices unseen), solved
    as a batch (groups share a pass over D; two threads in chunks of two, so a
    last chunk holds one shape): each result is its own single solve's, and
    every solve in a group found its share of the group's pass over D."""
    from shapeprior.ssc import ShapeDictionary, sparse_shape_composition
    from shapeprior.ssc import sparse_shape_composition_many as many
    from shapeprior.ssc._dictionary import ShapeDictionary as _D
    from shapeprior.synthetic import make_ssc_problem

    hits = []
    lookup = _D._lookup

    def counted(self, aligned, y, s2):
        got = lookup(self, aligned, y, s2)
        if self._prepared:
            hits.append(got is not None)
        return got

    monkeypatch.setattr(_D, "_lookup", counted)
    rng = np.random.default_rng(7)
    probs = [make_ssc_problem(n_points=150, n_atoms=30, gross_fraction=0.1, seed=s)
             for s in range(8)]
    dic = ShapeDictionary(probs[0].atoms, probs[0].atoms.mean(0))
    ys = [p.observed for p in probs]
    W = rng.uniform(0.2, 1.0, size=(8, 150))
    W[:, :10] = 0.0
    got = many(ys, dic, W, n_jobs=n_jobs, chunk_size=2)
    assert len(got) == 8
    # the 7 shapes after the first: one group of 7 in one thread; groups of 2, 2, 2
    # on two threads, and the lone last shape makes its own pass
    assert len(hits) == (7 if n_jobs == 1 else 6) and all(hits)
    for y, w, r in zip(ys, W, got):
        ref = sparse_shape_composition(y, dic, w)
        np.testing.assert_allclose(r.reconstruction, ref.reconstruction, rtol=0, atol=1e-6)
        np.testing.assert_allclose(r.x, ref.x, rtol=1e-6, atol=1e-9 * np.abs(ref.x).max())


def test_a_dask_worker_tells_dictionaries_apart_by_atoms_mean_and_backend():
    """The fingerprint a dask worker keys its cached dictionary on changes with
    the atoms, the mean and the backend."""
    from shapeprior.ssc import ShapeDictionary
    from shapeprior.ssc._many import _fingerprint

    rng = np.random.default_rng(0)
    atoms, mean = rng.normal(size=(5, 20, 3)), rng.normal(size=(20, 3))
    base = _fingerprint(ShapeDictionary(atoms, mean, backend="numpy"))
    assert base == _fingerprint(ShapeDictionary(atoms.copy(), mean.copy(), backend="numpy"))
    assert base != _fingerprint(ShapeDictionary(atoms, mean + 1e-9, backend="numpy"))
    other = atoms.copy()
    other[0, 0, 0] += 1e-9
    assert base != _fingerprint(ShapeDictionary(other, mean, backend="numpy"))
    from shapeprior.backend import numba_available

    if numba_available():
        assert base != _fingerprint(ShapeDictionary(atoms, mean, backend="numba"))


def test_shape_and_weight_checks_hold_without_alignment():
    """NaN coordinates are refused before any solver (also without an
    alignment, whose own check would otherwise catch them), and fewer than 3
    visible vertices (no similarity is defined) are refused, naming the count."""
    p, dic = _shape_problem(0, 0.0, N=50, K=5)
    bad = p.observed.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="shape contains NaN or infinite coordinates"):
        sparse_shape_composition(bad, dic, alignment="none")
    w = np.zeros(50)
    w[:2] = 1.0
    with pytest.raises(ValueError, match="at least 3 vertices need weight > 0, got 2"):
        sparse_shape_composition(p.observed, dic, w)
    # weights whose squares overflow or underflow are refused, naming the range;
    # 1e300 was "not finite" and 1e-300 "no point with weight > 0"
    for scale in (1e300, 1e-300):
        with pytest.raises(ValueError, match=r"weights must be 0 or within \[1e-100, 1e\+100\]"):
            sparse_shape_composition(p.observed, dic, np.full(50, scale))
    a = sparse_shape_composition(p.observed, dic, np.full(50, 1e-6))
    b = sparse_shape_composition(p.observed, dic)
    np.testing.assert_allclose(a.reconstruction, b.reconstruction, atol=1e-6)


def test_unseen_vertices_do_not_move_the_automatic_lambda2():
    """Vertices of weight 0 carry no evidence: whatever their coordinates, the
    robust scale behind the automatic lambda2, and so the solve, is the same."""
    p, dic = _shape_problem(3, 0.05)
    w = np.ones(len(p.observed))
    w[:90] = 0.0
    far = p.observed.copy()
    far[:90] += 80.0                                   # garbage where nothing is seen
    a = sparse_shape_composition(p.observed, dic, w, alignment="none")
    b = sparse_shape_composition(far, dic, w, alignment="none")
    assert b.lambda2 == pytest.approx(a.lambda2, rel=1e-9)
    np.testing.assert_allclose(b.x, a.x, atol=1e-9)


def test_the_refit_fits_only_the_first_stages_inliers():
    """refit: an SSC-L1 solve with the first stage's gross errors at weight 0,
    lambda1 times refit, the first stage's lambda2, started from its x and
    transform; it equals that solve made by hand."""
    p, dic = _shape_problem(5, 0.15)
    y = p.observed
    first = sparse_shape_composition(y, dic)
    assert first.overridden.sum() >= 20
    got = sparse_shape_composition(y, dic, refit=0.1)
    s2 = np.where(first.overridden, 0.0, 1.0)
    want = sparse_shape_composition(y, dic, s2, lambda1=first.lambda1 * 0.1,
                                    lambda2=first.lambda2, x0=first.x,
                                    transform0=first.transform)
    np.testing.assert_allclose(got.x, want.x, rtol=1e-9, atol=1e-12)
    assert got.info["first_stage_outliers"] == int(first.overridden.sum())


@pytest.mark.parametrize("seed", [4, 13])
def test_trimmed_omp_starts_from_the_pose_of_ssc_l1(seed):
    """From the Procrustes of the whole shape onto the mean, displaced patches pull
    the pose off and trimmed OMP's rounds settle on trimmed sets that keep part of
    the leak (here 3.4-3.6 mm mean error, up to 28 mm); from SSC-L1's pose, the
    default for L0, the hybrid recovers the clean shape. The shapes of the SSC demo:
    2000 vertices, 150 training shapes, 15 % displaced, 10 % missing."""
    from shapeprior.ssc import solver_options

    p = make_ssc_problem(2000, 150, gross_fraction=0.15, seed=seed)
    w = np.ones(2000)
    w[np.random.default_rng(seed + 7).choice(2000, 200, replace=False)] = 0.0
    dic = ShapeDictionary(p.atoms)
    opts = solver_options("hybrid")

    def error(res):
        return np.linalg.norm(res.reconstruction - p.clean, axis=1).mean()

    res = sparse_shape_composition(p.observed, dic, w, n_nonzero=20, **opts)
    assert res.info["start"] == "l1" and error(res) < 0.3
    assert res.overridden[p.gross & (w > 0)].mean() > 0.85
    old = sparse_shape_composition(p.observed, dic, w, n_nonzero=20, start="mean", **opts)
    assert old.info["start"] == "mean" and error(old) > 3.0
    # the start is the pose of SSC-L1 (in the hybrid's first-stage rounds): given as
    # transform0, the same solve
    from shapeprior.ssc._compose import HYBRID_FIRST_ROUNDS

    l1 = sparse_shape_composition(p.observed, dic, w, max_align_iter=HYBRID_FIRST_ROUNDS)
    same = sparse_shape_composition(p.observed, dic, w, n_nonzero=20,
                                    transform0=l1.transform, **opts)
    assert same.info["start"] == "transform0"
    np.testing.assert_allclose(same.reconstruction, res.reconstruction, atol=1e-9)


def test_start_is_checked_and_l1_starts_from_the_mean():
    p = make_ssc_problem(300, 40, gross_fraction=0.1, seed=3)
    dic = ShapeDictionary(p.atoms)
    with pytest.raises(ValueError, match="start"):
        sparse_shape_composition(p.observed, dic, start="median")
    assert sparse_shape_composition(p.observed, dic).info["start"] == "mean"
    assert sparse_shape_composition(p.observed, dic, method="l0", alignment="none"
                                    ).info["start"] == "none"


def test_trimmed_omp_takes_up_to_forty_atoms_or_every_atom_of_a_small_dictionary():
    from shapeprior.ssc._compose import L0_NONZERO

    assert L0_NONZERO == 40
    for n_atoms in (12, 150):
        p = make_ssc_problem(600, n_atoms, gross_fraction=0.1, seed=5)
        dic = ShapeDictionary(p.atoms)
        res = sparse_composition(p.observed, dic, method="l0", n_nonzero="auto")
        used = np.count_nonzero(res.x)
        assert used == min(L0_NONZERO, n_atoms) if n_atoms < L0_NONZERO else \
            20 < used <= L0_NONZERO
        again = sparse_composition(p.observed, dic, method="l0")
        np.testing.assert_array_equal(again.x, res.x)
    with pytest.raises(ValueError, match="n_nonzero"):
        sparse_composition(p.observed, dic, method="l0", n_nonzero=151)


def test_the_hybrids_first_stage_runs_at_most_its_own_rounds(monkeypatch):
    """The hybrid's trimmed OMP (and the SSC-L1 solve it starts from) stops after
    HYBRID_FIRST_ROUNDS alignment rounds, while trimmed OMP alone and the refit
    of the inliers keep ``max_align_iter`` (bench/bench_hybrid_rounds.py)."""
    import shapeprior.ssc._compose as compose

    p = make_ssc_problem(800, 60, gross_fraction=0.1, seed=11)
    dic = ShapeDictionary(p.atoms)
    kw = dict(method="l0", n_nonzero=20, start="mean")
    calls, refits = [], []
    inner_l0, inner_refit = compose.solve_l0, compose._refit_inliers

    def l0(*args, **kwargs):
        calls.append(1)
        return inner_l0(*args, **kwargs)

    def refit(*args, **kwargs):
        refits.append(args[11])                     # its max_align_iter
        return inner_refit(*args, **kwargs)

    monkeypatch.setattr(compose, "solve_l0", l0)
    monkeypatch.setattr(compose, "_refit_inliers", refit)
    alone = sparse_shape_composition(p.observed, dic, **kw)
    n_alone, calls[:] = len(calls), []
    assert alone.n_align_iter > compose.HYBRID_FIRST_ROUNDS     # the case needs the cap
    hybrid = sparse_shape_composition(p.observed, dic, refit=0.03, **kw)
    assert len(calls) == compose.HYBRID_FIRST_ROUNDS < n_alone
    assert refits == [20]
    assert np.linalg.norm(hybrid.reconstruction - p.clean, axis=1).mean() < 0.5
    calls[:] = []
    sparse_shape_composition(p.observed, dic, refit=0.03, max_align_iter=3, **kw)
    assert len(calls) == 3                          # a smaller max_align_iter still holds


def test_trimmed_omp_rounds_start_trimming_from_the_l1_starts_gross_errors_when_asked(
        monkeypatch):
    """With L0_TRIM_FROM_START (off: bench/bench_hybrid_rounds.py compares both), each
    alignment round of trimmed OMP from an SSC-L1 pose starts its trimming from that
    solve's gross errors (the same set every round); from the mean's pose, a given
    transform0, or with the switch off (the default), from no vertex."""
    import shapeprior.ssc._compose as compose

    assert compose.L0_TRIM_FROM_START is False
    monkeypatch.setattr(compose, "L0_TRIM_FROM_START", True)

    p = make_ssc_problem(800, 60, gross_fraction=0.15, seed=5)
    dic = ShapeDictionary(p.atoms)
    starts = []
    inner = compose.solve_l0

    def l0(*args, **kwargs):
        init = kwargs.get("outliers_init")
        starts.append(None if init is None else np.asarray(init, dtype=bool).copy())
        return inner(*args, **kwargs)

    monkeypatch.setattr(compose, "solve_l0", l0)
    res = sparse_shape_composition(p.observed, dic, method="l0", n_nonzero=20, refit=0.03)
    first = sparse_shape_composition(p.observed, dic,
                                     max_align_iter=compose.HYBRID_FIRST_ROUNDS)
    assert res.info["start"] == "l1" and len(starts) >= 2
    assert first.overridden.sum() > 0.5 * p.gross.sum()       # the case has gross errors
    for s in starts:
        assert np.array_equal(s, first.overridden)
    for kw in ({"start": "mean"}, {"transform0": first.transform}):
        starts[:] = []
        sparse_shape_composition(p.observed, dic, method="l0", n_nonzero=20, **kw)
        assert starts and all(s is None for s in starts)
    monkeypatch.setattr(compose, "L0_TRIM_FROM_START", False)
    starts[:] = []
    sparse_shape_composition(p.observed, dic, method="l0", n_nonzero=20)
    assert starts and all(s is None for s in starts)
