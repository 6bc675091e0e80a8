"""Checks every reader runs before it trusts a header or allocates.

A header states a grid (size, spacing, direction) and a data type; a file
that lies about either must be refused with one clear line, never read
into a silently wrong geometry or an allocation the machine cannot hold.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from pathlib import Path

import numpy as np

#: the working copies made while segmenting (float32 smoothing, sampling,
#: labels) come to a few times the image's own size
_WORKING_COPIES = 3


class ImageReadError(ValueError):
    """The file cannot be read as a trustworthy image; the message is one line."""


def display_name(path) -> str:
    """A file name fit for a one-line message: undecodable bytes as ``\\xNN``."""
    name = Path(path).name or str(path)
    return os.fsencode(name).decode("utf-8", "backslashreplace")


_NAMES_WITHHELD = contextvars.ContextVar("shapeprior_names_withheld", default=False)


@contextlib.contextmanager
def names_withheld(on=True):
    """Within it (when ``on``), what a reader finds below a folder it was given
    (the subfolders of a download, named after patients in many archives) is
    counted in its messages, never named: ``--deidentify`` runs its reads so.
    The paths given are the caller's to scrub."""
    token = _NAMES_WITHHELD.set(bool(on) or _NAMES_WITHHELD.get())
    try:
        yield
    finally:
        _NAMES_WITHHELD.reset(token)


def withhold_names():
    """Withhold the names the readers find (:func:`names_withheld`) from here on in
    this context: a command with ``--deidentify``, which the CLI runs in a context
    of its own."""
    _NAMES_WITHHELD.set(True)


def withholding_names() -> bool:
    """Whether the readers' messages withhold the names they find (:func:`names_withheld`)."""
    return _NAMES_WITHHELD.get()


def input_path_error(path, shown=None, expected="an image file or folder") -> Exception:
    """The error for an input that is neither a regular file nor a folder: not
    found (FileNotFoundError), or a named pipe, socket or device (ValueError),
    which are never read. ``shown`` is the name used in the message (default:
    :func:`display_name`); ``expected`` what the input should have been."""
    import stat

    shown = display_name(path) if shown is None else shown
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return FileNotFoundError(f"no such file or folder: {shown}")
    kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")
    return ValueError(f"{shown} is {kind}, not {expected}: it is not read")


def available_memory() -> int:
    """Bytes this process may allocate for an image: ``$SHAPEPRIOR_MAX_IMAGE_BYTES``
    when set, else the kernel's MemAvailable (total physical memory as fallback)."""
    env = os.environ.get("SHAPEPRIOR_MAX_IMAGE_BYTES")
    if env:
        try:
            n = int(env)
        except ValueError:
            n = -1
        if n < 1:
            raise ValueError(f"$SHAPEPRIOR_MAX_IMAGE_BYTES={env!r} must be a whole number of "
                             "bytes >= 1 (e.g. 2147483648 for 2 GiB)")
        return n
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def reason_text(exc) -> str:
    """An exception's message on one line, at most 200 characters (its type's name
    when it has none): the reason a reader quotes from a library. Characters that
    do not print (the bytes of a corrupt file a library quotes) show as ``?``."""
    text = "".join(c if c.isprintable() else "?" for c in " ".join(str(exc).split()))
    if not text and isinstance(exc, MemoryError):   # a corrupt length asks for gigabytes
        return "MemoryError: it asks for more memory than there is (a corrupt length?)"
    return text[:200] or type(exc).__name__


def check_size(name, size_xyz, itemsize) -> None:
    """Refuse an image whose header promises more voxels than memory holds."""
    size = [int(s) for s in size_xyz]
    if any(s < 1 for s in size):
        raise ImageReadError(f"{name}: its header gives an empty grid {size}")
    nbytes = int(np.prod(size, dtype=object)) * int(itemsize)
    need = nbytes * _WORKING_COPIES
    have = available_memory()
    if need > have:
        raise ImageReadError(
            f"{name}: its header describes a {'x'.join(map(str, size))} image of "
            f"{nbytes / 2**30:.2f} GiB, which needs about {need / 2**30:.1f} GiB to process; "
            f"{have / 2**30:.1f} GiB is available")


def check_geometry(name, spacing, direction, origin) -> None:
    """Spacing finite and > 0, direction finite and orthonormal, origin finite."""
    sp = np.asarray(spacing, dtype=float)
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ImageReadError(f"{name}: voxel spacing {sp.tolist()} mm is not finite and positive")
    o = np.asarray(origin, dtype=float)
    if not np.all(np.isfinite(o)):
        raise ImageReadError(f"{name}: origin {o.tolist()} is not finite")
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(d)) or np.abs(d.T @ d - np.eye(3)).max() > 1e-4:
        raise ImageReadError(f"{name}: the direction matrix is not orthonormal "
                             "(sheared or degenerate axes); refusing to guess the geometry")


#: MetaImage header fields that place the grid, with how many numbers each holds
#: for NDims n: ITK's MetaIO reads a value it cannot parse, and a missing one, as
#: 0 without a word ("Offset = abc 0 0" gave the origin (0, 0, 0); "Offset = 5 0"
#: gave (5, 0, 0)), so they are checked on the header's own text
_META_FIELDS = {"Offset": 1, "Origin": 1, "Position": 1, "ElementSpacing": 1,
                "ElementSize": 1, "DimSize": 1, "TransformMatrix": 2, "Rotation": 2,
                "Orientation": 2}
#: the header's text is read up to this many bytes (it ends at ElementDataFile)
_META_HEADER_BYTES = 1 << 16


def _numbers(text):
    """A header field's white-space separated values as floats; None when one of
    them is not a finite number."""
    try:
        values = [float(t) for t in text.split()]
    except ValueError:
        return None
    return values if all(np.isfinite(v) for v in values) else None


def check_metaimage_header(path, name) -> None:
    """Refuse a MetaImage (``.mha``/``.mhd``) whose header states its grid with a
    value that is not a finite number, or with too few or too many numbers for
    its ``NDims``: :data:`_META_FIELDS`."""
    with open(path, "rb") as fh:
        head = fh.read(_META_HEADER_BYTES)
    fields = {}
    for raw in head.split(b"\n"):
        key, eq, value = raw.decode("latin-1").partition("=")
        if not eq:
            continue
        key = key.strip()
        fields[key] = value.strip()
        if key == "ElementDataFile":
            break
    try:
        ndims = int(fields.get("NDims", "3"))
    except ValueError:
        raise ImageReadError(f"{name}: its header's NDims = {fields['NDims']!r} is not a "
                             "whole number") from None
    for key, power in _META_FIELDS.items():
        if key not in fields:
            continue
        values = _numbers(fields[key])
        if values is None or len(values) != ndims ** power:
            raise ImageReadError(
                f"{name}: its header's {key} = {fields[key][:60]!r} is not {ndims ** power} "
                "finite numbers (MetaIO would read it as zeros); refusing to guess the geometry")


#: NRRD's spaces of a patient's axes (full names and teem's short ones, any case),
#: which ITK turns into LPS
_NRRD_PATIENT_SPACES = {"right-anterior-superior", "left-anterior-superior",
                        "left-posterior-superior", "ras", "las", "lps"}


def check_nrrd_header(path, name, allow_no_orientation=False) -> None:
    """Refuse a NRRD (``.nrrd``/``.nhdr``) whose grid ITK would have to guess:
    no ``space directions`` (no orientation: ITK takes the identity, in LPS, at
    the origin 0) or directions in a space without a patient's axes
    (``scanner-xyz``, ``3D-right-handed``, ``3D-left-handed``, or a ``space
    dimension`` alone: ITK takes them for LPS) unless ``allow_no_orientation``,
    and a ``spacings`` value that is not a finite number > 0 (NRRD's "unknown"
    NaN, which ITK reads as 1 mm)."""
    with open(path, "rb") as fh:
        head = fh.read(_META_HEADER_BYTES)
    fields = {}
    for raw in head.split(b"\n")[1:]:
        line = raw.decode("latin-1").strip()
        if not line:
            break                   # the blank line that ends the header
        key, colon, value = line.partition(": ")
        if colon and not line.startswith("#") and not key.endswith(":"):
            fields[key.strip()] = value.strip()
    if "spacings" in fields:
        values = _numbers(fields["spacings"])
        if values is None or any(v <= 0 for v in values):
            raise ImageReadError(f"{name}: its header's spacings: {fields['spacings'][:60]!r} "
                                 "are not all finite and positive (ITK would read an unknown "
                                 "one as 1 mm); refusing to guess the geometry")
    if "space directions" not in fields and not allow_no_orientation:
        raise ImageReadError(f"{name}: its header records no orientation (no 'space "
                             "directions'); ITK would place it unrotated at the origin 0. Give "
                             "--allow-no-orientation to read it so")
    space = fields.get("space", "").lower()
    if "space directions" in fields and space not in _NRRD_PATIENT_SPACES and \
            not space.endswith("-time") and not allow_no_orientation:
        said = (f"its header's space {fields['space'][:40]!r} has no patient axes (a "
                "scanner's or a generic 3-D frame)" if space else
                "its header gives 'space directions' in no named space (a patient's is "
                "'space: left-posterior-superior', or RAS or LAS)")
        raise ImageReadError(f"{name}: {said}; ITK would take its coordinates for LPS, a "
                             "mirror image where the frame is left-handed. Give "
                             "--allow-no-orientation to read it so")


#: TIFF tags whose values locate a page's pixel data: (offsets, byte counts) of
#: its strips and of its tiles
_TIFF_DATA_TAGS = ((273, 279), (324, 325))
#: bytes per value of the TIFF field types an offset or a count may have
#: (SHORT, LONG, LONG8, IFD, IFD8)
_TIFF_INT_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8), 13: ("I", 4), 18: ("Q", 8)}
#: pages walked at most (a page chain this long is not a volume's)
_TIFF_MAX_PAGES = 1_000_000


def check_tiff_structure(path, name) -> None:
    """Refuse a TIFF (``.tif``/``.tiff``, classic or BigTIFF) whose page chain or
    pixel data do not fit in the file: libtiff reads the pages it reaches and
    stops quietly at the first that is cut off, so a file cut in half is read
    as a volume of half its slices. Walks the chain of image file directories
    (IFDs) and checks that each directory, and each strip or tile it points to,
    ends within the file, and that the chain ends (no loop). Each page must be a
    slice like the first: a page marked a reduced-resolution copy or a mask
    (NewSubfileType), or one of another width, height, bit depth, sample count or
    sample format is refused: ITK's reader counts the pages it keeps by their
    subfile type and sizes its buffer by the first page, and such a page made it
    write past the buffer (the process aborted: found by bench/fuzz_readers.py)."""
    import struct

    size = os.path.getsize(path)

    def bad(what):
        return ImageReadError(f"{name}: truncated or corrupt TIFF: {what} (the file has {size} "
                              "bytes); refusing a volume with slices missing")

    with open(path, "rb") as fh:
        head = fh.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 8:
            raise bad("no TIFF header")
        magic = struct.unpack(order + "H", head[2:4])[0]
        big = magic == 43
        if magic not in (42, 43) or (big and len(head) < 16):
            raise bad(f"magic number {magic}, not 42 or 43")
        off_fmt, off_size = ("Q", 8) if big else ("I", 4)
        count_fmt, count_size, entry_size = ("Q", 8, 20) if big else ("H", 2, 12)
        ifd = struct.unpack(order + off_fmt, head[8:16] if big else head[4:8])[0]

        def read(at, n):
            if at + n > size:
                raise bad(f"bytes {at}-{at + n} lie beyond its end")
            fh.seek(at)
            return fh.read(n)

        seen, page, first = {}, 0, None      # directory offset: its page; page 1's layout
        while ifd:
            page += 1
            if ifd in seen:
                raise bad(f"the chain of pages loops back from page {page - 1} to page "
                          f"{seen[ifd]}'s directory")
            if page > _TIFF_MAX_PAGES:
                raise bad(f"more than {_TIFF_MAX_PAGES} pages")
            seen[ifd] = page
            if ifd + count_size > size:
                raise bad(f"page {page}'s directory at byte {ifd} lies beyond its end")
            n = struct.unpack(order + count_fmt, read(ifd, count_size))[0]
            table = read(ifd + count_size, n * entry_size + off_size)
            fields = {}
            for k in range(n):
                e = table[k * entry_size:(k + 1) * entry_size]
                tag, typ = struct.unpack(order + "HH", e[:4])
                cnt = struct.unpack(order + off_fmt, e[4:4 + off_size])[0]
                fields[tag] = (typ, cnt, e[4 + off_size:])
            kind = _tiff_first(fields.get(254), order, off_size, read, bad)
            if kind not in (None, 0, 2):          # 2: a page of a multi-page file
                raise bad(f"page {page} is marked a reduced-resolution copy or a mask "
                          f"(NewSubfileType {kind}), not a slice")
            layout = {what: _tiff_first(fields.get(tag), order, off_size, read, bad)
                      for tag, what in _TIFF_LAYOUT_TAGS.items()}
            if first is None:
                first = layout
            elif layout != first:
                differs = ", ".join(f"{k} {layout[k]} (page 1: {first[k]})" for k in layout
                                    if layout[k] != first[k])
                raise bad(f"page {page} is not a slice like the first: {differs}")
            for offsets, counts in _TIFF_DATA_TAGS:
                if offsets in fields and counts in fields:
                    starts = _tiff_values(fields[offsets], order, off_size, read, bad)
                    lengths = _tiff_values(fields[counts], order, off_size, read, bad)
                    if len(starts) != len(lengths):
                        raise bad(f"page {page} gives {len(starts)} data offsets and "
                                  f"{len(lengths)} lengths")
                    ends = [a + b for a, b in zip(starts, lengths)]
                    if ends and max(ends) > size:
                        raise bad(f"page {page}'s pixel data end at byte {max(ends)}, beyond "
                                  "the file's end")
            ifd = struct.unpack(order + off_fmt, table[n * entry_size:])[0]


#: TIFF tags every page of a stack must give as the first does
_TIFF_LAYOUT_TAGS = {256: "width", 257: "height", 258: "bits per sample",
                     277: "samples per pixel", 339: "sample format"}


def _tiff_first(field, order, off_size, read, bad):
    """The first value of a directory entry of an integer type (None when the
    page has no such entry; ``(type, count)`` for an entry of another type)."""
    if field is None:
        return None
    typ, cnt, _ = field
    if typ not in _TIFF_INT_TYPES or cnt < 1:
        return (typ, cnt)
    return _tiff_values(field, order, off_size, read, bad)[0]


def _tiff_values(field, order, off_size, read, bad):
    """The integer values of one TIFF directory entry (offsets or counts): inline
    when they fit in its value slot, else read from where the slot points."""
    import struct

    typ, cnt, slot = field
    if typ not in _TIFF_INT_TYPES:
        raise bad(f"a data offset or length of field type {typ}")
    code, width = _TIFF_INT_TYPES[typ]
    raw = slot[:cnt * width] if cnt * width <= off_size else \
        read(struct.unpack(order + ("Q" if off_size == 8 else "I"), slot)[0], cnt * width)
    return struct.unpack(f"{order}{cnt}{code}", raw)


#: bytes of a GIPL file's header: its voxels follow it
_GIPL_HEADER_BYTES = 256
#: bytes of an MRC file's main header: its extended header (NSYMBT bytes), then
#: its voxels follow it
_MRC_HEADER_BYTES = 1024


def check_data_extent(path, name, nbytes, nvalues) -> None:
    """Refuse a VTK legacy (``.vtk``), GIPL (``.gipl``, ``.gipl.gz``) or MRC
    (``.mrc``) image that holds fewer voxels than its header describes
    (``nbytes`` bytes, ``nvalues`` values): ITK reads such a file without a
    word, the missing voxels made up. A binary VTK file must hold ``nbytes``
    after its header's ``LOOKUP_TABLE`` line, an ASCII one ``nvalues`` numbers;
    a GIPL file ``nbytes`` after its 256-byte header (a gzipped one
    decompressed, and its stream complete); an MRC file after its 1024-byte
    header and its extended header.
    Other formats are left to their readers' own checks."""
    import gzip
    import zlib

    low = str(path).lower()

    def short(have, unit="bytes"):
        return ImageReadError(f"{name} is truncated: its header describes "
                              f"{nbytes if unit == 'bytes' else nvalues} {unit} of voxels, the "
                              f"file holds {have}; refusing to make up the rest")

    if low.endswith((".gipl", ".gipl.gz")):
        if low.endswith(".gz"):
            have = 0
            try:
                with gzip.open(path, "rb") as fh:
                    while chunk := fh.read(1 << 20):
                        have += len(chunk)
            except (EOFError, OSError, zlib.error) as exc:
                raise ImageReadError(f"{name}: its gzip stream is cut short or corrupt "
                                     f"({exc}); refusing to make up the rest") from None
        else:
            have = os.path.getsize(path)
        if have - _GIPL_HEADER_BYTES < nbytes:
            raise short(max(have - _GIPL_HEADER_BYTES, 0))
    elif low.endswith(".mrc"):
        import struct

        with open(path, "rb") as fh:
            head = fh.read(_MRC_HEADER_BYTES)
        if len(head) < _MRC_HEADER_BYTES:
            raise short(0)
        # the extended header's size (NSYMBT, word 24) in the file's byte order
        # (the machine stamp at byte 212: 0x11 big-endian, else little-endian)
        order = ">" if head[212] == 0x11 else "<"
        extra = struct.unpack(order + "i", head[92:96])[0]
        have = os.path.getsize(path) - _MRC_HEADER_BYTES - max(extra, 0)
        if have < nbytes:
            raise short(max(have, 0))
    elif low.endswith(".vtk"):
        with open(path, "rb") as fh:
            head = fh.read(_META_HEADER_BYTES)
            at = head.find(b"LOOKUP_TABLE")
            if at < 0:
                return              # a layout ITK does not read as an image: its error stands
            start = head.find(b"\n", at) + 1
            binary = b"\nBINARY" in head[:at].upper()
            if binary:
                have = os.path.getsize(path) - start
                if have < nbytes:
                    raise short(max(have, 0))
                return
            fh.seek(start)
            count, joined = 0, False      # joined: the last chunk ended inside a number
            while chunk := fh.read(1 << 20):
                count += len(chunk.split()) - (joined and not chunk[:1].isspace())
                joined = not chunk[-1:].isspace()
                if count >= nvalues:
                    return
            raise short(count, "values")


#: the largest voxel magnitude accepted: images are computed on in float32, and a
#: larger value (a float64 file, or an intensity scaling that multiplies by 1e38)
#: became infinite there and ended as "weights must be finite" deep in a fit
MAX_VOXEL_MAGNITUDE = float(np.finfo(np.float32).max)


def check_values(name, array) -> None:
    """Refuse NaN or infinite voxel values (from the raw data, any format), and
    values beyond the float32 range (:data:`MAX_VOXEL_MAGNITUDE`)."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    if not np.all(np.isfinite(array)):
        raise ImageReadError(f"{name} contains NaN or infinite voxel values")
    if array.dtype.itemsize > 4 and array.size:
        big = max(-float(array.min()), float(array.max()))
        if big > MAX_VOXEL_MAGNITUDE:
            raise ImageReadError(f"{name}: voxel values reach {big:.3g} in magnitude, beyond "
                                 f"the 32-bit float range (±{MAX_VOXEL_MAGNITUDE:.3g}) that "
                                 "the image is processed in")


def native(array) -> np.ndarray:
    """C-contiguous, in this machine's byte order (big-endian files stay exact)."""
    a = np.asarray(array)
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))


@contextlib.contextmanager
def native_stderr():
    """Keep what native code (ITK's MetaIO, GDCM) prints on the process's stderr
    (file descriptor 2) off the terminal while the block runs; yields a list that
    holds those lines, stripped and non-empty, once the block ends.

    A truncated MetaImage made MetaIO print two lines of its own before
    SimpleITK's misleading "No such file or directory": a command's stderr is
    its own one line, whose reason these lines give (:func:`itk_reason`)."""
    import sys
    import tempfile

    lines = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield lines                     # no descriptor 2 to borrow: nothing to keep off
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            lines.extend(ln.strip() for ln in text.splitlines() if ln.strip())


def itk_call(call, what):
    """``call()`` (a SimpleITK read) with what native code prints held off stderr
    (:func:`native_stderr`); its RuntimeError becomes one ImageReadError line,
    "cannot read ``what``: <reason>", the reason from those lines or the
    exception (:func:`itk_reason`)."""
    try:
        with native_stderr() as said:
            return call()
    except RuntimeError as exc:
        raise ImageReadError(f"cannot read {what}: {itk_reason(exc, said)}") from None


def itk_reason(exc, native=()) -> str:
    """The reason in a SimpleITK exception, on one line.

    SimpleITK messages start with a source location (``...sitkImageReaderBase.cxx:99:``)
    and put the reason on later lines, often after ``ERROR:``. ``native``: the
    lines the library printed itself (:func:`native_stderr`), which name the
    actual problem where the exception does not (a truncated MetaImage's data);
    they come first."""
    if native:
        return re.sub(r"\s+", " ", "; ".join(native))[:300]
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    keep = []
    for ln in lines:
        if ln.startswith("Exception thrown in SimpleITK") or ln.endswith(".cxx:") \
                or ln.endswith(".h:") or ln.endswith(".hxx:"):
            continue
        if "ERROR:" in ln:
            ln = ln.split("ERROR:", 1)[1].strip()
        keep.append(ln)
    text = "; ".join(keep) if keep else (lines[0] if lines else type(exc).__name__)
    text = re.sub(r"\(0x[0-9a-fA-F]+\)", "", text)           # object addresses
    return text[:300]
