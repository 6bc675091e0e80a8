"""Read a triangle mesh file, keeping its vertices in file order.

Vertex order is what makes meshes in correspondence: vertex i of every file
is the same anatomical point. The readers here keep it: VTK's own readers
for ``.vtk`` (legacy) and ``.vtp`` (XML PolyData), meshio for ``.ply`` and
``.obj``. STL is refused: it stores each triangle's corners separately, and
merging them back into vertices loses the order.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ._surface import Surface

#: formats :func:`read_mesh` reads (file name suffixes)
READ_SUFFIXES = (".vtk", ".vtp", ".ply", ".obj")


def _display(p: Path) -> str:
    import os

    return os.fsencode(p.name).decode("utf-8", "backslashreplace")


def _read_vtk(p: Path, xml: bool):
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkCommonCore import vtkObject

    if xml:
        from vtkmodules.vtkIOXML import vtkXMLPolyDataReader as Reader
    else:
        from vtkmodules.vtkIOLegacy import vtkPolyDataReader as Reader
    warn = vtkObject.GetGlobalWarningDisplay()
    vtkObject.GlobalWarningDisplayOff()   # a corrupt file gets our one line, not VTK's
    try:
        r = Reader()
        r.SetFileName(str(p))
        r.Update()
        poly = r.GetOutput()
    finally:
        vtkObject.SetGlobalWarningDisplay(warn)
    if poly is None or poly.GetPoints() is None or poly.GetNumberOfPoints() == 0:
        raise ValueError("no points (not a PolyData mesh, or a damaged file)")
    if not xml:
        _check_legacy_extent(p, poly.GetNumberOfPolys())
    verts = vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)
    said = [] if xml else [r.GetHeader() or ""]
    space = poly.GetFieldData().GetAbstractArray("SPACE")
    if space is not None and space.GetNumberOfValues():
        said.append("SPACE=" + str(space.GetVariantValue(0).ToString()))
    polys = poly.GetPolys()
    faces = np.zeros((0, 3), np.int64)
    if polys is not None and polys.GetNumberOfCells() > 0:
        off = vtk_to_numpy(polys.GetOffsetsArray()).astype(np.int64)
        conn = vtk_to_numpy(polys.GetConnectivityArray()).astype(np.int64)
        if np.all(np.diff(off) == 3):
            faces = conn.reshape(-1, 3)
    return verts, faces, said


#: bytes per value of the legacy VTK data types a POINTS block may have
_VTK_TYPE_BYTES = {b"float": 4, b"double": 8, b"int": 4, b"unsigned_int": 4, b"short": 2,
                   b"unsigned_short": 2, b"char": 1, b"unsigned_char": 1, b"long": 8,
                   b"unsigned_long": 8, b"vtktypeint64": 8, b"vtktypeuint64": 8}


def _check_legacy_extent(p: Path, n_polys):
    """Refuse a legacy VTK file cut short: VTK's reader fills a block the file
    does not hold (zeros, or whatever its memory held: coordinates of 1e307 mm,
    triangles of arbitrary vertices) without an error. The POINTS block must
    hold its 3 n values, and a POLYGONS block its cells' values (version 4:
    the one array of ``size`` values; version 5: its OFFSETS and its
    CONNECTIVITY arrays), as bytes in a BINARY file and as numbers in an ASCII
    one; the polygons read must be as many as declared."""
    data = p.read_bytes()
    pts = re.search(rb"\nPOINTS[ \t]+(\d+)[ \t]+(\w+)[ \t]*\r?\n", data)
    if pts is None:
        return                  # VTK found points another way: nothing to compare
    binary = b"\nBINARY" in data[:pts.start() + 1].upper()
    n = int(pts[1])
    rest = _block_end(data, pts.end(), 3 * n, pts[2], binary, f"POINTS block ({n} points)")
    polys = re.compile(rb"POLYGONS[ \t]+(\d+)[ \t]+(\d+)[ \t]*\r?\n").search(data, rest)
    if polys is None:
        return
    version5 = re.match(rb"# vtk DataFile Version ([5-9])", data) is not None
    if version5:
        at = polys.end()
        for name, count in ((b"OFFSETS", int(polys[1])), (b"CONNECTIVITY", int(polys[2]))):
            line = re.compile(rb"\s*" + name + rb"[ \t]+(\w+)[ \t]*\r?\n").match(data, at)
            if line is None:
                raise ValueError(f"cut short or damaged: its POLYGONS block has no "
                                 f"{name.decode()} array where one is due")
            at = _block_end(data, line.end(), count, line[1], binary,
                            f"POLYGONS {name.decode()} array")
        declared = int(polys[1]) - 1
    else:
        _block_end(data, polys.end(), int(polys[2]), b"int", binary, "POLYGONS block")
        declared = int(polys[1])
    if n_polys != declared:
        raise ValueError(f"cut short or damaged: its POLYGONS line declares {declared} "
                         f"polygons, {n_polys} could be read")


def _block_end(data, start, count, kind, binary, what):
    """Where a legacy VTK data block of ``count`` values of type ``kind``,
    starting at byte ``start``, ends; ValueError naming ``what`` when the file
    holds fewer (bytes in a BINARY file, numbers in an ASCII one)."""
    if binary:
        need = count * _VTK_TYPE_BYTES.get(kind.lower(), 8)
        if len(data) < start + need:
            raise ValueError(f"cut short: its {what} declares {count} values ({need} bytes), "
                             f"the file holds {max(len(data) - start, 0)}")
        return start + need
    numbers, end = 0, start
    for m in re.compile(rb"\S+").finditer(data, start):
        if numbers >= count or not re.fullmatch(rb"[-+.0-9eEinfINFaA]+", m[0]):
            break
        numbers, end = numbers + 1, m.end()
    if numbers < count:
        raise ValueError(f"cut short: its {what} declares {count} numbers, the file holds "
                         f"{numbers}")
    return end


def _check_ply_header(p: Path):
    """meshio loops forever on a PLY header that never ends: check it first.
    Returns the header's comments."""
    with open(p, "rb") as fh:
        head = fh.read(65536)
    if not head.startswith(b"ply"):
        raise ValueError("not a PLY file (no 'ply' magic)")
    if b"end_header" not in head:
        raise ValueError("truncated or damaged PLY header (no end_header)")
    lines = head[:head.index(b"end_header")].decode("latin-1").splitlines()
    return [line for line in lines if line.startswith("comment")]


def _obj_comments(p: Path):
    """The comment lines an OBJ file starts with (3D Slicer writes its header there)."""
    out = []
    with open(p, "rb") as fh:
        for line in fh:
            if not line.startswith(b"#"):
                break
            out.append(line.decode("latin-1"))
    return out


#: the coordinate systems a mesh file may declare, as 3D Slicer does: ``SPACE=RAS``
#: or ``SPACE=LPS`` in the legacy VTK header, a PLY or OBJ comment, or a ``SPACE``
#: field data array (VTK XML, and shapeprior's own files); none: LPS
_SPACE = re.compile(r"(?<![A-Za-z0-9])SPACE\s*=\s*(RAS|LPS)(?![A-Za-z0-9])", re.IGNORECASE)


def declared_space(said) -> str | None:
    """``'RAS'``, ``'LPS'`` or None (nothing declared) from the texts a mesh file
    holds; ValueError when they declare both."""
    found = {m.group(1).upper() for t in said for m in _SPACE.finditer(t)}
    if len(found) > 1:
        raise ValueError("declares its coordinates both RAS and LPS (SPACE=); which one "
                         "holds cannot be told")
    return found.pop() if found else None


def _read_meshio(p: Path):
    import meshio

    said = _check_ply_header(p) if p.suffix.lower() == ".ply" else _obj_comments(p)
    m = meshio.read(p)
    faces = [c.data for c in m.cells if c.type == "triangle"]
    faces = np.concatenate(faces).astype(np.int64) if faces else np.zeros((0, 3), np.int64)
    return np.asarray(m.points, dtype=np.float64)[:, :3], faces, said


def read_mesh(path) -> Surface:
    """Read a mesh file with its vertices in file order.

    Parameters
    ----------
    path : str or Path
        ``.vtk`` (legacy), ``.vtp``, ``.ply`` or ``.obj``, in mm. Coordinates
        are returned in LPS: a file that declares ``SPACE=RAS`` (3D Slicer's
        tag, in the legacy VTK header, a PLY or OBJ comment, or the VTK XML
        field data) has x and y negated; one that declares nothing is taken as
        LPS, as 3D Slicer takes it (shapeprior's meshes declare LPS).

    Returns
    -------
    Surface
        ``verts`` (V, 3) in file order; ``faces`` (F, 3), empty when the file
        holds no triangles (a point set in correspondence is still a shape).

    Raises
    ------
    ValueError
        One line naming the file: unknown format, unreadable or damaged
        file, no points, non-finite coordinates, or both RAS and LPS declared.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".stl":
        raise ValueError(f"mesh {_display(p)!r}: STL stores triangle corners, not vertices, so "
                         "the vertex order (the correspondence) cannot be read back; use vtk, "
                         "vtp, ply or obj")
    if suffix not in READ_SUFFIXES:
        raise ValueError(f"mesh {_display(p)!r}: format {suffix or '(none)'} is not one of "
                         f"{', '.join(READ_SUFFIXES)}")
    if not p.is_file():
        raise FileNotFoundError(f"no such mesh file: {_display(p)}")
    try:
        if suffix in (".vtk", ".vtp"):
            verts, faces, said = _read_vtk(p, xml=suffix == ".vtp")
        else:
            verts, faces, said = _read_meshio(p)
        space = declared_space(said)
    except ValueError as exc:
        raise ValueError(f"mesh {_display(p)!r}: {' '.join(str(exc).split())}") from None
    except Exception as exc:  # noqa: BLE001 - meshio raises many kinds on damaged files
        raise ValueError(f"mesh {_display(p)!r} could not be read "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    if verts.ndim != 2 or verts.shape[0] == 0:
        raise ValueError(f"mesh {_display(p)!r} has no points")
    if not np.all(np.isfinite(verts)):
        raise ValueError(f"mesh {_display(p)!r} has non-finite (NaN or infinite) coordinates")
    if faces.size and (faces.min() < 0 or faces.max() >= len(verts)):
        raise ValueError(f"mesh {_display(p)!r}: triangles refer to vertices that do not exist")
    if space == "RAS":          # a rotation about z: the triangles keep their orientation
        verts = verts * np.array([-1.0, -1.0, 1.0])
    return Surface(verts, faces)
