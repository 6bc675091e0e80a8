"""gzip streams through ISA-L (python-isal) where it is installed, else zlib.

A whole CT as ``.nii.gz`` spends most of its read time inflating: ISA-L's
inflate is about twice zlib's speed and its fastest deflate level about ten
times zlib's level 1 on label maps (``bench/bench_pipeline.py``). The stream
format is plain gzip, so every reader opens what is written here, and a
missing ``isal`` only costs speed.

Written streams carry no file name and a zero modification time, so the same
label gives the same bytes (the manifest hashes them) and no input name
reaches an output through the gzip header.
"""

from __future__ import annotations

import functools
import gzip
import zlib

try:                                   # optional speed-up: nothing fails without it
    from isal import igzip as _igzip
    from isal import isal_zlib as _isal_zlib
except ImportError:                    # pragma: no cover - isal is a dependency
    _igzip = _isal_zlib = None

#: exceptions a corrupt or truncated stream raises, whichever library inflates it
GZIP_ERRORS = (EOFError, OSError, zlib.error) + ((_isal_zlib.error,) if _isal_zlib else ())

#: deflate level of written files: 1 (ISA-L's level 1 deflates a whole-CT label
#: map in ~10 ms, zlib's in ~150 ms and 4x larger; ISA-L's level 0 is as fast
#: but 10x larger)
WRITE_LEVEL = 1


def accelerated() -> bool:
    """Whether ISA-L inflates and deflates (else Python's zlib)."""
    return _igzip is not None


#: bytes inflated per piece when a reader asks for a whole buffer at once
READ_PIECE = 1 << 24


@functools.cache
def _readinto_in_pieces(base):
    """``base`` (a gzip file class) whose ``readinto`` fills the buffer piece by
    piece. Both gzip's and ISA-L's file objects inherit ``readinto`` from
    ``io.BufferedIOBase``, which inflates the whole request into one temporary
    ``bytes`` first; nibabel reads a volume's voxels with one ``readinto``, so
    every voxel was held twice (a 265 MiB KiTS label map raised a reader's
    peak memory by 530 MiB). A subclass, not a wrapper: nibabel only memory-maps
    what is not an instance of ``gzip.GzipFile``."""

    class Reader(base):
        def readinto(self, b):
            view = memoryview(b).cast("B")
            n = 0
            while n < len(view):
                got = super().readinto(view[n:n + READ_PIECE])
                if not got:
                    break
                n += got
            return n

    Reader.__name__ = Reader.__qualname__ = f"PiecewiseReadinto{base.__name__}"
    return Reader


def open_gzip_read(path):
    """A binary file object that inflates the gzip file ``path`` (seekable;
    ``readinto`` holds at most :data:`READ_PIECE` bytes besides its buffer)."""
    base = _igzip.IGzipFile if _igzip is not None else gzip.GzipFile
    return _readinto_in_pieces(base)(path, "rb")


def open_gzip_write(raw):
    """A gzip writer on the open binary file ``raw`` (no name, mtime 0)."""
    if _igzip is not None:
        return _igzip.IGzipFile(filename="", mode="wb", compresslevel=WRITE_LEVEL,
                                fileobj=raw, mtime=0)
    return gzip.GzipFile(filename="", mode="wb", compresslevel=WRITE_LEVEL, fileobj=raw,
                         mtime=0)


__all__ = ["GZIP_ERRORS", "READ_PIECE", "WRITE_LEVEL", "accelerated", "open_gzip_read",
           "open_gzip_write"]
