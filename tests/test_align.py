import numpy as np
import pytest

from shapeprior import Transform, generalized_procrustes, procrustes
from shapeprior.align import apply_many, procrustes_many
from shapeprior.synthetic import ShapePopulation, random_similarity


def _rand_rot(rng, d):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@pytest.mark.parametrize("d", [2, 3])
def test_similarity_recovers_rotation_scale_translation(rng, d):
    src = rng.normal(scale=20.0, size=(60, d))
    R = _rand_rot(rng, d)
    s, t = 1.7, rng.normal(scale=30, size=d)
    dst = s * src @ R.T + t
    T = procrustes(src, dst)
    assert np.allclose(T.rotation, R, atol=1e-10)
    assert T.scale == pytest.approx(s, rel=1e-12)
    assert np.allclose(T.translation, t, atol=1e-9)
    assert np.allclose(T.apply(src), dst, atol=1e-9)
    back = T.inverse().apply(dst)
    assert np.allclose(back, src, atol=1e-9)


def test_rigid_keeps_unit_scale_and_no_reflection(rng):
    src = rng.normal(size=(40, 3))
    mirrored = src * np.array([-1.0, 1.0, 1.0])
    T = procrustes(src, mirrored, kind="rigid")
    assert np.linalg.det(T.linear) > 0
    assert T.scale == pytest.approx(1.0)
    Tr = procrustes(src, mirrored, kind="rigid", reflection=True)
    assert np.allclose(Tr.apply(src), mirrored, atol=1e-10)


def test_affine_recovery(rng):
    src = rng.normal(size=(50, 3))
    A = rng.normal(size=(3, 3)) + 2 * np.eye(3)
    t = rng.normal(size=3)
    T = procrustes(src, src @ A.T + t, kind="affine")
    assert np.allclose(T.linear, A, atol=1e-10)
    assert np.allclose(T.translation, t, atol=1e-10)


def test_zero_weights_ignore_points(rng):
    src = rng.normal(scale=10, size=(50, 3))
    R, s, t = random_similarity(rng)
    dst = s * src @ R.T + t
    dst[:10] += rng.normal(scale=50, size=(10, 3))   # wildly wrong points
    w = np.ones(50)
    w[:10] = 0
    T = procrustes(src, dst, w)
    assert np.allclose(T.linear, s * R, atol=1e-10)
    # without the weights the same data gives a visibly different transform
    assert not np.allclose(procrustes(src, dst).linear, s * R, atol=1e-3)


def test_compose_and_identity(rng):
    a = procrustes(rng.normal(size=(10, 3)), rng.normal(size=(10, 3)))
    b = procrustes(rng.normal(size=(10, 3)), rng.normal(size=(10, 3)))
    p = rng.normal(size=(7, 3))
    assert np.allclose(a.compose(b).apply(p), a.apply(b.apply(p)))
    assert np.allclose(Transform.identity(3).apply(p), p)


@pytest.mark.parametrize("bad", ["nan", "shape", "few", "kind", "neg"])
def test_procrustes_rejects_bad_input(rng, bad):
    src = rng.normal(size=(10, 3))
    dst = src.copy()
    kw = {}
    if bad == "nan":
        dst[0, 0] = np.nan
    elif bad == "shape":
        dst = dst[:9]
    elif bad == "few":
        kw["weights"] = np.r_[1.0, np.zeros(9)]
    elif bad == "kind":
        kw["kind"] = "projective"
    elif bad == "neg":
        kw["weights"] = -np.ones(10)
    with pytest.raises(ValueError):
        procrustes(src, dst, **kw)


def test_gpa_removes_similarity_transforms(rng):
    base = ShapePopulation(n_points=200, seed=3).sample(1)[0]
    shapes = []
    for _ in range(6):
        R, s, t = random_similarity(rng)
        shapes.append(s * base @ R.T + t)
    g = generalized_procrustes(np.stack(shapes))
    assert g.converged
    spread = np.abs(g.aligned - g.mean).max()
    assert spread < 1e-6
    # size='mean' keeps the common frame in physical units
    sizes = [np.sqrt(((x - x.mean(0)) ** 2).sum()) for x in shapes]
    assert np.sqrt(((g.mean - g.mean.mean(0)) ** 2).sum()) == pytest.approx(np.mean(sizes), rel=1e-6)
    for T, sh, al in zip(g.transforms, shapes, g.aligned):
        assert np.allclose(T.apply(sh), al)


def test_gpa_rejects_single_shape(rng):
    with pytest.raises(ValueError, match="at least 2"):
        generalized_procrustes(rng.normal(size=(1, 10, 3)))


@pytest.mark.parametrize("kind", ["similarity", "rigid", "affine"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reflection", [False, True])
def test_procrustes_many_equals_one_at_a_time(rng, kind, weighted, reflection):
    target = rng.normal(size=(40, 3)) * 20
    shapes = []
    for i in range(7):
        R, s, t = random_similarity(rng)
        if i == 3:   # a mirrored shape: the reflection flag matters
            R = R @ np.diag([1.0, 1.0, -1.0])
        shapes.append(s * (target + rng.normal(size=target.shape)) @ R.T + t)
    shapes = np.stack(shapes)
    w = rng.uniform(0, 1, 40) if weighted else None
    if kind == "affine" and reflection:
        reflection = False
    many = procrustes_many(shapes, target, w, kind=kind, reflection=reflection)
    for T, s in zip(many, shapes):
        ref = procrustes(s, target, w, kind=kind, reflection=reflection)
        assert T.kind == ref.kind
        np.testing.assert_allclose(T.linear, ref.linear, atol=1e-12)
        np.testing.assert_allclose(T.translation, ref.translation, atol=1e-9)
    np.testing.assert_allclose(apply_many(many, shapes),
                               np.stack([T.apply(s) for T, s in zip(many, shapes)]), atol=1e-12)


def test_procrustes_many_rejects_bad_input(rng):
    target = rng.normal(size=(10, 3))
    with pytest.raises(ValueError, match="sources must have shape"):
        procrustes_many(target, target)
    with pytest.raises(ValueError, match="differ in shape"):
        procrustes_many(rng.normal(size=(2, 9, 3)), target)
    bad = rng.normal(size=(2, 10, 3))
    bad[1, 4, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        procrustes_many(bad, target)
    flat = np.zeros((2, 10, 3))
    with pytest.raises(ValueError, match="all identical"):
        procrustes_many(flat, target)
