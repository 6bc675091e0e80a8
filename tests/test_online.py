"""Online learning: update-model (round trip, refusals, duplicates, lineage, atomic
write), the online update against a batch rebuild, closing the loop, ranking
candidates, and the prior option (shapes or learned dictionary)."""

import hashlib
import json
import shutil
import signal

import nibabel as nib
import numpy as np
import pytest

from _phantoms import build_phantom_model
from _safety import _subprocess, leftovers
from shapeprior.api import reconstruct
from shapeprior.appearance import ProfileModel
from shapeprior.cli import main
from shapeprior.model import (extend_model, fit_pose_prior, load_model, model_from_shapes,
                              rank_candidates, save_model)
from shapeprior.model._pose import add_pose_stats, pose_from_stats, pose_stats
from shapeprior.ssc import sparse_shape_composition
from shapeprior.synthetic import ShapePopulation, fibonacci_sphere, star_mesh_faces


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _rms(a, b):
    return float(np.sqrt(np.mean(np.sum((a - b) ** 2, axis=1))))


@pytest.fixture(scope="module")
def small_model(phantom_model, tmp_path_factory):
    """A model with a learned dictionary from five phantom label maps."""
    _, images, labels, _ = phantom_model
    model = build_phantom_model(tmp_path_factory.mktemp("online"), images, labels, 5,
                                "--atoms", "4", "--nonzero", "2")
    return model, images, labels


def _bad_masks(labels, folder):
    """Label maps a model must refuse, each for its own reason."""
    folder.mkdir()
    img = nib.load(labels / "phantom_006.nii.gz")
    a = np.asarray(img.dataobj).astype(np.uint8)
    nib.save(nib.Nifti1Image(np.zeros_like(a), img.affine), folder / "empty.nii.gz")
    nib.save(nib.Nifti1Image(np.where(a > 0, 7, 0).astype(np.uint8), img.affine),
             folder / "wrong_label.nii.gz")
    idx = np.argwhere(a > 0)
    lo, hi = idx.min(0), idx.max(0) + 1
    organ = a[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    two = np.zeros_like(a)
    two[:organ.shape[0], :organ.shape[1], :organ.shape[2]] = organ
    two[-organ.shape[0]:, -organ.shape[1]:, -organ.shape[2]:] |= organ
    nib.save(nib.Nifti1Image(two, img.affine), folder / "two_pieces.nii.gz")
    aff = img.affine.copy()
    aff[:3, :3] *= 10.0                                     # 10x the voxel size
    nib.save(nib.Nifti1Image(a, aff), folder / "spacing_x10.nii.gz")
    # 2.5x: past the voxels' size check, refused once fitted (2.4 times the mean's size)
    aff = img.affine.copy()
    aff[:3, :3] *= 2.5
    nib.save(nib.Nifti1Image(a, aff), folder / "spacing_x2.5.nii.gz")
    return {"empty": "not present", "wrong_label": "not present", "two_pieces": "2 pieces",
            "spacing_x10": "size", "spacing_x2.5": "times the model mean's size"}


def test_update_model_round_trip_refusals_and_lineage(small_model, tmp_path, capsys):
    model_path, images, labels = small_model
    bad = _bad_masks(labels, tmp_path / "bad")
    new_map = labels / "phantom_005.nii.gz"
    dup = labels / "phantom_000.nii.gz"                      # already in the model
    inputs = [model_path, new_map, dup, *sorted((tmp_path / "bad").iterdir())]
    before = {str(p): _sha(p) for p in inputs}
    out = tmp_path / "grown.npz"
    capsys.readouterr()
    assert main(["update-model", str(model_path), str(new_map), str(dup),
                 str(tmp_path / "bad"), "-o", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert {str(p): _sha(p) for p in inputs} == before         # inputs untouched
    old, new = load_model(model_path), load_model(out)
    # the file grows by exactly the new shape; the old ones are bit for bit the same
    assert new.n_shapes == old.n_shapes + 1
    assert np.array_equal(new.shapes[:old.n_shapes], old.shapes)
    assert np.array_equal(new.faces, old.faces)
    assert new.atoms.shape == old.atoms.shape and not np.array_equal(new.atoms, old.atoms)
    assert new.profile.n_images == old.profile.n_images          # no images given
    # ... which is said, as is the voxel classifier that only a rebuild retrains
    assert f"note: the boundary appearance (learned from {old.profile.n_images} images) was " \
        "not updated: no training image was given" in printed
    assert "note: the voxel classifier stays as built (learned from 5 images)" in printed
    # lineage: version 2, one record for the new shape with its content hash
    lin_old, lin = old.metadata["lineage"], new.metadata["lineage"]
    assert lin_old["model_version"] == 1 and lin["model_version"] == 2
    assert lin["shapes"][:old.n_shapes] == lin_old["shapes"]
    added = lin["shapes"][old.n_shapes:]
    assert [s["sha256"] for s in added] == [_sha(new_map)]
    assert all(s["model_version"] == 2 and s["added"] and s["shapeprior"] for s in added)
    assert lin["updates"][-1]["n_added"] == 1 and lin["updates"][-1]["n_rejected"] == len(bad)
    # each bad map refused with its reason, the duplicate skipped with a note
    rep = json.loads((tmp_path / "grown.npz.report" / "report.json").read_text())
    reasons = {r["source"]: r["reason"] for r in rep["rejected"]}
    assert set(reasons) == {f"bad/{name}" for name in bad}      # named with their folder
    for name, word in bad.items():
        assert word in reasons[f"bad/{name}"], (name, reasons[f"bad/{name}"])
        assert f"refused  bad/{name}:" in printed
    assert [s["source"] for s in rep["skipped"]] == ["phantom_000"]
    assert "already in the model" in rep["skipped"][0]["reason"]
    # with images: the appearance learns from the new image too; a map without an
    # image is refused, the other added
    out3 = tmp_path / "grown3.npz"
    assert main(["update-model", str(out), str(labels / "phantom_006.nii.gz"),
                 str(tmp_path / "bad" / "empty.nii.gz"), "-o", str(out3), "--images",
                 str(images), "--quiet"]) == 0
    shown = capsys.readouterr().out
    assert "refused  empty: no image in" in shown
    assert "note: the boundary appearance" not in shown and "; appearance updated)" in shown
    third = load_model(out3)
    assert third.n_shapes == new.n_shapes + 1 and np.array_equal(third.shapes[:-1], new.shapes)
    assert third.profile.n_images == new.profile.n_images + 1
    assert third.profile.hu_share_range == new.profile.hu_share_range == (0.0, 0.0)
    assert third.profile.background_share_max == new.profile.background_share_max == 0.0
    # the training background share rises with new images whose organ lies in the air
    from shapeprior.model import extend_model

    air = extend_model(third, third.shapes[-1:], profiles=third.profile.mean[None],
                       background_shares=[0.4])
    assert air.profile.background_share_max == 0.4
    assert not np.array_equal(third.profile.mean, new.profile.mean)
    # model-info shows the lineage without file names
    assert main(["model-info", str(out3)]) == 0
    info = capsys.readouterr().out
    assert "model version 3" in info and "v2: 1 shape added" in info and "phantom_00" not in info
    assert "learned on images not in HU (MR): 0 % of the voxels below -20 HU in every image" \
        in info
    assert "inside the air around the body: the background rule is on" in info
    # adding the same maps again adds nothing: one line, exit 1, nothing written
    out2 = tmp_path / "again.npz"
    assert main(["update-model", str(out3), str(new_map), str(labels / "phantom_006.nii.gz"),
                 "-o", str(out2)]) == 1
    assert "no shape added (2 duplicates" in capsys.readouterr().err and not out2.exists()


def test_rank_only_lists_new_candidates_and_writes_nothing(small_model, tmp_path, capsys):
    model_path, _, labels = small_model
    before = {p.name: _sha(p) for p in [model_path, *labels.iterdir()]}
    files_before = sorted(tmp_path.iterdir())
    capsys.readouterr()
    assert main(["update-model", "--rank-only", str(model_path), str(labels), "--json",
                 "--quiet"]) == 0
    r = json.loads(capsys.readouterr().out)
    ranked = [row["candidate"] for row in r["ranking"]]
    # the two maps the model lacks are ranked, the five it holds are skipped
    assert sorted(ranked) == ["labels/phantom_005", "labels/phantom_006"]
    assert [row["rank"] for row in r["ranking"]] == [1, 2]
    assert r["ranking"][0]["gain_mm"] >= r["ranking"][1]["gain_mm"] > 0
    assert len(r["skipped"]) == 5 and not r["rejected"]
    assert {p.name: _sha(p) for p in [model_path, *labels.iterdir()]} == before
    assert sorted(tmp_path.iterdir()) == files_before
    assert main(["update-model", "--rank-only", str(model_path), str(labels), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rank  gain_mm") and "labels/phantom_005" in out


def _model_and_foreign_file(small_model, tmp_path):
    """A copy of the small model, a foreign file beside it, their hashes, and a
    new label map: ``(model, foreign, hashes, label map)``."""
    model_path, _, labels = small_model
    m = tmp_path / "m.npz"
    shutil.copy(model_path, m)
    foreign = tmp_path / "notes.npz"
    foreign.write_bytes(b"mine")
    return m, foreign, {p: _sha(p) for p in (m, foreign)}, labels / "phantom_006.nii.gz"


def test_update_model_never_writes_over_its_input_or_a_foreign_file(small_model, tmp_path,
                                                                    capsys):
    m, foreign, before, new_map = _model_and_foreign_file(small_model, tmp_path)
    new_map = str(new_map)
    for target, force in ((m, []), (m, ["--force"]), (foreign, ["--force"])):
        capsys.readouterr()
        assert main(["update-model", str(m), new_map, "-o", str(target), *force]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("is the input" in err or "never replaces" in err), err
    assert {p: _sha(p) for p in (m, foreign)} == before
    assert main(["update-model", str(m), new_map]) == 1          # neither -o nor --rank-only
    assert "-o NEW_MODEL" in capsys.readouterr().err


def test_python_update_model_never_writes_over_an_existing_file(small_model, tmp_path):
    """The Python API as the CLI: a foreign file or the input model at ``output``
    is refused before anything is read, and left as it was."""
    import shapeprior as sp

    m, foreign, before, new_map = _model_and_foreign_file(small_model, tmp_path)
    labels = new_map.parent
    with pytest.raises(FileExistsError, match="notes.npz exists"):
        sp.update_model(str(m), new_map, output=foreign)
    with pytest.raises(FileExistsError, match="notes.npz exists"):      # before any reading
        sp.update_model(str(m), tmp_path / "no_such_folder", output=foreign)
    with pytest.raises(ValueError, match="is the input model"):
        sp.update_model(m, new_map, output=m)
    with pytest.raises(FileExistsError, match="notes.npz exists"):
        sp.build_model(labels, output=foreign)
    assert {p: _sha(p) for p in (m, foreign)} == before
    grown, report = sp.update_model(m, new_map, output=tmp_path / "grown.npz")
    assert len(report["added"]) == 1
    assert load_model(tmp_path / "grown.npz").n_shapes == load_model(m).n_shapes + 1
    assert _sha(m) == before[m]
    assert not report["appearance_updated"]
    assert any("appearance" in w and "images=" in w for w in report["warnings"])
    # images= as build_model takes them: the appearance learns from the new image too
    images = small_model[1]
    with_images, report = sp.update_model(m, new_map, images=images)
    assert report["appearance_updated"] and not any("appearance" in w
                                                    for w in report["warnings"])
    assert with_images.profile.n_images == load_model(m).profile.n_images + 1


def test_update_model_killed_while_writing_leaves_the_old_model(small_model, tmp_path):
    model_path, _, labels = small_model
    m = tmp_path / "m.npz"
    shutil.copy(model_path, m)
    out = tmp_path / "m2.npz"
    before = _sha(m)
    args = ["update-model", str(m), str(labels / "phantom_006.nii.gz"), "-o", str(out),
            "--quiet"]
    rc, _, _ = _subprocess(args, env={"SHAPEPRIOR_TEST_KILL_AT": "before-publish"})
    assert rc == -signal.SIGKILL
    assert _sha(m) == before and not out.exists()
    rc, _, err = _subprocess(args)                          # a rerun cleans up and finishes
    assert rc == 0, err
    assert load_model(out).n_shapes == load_model(m).n_shapes + 1
    assert not leftovers(tmp_path) and _sha(m) == before


def _population(n, seed=0, n_points=300):
    pop = ShapePopulation(n_points=n_points, seed=seed)
    faces = star_mesh_faces(fibonacci_sphere(n_points))
    rng = np.random.default_rng(seed + 1)
    shapes = pop.sample(n)
    # each in its own pose: GPA and the online alignment must undo it
    out = []
    for s in shapes:
        q, _ = np.linalg.qr(np.eye(3) + 0.1 * rng.normal(size=(3, 3)))
        q *= np.sign(np.linalg.det(q))
        out.append(rng.uniform(0.9, 1.1) * s @ q.T + rng.uniform(-20, 20, 3))
    return np.stack(out), faces


@pytest.mark.parametrize("kind", ["shapes", "deviations"])
def test_online_update_equals_a_batch_rebuild(kind):
    shapes, faces = _population(130)
    train, held = shapes[:100], shapes[100:]
    online = model_from_shapes(train[:40], faces, n_atoms=12, n_nonzero=3,
                               dictionary_kind=kind)
    for b in range(40, 100, 20):
        online = extend_model(online, train[b:b + 20])
    batch = model_from_shapes(train, faces, n_atoms=12, n_nonzero=3, dictionary_kind=kind)
    assert online.metadata["dictionary_learning"]["kind"] == kind
    assert online.n_shapes == batch.n_shapes == 100
    assert online.metadata["lineage"]["model_version"] == 4
    # the leading PCA subspace is the same (cosines of the principal angles)
    k = 5
    cos = np.linalg.svd(online.pca_components[:k] @ batch.pca_components[:k].T,
                        compute_uv=False)
    assert cos.min() > 0.98, cos
    # so is what either model explains of unseen shapes, clean and with a leak
    for prior in ("shapes", "dictionary"):
        errs = {"online": [], "batch": []}
        for y in held:
            w = np.ones(len(y))
            for name, m in (("online", online), ("batch", batch)):
                rec = reconstruct(y, m, weights=w, prior=prior).reconstruction
                errs[name].append(_rms(rec, y))
        a, b = np.mean(errs["online"]), np.mean(errs["batch"])
        assert a <= 1.05 * b + 0.05, (prior, a, b)


def test_a_dictionary_started_on_few_shapes_grows_to_its_requested_size():
    shapes, faces = _population(60, seed=5)
    m = model_from_shapes(shapes[:8], faces, n_atoms=20, n_nonzero=3,
                          dictionary_kind="deviations")
    # the unit mean shape and one deviation atom per shape
    assert m.atoms.shape[0] == 9 and m.dictionary_state["A"].shape == (8, 8)
    np.testing.assert_allclose(m.atoms[0], m.mean / np.linalg.norm(m.mean), atol=1e-12)
    grown = extend_model(m, shapes[8:30])
    assert grown.atoms.shape[0] == 20 and grown.dictionary_state["A"].shape == (19, 19)
    # the centre the deviations are taken from moves to the mean of all the shapes
    np.testing.assert_allclose(grown.atoms[0], grown.mean / np.linalg.norm(grown.mean),
                               atol=1e-12)
    assert grown.dictionary_state["S"].shape == (19,)
    norms = np.linalg.norm(grown.atoms.reshape(20, -1), axis=1)
    assert np.all((norms > 0.5) & (norms <= 1.0 + 1e-9)), norms
    held = shapes[30:40]
    err = [np.mean([_rms(reconstruct(y, mm, prior="dictionary").reconstruction, y)
                    for y in held]) for mm in (m, grown)]
    assert err[1] < err[0], err


def test_a_model_with_raw_shape_atoms_still_updates_and_a_bad_record_is_refused(tmp_path):
    """Models written before the centred dictionary keep atoms of the raw shapes and
    no 'centre': they load and grow as before; a damaged record is refused."""
    from shapeprior.model import DictionaryLearner, ModelFormatError, ShapeModel

    shapes, faces = _population(50, seed=9)
    m = model_from_shapes(shapes[:30], faces)
    dl = DictionaryLearner(6, 2, n_iter=3, seed=0).fit(m.shapes)
    meta = {**m.metadata, "dictionary_learning": {"n_atoms": 6, "n_atoms_requested": 6,
                                                  "n_nonzero": 2, "n_seen": 30}}
    old = ShapeModel(m.shapes, m.mean, m.faces, m.pca_components, m.pca_variances,
                     dl.atoms_.reshape(6, -1, 3), meta, None, None,
                     {"A": dl.A_, "B": dl.B_})
    save_model(old, tmp_path / "old.npz")
    old = load_model(tmp_path / "old.npz")
    grown = extend_model(old, shapes[30:45])
    assert grown.atoms.shape == (6, m.n_vertices, 3)
    assert grown.dictionary_state["A"].shape == (6, 6)
    assert not np.allclose(grown.atoms, old.atoms)
    # the same update as the learner's own, on the aligned raw shapes
    from shapeprior.model import align_to_model

    dl.partial_fit(align_to_model(old, shapes[30:45]), n_sweeps=1)
    np.testing.assert_allclose(grown.atoms.reshape(6, -1), dl.atoms_, atol=1e-10)
    # a centred record without its centre's norm is refused at load, in one line
    bad = model_from_shapes(shapes[:30], faces, n_atoms=5, n_nonzero=2,
                            dictionary_kind="deviations")
    bad.metadata["dictionary_learning"].pop("centre_norm")
    save_model(bad, tmp_path / "bad.npz")
    with pytest.raises(ModelFormatError, match="dictionary_learning"):
        load_model(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="n_atoms=1"):
        model_from_shapes(shapes[:30], faces, n_atoms=1)
    # the raw-shape kind is the default, and grows the same way
    raw = model_from_shapes(shapes[:30], faces, n_atoms=6, n_nonzero=2)
    assert raw.metadata["dictionary_learning"]["kind"] == "shapes"
    assert raw.atoms.shape[0] == 6 and raw.dictionary_state["A"].shape == (6, 6)
    assert extend_model(raw, shapes[30:45]).dictionary_state["A"].shape == (6, 6)
    with pytest.raises(ValueError, match="kind"):
        model_from_shapes(shapes[:30], faces, n_atoms=6, dictionary_kind="pca")


def test_pose_and_appearance_updates_equal_learning_from_all():
    rng = np.random.default_rng(0)
    shapes, _ = _population(12)
    centres = rng.normal(scale=30, size=(12, 3))
    mean = shapes.mean(0)
    whole = fit_pose_prior(mean, shapes, centres)
    a, b = pose_stats(mean, shapes[:7], centres[:7]), pose_stats(mean, shapes[7:], centres[7:])
    s = np.concatenate([a["scales"], b["scales"]])
    part = pose_from_stats(add_pose_stats(a, b), (s.min(), s.max()))
    for f in ("rotation", "offset_from_fov_centre_mm", "offset_sd_mm"):
        assert np.allclose(getattr(part, f), getattr(whole, f), atol=1e-10)
    assert part.scale == pytest.approx(whole.scale) and part.scale_range == whole.scale_range
    # against direct statistics: the offset is the organ's centre minus the FOV centre,
    # its spread a standard deviation; the mean pose a rotation, never a reflection
    offsets = shapes.mean(1) - centres
    assert np.allclose(whole.offset_from_fov_centre_mm, offsets.mean(0), atol=1e-9)
    assert np.allclose(whole.offset_sd_mm, offsets.std(0), atol=1e-9)
    flip = {**a, "rotation_sum": a["n"] * np.diag([1.0, 1.0, -1.0])}
    R = pose_from_stats(flip, (1.0, 1.0)).rotation
    assert np.allclose(R @ R.T, np.eye(3)) and np.linalg.det(R) == pytest.approx(1.0)
    # a prior recorded without running sums (an older model) grows like one with them
    from shapeprior.model._pose import PosePrior

    old = PosePrior(whole.rotation, whole.scale, whole.offset_from_fov_centre_mm,
                    whole.offset_sd_mm, whole.scale_range)
    grown = pose_from_stats(add_pose_stats(old.running_stats(12), b), whole.scale_range)
    with_sums = pose_from_stats(add_pose_stats(whole.running_stats(12), b), whole.scale_range)
    assert np.allclose(grown.offset_sd_mm, with_sums.offset_sd_mm, atol=1e-9)
    # appearance: merging new images' profiles equals learning from all of them, also
    # for a model that did not record its variance floor (recovered from its arrays)
    from shapeprior.appearance._profiles import _floor

    P = rng.normal(size=(9, 50, 8)) * rng.uniform(0.1, 1, (1, 50, 8))

    def learned(X, record_floor=True):
        f = _floor(X.var(0), X.mean(0))
        return ProfileModel(X.mean(0), X.var(0) + f, 0.75, 4, "percentile", len(X),
                            f if record_floor else None)

    for record in (True, False):
        got = learned(P[:6], record).merged(P[6:])
        want = learned(P)
        assert np.allclose(got.mean, want.mean) and np.allclose(got.var, want.var)
        assert got.n_images == 9


def test_closing_the_loop_a_badly_fitted_case_is_fitted_well_once_added():
    """A shape family whose initial model never saw one kind of variation: a case
    with it is fitted badly; once it is added, it is fitted well."""
    shapes, faces = _population(41, seed=3)
    base = shapes[:40].copy()
    odd = shapes[40].copy()
    odd[:, 0] *= np.where(odd[:, 0] > 0, 1.6, 1.0)           # one lobe far longer
    m = model_from_shapes(base, faces)
    # SSC-L1, as measured when written (the default hybrid trims part of the
    # unseen lobe as gross error: 2.68 mm before, 0.002 after)
    before = _rms(reconstruct(odd, m, prior="shapes", method="l1").reconstruction, odd)
    grown = extend_model(m, odd[None])
    after = _rms(reconstruct(odd, grown, prior="shapes", method="l1").reconstruction, odd)
    assert before > 3.0 and after < 0.2 * before, (before, after)
    # rank: the odd case ranks first among typical candidates, and its copy falls back
    cands = np.concatenate([_population(6, seed=9)[0], odd[None], odd[None] * 1.001])
    order, novelty, gain = rank_candidates(m, cands)
    assert order[0] in (6, 7) and set(order[-1:]) <= {6, 7}
    assert novelty[6] > 2 * np.median(novelty[:6]) and gain[-1] < 0.05 * gain[0]


def test_prior_option_shapes_or_dictionary(small_model, phantom_model, tmp_path, capsys):
    model_path, images, _ = small_model
    m = load_model(model_path)
    assert m.resolve_prior("auto") == "shapes"                # few shapes: the raw shapes
    assert m.resolve_prior("dictionary") == "dictionary"
    assert m.prior_dictionary("dictionary").n_atoms == m.atoms.shape[0]
    scan = str(images / "phantom_006.nii.gz")
    out = tmp_path / "seg"
    assert main(["segment", scan, "-o", str(out), "--model", str(model_path), "--prior",
                 "dictionary", "--placement", "prior"]) in (0, 3)
    rep = json.loads((out / "report.json").read_text())
    assert rep["prior"] == {"requested": "dictionary", "used": "dictionary", "n_atoms": 4}
    # a model without a dictionary: one line, exit 1
    _, _, _, plain = phantom_model
    capsys.readouterr()
    assert main(["segment", scan, "-o", str(tmp_path / "x"), "--model", str(plain),
                 "--prior", "dictionary"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no learned dictionary" in err
    with pytest.raises(ValueError, match="prior="):
        reconstruct(m.mean, m, prior="atoms")
    # a saved and reloaded model keeps the online dictionary state
    p = tmp_path / "copy.npz"
    save_model(m, p)
    again = load_model(p)
    assert np.array_equal(again.dictionary_state["B"], m.dictionary_state["B"])
    res = sparse_shape_composition(m.shapes[0], again.prior_dictionary("dictionary"))
    assert _rms(res.reconstruction, m.shapes[0]) < 1.0


def test_moving_the_centre_shifts_the_statistics_exactly(tmp_path):
    """B = sum (y - c) x^T: moving c to the new mean adds (c_old - c_new) S^T, and the
    new shapes' codes are taken about the new centre. A state stored without S keeps
    its centre (the earlier behaviour)."""
    from shapeprior.model import DictionaryLearner, ModelFormatError
    from shapeprior.model._dictlearn import update_shape_dictionary
    from shapeprior.model._update import align_to_model

    shapes, faces = _population(45, seed=3)
    m = model_from_shapes(shapes[:30], faces, n_atoms=6, n_nonzero=2,
                          dictionary_kind="deviations")
    info, st = m.metadata["dictionary_learning"], m.dictionary_state
    assert st["S"].shape == (5,) and info["n_atoms"] == 6          # full size: no growth
    new = align_to_model(m, shapes[30:40])
    c_old = m.atoms[0].ravel() * info["centre_norm"]
    c_new = (m.mean.ravel() * 30 + new.reshape(10, -1).sum(0)) / 40
    atoms, st2, info2 = update_shape_dictionary(m.atoms, st, info, new, n_sweeps=0,
                                                centre=c_new)
    np.testing.assert_allclose(atoms[0].ravel() * info2["centre_norm"], c_new, atol=1e-9)
    np.testing.assert_array_equal(atoms[1:], m.atoms[1:])           # no sweep: atoms kept
    Yc = new.reshape(10, -1) - c_new
    dl = DictionaryLearner(5, 2)
    dl.atoms_ = m.atoms[1:].reshape(5, -1)
    X = dl.transform(Yc).T                                          # (5, 10)
    np.testing.assert_allclose(st2["B"], st["B"] + np.outer(c_old - c_new, st["S"]) + Yc.T @ X.T,
                               rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(st2["S"], st["S"] + X.sum(1), rtol=1e-12)
    np.testing.assert_allclose(st2["A"], st["A"] + X @ X.T, rtol=1e-12)
    # the default sweeps: MOVED_CENTRE_SWEEPS once the centre moved, one otherwise
    from shapeprior.model._dictlearn import MOVED_CENTRE_SWEEPS

    for centre, sweeps in ((c_new, MOVED_CENTRE_SWEEPS), (None, 1)):
        got = update_shape_dictionary(m.atoms, st, info, new, centre=centre)[0]
        want = update_shape_dictionary(m.atoms, st, info, new, n_sweeps=sweeps,
                                       centre=centre)[0]
        other = update_shape_dictionary(m.atoms, st, info, new, n_sweeps=sweeps + 1,
                                        centre=centre)[0]
        np.testing.assert_array_equal(got, want)
        assert not np.array_equal(got, other)
    # a state from before S was kept: the centre stays, B is not shifted
    legacy = {"A": st["A"], "B": st["B"]}
    atoms3, st3, _ = update_shape_dictionary(m.atoms, legacy, info, new, n_sweeps=0,
                                             centre=c_new)
    np.testing.assert_array_equal(atoms3[0], m.atoms[0])
    assert st3["S"] is None
    # S travels through the model file, and a wrong one is refused
    grown = extend_model(m, shapes[30:40])
    save_model(grown, tmp_path / "g.npz")
    np.testing.assert_array_equal(load_model(tmp_path / "g.npz").dictionary_state["S"],
                                  grown.dictionary_state["S"])
    z = dict(np.load(tmp_path / "g.npz"))
    z["dictionary_S"] = z["dictionary_S"][:-1]
    np.savez(tmp_path / "bad.npz", **z)
    with pytest.raises(ModelFormatError, match="dictionary state"):
        load_model(tmp_path / "bad.npz")


def test_online_pca_update_is_exact_when_nothing_is_truncated(monkeypatch):
    """With every mode kept (before and after), the incremental PCA of an update
    is the PCA of all the stored shapes: the same mean, variances (ddof 1),
    subspace and total variance, to rounding."""
    import shapeprior.model._model as model_mod
    import shapeprior.model._update as update_mod
    from shapeprior.model._model import pca_from_shapes, total_variance

    monkeypatch.setattr(update_mod, "VAR_KEPT", 1.0 + 1e-9)
    monkeypatch.setattr(model_mod.pca_from_shapes, "__defaults__", (1.0 + 1e-9,))
    shapes, faces = _population(40, seed=11)
    m = model_from_shapes(shapes[:25], faces)
    grown = extend_model(m, shapes[25:])
    assert grown.n_shapes == 40
    mean, vt, var = pca_from_shapes(grown.shapes)
    np.testing.assert_allclose(grown.mean, mean, atol=1e-9)
    k = int(np.sum(var > 1e-9 * var[0]))
    assert len(grown.pca_variances) >= k
    np.testing.assert_allclose(grown.pca_variances[:k], var[:k], rtol=1e-7)
    cos = np.linalg.svd(grown.pca_components[:k] @ vt[:k].T, compute_uv=False)
    assert cos.min() > 1 - 1e-7
    assert grown.metadata["pca_total_variance_mm2"] == pytest.approx(
        total_variance(grown.shapes), rel=1e-9)


def test_update_model_widens_the_recorded_hu_share_with_its_new_images(small_model, tmp_path):
    """The appearance records the range of its images' share below -20 HU (CT or
    not); an image added by update-model with some such voxels widens it."""
    model_path, images, labels = small_model
    assert load_model(model_path).profile.hu_share_range == (0.0, 0.0)
    img = nib.load(images / "phantom_006.nii.gz")
    a = np.ascontiguousarray(img.dataobj, dtype=np.float32)
    a.reshape(-1)[::20] = -50.0                         # 5 % of the voxels below -20
    folder = tmp_path / "images"
    folder.mkdir()
    nib.save(nib.Nifti1Image(a, img.affine, img.header), folder / "phantom_006.nii.gz")
    out = tmp_path / "grown.npz"
    assert main(["update-model", str(model_path), str(labels / "phantom_006.nii.gz"), "-o",
                 str(out), "--images", str(folder), "--quiet"]) == 0
    lo, hi = load_model(out).profile.hu_share_range
    assert lo == 0.0 and hi == pytest.approx(0.05, abs=0.005)


def test_extend_model_bookkeeping_pose_range_sources_frame_and_classifier(tmp_path):
    """What extend_model carries over besides the statistics: the pose prior's
    scale range widens to a smaller new organ; a label map holding two shapes
    (both kidneys) is one source, named by its case; new shapes are stored in the
    model frame (aligned), not their scans'; the learned voxel classifier is
    kept; the same file given twice in one update is added once."""
    from shapeprior.model import align_to_model, new_label_maps

    shapes, faces = _population(10)
    centres = np.random.default_rng(5).normal(scale=20, size=(10, 3))
    model = model_from_shapes(shapes, faces, fov_centres=centres)
    model.voxels = sentinel = object()
    lo, hi = model.pose.scale_range
    small = 0.6 * shapes[:2]                                  # smaller than any trained
    grown = extend_model(model, small, ids=["c7:left", "c7:right"], hashes=["h7", "h7"],
                         fov_centres=centres[:2])
    assert grown.pose.scale_range[0] < 0.7 * lo and grown.pose.scale_range[1] == hi
    assert [s["name"] for s in grown.metadata["sources"]][-1:] == ["c7"]
    assert len(grown.metadata["sources"]) == len(model.metadata.get("sources", [])) + 1
    assert np.allclose(grown.shapes[-2:], align_to_model(model, small))
    assert np.abs(grown.shapes[-2:].mean(1) - model.mean.mean(0)).max() < 1e-6
    assert grown.voxels is sentinel
    f = tmp_path / "m.nii.gz"
    f.write_bytes(b"a label map")
    todo, skipped = new_label_maps(grown, [f, f], ["m", "m_again"])
    assert [t[1] for t in todo] == ["m"]
    assert skipped == [{"source": "m_again", "reason": "same content as m, given earlier"}]
    # two detached headers of the same text in two folders name different voxels:
    # both are new (hashing the header alone skipped the second as a duplicate);
    # the same voxels behind them are one
    for d, data in (("a", b"voxels of a"), ("b", b"voxels of b")):
        (tmp_path / d).mkdir()
        (tmp_path / d / "seg.mhd").write_text("NDims = 3\nElementDataFile = seg.raw\n")
        (tmp_path / d / "seg.raw").write_bytes(data)
    pair = [tmp_path / "a" / "seg.mhd", tmp_path / "b" / "seg.mhd"]
    todo, skipped = new_label_maps(grown, pair, ["a", "b"])
    assert [t[1] for t in todo] == ["a", "b"] and not skipped
    (tmp_path / "b" / "seg.raw").write_bytes(b"voxels of a")
    todo, skipped = new_label_maps(grown, pair, ["a", "b"])
    assert [t[1] for t in todo] == ["a"] and len(skipped) == 1


def test_new_maps_are_processed_with_the_models_side_handling():
    """update-model takes the model's build settings: organ, --split-sides and the
    mirroring of right organs must agree with the model's (shapes of unsplit
    pairs, or unmirrored right organs, would not correspond with its shapes);
    the label values and the worker count may differ."""
    from shapeprior.model import model_from_shapes, params_from_model
    from shapeprior.synthetic import ShapePopulation, star_mesh_faces

    pop = ShapePopulation(n_points=42, seed=1)
    stored = {"organ": "kidney", "split_sides": True, "mirror_right": True, "labels": [1, 2],
              "n_iter": 40}
    model = model_from_shapes(pop.sample(6), star_mesh_faces(pop.directions),
                              metadata={"organ": "kidney", "parameters": stored})
    p = params_from_model(model, labels=(3,), n_jobs=2)
    assert (p.organ, p.split_sides, p.mirror_right, p.labels, p.n_jobs, p.n_iter) == (
        "kidney", True, True, (3,), 2, 40)
    assert p.n_vertices == 42
    for key, other in (("organ", "liver"), ("split_sides", False), ("mirror_right", False)):
        with pytest.raises(ValueError, match=f"{key}={other!r} disagrees with the model"):
            params_from_model(model, **{key: other})
    assert params_from_model(model, split_sides=True).split_sides is True


def _lobe(shapes, factor):
    """The shapes with their +x lobe stretched by ``factor`` (another kind of organ)."""
    out = shapes.copy()
    x = out[..., 0] - out[..., 0].mean(1, keepdims=True)
    out[..., 0] += np.where(x > 0, (factor - 1.0) * x, 0.0)
    return out


def test_representative_ranking_adds_the_missing_kind_first_not_the_outlier():
    """Kernel herding: a model of one kind of shape, candidates of that kind, of a
    second kind the model lacks and one outlier. The second kind comes first, in
    turn with the common kind, and the outlier (first for novelty) not early;
    each pick minimises the maximum mean discrepancy to all shapes known; gain_mm
    is each pick's RMS distance to the nearest shape held, and a copy of a shape
    held comes last."""
    from shapeprior.model import RANKING_CRITERIA
    from shapeprior.model._update import align_to_model

    base, faces = _population(30, seed=3)
    m = model_from_shapes(base, faces)
    common = _population(40, seed=9)[0]
    other = _lobe(_population(10, seed=11)[0], 1.5)
    outlier = _lobe(_population(1, seed=13)[0], 3.0)
    cands = np.concatenate([common, other, outlier])            # 0-39, 40-49, 50
    kind = np.where(np.arange(51) >= 40, 1, 0)
    order, novelty, gain = rank_candidates(m, cands, "representative")
    assert sorted(order) == list(range(51))
    assert kind[order[0]] == 1 and kind[order[:6]].sum() >= 3, order   # what the model lacks
    assert list(order).index(50) >= 10, order                 # the outlier: not early
    assert rank_candidates(m, cands, "novelty")[0][0] == 50   # novelty: the outlier first
    # each pick is the one that brings the model's shapes closest to all shapes known
    # in maximum mean discrepancy (Gaussian kernel, bandwidth twice the median squared
    # RMS distance to the mean shape), computed here by brute force
    al = align_to_model(m, cands)
    Z = np.concatenate([m.shapes, al]).reshape(30 + 51, -1)
    nv = m.n_vertices
    h = 2 * np.median(((Z - Z.mean(0)) ** 2).sum(1)) / nv
    sq = (Z ** 2).sum(1)
    K = np.exp(-np.maximum(sq[:, None] + sq[None] - 2 * Z @ Z.T, 0) / nv / h)
    chosen = list(range(30))
    for t in range(6):
        def mmd2(c):
            S = chosen + [30 + c]
            return K[np.ix_(S, S)].mean() - 2 * K[S].mean()
        rest = [c for c in range(51) if 30 + c not in chosen]
        assert order[t] == min(rest, key=mmd2), t
        chosen.append(30 + order[t])
    # gain_mm: RMS distance to the nearest shape held (the model's, then earlier picks)
    held = list(m.shapes)
    for k, g in zip(order[:5], gain[:5]):
        assert g == pytest.approx(min(_rms(al[k], x) for x in held), rel=1e-6)
        held.append(al[k])
    # a copy of a pick adds nothing once the pick is held: it comes last, gain 0;
    # so does a copy of a model shape
    order2, _, gain2 = rank_candidates(
        m, np.concatenate([cands, cands[order[0]][None], base[4][None] * 1.2]),
        "representative")
    assert order2[0] in (order[0], 51) and set(order2[-2:]) == {52, {order[0]: 51}.get(
        order2[0], order[0])}, order2
    assert gain2[-1] == gain2[-2] == 0.0 and np.all(gain2[:-2] > 0)
    assert RANKING_CRITERIA[0] == "coverage" and "representative" in RANKING_CRITERIA
    with pytest.raises(ValueError, match="criterion='typical' is invalid"):
        rank_candidates(m, cands, "typical")


def test_new_shapes_are_aligned_at_the_size_gpa_gives_the_model_shapes():
    """GPA aligns onto a target larger than the mean of the aligned shapes (averaging
    shapes that differ shrinks them): a model shape aligned again is itself, and
    shapes added online keep the sizes, relative to the first ones, that a rebuild
    gives them (aligned onto the mean, they came out 3 % smaller here)."""
    from shapeprior.model._update import align_to_model, alignment_target

    shapes, faces = _population(60, seed=3)
    shapes[::2] = _lobe(shapes[::2], 1.6)            # a variable organ: its mean shrinks

    def size(x):
        c = x - x.mean(-2, keepdims=True)
        return np.sqrt((c ** 2).sum((-1, -2)))

    m = model_from_shapes(shapes[:20], faces)
    assert size(alignment_target(m)) > 1.01 * size(m.mean)
    again = align_to_model(m, shapes[:20] * 1.3)
    assert max(_rms(a, b) for a, b in zip(again, m.shapes)) < 1e-6
    grown = m
    for k in range(20, 60, 10):
        grown = extend_model(grown, shapes[k:k + 10])
    rebuilt = model_from_shapes(shapes, faces)
    ratio = [size(x.shapes[20:]).mean() / size(x.shapes[:20]).mean() for x in (grown, rebuilt)]
    assert ratio[0] / ratio[1] == pytest.approx(1.0, abs=0.005), ratio


def test_rank_only_criteria_are_the_library_s_and_each_explains_its_gain(small_model,
                                                                         capsys):
    """The command lists every criterion of rank_candidates (default first) and
    says what gain_mm measures under the one used."""
    from shapeprior.cli import update_model as cmd
    from shapeprior.model import RANKING_CRITERIA

    assert cmd.RANKING_CRITERIA == RANKING_CRITERIA
    assert set(cmd.GAIN_MEANING) == set(RANKING_CRITERIA)
    model_path, _, labels = small_model
    capsys.readouterr()
    assert main(["update-model", "--rank-only", str(model_path), str(labels),
                 "--criterion", "representative", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "labels/phantom_005" in out and "nearest shape of the model" in out
