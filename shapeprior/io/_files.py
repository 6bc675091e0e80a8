"""The files an image path stands for.

A NIfTI/Analyze pair is two files (``.hdr`` and ``.img``). A detached
MetaImage (``.mhd``) or NRRD (``.nhdr``) header names its voxel data in other
files, anywhere (``ElementDataFile =`` / ``data file:``: one name, a
``LIST`` of names, or a printf pattern with a range of numbers), relative to
the header's folder or absolute. Those files are inputs too: the output policy
may not write over them, and a run's manifest hashes them (the header alone
does not say what was read).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .._provenance import sha256_file
from ._nifti import _pair_files

#: a detached header's text is read up to this many bytes
_HEADER_BYTES = 1 << 16
#: file names a pattern or a list may expand to at most (more is no volume's)
_MAX_FILES = 100_000
#: a printf pattern of one integer (``slice%03d.raw``)
_PATTERN = re.compile(r"%[-+ #0]*\d*[diu]")


def image_files(path):
    """The files an image path stands for: both halves of a ``.hdr``/``.img``
    pair, or a detached header and the data files it names, else the file
    itself (those that exist)."""
    p = Path(path)
    h, d = _pair_files(p)
    files = [h, d, *detached_data_files(p)]
    return [f for f in dict.fromkeys(files) if f.is_file()]


def image_sha256(path, digest=sha256_file) -> str:
    """The hex sha256 of what an image path stands for: the file's own hash when
    it is one file (``digest(path)``), else the sha256 of its files' hashes in
    :func:`image_files` order, so that two detached headers of the same text
    naming different voxels differ, and a change of the voxels alone shows."""
    files = image_files(path)
    if len(files) <= 1:
        return digest(path)
    h = hashlib.sha256()
    for f in files:
        h.update(digest(f).encode())
    return h.hexdigest()


def detached_data_files(path) -> list:
    """The data files a MetaImage or NRRD header names (``[]`` for data inside
    the header's own file, another format, or a header that cannot be read)."""
    p = Path(path)
    low = p.name.lower()
    parse = (_metaimage_names if low.endswith((".mhd", ".mha")) else
             _nrrd_names if low.endswith((".nhdr", ".nrrd")) else None)
    if parse is None or not p.is_file():       # (a named pipe is never opened)
        return []
    try:
        with open(p, "rb") as fh:
            head = fh.read(_HEADER_BYTES)
    except OSError:
        return []
    return [p.parent / n for n in parse(head)]


def _lines(head: bytes):
    return [raw.decode("latin-1").rstrip("\r") for raw in head.split(b"\n")]


def _metaimage_names(head: bytes) -> list:
    lines = _lines(head)
    for i, line in enumerate(lines):
        key, eq, value = line.partition("=")
        if eq and key.strip() == "ElementDataFile":
            return _expand(value.strip(), lines[i + 1:], "LOCAL")
    return []


def _nrrd_names(head: bytes) -> list:
    lines = _lines(head)
    for i, line in enumerate(lines[1:], start=1):
        if not line.strip():
            return []           # the blank line that ends the header: data inline
        key, colon, value = line.partition(":")
        if (colon and key.strip() in ("data file", "datafile") and not line.startswith("#")
                and not value.startswith("=")):         # 'key:=value' is a key/value pair
            return _expand(value.strip(), lines[i + 1:], None)
    return []


def _expand(value: str, rest: list, inline) -> list:
    """The names one ``ElementDataFile`` / ``data file`` value stands for."""
    if not value or value == inline:
        return []
    words = value.split()
    if words[0].upper() == "LIST":
        return [n.strip() for n in rest if n.strip()][:_MAX_FILES]
    if len(words) >= 4 and _PATTERN.search(words[0]):
        try:
            lo, hi, step = (int(w) for w in words[1:4])
        except ValueError:
            return [value]
        if step == 0 or (hi - lo) // step + 1 > _MAX_FILES:
            return []
        stop = hi + (1 if step > 0 else -1)
        return [_PATTERN.sub(lambda m: m.group(0) % k, words[0], count=1)
                for k in range(lo, stop, step)]
    return [value]
