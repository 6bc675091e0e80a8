import re
import struct

import numpy as np
import pytest

from _phantoms import ellipsoid_area, ellipsoid_label_map, rotation
from shapeprior.io import read_label_map
from shapeprior.mesh import (Surface, crop_to_labels, icosphere, kidney_masks, label_mask,
                             mask_box, mask_to_surface)

A = (30.0, 20.0, 15.0)
C = np.array([10.0, -40.0, 25.0])

GEOMETRIES = {
    "identity": np.eye(3),
    "oblique": rotation(0, 20) @ rotation(2, 35),
    "flipped_lps_ras": np.diag([-1.0, -1.0, 1.0]),       # RAS-stored data read as LPS
    "permuted_kits_like": np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=float),
}


@pytest.mark.parametrize("geom", list(GEOMETRIES))
def test_ellipsoid_surface_in_physical_units(tmp_path, geom):
    D = GEOMETRIES[geom]
    # a larger field of view for the permuted axes (the long axis is along z)
    size = (60, 90, 110) if geom == "permuted_kits_like" else (110, 90, 60)
    spacing = (2.0, 0.9, 0.8) if geom == "permuted_kits_like" else (0.8, 0.9, 2.0)
    if geom == "oblique":
        size = (120, 120, 60)
    path = tmp_path / "ell.nii.gz"
    ellipsoid_label_map(path, A, C, spacing=spacing, size=size, direction=D)
    vol = read_label_map(path)
    assert np.allclose(vol.direction, D, atol=1e-6)
    s = mask_to_surface(vol, label_mask(vol, 1), iso_spacing=0.75, smooth_mm=0.75)
    vol_true = 4 / 3 * np.pi * np.prod(A)
    assert s.volume() == pytest.approx(vol_true, rel=0.03)
    assert s.area() == pytest.approx(ellipsoid_area(*A), rel=0.04)
    # centre and extent are in physical space, not voxel space
    assert np.allclose(s.verts.mean(0), C, atol=0.6)
    ext = (s.verts.max(0) - s.verts.min(0)) / 2
    assert np.allclose(ext, A, atol=2.0)
    # outward normals
    out = np.sum(s.vertex_normals() * (s.verts - C), axis=1)
    assert np.mean(out > 0) > 0.99


def test_label_map_round_trip_keeps_geometry(tmp_path):
    import SimpleITK as sitk

    D = rotation(1, 17)
    img = ellipsoid_label_map(tmp_path / "a.nii.gz", direction=D, spacing=(0.7, 1.1, 3.0))
    vol = read_label_map(tmp_path / "a.nii.gz")
    assert np.allclose(vol.spacing, img.GetSpacing())
    assert np.allclose(vol.origin, img.GetOrigin(), atol=1e-4)
    back = vol.to_sitk()
    p = np.array([3.0, 5.0, 7.0])
    assert np.allclose(vol.index_to_physical(p[None])[0],
                       back.TransformContinuousIndexToPhysicalPoint(p.tolist()), atol=1e-4)
    assert np.allclose(vol.physical_to_index(vol.index_to_physical(p[None])), p[None])
    sitk.WriteImage(back, str(tmp_path / "b.nii.gz"))
    assert np.array_equal(read_label_map(tmp_path / "b.nii.gz").array, vol.array)


def test_kidney_split_by_side(tmp_path):
    def second(arr):  # a second blob on the other side (lower x index)
        arr[5:25, 35:55, 12:28] = 2

    ellipsoid_label_map(tmp_path / "k.nii.gz", (12, 10, 8), (40.0, 0.0, 0.0), spacing=(1, 1, 1),
                        size=(100, 90, 40), origin=(-20.0, -45.0, -20.0), extra=second)
    vol = read_label_map(tmp_path / "k.nii.gz")
    masks = kidney_masks(vol, (1, 2))
    assert set(masks) == {"left", "right"}        # LPS: larger x is the patient's left
    cl = np.argwhere(masks["left"]).mean(0)[::-1]
    cr = np.argwhere(masks["right"]).mean(0)[::-1]
    assert vol.index_to_physical(cl[None])[0, 0] > vol.index_to_physical(cr[None])[0, 0]


@pytest.mark.parametrize("x,side", [(40.0, "left"), (-40.0, "right")])
def test_single_kidney_side_from_the_field_of_view_centre(tmp_path, x, side):
    """One kidney (e.g. after nephrectomy): its side comes from its position
    relative to the centre of the field of view (LPS: +x is left)."""
    ellipsoid_label_map(tmp_path / "k.nii.gz", (12, 10, 8), (x, 0.0, 0.0), spacing=(1, 1, 1),
                        size=(140, 90, 40), origin=(-70.0, -45.0, -20.0))
    masks = kidney_masks(read_label_map(tmp_path / "k.nii.gz"), (1, 2))
    assert list(masks) == [side]


@pytest.mark.parametrize("x,side", [(40.0, "left"), (-40.0, "right")])
def test_the_crop_gives_the_same_masks_surfaces_and_sides(tmp_path, x, side):
    """build-model works on the organ's bounding box: the same surface in the same
    physical place, and a lone kidney's side from the whole scan's centre."""
    ellipsoid_label_map(tmp_path / "k.nii.gz", (12, 10, 8), (x, 0.0, 0.0), spacing=(1, 1.5, 2),
                        size=(140, 90, 40), origin=(-70.0, -45.0, -20.0))
    vol = read_label_map(tmp_path / "k.nii.gz")
    box = crop_to_labels(vol, (1, 2), slab=7)      # slabs that do not divide the depth
    idx = np.argwhere(vol.array > 0)
    assert box.array.shape == tuple(idx.max(0) - idx.min(0) + 1)
    assert np.count_nonzero(box.array) == len(idx)
    first = idx.min(0)
    assert np.allclose(box.index_to_physical(np.zeros((1, 3))),
                       vol.index_to_physical(first[::-1][None].astype(float)))
    whole, cropped = kidney_masks(vol, (1, 2)), kidney_masks(box, (1, 2), fov_centre=vol.centre())
    assert list(whole) == list(cropped) == [side]
    a = mask_to_surface(vol, whole[side], 1.0, 1.0)
    b = mask_to_surface(box, cropped[side], 1.0, 1.0)
    assert np.array_equal(a.faces, b.faces) and np.allclose(a.verts, b.verts, atol=1e-9)
    with pytest.raises(ValueError, match=r"label\(s\) \[7\] not present"):
        crop_to_labels(vol, 7)


def test_dense_samples_are_the_lattice_without_repeats():
    """The quality check's surface samples: every barycentric lattice point of every
    triangle once (the sort that removed repeats is gone, the set is the same)."""
    from shapeprior.correspond._nicp import _dense_samples

    v, f = icosphere(2)
    v = v * np.array([30.0, 20.0, 10.0])
    for order in (1, 3, 6):
        ij = [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]
        bary = np.array([(i, j, order - i - j) for i, j in ij], dtype=float) / order
        full = np.unique(np.round(np.einsum("bk,fkd->fbd", bary, v[f]).reshape(-1, 3), 6),
                         axis=0)
        got = _dense_samples(Surface(v, f), order)
        assert len(got) == len(full)
        assert np.array_equal(np.unique(np.round(got, 6), axis=0), full)


def test_mesh_edges_are_each_edge_once_in_lexicographic_order():
    """Every edge of a closed mesh once (E = 3F/2 on an icosphere), as the
    sorted unique vertex pairs."""
    from shapeprior.mesh import mesh_edges

    v, f = icosphere(3)
    f = np.random.default_rng(0).permutation(f)
    ref = np.unique(np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]),
                            axis=1), axis=0)
    got = mesh_edges(f, len(v))
    assert len(got) == 3 * len(f) // 2
    assert np.array_equal(got, ref)


def test_vertex_normals_are_the_area_weighted_sums_of_the_face_normals():
    """Each vertex normal is the unit sum of its faces' area-weighted normals,
    summed corner by corner in face order (np.add.at's order, to the last bit)."""
    rng = np.random.default_rng(1)
    v, f = icosphere(3)
    s = Surface(v * np.array([30.0, 20.0, 10.0]) + rng.normal(scale=0.5, size=v.shape), f)
    fn = s.face_normals(unit=False)
    ref = np.zeros_like(s.verts)
    for k in range(3):
        np.add.at(ref, f[:, k], fn)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.array_equal(s.vertex_normals(), ref)


def test_missing_label_and_empty_mask_are_clear_errors(tmp_path):
    ellipsoid_label_map(tmp_path / "e.nii.gz")
    vol = read_label_map(tmp_path / "e.nii.gz")
    with pytest.raises(ValueError, match="not present"):
        label_mask(vol, 7)
    with pytest.raises(ValueError, match="empty"):
        mask_to_surface(vol, np.zeros(vol.array.shape, dtype=bool))


def test_unreadable_file(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read"):
        read_label_map(bad)
    with pytest.raises(FileNotFoundError):
        read_label_map(tmp_path / "missing.nii.gz")


@pytest.mark.parametrize("level", [0, 2, 4])
def test_icosphere_is_closed_genus0(level):
    v, f = icosphere(level)
    assert len(v) == 10 * 4 ** level + 2
    edges = {tuple(sorted(e)) for t in f for e in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}
    assert len(v) - len(edges) + len(f) == 2
    s = Surface(v, f)
    assert s.volume() > 0
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0)


def test_surface_of_a_sphere_on_an_anisotropic_grid_is_round(tmp_path):
    """The contouring grid is isotropic in mm whatever the voxel shape: a 12 mm
    sphere on 0.8 x 0.9 x 2.5 mm voxels comes out round (measured: radius
    11.84 +- 0.13 mm; a grid resampled with its axes mixed up gives +- 0.34)."""
    ellipsoid_label_map(tmp_path / "s.nii.gz", (12, 12, 12), (0, 0, 0), spacing=(0.8, 0.9, 2.5),
                        size=(50, 45, 18))
    vol = read_label_map(tmp_path / "s.nii.gz")
    s = mask_to_surface(vol, label_mask(vol, (1,)), 1.0, 1.5)
    r = np.linalg.norm(s.verts - s.verts.mean(0), axis=1)
    assert r.std() < 0.2 and abs(r.mean() - 12.0) < 0.4


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "flipped"])
def test_mask_box_is_the_tight_box_of_the_foreground(layout):
    rng = np.random.default_rng(11)
    for trial in range(30):
        shape = tuple(int(n) for n in rng.integers(1, 12, 3))
        m = rng.random(shape) < rng.choice([0.002, 0.05, 0.5])
        m.flat[rng.integers(m.size)] = True
        if layout == "transposed":
            m = m.transpose(2, 0, 1)
        elif layout == "flipped":
            m = m[::-1, :, ::-1]
        idx = np.argwhere(m)
        want = tuple(slice(int(a), int(b) + 1) for a, b in zip(idx.min(0), idx.max(0)))
        assert mask_box(m) == want
        assert mask_box(m.astype(np.uint8)) == want
    with pytest.raises(ValueError, match="empty"):
        mask_box(np.zeros((3, 4, 5), bool))


def test_dice_values():
    from shapeprior.mesh import dice

    a = np.zeros((4, 5, 6), bool)
    b = np.zeros_like(a)
    assert dice(a, b) == 1.0                   # two empty masks agree
    a[1:3, 1:3, 1:3] = True                    # 8 voxels
    assert dice(a, b) == 0.0
    b[1:3, 1:3, 1:2] = True                    # 4 of them
    assert dice(a, b) == pytest.approx(2 * 4 / (8 + 4))


def test_grown_box_grows_each_side_and_stops_at_the_array():
    """A box grown by a margin (one for all axes, or one per axis) holds every
    voxel within that many voxels of the box, clipped to the array."""
    from shapeprior.mesh import grown_box, mask_box

    box = (slice(2, 5), slice(0, 3), slice(7, 10))
    assert grown_box(box, 2, (10, 10, 10)) == (slice(0, 7), slice(0, 5), slice(5, 10))
    assert grown_box(box, (1, 0, 3), (10, 10, 12)) == (slice(1, 6), slice(0, 3), slice(4, 12))
    m = np.zeros((9, 11, 13), bool)
    m[3:5, 4:7, 5:6] = True
    b = grown_box(mask_box(m), 2, m.shape)
    near = np.zeros_like(m)
    near[1:7, 2:9, 3:8] = True                       # the mask grown by 2 along each axis
    inside = np.zeros_like(m)
    inside[b] = True
    assert np.array_equal(inside, near)


@pytest.mark.parametrize("fmt", ["vtk", "vtp", "ply", "obj"])
def test_a_mesh_is_read_back_in_vertex_order_with_its_triangles(tmp_path, fmt):
    """Every format read_mesh takes gives back what Surface.write wrote: the
    vertices in file order (the correspondence) and the triangles."""
    from shapeprior.mesh import read_mesh

    v, f = icosphere(2)
    v = v * np.array([30.0, 20.0, 15.0]) + np.array([1.5, -2.0, 3.25])
    Surface(v, f).write(tmp_path / f"m.{fmt}")
    s = read_mesh(tmp_path / f"m.{fmt}")
    np.testing.assert_allclose(s.verts, v, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(s.faces, f)


def _written_by_vtk(path, surface, ascii_, version):
    """``surface`` written to ``path`` as VTK's own legacy writer writes it (ASCII,
    as 3D Slicer does, or binary; file version 4.2 or 5.1)."""
    from vtkmodules.vtkIOLegacy import vtkPolyDataReader, vtkPolyDataWriter

    surface.write(path)
    r = vtkPolyDataReader()
    r.SetFileName(str(path))
    r.Update()
    w = vtkPolyDataWriter()
    w.SetInputData(r.GetOutput())
    w.SetFileName(str(path))
    w.SetFileTypeToASCII() if ascii_ else w.SetFileTypeToBinary()
    w.SetFileVersion(version)
    w.Write()


@pytest.mark.parametrize("ascii_", [False, True])
@pytest.mark.parametrize("version", [42, 51])
def test_a_legacy_vtk_mesh_cut_short_is_refused(tmp_path, ascii_, version):
    """VTK's legacy reader fills a block the file does not hold (coordinates
    from whatever its memory held, 1e307 mm seen; triangles of arbitrary
    vertices) and drops or keeps a POLYGONS block it cannot finish, without an
    error; what it makes up differs from run to run. read_mesh refuses such a
    file in one line wherever it is cut, binary (as shapeprior writes it) or
    ASCII (as Slicer writes it), file version 4.2 or 5.1, and reads the whole
    one back exactly."""
    from shapeprior.mesh import read_mesh

    v, f = icosphere(3)
    v = v * np.array([30.0, 20.0, 15.0])
    p = tmp_path / "m.vtk"
    _written_by_vtk(p, Surface(v, f), ascii_, version)
    whole = p.read_bytes()
    s = read_mesh(p)
    np.testing.assert_allclose(s.verts, v, atol=1e-6)
    np.testing.assert_array_equal(s.faces, f)
    start = whole.index(b"POINTS")
    for cut in range(start, len(whole) - 1, max((len(whole) - start) // 97, 1)):
        p.write_bytes(whole[:cut])
        with pytest.raises(ValueError, match=r"mesh 'm.vtk': (cut short|no points|triangles)"):
            read_mesh(p)


@pytest.mark.parametrize("ascii_", [False, True])
@pytest.mark.parametrize("version", [42, 51])
def test_a_legacy_vtk_mesh_with_damaged_cells_is_refused_not_crashed(tmp_path, ascii_, version):
    """VTK's legacy reader walks a cell block by the counts in it: a count or an
    offset changed by a damaged byte sent it past its buffer and killed the
    process (segmentation fault; bench/fuzz_readers.py found 31 in 1,500 mutated
    files). read_mesh reads the blocks itself and refuses, in one line, a count
    that runs past the block, offsets that do not step through the connectivity,
    a cell naming a point that does not exist and a cell line that declares more
    cells than its data holds; a file cut inside its FIELD block (which also
    crashed VTK) is read from its POINTS on, which it lacks."""
    from shapeprior.mesh import read_mesh

    v, f = icosphere(2)
    p = tmp_path / "m.vtk"
    _written_by_vtk(p, Surface(v * 20.0, f), ascii_, version)
    whole = p.read_bytes()
    np.testing.assert_array_equal(read_mesh(p).faces, f)
    start = whole.index(b"\nPOLYGONS ") + 1
    line_end = whole.index(b"\n", start) + 1
    n_tri = len(f)

    def damaged(k, value):
        """The polygons' k-th value (v4: counts and indices; v5: offsets, then the
        connectivity) set to ``value``."""
        if ascii_:
            head, body = whole[:line_end], whole[line_end:]
            if version == 51:
                head += body[:body.index(b"\n") + 1]          # the OFFSETS line
                body = body[body.index(b"\n") + 1:]
                if k > n_tri:                                   # into CONNECTIVITY
                    cut = body.index(b"CONNECTIVITY")
                    cut = body.index(b"\n", cut) + 1
                    head, body, k = head + body[:cut], body[cut:], k - n_tri - 1
            tokens = re.split(rb"(\s+)", body)
            tokens[2 * k] = str(value).encode()
            return head + b"".join(tokens)
        if version == 42:
            at, fmt = line_end + 4 * k, ">i"
        else:
            at = whole.index(b"\n", whole.index(b"OFFSETS", start)) + 1
            if k > n_tri:
                at = whole.index(b"\n", whole.index(b"CONNECTIVITY", start)) + 1
                k -= n_tri + 1
            at, fmt = at + 8 * k, ">q"
        return whole[:at] + struct.pack(fmt, value) + whole[at + struct.calcsize(fmt):]

    if version == 42:
        cases = [(damaged(0, 2_000_000_000), r"a cell count in its POLYGONS block "
                  r"\(2e\+09\) runs past the block's end"),
                 (damaged(4, 7), r"(a cell count in its POLYGONS block \(7\) runs past|"
                  r"its POLYGONS line declares \d+ cells, its data holds \d+)"),
                 (damaged(5, len(v) + 9), r"its POLYGONS block names points that do not "
                  rf"exist \(of {len(v)}\)")]
    else:
        cases = [(damaged(1, 2_000_000_000), r"its POLYGONS block's OFFSETS do not step "
                  r"through its CONNECTIVITY"),
                 (damaged(n_tri + 1 + 4, -3), r"its POLYGONS block names points that do "
                  r"not exist")]
    declared = whole[start:line_end].split()
    more = whole[:start] + b" ".join([declared[0], str(int(declared[1]) + 1).encode(),
                                      declared[2]]) + b"\n" + whole[line_end:]
    cases.append((more, r"(declares \d+ cells, its data holds \d+|cut short)"))
    for data, msg in cases:
        p.write_bytes(data)
        with pytest.raises(ValueError) as err:
            read_mesh(p)
        assert re.match(r"mesh 'm\.vtk': (damaged|cut short or damaged|cut short): ",
                        str(err.value)) and re.search(msg, str(err.value)), err.value
    # our own file cut inside its FIELD block (SPACE, UNITS: before the POINTS)
    Surface(v * 20.0, f).write(p)
    own = p.read_bytes()
    for cut in range(own.index(b"FIELD"), own.index(b"POINTS")):
        p.write_bytes(own[:cut])
        with pytest.raises(ValueError, match=r"^mesh 'm\.vtk': no points"):
            read_mesh(p)


@pytest.mark.parametrize("fmt,old,new", [("ply", b"element face", b"element fake"),
                                          ("obj", b"\nf ", b"\nf x")])
def test_a_damaged_ply_or_obj_is_refused_in_one_line_and_prints_nothing(tmp_path, capsys,
                                                                       fmt, old, new):
    """meshio.read prints a failed read's message, with the file's path, to stdout
    and calls sys.exit(1) (found by bench/fuzz_readers.py): a batch of meshes
    ended there, naming a patient's file. read_mesh calls each format's own
    reader: one ValueError naming the file, and nothing printed."""
    from shapeprior.mesh import read_mesh

    v, f = icosphere(1)
    p = tmp_path / f"DOE_JOHN.{fmt}"
    Surface(v * 20.0, f).write(p)
    data = p.read_bytes()
    assert old in data
    p.write_bytes(data.replace(old, new, 1))
    with pytest.raises(ValueError, match=r"^mesh 'DOE_JOHN\.%s'(: | could not be read \()"
                       % fmt):
        read_mesh(p)
    said = capsys.readouterr()
    assert said.out == "" and "DOE_JOHN" not in said.err


def test_a_ply_whose_header_never_ends_is_refused_at_once(tmp_path):
    """meshio loops forever on a PLY header without end_header: read_mesh
    refuses it first, naming the file."""
    from shapeprior.mesh import read_mesh

    p = tmp_path / "cut.ply"
    p.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\n")
    with pytest.raises(ValueError, match=r"mesh 'cut.ply': truncated or damaged PLY header"):
        read_mesh(p)


def _slicer_mesh(path, surf, space, how):
    """``surf`` written as 3D Slicer writes a model in ``space`` (its coordinates
    negated in x and y for RAS): the legacy VTK header, a VTK XML ``SPACE`` field
    array, a PLY comment or an OBJ comment."""
    from vtkmodules.vtkCommonCore import vtkStringArray
    from vtkmodules.vtkIOLegacy import vtkPolyDataWriter
    from vtkmodules.vtkIOPLY import vtkPLYWriter
    from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter

    flip = np.array([-1.0, -1.0, 1.0]) if space == "RAS" else np.ones(3)
    poly = Surface(surf.verts * flip, surf.faces).to_vtk()
    for key in ("SPACE", "UNITS"):
        poly.GetFieldData().RemoveArray(key)
    if how == "vtk":
        w = vtkPolyDataWriter()
        w.SetFileVersion(42)
        w.SetHeader(f"3D Slicer output. SPACE={space}")
    elif how == "vtp":
        a = vtkStringArray()
        a.SetName("SPACE")
        a.InsertNextValue(space)
        poly.GetFieldData().AddArray(a)
        w = vtkXMLPolyDataWriter()
    elif how == "ply":
        w = vtkPLYWriter()
        w.AddComment(f"SPACE={space}")
    else:                                   # obj: the comment heads the file
        Surface(surf.verts * flip, surf.faces).to_meshio().write(path)
        path.write_text(f"# 3D Slicer output. SPACE={space}\n" + path.read_text())
        return path
    w.SetFileName(str(path))
    w.SetInputData(poly)
    assert w.Write()
    return path


@pytest.mark.parametrize("fmt", ["vtk", "vtp", "ply", "obj"])
@pytest.mark.parametrize("space", ["RAS", "LPS"])
def test_a_mesh_declared_ras_is_read_in_lps(tmp_path, fmt, space):
    """3D Slicer declares the coordinate system of a model it saves (SPACE=RAS in
    files saved before 4.11 or by choice): read_mesh gives LPS either way, in
    vertex order, with the triangles' orientation kept (x and y negated is a
    rotation); a file that declares both is refused."""
    from shapeprior.mesh import read_mesh

    v, f = icosphere(2)
    surf = Surface(v * 20.0 + np.array([60.0, -30.0, 12.0]), f)
    got = read_mesh(_slicer_mesh(tmp_path / f"m.{fmt}", surf, space, fmt))
    np.testing.assert_allclose(got.verts, surf.verts, atol=1e-4)
    np.testing.assert_array_equal(got.faces, surf.faces)
    assert got.volume() > 0


def test_a_mesh_declared_both_ras_and_lps_is_refused(tmp_path):
    from shapeprior.mesh import read_mesh

    v, f = icosphere(1)
    p = Surface(v * 10.0, f).write(tmp_path / "m.vtk") or tmp_path / "m.vtk"
    data = p.read_bytes().replace(b"SPACE=LPS", b"SPACE=RAS", 1)    # the header, not the field
    p.write_bytes(data)
    with pytest.raises(ValueError, match="both RAS and LPS"):
        read_mesh(p)


@pytest.mark.parametrize("fmt", ["vtk", "vtp", "ply", "stl", "obj"])
def test_every_mesh_written_declares_lps_where_3d_slicer_reads_it(tmp_path, fmt):
    """Slicer before 4.11 took a mesh that declares nothing as RAS: each file says
    SPACE=LPS where Slicer's reader of that format looks (the legacy header, the
    XML field data, a PLY comment, the STL header, the OBJ comment)."""
    from vtkmodules.vtkIOGeometry import vtkOBJReader, vtkSTLReader
    from vtkmodules.vtkIOLegacy import vtkPolyDataReader
    from vtkmodules.vtkIOPLY import vtkPLYReader
    from vtkmodules.vtkIOXML import vtkXMLPolyDataReader

    from shapeprior.mesh._read import declared_space

    v, f = icosphere(1)
    p = tmp_path / f"m.{fmt}"
    Surface(v * 10.0, f).write(p, point_data={"a": np.arange(len(v), dtype=float)})
    reader = {"vtk": vtkPolyDataReader, "vtp": vtkXMLPolyDataReader, "ply": vtkPLYReader,
              "stl": vtkSTLReader, "obj": vtkOBJReader}[fmt]()
    reader.SetFileName(str(p))
    reader.Update()
    assert reader.GetOutput().GetNumberOfPoints() > 0
    if fmt == "vtp":
        said = [reader.GetOutput().GetFieldData().GetAbstractArray("SPACE").GetValue(0)]
        assert said == ["LPS"]
        return
    if fmt == "ply":
        c = reader.GetComments()
        said = [c.GetValue(i) for i in range(c.GetNumberOfValues())]
    else:
        said = [reader.GetComment() if fmt == "obj" else reader.GetHeader()]
    assert declared_space(said) == "LPS", said
