"""File names that C++ readers can take.

SimpleITK (through SWIG) aborts the whole process (SIGABRT) when handed a
path that is not valid UTF-8, which Linux file names need not be. Python
keeps such bytes as lone surrogates; :func:`itk_path` hands the C++ side a
link with a clean name instead, so the file is still read, by its bytes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def is_clean(path) -> bool:
    """True when ``path`` encodes to UTF-8 (C++ readers can take it)."""
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@contextlib.contextmanager
def itk_path(path):
    """Yield a UTF-8 path string that reaches the same file or folder as ``path``.

    A clean path is yielded as it is; otherwise a symbolic link with a clean
    name in a private temporary folder, removed afterwards. The link keeps
    the name's image suffix so readers choose the right format."""
    p = Path(path)
    if is_clean(p):
        yield str(p)
        return
    suffix = "".join(s for s in p.suffixes if is_clean(s))[-16:]
    tmp = tempfile.mkdtemp(prefix="shapeprior-link-")
    try:
        link = os.path.join(tmp, "input" + suffix)
        os.symlink(os.fsencode(p.resolve()), os.fsencode(link))
        yield link
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
