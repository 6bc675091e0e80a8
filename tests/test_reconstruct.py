"""Many shapes, one dictionary: ``sparse_shape_composition_many``,
``shapeprior.reconstruct_many`` and ``shapeprior reconstruct``."""

import csv
import json
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from shapeprior.cli import main
from shapeprior.mesh import Surface, read_mesh
from shapeprior.model import model_from_shapes, save_model
from shapeprior.ssc import (ShapeDictionary, sparse_shape_composition,
                            sparse_shape_composition_many)
from shapeprior.synthetic import (ShapePopulation, corrupt_patches, random_similarity,
                                  star_mesh_faces)

N = 162


@pytest.fixture(scope="module")
def population():
    """Training shapes, and observed ones: transformed, noisy, some with gross errors."""
    pop = ShapePopulation(n_points=N, seed=11)
    train = pop.sample(40)
    rng = np.random.default_rng(5)
    clean, observed = [], []
    for i in range(7):
        R, s, t = random_similarity(rng)
        c = s * pop.sample(1, rng)[0] @ R.T + t
        y = c + rng.normal(0, 0.2, c.shape)
        if i % 2:
            y, _ = corrupt_patches(y, 0.15, rng)
        clean.append(c)
        observed.append(y)
    return train, np.stack(clean), np.stack(observed), star_mesh_faces(pop.directions)


def _same(a, b):
    """The same solve (workers sum with one BLAS thread: equal to rounding)."""
    assert np.allclose(a.x, b.x, rtol=1e-9, atol=1e-9 * np.abs(a.x).max())
    assert np.allclose(a.reconstruction, b.reconstruction, rtol=0, atol=1e-8)
    assert np.array_equal(a.overridden, b.overridden)
    assert a.n_align_iter == b.n_align_iter


@pytest.mark.parametrize("n_jobs,executor", [(1, "threads"), (2, "threads"),
                                             (2, "processes")])
@pytest.mark.parametrize("options", [{"method": "l1"}, {"method": "l0", "refit": 0.1},
                                     {"method": "l1", "alignment": "none"},
                                     {"method": "l1", "alpha1": 0.03, "refit": 0.01}])
def test_many_equals_the_single_solves(population, n_jobs, executor, options):
    train, _, obs, _ = population
    dic = ShapeDictionary(train)
    w = np.ones((len(obs), N))
    w[2, :20] = 0.0                                     # one shape with missing vertices
    w[4] = np.linspace(0.2, 1.0, N)                     # and one with graded confidence
    many = sparse_shape_composition_many(obs, dic, w, n_jobs=n_jobs, chunk_size=2,
                                         executor=executor, **options)
    assert len(many) == len(obs)
    for y, wi, r in zip(obs, w, many):
        _same(r, sparse_shape_composition(y, dic, wi, **options))
    assert not many[2].visible[:20].any()


@pytest.mark.parametrize("limit,sizes", [(None, [3, 3]), (1, [])])
def test_many_prepares_the_pass_over_d_in_bounded_groups(population, monkeypatch, limit,
                                                          sizes):
    """The pass over D is made for a group of shapes at once, groups of at most
    PREPARE_GROUP and PREPARE_BYTES (a large model: one shape at a time, no
    product to share); every result is still the single solve's."""
    import shapeprior.ssc._many as many_mod

    train, _, obs, _ = population
    dic = ShapeDictionary(train)
    monkeypatch.setattr(many_mod, "PREPARE_GROUP", 3)
    if limit is not None:
        monkeypatch.setattr(many_mod, "PREPARE_BYTES", limit)
    seen = []
    real = ShapeDictionary.prepare

    def spy(self, shapes, s2, aligned):
        if len(shapes):
            seen.append(len(shapes))
        return real(self, shapes, s2, aligned)

    monkeypatch.setattr(ShapeDictionary, "prepare", spy)
    many = sparse_shape_composition_many(obs, dic)
    assert seen == sizes                        # the first shape is solved alone
    for y, r in zip(obs, many):
        _same(r, sparse_shape_composition(y, dic))


def test_many_checks_its_inputs(population):
    train, _, obs, _ = population
    dic = ShapeDictionary(train)
    bad = obs.copy()
    bad[3, 5, 0] = np.nan
    with pytest.raises(ValueError, match=r"shapes\[3\].*NaN"):
        sparse_shape_composition_many(bad, dic)
    with pytest.raises(ValueError, match=r"shapes\[0\].*expects"):
        sparse_shape_composition_many(obs[:, :100], dic)
    with pytest.raises(ValueError, match="n_jobs=0"):
        sparse_shape_composition_many(obs, dic, n_jobs=0)
    with pytest.raises(ValueError, match="chunk_size"):
        sparse_shape_composition_many(obs, dic, chunk_size=0)
    with pytest.raises(ValueError, match="executor='fork'.*'threads', 'processes'"):
        sparse_shape_composition_many(obs, dic, n_jobs=2, executor="fork")
    with pytest.raises(ValueError, match=r"weights has shape \(3, 162\)"):
        sparse_shape_composition_many(obs, dic, np.ones((3, N)))
    with pytest.raises(ValueError, match="method"):     # the single solver's own message
        sparse_shape_composition_many(obs, dic, method="l2", n_jobs=2)
    assert sparse_shape_composition_many([], dic) == []


def test_many_on_dask(population):
    distributed = pytest.importorskip("distributed")
    train, _, obs, _ = population
    dic = ShapeDictionary(train)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1,
                            dashboard_address=None) as client:
        many = sparse_shape_composition_many(obs, dic, client=client, chunk_size=3)
    for y, r in zip(obs, many):
        _same(r, sparse_shape_composition(y, dic))


def test_api_reconstruct_many(population, tmp_path):
    import shapeprior

    train, clean, obs, faces = population
    model = model_from_shapes(train, faces)
    save_model(model, tmp_path / "m.npz")
    res = shapeprior.reconstruct_many(obs, tmp_path / "m.npz", method="l0", refit=0.1,
                                      n_jobs=2)
    dic = model.prior_dictionary("auto")
    for y, r in zip(obs, res):
        _same(r, sparse_shape_composition(y, dic, method="l0", refit=0.1))
    # the uncorrupted shapes (even indices) come back in their own frame
    for r, c in list(zip(res, clean))[::2]:
        assert np.linalg.norm(r.reconstruction - c, axis=1).mean() < 0.5


def _digest(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def mesh_folder(population, tmp_path):
    train, clean, obs, faces = population
    save_model(model_from_shapes(train, faces, metadata={"organ": "blob"}), tmp_path / "m.npz")
    d = tmp_path / "meshes"
    (d / "sub").mkdir(parents=True)
    for i, y in enumerate(obs[:3]):
        Surface(y, faces).write(d / f"case {i}.{('vtk', 'ply', 'obj')[i]}")
    Surface(obs[3], faces).write(d / "sub" / "case 0.vtp")     # same stem elsewhere
    return tmp_path / "m.npz", d


def test_cli_reconstruct_writes_everything(population, mesh_folder, tmp_path, capsys):
    _, clean, obs, faces = population
    model, d = mesh_folder
    before = _digest(d)
    out = tmp_path / "out"
    assert main(["reconstruct", str(d), "-o", str(out), "--model", str(model), "--quiet",
                 "--refit", "0.1"]) == 0
    assert _digest(d) == before
    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    n_ok = sum(r["status"] == "ok" for r in rows)
    assert f"4 shapes: {n_ok} ok, {4 - n_ok} suspect" in capsys.readouterr().out
    for r in rows:    # the status says what the evidence says
        unsettled = r["converged"] == "False" and float(r["alignment_move"]) > 1e-3
        bad = unsettled or float(r["overridden_fraction"]) > 0.5
        assert (r["status"] == "suspect") == bad
    assert [r["name"] for r in rows] == ["case 0.vtk", "case 1.ply", "case 2.obj",
                                         "sub/case 0.vtp"]
    z = np.load(out / "reconstructions.npz")
    assert z["reconstructions"].shape == (4, N, 3) and z["coefficients"].shape == (4, 40)
    assert list(z["names"]) == [r["name"] for r in rows]
    import shapeprior

    api = shapeprior.reconstruct_many(obs[:4], model, refit=0.1)   # what the files hold
    assert np.allclose(z["reconstructions"], np.stack([r.reconstruction for r in api]),
                       rtol=0, atol=1e-8)
    assert np.allclose(z["gross_error_mm"], np.stack([r.error_norm for r in api]),
                       rtol=0, atol=1e-8)
    for i in (0, 2):   # uncorrupted: in the input's frame, near the clean shape (~50 mm)
        assert np.linalg.norm(z["reconstructions"][i] - clean[i], axis=1).mean() < 2.0
    m = read_mesh(out / "mesh_sub_case_0.vtk")
    assert np.allclose(m.verts, z["reconstructions"][3])
    assert {p.name for p in out.iterdir()} == {
        "reconstructions.npz", "summary.csv", "report.json", "manifest.json",
        "mesh_case_0.vtk", "mesh_case_1.vtk", "mesh_case_2.vtk", "mesh_sub_case_0.vtk"}
    # a second run: refused without --force, replaces its own output with it
    assert main(["reconstruct", str(d), "-o", str(out), "--model", str(model), "--quiet"]) == 1
    assert main(["reconstruct", str(d), "-o", str(out), "--model", str(model), "--quiet",
                 "--force", "--jobs", "2"]) == 0
    assert _digest(d) == before


def test_cli_reconstruct_npy_and_strict(population, mesh_folder, tmp_path, capsys):
    _, clean, obs, _ = population
    model, _ = mesh_folder
    arr = obs[:2].copy()
    rng = np.random.default_rng(1)
    arr[1, : int(0.6 * N)] += rng.normal(0, 40.0, (int(0.6 * N), 3))   # mostly garbage
    np.save(tmp_path / "shapes.npy", arr)
    out = tmp_path / "o"
    assert main(["reconstruct", str(tmp_path / "shapes.npy"), "-o", str(out), "--model",
                 str(model), "--quiet", "--strict"]) == 3
    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["ok", "suspect"]
    assert "explains less than half" in rows[1]["reasons"]
    assert "suspect: shape_00001" in capsys.readouterr().out
    import json

    man = json.loads((out / "manifest.json").read_text())
    assert [v["path"] for k, v in man["inputs"].items() if k.startswith("input/")] == \
        ["shapes.npy"]
    np.save(tmp_path / "complex.npy", arr.astype(complex))
    assert main(["reconstruct", str(tmp_path / "complex.npy"), "-o", str(tmp_path / "c"),
                 "--model", str(model), "--quiet"]) == 1
    assert "holds complex128 values; expected real coordinates" in capsys.readouterr().err
    # its own output given back: an archive of several arrays, named as one
    assert main(["reconstruct", str(out / "reconstructions.npz"), "-o", str(tmp_path / "z"),
                 "--model", str(model), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "reconstructions.npz is an .npz archive" in err and "one .npy array" in err, err
    assert "not one of .vtk" not in err and not (tmp_path / "z").exists()


@pytest.mark.parametrize("make, message", [
    (lambda y: y[:0], "holds no shapes (shape (0, "),
    (lambda y: y[0, :5], "holds an array of shape (5, 3); expected"),
    (lambda y: np.full(y.shape, "x"), "holds <U1 values"),
    (lambda y: np.zeros_like(y), "shape 0 is degenerate: all its points lie at one place"),
    (lambda y: y * 1e300, "shape 0 has coordinates up to "),
])
def test_cli_reconstruct_refuses_bad_arrays_in_one_line(population, tmp_path, capsys, make,
                                                        message):
    """An array of shapes that is empty, of another shape, not numbers, or whose
    shapes are all unusable (points that coincide: nothing to align;
    coordinates no millimetre shape has: their squares overflow): one line
    naming the array (and the first shape), nothing written."""
    train, _, obs, faces = population
    model = model_from_shapes(train, faces)
    save_model(model, tmp_path / "m.npz")
    np.save(tmp_path / "a.npy", make(obs[:2]))
    before = {f: (tmp_path / f).read_bytes() for f in ("a.npy", "m.npz")}
    out = tmp_path / "o"
    assert main(["reconstruct", str(tmp_path / "a.npy"), "-o", str(out), "--model",
                 str(tmp_path / "m.npz"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a.npy" in err[0] and message in err[0], err
    if message.startswith("shape 0"):
        assert "none of the other 1 inputs can be used" in err[0]
    assert not out.exists()
    assert {f: (tmp_path / f).read_bytes() for f in before} == before


def test_cli_reconstruct_refuses_an_array_whose_header_lies_in_one_line(population, tmp_path,
                                                                         capsys):
    """A .npy array whose shape field was damaged asks NumPy for gigabytes (a 1
    KiB file, shape (500000000, 10, 3): 112 GiB, and a MemoryError, "out of
    memory"); one cut short fails inside NumPy; a damaged header text raised
    tokenize.TokenError and a damaged header length made NumPy read gigabytes of
    header (both found by bench/fuzz_readers.py). Each is refused in one line
    naming the file; nothing is written and the file is left as it was."""
    import numpy.lib.format as npformat

    train, _, obs, faces = population
    save_model(model_from_shapes(train, faces), tmp_path / "m.npz")
    a = obs[:2]
    with open(tmp_path / "big.npy", "wb") as fh:
        npformat.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False,
                                             "shape": (500_000_000, *a.shape[1:])})
        fh.write(a.tobytes())
    np.save(tmp_path / "whole.npy", a)
    whole = (tmp_path / "whole.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(whole[:-7])
    # the header's text with a bracket left open (NumPy's parser raised TokenError), and
    # a version 2 header whose length field says 3.5 GB (NumPy read that much header)
    (tmp_path / "text.npy").write_bytes(whole.replace(b"'shape': (", b"'shape': ((", 1)
                                        .replace(b"    ", b"   ", 1))
    with open(tmp_path / "long.npy", "wb") as fh:
        npformat.write_array(fh, a, version=(2, 0))
    long_ = bytearray((tmp_path / "long.npy").read_bytes())
    long_[8:12] = (0xCF000074).to_bytes(4, "little")
    (tmp_path / "long.npy").write_bytes(bytes(long_))
    for name, said in (("big.npy", rf"its header promises {500_000_000 * a[0].size * 8} "
                                   rf"bytes of float64 values, shape \(500000000, "),
                       ("cut.npy", rf"its header promises {a.size * 8} bytes of float64 "
                                   rf"values, shape \(2, {a.shape[1]}, 3\); the file holds "
                                   rf"{a.size * 8 - 7}"),
                       ("text.npy", r"its header does not parse \((TokenError|SyntaxError|"
                                    r"ValueError)\)"),
                       ("long.npy", rf"its header says it is {0xCF000074} bytes long; the "
                                    rf"file holds {len(long_)}")):
        before = (tmp_path / name).read_bytes()
        out = tmp_path / f"o_{name}"
        assert main(["reconstruct", str(tmp_path / name), "-o", str(out), "--model",
                     str(tmp_path / "m.npz"), "--quiet"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(rf"{name} is not a readable \.npy array \(" + said,
                                           err[0]), err
        assert not out.exists() and (tmp_path / name).read_bytes() == before


@pytest.mark.parametrize("bad, message", [
    (lambda y: np.zeros_like(y), "shape 1 is degenerate: all its points lie at one place"),
    (lambda y: y * 1e300, "shape 1 has coordinates up to "),
    (lambda y: np.where(np.arange(len(y))[:, None] == 7, np.nan, y), "shape 1 has non-finite"),
])
def test_cli_reconstruct_reports_a_bad_shape_of_an_array_failed(population, tmp_path, capsys,
                                                                bad, message):
    """One unusable shape among usable ones (a population study of thousands):
    it is reported failed with its reason, the others are reconstructed as
    they are alone, and the exit code is 3."""
    train, _, obs, faces = population
    model = model_from_shapes(train, faces)
    save_model(model, tmp_path / "m.npz")
    np.save(tmp_path / "a.npy", np.stack([obs[0], bad(obs[1]), obs[2]]))
    np.save(tmp_path / "good.npy", obs[[0, 2]])
    before = {f: (tmp_path / f).read_bytes() for f in ("a.npy", "m.npz")}
    out = tmp_path / "o"
    assert main(["reconstruct", str(tmp_path / "a.npy"), "-o", str(out), "--model",
                 str(tmp_path / "m.npz"), "--quiet"]) == 3
    shown = capsys.readouterr().out
    assert "3 shapes: 2 ok, 0 suspect, 1 failed" in shown
    assert f"failed: shape_00001: a.npy: {message}" in shown
    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == ["shape_00000", "shape_00001", "shape_00002"]
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert message in rows[1]["reasons"] and rows[1]["scale"] == ""
    report = json.loads((out / "report.json").read_text())
    assert report["status_counts"] == {"ok": 2, "suspect": 0, "failed": 1}
    assert report["failed"] == [{"name": "shape_00001", "reasons": rows[1]["reasons"]}]
    z = np.load(out / "reconstructions.npz")
    assert list(z["names"]) == ["shape_00000", "shape_00002"]
    assert main(["reconstruct", str(tmp_path / "good.npy"), "-o", str(tmp_path / "g"),
                 "--model", str(tmp_path / "m.npz"), "--quiet"]) == 0
    alone = np.load(tmp_path / "g" / "reconstructions.npz")
    np.testing.assert_allclose(z["reconstructions"], alone["reconstructions"], atol=1e-9)
    assert {f: (tmp_path / f).read_bytes() for f in before} == before


def test_cli_reconstruct_calls_a_shape_in_other_units_suspect(population, tmp_path):
    """Shapes given in cm (a tenth of their size in mm) are explained as well after
    the similarity alignment, but their size is far outside the training range:
    suspect, naming the units; the same shapes in mm are not."""
    train, _, obs, faces = population
    model = model_from_shapes(train, faces, fov_centres=np.zeros((len(train), 3)))
    lo, hi = model.pose.scale_range
    save_model(model, tmp_path / "m.npz")
    np.save(tmp_path / "shapes.npy", np.concatenate([obs[:2], obs[:2] / 10.0]))
    out = tmp_path / "o"
    assert main(["reconstruct", str(tmp_path / "shapes.npy"), "-o", str(out), "--model",
                 str(tmp_path / "m.npz"), "--quiet"]) == 0
    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows[:2]:
        assert "times the size" not in r["reasons"]
        assert lo / 1.21 <= 1.0 / float(r["scale"]) <= hi * 1.21
    for r in rows[2:]:
        assert r["status"] == "suspect" and "other units than mm (cm, m?)" in r["reasons"]
        assert 0.05 < 1.0 / float(r["scale"]) < 0.15
        size = float(re.search(r"the shape is ([0-9.e+-]+) times the size", r["reasons"])[1])
        assert size == pytest.approx(1.0 / float(r["scale"]), rel=1e-2)   # a tenth


@pytest.mark.parametrize("make, message", [
    (lambda d, y, f: Surface(y[:100], f[:0]).write(d / "few.vtk"), "has 100 vertices"),
    (lambda d, y, f: Surface(y, f).write(d / "a.stl"), "STL"),
    (lambda d, y, f: (d / "bad.ply").write_bytes(b"ply\nformat ascii 1.0\n"), "PLY header"),
    (lambda d, y, f: (d / "bad.vtk").write_bytes(b"# vtk DataFile\nrubbish"),
     "not a legacy VTK file"),
    # a legacy VTK file cut inside its POINTS block: VTK filled the rest (up to 1e307 mm)
    (lambda d, y, f: (Surface(y, f).write(d / "cut.vtk"),
                      (d / "cut.vtk").write_bytes((d / "cut.vtk").read_bytes()[:600])),
     "mesh 'cut.vtk': cut short: its POINTS block ("),
    (lambda d, y, f: (d / "nan.obj").write_text("v nan 0 0\nv 1 0 0\nv 0 1 0\n"),
     "non-finite"),
    # a triangle naming the vertex one past the last (OBJ counts from 1)
    (lambda d, y, f: (d / "past.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4\n"),
     "vertices that do not exist"),
    (lambda d, y, f: Surface(np.ones_like(y), f).write(d / "point.vtk"),
     "mesh 'point.vtk' is degenerate"),
    (lambda d, y, f: Surface(y * 1e12, f).write(d / "far.vtp"),
     "mesh 'far.vtp' has coordinates up to"),
    # the same surface with its vertices renumbered (a cleaning tool's re-export)
    (lambda d, y, f: _renumbered(y, f).write(d / "renumbered.vtk"),
     "mesh 'renumbered.vtk' has the model's vertex count but not its triangles"),
])
def test_cli_reconstruct_reports_bad_meshes_failed(population, mesh_folder, tmp_path, capsys,
                                                   make, message):
    """A mesh that cannot be read or used, beside a good one: reported failed in
    summary.csv, report.json and on screen with one line naming it, the good
    one reconstructed, exit 3; alone in its folder: one error line, exit 1,
    nothing written. The inputs are unchanged either way."""
    _, _, obs, faces = population
    model, _ = mesh_folder
    d = tmp_path / "in"
    d.mkdir()
    make(d, obs[0], faces)
    (bad,) = [f.name for f in d.iterdir()]
    alone = tmp_path / "alone"
    assert main(["reconstruct", str(d), "-o", str(alone), "--model", str(model),
                 "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "other" not in err[0], err
    assert not alone.exists()
    Surface(obs[0], faces).write(d / "good.vtk")
    before = _digest(d)
    out = tmp_path / "o"
    assert main(["reconstruct", str(d), "-o", str(out), "--model", str(model), "--quiet"]) == 3
    shown = capsys.readouterr()
    assert "2 shapes: 1 ok, 0 suspect, 1 failed" in shown.out and not shown.err
    assert f"  failed: {bad}: " in shown.out and message in shown.out
    with open(out / "summary.csv") as fh:
        rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert rows[bad]["status"] == "failed" and message in rows[bad]["reasons"]
    assert rows["good.vtk"]["status"] == "ok"
    assert list(np.load(out / "reconstructions.npz")["names"]) == ["good.vtk"]
    assert sorted(p.name for p in out.glob("mesh_*")) == ["mesh_good.vtk"]
    report = json.loads((out / "report.json").read_text())
    assert [f["name"] for f in report["failed"]] == [bad]
    hashed = json.loads((out / "manifest.json").read_text())["inputs"]
    assert {v["path"] for v in hashed.values()} >= {bad, "good.vtk"}
    assert _digest(d) == before
    staging = tmp_path / ".shapeprior-staging"
    assert not staging.exists() or not any(staging.iterdir())


def test_cli_reconstruct_records_the_failed_inputs_it_can_hash(population, mesh_folder,
                                                               tmp_path, monkeypatch):
    """A mesh that failed is recorded in the manifest with its hash when it can be
    read, and left out when it cannot (here it vanished while being read)
    instead of ending the run in an error."""
    import shapeprior.pipeline._reconstruct as rec

    _, _, obs, faces = population
    model, _ = mesh_folder
    d = tmp_path / "in"
    d.mkdir()
    for name in ("a.vtk", "gone.vtk"):
        Surface(obs[0], faces).write(d / name)
    (d / "short.vtk").write_bytes(b"# vtk DataFile\nrubbish")
    read = rec.read_mesh

    def vanishing(f):
        if Path(f).name == "gone.vtk":
            Path(f).unlink()
            raise FileNotFoundError(f"no such mesh file: {Path(f).name}")
        return read(f)

    monkeypatch.setattr(rec, "read_mesh", vanishing)
    out = tmp_path / "o"
    assert main(["reconstruct", str(d), "-o", str(out), "--model", str(model), "--quiet"]) == 3
    with open(out / "summary.csv") as fh:
        status = {r["name"]: r["status"] for r in csv.DictReader(fh)}
    assert status == {"a.vtk": "ok", "gone.vtk": "failed", "short.vtk": "failed"}
    hashed = {v["path"]: v["sha256"]
              for v in json.loads((out / "manifest.json").read_text())["inputs"].values()}
    assert "gone.vtk" not in hashed
    assert hashed["short.vtk"] == hashlib.sha256((d / "short.vtk").read_bytes()).hexdigest()


def test_cli_reconstruct_refuses_a_named_pipe_without_opening_it(mesh_folder, tmp_path, capsys):
    import os

    model, _ = mesh_folder
    pipe = tmp_path / "shape.vtk"
    os.mkfifo(pipe)                       # opening it would block the run
    out = tmp_path / "o"
    assert main(["reconstruct", str(pipe), "-o", str(out), "--model", str(model), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "named pipe" in err[0]
    assert not out.exists()


def test_cli_reconstruct_tells_a_label_map_from_a_mesh(mesh_folder, tmp_path, capsys):
    """A new user's first try, reconstruct on segment's label map: one line
    saying what reconstruct takes instead."""
    model, _ = mesh_folder
    (tmp_path / "label.nii.gz").write_bytes(b"\x1f\x8b")
    assert main(["reconstruct", str(tmp_path / "label.nii.gz"), "-o", str(tmp_path / "o"),
                 "--model", str(model), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label.nii.gz is an image or label map" in err[0]


def test_cli_reconstruct_never_writes_into_its_input(mesh_folder, capsys):
    model, d = mesh_folder
    before = _digest(d)
    assert main(["reconstruct", str(d), "-o", str(d / "out"), "--model", str(model),
                 "--quiet", "--force"]) == 1
    assert main(["reconstruct", str(d), "-o", str(d), "--model", str(model), "--quiet",
                 "--force"]) == 1
    assert _digest(d) == before


def test_cli_reconstruct_deidentify(population, mesh_folder, tmp_path, capsys):
    """--deidentify: no input file name reaches an output file, the screen or an error."""
    _, _, obs, faces = population
    model, _ = mesh_folder
    d = tmp_path / "Doe_John_1970"
    d.mkdir()
    Surface(obs[0], faces).write(d / "Doe_John_MRN12345.vtk")
    Surface(obs[1], faces).write(d / "Roe_Jane_MRN67890.ply")
    out = tmp_path / "o"
    assert main(["reconstruct", str(d), "-o", str(out), "--model", str(model), "--quiet",
                 "--deidentify"]) == 0
    shown = capsys.readouterr()
    secrets = (b"Doe_John", b"Roe_Jane", b"MRN12345", b"MRN67890")
    for f in out.iterdir():
        data = f.read_bytes()
        if f.suffix == ".npz":
            z = np.load(f)
            assert list(z["names"]) == ["shape_00000", "shape_00001"]
            continue
        assert not any(s in data for s in secrets), f.name
    assert not any(s.decode() in shown.out + shown.err for s in secrets)
    assert {p.name for p in out.glob("mesh_*")} == {"mesh_shape_00000.vtk",
                                                      "mesh_shape_00001.vtk"}
    # a bad mesh is named by its index in its failed row, on screen and in every file
    Surface(obs[2][:100], faces[:0]).write(d / "Poe_Ann_MRN11111.obj")
    o2 = tmp_path / "o2"
    assert main(["reconstruct", str(d), "-o", str(o2), "--model", str(model),
                 "--quiet", "--deidentify"]) == 3
    shown = capsys.readouterr()
    assert "failed: shape_00001: mesh 'shape_00001' has 100 vertices" in shown.out
    secrets += (b"Poe_Ann", b"MRN11111")
    assert not any(s.decode() in shown.out + shown.err for s in secrets)
    for f in o2.iterdir():
        assert not any(s in f.read_bytes() for s in secrets), f.name
    # ... and in the one error line when no mesh can be used
    alone = tmp_path / "Zed_Zoe_MRN33333"
    alone.mkdir()
    (d / "Poe_Ann_MRN11111.obj").rename(alone / "Poe_Ann_MRN11111.obj")
    assert main(["reconstruct", str(alone), "-o", str(tmp_path / "o5"), "--model", str(model),
                 "--quiet", "--deidentify"]) == 1
    err = capsys.readouterr().err
    assert "mesh 'shape_00000' has 100" in err and "Poe_Ann" not in err and "MRN" not in err, err
    # meshes of the same name in patients' folders (segment's outputs): the bad one is
    # named by its path below the input, or by its index alone
    for i, who in enumerate(("Doe_John", "Roe_Jane")):
        (d / who).mkdir()
        Surface(obs[i] if i == 0 else obs[i][:100], faces if i == 0 else faces[:0]).write(
            d / who / "mesh.vtk")
    assert main(["reconstruct", str(d), "-o", str(tmp_path / "o4"), "--model", str(model),
                 "--quiet"]) == 3
    assert "mesh 'Roe_Jane/mesh.vtk' has 100 vertices" in capsys.readouterr().out
    assert main(["reconstruct", str(d), "-o", str(tmp_path / "o6"), "--model", str(model),
                 "--quiet", "--deidentify"]) == 3
    shown = capsys.readouterr().out
    assert "mesh 'shape_00002' has 100" in shown and "Roe" not in shown and "Doe" not in shown
    # a damaged mesh in a patient's folder: the reader names the file alone (not its path
    # below the input), and that name is scrubbed from its failed row too
    (d / "Roe_Jane" / "mesh.vtk").unlink()
    (d / "Roe_Jane" / "Roe_Jane_MRN67890.vtk").write_bytes(b"# vtk DataFile\nrubbish")
    o7 = tmp_path / "o7"
    assert main(["reconstruct", str(d), "-o", str(o7), "--model", str(model), "--quiet",
                 "--deidentify"]) == 3
    shown = capsys.readouterr()
    assert "failed: shape_00002: " in shown.out
    assert not any(s.decode() in shown.out + shown.err for s in secrets)
    for f in o7.iterdir():
        assert not any(s in f.read_bytes() for s in secrets), f.name
    empty = tmp_path / "Moe_Max_MRN22222"
    empty.mkdir()
    assert main(["reconstruct", str(empty), "-o", str(tmp_path / "o3"), "--model", str(model),
                 "--quiet", "--deidentify"]) == 1
    err = capsys.readouterr().err
    assert "no meshes" in err and "Moe_Max" not in err


def test_reconstruct_default_is_the_hybrid_on_training_shapes(population, tmp_path):
    """The reconstruction default is the hybrid chosen on the held-out kidneys'
    tuning split: SSC-L0 finds the gross errors, SSC-L1 with 3 % of lambda1
    fits the inliers; 'l1' and 'l0' are the solvers alone; an unknown method is
    refused by name."""
    import shapeprior
    from shapeprior.ssc import (DICTIONARY_HYBRID_ALPHA1, HYBRID_REFIT,
                                solver_options)

    assert HYBRID_REFIT == 0.03
    assert solver_options("hybrid") == {"method": "l0", "refit": 0.03, "alpha1": None}
    assert solver_options("hybrid", 0.1)["refit"] == 0.1
    assert solver_options("l1") == {"method": "l1", "refit": None, "alpha1": None}
    assert solver_options("auto") == solver_options("hybrid")
    assert solver_options("auto", None, "dictionary") == {
        "method": "l1", "refit": 0.01, "alpha1": DICTIONARY_HYBRID_ALPHA1}
    assert solver_options("l0", 0.2, "dictionary") == {"method": "l0", "refit": 0.2,
                                                        "alpha1": None}
    assert solver_options("auto", None, "dictionary", 0.1)["alpha1"] == 0.1
    assert solver_options("l1", None, "shapes", 0.1)["alpha1"] == 0.1
    train, clean, obs, faces = population
    model = model_from_shapes(train, faces)
    dic = model.prior_dictionary("auto")
    y = obs[1]
    _same(shapeprior.reconstruct(y, model), sparse_shape_composition(
        y, dic, method="l0", refit=0.03))
    _same(shapeprior.reconstruct(y, model, method="l1"), sparse_shape_composition(y, dic))
    assert shapeprior.reconstruct(y, model).info.get("refit") == 0.03
    with pytest.raises(ValueError, match="method"):
        shapeprior.reconstruct(y, model, method="l2")


def test_dictionary_hybrid_leaves_a_displaced_patch_to_e(population):
    """From a learned dictionary the default is the hybrid: strongly sparse SSC-L1
    finds the gross errors, SSC-L1 fits the inliers. More of a displaced patch
    that plain SSC-L1 partly follows with its atoms is overridden, and the
    reconstruction is much closer to the clean shape (synthetic family, 20 %
    of vertices displaced 10-30 mm: 3.4 vs 7.2 mean RMS)."""
    import shapeprior
    from shapeprior.ssc import DICTIONARY_HYBRID_ALPHA1

    train, clean, obs, faces = population
    model = model_from_shapes(train, faces, n_atoms=20, n_nonzero=5,
                              dictionary_kind="deviations")
    dic = model.prior_dictionary("dictionary")
    rng = np.random.default_rng(3)
    errs, caught = {"l1": [], "auto": []}, {"l1": [], "auto": []}
    for c in clean:
        y, hit = corrupt_patches(c, 0.2, rng, magnitude=(10.0, 30.0))
        for method in errs:
            r = shapeprior.reconstruct(y, model, prior="dictionary", method=method)
            errs[method].append(np.sqrt(np.mean(np.sum((r.reconstruction - c) ** 2, 1))))
            caught[method].append(np.mean(r.overridden[hit]))
    assert np.mean(errs["auto"]) < 0.7 * np.mean(errs["l1"]), errs
    assert np.mean(caught["auto"]) > np.mean(caught["l1"]) + 0.05, caught
    # the same solve as the solver's own options
    y = obs[1]
    _same(shapeprior.reconstruct(y, model, prior="dictionary"), sparse_shape_composition(
        y, dic, alpha1=DICTIONARY_HYBRID_ALPHA1, refit=0.01))
    # an alpha1 of the caller's replaces the hybrid's; a bad one is refused by name
    _same(shapeprior.reconstruct(y, model, prior="dictionary", alpha1=0.01),
          sparse_shape_composition(y, dic, alpha1=0.01, refit=0.01))
    for bad in (0.0, -1.0, float("nan"), "big"):
        with pytest.raises(ValueError, match="alpha1"):
            sparse_shape_composition(y, dic, alpha1=bad)


def test_status_tells_a_creeping_alignment_from_an_unsettled_one(population):
    """Alignment rounds that run out while moving less than SETTLED_MOVE of the
    shape's radius leave the reconstruction 'ok' (converged stays False, the
    move is reported); rounds cut off while still moving make it 'suspect'."""
    import shapeprior
    from shapeprior.pipeline._reconstruct import SETTLED_MOVE, _status

    train, clean, obs, faces = population
    model = model_from_shapes(train, faces)
    y = obs[0]
    creep = shapeprior.reconstruct(y, model, method="l1", align_tol=1e-300)
    assert not creep.converged and creep.info["solver_converged"]
    assert creep.info["alignment_move"] <= SETTLED_MOVE
    assert _status(creep, y)[0] == "ok"
    cut = shapeprior.reconstruct(y, model, method="l1", max_align_iter=1)
    assert not cut.converged and cut.info["alignment_move"] > SETTLED_MOVE
    status, _, reasons = _status(cut, y)
    assert status == "suspect" and any("did not settle" in r for r in reasons)


def _renumbered(y, faces, seed=0):
    """The surface (y, faces) with its vertices in another order, its triangles
    renumbered to match: the same surface, no longer in correspondence."""
    perm = np.random.default_rng(seed).permutation(len(y))
    new_index = np.argsort(perm)
    return Surface(y[perm], new_index[faces])


def test_same_triangles_ignores_order_orientation_and_start(population):
    from shapeprior.mesh import same_triangles

    faces = population[3]
    rng = np.random.default_rng(1)
    shuffled = np.roll(faces[rng.permutation(len(faces))], 1, axis=1)[:, ::-1]
    assert same_triangles(faces, shuffled)
    assert not same_triangles(faces, _renumbered(np.zeros((N, 3)), faces).faces)
    assert not same_triangles(faces, faces[:-1])
    extra = np.array([[0, 0, 1]])                     # a triangle the mesh does not have
    assert not same_triangles(faces, np.vstack([faces, extra]))


def test_load_shapes_checks_every_input(population, mesh_folder, tmp_path):
    from shapeprior.pipeline._reconstruct import load_shapes

    train, clean, obs, faces = population
    _, d = mesh_folder
    (d / ".hidden.vtk").write_bytes(b"not read")                  # hidden: skipped
    (d / ".cache").mkdir()
    Surface(obs[4], faces).write(d / ".cache" / "old.vtk")
    got = load_shapes(d, N)
    assert got.meshes and len(got.names) == 4 and not any(n.startswith(".") for n in got.names)
    assert got.kept == [0, 1, 2, 3] and not got.failed and got.shapes.shape == (4, N, 3)
    one = tmp_path / "one.npy"
    np.save(one, obs[0])                                          # one (N, 3) shape
    got = load_shapes(one, N)
    assert got.shapes.shape == (1, N, 3) and not got.meshes and got.names == ["shape_00000"]
    bad = obs[:3].copy()
    bad[1, 5, 2] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    got = load_shapes(tmp_path / "bad.npy", N)
    assert got.kept == [0, 2] and list(got.failed) == [1]
    assert "shape 1 has non-finite" in got.failed[1]
    np.testing.assert_array_equal(got.shapes, obs[[0, 2]])
    few = tmp_path / "few"
    few.mkdir()
    Surface(obs[0][: N - 2], faces[np.all(faces < N - 2, axis=1)]).write(few / "few.vtk")
    with pytest.raises(ValueError, match=f"has {N - 2} vertices"):
        load_shapes(few, N)
    Surface(obs[1], faces).write(few / "good.vtk")
    got = load_shapes(few, N)
    assert got.names == ["few.vtk", "good.vtk"] and got.kept == [1]
    assert f"has {N - 2} vertices" in got.failed[0]
    np.testing.assert_allclose(got.shapes[0], obs[1], atol=1e-5)
    # renumbered vertices are refused given the model's triangles; the model's
    # triangles in another order, orientation and start are the same mesh
    _renumbered(obs[2], faces).write(few / "renumbered.vtk")
    Surface(obs[3], np.roll(faces[::-1], 1, axis=1)[:, ::-1]).write(few / "turned.vtk")
    got = load_shapes(few, N, faces)
    assert got.names == ["few.vtk", "good.vtk", "renumbered.vtk", "turned.vtk"]
    assert got.kept == [1, 3] and "not its triangles" in got.failed[2]
    assert load_shapes(few, N).kept == [1, 2, 3]         # without the model's triangles


def test_status_reasons():
    """The median residual is judged against the shape's own radius; the
    overridden fraction over the visible vertices; an unconverged solve is
    suspect."""
    from types import SimpleNamespace

    from shapeprior.pipeline._reconstruct import _status

    rng = np.random.default_rng(0)
    rec = rng.normal(0.0, 100.0, (200, 3))                         # RMS radius ~170 mm
    visible = np.ones(200, bool)
    visible[:100] = False
    over = np.zeros(200, bool)
    over[100:160] = True                                          # 60 % of the visible
    r = SimpleNamespace(reconstruction=rec, visible=visible, overridden=over,
                        converged=True, info={"solver_converged": True})
    y = rec + 10.0 * rng.normal(size=rec.shape) / np.sqrt(3)      # ~10 mm: 6 % of the radius
    status, frac, reasons = _status(r, y)
    assert frac == pytest.approx(0.6) and status == "suspect"
    assert len(reasons) == 1 and "overrode 60%" in reasons[0]
    r.overridden = np.zeros(200, bool)
    assert _status(r, y)[0] == "ok"                               # 10 mm is small here
    r.info = {"solver_converged": False}
    status, _, reasons = _status(r, y)
    assert status == "suspect" and reasons == ["the sparse solve did not converge"]


def test_cli_reconstruct_solves_with_the_method_and_prior_asked_for(population, tmp_path):
    """reconstruct --method l1 --prior dictionary: what the files hold is what
    the Python API gives for that method and prior (not the default hybrid from
    the shapes), and report.json says so."""
    import json

    import shapeprior

    train, clean, obs, faces = population
    save_model(model_from_shapes(train, faces, n_atoms=12), tmp_path / "atoms.npz")
    np.save(tmp_path / "shapes.npy", obs[:3])
    out = tmp_path / "out"
    assert main(["reconstruct", str(tmp_path / "shapes.npy"), "-o", str(out), "--model",
                 str(tmp_path / "atoms.npz"), "--quiet", "--method", "l1",
                 "--prior", "dictionary"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["method"] == "l1" and rep["prior"]["used"] == "dictionary"
    assert rep["prior"]["n_atoms"] == 12
    z = np.load(out / "reconstructions.npz")
    api = shapeprior.reconstruct_many(obs[:3], tmp_path / "atoms.npz", method="l1",
                                      prior="dictionary")
    assert np.allclose(z["reconstructions"], np.stack([r.reconstruction for r in api]),
                       rtol=0, atol=1e-8)
    default = shapeprior.reconstruct_many(obs[:3], tmp_path / "atoms.npz")
    assert not np.allclose(z["reconstructions"],
                           np.stack([r.reconstruction for r in default]), atol=1e-3)


def test_cli_reconstruct_finds_the_side_of_a_paired_organ(population, tmp_path, capsys):
    """A model of one side of a paired organ (the other mirrored onto it) explains a
    shape of the other side only mirrored (segment --side right writes one): --side
    auto fits each as given and mirrored and keeps the closer, naming the side; the
    reconstruction, its mesh (triangles facing out) and |e| are in the input's
    frame. Fitted as given (the behaviour before, --side left) the mirrored shapes
    come out farther from the truth. A model of no paired organ refuses --side."""
    train, clean, obs, faces = population
    mirror = np.array([-1.0, 1.0, 1.0])
    save_model(model_from_shapes(train, faces, metadata={
        "organ": "blob", "side": "left (right mirrored)"}), tmp_path / "paired.npz")
    d = tmp_path / "meshes"
    d.mkdir()
    for name, y in (("a_left", obs[0]), ("b_left", obs[2]), ("c_right", obs[0] * mirror),
                    ("d_right", obs[2] * mirror)):
        Surface(y, faces[:, ::-1] if "right" in name else faces).write(d / f"{name}.vtk")
    truth = np.stack([clean[0], clean[2], clean[0] * mirror, clean[2] * mirror])
    err = {}
    for side in ("auto", "left", "right"):
        out = tmp_path / side
        assert main(["reconstruct", str(d), "-o", str(out), "--model",
                     str(tmp_path / "paired.npz"), "--quiet", "--side", side]) == 0
        with open(out / "summary.csv") as fh:
            rows = list(csv.DictReader(fh))
        z = np.load(out / "reconstructions.npz")
        err[side] = np.linalg.norm(z["reconstructions"] - truth, axis=2).mean(1)
        if side == "auto":
            assert [r["side"] for r in rows] == ["left", "left", "right", "right"]
            assert list(z["mirrored"]) == [False, False, True, True]
            assert "2 left, 2 right" in capsys.readouterr().out
            for r in rows:     # the kept fit is the closer one
                assert float(r["median_residual_mm"]) < float(r["other_side_median_residual_mm"])
            m = read_mesh(out / "mesh_c_right.vtk")
            assert np.allclose(m.verts, z["reconstructions"][2]) and m.volume() > 0
        else:
            assert {r["side"] for r in rows} == {side}
    assert np.all(err["auto"] < 2.0)                  # every shape near its truth
    assert np.allclose(err["auto"][:2], err["left"][:2]) and np.allclose(
        err["auto"][2:], err["right"][2:])
    assert np.all(err["left"][2:] > 2.0 * err["auto"][2:])   # mirrored, fitted as given
    save_model(model_from_shapes(train, faces), tmp_path / "one.npz")
    assert main(["reconstruct", str(d), "-o", str(tmp_path / "x"), "--model",
                 str(tmp_path / "one.npz"), "--quiet", "--side", "right"]) == 1
    assert "not of a paired organ" in capsys.readouterr().err


def test_api_reconstruct_finds_the_side_of_a_paired_organ(population):
    """shapeprior.reconstruct and reconstruct_many: the same side choice as the
    command (info['side'], info['mirrored']), the reconstruction in the input's
    frame, per-shape weights carried to both solves; side='right' for a model of no
    paired organ is refused."""
    import shapeprior

    train, clean, obs, faces = population
    mirror = np.array([-1.0, 1.0, 1.0])
    paired = model_from_shapes(train, faces, metadata={"side": "left (right mirrored)"})
    r = shapeprior.reconstruct(obs[0] * mirror, paired)
    assert r.info["side"] == "right" and r.info["mirrored"]
    assert np.linalg.norm(r.reconstruction - clean[0] * mirror, axis=1).mean() < 2.0
    as_given = shapeprior.reconstruct(obs[0] * mirror, paired, side="left")
    assert as_given.info["side"] == "left" and not as_given.info["mirrored"]
    assert (np.linalg.norm(as_given.reconstruction - clean[0] * mirror, axis=1).mean()
            > 2.0 * np.linalg.norm(r.reconstruction - clean[0] * mirror, axis=1).mean())
    w = np.ones((2, N))
    w[1, :40] = 0.0                                   # a shape with missing vertices
    many = shapeprior.reconstruct_many(np.stack([obs[2], obs[2] * mirror]), paired, weights=w)
    assert [m.info["side"] for m in many] == ["left", "right"]
    assert not many[1].visible[:40].any() and many[1].visible[40:].all()
    one = model_from_shapes(train, faces)
    assert shapeprior.reconstruct(obs[0], one).info["side"] == "none"
    with pytest.raises(ValueError, match="not of a paired organ"):
        shapeprior.reconstruct(obs[0], one, side="right")


def test_the_side_is_judged_by_the_visible_vertices_alone():
    """The median residual that picks a paired organ's side ignores the vertices
    of weight 0: they are not fitted, and a mesh may carry anything there."""
    from types import SimpleNamespace

    from shapeprior.segmentation._sides import median_residual

    recon = np.zeros((10, 3))
    y = recon.copy()
    y[:, 0] = [1.0, 2.0, 3.0, 4.0, 100, 100, 100, 100, 100, 100]
    visible = np.arange(10) < 4
    assert median_residual(SimpleNamespace(reconstruction=recon, visible=visible), y) == 2.5
    assert median_residual(SimpleNamespace(reconstruction=recon, visible=~visible), y) == 100
    assert median_residual(SimpleNamespace(reconstruction=recon,
                                           visible=np.zeros(10, bool)), y) == 0.0
