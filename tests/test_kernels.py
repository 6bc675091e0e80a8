"""Parity of the kernel twins (NumPy/xp reference, Numba, CuPy) and agreement
with an independent solver (scikit-learn)."""

import numpy as np
import pytest

import sys
from pathlib import Path

from conftest import requires_gpu
from shapeprior.backend import kernel, xp_for
from shapeprior.ssc._l1 import soft_threshold
from shapeprior.testing import each_backend
from shapeprior_kernels import (
    gram_lasso_numba,
    gram_lasso_numpy,
    lasso_objective,
    sample_normals_numba,
)

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
# an experimental kernel no production path uses: kept beside its benchmark
from batched_cd import (  # noqa: E402
    batched_gram_cd_cupy,
    batched_gram_cd_numba,
    batched_gram_cd_numpy,
)

sys.path.remove(str(BENCH))


def _problem(seed, n=120, K=30, correlated=False):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, K))
    if correlated:  # shape-dictionary-like: columns share a dominant component
        A = A * 0.2 + rng.normal(size=(n, 1))
    y = A @ np.where(rng.random(K) < 0.2, rng.normal(size=K), 0.0) + 0.1 * rng.normal(size=n)
    return A, y


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("correlated", [False, True])
def test_gram_lasso_matches_sklearn(seed, correlated):
    sklearn = pytest.importorskip("sklearn.linear_model")
    A, y = _problem(seed, correlated=correlated)
    n = A.shape[0]
    H, b = A.T @ A, A.T @ y
    lam = 0.05 * np.abs(b).max()
    ref = sklearn.Lasso(alpha=lam / n, fit_intercept=False, tol=1e-14, max_iter=200000).fit(A, y).coef_
    x_xp, _ = gram_lasso_numpy(H, b, lam)
    x_nb, _ = gram_lasso_numba(H, b, lam)
    assert np.allclose(x_xp, x_nb, atol=1e-10)
    f_ref = lasso_objective(H, b, lam, ref)
    f_ours = lasso_objective(H, b, lam, x_nb)
    assert f_ours <= f_ref + 1e-9 * abs(f_ref)
    assert np.allclose(x_nb, ref, atol=1e-6 * max(1, np.abs(ref).max()))


def test_gram_lasso_twins_take_the_same_steps():
    """The Numba twin follows the reference step for step (same atom
    additions, same line-search stops), not only to the same optimum: on
    problems whose sign changes make the line search choose among crossing
    points (warm starts from a wrong sign pattern), the step counts agree."""
    steps = []
    for seed in range(30):
        A, y = _problem(seed, correlated=seed % 2 == 1)
        H, b = A.T @ A, A.T @ y
        lam = 0.02 * np.abs(b).max()
        x0 = -np.linalg.lstsq(A, y, rcond=None)[0]      # every sign wrong: crossings
        x_xp, n_xp = gram_lasso_numpy(H, b, lam, x0=x0)
        x_nb, n_nb = gram_lasso_numba(H, b, lam, x0=x0)
        assert np.allclose(x_xp, x_nb, atol=1e-10)
        steps.append((n_xp, n_nb))
    assert all(a == b for a, b in steps), steps


def test_gram_lasso_warm_start_reaches_same_optimum():
    A, y = _problem(7)
    H, b = A.T @ A, A.T @ y
    lam = 0.02 * np.abs(b).max()
    cold, n_cold = gram_lasso_numba(H, b, lam)
    warm, n_warm = gram_lasso_numba(H, b * 1.01, lam, x0=cold)
    again, _ = gram_lasso_numba(H, b * 1.01, lam)
    assert np.allclose(warm, again, atol=1e-10)
    assert n_warm < n_cold


def test_gram_lasso_zero_when_lambda_large():
    A, y = _problem(1)
    H, b = A.T @ A, A.T @ y
    x, _ = gram_lasso_numba(H, b, 1.01 * np.abs(b).max())
    assert not x.any()


def _batch(B=5, n=25, seed=0):
    rng = np.random.default_rng(seed)
    Hs, bs = [], []
    for _ in range(B):
        A = rng.normal(size=(80, n))
        Hs.append(A.T @ A)
        bs.append(A.T @ rng.normal(size=80))
    b = np.stack(bs)
    lam = 0.1 * np.abs(b).max(axis=1)
    return np.stack(Hs), b, lam


def test_batched_cd_numpy_numba_parity_and_optimum():
    H, b, lam = _batch()
    x_np, s_np = batched_gram_cd_numpy(H, b, lam)
    x_nb, s_nb = batched_gram_cd_numba(H, b, lam)
    assert np.array_equal(s_np, s_nb)
    assert np.allclose(x_np, x_nb, atol=1e-12)
    for p in range(len(b)):
        ref, _ = gram_lasso_numba(H[p], b[p], lam[p])
        assert np.allclose(x_np[p], ref, atol=1e-8)


def test_soft_threshold():
    rng = np.random.default_rng(0)
    r = rng.normal(size=1000)
    tau = np.abs(rng.normal(size=1000))
    tau[::7] = np.inf
    a = soft_threshold(r, tau)
    ref = np.array([np.sign(v) * max(abs(v) - t, 0.0) for v, t in zip(r, tau)])
    assert np.array_equal(a, ref)
    assert np.all(a[::7] == 0)
    big = np.abs(r) > tau
    assert np.allclose(np.abs(a[big]), np.abs(r[big]) - tau[big])


@each_backend(atol=1e-9)
def test_gram_lasso_twins_agree(backend):
    A, y = _problem(3, correlated=True)
    H, b = A.T @ A, A.T @ y
    lam = 0.05 * np.abs(b).max()
    xp = xp_for(backend)
    x, _ = kernel("gram_lasso", backend)(xp.asarray(H), xp.asarray(b), lam)
    return x


def _huber_problem(seed, N=150, K=40, weights=True, per_row=True):
    """An SSC-like Huber-L1 problem: correlated shape atoms, 10 % gross rows."""
    from shapeprior.ssc import ShapeDictionary
    from shapeprior.synthetic import make_ssc_problem

    p = make_ssc_problem(N, K, gross_fraction=0.1, noise=0.3, seed=seed, transform=False)
    rng = np.random.default_rng(seed)
    dic = ShapeDictionary(p.atoms, backend="numpy")
    z = p.observed.ravel()
    w = np.repeat(rng.uniform(0.2, 1.0, N) ** 2, 3) if weights else np.ones(z.size)
    if weights:
        w[:9] = 0.0                            # three invisible vertices
    l1 = 1e-3 * float(np.abs(dic.DF.T @ (w * z)).max())
    l2 = 0.9 * (rng.uniform(0.3, 1.0, z.size) if per_row else np.ones(z.size))
    return dic, z, w, l1, l2


def _huber_objective(x, D, z, w, tau, l1, l2):
    """The Huber-L1 objective in halved units, computed here from scratch."""
    rr = z - D @ x
    a = np.abs(rr)
    return float(np.sum(np.where(a <= tau, 0.5 * w * rr * rr,
                                 l2 * a - 0.5 * l2 * np.where(np.isfinite(tau), tau, 0.0)))
                 + l1 * np.abs(x).sum())


def _huber_args(dic, z, w, partial):
    K = dic.n_atoms
    GW = dic.D.T @ (w[:, None] * dic.D)
    known = np.ones(K, dtype=bool)
    if partial:                                # filled by the kernel as it needs columns
        GW, known = np.zeros((K, K)), np.zeros(K, dtype=bool)
    return GW, known, dic.DF.T @ (w * z)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("partial", [False, True])
def test_huber_lasso_twins_agree_cold_and_warm(seed, partial):
    """The Numba twin reaches the reference's optimum (same x, residual and
    iterations), cold and warm, on a full or an empty weighted Gram."""
    from shapeprior_kernels import huber_lasso_numba, huber_lasso_numpy

    dic, z, w, l1, l2 = _huber_problem(seed)
    out = {}
    for name, fn in (("numpy", huber_lasso_numpy), ("numba", huber_lasso_numba)):
        GW, known, c = _huber_args(dic, z, w, partial)
        cold = fn(dic.D, dic.DF, GW, known, c, z, w, l1, l2)
        GW, known, c = _huber_args(dic, z, w, partial)
        warm = fn(dic.D, dic.DF, GW, known, c, z, w, l1, l2, x0=0.8 * cold[0])
        out[name] = (cold, warm)
    # a warm solve handed the working set's columns gives the same result
    GW, known, c = _huber_args(dic, z, w, partial)
    x0 = 0.8 * out["numba"][0][0]
    DS0 = np.ascontiguousarray(dic.DF[:, np.flatnonzero(x0)])
    again = huber_lasso_numba(dic.D, dic.DF, GW, known, c, z, w, l1, l2, x0=x0, DS0=DS0)
    assert np.array_equal(again[0], out["numba"][1][0])
    for a, b in zip(out["numpy"], out["numba"]):
        assert a[4] and b[4]                                   # converged
        assert a[2] < 1e-8 and b[2] < 1e-8                     # KKT certified
        assert np.allclose(a[0], b[0], rtol=1e-8, atol=1e-10 * np.abs(a[0]).max())
        assert np.allclose(a[1], b[1], atol=1e-8)
        assert np.array_equal(a[0] != 0, b[0] != 0)
        assert a[3] == b[3]                                    # the same Newton steps
    assert np.allclose(out["numba"][0][0], out["numba"][1][0], rtol=1e-7,
                       atol=1e-9 * np.abs(out["numba"][0][0]).max())


def test_a_grown_working_set_keeps_each_coefficient_at_its_atom():
    """Atoms joining the working set (before, between and after its atoms) start
    at 0; the atoms already in it keep their coefficients (both twins' helper)."""
    from shapeprior_kernels import huber_lasso as hl

    S, xS = np.array([2, 5, 9]), np.array([1.5, -2.0, 0.25])
    cand = np.array([7, 0, 11])
    for joined in (lambda: hl._joined_xp(S, xS, cand, np), lambda: hl._joined_nb(S, xS, cand)):
        S_new, x_new = joined()
        assert S_new.tolist() == [0, 2, 5, 7, 9, 11]
        assert x_new.tolist() == [0.0, 1.5, -2.0, 0.0, 0.25, 0.0]


@pytest.mark.parametrize("seed", range(3))
def test_huber_lasso_warm_start_on_wrong_atoms_still_reaches_the_optimum(seed):
    """A warm start counts as a settled working set (its stalled steps do not
    check the other atoms at once) unless ``settled=False``: started on atoms
    the optimum does not use, both twins must still bring the optimum's atoms
    in and reach the cold optimum, KKT certified, either way."""
    from shapeprior_kernels import huber_lasso_numba, huber_lasso_numpy

    dic, z, w, l1, l2 = _huber_problem(seed)
    GW, known, c = _huber_args(dic, z, w, False)
    cold = huber_lasso_numba(dic.D, dic.DF, GW, known, c, z, w, l1, l2)
    support = np.flatnonzero(cold[0])
    wrong = np.setdiff1d(np.arange(dic.n_atoms), support)[:4]
    x0 = np.zeros(dic.n_atoms)
    x0[wrong] = cold[0][support].mean()
    for fn in (huber_lasso_numpy, huber_lasso_numba):
        for settled in (None, False):
            GW, known, c = _huber_args(dic, z, w, True)
            x, r, kkt, it, conv = fn(dic.D, dic.DF, GW, known, c, z, w, l1, l2, x0=x0,
                                     settled=settled)
            assert conv and kkt < 1e-8, (fn.__name__, settled, kkt, it)
            assert np.array_equal(np.flatnonzero(x), support)
            assert np.allclose(x, cold[0], rtol=1e-7, atol=1e-9 * np.abs(cold[0]).max())


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("weights", [False, True])
def test_reweighted_twins_equal_the_solves_one_by_one(seed, weights):
    """One call of ``huber_lasso_reweighted`` (both twins) equals the first
    solve followed by the reweighted solves done one by one with the
    single-solve twin (each from the previous optimum, lam2_j = lam2 *
    max(tau / (|e_j| + tau), floor)): same x bit for bit on the Numba twin,
    to 1e-8 between twins, and the last weights on e."""
    from shapeprior_kernels import (huber_lasso_numba, huber_lasso_numpy,
                                    huber_lasso_reweighted_numba,
                                    huber_lasso_reweighted_numpy)

    dic, z, w, l1, _ = _huber_problem(seed, weights=weights)
    lam2, floor, rounds = 1.8, 0.05, 3
    out = {}
    for name, single, fused in (("numpy", huber_lasso_numpy, huber_lasso_reweighted_numpy),
                                ("numba", huber_lasso_numba, huber_lasso_reweighted_numba)):
        GW, known, c = _huber_args(dic, z, w, True)
        x, r, kkt, it, conv = single(dic.D, dic.DF, GW, known, c, z, w, l1,
                                     np.full(z.size, 0.5 * lam2))
        cur = np.full(z.size, lam2)
        tau_s = 0.5 * lam2 / w.max()
        for _ in range(rounds):
            tau = np.where(w > 0, 0.5 * cur / np.where(w > 0, w, 1.0), np.inf)
            e = np.sign(r) * np.maximum(np.abs(r) - tau, 0.0)
            cur = lam2 * np.maximum(tau_s / (np.abs(e) + tau_s), floor)
            x, r, kkt, it, conv = single(dic.D, dic.DF, GW, known, c, z, w, l1, 0.5 * cur, x0=x)
        GW, known, c = _huber_args(dic, z, w, True)
        got = fused(dic.D, dic.DF, GW, known, c, z, w, l1, lam2, rounds, floor)
        assert got[4] and got[2] < 1e-8
        assert np.allclose(got[5], cur, rtol=1e-12) and cur.min() < lam2 * 0.5
        if name == "numba":
            assert np.array_equal(got[0], x) and np.array_equal(got[5], cur)
        assert np.allclose(got[0], x, rtol=1e-9, atol=1e-12 * np.abs(x).max())
        out[name] = got
    a, b = out["numpy"], out["numba"]
    assert np.allclose(a[0], b[0], rtol=1e-8, atol=1e-10 * np.abs(a[0]).max())
    assert np.allclose(a[5], b[5], rtol=1e-8)


@each_backend(atol=1e-8, rtol=1e-7)
def test_ssc_l1_solve_twins_agree(backend):
    """``solve_l1`` through each backend's ``huber_lasso`` twin (the CuPy case
    runs the array reference on the GPU), cold then warm on a partial Gram.
    The cold solve takes the robust start (checked here), so that start runs
    on every backend too."""
    dic, z, w, l1, l2 = _huber_problem(5)
    from shapeprior.ssc import ShapeDictionary
    from shapeprior.ssc._l1 import solve_l1
    from shapeprior_kernels import gram_lasso_numpy
    from shapeprior_kernels import huber_lasso as hl

    tau = np.where(w > 0, l2 / np.where(w > 0, w, 1.0), np.inf)
    r = z - dic.D @ gram_lasso_numpy(dic.D.T @ (w[:, None] * dic.D), dic.DF.T @ (w * z), l1)[0]
    T, beyond = hl._robust_rows_xp(r, w, tau, hl.ROBUST_SIGMAS, np)
    assert 0 < T.size <= hl.ROBUST_SHARE * beyond

    d = ShapeDictionary(dic.atoms, backend=backend)
    xp = xp_for(backend)
    zz, ww, ll2 = xp.asarray(z), xp.asarray(w), xp.asarray(2 * l2)
    cold = solve_l1(d, zz, ww, 2 * l1, ll2)
    warm = solve_l1(d, zz, ww, 2 * l1, ll2, x0=0.7 * cold.x)
    assert cold.converged and warm.converged and cold.kkt < 1e-8 and warm.kkt < 1e-8
    return cold.x, warm.x, cold.residual


def _trimmed_problem(seed, gross):
    from shapeprior.ssc import ShapeDictionary
    from shapeprior.synthetic import make_ssc_problem

    p = make_ssc_problem(300, 40, gross_fraction=gross, noise=0.3, seed=seed, transform=False)
    rng = np.random.default_rng(seed)
    dic = ShapeDictionary(p.atoms, backend="numpy")
    z = p.observed.ravel()
    w = np.repeat(rng.uniform(0.3, 1.0, 300) ** 2, 3)
    w[:30] = 0.0                               # ten invisible vertices
    return dic, z, w


@pytest.mark.parametrize("seed, gross, threshold", [(0, 0.1, None), (1, 0.3, None),
                                                    (2, 0.4, None), (3, 0.2, 1e-6)])
def test_trimmed_omp_twins_agree_over_a_sequence_of_calls(seed, gross, threshold):
    """The Numba twin follows the reference: the same rounds, trimmed sets,
    stopping reason and (to rounding) coefficients, over several calls on one
    state (a cold start, a warm start from the trimmed set found, cold starts
    on a second shape and the first again: the state is moved, jumps to the
    other slot and comes back near the saved set), and the state's Gram
    values equal the direct products afterwards."""
    from shapeprior_kernels import new_state, trimmed_omp_numba, trimmed_omp_numpy

    dic, z, w, = _trimmed_problem(seed, gross)
    z2 = z + np.random.default_rng(seed + 10).normal(0.0, 2.0, z.size)
    D = dic.D
    GW = D.T @ (w[:, None] * D)
    thr = float("nan") if threshold is None else threshold
    out = {}
    for name, fn in (("numpy", trimmed_omp_numpy), ("numba", trimmed_omp_numba)):
        state = new_state(z.size, dic.n_atoms)
        state[1][:] = np.diag(GW)
        calls, slots = [], []
        for zz, warm in ((z, False), (z, True), (z2, False), (z, False)):
            init = calls[-1][2] if warm else np.zeros(dic.n_points, bool)
            calls.append(fn(D, dic.DF, GW, dic.DF.T @ (w * zz), zz, w, 8, 3, thr, 2.5, 0.5,
                            50, init, *state))
            slots.append(int(state[4][0]))
        out[name] = calls, state
        if threshold is None:               # a cold start jumped, the next came back
            assert slots == [0, 0, 1, 0], name
    for a, b in zip(out["numpy"][0], out["numba"][0]):
        assert np.allclose(a[0], b[0], rtol=1e-9, atol=1e-10 * np.abs(a[0]).max())
        assert np.allclose(a[1], b[1], atol=1e-8)
        assert np.array_equal(a[2], b[2])
        assert a[3] == pytest.approx(b[3], rel=1e-9, nan_ok=True)
        assert a[4:] == b[4:]                      # rounds, converged, cycled, capped
    assert out["numba"][0][0][7] == (threshold is not None)
    for name, (_, (rows, diag, cols, held, slot)) in out.items():
        c = int(slot[0])
        H = D.T @ ((w * ~rows[c])[:, None] * D)
        assert np.allclose(diag[c], np.diag(H), rtol=1e-10, atol=1e-8), name
        J = np.flatnonzero(held[c])
        assert J.size and np.allclose(cols[:, J, c], H[:, J], rtol=1e-10, atol=1e-8), name
    # the trimmed vertices are those whose residual exceeds the returned threshold
    x, r, trimmed, t = out["numba"][0][-1][:4]
    rn = np.linalg.norm(r.reshape(-1, 3), axis=1)
    visible = w.reshape(-1, 3).max(1) > 0
    if threshold is None and out["numba"][0][-1][5]:
        assert np.array_equal(trimmed, visible & (rn > t))
        assert t == pytest.approx(2.5 * np.median(rn[visible]))


@requires_gpu
def test_trimmed_omp_reference_runs_on_cupy():
    """The reference is array-namespace code: on CuPy arrays (the ``cupy``
    backend's twin) it gives the NumPy run's trimmed set and coefficients."""
    import cupy as cp
    from shapeprior_kernels import new_state, trimmed_omp_numpy

    dic, z, w = _trimmed_problem(1, 0.3)
    D = dic.D
    GW = D.T @ (w[:, None] * D)
    got = {}
    for name, xp in (("numpy", np), ("cupy", cp)):
        state = new_state(z.size, dic.n_atoms, xp)
        state[1][:] = xp.diag(xp.asarray(GW))
        a = [xp.asarray(v) for v in (D, dic.DF, GW, dic.DF.T @ (w * z), z, w)]
        got[name] = trimmed_omp_numpy(*a, 8, 3, float("nan"), 2.5, 0.5, 50,
                                      xp.zeros(dic.n_points, dtype=bool), *state)
    a, b = got["numpy"], got["cupy"]
    assert np.allclose(cp.asnumpy(b[0]), a[0], rtol=1e-9, atol=1e-10 * np.abs(a[0]).max())
    assert np.array_equal(cp.asnumpy(b[2]), a[2]) and a[4:] == b[4:]


def test_trimmed_omp_numba_refuses_a_state_it_cannot_update_in_place():
    from shapeprior_kernels import new_state, trimmed_omp_numba

    dic, z, w = _trimmed_problem(0, 0.1)
    GW = dic.D.T @ (w[:, None] * dic.D)
    rows, diag, cols, held, slot = new_state(z.size, dic.n_atoms)
    with pytest.raises(ValueError, match="new_state"):
        trimmed_omp_numba(dic.D, dic.DF, GW, dic.DF.T @ (w * z), z, w, 8, 3, float("nan"),
                          2.5, 0.5, 50, np.zeros(dic.n_points, bool), rows, diag,
                          np.ascontiguousarray(cols), held, slot)


def test_huber_lasso_optimum_is_the_huber_lasso_optimum():
    """Independent check of the optimum: the objective at the kernel's x is
    not above the objective at any nearby point (random probes), and the
    subgradient conditions computed here from scratch hold."""
    from shapeprior_kernels import huber_lasso_numba

    dic, z, w, l1, l2 = _huber_problem(7)
    GW, known, c = _huber_args(dic, z, w, True)
    x, r, kkt, _, conv = huber_lasso_numba(dic.D, dic.DF, GW, known, c, z, w, l1, l2)
    D = dic.D
    tau = np.where(w > 0, l2 / np.where(w > 0, w, 1.0), np.inf)

    def f(x_):
        return _huber_objective(x_, D, z, w, tau, l1, l2)

    assert np.allclose(r, z - D @ x)
    psi = np.where(np.abs(r) <= tau, w * r, l2 * np.sign(r))
    g = -(D.T @ psi)
    act = x != 0
    assert np.allclose(g[act], -l1 * np.sign(x[act]), atol=1e-7 * np.abs(c).max())
    assert np.all(np.abs(g[~act]) <= l1 * (1 + 1e-7))
    rng = np.random.default_rng(0)
    f0 = f(x)
    for _ in range(20):
        assert f(x + 1e-4 * rng.normal(size=x.size) * (np.abs(x).max() + 1e-3)) >= f0 - 1e-9 * abs(f0)


def test_huber_lasso_fills_only_the_columns_it_needs():
    """A warm solve on an empty Gram buffer computes the weighted Gram's
    columns of its working set, exactly, and no others."""
    from shapeprior_kernels import huber_lasso_numba, huber_lasso_numpy

    dic, z, w, l1, l2 = _huber_problem(2, K=60)
    full = dic.D.T @ (w[:, None] * dic.D)
    GW, known, c = _huber_args(dic, z, w, False)
    x_ref = huber_lasso_numpy(dic.D, dic.DF, GW, known, c, z, w, l1, l2)[0]
    for fn in (huber_lasso_numpy, huber_lasso_numba):
        GW, known, c = _huber_args(dic, z, w, True)
        x = fn(dic.D, dic.DF, GW, known, c, z, w, l1, l2, x0=x_ref)[0]
        assert 0 < known.sum() < dic.n_atoms
        assert np.all(known[x != 0])
        assert np.allclose(GW[:, known], full[:, known], rtol=1e-12, atol=1e-9)
        assert np.allclose(x, x_ref, rtol=1e-8, atol=1e-10 * np.abs(x_ref).max())


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("weights", [False, True])
def test_robust_start_is_the_newton_model_of_the_far_rows(seed, weights):
    """With a small gross-error threshold (most rows beyond tau under the
    outlier-free Lasso), a cold solve first takes as outlier set only the rows
    beyond ROBUST_SIGMAS robust standard deviations of that Lasso's weighted
    residual, and starts from the exact optimum of that set's Newton model.
    Both twins' starts equal that model's optimum computed here on the whole
    Gram; it lowers the objective; the cold solve from it reaches the plain
    cold solve's optimum in fewer Newton steps, the same count in both twins."""
    from shapeprior_kernels import gram_lasso_numpy, huber_lasso_numba, huber_lasso_numpy
    from shapeprior_kernels import huber_lasso as hl

    dic, z, w, l1, l2 = _huber_problem(seed, N=300, K=60, weights=weights)
    l2 = 0.3 * l2                              # tau about one noise sigma
    D = dic.D
    tau = np.where(w > 0, l2 / np.where(w > 0, w, 1.0), np.inf)
    full = D.T @ (w[:, None] * D)
    c = dic.DF.T @ (w * z)
    x_lasso, _ = gram_lasso_numpy(full, c, l1)
    r = z - D @ x_lasso
    vis = w > 0
    q = hl.ROBUST_SIGMAS * 1.4826 * np.median(np.sqrt(w[vis]) * np.abs(r[vis]))
    thr = np.where(vis, np.maximum(tau, q / np.sqrt(np.where(vis, w, 1.0))), np.inf)
    T = np.flatnonzero(np.abs(r) > thr)
    assert 0 < T.size < np.count_nonzero(np.abs(r) > tau) // 4
    DT_ = D[T]
    H = full - DT_.T @ (w[T][:, None] * DT_)
    b = c - DT_.T @ (w[T] * z[T] - l2[T] * np.sign(r[T]))
    x_model, _ = gram_lasso_numpy(H, b, l1)

    def f(x_):
        return _huber_objective(x_, D, z, w, tau, l1, l2)

    assert f(x_model) < f(x_lasso)
    Dc, DF = np.ascontiguousarray(D), np.asfortranarray(dic.DF)
    S0 = np.flatnonzero(x_lasso)
    twins = (lambda GW, known, *a: hl._robust_start_xp(GW, known, D, dic.DF, *a, np),
             lambda GW, known, *a: hl._robust_start_nb(Dc, DF, GW, known, *a))
    for start in twins:              # both work on the Lasso's working set and residual
        GW, known = np.zeros_like(full), np.zeros(dic.n_atoms, dtype=bool)
        S, xS, r_, f_ = start(GW, known, c, z, w, l1, l2, tau, S0, x_lasso[S0].copy(),
                              r.copy(), f(x_lasso), 1e-10, 8, hl.ROBUST_SIGMAS, 1)
        x = np.zeros(dic.n_atoms)
        x[S] = xS
        assert np.allclose(r_, z - D @ x) and np.isclose(f_, f(x))
        assert np.allclose(x, x_model, rtol=1e-8, atol=1e-10 * np.abs(x_model).max())
        assert np.array_equal(x != 0, x_model != 0)
    iters = {}
    for name, fn in (("numpy", huber_lasso_numpy), ("numba", huber_lasso_numba)):
        sols = []
        for steps in (0, 1):
            GW, known, c_ = _huber_args(dic, z, w, True)
            sols.append(fn(D, dic.DF, GW, known, c_, z, w, l1, l2, robust_steps=steps))
        plain, robust = sols
        assert plain[4] and robust[4] and robust[2] < 1e-8
        assert np.allclose(robust[0], plain[0], rtol=1e-8, atol=1e-10 * np.abs(plain[0]).max())
        assert robust[3] < plain[3]
        iters[name] = (plain[3], robust[3])
    assert iters["numpy"] == iters["numba"]


@pytest.mark.parametrize("K", [40, 200])
def test_cold_start_is_the_lasso_optimum_from_a_few_columns(K):
    """A cold solve starts from the outlier-free Lasso, found on a working set
    of atoms: both twins reach the optimum of the whole Gram (feature-sign on
    all K columns) while filling only some columns, each exactly."""
    from shapeprior_kernels import (gram_lasso_numpy, huber_lasso_numba, huber_lasso_numpy,
                                    lasso_partial_numba, lasso_partial_numpy)

    dic, z, w, l1, l2 = _huber_problem(3, K=K)
    full = dic.D.T @ (w[:, None] * dic.D)
    c = dic.DF.T @ (w * z)
    x_ref, _ = gram_lasso_numpy(full, c, l1)
    for fn in (lasso_partial_numpy, lasso_partial_numba):
        GW, known = np.zeros((K, K)), np.zeros(K, dtype=bool)
        x = fn(dic.D, dic.DF, GW, known, c, w, l1)
        assert np.allclose(x, x_ref, rtol=1e-9, atol=1e-11 * np.abs(x_ref).max())
        assert np.all(known[x != 0]) and known.sum() < K
        assert np.allclose(GW[:, known], full[:, known], rtol=1e-12, atol=1e-9)
    # the whole cold solve: the same optimum on an empty buffer as on the full Gram
    for fn in (huber_lasso_numpy, huber_lasso_numba):
        GW, known, c = _huber_args(dic, z, w, False)
        x_full = fn(dic.D, dic.DF, GW, known, c, z, w, l1, l2)[0]
        GW, known, c = _huber_args(dic, z, w, True)
        x = fn(dic.D, dic.DF, GW, known, c, z, w, l1, l2)[0]
        assert known.sum() < K
        assert np.allclose(x, x_full, rtol=1e-8, atol=1e-10 * np.abs(x_full).max())


@requires_gpu
def test_gpu_batched_cd_parity():
    import cupy as cp

    # a large batch: a barrier missing between sweeps once corrupted only
    # some of thousands of blocks
    H, b, lam = _batch(B=3000, n=40, seed=2)
    x_np, s_np = batched_gram_cd_numba(H, b, lam)
    x_gpu, s_gpu = batched_gram_cd_cupy(H, b, lam)
    assert np.allclose(cp.asnumpy(x_gpu), x_np, atol=1e-10)
    # the GPU contracts multiply-adds (FMA), so a problem sitting exactly at
    # the stopping tolerance may take one sweep more or less (seen: 1 of 3000)
    assert np.abs(cp.asnumpy(s_gpu).astype(int) - s_np).max() <= 1


def _sampling_problem(seed=0, n=3000, m=24):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(30, 41, 52)).astype(np.float32)
    Q = np.linalg.qr(rng.normal(size=(3, 3)))[0]          # oblique, possibly flipped
    A = np.linalg.inv(Q * np.array([0.8, 1.1, 2.5]))       # physical -> index
    origin = rng.normal(size=3) * 10
    # points inside and well outside the grid (edge clamping)
    v = origin + rng.uniform(-20, 80, size=(n, 3))
    nrm = rng.normal(size=(n, 3))
    nrm /= np.linalg.norm(nrm, axis=1)[:, None]
    return img, v, nrm, np.linspace(-6, 6, m), A, origin


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@each_backend(atol=1e-9)
def test_sample_normals_twins_match_the_scipy_reference(backend, dtype):
    img, v, n, t, A, o = _sampling_problem(seed=1, n=20000)
    out = kernel("sample_normals", backend)(xp_for(backend).asarray(img.astype(dtype)), v, n, t,
                                            A, o)
    assert out.shape == (len(v), len(t))
    return out


def test_sample_normals_exact_on_a_linear_image():
    # trilinear interpolation reproduces an affine intensity exactly inside the grid
    nz, ny, nx = 20, 25, 30
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    img = (2.0 * x - 3.0 * y + 0.5 * z + 7.0)
    M = np.diag([0.7, 0.9, 1.6]) @ np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1.0]])  # index -> mm
    origin = np.array([-12.0, 30.0, 5.0])
    rng = np.random.default_rng(3)
    idx = rng.uniform([2, 2, 2], [nx - 3, ny - 3, nz - 3], size=(500, 3))
    v = origin + idx @ M.T
    n = np.tile([0.0, 0.0, 1.0], (500, 1))
    t = np.array([-0.5, 0.0, 0.5])
    out = sample_normals_numba(img, v, n, t, np.linalg.inv(M), origin)
    pts = v[:, None, :] + t[None, :, None] * n[:, None, :]
    c = (pts - origin) @ np.linalg.inv(M).T
    expect = 2.0 * c[..., 0] - 3.0 * c[..., 1] + 0.5 * c[..., 2] + 7.0
    assert np.allclose(out, expect, atol=1e-9)


def _nvrtc():
    import ctypes
    import ctypes.util
    import glob
    import sys

    names = [ctypes.util.find_library("nvrtc")] + sorted(
        glob.glob(f"{sys.prefix}/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so*"))
    for name in filter(None, names):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


@pytest.mark.parametrize("source", ["batched_gram_cd.cu", "normal_sampling.cu"])
def test_cuda_sources_compile_with_nvrtc(source):
    """The CUDA kernels compile (NVRTC needs no GPU; skipped without NVRTC)."""
    import ctypes
    from pathlib import Path

    import shapeprior_kernels

    lib = _nvrtc()
    if lib is None:
        pytest.skip("NVRTC is not installed (pip install nvidia-cuda-nvrtc-cu12 to check)")
    folder = BENCH if source == "batched_gram_cd.cu" else Path(shapeprior_kernels.__file__).parent
    src = (folder / source).read_bytes()
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, source.encode(), 0, None, None) == 0
    opts = (ctypes.c_char_p * 1)(b"--gpu-architecture=compute_80")
    rc = lib.nvrtcCompileProgram(prog, 1, opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    assert rc == 0, log.value.decode(errors="replace")


def _profile_problem(seed, N=300, C=13, P=8):
    rng = np.random.default_rng(seed)
    samples = rng.normal(size=(N, C + P)).cumsum(1)
    samples[:5] = 0.0                                         # flat: every window ties
    mean = rng.normal(scale=0.2, size=(N, P))
    var = rng.uniform(0.05, 0.3, (N, P))
    return samples, mean, var, 1e-3 * np.abs(np.arange(C) - C // 2)


@each_backend(atol=1e-12, rtol=1e-12)
def test_profile_search_twins_agree(backend):
    best, cost = kernel("profile_search", backend)(*_profile_problem(4))
    return best.astype(float), cost


@pytest.mark.parametrize("P", [1, 5, 8, 17])
def test_profile_search_reference_is_the_windowed_profile_cost(P):
    """The reference against a direct loop over candidate windows (and the tie
    rule: the first minimum of cost + penalty)."""
    from shapeprior_kernels import profile_search_numpy

    samples, mean, var, pen = _profile_problem(P, N=40, P=P)
    best, cost = profile_search_numpy(samples, mean, var, pen)
    C = samples.shape[1] - P
    for n in range(len(samples)):
        costs = []
        for c in range(C):
            d = np.diff(samples[n, c:c + P + 1])
            prof = d / (np.abs(d).sum() + 1e-6)
            costs.append(np.mean((prof - mean[n]) ** 2 / var[n]))
        costs = np.array(costs)
        want = int(np.argmin(costs + pen))
        assert best[n] == want and cost[n] == pytest.approx(costs[want], rel=1e-12)
    assert np.all(best[:5] == C // 2)                          # flat profile: stay


def test_profile_search_refuses_inconsistent_shapes():
    from shapeprior_kernels import profile_search_numpy

    s, m, v, pen = _profile_problem(1, N=4)
    with pytest.raises(ValueError, match="candidates"):
        profile_search_numpy(s, m, v, pen[:-1])
    with pytest.raises(ValueError, match="expected"):
        profile_search_numpy(s, m[:3], v[:3], pen)


def _random_trees(seed, n_trees=40, n_features=6, max_nodes=31):
    """Random valid trees (children after parents, breadth first)."""
    rng = np.random.default_rng(seed)
    feat, thr, left, right, val, roots = [], [], [], [], [], []
    for _ in range(n_trees):
        base = len(feat)
        roots.append(base)
        n_inner = int(rng.integers(0, (max_nodes - 1) // 2 + 1))
        size = 2 * n_inner + 1
        for j in range(size):
            inner = j < n_inner
            feat.append(int(rng.integers(n_features)) if inner else 0)
            thr.append(float(rng.normal()) if inner else 0.0)
            left.append(base + 2 * j + 1 if inner else -1)
            right.append(base + 2 * j + 2 if inner else -1)
            val.append(0.0 if inner else float(rng.normal()))
    X = rng.normal(size=(500, n_features))
    X[:20, 0] = 0.0
    return X, *map(np.array, (feat, thr, left, right, val, roots))


@each_backend(atol=0, rtol=0)
def test_tree_ensemble_twins_agree(backend):
    return kernel("tree_ensemble", backend)(*_random_trees(5))


def test_tree_ensemble_reference_walks_each_tree():
    from shapeprior_kernels import tree_ensemble_numpy

    X, feat, thr, left, right, val, roots = _random_trees(6)
    got = tree_ensemble_numpy(X, feat, thr, left, right, val, roots)
    for p in range(0, len(X), 37):
        want = 0.0
        for r in roots:
            k = r
            while left[k] >= 0:
                k = left[k] if X[p, feat[k]] <= thr[k] else right[k]
            want += val[k]
        assert got[p] == pytest.approx(want, abs=1e-12)


def test_tree_ensemble_refuses_inconsistent_arrays():
    from shapeprior_kernels import tree_ensemble_numpy

    X, feat, thr, left, right, val, roots = _random_trees(7)
    with pytest.raises(ValueError, match="one length"):
        tree_ensemble_numpy(X, feat, thr[:-1], left, right, val, roots)


# -- neighbour lists (the template fit's closest points) -------------------------------------

def _surface_cloud(m, rng, scale=(30.0, 25.0, 60.0)):
    """Points on an ellipsoid: a mesh's vertices, as the template fit gives them."""
    v = rng.normal(size=(m, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True) * np.array(scale)


def _knn_queries(rng):
    cloud = _surface_cloud(600, rng)
    near = _surface_cloud(1500, rng) * 1.03 + rng.normal(0, 0.5, (1500, 3))
    far = rng.normal(size=(100, 3)) * 300.0             # far outside the cloud's box
    return cloud, np.concatenate([near, far])


@pytest.mark.parametrize("k", [1, 2, 5, 9])
@each_backend(atol=0, rtol=0)
def test_knn_twins_agree(backend, k):
    """The grid twin finds the KD-tree's neighbours, in its order, and the same
    distances bit for bit (query points near the cloud and far outside its box)."""
    cloud, q = _knn_queries(np.random.default_rng(k))
    d, i = kernel("knn", backend)(cloud, q, k)
    assert d.shape == i.shape == (len(q), k)
    return d, i.astype(float)


@pytest.mark.parametrize("cloud", ["flat", "line", "one point", "duplicates"])
@each_backend(atol=0, rtol=0)
def test_knn_twins_agree_on_degenerate_clouds(backend, cloud):
    """Clouds without extent along some axis (a plane, a line, one point) and
    repeated points: cells of the grid twin still cover them."""
    rng = np.random.default_rng(3)
    pts = _surface_cloud(300, rng)
    if cloud == "flat":
        pts[:, 2] = 5.0
    elif cloud == "line":
        pts[:, 1:] = 0.0
    elif cloud == "one point":
        pts = pts[:1]
    else:
        pts = np.concatenate([pts, pts[:50]])
    q = _surface_cloud(400, rng) + rng.normal(0, 2.0, (400, 3))
    k = min(3, len(pts))
    d, i = kernel("knn", backend)(pts, q, k)
    if cloud == "duplicates":       # equal distances may come in either order
        return d
    return d, i.astype(float)


@each_backend(atol=0, rtol=0)
def test_knn_index_asked_many_times_answers_as_knn(backend):
    """An index built once (the template fit's quality check and closest
    points) answers every later query as ``knn`` does afresh, whatever was asked
    before."""
    rng = np.random.default_rng(11)
    cloud, q = _knn_queries(rng)
    index = kernel("knn_index", backend)(cloud)
    out = []
    for part, k in ((q[:700], 1), (q[700:], 4), (q, 2)):
        d, i = index.knn(part, k)
        d0, i0 = kernel("knn", backend)(cloud, part, k)
        assert np.array_equal(d, d0) and np.array_equal(i, i0)
        out += [d, i.astype(float)]
    return tuple(out)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_knn_index_refuses_a_cloud_it_cannot_hold(backend):
    with pytest.raises(ValueError, match=r"\(m >= 1, 3\)"):
        kernel("knn_index", backend)(np.zeros((0, 3)))
    if backend == "numba":          # NaN would fall through the grid's bounds
        with pytest.raises(ValueError, match="non-finite"):
            kernel("knn_index", backend)(np.array([[0.0, 1.0, np.nan]]))


@pytest.mark.parametrize("order", [1, 2, 6])
@each_backend(atol=0, rtol=0)
def test_dense_samples_twins_agree(backend, order):
    """The quality check's lattice points, in the same order, bit for bit."""
    from shapeprior.mesh import icosphere, mesh_edges

    v, f = icosphere(2)
    v = v * np.array([30.0, 20.0, 45.0]) + np.random.default_rng(order).normal(0, 0.3, v.shape)
    got = kernel("dense_samples", backend)(v, f, mesh_edges(f, len(v)), order)
    inner = (order - 1) * (order - 2) // 2
    assert got.shape == (len(v) + len(mesh_edges(f, len(v))) * (order - 1) + len(f) * inner, 3)
    return got


def _template_step_problem(seed):
    """A template near an ellipsoid target, with its closest points both ways."""
    from scipy.spatial import cKDTree

    from shapeprior.mesh import icosphere, mean_neighbour_operator

    rng = np.random.default_rng(seed)
    v, f = icosphere(2)
    tv = _surface_cloud(400, rng, scale=(12.0, 9.0, 20.0))
    v = v * np.array([11.0, 10.0, 18.0]) + rng.normal(0, 0.4, v.shape)
    L = mean_neighbour_operator(f, len(v)).tocsr()
    return (v, tv, cKDTree(tv).query(v)[1], cKDTree(v).query(tv)[1], L.indptr, L.indices,
            L.data, f)


@pytest.mark.parametrize("k", [0, 3, 40])
@each_backend(atol=0, rtol=0)
def test_template_step_twins_agree(backend, k):
    """One non-rigid round of the template fit, bit for bit on every backend (the
    template fit's vertices, and so the model, must not depend on it); the
    vertices move toward the target."""
    v, tv, fi, bi, indptr, indices, data, f = _template_step_problem(k)
    out = kernel("template_step", backend)(v, tv, fi, bi, indptr, indices, data, k, f)
    assert out.shape == v.shape
    d_before = np.linalg.norm(v - tv[fi], axis=1).mean()
    d_after = np.linalg.norm(out[:, None, :] - tv[None], axis=2).min(axis=1).mean()
    assert d_after < d_before
    return out


def test_template_step_refuses_bad_arguments():
    from shapeprior_kernels import template_step_numpy

    v, tv, fi, bi, indptr, indices, data, f = _template_step_problem(1)
    with pytest.raises(ValueError, match="k=-1"):
        template_step_numpy(v, tv, fi, bi, indptr, indices, data, -1, f)
    with pytest.raises(ValueError, match=r"bi holds indices outside"):
        template_step_numpy(v, tv, fi, bi + len(v), indptr, indices, data, 2, f)
    with pytest.raises(ValueError, match=r"fi \(n,\)"):
        template_step_numpy(v, tv, fi[:-1], bi, indptr, indices, data, 2, f)


#: (shape zyx, sigma in voxels zyx, truncate, dtype): lines shorter than the
#: filter (reflected more than once), unfiltered axes, the levels' float32
GAUSSIAN_CASES = [((9, 11, 13), (1.0, 1.5, 2.0), 4.0, np.float32),
                  ((3, 40, 2), (2.5, 0.0, 3.0), 4.0, np.float32),
                  ((1, 17, 5), (0.7, 1e-16, 0.3), 3.0, np.float64),
                  ((25, 6, 31), (0.45, 3.7, 0.9), 2.5, np.float32)]


@pytest.mark.parametrize("case", range(len(GAUSSIAN_CASES)))
@each_backend(atol=0, rtol=0)
def test_gaussian_smooth_twins_agree(backend, case):
    """The level images' smoothing: scipy's values bit for bit, in place."""
    from scipy import ndimage

    shape, sigma, truncate, dtype = GAUSSIAN_CASES[case]
    rng = np.random.default_rng(case)
    img = (rng.normal(0, 1, shape) * 10.0 ** rng.integers(0, 4, shape)).astype(dtype)
    want = ndimage.gaussian_filter(img, sigma, truncate=truncate, mode="reflect")
    got = img.copy()
    assert kernel("gaussian_smooth", backend)(got, sigma, truncate) is got
    assert got.dtype == dtype and np.array_equal(got, want)
    return got


def test_gaussian_smooth_on_fewer_threads_same_values_count_restored():
    """A small crop runs on the calling thread alone (``threads=1``): the same
    values, and Numba's thread count as it was (after a refused call too)."""
    numba = pytest.importorskip("numba")
    from scipy import ndimage

    from shapeprior_kernels import gaussian_smooth_numba

    img = np.random.default_rng(5).normal(0, 1, (7, 12, 9)).astype(np.float32)
    before = numba.get_num_threads()
    got = gaussian_smooth_numba(img.copy(), (1.2, 0.8, 2.0), threads=1)
    assert np.array_equal(got, ndimage.gaussian_filter(img, (1.2, 0.8, 2.0)))
    assert numba.get_num_threads() == before
    with pytest.raises(ValueError, match="sigma"):
        gaussian_smooth_numba(img.copy(), (1.0, np.nan, 1.0), threads=1)
    assert numba.get_num_threads() == before


#: (shape zyx, block zyx, dtype): blocks that do not divide the image (the far
#: edge left out), an axis shorter than its block, the stored CT and MR types
#: (each dtype compiles the Numba twin once more: a few seconds of the CI job)
BLOCK_CASES = [((13, 22, 17), (4, 7, 6), np.int16), ((9, 8, 30), (1, 3, 5), np.uint16),
               ((5, 6, 7), (2, 2, 2), np.float32), ((2, 11, 12), (3, 2, 4), np.int16)]


@pytest.mark.parametrize("case", range(len(BLOCK_CASES)))
@each_backend(atol=0, rtol=1e-6)
def test_block_mean_twins_agree(backend, case):
    """The placement's downsampled scan: each block's mean, as float32."""
    shape, f, dtype = BLOCK_CASES[case]
    rng = np.random.default_rng(case)
    a = (rng.uniform(-1200, 3000, shape) if dtype == np.float32
         else rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, shape)).astype(dtype)
    got = kernel("block_mean", backend)(a, np.array(f))
    n = np.array(shape) // np.array(f)
    assert got.dtype == np.float32 and got.shape == tuple(n)
    if got.size:                   # one block by hand, the last whole one
        i, j, k = n - 1
        block = a[i * f[0]:(i + 1) * f[0], j * f[1]:(j + 1) * f[1], k * f[2]:(k + 1) * f[2]]
        assert np.isclose(got[i, j, k], block.astype(np.float64).mean(), rtol=1e-6)
    if dtype != np.float32:        # exact integer sums: equal bit for bit
        from shapeprior_kernels import block_mean_numpy

        assert np.array_equal(got, block_mean_numpy(a, np.array(f)))
    return got


def test_block_mean_takes_any_stored_type():
    """A Volume built through the API may hold big-endian, float16 or bool voxels."""
    from shapeprior_kernels import block_mean_numba, block_mean_numpy

    a = np.random.default_rng(2).integers(-900, 900, (6, 8, 10)).astype(np.int16)
    f = np.array([2, 4, 5])
    want = block_mean_numpy(a, f)
    for other in (a.astype(">i2"), a.astype(np.float16)):
        assert np.array_equal(block_mean_numba(other, f), want), other.dtype
    mask = a > 0
    assert np.array_equal(block_mean_numba(mask, f), block_mean_numpy(mask, f))


def test_block_mean_refuses_bad_arguments():
    from shapeprior_kernels import block_mean_numba, block_mean_numpy

    for mean in (block_mean_numpy, block_mean_numba):
        with pytest.raises(ValueError, match="3-D image"):
            mean(np.zeros((4, 4)), np.array([1, 1, 1]))
        with pytest.raises(ValueError, match="f must be 3 integers >= 1"):
            mean(np.zeros((4, 4, 4)), np.array([1, 0, 1]))
        with pytest.raises(ValueError, match="f must be 3 integers >= 1"):
            mean(np.zeros((4, 4, 4)), np.array([1.5, 1, 1]))


def test_gaussian_smooth_refuses_bad_arguments():
    from shapeprior_kernels import gaussian_smooth_numba, gaussian_smooth_numpy

    for smooth in (gaussian_smooth_numpy, gaussian_smooth_numba):
        with pytest.raises(ValueError, match="C-ordered 3-D float32 or float64"):
            smooth(np.zeros((4, 4, 4), np.int16), (1.0, 1.0, 1.0))
        with pytest.raises(ValueError, match="C-ordered 3-D"):
            smooth(np.zeros((4, 4, 4)).transpose(2, 1, 0)[:, :, :3], (1.0, 1.0, 1.0))
        with pytest.raises(ValueError, match="C-ordered 3-D"):
            smooth(np.zeros((4, 4)), (1.0, 1.0))
        with pytest.raises(ValueError, match="sigma must be 3 finite numbers"):
            smooth(np.zeros((4, 4, 4)), (1.0, -1.0, 1.0))


def test_dense_samples_refuses_bad_arguments():
    from shapeprior_kernels import dense_samples_numpy

    v, f = np.zeros((3, 3)), np.array([[0, 1, 2]])
    e = np.array([[0, 1], [1, 2], [0, 2]])
    with pytest.raises(ValueError, match="order=0"):
        dense_samples_numpy(v, f, e, 0)
    with pytest.raises(ValueError, match="faces refer"):
        dense_samples_numpy(v, f + 1, e, 2)
    with pytest.raises(ValueError, match=r"edges \(E, 2\)"):
        dense_samples_numpy(v, f, f, 2)


def test_knn_reference_is_the_brute_force_answer():
    from shapeprior_kernels import knn_numpy

    rng = np.random.default_rng(5)
    cloud, q = _knn_queries(rng)
    d, i = knn_numpy(cloud, q, 4)
    full = np.linalg.norm(q[:, None, :] - cloud[None, :, :], axis=2)
    want = np.argsort(full, axis=1, kind="stable")[:, :4]
    assert np.array_equal(i, want)
    assert np.allclose(d, np.take_along_axis(full, want, axis=1), rtol=1e-14)


def test_knn_refuses_bad_arguments():
    from shapeprior_kernels import knn_numpy

    cloud = np.zeros((5, 3))
    with pytest.raises(ValueError, match="k=6"):
        knn_numpy(cloud, np.zeros((2, 3)), 6)
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        knn_numpy(cloud, np.zeros((2, 2)), 1)


def _list_problem(rng, k=4):
    """Lists made from a cloud that then moved: some still certified, some not."""
    from shapeprior_kernels import knn_numpy

    cloud, q = _knn_queries(rng)
    d, i = knn_numpy(cloud, q, k + 1)
    moved_by = np.where(rng.random(len(cloud)) < 0.1, 1.5, 0.02)[:, None]
    cloud2 = cloud + rng.normal(size=cloud.shape) * moved_by
    moved = np.full(len(q), float(np.max(np.linalg.norm(cloud2 - cloud, axis=1))))
    return q, cloud2, i[:, :k], d[:, k], moved


@each_backend(atol=0, rtol=0)
def test_nearest_in_list_twins_agree(backend):
    idx, ok = kernel("nearest_in_list", backend)(*_list_problem(np.random.default_rng(7)),
                                                  1e-9)
    return idx.astype(float), ok.astype(float)


def test_nearest_in_list_certifies_only_the_true_nearest():
    """A certified answer is the nearest point of the whole cloud; the lists'
    nearest are checked against a brute-force search, and both outcomes occur."""
    from shapeprior_kernels import nearest_in_list_numpy

    q, cloud, cand, reach, moved = _list_problem(np.random.default_rng(8))
    idx, ok = nearest_in_list_numpy(q, cloud, cand, reach, moved)
    truth = np.argmin(np.linalg.norm(q[:, None, :] - cloud[None, :, :], axis=2), axis=1)
    assert np.array_equal(idx[ok], truth[ok])
    assert 0.2 < ok.mean() < 1.0
    # an uncertified answer may be wrong: the caller asks again
    assert np.any(idx[~ok] != truth[~ok]) or not np.any(~ok)
    # nothing moved: every list answers, and correctly
    idx0, ok0 = nearest_in_list_numpy(q, cloud, np.argsort(
        np.linalg.norm(q[:, None, :] - cloud[None, :, :], axis=2), axis=1)[:, :4],
        np.sort(np.linalg.norm(q[:, None, :] - cloud[None, :, :], axis=2), axis=1)[:, 4],
        np.zeros(len(q)))
    assert np.array_equal(idx0, truth) and ok0.mean() > 0.99


def _outlier_hessian_problem(seed=0, n=90, K=25, M=7):
    """Padded outlier rows and working sets of a batch, as the batched SSC-L1
    solve builds them (row n / atom K: padding)."""
    rng = np.random.default_rng(seed)
    D = rng.normal(size=(n, K))
    w = rng.uniform(0.0, 1.0, n)
    w[:5] = 0.0
    GW = D.T @ (w[:, None] * D)
    o, s = 30, 9
    Oidx = np.full((M, o), n)
    Sidx = np.full((M, s), K)
    for m in range(M):
        no, ns = rng.integers(0, o + 1), rng.integers(1, s + 1)
        Oidx[m, :no] = np.sort(rng.choice(n, no, replace=False))
        Sidx[m, :ns] = np.sort(rng.choice(K, ns, replace=False))
    v = rng.normal(size=(M, o)) * (Oidx < n)
    return D, GW, w, Oidx, Sidx, v


@each_backend(atol=1e-11, rtol=1e-11)
def test_outlier_hessian_twins_agree(backend):
    xp = xp_for(backend)
    args = [xp.asarray(a) for a in _outlier_hessian_problem()]
    return kernel("outlier_hessian", backend)(*args)


def test_outlier_hessian_reference_is_the_system_of_the_kept_rows():
    """H = D_S^T W_in D_S over the rows that are not outliers; padded slots are
    identity rows; bc = D_{O,S}^T v."""
    D, GW, w, Oidx, Sidx, v = _outlier_hessian_problem(seed=1)
    n, K = D.shape
    H, bc = kernel("outlier_hessian", "numpy")(D, GW, w, Oidx, Sidx, v)
    for m in range(len(Oidx)):
        S = Sidx[m][Sidx[m] < K]
        O = Oidx[m][Oidx[m] < n]
        keep = np.setdiff1d(np.arange(n), O)
        want = D[keep][:, S].T @ (w[keep, None] * D[keep][:, S])
        s = S.size
        np.testing.assert_allclose(H[m, :s, :s], want, atol=1e-10)
        pad = H[m, s:, :]
        assert np.array_equal(pad[:, :s], np.zeros((pad.shape[0], s)))
        assert np.array_equal(pad[:, s:], np.eye(pad.shape[0]))
        np.testing.assert_allclose(bc[m, :s], D[O][:, S].T @ v[m, :O.size], atol=1e-12)
        assert (bc[m, s:] == 0).all()
