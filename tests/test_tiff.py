"""TIFF stacks cut short or corrupted: libtiff reads the pages it reaches and
stops quietly at the first one cut off, so a file cut in half used to be read
as a volume of half its slices. The page chain is now walked first
(``io._checks.check_tiff_structure``) and such a file refused in one line."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

import shapeprior as sp
from shapeprior.cli import main
from shapeprior.io import ImageReadError


def _tiff(pages, order="<", big=False):
    """A minimal uncompressed 8-bit TIFF of ``pages`` (n, rows, cols), written by
    hand: classic or BigTIFF, little- or big-endian; each page its pixels,
    then its directory (one strip per page)."""
    n, rows, cols = pages.shape
    off, cnt_fmt, entry = ("Q", "Q", 20) if big else ("I", "H", 12)
    out = bytearray((b"II" if order == "<" else b"MM")
                    + (struct.pack(order + "HHHQ", 43, 8, 0, 0) if big
                       else struct.pack(order + "HI", 42, 0)))
    first_slot = 8 if big else 4
    prev_next = first_slot                        # where the next directory's offset goes
    for k in range(n):
        data_at = len(out)
        out += pages[k].astype(np.uint8).tobytes()
        if len(out) % 2:
            out += b"\0"
        ifd_at = len(out)
        struct.pack_into(order + off, out, prev_next, ifd_at)
        tags = [(256, 3, cols), (257, 3, rows), (258, 3, 8), (259, 3, 1), (262, 3, 1),
                (273, 4, data_at), (277, 3, 1), (278, 3, rows), (279, 4, rows * cols)]
        out += struct.pack(order + cnt_fmt, len(tags))
        for tag, typ, value in tags:
            slot = struct.pack(order + ("H" if typ == 3 else "I"), value)
            slot += b"\0" * ((8 if big else 4) - len(slot))
            out += struct.pack(order + "HH" + off, tag, typ, 1) + slot
        prev_next = len(out)
        out += struct.pack(order + off, 0)
    return bytes(out)


def _stack():
    return (np.arange(6 * 9 * 11) % 251).reshape(6, 9, 11)


def _sitk_stack(tmp_path, seed, shape):
    """A random int16 stack written by SimpleITK as ``tmp_path/whole.tif``, checked to
    read back whole: ``(path, its bytes)``."""
    import SimpleITK as sitk

    a = (np.random.default_rng(seed).random(shape) * 1000).astype(np.int16)
    whole = tmp_path / "whole.tif"
    sitk.WriteImage(sitk.GetImageFromArray(a), str(whole))
    assert np.array_equal(sp.read_volume(whole, allow_no_orientation=True).array, a)
    return whole, whole.read_bytes()


@pytest.mark.parametrize("order,big", [("<", False), (">", False), ("<", True), (">", True)])
def test_a_whole_tiff_reads_and_every_cut_is_refused(tmp_path, order, big):
    """A hand-written stack (classic and BigTIFF, both byte orders) reads whole,
    voxel for voxel; the same file cut anywhere is refused, never read as a
    shorter volume."""
    pages = _stack()
    data = _tiff(pages, order, big)
    f = tmp_path / "stack.tif"
    f.write_bytes(data)
    vol = sp.read_volume(f, allow_no_orientation=True)
    assert np.array_equal(vol.array, pages)
    for cut in range(8, len(data), max(len(data) // 23, 1)):
        f.write_bytes(data[:cut])
        with pytest.raises(ImageReadError, match="truncated or corrupt TIFF"):
            sp.read_volume(f, allow_no_orientation=True)


def test_a_simpleitk_stack_cut_in_half_is_refused_in_one_line(phantom_model, tmp_path, capsys):
    """The case found: a SimpleITK-written stack cut in half was read as 4 of its
    8 slices. Now one line, exit 1, nothing written, the input unchanged; the
    whole file still reads."""
    whole, data = _sitk_stack(tmp_path, 0, (8, 32, 32))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[:len(data) // 2])
    before = hashlib.sha256(cut.read_bytes()).hexdigest()
    out = tmp_path / "o"
    model = phantom_model[3]
    assert main(["segment", str(cut), "-o", str(out), "--model", str(model),
                 "--allow-no-orientation"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cut.tif: truncated or corrupt TIFF" in err[0], err
    assert not out.exists()
    assert hashlib.sha256(cut.read_bytes()).hexdigest() == before


def test_a_page_chain_that_loops_or_points_past_the_data_is_refused(tmp_path):
    pages = _stack()
    data = bytearray(_tiff(pages))
    first = struct.unpack("<I", data[4:8])[0]
    # the last directory's next-page offset, pointing back at the first directory
    last_next = len(data) - 4
    loop = bytearray(data)
    struct.pack_into("<I", loop, last_next, first)
    f = tmp_path / "loop.tif"
    f.write_bytes(bytes(loop))
    with pytest.raises(ImageReadError, match="loops back from page 6 to page 1's directory"):
        sp.read_volume(f, allow_no_orientation=True)
    # a strip length beyond the file: the last page's byte count (tag 279) made huge
    n = struct.unpack("<H", data[first:first + 2])[0]
    last_ifd = last_next - 12 * n - 2
    for k in range(n):
        at = last_ifd + 2 + 12 * k
        if struct.unpack("<H", data[at:at + 2])[0] == 279:
            struct.pack_into("<I", data, at + 8, 10 ** 6)
    f.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="pixel data end at byte"):
        sp.read_volume(f, allow_no_orientation=True)


def _set_tag(data, page, tag, value):
    """``data`` (a classic little-endian TIFF) with the inline value of ``tag`` in
    the directory of ``page`` (1-based) set to ``value``."""
    data = bytearray(data)
    ifd = struct.unpack("<I", data[4:8])[0]
    for _ in range(page - 1):
        n = struct.unpack("<H", data[ifd:ifd + 2])[0]
        ifd = struct.unpack("<I", data[ifd + 2 + 12 * n:ifd + 6 + 12 * n])[0]
    n = struct.unpack("<H", data[ifd:ifd + 2])[0]
    for k in range(n):
        at = ifd + 2 + 12 * k
        t, typ = struct.unpack("<HH", data[at:at + 4])
        if t == tag:
            struct.pack_into("<H" if typ == 3 else "<I", data, at + 8, value)
            return bytes(data)
    raise AssertionError(f"page {page} has no tag {tag}")


def test_a_page_that_is_not_a_slice_like_the_first_is_refused(tmp_path):
    """ITK's reader keeps the pages whose NewSubfileType says "page" and sizes its
    buffer by the first: a SimpleITK stack whose 5th page was marked a
    reduced-resolution copy (6 bytes changed, found by bench/fuzz_readers.py)
    made it write past its buffer, and the process aborted ("malloc(): corrupted
    top size"). A page marked a reduced-resolution copy or a mask, or of another
    width, height or bit depth than the first, is refused in one line; the whole
    stack still reads."""
    _, data = _sitk_stack(tmp_path, 1, (8, 24, 20))
    f = tmp_path / "page.tif"
    for tag, value, said in ((254, 39, r"page 5 is marked a reduced-resolution copy or a "
                              r"mask \(NewSubfileType 39\), not a slice"),
                             (254, 1, r"NewSubfileType 1\)"),
                             (256, 40, r"page 5 is not a slice like the first: width 40 "
                              r"\(page 1: 20\)"),
                             (257, 12, r"height 12 \(page 1: 24\)"),
                             (258, 8, r"bits per sample 8 \(page 1: 16\)")):
        f.write_bytes(_set_tag(data, 5, tag, value))
        with pytest.raises(ImageReadError, match=r"page\.tif: truncated or corrupt TIFF: .*"
                           + said):
            sp.read_volume(f, allow_no_orientation=True)
    # a hand-written stack whose pages say nothing of their subfile type reads too
    pages = _stack()
    f.write_bytes(_tiff(pages))
    assert np.array_equal(sp.read_volume(f, allow_no_orientation=True).array, pages)
