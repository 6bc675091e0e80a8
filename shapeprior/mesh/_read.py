"""Read a triangle mesh file, keeping its vertices in file order.

Vertex order is what makes meshes in correspondence: vertex i of every file
is the same anatomical point. The readers here keep it: VTK's own reader for
``.vtp`` (XML PolyData), meshio's for ``.ply`` and ``.obj``, and for ``.vtk``
(legacy PolyData) the POINTS and the cell blocks read here with NumPy, each
checked against what its line declares. VTK's legacy reader is not used: it walks
a cell block by the counts in it, and a damaged count, or a file cut inside a
FIELD block, sends it past its buffers and the process dies (segmentation fault,
found by ``bench/fuzz_readers.py``); meshio does not read legacy PolyData. STL is
refused: it stores each triangle's corners separately, and merging them back into
vertices loses the order.
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


def _read_vtp(p: Path):
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkCommonCore import vtkObject
    from vtkmodules.vtkIOXML import vtkXMLPolyDataReader

    warn = vtkObject.GetGlobalWarningDisplay()
    vtkObject.GlobalWarningDisplayOff()   # a corrupt file gets our one line, not VTK's
    try:
        r = vtkXMLPolyDataReader()
        r.SetFileName(str(p))
        r.Update()
        poly = r.GetOutput()
    finally:
        vtkObject.SetGlobalWarningDisplay(warn)
    if poly is None or poly.GetPoints() is None or poly.GetNumberOfPoints() == 0:
        raise ValueError("no points (not a PolyData mesh, or a damaged file)")
    verts = vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)
    said = []
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


#: the legacy VTK data types a block may have, as NumPy reads them from a BINARY file
#: (big-endian)
_VTK_DTYPES = {b"float": ">f4", b"double": ">f8", b"int": ">i4", b"unsigned_int": ">u4",
               b"short": ">i2", b"unsigned_short": ">u2", b"char": "i1",
               b"unsigned_char": "u1", b"long": ">i8", b"unsigned_long": ">u8",
               b"vtktypeint64": ">i8", b"vtktypeuint64": ">u8"}

#: the legacy VTK blocks of cells, each a list of point indices
_CELL_BLOCKS = (b"VERTICES", b"LINES", b"POLYGONS", b"TRIANGLE_STRIPS")


def _read_legacy(p: Path):
    """``(verts (n, 3), faces (f, 3), header lines)`` of a legacy VTK PolyData file:
    its POINTS, and its POLYGONS when all are triangles (else no faces, as a
    point set). Every block is checked against its line before it is used:

    * the POINTS block must hold its 3 n values, and each cell block its values
      (version 4: the one array of ``size`` values; version 5: its OFFSETS and its
      CONNECTIVITY arrays), as bytes in a BINARY file and as numbers in an ASCII
      one (VTK's reader filled what a file cut short did not hold: coordinates of
      1e307 mm, triangles of arbitrary vertices);
    * each cell block must step through its values exactly, cell by cell, as many
      cells as its line declares, and name only points the POINTS block holds.

    The header lines returned are the title and, from a FIELD array named SPACE
    (shapeprior writes one), ``SPACE=...``."""
    data = p.read_bytes()
    if not data.startswith(b"# vtk DataFile Version"):
        raise ValueError("not a legacy VTK file (no '# vtk DataFile Version' line)")
    dataset = re.search(rb"\nDATASET[ \t]+(\w+)", data)
    pts = re.search(rb"\nPOINTS[ \t]+(\d+)[ \t]+(\w+)[ \t]*\r?\n", data)
    if dataset is None or dataset[1].upper() != b"POLYDATA" or pts is None:
        raise ValueError("no points (not a PolyData mesh, or a damaged file)")
    binary = b"\nBINARY" in data[:pts.start() + 1].upper()
    n = int(pts[1])
    rest, xyz = _block(data, pts.end(), 3 * n, pts[2], binary, f"POINTS block ({n} points)")
    version5 = re.match(rb"# vtk DataFile Version ([5-9])", data) is not None
    faces = np.zeros((0, 3), np.int64)
    for key in _CELL_BLOCKS:
        line = re.compile(rb"\n" + key + rb"[ \t]+(\d+)[ \t]+(\d+)[ \t]*\r?\n").search(
            data, rest - 1)
        if line is None:
            continue
        what = f"{key.decode()} block"
        if version5:
            at, arrays = line.end(), []
            for name, count in ((b"OFFSETS", int(line[1])), (b"CONNECTIVITY", int(line[2]))):
                head = re.compile(rb"\s*" + name + rb"[ \t]+(\w+)[ \t]*\r?\n").match(data, at)
                if head is None:
                    raise ValueError(f"cut short or damaged: its {what} has no "
                                     f"{name.decode()} array where one is due")
                at, vals = _block(data, head.end(), count, head[1], binary,
                                  f"{what}'s {name.decode()} array")
                arrays.append(vals)
            cells, tri = _cells_v5(*arrays, n, what)
        else:
            _, vals = _block(data, line.end(), int(line[2]), b"int", binary, what)
            cells, tri = _cells_v4(vals, n, what)
        if cells != int(line[1]) - version5:
            raise ValueError(f"cut short or damaged: its {key.decode()} line declares "
                             f"{int(line[1]) - version5} cells, its data holds {cells}")
        if key == b"POLYGONS" and tri is not None:
            faces = tri
    title = re.match(rb"[^\n]*\n([^\n]*)", data)      # the line after the version's
    said = [title[1].decode("latin-1").strip() if title else ""]
    space = re.search(rb"\nSPACE[ \t]+1[ \t]+1[ \t]+string[ \t]*\r?\n", data)
    if space is not None:           # VTK writes a short string after a length byte
        at = space.end()
        if binary and at < len(data) and data[at] & 0xC0 == 0xC0:
            said.append("SPACE=" + data[at + 1:at + 1 + (data[at] & 0x3F)].decode("latin-1"))
        elif not binary:
            said.append("SPACE=" + data[at:].split(b"\n", 1)[0].decode("latin-1").strip())
    return np.asarray(xyz, np.float64).reshape(-1, 3), faces, said


def _indices(vals, n_points, what):
    """``vals`` as point indices (ValueError unless whole numbers in range)."""
    if vals.size and not (np.all(np.isfinite(vals)) and np.all(vals == np.floor(vals))
                          and vals.min() >= 0 and vals.max() < n_points):
        raise ValueError(f"damaged: its {what} names points that do not exist (of "
                         f"{n_points})")
    return vals.astype(np.int64)


def _cells_v4(vals, n_points, what):
    """``(cells, triangles (f, 3) or None)`` of a version 4 block (each cell a
    count, then that many point indices); ValueError where a count does not land
    on the block's end."""
    v = np.asarray(vals, dtype=np.float64)
    if v.size % 4 == 0 and np.all(v[::4] == 3):         # triangles: at once
        tri = _indices(v.reshape(-1, 4)[:, 1:], n_points, what)
        return v.size // 4, tri
    is_count = np.zeros(v.size, bool)
    at = cells = 0
    while at < v.size:
        c = v[at]
        if not (c >= 0 and c == int(c) and at + 1 + int(c) <= v.size):
            raise ValueError(f"damaged: a cell count in its {what} ({c:g}) runs past the "
                             "block's end")
        is_count[at] = True
        at, cells = at + 1 + int(c), cells + 1
    _indices(v[~is_count], n_points, what)
    return cells, None


def _cells_v5(offsets, conn, n_points, what):
    """``(cells, triangles (f, 3) or None)`` of a version 5 block (OFFSETS into
    CONNECTIVITY); ValueError where the offsets do not step through the
    connectivity."""
    off = np.asarray(offsets, dtype=np.float64)
    if off.size == 0 or off[0] != 0 or np.any(np.diff(off) < 0) or off[-1] != len(conn):
        raise ValueError(f"damaged: its {what}'s OFFSETS do not step through its "
                         f"CONNECTIVITY ({len(conn)} values)")
    idx = _indices(np.asarray(conn, dtype=np.float64), n_points, what)
    tri = idx.reshape(-1, 3) if np.all(np.diff(off) == 3) else None
    return off.size - 1, tri


def _block(data, start, count, kind, binary, what, values=True):
    """``(end, values)`` of a legacy VTK data block of ``count`` values of type
    ``kind`` starting at byte ``start`` (``values`` None unless asked for);
    ValueError naming ``what`` when the file holds fewer (bytes in a BINARY file,
    numbers in an ASCII one)."""
    if binary:
        dtype = np.dtype(_VTK_DTYPES.get(kind.lower(), ">f8"))
        need = count * dtype.itemsize
        if len(data) < start + need:
            raise ValueError(f"cut short: its {what} declares {count} values ({need} bytes), "
                             f"the file holds {max(len(data) - start, 0)}")
        return start + need, (np.frombuffer(data, dtype, count, start) if values else None)
    numbers, end, tokens = 0, start, []
    for m in re.compile(rb"\S+").finditer(data, start):
        if numbers >= count or not re.fullmatch(rb"[-+.0-9eEinfINFaA]+", m[0]):
            break
        numbers, end = numbers + 1, m.end()
        if values:
            tokens.append(m[0])
    if numbers < count:
        raise ValueError(f"cut short: its {what} declares {count} numbers, the file holds "
                         f"{numbers}")
    return end, (np.array([float(t) for t in tokens]) if values else None)


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
    # each format's own reader: meshio.read prints a failed read's message with the
    # file's path to stdout and calls sys.exit(1) (found by bench/fuzz_readers.py)
    if p.suffix.lower() == ".ply":
        from meshio.ply import read

        said = _check_ply_header(p)
    else:
        from meshio.obj import read

        said = _obj_comments(p)
    m = read(str(p))
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
        if suffix == ".vtk":
            verts, faces, said = _read_legacy(p)
        elif suffix == ".vtp":
            verts, faces, said = _read_vtp(p)
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
