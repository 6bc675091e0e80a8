"""Completeness check for NIfTI files.

ITK's NIfTI reader does not notice a truncated file: a ``.nii`` cut short or
a ``.nii.gz`` whose gzip stream ends early is read without error, the missing
voxels filled with zeros. An interrupted download or copy would then be
segmented as if it were a real scan. :func:`check_nifti_complete` compares
the byte count the header promises (``vox_offset + prod(dim) * bitpix / 8``)
with what the file holds.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np


def _expected_bytes(hdr: bytes):
    """Header bytes -> (vox_offset + data bytes), or None if not NIfTI-1/2."""
    for e in ("<", ">"):
        if len(hdr) >= 348 and struct.unpack(e + "i", hdr[:4])[0] == 348:
            dim = struct.unpack(e + "8h", hdr[40:56])
            bitpix = struct.unpack(e + "h", hdr[72:74])[0]
            off = struct.unpack(e + "f", hdr[108:112])[0]
            break
        if len(hdr) >= 540 and struct.unpack(e + "i", hdr[:4])[0] == 540:
            bitpix = struct.unpack(e + "h", hdr[14:16])[0]
            dim = struct.unpack(e + "8q", hdr[16:80])
            off = struct.unpack(e + "q", hdr[168:176])[0]
            break
    else:
        return None
    n = int(dim[0])
    if not 1 <= n <= 7 or bitpix <= 0:
        return None
    nvox = int(np.prod([max(int(d), 1) for d in dim[1:1 + n]], dtype=np.int64))
    return int(off) + nvox * int(bitpix) // 8


def _gzip_length(path: Path, expected: int) -> int:
    """Uncompressed length of a gzip file; raises ValueError if the stream is
    broken. Fast path: the trailer's ISIZE (length mod 2**32) of a
    single-member file equals the expected length."""
    with open(path, "rb") as f:
        f.seek(-4, 2)
        isize = struct.unpack("<I", f.read(4))[0]
    if isize == expected % 2**32:
        return expected
    n = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                n += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        raise ValueError(f"{path.name} is truncated or corrupt ({exc})") from None
    return n


def check_nifti_complete(path) -> None:
    """Raise ValueError if a ``.nii``/``.nii.gz`` file holds less image data
    than its header describes. Other formats are left to their readers."""
    p = Path(path)
    name = p.name.lower()
    gz = name.endswith(".nii.gz")
    if not (gz or name.endswith(".nii")):
        return
    try:
        with (gzip.open(p, "rb") if gz else open(p, "rb")) as f:
            hdr = f.read(540)
    except (EOFError, OSError, zlib.error) as exc:
        raise ValueError(f"cannot read {p.name} as an image: {exc}") from None
    expected = _expected_bytes(hdr)
    if expected is None:
        return                      # not a NIfTI header: the reader will say so
    actual = _gzip_length(p, expected) if gz else p.stat().st_size
    if actual < expected:
        raise ValueError(f"{p.name} is truncated: its header describes {expected} bytes, "
                         f"the file holds {actual}")
