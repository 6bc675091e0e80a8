"""VTK legacy, GIPL and MRC images cut short: ITK reads them without a word and
makes up the missing voxels. Found as a new user (a binary VTK and a GIPL
cut to two thirds were read with their last third changed; an MRC too); they are now
refused in one line (``io._checks.check_data_extent``)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import shapeprior as sp
from shapeprior.cli import main
from shapeprior.io import ImageReadError

VTK_TYPES = {np.int16: "short", np.float32: "float", np.uint8: "unsigned_char"}


def _image(dtype):
    return (np.random.default_rng(0).random((6, 10, 12)) * 100).astype(dtype)


def _write(path, a, kind):
    """``a`` (z, y, x) as ``kind``: 'vtk' (binary, SimpleITK), 'vtk-ascii' (written
    here), 'gipl', 'gipl.gz' or 'mrc' (SimpleITK)."""
    import SimpleITK as sitk

    if kind == "vtk-ascii":
        nz, ny, nx = a.shape
        path.write_text(
            "# vtk DataFile Version 3.0\nimage\nASCII\nDATASET STRUCTURED_POINTS\n"
            f"DIMENSIONS {nx} {ny} {nz}\nSPACING 0.5 0.5 2\nORIGIN 0 0 0\n"
            f"POINT_DATA {a.size}\nSCALARS scalars {VTK_TYPES[a.dtype.type]} 1\n"
            "LOOKUP_TABLE default\n" + " ".join(map(str, a.ravel().tolist())) + "\n")
        return
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((0.5, 0.5, 2.0))
    sitk.WriteImage(img, str(path), kind.endswith(".gz"))


@pytest.mark.parametrize("dtype", list(VTK_TYPES))
@pytest.mark.parametrize("kind", ["vtk", "vtk-ascii", "gipl", "gipl.gz", "mrc"])
def test_a_whole_file_reads_and_a_cut_one_is_refused(tmp_path, kind, dtype):
    a = _image(dtype)
    f = tmp_path / ("x." + kind.replace("-ascii", ""))
    _write(f, a, kind)
    vol = sp.read_volume(f, allow_no_orientation=True)
    np.testing.assert_allclose(vol.array, a, atol=1e-4)
    data = f.read_bytes()
    for frac in (0.2, 0.5, 0.8, 0.97):     # (a cut in the header ITK refuses itself)
        f.write_bytes(data[:int(len(data) * frac)])
        with pytest.raises(ImageReadError):
            sp.read_volume(f, allow_no_orientation=True)
    f.write_bytes(data[:-max(len(data) // 50, 2)])     # the voxels' end: refused by the check
    with pytest.raises(ImageReadError, match="is truncated|gzip stream is cut short"):
        sp.read_volume(f, allow_no_orientation=True)


def test_the_refusal_says_how_much_is_there(tmp_path):
    """The line names what the header describes and what the file holds."""
    a = _image(np.int16)
    f = tmp_path / "x.gipl"
    _write(f, a, "gipl")
    f.write_bytes(f.read_bytes()[:256 + 100])
    with pytest.raises(ImageReadError, match=r"x\.gipl is truncated: its header describes "
                                             rf"{a.nbytes} bytes of voxels, the file holds 100"):
        sp.read_volume(f, allow_no_orientation=True)
    v = tmp_path / "x.vtk"
    _write(v, a, "vtk-ascii")
    lines = v.read_text().splitlines()
    lines[-1] = " ".join(lines[-1].split()[:-10])
    v.write_text("\n".join(lines) + "\n")
    with pytest.raises(ImageReadError, match=rf"describes {a.size} values of voxels, the file "
                                             rf"holds {a.size - 10}"):
        sp.read_volume(v, allow_no_orientation=True)


def test_segment_refuses_a_cut_vtk_in_one_line(phantom_model, tmp_path, capsys):
    a = _image(np.int16)
    f = tmp_path / "scan.vtk"
    _write(f, a, "vtk")
    f.write_bytes(f.read_bytes()[:-500])
    before = hashlib.sha256(f.read_bytes()).hexdigest()
    out = tmp_path / "o"
    assert main(["segment", str(f), "-o", str(out), "--model", str(phantom_model[3]),
                 "--allow-no-orientation"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scan.vtk is truncated" in err[0], err
    assert not out.exists() and hashlib.sha256(f.read_bytes()).hexdigest() == before


def test_an_ascii_vtk_one_value_short_is_refused_across_read_chunks(tmp_path):
    """An ASCII file larger than the check's 1 MiB read chunks: a number split
    between two chunks counts once, so a file one value short is refused."""
    from shapeprior.io._checks import check_data_extent

    a = (np.arange(300_000) % 997).astype(np.int16).reshape(3, 100, 1000)
    f = tmp_path / "big.vtk"
    _write(f, a, "vtk-ascii")
    assert f.stat().st_size > 1 << 20
    check_data_extent(f, "big.vtk", a.nbytes, a.size)          # whole: passes
    text = f.read_text().rstrip("\n")
    f.write_text(text[:text.rindex(" ")] + "\n")
    with pytest.raises(ImageReadError, match="describes 300000 values of voxels, the file "
                                             "holds 299999"):
        check_data_extent(f, "big.vtk", a.nbytes, a.size)
