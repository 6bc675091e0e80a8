import json

import numpy as np
import pytest

from _phantoms import ellipsoid_label_map
from shapeprior.cli import main
from shapeprior.correspond import fit_template
from shapeprior.mesh import Surface, icosphere
from shapeprior.model import (BuildParams, DictionaryLearner, ModelFormatError, ShapeModel,
                              find_label_maps,
                              load_model, pca_from_shapes, pca_reconstruct, save_model)
from shapeprior.synthetic import ShapePopulation


def _ellipsoid_surface(a, b, c, centre=(0, 0, 0), level=5):
    v, f = icosphere(level)
    return Surface(v * np.array([a, b, c]) + np.asarray(centre), f)


def test_template_fit_quality_and_consistency():
    sv, sf = icosphere(3)
    t1 = _ellipsoid_surface(40, 25, 20)
    t2 = _ellipsoid_surface(40, 25, 20, centre=(15, -7, 30))
    v1, q1 = fit_template(sv, sf, t1)
    v2, q2 = fit_template(sv, sf, t2)
    assert q1.ok and q2.ok
    assert q1.mean_fit_to_target < 0.3 and q1.mean_target_to_fit < 0.6
    # the same anatomy in another place gets the same vertex layout
    assert np.allclose(v2 - v1, [15, -7, 30], atol=0.5)


def test_template_fit_reaches_into_a_protrusion_and_a_dent():
    """A kidney-like body (an ellipsoid with a thumb 20 mm long and a dent) is
    fitted closely both ways: the target's points pull the template into the
    thumb (the template's own closest points never reach it), and the
    relaxation keeps the surface where it is (it moves vertices within the
    tangent plane only, so the fit does not shrink). Measured: 0.15 / 0.33 mm
    mean, 1.2 mm 99th percentile; without the backward pull 0.85 mm and 9.7 mm,
    with a relaxation along the normal 0.32 / 0.52 mm and 2.7 mm."""
    from shapeprior.io import Volume
    from shapeprior.mesh import mask_to_surface

    z, y, x = np.mgrid[-50:50:1.0, -40:40:1.0, -40:40:1.0]
    body = (x / 38) ** 2 + (y / 24) ** 2 + (z / 18) ** 2 <= 1
    thumb = ((x - 30) / 22) ** 2 + ((y - 22) / 7) ** 2 + (z / 7) ** 2 <= 1
    dent = ((x + 5) / 12) ** 2 + ((y + 24) / 10) ** 2 + (z / 9) ** 2 <= 1
    m = (body | thumb) & ~dent
    vol = Volume(m.astype(np.uint8), np.ones(3), np.array([-40.0, -40.0, -50.0]), np.eye(3))
    sv, sf = icosphere(3)
    _, q = fit_template(sv, sf, mask_to_surface(vol, m, 1.0, 1.0))
    assert q.ok
    assert q.mean_fit_to_target < 0.22 and q.mean_target_to_fit < 0.42
    assert q.p99_symmetric < 1.8


def test_closest_points_of_moving_vertices_are_the_trees_answers():
    """The template fit's closest target points, kept for the vertices whose
    small steps cannot have changed them, equal a KD-tree query at every step:
    small steps (most kept) and large jumps (asked again) alike."""
    from scipy.spatial import cKDTree

    from shapeprior.correspond._nicp import _NearestFromMoving

    asked = []

    class Counting(cKDTree):
        def query(self, x, *args, **kw):
            asked.append(len(x))
            return super().query(x, *args, **kw)

    rng = np.random.default_rng(0)
    pts = rng.normal(size=(2000, 3))
    tree = Counting(pts)
    q = rng.normal(size=(500, 3))
    nearest = _NearestFromMoving(tree, pts)
    for step in range(40):
        q = q + rng.normal(scale=0.5 if step % 10 == 9 else 0.002, size=q.shape)
        asked.clear()
        got = nearest(q)
        assert np.array_equal(got, cKDTree(pts).query(q)[1])
        if step % 10 not in (0, 9):
            assert sum(asked) < 0.5 * len(q)      # small steps: most answers kept


def test_closest_vertices_of_a_moving_cloud_are_the_trees_answers():
    """The template fit's backward correspondences (each fixed target point's
    closest template vertex), kept for the points that the template's small
    steps cannot have changed, equal a fresh KD-tree query at every step:
    small steps (most kept), a few vertices moving far, and whole jumps."""
    from scipy.spatial import cKDTree

    from shapeprior.correspond._nicp import _NearestToMoving

    rng = np.random.default_rng(1)
    pts = rng.normal(size=(3000, 3))
    cloud = rng.normal(size=(400, 3))
    nearest = _NearestToMoving(pts)
    kept = []
    for step in range(40):
        move = rng.normal(scale=0.5 if step % 10 == 9 else 0.002, size=cloud.shape)
        if step % 10 == 5:
            move[:3] += 1.0                  # a few vertices jump: the others stay put
        cloud = cloud + move
        first = nearest.cloud is None
        before = 0 if first else nearest.asked
        got = nearest(cloud)
        assert np.array_equal(got, cKDTree(cloud).query(pts)[1]), step
        if not first:
            kept.append(1.0 - (nearest.asked - before) / len(pts))
    assert np.mean(kept) > 0.5                 # small steps: most answers kept
    assert min(kept) < 0.05                    # a jump: asked again


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_template_fit_does_not_depend_on_the_neighbour_lists(monkeypatch, backend):
    """The lists only save searches: lists of 1, 2 or 8 points (or none: every
    closest point searched afresh at every step) give the same fit bit for
    bit, on either kernel backend, and the quality from the same distances."""
    import shapeprior.correspond._nicp as nicp

    if backend == "numba":
        pytest.importorskip("numba")
    monkeypatch.setenv("SHAPEPRIOR_BACKEND", backend)
    sv, sf = icosphere(3)
    rng = np.random.default_rng(4)
    t = _ellipsoid_surface(40, 25, 20, level=4)
    t = Surface(t.verts + rng.normal(0, 0.3, t.verts.shape), t.faces)
    fits = {}
    for k in (0, 1, 2, 8):
        monkeypatch.setattr(nicp, "NEIGHBOURS", k)
        fits[k] = fit_template(sv, sf, t)
    for k in (1, 2, 8):
        assert np.array_equal(fits[k][0], fits[0][0]), k
        assert fits[k][1] == fits[0][1]


def test_template_fit_flags_failure():
    sv, sf = icosphere(2)
    a = _ellipsoid_surface(10, 10, 10, centre=(-40, 0, 0), level=4)
    b = _ellipsoid_surface(10, 10, 10, centre=(40, 0, 0), level=4)
    two = Surface(np.vstack([a.verts, b.verts]), np.vstack([a.faces, b.faces + len(a.verts)]))
    _, q = fit_template(sv, sf, two)   # one sphere cannot cover two blobs
    assert not q.ok and q.reason


def _small_model(n=12, seed=0):
    pop = ShapePopulation(n_points=162, seed=seed)
    from shapeprior.align import generalized_procrustes

    g = generalized_procrustes(pop.sample(n))
    mean, comps, var = pca_from_shapes(g.aligned, var_kept=1.0)   # all modes
    return ShapeModel(g.aligned, mean, icosphere(2)[1], comps, var, None,
                      {"organ": "phantom", "side": "none"})


def test_model_save_load_round_trip(tmp_path):
    m = _small_model()
    m.atoms = m.shapes[:3] * 1.0
    save_model(m, tmp_path / "m.npz")
    r = load_model(tmp_path / "m.npz")
    for k in ("shapes", "mean", "faces", "pca_components", "pca_variances", "atoms"):
        assert np.array_equal(getattr(r, k), getattr(m, k)), k
    assert r.metadata["organ"] == "phantom" and r.metadata["format_version"] == 1
    # the file holds no pickled objects
    z = np.load(tmp_path / "m.npz", allow_pickle=False)
    assert all(z[k].dtype != object for k in z.files)


def test_model_file_errors(tmp_path):
    m = _small_model()
    save_model(m, tmp_path / "m.npz")
    z = dict(np.load(tmp_path / "m.npz", allow_pickle=False))
    meta = json.loads(str(z["metadata_json"]))
    meta["format_version"] = 99
    z["metadata_json"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "future.npz", **z)
    with pytest.raises(ModelFormatError, match="version 99"):
        load_model(tmp_path / "future.npz")
    (tmp_path / "junk.npz").write_bytes(b"definitely not a zip")
    with pytest.raises(ModelFormatError, match="not a shapeprior model"):
        load_model(tmp_path / "junk.npz")
    # an interrupted copy: the archive's start without its central directory
    whole = (tmp_path / "future.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelFormatError, match="cut.npz is a truncated model file"):
        load_model(tmp_path / "cut.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ModelFormatError, match="no metadata"):
        load_model(tmp_path / "other.npz")
    with pytest.raises(IsADirectoryError, match="is a folder; a model file"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such model file: none.npz"):
        load_model(tmp_path / "none.npz")


def test_pca_reconstruct_training_shape_and_clamp():
    m = _small_model()
    y = m.shapes[3] + 5.0
    r = pca_reconstruct(m, y)
    assert np.abs(r - y).max() < 1e-6      # in the span, within +-3 sd
    wild = m.mean + 10 * np.sqrt(m.pca_variances[0]) * m.pca_components[0].reshape(-1, 3)
    rw = pca_reconstruct(m, wild)
    assert np.abs(rw - wild).max() > 1.0   # the clamp keeps the shape plausible
    # the clamp is in standard deviations, not variances: on a model in small units
    # (sd < 1 mm, so sd^2 < sd) a shape 2.5 sd out along a mode is kept as it is
    from dataclasses import replace

    k = 0.01
    small = replace(m, shapes=m.shapes * k, mean=m.mean * k,
                    pca_variances=m.pca_variances * k * k)
    sd0 = np.sqrt(small.pca_variances[0])
    assert sd0 < 0.5
    y = small.mean + 2.5 * sd0 * small.pca_components[0].reshape(-1, 3)
    assert np.abs(pca_reconstruct(small, y) - y).max() < 1e-6 * sd0 + 1e-9


def test_ksvd_and_online_update():
    pop = ShapePopulation(n_points=100, seed=4)
    train, new = pop.sample(60), pop.sample(30)
    dl = DictionaryLearner(n_atoms=12, n_nonzero=3, n_iter=6, seed=0).fit(train)
    assert dl.components_.shape == (300, 12)
    assert np.allclose(np.linalg.norm(dl.components_, axis=0), 1.0)
    assert dl.error_[-1] <= dl.error_[0] + 1e-12
    before = dl.reconstruction_error(new)
    dl.partial_fit(new)
    assert dl.n_seen_ == 90
    assert dl.reconstruction_error(new) <= before
    with pytest.raises(ValueError, match="n_atoms"):
        DictionaryLearner(n_atoms=100).fit(train)


def _mairal_reference(D, A, B, Y, k, n_sweeps):
    """Online dictionary update written out densely (Mairal et al. 2009, alg. 2):
    OMP codes of the new columns, A += x x^T, B += y x^T, block-coordinate steps."""
    from shapeprior.ssc import omp_gram_many

    D = D.copy()
    X = omp_gram_many(D.T @ D, D.T @ Y, k)
    A, B = A + X @ X.T, B + Y @ X.T
    for _ in range(n_sweeps):
        for j in range(D.shape[1]):
            if A[j, j] <= 1e-12:
                continue
            u = (B[:, j] - D @ A[:, j]) / A[j, j] + D[:, j]
            D[:, j] = u / max(np.linalg.norm(u), 1.0)
    return D, A, B


def test_online_update_follows_the_dense_reference():
    pop = ShapePopulation(n_points=60, seed=7)
    train, new, more = pop.sample(30), pop.sample(12), pop.sample(9)
    dl = DictionaryLearner(n_atoms=10, n_nonzero=3, n_iter=4, seed=0).fit(train)
    D0, A0, B0 = dl.components_.copy(), dl.A_.copy(), dl.B_.copy()
    dl.partial_fit(new, n_sweeps=2)
    D, A, B = _mairal_reference(D0, A0, B0, new.reshape(12, -1).T, 3, 2)
    np.testing.assert_allclose(dl.components_, D, atol=1e-10)
    np.testing.assert_allclose(dl.A_, A, rtol=1e-10)
    np.testing.assert_allclose(dl.B_, B, rtol=1e-10)
    # grow: every new shape becomes an atom (coded by itself), then the same update
    D0, A0, B0 = dl.components_.copy(), dl.A_.copy(), dl.B_.copy()
    dl.grow(more, 9)
    assert dl.atoms_.shape[0] == 19
    Dg = np.concatenate([D0, more.reshape(9, -1).T / np.linalg.norm(more.reshape(9, -1), axis=1)],
                        axis=1)
    Ag = np.zeros((19, 19))
    Ag[:10, :10] = A0
    Bg = np.concatenate([B0, np.zeros((B0.shape[0], 9))], axis=1)
    dl.partial_fit(more, n_sweeps=1)
    D, A, B = _mairal_reference(Dg, Ag, Bg, more.reshape(9, -1).T, 3, 1)
    np.testing.assert_allclose(dl.components_, D, atol=1e-10)
    np.testing.assert_allclose(dl.A_, A, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dl.B_, B, rtol=1e-9, atol=1e-9)
    # shapes other than those just grown are coded by OMP, not assumed
    dl.grow(new[:3], 3)
    before = dl.atoms_.copy()
    Ab, Bb = dl.A_.copy(), dl.B_.copy()
    dl.partial_fit(more[:3], n_sweeps=1)
    D, A, B = _mairal_reference(before.T, Ab, Bb, more[:3].reshape(3, -1).T, 3, 1)
    np.testing.assert_allclose(dl.components_, D, atol=1e-10)


def _ellipsoid_folder(folder, n=5):
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(n):
        a = (28 + 4 * rng.random(), 18 + 3 * rng.random(), 13 + 3 * rng.random())
        ellipsoid_label_map(folder / f"case_{i}.nii.gz", a, (0, 0, 0), spacing=(1.2, 1.2, 2.0),
                            size=(60, 46, 22))


def test_cli_build_model_in_process(tmp_path, capsys):
    _ellipsoid_folder(tmp_path / "labels")
    out = tmp_path / "model.npz"
    rc = main(["build-model", str(tmp_path / "labels"), "-o", str(out), "--vertices", "642",
               "--atoms", "3", "--organ", "ellipsoid", "--quiet"])
    assert rc == 0
    m = load_model(out)
    assert m.shapes.shape == (5, 642, 3) and m.atoms.shape == (3, 642, 3)
    assert m.metadata["organ"] == "ellipsoid" and len(m.metadata["sources"]) == 5
    rep = json.loads((tmp_path / "model.npz.report" / "report.json").read_text())
    man = json.loads((tmp_path / "model.npz.report" / "manifest.json").read_text())
    assert rep["n_shapes_kept"] == 5 and len(man["inputs"]) == 5
    assert all(len(v["sha256"]) == 64 for v in man["inputs"].values())
    # refuses to overwrite, leaves the file untouched
    before = out.read_bytes()
    assert main(["build-model", str(tmp_path / "labels"), "-o", str(out), "--quiet"]) == 1
    assert out.read_bytes() == before
    assert "--force" in capsys.readouterr().err


def test_template_from_a_sample_of_the_shapes(tmp_path, monkeypatch):
    """--template-shapes: pass 1 fits only an even sample; pass 2 still fits every
    shape, and the model keeps them all."""
    from shapeprior.model import _build

    assert _build.template_sample(10, 0) == list(range(10))
    assert _build.template_sample(10, 3) == [0, 4, 9]         # spread over the order
    assert _build.template_sample(4, 9) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="template_shapes=2"):
        BuildParams(template_shapes=2)
    _ellipsoid_folder(tmp_path / "labels", n=6)
    calls = []
    real = _build._job_fit
    monkeypatch.setattr(_build, "_job_fit", lambda args: calls.append(args[0]) or real(args))
    out = tmp_path / "m.npz"
    assert main(["build-model", str(tmp_path / "labels"), "-o", str(out), "--quiet",
                 "--vertices", "162", "--template-shapes", "3"]) == 0
    # 3 pass-1 fits from the icosphere, then 6 from the provisional mean
    sphere = [c for c in calls if np.allclose(np.linalg.norm(c, axis=1), 1.0)]
    assert len(calls) == 9 and len(sphere) == 3
    m = load_model(out)
    assert m.n_shapes == 6 and m.metadata["parameters"]["template_shapes"] == 3
    assert "mean of 3 shapes" in m.metadata["template"]


@pytest.mark.parametrize("args,msg", [
    (["--labels", "x"], "--labels"),
    (["--labels", "9"], "not present"),
    (["--atoms", "1"], "n_atoms=1"),
])
def test_cli_build_model_bad_input(tmp_path, capsys, args, msg):
    _ellipsoid_folder(tmp_path / "labels", n=3)
    out = tmp_path / "m.npz"
    rc = main(["build-model", str(tmp_path / "labels"), "-o", str(out), "--quiet",
               "--vertices", "162", *args])
    assert rc == 1
    assert msg in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "m.npz.report").exists()


def test_cli_build_model_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["build-model", str(tmp_path / "empty"), "-o", str(tmp_path / "m.npz")]) == 1
    assert "no label maps" in capsys.readouterr().err


@pytest.mark.slow
def test_kits_subset_build(data_root, tmp_path):
    kits = data_root / "kits19"
    if not kits.is_dir():
        pytest.skip(f"KiTS19 not found under {data_root}")
    out = tmp_path / "kidney.npz"
    rc = main(["build-model", str(kits), "-o", str(out), "--labels", "1,2", "--split-sides",
               "--organ", "kidney", "--limit", "2", "--jobs", "2", "--quiet", "--vertices",
               "642", "--atoms", "3"])
    assert rc == 0
    m = load_model(out)
    rep = json.loads((tmp_path / "kidney.npz.report" / "report.json").read_text())
    # two cases, two kidneys each: every extracted shape is kept or reported
    assert rep["n_shapes_extracted"] == 4
    assert m.shapes.shape[0] + sum(r["stage"] == "correspondence" for r in rep["rejected"]) == 4
    vols = [r["surface_volume_ml"] for r in rep["per_shape"]]
    assert all(80 < v < 600 for v in vols)      # kidney (+ tumour) volumes in ml
    assert m.metadata["side"] == "left (right mirrored)"
    # update-model with a third case, in the words of the build: both kidneys split by
    # side, the right one mirrored, the model's settings taken from the model
    third = find_label_maps(kits)[2]
    grown = tmp_path / "kidney_v2.npz"
    assert main(["update-model", str(out), str(third), "-o", str(grown), "--labels", "1,2",
                 "--split-sides", "--quiet"]) == 0
    g = load_model(grown)
    urep = json.loads((tmp_path / "kidney_v2.npz.report" / "report.json").read_text())
    assert g.n_shapes == m.n_shapes + len(urep["added"]) and len(urep["added"]) >= 1
    assert {a["side"] for a in urep["added"]} <= {"left", "right"}
    assert np.array_equal(g.shapes[:m.n_shapes], m.shapes)
    assert g.metadata["lineage"]["model_version"] == 2 and g.atoms.shape == m.atoms.shape
    lo, hi = g.pose.scale_range
    assert 0.5 < lo <= hi < 2.0


def test_a_shape_that_fails_correspondence_is_left_out_and_reported(tmp_path, monkeypatch):
    """A shape whose template fit fails the quality check (here: marked failed)
    is not in the model: the report lists it, with its reason, as rejected at
    the correspondence stage, and the model holds the others only."""
    from shapeprior.model import _build, build_model

    folder = tmp_path / "labels"
    folder.mkdir()
    for i in range(5):
        ellipsoid_label_map(folder / f"c{i}.nii.gz", (20 + i, 14, 10), (0.0, 0.0, 0.0),
                            spacing=np.array([1.5, 1.5, 2.0]), size=np.array([40, 32, 20]))
    fit = _build._job_fit
    calls = []

    def failing_third(args):
        v, q = fit(args)
        calls.append(1)
        if len(calls) > 5 and len(calls) == 5 + 3:          # pass 2, third shape
            q.ok, q.reason = False, "planted failure"
        return v, q

    monkeypatch.setattr(_build, "_job_fit", failing_third)
    files = sorted(folder.glob("*.nii.gz"))
    model, report = build_model(files, BuildParams(n_vertices=162, n_jobs=1), progress=False)
    assert report["n_shapes_extracted"] == 5 and report["n_shapes_kept"] == 4
    assert report["rejected"] == [{"source": "c2", "side": "none", "stage": "correspondence",
                                   "reason": "planted failure"}]
    assert len(model.shapes) == 4 and "c2:none" not in model.metadata["shape_ids"]
    assert [r["ok"] for r in report["per_shape"]] == [True, True, False, True, True]


def test_built_model_geometry_matches_the_label_maps(tmp_path):
    """The model's mean shape has the ellipsoids' size, and the pose prior puts
    it where the organs sit in their scans (known offset from the FOV centre)."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "labels"
    folder.mkdir()
    axes = []
    offset = np.array([6.0, -4.0, 3.0])
    for i in range(5):
        a = (24 + 2 * rng.random(), 15 + 2 * rng.random(), 11 + 2 * rng.random())
        axes.append(a)
        # the FOV centre is at the origin: size (60, 46, 22) at spacing (1.2, 1.2, 2.0),
        # origin chosen so that index (size-1)/2 maps to (0, 0, 0)
        size = np.array([60, 46, 22])
        sp = np.array([1.2, 1.2, 2.0])
        ellipsoid_label_map(folder / f"c{i}.nii.gz", a, offset, spacing=sp, size=size,
                            origin=-(size - 1) / 2.0 * sp)
    out = tmp_path / "m.npz"
    assert main(["build-model", str(folder), "-o", str(out), "--vertices", "642",
                 "--quiet"]) == 0
    m = load_model(out)
    # the pose prior: organ centre relative to the FOV centre (marching cubes on a
    # 1.5 mm grid: measured within 0.3 mm)
    assert np.allclose(m.pose.offset_from_fov_centre_mm, offset, atol=0.5)
    # the mean shape's extent along its principal axes is the mean ellipsoid's
    c = m.mean - m.mean.mean(0)
    ext = np.sort(np.ptp(c @ np.linalg.svd(c, full_matrices=False)[2].T, axis=0))[::-1]
    assert np.allclose(ext * m.pose.scale, 2 * np.mean(axes, axis=0), rtol=0.05), ext
    # PCA variances are the unbiased variances of the aligned shapes along the modes
    X = m.shapes.reshape(len(m.shapes), -1)
    proj = (X - X.mean(0)) @ m.pca_components.T
    assert np.allclose(m.pca_variances, proj.var(axis=0, ddof=1), rtol=1e-8)


def test_ksvd_replaces_a_dead_atom_by_the_worst_represented_shape():
    """Two identical initial atoms: OMP always takes the first, the second has no
    users, and K-SVD makes it the shape the atoms represent worst."""
    rng = np.random.default_rng(0)
    a, c, d = rng.normal(size=(3, 30))
    Y = np.stack([a, a, c, 5.0 * d])           # d: far from a and c
    for seed in range(50):                      # a seed whose first pick is a, a, c
        dl = DictionaryLearner(n_atoms=3, n_nonzero=1, n_iter=1, seed=seed)
        pick = np.random.default_rng(seed).choice(4, 3, replace=False)
        if sorted(pick.tolist()) == [0, 1, 2]:
            break
    else:  # pragma: no cover
        pytest.fail("no seed picks both copies of a")
    dl.fit(Y)
    # the atom holding c takes 5d as well and turns towards d; the dead atom then
    # becomes c, the shape represented worst: every distinct shape has its atom
    for v in (a, c, d):
        assert max(abs(float(atom @ v)) / np.linalg.norm(v) for atom in dl.atoms_) > 0.999


def test_grow_adds_the_worst_represented_new_shapes():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(4, 30))
    dl = DictionaryLearner(n_atoms=4, n_nonzero=2, n_iter=2, seed=0).fit(base)
    novel = 3.0 * rng.normal(size=30)
    new = np.stack([base[0], base[2], novel, base[1]])    # one new shape is novel
    dl.grow(new, 1)
    assert dl.atoms_.shape[0] == 5
    assert abs(float(dl.atoms_[-1] @ novel / np.linalg.norm(novel))) == pytest.approx(1.0)


def _kits_like(root, n, image_root=None):
    """KiTS19's layout: ``case_i/segmentation.nii.gz`` (every file the same name);
    with ``image_root``, each one's image under the same relative path (an
    ellipsoid image: 100 inside, 0 outside, on the label map's grid)."""
    import SimpleITK as sitk

    rng = np.random.default_rng(3)
    files = []
    for i in range(n):
        f = root / f"case_{i}" / "segmentation.nii.gz"
        f.parent.mkdir(parents=True)
        a = (26 + 4 * rng.random(), 17 + 3 * rng.random(), 12 + 3 * rng.random())
        img = ellipsoid_label_map(f, a, (0, 0, 0), spacing=(1.2, 1.2, 2.0), size=(60, 46, 22))
        if image_root is not None:
            g = image_root / f"case_{i}" / "segmentation.nii.gz"
            g.parent.mkdir(parents=True)
            im = sitk.Cast(img, sitk.sitkFloat32) * 100.0
            im.CopyInformation(img)
            sitk.WriteImage(im, str(g))
        files.append(f)
    return files


def test_label_map_inputs_names_and_roots(tmp_path):
    """Files and folders together: each file once, unique names (files of the same
    name named by their path below the common folder), the root of a file given
    one by one the files' common folder; a missing path is named."""
    from shapeprior.model import label_map_inputs

    files = _kits_like(tmp_path / "kits", 2)
    _ellipsoid_folder(tmp_path / "more", n=2)
    items = label_map_inputs([*map(str, files), str(tmp_path / "more")])
    assert [n for _, n, _ in items] == ["kits/case_0/segmentation", "kits/case_1/segmentation",
                                         "more/case_0", "more/case_1"]
    assert [r for _, _, r in items][:2] == [tmp_path / "kits"] * 2
    assert [r for _, _, r in items][2:] == [tmp_path / "more"] * 2
    # no collision: a file by its own name, a folder's files prefixed only when asked
    # or when several paths are given; a file also inside a given folder: once
    assert [n for _, n, _ in label_map_inputs([files[0]])] == ["segmentation"]
    assert [n for _, n, _ in label_map_inputs([tmp_path / "more"])] == ["case_0", "case_1"]
    assert [n for _, n, _ in label_map_inputs([tmp_path / "more"], prefix_folders=True)] == [
        "more/case_0", "more/case_1"]
    both = label_map_inputs([tmp_path / "more" / "case_1.nii.gz", tmp_path / "more"])
    assert [n for _, n, _ in both] == ["case_1", "more/case_0"]
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        label_map_inputs([files[0], tmp_path / "nope.nii.gz"])


def test_cli_build_model_from_files(tmp_path, monkeypatch):
    """build-model takes label map files as a shell lists them (KiTS19's
    case_*/segmentation.nii.gz, every file the same name), as update-model does:
    each case kept under its own name, its image found under the same relative
    path; the manifest hashes every file."""
    files = _kits_like(tmp_path / "kits", 4, image_root=tmp_path / "images")
    out = tmp_path / "m.npz"
    monkeypatch.chdir(tmp_path)                     # relative paths, as typed
    rel = [str(f.relative_to(tmp_path)) for f in files]
    assert main(["build-model", *rel, "-o", str(out), "--vertices", "162", "--quiet",
                 "--images", "images", "--no-voxel-classifier"]) == 0
    m = load_model(out)
    man = json.loads((tmp_path / "m.npz.report" / "manifest.json").read_text())
    names = [f"case_{i}/segmentation" for i in range(4)]     # below their common folder
    assert sorted(man["inputs"]) == names and m.n_shapes == 4
    assert sorted(s["name"] for s in m.metadata["sources"]) == names
    assert m.profile is not None and m.profile.n_images == 4     # every image paired


def test_cli_update_model_images_of_a_case_tree(tmp_path):
    """update-model with a folder of KiTS19-style cases and --images: each new
    label map's image is found under its path below the folder given (as in
    build-model), not only by file name; cases already in the model are skipped."""
    files = _kits_like(tmp_path / "kits", 4, image_root=tmp_path / "images")
    m3 = tmp_path / "m3.npz"
    assert main(["build-model", *map(str, files[:3]), "-o", str(m3), "--vertices", "162",
                 "--quiet", "--images", str(tmp_path / "images"),
                 "--no-voxel-classifier"]) == 0
    m4 = tmp_path / "m4.npz"
    assert main(["update-model", str(m3), str(tmp_path / "kits"), "-o", str(m4), "--quiet",
                 "--images", str(tmp_path / "images")]) == 0
    rep = json.loads((tmp_path / "m4.npz.report" / "report.json").read_text())
    assert [a["source"] for a in rep["added"]] == ["kits/case_3/segmentation"]
    assert len(rep["skipped"]) == 3 and rep["rejected"] == []
    assert rep["appearance_updated"] and load_model(m4).profile.n_images == 4


def test_build_model_refuses_the_images_of_a_case_tree_by_name(tmp_path):
    """KiTS19's own layout holds imaging.nii.gz beside each segmentation.nii.gz: a
    build over the tree refuses each image as 'an image, not a label map' (before:
    'mask is too thin to contour', after reading it whole) and builds from the rest."""
    from shapeprior.io import Volume
    from shapeprior.io._nifti import write_nifti

    files = _kits_like(tmp_path / "kits", 4)
    rng = np.random.default_rng(0)
    ct = rng.integers(-1024, 2000, (22, 46, 60)).astype(np.int16)
    write_nifti(Volume(ct, np.array([1.2, 1.2, 2.0]), np.zeros(3), np.eye(3)),
                files[0].parent / "imaging.nii.gz")
    out = tmp_path / "m.npz"
    assert main(["build-model", str(tmp_path / "kits"), "-o", str(out), "--vertices", "162",
                 "--quiet"]) == 0
    rep = json.loads((tmp_path / "m.npz.report" / "report.json").read_text())
    assert [r["source"] for r in rep["rejected"]] == ["case_0/imaging"]
    assert "an image, not a label map" in rep["rejected"][0]["reason"]
    assert load_model(out).n_shapes == 4


def test_build_model_never_takes_a_label_map_for_its_own_image(tmp_path, capsys):
    """--images naming the label maps' own folder: each label map would be its own
    "image" (same name, same grid) and the appearance learned from masks. Refused
    before the slow stages, saying so; nothing is written."""
    _ellipsoid_folder(tmp_path / "labels", n=4)
    out = tmp_path / "m.npz"
    assert main(["build-model", str(tmp_path / "labels"), "-o", str(out), "--vertices", "162",
                 "--quiet", "--images", str(tmp_path / "labels")]) == 1
    err = capsys.readouterr().err
    assert "4 of 4 label maps have no image" in err and "found the label map itself" in err
    assert not out.exists() and not (tmp_path / "m.npz.report").exists()
    # update-model: each such map is refused with that reason (here: none left to add)
    files = _kits_like(tmp_path / "kits", 4, image_root=tmp_path / "images")
    m3 = tmp_path / "m3.npz"
    assert main(["build-model", *map(str, files[:3]), "-o", str(m3), "--vertices", "162",
                 "--quiet", "--images", str(tmp_path / "images"),
                 "--no-voxel-classifier"]) == 0
    assert main(["update-model", str(m3), str(files[3]), "-o", str(tmp_path / "m4.npz"),
                 "--quiet", "--images", str(files[3].parent)]) == 1
    err = capsys.readouterr().err
    assert "no image in" in err and "found the label map itself" in err, err


def _edit_meta(z, **changes):
    meta = json.loads(str(z["metadata_json"]))
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            meta[outer][inner] = value
        else:
            meta[key] = value
    z["metadata_json"] = np.array(json.dumps(meta))


def _set(key, index, value):
    def edit(z):
        a = z[key].copy()
        a[index] = value
        z[key] = a
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("faces", (0, 0), 10 ** 6), r"face indices outside 0\.\.641"),
    (_set("pca_variances", 0, -1.0), "negative PCA variances"),
    (_set("mean", (0, 0), np.nan), "'mean' holds NaN or infinite values"),
    (lambda z: z.update(shapes=z["shapes"][:, :-1]), r"shapes array declares \(6, 641, 3\), its "
                                                     r"metadata 6 shapes of 642 vertices"),
    (lambda z: z.update(pca_components=z["pca_components"][:, :-3]),
     r"inconsistent shapes \(pca"),
    (lambda z: z.update(profile_mean=z["profile_mean"][:-1], profile_var=z["profile_var"][:-1]),
     r"inconsistent shapes \(appearance profiles"),
    (lambda z: z.update(faces=z["faces"].astype(float)),
     "'faces' has dtype float64, expected integer"),
    (lambda z: _edit_meta(z, organ=5), "'organ' is not a text"),
    (lambda z: _edit_meta(z, **{"appearance.step_mm": 0}), "'appearance' is malformed"),
    (lambda z: _edit_meta(z, **{"appearance.image_background_share_max": 1.5}),
     "'appearance' is malformed"),
    (lambda z: _edit_meta(z, **{"appearance.image_background_share_max": "x"}),
     "'appearance' is malformed"),
    (_set("profile_var", (0, 0), 0.0), "appearance variances must be > 0"),
    # segment divided by zero on these (an internal error, not a reason)
    (lambda z: z.update(mean=np.zeros_like(z["mean"])), "the mean shape is degenerate"),
    (_set("shapes", 3, 7.0), "training shape 3 is degenerate"),
    (_set("shapes", (1, 0, 0), 1e300), r"training shape 1 has coordinates up to 1e\+300 mm"),
])
def test_a_damaged_model_file_is_refused_with_its_reason(phantom_model, tmp_path, edit,
                                                         message):
    """Each schema check of load_model on a real model (appearance and voxel
    classifier included), one damage at a time: the file is refused, naming it."""
    z = dict(np.load(phantom_model[3], allow_pickle=False))
    save = dict(z)
    np.savez(tmp_path / "same.npz", **save)
    load_model(tmp_path / "same.npz")                  # re-saved untouched: still a model
    edit(z)
    np.savez(tmp_path / "bad.npz", **z)
    with pytest.raises(ModelFormatError, match=message):
        load_model(tmp_path / "bad.npz")


def test_cli_build_model_passes_each_option_to_the_build(tmp_path, capsys):
    """What build-model is asked for is what is built and recorded: --limit
    takes the first N label maps (and the manifest hashes exactly those),
    --no-mirror keeps right organs unmirrored, --random-state seeds the build,
    and without --dictionary-kind / --normalisation the defaults the help names
    (shapes, percentile); --vertices 0 is refused naming the option."""
    folder = tmp_path / "labels"
    folder.mkdir()
    for i in range(4):
        ellipsoid_label_map(folder / f"c{i}.nii.gz", (12 + i, 9, 7), (30.0, 0.0, 0.0),
                            spacing=np.array([1.5, 1.5, 1.5]), size=np.array([24, 20, 16]))
    out = tmp_path / "m.npz"
    assert main(["build-model", str(folder), "-o", str(out), "--vertices", "162", "--quiet",
                 "--limit", "3", "--random-state", "7", "--atoms", "2", "--split-sides",
                 "--no-mirror"]) == 0, capsys.readouterr().err
    m = load_model(out)
    p = m.metadata["parameters"]
    assert m.n_shapes == 3 and p["seed"] == 7 and p["mirror_right"] is False
    assert m.metadata["side"] == "both"
    assert p["dictionary_kind"] == "shapes" and p["normalisation"] == "percentile"
    man = json.loads((tmp_path / "m.npz.report" / "manifest.json").read_text())
    assert sorted(man["inputs"]) == ["c0", "c1", "c2"]
    assert all(len(v["sha256"]) == 64 for v in man["inputs"].values())
    capsys.readouterr()
    assert main(["build-model", str(folder), "-o", str(tmp_path / "z.npz"), "--vertices",
                 "0", "--quiet"]) == 1
    assert "--vertices=0 must be > 0" in capsys.readouterr().err


def _cut_ellipsoid(path, flip=False, semi=(10.0, 8.0, 6.0)):
    """An ellipsoid whose field of view ends at z = 3 mm, through the organ (its
    superior part is outside the scan); ``flip``: k runs from superior to
    inferior, so the cut is at k = 0 instead of the last k."""
    D = np.diag([1.0, 1.0, -1.0]) if flip else np.eye(3)
    origin = (-19.5, -19.5, 3.0) if flip else (-19.5, -19.5, -16.0)
    img = ellipsoid_label_map(path, semi, (0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0),
                              size=(40, 40, 20), direction=D, origin=origin)
    import SimpleITK as sitk

    return int(sitk.GetArrayFromImage(img)[0 if flip else -1].sum())


@pytest.mark.parametrize("flip", [False, True])
def test_an_organ_cut_by_the_field_of_view_is_named_by_its_edge(tmp_path, flip):
    """The edge a cut organ reaches is named anatomically (LPS) whichever way
    the index axis runs, with its plane and voxel count; a whole organ is not cut."""
    from shapeprior.model._build import organ_masks

    n = _cut_ellipsoid(tmp_path / "cut.nii.gz", flip)
    ellipsoid_label_map(tmp_path / "whole.nii.gz", (10.0, 8.0, 6.0), (0.0, 0.0, 0.0),
                        spacing=(1.0, 1.0, 1.0), size=(40, 40, 20))
    *_, cuts = organ_masks(tmp_path / "cut.nii.gz", BuildParams())
    assert n > 50 and cuts == {"none": f"the scan's superior edge (k = {0 if flip else 19}): "
                                       f"{n} voxels"}
    *_, cuts = organ_masks(tmp_path / "whole.nii.gz", BuildParams())
    assert cuts == {"none": None}


def test_build_and_update_model_on_an_organ_cut_by_the_field_of_view(tmp_path, capsys):
    """build-model keeps a cut organ but names it (printed, and report.json's
    cut_by_fov); --exclude-cut rejects it with its edge; update-model refuses
    it as a confirmed case (a whole organ expected), in one line."""
    d = tmp_path / "labels"
    d.mkdir()
    for i in range(3):
        ellipsoid_label_map(d / f"whole{i}.nii.gz", (10.0 + i, 8.0, 6.0), (0.0, 0.0, 0.0),
                            spacing=(1.0, 1.0, 1.0), size=(40, 40, 20))
    _cut_ellipsoid(d / "cut.nii.gz")
    out = tmp_path / "m.npz"
    assert main(["build-model", str(d), "-o", str(out), "--vertices", "162", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "note: 1 kept shapes are cut by their scan's field of view" in printed
    rep = json.loads((tmp_path / "m.npz.report" / "report.json").read_text())
    assert [c["source"] for c in rep["cut_by_fov"]] == ["cut"] and not rep["rejected"]
    assert rep["cut_by_fov"][0]["where"].startswith("the scan's superior edge (k = 19)")
    assert load_model(out).n_shapes == 4
    out2 = tmp_path / "m2.npz"
    assert main(["build-model", str(d), "-o", str(out2), "--vertices", "162", "--quiet",
                 "--exclude-cut"]) == 0
    rep = json.loads((tmp_path / "m2.npz.report" / "report.json").read_text())
    assert rep["cut_by_fov"] == [] and load_model(out2).n_shapes == 3
    assert [r["source"] for r in rep["rejected"]] == ["cut"]
    assert "cut by the scan's field of view (it reaches the scan's superior edge" in \
        rep["rejected"][0]["reason"]
    capsys.readouterr()
    before = {p: p.read_bytes() for p in (out2, d / "cut.nii.gz")}
    assert main(["update-model", str(out2), str(d / "cut.nii.gz"), "-o",
                 str(tmp_path / "m3.npz"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the organ is cut by the scan's field of view" in err[0]
    assert not (tmp_path / "m3.npz").exists() and not (tmp_path / "m3.npz.report").exists()
    assert {p: p.read_bytes() for p in before} == before


def test_kits_kidneys_cut_by_the_scan_are_found_on_their_side(data_root):
    """KiTS19 case_00010: its right kidney reaches the scan's last axial plane
    (the files' i axis runs head to foot), the left lies whole inside."""
    from shapeprior.model._build import organ_masks

    f = data_root / "kits19" / "case_00010" / "segmentation.nii.gz"
    if not f.is_file():
        pytest.skip(f"{f} not found")
    *_, cuts = organ_masks(f, BuildParams(labels=(1, 2), split_sides=True))
    assert cuts == {"right": "the scan's inferior edge (i = 49): 77 voxels", "left": None}
