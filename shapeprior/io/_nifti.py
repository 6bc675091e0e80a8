"""NIfTI-1, NIfTI-2 (and, when allowed, Analyze 7.5) read and written as
nibabel and the NIfTI convention place them.

The header is parsed and checked here, from its raw bytes, before anything
is allocated: data type against bitpix, dimensions, the byte count the
header promises against what the file holds (ITK zero-fills a truncated
file without a word), the size against available memory, scale factors,
and the transform. Geometry follows the convention as nibabel does: the
sform when ``sform_code > 0``, else the qform when ``qform_code > 0`` (a qform
whose qfac is negative but not -1 computed as niftilib does, where nibabel
alone departs from ITK and FSL); a file with neither is refused unless
``allow_no_orientation``. A sheared sform is refused, never swapped for the
qform. A qform that places the file elsewhere than its sform is reported
(``other_qform``) and written into the label, so that a reader that prefers
the qform (ITK) lays the label on the image. Voxel values come from the raw
data through nibabel, so NaN and infinities are seen (ITK zeroes them).

Coordinates: NIfTI affines map to RAS mm; :class:`~shapeprior.io.Volume`
holds LPS mm (ITK's convention), so x and y change sign on the way in and
out. Labels are written with qform = sform and the same code, so every
reader agrees on where they lie; a label of an image whose qform places it
elsewhere keeps that qform, so that each reader lays the label on the image.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._checks import (ImageReadError, check_geometry, check_size, check_values, display_name,
                      native, reason_text)
from ._gzip import GZIP_ERRORS, open_gzip_read, open_gzip_write

NIFTI_SUFFIXES = (".nii.gz", ".nii", ".hdr", ".img", ".hdr.gz", ".img.gz")

_DTYPES = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64,
           256: np.int8, 512: np.uint16, 768: np.uint32, 1024: np.int64, 1280: np.uint64}
_UNSUPPORTED = {1: "1-bit", 32: "complex64", 128: "RGB", 1536: "float128",
                1792: "complex128", 2048: "complex256", 2304: "RGBA"}
_LPS = np.diag([-1.0, -1.0, 1.0])
#: the most deflate can shrink data (a run of one byte value): about 1032:1
_MAX_DEFLATE_RATIO = 1032


def is_nifti(path) -> bool:
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


@dataclass
class RawHeader:
    version: int            # 1, 2, or 0 for Analyze 7.5 (no magic)
    pair: bool              # header and data in separate files (.hdr/.img)
    endian: str
    dim: tuple
    datatype: int
    bitpix: int
    pixdim: tuple
    vox_offset: float
    scl_slope: float
    scl_inter: float
    qform_code: int
    sform_code: int


def parse_header(raw: bytes, name: str) -> RawHeader:
    """Raw header bytes -> :class:`RawHeader`; one-line error when not NIfTI/Analyze."""
    for e in ("<", ">"):
        if len(raw) >= 4 and struct.unpack(e + "i", raw[:4])[0] == 348:
            if len(raw) < 348:
                break
            magic = raw[344:348]
            version = 1 if magic in (b"n+1\0", b"ni1\0") else 0
            f = lambda fmt, a, b: struct.unpack(e + fmt, raw[a:b])  # noqa: E731
            return RawHeader(
                version, magic != b"n+1\0", e, f("8h", 40, 56), f("h", 70, 72)[0],
                f("h", 72, 74)[0], f("8f", 76, 108), f("f", 108, 112)[0], f("f", 112, 116)[0],
                f("f", 116, 120)[0], f("h", 252, 254)[0] if version else 0,
                f("h", 254, 256)[0] if version else 0)
        if len(raw) >= 4 and struct.unpack(e + "i", raw[:4])[0] == 540:
            if len(raw) < 540:
                break
            magic = raw[4:12]
            if magic[:3] not in (b"n+2", b"ni2"):
                raise ImageReadError(f"{name}: NIfTI-2 header with a bad magic string")
            f = lambda fmt, a, b: struct.unpack(e + fmt, raw[a:b])  # noqa: E731
            return RawHeader(
                2, magic[:3] == b"ni2", e, f("8q", 16, 80), f("h", 12, 14)[0], f("h", 14, 16)[0],
                f("8d", 104, 168), float(f("q", 168, 176)[0]), f("d", 176, 184)[0],
                f("d", 184, 192)[0], f("i", 344, 348)[0], f("i", 348, 352)[0])
    raise ImageReadError(f"cannot read {name} as an image: not a NIfTI file "
                         "(bad or truncated header)")


def _gzipped(path: Path) -> bool:
    """Whether ``path`` holds a gzip stream: by its first bytes, not its name.
    ITK, FSL and AFNI open a ``.gz`` name through zlib's ``gzopen``, which reads
    plain bytes as they are, so a ``.nii.gz`` holding an uncompressed NIfTI is
    read there (nibabel refuses it); so it is here. A gzip stream under a name
    without ``.gz`` is refused by all of them, and here in one line
    (:func:`_checked_header`)."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError:
        return path.name.lower().endswith(".gz")


def _named_gzipped(path: Path) -> bool:
    """Whether nibabel, which goes by the name, would inflate ``path``."""
    return path.name.lower().endswith(".gz")


def _open(path: Path):
    return open_gzip_read(path) if _gzipped(path) else open(path, "rb")


def _pair_files(p: Path):
    """(header file, data file) of a NIfTI/Analyze path."""
    low = p.name.lower()
    for h, d in ((".hdr", ".img"), (".hdr.gz", ".img.gz")):
        if low.endswith(h):
            return p, p.with_name(p.name[: -len(h)] + d)
        if low.endswith(d):
            return p.with_name(p.name[: -len(d)] + h), p
    return p, p


def _stored_length(path: Path, expected: int, name: str) -> int:
    """Bytes a (possibly gzipped) file holds, without trusting the header.

    gzip: a stream shorter than ``expected / 1032`` cannot hold it at all;
    the trailer's ISIZE of a single-member file is a fast exact answer below
    4 GiB; otherwise the stream is decompressed and counted."""
    size = path.stat().st_size
    if not _gzipped(path):
        return size
    if size < 18:
        raise ImageReadError(f"{name} is truncated or corrupt (gzip stream of {size} bytes)")
    if expected > size * _MAX_DEFLATE_RATIO + 1024:
        return size * _MAX_DEFLATE_RATIO + 1024     # cannot be: report it as truncated
    with open(path, "rb") as f:
        f.seek(-4, 2)
        isize = struct.unpack("<I", f.read(4))[0]
    if expected < 2**32 and isize == expected:
        return expected
    n = 0
    try:
        with open_gzip_read(path) as f:
            while chunk := f.read(1 << 22):
                n += len(chunk)
                if n > expected + (1 << 24):
                    break
    except GZIP_ERRORS as exc:
        raise ImageReadError(f"{name} is truncated or corrupt ({exc})") from None
    return n


def _checked_header(p: Path, name: str, allow_no_orientation: bool) -> RawHeader:
    hdr_path, data_path = _pair_files(p)
    if not hdr_path.is_file():
        raise ImageReadError(f"{name}: its header file {display_name(hdr_path)} is missing")
    if not data_path.is_file():
        raise ImageReadError(f"{name}: its data file {display_name(data_path)} is missing")
    for f in dict.fromkeys((hdr_path, data_path)):
        if _gzipped(f) and not _named_gzipped(f):
            raise ImageReadError(f"{display_name(f)} holds a gzip stream under a name without "
                                 f".gz; no NIfTI reader opens it so: name it {f.name}.gz")
    try:
        with _open(hdr_path) as f:
            raw = f.read(540)
    except GZIP_ERRORS as exc:
        raise ImageReadError(f"cannot read {name} as an image: {exc}") from None
    h = parse_header(raw, name)
    if h.version == 0 and not allow_no_orientation:
        raise ImageReadError(f"{name} is an Analyze 7.5 file, which records no orientation; "
                             "convert it to NIfTI or pass --allow-no-orientation")
    single = hdr_path == data_path
    if single and h.pair:
        raise ImageReadError(f"{name}: the header says its data lie in a separate .img file")
    if h.datatype in _UNSUPPORTED:
        raise ImageReadError(f"{name}: {_UNSUPPORTED[h.datatype]} voxels are not supported "
                             "(a scalar grey-value image is needed)")
    if h.datatype not in _DTYPES:
        raise ImageReadError(f"{name}: unknown NIfTI datatype code {h.datatype}")
    itemsize = np.dtype(_DTYPES[h.datatype]).itemsize
    if h.bitpix != 8 * itemsize:
        raise ImageReadError(f"{name}: inconsistent header: datatype {h.datatype} has "
                             f"{8 * itemsize} bits per voxel, bitpix says {h.bitpix}")
    nd = h.dim[0]
    if not 1 <= nd <= 7:
        raise ImageReadError(f"{name}: inconsistent header: dim[0] = {nd} is outside 1..7")
    dims = [int(d) for d in h.dim[1:1 + nd]]
    if any(d < 1 for d in dims):
        raise ImageReadError(f"{name}: inconsistent header: dimensions {dims} must be >= 1")
    if nd < 3:
        raise ImageReadError(f"{name}: expected a 3-D image, got {nd}-D")
    if any(d != 1 for d in dims[3:]):
        raise ImageReadError(f"{name} holds {int(np.prod(dims[3:]))} volumes ({nd}-D, "
                             f"dimensions {dims}); a single 3-D volume is needed")
    off = h.vox_offset
    min_off = (352 if h.version < 2 else 544) if single else 0
    if not np.isfinite(off) or off != int(off) or off < min_off:
        raise ImageReadError(f"{name}: inconsistent header: vox_offset {off} "
                             f"(at least {min_off} expected)")
    if not (np.isfinite(h.scl_slope) and np.isfinite(h.scl_inter)):
        raise ImageReadError(f"{name}: intensity scaling (scl_slope {h.scl_slope}, "
                             f"scl_inter {h.scl_inter}) is not finite")
    check_size(name, dims[:3], 8 if h.scl_slope not in (0.0, 1.0) or h.scl_inter else itemsize)
    expected = int(off) + int(np.prod(dims, dtype=np.int64)) * itemsize
    held = _stored_length(data_path, expected, name)
    if held < expected:
        raise ImageReadError(f"{name} is truncated: its header describes {expected} bytes, "
                             f"the file holds {held}")
    return h


def _niftilib_qform(hdr, qfac, spacing) -> np.ndarray:
    """The qform (RAS affine) as niftilib computes it (``nifti_quatern_to_mat44``,
    which ITK, FSL and AFNI use), for a header whose ``pixdim[0]`` (qfac) is
    negative but not -1: niftilib takes any negative qfac for -1 and flips the
    third axis; nibabel resets such a qfac to 1, and the image came out as its
    mirror image. (A quaternion ``(b, c, d)`` longer than 1, which niftilib
    reads as a rotation by 180 degrees about it, stays refused: nibabel cannot
    open the file.)"""
    quat = np.array([float(hdr[k]) for k in ("quatern_b", "quatern_c", "quatern_d")])
    b, c, d = quat
    a = 1.0 - float(quat @ quat)
    if a < 1e-7:                    # niftilib: the vector normalised, a rotation by pi
        b, c, d = quat / np.sqrt(float(quat @ quat))
        a = 0.0
    else:
        a = np.sqrt(a)
    R = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                  [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                  [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
    aff = np.eye(4)
    aff[:3, :3] = R * (np.asarray(spacing, dtype=float) * [1.0, 1.0, -1.0 if qfac < 0 else 1.0])
    aff[:3, 3] = [float(hdr[k]) for k in ("qoffset_x", "qoffset_y", "qoffset_z")]
    return aff


def _qform(hdr, h: RawHeader, name: str, codes: str) -> np.ndarray:
    """The qform (RAS affine) as niftilib, ITK and nibabel agree on it."""
    sp = np.asarray(h.pixdim[1:4], dtype=float)
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ImageReadError(f"{name}: voxel spacing (pixdim) {sp.tolist()} mm is not "
                             f"finite and positive ({codes})")
    qfac = float(h.pixdim[0])       # as the file holds it, not as nibabel repaired it
    if qfac < 0 and qfac != -1.0:
        return _niftilib_qform(hdr, qfac, sp)
    try:
        return np.asarray(hdr.get_qform(), dtype=float)
    except Exception as exc:  # noqa: BLE001 - nibabel's HeaderDataError and friends
        raise ImageReadError(f"{name}: invalid qform ({codes}): {exc}") from None


def _other_qform(img, h: RawHeader, name: str, shape) -> dict | None:
    """Of a file placed by its sform that also holds a qform placing it
    elsewhere: ``{"affine": qform (RAS, 4x4 list), "code": qform_code,
    "apart_mm": the largest distance between where the two put a corner of
    the grid}``; else None. ITK (and 3D Slicer, ITK-SNAP) place such a file by
    its qform when its sform_code is not 1 (scanner); nibabel, FSL and this
    reader by its sform. A label written with both transforms lies on the
    image's voxels in each of them."""
    if not (h.sform_code > 0 and h.qform_code > 0):
        return None
    try:
        q = _qform(img.header, h, name, "")
    except ImageReadError:
        return None
    if not np.all(np.isfinite(q)):
        return None
    s = np.asarray(img.header.get_sform(), dtype=float)
    n = np.asarray(shape[:3], dtype=float) - 1
    corners = np.array([[i, j, k, 1.0] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])])
    apart = float(np.max(np.linalg.norm((corners @ (q - s).T)[:, :3], axis=1)))
    if apart <= QFORM_APART_MM:
        return None
    return {"affine": q.tolist(), "code": int(h.qform_code), "apart_mm": apart}


#: a qform this close to the sform (mm, at the grid's corners) places the image where
#: the sform does, within the float32 rounding of the header's numbers
QFORM_APART_MM = 1e-3


def _affine(img, h: RawHeader, name: str, allow_no_orientation: bool) -> np.ndarray:
    """The NIfTI convention's affine (RAS mm): sform, else qform, else refuse."""
    hdr = img.header
    codes = f"qform_code {h.qform_code}, sform_code {h.sform_code}"
    if h.sform_code > 0:
        aff = np.asarray(hdr.get_sform(), dtype=float)
        what = "sform"
    elif h.qform_code > 0:
        aff = _qform(hdr, h, name, codes)
        what = "qform"
    else:
        if not allow_no_orientation:
            raise ImageReadError(f"{name} records no orientation ({codes}); where it lies "
                                 "is unknown: pass --allow-no-orientation to place it by its "
                                 "voxel sizes alone")
        sp = np.asarray(h.pixdim[1:4], dtype=float)
        if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise ImageReadError(f"{name}: voxel spacing (pixdim) {sp.tolist()} mm is not "
                                 "finite and positive")
        aff = np.asarray(hdr.get_base_affine(), dtype=float)
        what = "fallback"
    M = aff[:3, :3]
    if not np.all(np.isfinite(aff)):
        raise ImageReadError(f"{name}: the {what} is not finite ({codes})")
    sp = np.linalg.norm(M, axis=0)
    if np.any(sp <= 0):
        raise ImageReadError(f"{name}: the {what} is degenerate (an axis of length 0; {codes})")
    D = M / sp
    if np.abs(D.T @ D - np.eye(3)).max() > 1e-4:
        raise ImageReadError(f"{name}: the {what} is sheared or not orthonormal ({codes}); "
                             "refusing to substitute another transform")
    return aff


def read_nifti(path, allow_no_orientation=False):
    """Read a NIfTI-1/-2 file (``.nii``, ``.nii.gz``, ``.hdr``/``.img``).

    Returns
    -------
    volume : Volume
        Array (z, y, x); LPS geometry from the sform/qform as nibabel places it.
    info : dict
        ``nifti_version``, ``qform_code``, ``sform_code``, ``xform`` (which one
        placed the image), ``xform_code`` (its code, reused when writing), and
        ``other_qform`` where the file's qform places it elsewhere than its sform
        (see :func:`_other_qform`).
    """
    from ._volume import Volume

    p = Path(path)
    name = display_name(p)
    with _voxel_stream(p) as stream:
        img, h, spacing, origin, direction = _open_placed(p, name, allow_no_orientation, stream)
        try:
            data = np.asanyarray(img.dataobj)
        except MemoryError:
            raise ImageReadError(f"{name}: not enough memory to read it") from None
        except Exception as exc:  # noqa: BLE001 - nibabel/gzip/zlib errors on corrupt data
            raise ImageReadError(f"cannot read {name} as an image: {reason_text(exc)}") from None
    data = data.reshape(data.shape[:3])
    check_values(name, data)
    arr = native(data.transpose(2, 1, 0))
    code = h.sform_code if h.sform_code > 0 else (h.qform_code if h.qform_code > 0 else 0)
    info = {"nifti_version": h.version, "qform_code": h.qform_code, "sform_code": h.sform_code,
            "xform": "sform" if h.sform_code > 0 else ("qform" if h.qform_code > 0 else "none"),
            "xform_code": int(code)}
    other = _other_qform(img, h, name, data.shape)
    if other is not None:
        info["other_qform"] = other
    return Volume(arr, spacing, origin, direction), info


def _voxel_stream(p: Path):
    """The stream nibabel reads a single file through: inflating a gzip stream
    (ISA-L where installed), or the plain bytes of a file named ``.gz`` that
    holds no gzip stream; nothing for other files, which nibabel opens (and
    memory-maps) itself."""
    h, d = _pair_files(p)
    if h != d:
        return contextlib.nullcontext(None)
    gz = _gzipped(p)
    if gz or _named_gzipped(p):
        try:
            return open_gzip_read(p) if gz else open(p, "rb")
        except OSError as exc:
            raise ImageReadError(f"cannot read {display_name(p)} as an image: {exc}") from None
    return contextlib.nullcontext(None)


def _load(p: Path, h: RawHeader, stream):
    """The nibabel image of ``p``: read through ``stream`` (a single-file
    NIfTI-1/-2 being inflated) when given, else as ``nibabel.load`` opens it."""
    import nibabel as nib

    if stream is None or h.version not in (1, 2):
        return nib.load(str(p))
    from nibabel.fileholders import FileHolder

    klass = nib.Nifti1Image if h.version == 1 else nib.Nifti2Image
    holder = FileHolder(fileobj=stream)
    return klass.from_file_map({"header": holder, "image": holder})


class _Drop:
    """A logging filter that drops every record."""

    @staticmethod
    def filter(record):
        return False


@contextlib.contextmanager
def _nibabel_quiet():
    """nibabel's header messages kept off stderr while a file is opened.

    nibabel logs what it repairs in a header ("pixdim[1,2,3] should be
    non-zero; setting 0 dims to 1") on its own stderr handler; a command's
    output is its own lines only, and the header checks here refuse, in one
    line, what cannot be placed (the sform or the qform we use says where the
    voxels are, whatever nibabel repaired). The filter sits on nibabel's
    logger for the open only, so an application's own nibabel use is not
    silenced."""
    import logging

    log = logging.getLogger("nibabel.global")
    drop = _Drop()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def _open_placed(p: Path, name: str, allow_no_orientation: bool, stream=None):
    """Header checks and placement without reading the voxels:
    ``(nibabel image, RawHeader, spacing, origin, direction)`` in LPS.
    ``stream``: see :func:`_load` (it must stay open while the voxels are read)."""
    h = _checked_header(p, name, allow_no_orientation)
    try:
        with _nibabel_quiet():
            img = _load(p, h, stream)
            aff = _affine(img, h, name, allow_no_orientation)
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel errors on a corrupt header
        raise ImageReadError(f"cannot read {name} as an image: {reason_text(exc)}") from None
    A = _LPS @ aff[:3, :3]
    spacing = np.linalg.norm(A, axis=0)
    direction = A / spacing
    origin = _LPS @ aff[:3, 3]
    check_geometry(name, spacing, direction, origin)
    return img, h, spacing, origin, direction


def nifti_geometry(path, allow_no_orientation=False):
    """``(shape_zyx, spacing, origin, direction)`` of a NIfTI file as
    :func:`read_nifti` places it, from the header alone."""
    p = Path(path)
    with _voxel_stream(p) as stream:
        img, _, spacing, origin, direction = _open_placed(p, display_name(p),
                                                          allow_no_orientation, stream)
    return tuple(int(n) for n in img.shape[:3][::-1]), spacing, origin, direction


def affine_ras(vol) -> np.ndarray:
    """4x4 voxel (x, y, z index) -> RAS mm affine of a :class:`Volume`."""
    A = np.eye(4)
    A[:3, :3] = _LPS @ vol.index_to_physical_matrix
    A[:3, 3] = _LPS @ np.asarray(vol.origin, dtype=float)
    return A


def write_nifti(vol, path, code=1, description=None, qform=None) -> None:
    """Write ``vol`` as NIfTI-1 with qform = sform (both ``code``), atomically;
    with ``qform`` (``{"affine": RAS 4x4, "code": int}``, the ``other_qform``
    of the image the volume's grid came from), that qform instead, so that
    every reader places the file as it places that image.

    The array is written as it is (x fastest); ``path`` ending ``.gz`` is
    compressed at the fastest level (ISA-L where installed; no file name and
    a zero time in the gzip header, so equal labels give equal bytes).
    ``description``: the header's ``descrip`` (ASCII, at most 79 characters;
    longer is cut), which header viewers (``fslhd``, FSLeyes) show."""
    import nibabel as nib
    from nibabel.fileholders import FileHolder

    p = Path(path)
    code = int(code) if code else 1
    A = affine_ras(vol)
    img = nib.Nifti1Image(np.asarray(vol.array).transpose(2, 1, 0), A)
    if qform is None:
        img.set_qform(A, code=code)
    else:
        img.set_qform(np.asarray(qform["affine"], dtype=float), code=int(qform["code"]))
    img.set_sform(A, code=code)
    img.header.set_xyzt_units("mm")
    if description:
        img.header["descrip"] = str(description).encode("ascii", "replace")[:79]
    tmp = p.with_name(".tmp_" + p.name)
    try:
        if _named_gzipped(p):           # written as named (it need not exist yet)
            with open(tmp, "wb") as raw, open_gzip_write(raw) as gz:
                holder = FileHolder(fileobj=gz)
                img.to_file_map({"header": holder, "image": holder})
        else:
            nib.save(img, str(tmp))
        os.replace(tmp, p)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
