"""The Python facade and the example script that uses it."""

import runpy
from pathlib import Path

import numpy as np
import pytest

import shapeprior as sp

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_facade_names_are_exported_and_documented():
    for name in ("read_volume", "load_model", "build_model", "segment", "refine"):
        assert name in sp.__all__ and callable(getattr(sp, name)), name
        assert "Returns" in getattr(sp, name).__doc__
    for name in ("SegmentParams", "SegmentResult", "BuildParams", "ShapeModel", "Volume"):
        assert getattr(sp, name).__doc__.strip(), name


def test_segment_facade_checks_its_parameters(phantom_model):
    with pytest.raises(ValueError, match="seed_space"):
        sp.segment(phantom_model[1] / "phantom_006.nii.gz", phantom_model[3], seed=(0, 0, 0),
                   seed_space="xyz")


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="examples/ is not in this checkout")
def test_example_script_runs(tmp_path):
    ns = runpy.run_path(str(EXAMPLES / "segment_phantom.py"))
    dice, before, fixed = ns["main"](tmp_path / "again")
    assert dice > 0.95                  # the held-out phantom, no seed
    assert fixed > before               # the damaged mask came back closer to the truth


@pytest.mark.parametrize("refit", [0.0, 1.5, float("nan"), "0.1"])
def test_segment_params_refuse_a_bad_refit(refit):
    with pytest.raises(ValueError, match="refit"):
        sp.SegmentParams(refit=refit)
    assert sp.SegmentParams(refit=0.3).refit == 0.3 and sp.SegmentParams().refit is None


@pytest.mark.parametrize("tol", [0.0, -1e-3, float("nan"), "1e-3"])
def test_segment_params_refuse_a_bad_align_tol(tol):
    with pytest.raises(ValueError, match="align_tol"):
        sp.SegmentParams(align_tol=tol)


def test_align_rounds_and_tol_reach_every_ssc_call(phantom_model, monkeypatch):
    """The fit loop passes its alignment settings to every SSC solve."""
    from shapeprior.segmentation import _fit

    seen = []
    real = _fit.sparse_shape_composition

    def spy(*args, **kw):
        seen.append((kw["max_align_iter"], kw["align_tol"]))
        return real(*args, **kw)

    monkeypatch.setattr(_fit, "sparse_shape_composition", spy)
    sp.segment(phantom_model[1] / "phantom_006.nii.gz", phantom_model[3], align_rounds=2,
               align_tol=1e-2, max_iter=2)
    assert seen and set(seen) == {(2, 1e-2)}


def test_parameter_checks_name_the_value_and_the_allowed_range():
    from shapeprior._validation import check_labels, check_number, check_vector

    assert check_number("lambda1", 0.5, 0, low_open=True) == 0.5
    assert check_number("n_iter", 3, 1, integer=True) == 3
    cases = [
        (lambda: check_number("lambda1", 0.0, 0, low_open=True), "lambda1=0.0", "> 0"),
        (lambda: check_number("lambda1", -1e-9, 0), "lambda1=-1e-09", ">= 0"),
        (lambda: check_number("refit", 1.0, 0, 1, high_open=True), "refit=1.0", "in [0, 1)"),
        (lambda: check_number("n_iter", True, 1, integer=True), "n_iter=True", "an integer"),
        (lambda: check_number("tol", np.bool_(True)), "tol=", "expected a finite number"),
        (lambda: check_number("tol", float("inf"), 0), "tol=inf", "a finite number >= 0"),
        (lambda: check_number("tol", float("nan")), "tol=nan", "expected a finite number"),
        (lambda: check_labels("labels", (0, 1)), "labels=(0, 1)", "label values > 0"),
        (lambda: check_labels("labels", (1, True)), "labels=(1, True)", "integer"),
        (lambda: check_vector("window", (0.2, 0.2), 2, increasing=True), "window=(0.2, 0.2)",
         "increasing"),
        (lambda: check_vector("seed", (1.0, float("inf"), 2.0), 3), "seed=", "3 finite"),
        (lambda: check_vector("seed", (1e308, 0.0, 0.0), 3, bound=1e9), "seed=(1e+308",
         "within +-1e+09"),
        # a segmentation's seed: beyond 1000 km it is a typo (and 1e308 overflowed to inf)
        (lambda: sp.SegmentParams(seed_mm=(-2e9, 0.0, 0.0)), "seed_mm=(-2000000000.0",
         "3 finite numbers within +-1e+09"),
    ]
    assert check_vector("seed", (-1e9, 0.0, 1e9), 3, bound=1e9) == (-1e9, 0.0, 1e9)
    for call, named, allowed in cases:
        with pytest.raises(ValueError) as err:
            call()
        assert named in str(err.value) and allowed in str(err.value), str(err.value)


def test_segment_facade_passes_the_seed_space_and_the_side(phantom_model, paired):
    """sp.segment(seed=..., seed_space='ras') starts at the seed read as RAS, and
    side='right' fits the mirrored model on a paired organ's right one."""
    from shapeprior.io import read_label_map
    from shapeprior.segmentation import dice

    d, images, labels, model = phantom_model
    img = sp.read_volume(images / "phantom_006.nii.gz")
    truth = read_label_map(labels / "phantom_006.nii.gz").array > 0
    zyx = np.argwhere(truth).mean(0)
    lps = img.index_to_physical(zyx[::-1][None])[0]
    ras = lps * np.array([-1.0, -1.0, 1.0])
    r = sp.segment(img, model, seed=ras, seed_space="ras")
    seed = r.placement["hypotheses"][0]          # the seed, then positions near it
    assert seed["source"] == "seed" and np.allclose(seed["centre_lps_mm"], lps, atol=0.01)
    assert dice(r.label, truth) > 0.95
    _, pimages, ptruth, pmodel = paired
    name = "pair_006.nii.gz"
    right = sp.segment(pimages / name, pmodel, side="right")
    assert dice(right.label, ptruth[name]["right"]) > 0.95
    assert dice(right.label, ptruth[name]["left"]) < 0.05


def test_refine_facade_keeps_labels_and_reads_the_image(phantom_model):
    """sp.refine(keep=(2,)) never removes label 2 and writes it with its value;
    image= continues the fit against the scan (its evidence says what it did)."""
    from shapeprior.io import Volume, read_label_map

    d, images, labels, model = phantom_model
    mask = read_label_map(labels / "phantom_005.nii.gz")
    arr = (mask.array > 0).astype(np.uint8)
    zs = np.flatnonzero(arr.any((1, 2)))
    arr[zs[len(zs) // 2]][arr[zs[len(zs) // 2]] > 0] = 2     # one slice as a "lesion"
    lesion = arr == 2
    mv = Volume(arr, mask.spacing, mask.origin, mask.direction)
    kept = sp.refine(mv, model, labels=(1,), keep=(2,))
    assert np.all(kept.label[lesion] == 2)
    alone = sp.refine(mv, model, labels=(1, 2))
    assert not np.any(alone.label == 2)
    with_image = sp.refine(mv, model, labels=(1, 2), image=images / "phantom_005.nii.gz")
    assert "cavities" in with_image.fit.evidence and "cavities" not in alone.fit.evidence
    assert with_image.fit is not with_image.mask_fit
    # without labels=: the model's own (a model built from 1,2 takes the lesion slice as
    # organ), less what keep= sets aside
    import copy

    m12 = copy.copy(sp.load_model(model))
    m12.metadata = {**m12.metadata,
                    "parameters": {**(m12.metadata.get("parameters") or {}), "labels": [1, 2]}}
    assert np.array_equal(sp.refine(mv, m12).label, alone.label)
    assert np.array_equal(sp.refine(mv, m12, keep=(2,)).label, kept.label)


def test_reconstruct_facade_carries_the_weights():
    """sp.reconstruct(weights=w): vertices of weight 0 are missing (not visible),
    so a displaced patch given weight 0 leaves the reconstruction where the
    clean shape is."""
    from shapeprior.model import model_from_shapes
    from shapeprior.synthetic import ShapePopulation, star_mesh_faces

    pop = ShapePopulation(n_points=162, seed=4)
    train = pop.sample(30)
    model = model_from_shapes(train, star_mesh_faces(pop.directions))
    clean = pop.sample(1, np.random.default_rng(9))[0]
    y = clean.copy()
    y[:30] += 15.0                                          # a displaced patch
    w = np.ones(len(y))
    w[:30] = 0.0
    r = sp.reconstruct(y, model, weights=w, method="l1")
    assert not r.visible[:30].any() and r.visible[30:].all()
    assert np.linalg.norm(r.reconstruction[:30] - clean[:30], axis=1).mean() < 3.0


def test_facades_hand_every_argument_on(tmp_path, monkeypatch):
    """What sp.build_model, sp.segment and sp.refine are given reaches the
    functions that do the work: label values and training images (a model
    built from label 1 without appearance otherwise), the starting surface and
    the organ's labels."""
    import shapeprior.model as spm
    import shapeprior.segmentation as sps
    from shapeprior.io import Volume

    seen = {}

    def build(files, params, root=None, progress=False):
        seen["build"] = (files, params)
        return "model", {"report": 1}

    monkeypatch.setattr(spm, "build_model", build)
    maps = [tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"]
    assert sp.build_model(maps, label_values=(2, 3), images=tmp_path / "imgs",
                          organ="kidney") == ("model", {"report": 1})
    files, params = seen["build"]
    assert files == maps and params.labels == (2, 3) and params.organ == "kidney"
    assert params.images_dir == str(tmp_path / "imgs")
    sp.build_model(maps)
    assert seen["build"][1].images_dir is None and seen["build"][1].labels == (1,)

    class Model:
        shapes = np.zeros((2, 4, 3))
        metadata = {}           # of no paired organ: one refine_mask

    vol = Volume(np.zeros((3, 4, 5), np.uint8), np.ones(3), np.zeros(3), np.eye(3))
    start = np.ones((4, 3))
    monkeypatch.setattr(sps, "segment_volume",
                        lambda v, m, p, init=None: seen.update(segment=(v, m, p, init)))
    sp.segment(vol, Model, seed=(1, 2, 3), init=start)
    v, m, p, init = seen["segment"]
    assert v is vol and m is Model and init is start and p.seed_mm == (1.0, 2.0, 3.0)

    def refine_mask(mask, model, labels, params, image, keep=()):
        seen["refine"] = (mask, labels, image, keep)

    monkeypatch.setattr(sps, "refine_mask", refine_mask)
    sp.refine(vol, Model, labels=[2, 5], keep=[7])
    assert seen["refine"] == (vol, (2, 5), None, (7,))


def test_tab_completion_offers_the_facade_before_it_is_loaded():
    names = dir(sp)
    for name in ("segment", "refine", "reconstruct", "load_model", "read_volume", "Volume",
                 "ShapeModel", "__version__"):
        assert name in names, name


def test_results_and_inputs_print_as_one_short_line(phantom_model):
    """An interactive session prints these: one line each, their facts, no arrays."""
    from shapeprior.io import Volume
    from shapeprior.segmentation import RefineResult, SegmentResult

    _, images, _, model_path = phantom_model
    model = sp.load_model(model_path)
    vol = sp.read_volume(sorted(images.iterdir())[0])
    fit = sp.reconstruct(model.shapes[0], model)
    seg = SegmentResult(verts=model.mean, faces=model.faces, label=np.ones((4, 5, 6), np.uint8),
                        n_iter=7, converged=False, overridden_fraction=0.25, time_s=1.5,
                        status="suspect", quality=0.61, reasons=["a leak"])
    ref = RefineResult(fit=seg, label=np.zeros((3, 3, 3), np.uint8),
                       corrections={"removed_ml": 1.25, "added_ml": 0.5}, mask_fit=seg)
    plain = Volume(np.zeros((2, 3, 4), np.int16), np.array([0.5, 0.5, 2.0]),
                   np.array([1.0, -2.0, 3.0]), np.eye(3))
    texts = {
        "volume": (repr(vol), ["shape(z,y,x)=", "mm LPS", "direction=("]),
        "plain": (repr(plain), ["shape(z,y,x)=(2, 3, 4)", "spacing(x,y,z)=(0.5, 0.5, 2) mm",
                                "origin=(1, -2, 3) mm LPS)"]),
        "model": (repr(model), [f"shapes={model.n_shapes}", f"vertices={model.n_vertices}",
                                "appearance=yes", "version=1"]),
        "ssc": (repr(fit), ["method='l0'", f"vertices={model.n_vertices}", "converged="]),
        "segment": (repr(seg), ["status='suspect'", "reasons=['a leak']", "label_voxels=120",
                                "overridden_fraction=0.250"]),
        "refine": (repr(ref), ["status='suspect'", "removed_ml=1.25", "added_ml=0.5",
                               "label_voxels=0"]),
    }
    for what, (text, facts) in texts.items():
        assert "\n" not in text and len(text) < 400, (what, text)
        assert "array(" not in text, (what, text)
        for fact in facts:
            assert fact in text, (what, fact, text)
    assert "direction" not in repr(plain)
    # each part the model has, and only those
    from dataclasses import replace

    assert "appearance=yes, voxel_classifier=no" in repr(replace(model, voxels=None))
    assert "appearance=no, voxel_classifier=yes" in repr(replace(model, profile=None))


def _hand_made(vol, **change):
    from shapeprior.io import Volume

    parts = {"array": vol.array, "spacing": vol.spacing, "origin": vol.origin,
             "direction": vol.direction, **change}
    return Volume(**parts)


@pytest.mark.parametrize("change, said", [
    ({"spacing": np.array([np.nan, 1.0, 1.0])}, "spacing [nan, 1.0, 1.0] mm is not finite"),
    ({"spacing": np.array([0.0, 1.0, 1.0])}, "is not finite and positive"),
    ({"spacing": [1.0, 1.0]}, "spacing must have shape (3,)"),
    ({"origin": np.array([0.0, np.inf, 0.0])}, "origin [0.0, inf, 0.0] is not finite"),
    ({"direction": np.zeros((3, 3))}, "direction matrix is not orthonormal"),
    ({"array": np.zeros((5, 6))}, "must be 3-D (z, y, x)"),
    ({"array": np.zeros((1, 6, 7))}, "at least 2 voxels along each axis"),
    ({"array": np.full((4, 5, 6), np.nan)}, "NaN or infinite voxel values"),
    ({"array": np.full((4, 5, 6), "a")}, "holds <U1 values"),
])
def test_a_hand_made_volume_is_checked_as_a_reader_checks_a_file(phantom_model, change, said):
    """A Volume made from an array bypasses the readers' checks: zero spacing gave
    numpy's 'Singular matrix', NaN spacing 'image must be 3-D ... (0, 0, 0)'."""
    from shapeprior.io import ImageReadError

    _, images, labels, model_path = phantom_model
    model = sp.load_model(model_path)
    vol = sp.read_volume(sorted(images.iterdir())[0])
    with pytest.raises(ImageReadError, match="^image: |^image contains") as exc:
        sp.segment(_hand_made(vol, **change), model, seed=tuple(vol.centre()))
    assert said in str(exc.value)
    mask = sp.read_volume(sorted(labels.iterdir())[0])
    with pytest.raises(ImageReadError, match="^mask"):
        sp.refine(_hand_made(mask, **change), model)


def test_a_volume_from_plain_sequences_segments_like_the_file(phantom_model):
    _, images, _, model_path = phantom_model
    model = sp.load_model(model_path)
    vol = sp.read_volume(sorted(images.iterdir())[0])
    seed = tuple(vol.centre())
    made = _hand_made(vol, spacing=tuple(vol.spacing), origin=list(vol.origin),
                      direction=vol.direction.tolist())
    a = sp.segment(vol, model, seed=seed)
    b = sp.segment(made, model, seed=seed)
    assert np.array_equal(a.label, b.label) and np.allclose(a.verts, b.verts)


def test_an_array_or_one_shape_is_refused_with_what_to_give_instead(phantom_model):
    _, _, labels, model_path = phantom_model
    model = sp.load_model(model_path)
    with pytest.raises(TypeError, match="image must be a Volume .* got ndarray: an array has "
                                        "no spacing, origin or direction; wrap it as"):
        sp.segment(np.zeros((8, 8, 8)), model)
    with pytest.raises(TypeError, match="mask must be a Volume .* got ndarray"):
        sp.refine(np.zeros((8, 8, 8), np.uint8), model)
    with pytest.raises(TypeError, match="image must be a Volume .* got list$"):
        sp.refine(sorted(labels.iterdir())[0], model, image=[1, 2])
    with pytest.raises(ValueError, match=r"shapes has shape \(\d+, 3\): expected \(M, \d+, 3\)"
                                         ".*use reconstruct"):
        sp.reconstruct_many(model.shapes[0], model)


def test_a_hand_made_mask_is_checked_as_a_read_label_map(phantom_model):
    """A probability map given to sp.refine as a Volume said 'the mask has no voxel
    with label(s) [1]' (no voxel is exactly 1.0); the file said 'non-integer
    values'. Both now say the latter; a bool mask and a float mask of whole
    numbers refine as the integer mask does, and the caller's Volume is left as
    it was."""
    from shapeprior.io import ImageReadError, Volume

    _, _, labels, model_path = phantom_model
    model = sp.load_model(model_path)
    mask = sp.read_volume(sorted(labels.iterdir())[0])
    organ = mask.array > 0
    soft = Volume(np.where(organ, 0.9, 0.1).astype(np.float32), mask.spacing, mask.origin,
                  mask.direction)
    with pytest.raises(ImageReadError, match="^mask: label map has non-integer values"):
        sp.refine(soft, model)
    image_like = Volume(np.arange(organ.size, dtype=np.int16).reshape(organ.shape),
                        mask.spacing, mask.origin, mask.direction)
    with pytest.raises(ImageReadError, match="^mask: an image, not a label map"):
        sp.refine(image_like, model)
    as_int = sp.refine(Volume(organ.astype(np.uint8), mask.spacing, mask.origin,
                              mask.direction), model)
    whole = Volume(organ.astype(np.float64), mask.spacing, mask.origin, mask.direction)
    for given in (Volume(organ, mask.spacing, mask.origin, mask.direction), whole):
        assert np.array_equal(sp.refine(given, model).label, as_int.label)
    assert whole.array.dtype == np.float64
