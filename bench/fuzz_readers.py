"""Fuzz the readers with mutated real files: no crash, no hang, bounded memory.

Seeds are real files: MSD hippocampus MR NIfTI (as stored, gzipped, and
uncompressed so header mutations reach the header), a TotalSegmentator
label map, the same scans written as MetaImage and NRRD (text headers: a
geometry or layout field given an unparsable, short, long or non-finite value,
or dropped), the same scans as TIFF stacks (raw and compressed; bytes of the page
directories and pixel data changed, or the file cut short: read with
``allow_no_orientation``, as TIFF records none), the same as VTK legacy, GIPL
(raw and gzipped) and MRC (bytes of the first 1 KiB changed, or cut short; also
read with ``allow_no_orientation``), the TCIA DICOM series (one slice of a copied series mutated at a
time; in the opt-in ``dicom_bare`` family, that slice first written without the
preamble), a shapeprior model file built from the demo phantoms, and the DICOM objects
shapeprior writes and reads back: an RT Structure Set and a DICOM-SEG of a label on
the TotalSegmentator example series and on the oblique TCIA series (read as
``--reference``, ``--init-mask`` and ``refine`` read them: ``read_rtstruct`` on the
series' grid with its frame of reference, ``read_label_map`` for the SEG), and the
mesh files ``segment`` writes and ``reconstruct`` reads (VTK legacy and XML, PLY, OBJ,
through ``read_mesh``), and ``reconstruct``'s other input, a ``.npy`` array of shapes
(M, N, 3) (through ``load_shapes``: header fields edited, bytes flipped, cut short). Each
mutation is a seeded byte flip, truncation, header-field edit or (models)
array edit; each mutated input is read in a forked child with an
address-space limit and a 30 s timeout, through the public readers
(``read_image`` for images and DICOM folders, ``load_model`` for models).

Outcomes: ``read`` (a valid volume: finite values, orthonormal direction,
positive spacing; a DICOM series with all the slices of its seed), ``refused``
(one of the documented one-line errors: ValueError / OSError subclasses, single
line), ``crash`` (any other exception, a multi-line message, the child dying by a
signal, or a DICOM series read without error but short of a slice: one slice
damaged and passed over),
``hang`` (over the timeout). The target is zero crashes and zero hangs.

    python bench/fuzz_readers.py                 # 4,000 mutants, JSON in bench/results
    python bench/fuzz_readers.py --n 200 --out /tmp/f.json   # a quick run
    python bench/fuzz_readers.py --n 300 --families rtstruct,seg --out /tmp/f.json
    python bench/fuzz_readers.py --n 600 --families dicom_bare --seed 41   # opt-in family
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from shapeprior.data import data_root

TIMEOUT_S = 30.0
#: families mutated only when named in --families (the default run's draws, and so
#: the committed seeds' mutants, stay as they were): ``dicom_bare``, one slice of a
#: series written without the preamble, then mutated as ``dicom`` mutates
OPT_IN = {"dicom_bare"}
CHILD_MEMORY = 3 << 30          # address space each reader child may add
IMAGE_LIMIT = 1 << 30           # SHAPEPRIOR_MAX_IMAGE_BYTES in the children
NPY_POINTS = 162                # vertices of each shape of the .npy seeds

# interesting values for header fields
INT_VALUES = [0, 1, -1, 2, 3, 4, 7, 8, 16, 255, 256, 32767, -32768, 348, 352, 540, 1 << 20]
FLOAT_VALUES = [0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, -1e30, float("nan"), float("inf"),
                float("-inf"), 0.5, 3.0]
# NIfTI-1 fields: (offset, struct format, kind)
NIFTI1_FIELDS = [(0, "<i", "i"), (40, "<h", "i"), (42, "<h", "i"), (44, "<h", "i"),
                 (46, "<h", "i"), (48, "<h", "i"), (70, "<h", "i"), (72, "<h", "i"),
                 (76, "<f", "f"), (80, "<f", "f"), (84, "<f", "f"), (88, "<f", "f"),
                 (108, "<f", "f"), (112, "<f", "f"), (116, "<f", "f"), (252, "<h", "i"),
                 (254, "<h", "i"), (256, "<f", "f"), (260, "<f", "f"), (264, "<f", "f"),
                 (268, "<f", "f"), (280, "<f", "f"), (284, "<f", "f"), (296, "<f", "f"),
                 (312, "<f", "f"), (324, "<f", "f"), (344, "4s", "s")]
DICOM_TAGS = [b"\x28\x00\x10\x00", b"\x28\x00\x11\x00", b"\x28\x00\x00\x01",
              b"\x28\x00\x01\x01", b"\x28\x00\x02\x00", b"\x28\x00\x03\x01",
              b"\x20\x00\x32\x00", b"\x20\x00\x37\x00", b"\x28\x00\x30\x00",
              b"\x02\x00\x10\x00", b"\xe0\x7f\x10\x00", b"\x28\x00\x04\x00"]


# -- mutations ----------------------------------------------------------------------------

def flip_bytes(b: bytes, rng, header=540) -> tuple[bytes, str]:
    a = bytearray(b)
    n = int(rng.integers(1, 9))
    region = min(len(a), header) if rng.random() < 0.7 else len(a)
    for _ in range(n):
        i = int(rng.integers(0, max(region, 1)))
        a[i] = int(rng.integers(0, 256))
    return bytes(a), f"flip {n} bytes in the first {region}"


def truncate(b: bytes, rng) -> tuple[bytes, str]:
    k = int(rng.integers(0, len(b)))
    return b[:k], f"truncate to {k} of {len(b)} bytes"


def nifti_field(raw: bytes, rng) -> tuple[bytes, str]:
    a = bytearray(raw)
    off, fmt, kind = NIFTI1_FIELDS[int(rng.integers(len(NIFTI1_FIELDS)))]
    if kind == "i":
        v = INT_VALUES[int(rng.integers(len(INT_VALUES)))]
        v = int(np.clip(v, -(1 << 31), (1 << 31) - 1)) if fmt == "<i" else \
            int(np.clip(v, -32768, 32767))
    elif kind == "f":
        v = FLOAT_VALUES[int(rng.integers(len(FLOAT_VALUES)))]
    else:
        v = [b"n+1\0", b"ni1\0", b"\0\0\0\0", b"n+2\0"][int(rng.integers(4))]
    struct.pack_into(fmt, a, off, v)
    return bytes(a), f"field @{off} = {v!r}"


def dicom_tag(b: bytes, rng) -> tuple[bytes, str]:
    """Overwrite the value bytes after a pixel-layout or geometry tag."""
    a = bytearray(b)
    tag = DICOM_TAGS[int(rng.integers(len(DICOM_TAGS)))]
    i = b.find(tag)
    if i < 0:
        return flip_bytes(b, rng, header=2048)
    j = i + 8 if b[i + 4:i + 6].isalpha() else i + 8     # explicit VR: 2 VR + 2 length bytes
    n = int(rng.integers(1, 5))
    for k in range(n):
        if j + k < len(a):
            a[j + k] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF, 0x10, 0x20]))
    return bytes(a), f"tag {tag.hex()} value bytes x{n}"


#: geometry fields of the text headers, and values to put there: unparsable, short,
#: long, non-finite, degenerate (ITK's readers guess on some of these: the checks of
#: ``shapeprior.io`` must refuse them in one line, never crash)
TEXT_FIELDS = {
    "mha": (b" = ", [b"Offset", b"ElementSpacing", b"DimSize", b"TransformMatrix", b"NDims",
                     b"ElementType", b"ElementNumberOfChannels"],
            [b"abc 1 2", b"nan 0 0", b"1 2", b"1 2 3 4", b"inf 0 0", b"0 0 0", b"-1 1 1",
             b"1e308 1e308 1e308", b"", b"1 0 0 0 1 0 0 0", b"0 0 0 0 0 0 0 0 0", b"2"]),
    "nrrd": (b": ", [b"space origin", b"space directions", b"sizes", b"spacings", b"space",
                     b"dimension", b"type", b"encoding", b"endian"],
             [b"(nan,0,0)", b"(abc,0,0)", b"(1,2)", b"1 2", b"none (1,0,0) (0,1,0)", b"",
              b"(0,0,0) (0,0,0) (0,0,0)", b"nan 1 1", b"left-posterior-superior", b"4",
              b"gzip", b"big", b"(1e308,0,0) (0,1,0) (0,0,1)"]),
}


def text_header_field(b: bytes, family: str, rng) -> tuple[bytes, str]:
    """Give one geometry or layout field of a MetaImage or NRRD header another
    value, or drop it."""
    sep, keys, values = TEXT_FIELDS[family]
    end = b.find(b"ElementDataFile") if family == "mha" else b.find(b"\n\n")
    head, rest = (b[:end], b[end:]) if end > 0 else (b, b"")
    lines = head.split(b"\n")
    hits = [i for i, ln in enumerate(lines) if ln.split(sep)[0].strip() in keys]
    if not hits:
        return flip_bytes(b, rng, len(head))
    i = hits[int(rng.integers(len(hits)))]
    key = lines[i].split(sep)[0]
    if rng.random() < 0.15:
        del lines[i]
        return b"\n".join(lines) + rest, f"drop {key.decode()}"
    v = values[int(rng.integers(len(values)))]
    lines[i] = key + sep + v
    return b"\n".join(lines) + rest, f"{key.decode()} = {v.decode()!r}"


def model_array_edit(z: dict, rng) -> tuple[dict, str]:
    z = dict(z)
    keys = sorted(k for k in z if k != "metadata_json")
    k = keys[int(rng.integers(len(keys)))]
    a = np.array(z[k])
    op = int(rng.integers(7))
    if op == 0 and a.size:
        a = a.astype(float)
        a.flat[int(rng.integers(a.size))] = np.nan
        what = "nan"
    elif op == 1:
        a = a.reshape(-1)[: max(a.size - int(rng.integers(1, 4)) * 3, 0)]
        what = "shorter, flat"
    elif op == 2 and a.size:
        a = a.copy()
        a.flat[int(rng.integers(a.size))] = -5 if a.dtype.kind in "iu" else 1e300
        what = "out of range value"
    elif op == 3:
        a = a.astype(np.complex64)
        what = "complex"
    elif op == 4:
        a = a.T.copy()
        what = "transposed"
    elif op == 5:
        z.pop(k)
        return z, f"drop {k}"
    else:
        meta = json.loads(str(z["metadata_json"]))
        key = sorted(meta)[int(rng.integers(len(meta)))]
        meta[key] = [None, 5, "x", [], {}, -1.0][int(rng.integers(6))]
        z["metadata_json"] = np.array(json.dumps(meta))
        return z, f"metadata {key} = {meta[key]!r}"
    z[k] = a
    return z, f"{k}: {what}"


# -- the reader in a forked child -------------------------------------------------------

def _child(kind, path, wfd):
    os.environ["SHAPEPRIOR_MAX_IMAGE_BYTES"] = str(IMAGE_LIMIT)
    soft = _vm_size() + CHILD_MEMORY
    resource.setrlimit(resource.RLIMIT_AS, (soft, soft))
    out = {}
    try:
        if kind == "rtstruct":
            from shapeprior.io import Volume, list_structures, read_rtstruct

            g = np.load(str(path) + ".grid.npz", allow_pickle=False)
            grid = Volume(np.zeros(tuple(g["shape"]), np.uint8), g["spacing"], g["origin"],
                          g["direction"])
            list_structures(path)
            vol, _ = read_rtstruct(path, grid, ["#1"], str(g["frame"]))
            ok = vol.array.shape == grid.array.shape and vol.same_grid(grid)
            out = {"outcome": "read" if ok else "crash",
                   "detail": "" if ok else "label off the scan's grid"}
        elif kind == "npy":
            from shapeprior.pipeline._reconstruct import load_shapes

            got = load_shapes(path, NPY_POINTS)
            ok = bool(np.all(np.isfinite(got.shapes)))
            out = {"outcome": "read" if ok else "crash",
                   "detail": "" if ok else "non-finite shape returned"}
        elif kind == "mesh":
            from shapeprior.mesh import read_mesh

            m = read_mesh(path)
            ok = bool(np.all(np.isfinite(m.verts)) and (
                not m.faces.size or (m.faces.min() >= 0 and m.faces.max() < len(m.verts))))
            out = {"outcome": "read" if ok else "crash",
                   "detail": "" if ok else "invalid mesh returned"}
        elif kind == "model":
            from shapeprior.model import load_model

            m = load_model(path)
            ok = bool(np.all(np.isfinite(m.shapes)) and m.faces.max() < m.n_vertices)
            out = {"outcome": "read" if ok else "crash", "detail": "schema hole" * (not ok)}
        elif kind == "dicom":
            from shapeprior.io import read_image

            vol = read_image(path)[0]
            want = int((Path(path).parent / "expected_slices").read_text())
            got, good = vol.array.shape[0], _valid(vol)
            out = {"outcome": "read" if good and got == want else "crash",
                   "detail": f"read with {got} of the series' {want} slices, no error"
                   if got != want else "" if good else "invalid volume returned"}
        else:
            from shapeprior.io import read_image, read_label_map

            # TIFF records no orientation: read as a user who takes that placement
            vol = read_label_map(path) if kind == "seg" else \
                read_image(path, None, kind in ("tiff", "itk_other"))[0]
            good = _valid(vol)
            out = {"outcome": "read" if good else "crash",
                   "detail": "" if good else "invalid volume returned"}
    except (ValueError, OSError) as exc:
        msg = str(exc)
        clean = "\n" not in msg.strip() and 0 < len(msg) < 600 and "Traceback" not in msg
        out = {"outcome": "refused" if clean else "crash",
               "detail": f"{type(exc).__name__}: {msg[:300]}"}
    except MemoryError:
        out = {"outcome": "crash", "detail": "MemoryError (allocation before checking)"}
    except BaseException as exc:  # noqa: BLE001 - everything else is a crash
        out = {"outcome": "crash", "detail": f"{type(exc).__name__}: {str(exc)[:300]}"}
    os.write(wfd, json.dumps(out).encode())
    os._exit(0)


def _valid(vol) -> bool:
    """Whether a volume a reader returned is one: 3-D, finite values and geometry."""
    a = vol.array
    return bool(a.ndim == 3 and min(a.shape) >= 1
                and (not np.issubdtype(a.dtype, np.floating) or np.all(np.isfinite(a)))
                and np.all(vol.spacing > 0) and np.all(np.isfinite(vol.origin))
                and np.abs(vol.direction.T @ vol.direction - np.eye(3)).max() < 1e-3)


_SLICES = {}


def without_preamble(b: bytes, rng) -> bytes:
    """The DICOM file ``b`` as its data set alone (no preamble, ``DICM`` or file
    meta), implicit or explicit VR little endian: an older writer's slice."""
    import io

    import pydicom
    from pydicom.dataset import Dataset

    bare = Dataset()
    bare.update(pydicom.dcmread(io.BytesIO(b)))
    out = io.BytesIO()
    pydicom.dcmwrite(out, bare, enforce_file_format=False,
                     implicit_vr=bool(rng.integers(2)), little_endian=True)
    return out.getvalue()


def _slices(series):
    """The number of slices of a seed series as read whole (once per seed)."""
    if series not in _SLICES:
        from shapeprior.io import read_image

        _SLICES[series] = int(read_image(series)[0].array.shape[0])
    return _SLICES[series]


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def run_one(kind, path):
    r, w = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)                       # ITK/GDCM warnings
        _child(kind, path, w)
    os.close(w)
    data = b""
    deadline = t0 + TIMEOUT_S
    hung = False
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            hung = True
            os.kill(pid, signal.SIGKILL)
            break
        ready, _, _ = select.select([r], [], [], left)
        if ready:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    os.close(r)
    _, status, usage = os.wait4(pid, 0)
    dt = time.perf_counter() - t0
    rss = usage.ru_maxrss * 1024
    if hung:
        return {"outcome": "hang", "detail": f"over {TIMEOUT_S:.0f} s"}, dt, rss
    if os.WIFSIGNALED(status):
        return {"outcome": "crash", "detail": f"killed by signal {os.WTERMSIG(status)}"}, dt, rss
    try:
        return json.loads(data), dt, rss
    except ValueError:
        return {"outcome": "crash", "detail": "no result from the reader"}, dt, rss


# -- seeds ------------------------------------------------------------------------------------

def seeds(work: Path):
    root = data_root()
    out = {"nifti_gz": [], "nifti": [], "dicom": [], "model": [], "mha": [], "nrrd": [],
           "tiff": [], "itk_other": [], "rtstruct": [], "seg": [], "mesh": [], "npy": []}
    hip = sorted((root / "msd_hippocampus" / "images").glob("*.nii.gz"))[:6]
    lab = sorted((root / "msd_hippocampus" / "labels").glob("*.nii.gz"))[:2]
    ts = root / "totalsegmentator_example" / "example_seg_roi_subset_mr.nii.gz"
    for f in hip + lab + ([ts] if ts.is_file() else []):
        out["nifti_gz"].append(f)
        raw = work / "seeds" / f.name[: -len(".gz")]
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_bytes(gzip.decompress(f.read_bytes()))
        out["nifti"].append(raw)
    import SimpleITK as sitk

    for f in hip[:2] + lab[:1]:           # the same scans as MetaImage and NRRD (uncompressed)
        img = sitk.ReadImage(str(f))
        for fam in ("mha", "nrrd"):
            dst = work / "seeds" / (f.name[: -len(".nii.gz")] + "." + fam)
            sitk.WriteImage(img, str(dst), useCompression=False)
            out[fam].append(dst)
        for comp in (False, True):        # and as a TIFF stack, raw and compressed
            dst = work / "seeds" / (f.name[: -len(".nii.gz")] + f"_{int(comp)}.tif")
            sitk.WriteImage(img, str(dst), useCompression=comp)
            out["tiff"].append(dst)
        for ext in ("vtk", "gipl", "gipl.gz", "mrc"):   # formats without orientation
            dst = work / "seeds" / (f.name[: -len(".nii.gz")] + "." + ext)
            sitk.WriteImage(img, str(dst), useCompression=ext.endswith(".gz"))
            out["itk_other"].append(dst)
    for d in ("Study3_HCropVolume", "Study3_T1post_oblique"):
        p = root / "tcia_mr_dicom" / d
        if p.is_dir():
            out["dicom"].append(p)
    _dicom_object_seeds(root, work / "seeds", out)
    from shapeprior.mesh import Surface, icosphere

    verts, faces = icosphere(2)
    mesh = Surface(np.asarray(verts) * [20.0, 15.0, 30.0], faces)
    for ext in ("vtk", "vtp", "ply", "obj"):      # as segment writes them, with point data
        dst = work / "seeds" / f"mesh.{ext}"
        mesh.write(dst, point_data={"gross_error_mm": np.linspace(0, 3, len(mesh.verts))})
        out["mesh"].append(dst)
    shapes = np.random.default_rng(0).normal(0, 20, (4, NPY_POINTS, 3))
    for fmt in ((1, 0), (2, 0)):                  # arrays of shapes, as reconstruct takes
        dst = work / "seeds" / f"shapes_v{fmt[0]}.npy"
        with open(dst, "wb") as fh:
            np.lib.format.write_array(fh, shapes, version=fmt)
        out["npy"].append(dst)
    from vtkmodules.vtkIOLegacy import vtkPolyDataReader, vtkPolyDataWriter

    r = vtkPolyDataReader()                        # and legacy VTK as others write it:
    r.SetFileName(str(work / "seeds" / "mesh.vtk"))  # ASCII (3D Slicer), file version 5.1
    r.Update()
    for version, ascii_ in ((42, True), (51, False), (51, True)):
        dst = work / "seeds" / f"mesh_{version}{'a' if ascii_ else 'b'}.vtk"
        w = vtkPolyDataWriter()
        w.SetInputData(r.GetOutput())
        w.SetFileName(str(dst))
        w.SetFileTypeToASCII() if ascii_ else w.SetFileTypeToBinary()
        w.SetFileVersion(version)
        w.Write()
        out["mesh"].append(dst)
    model = work / "seeds" / "model.npz"
    from shapeprior.cli import main
    from shapeprior.synthetic import write_phantom_cases

    images, labels = write_phantom_cases(work / "phantoms", 5, 0)
    if main(["build-model", str(labels), "-o", str(model), "--images", str(images),
             "--vertices", "162", "--iso-spacing", "1.0", "--quiet"]) != 0:
        raise SystemExit("could not build the seed model")
    out["model"].append(model)
    out["nifti_gz"].append(images / "phantom_000.nii.gz")
    return out


def _dicom_object_seeds(root, dest, out):
    """An RT Structure Set and a DICOM-SEG of an ellipsoid on each DICOM series of
    the shared data (as ``segment --output-type both`` writes them), the series'
    grid and frame of reference beside each structure set (``NAME.grid.npz``)."""
    from shapeprior.io import read_scan, scan_frame_of_reference, write_dicom_seg, \
        write_structure_set

    for d in (root / "totalsegmentator_example" / "example_ct_dicom",
              root / "tcia_mr_dicom" / "Study3_T1post_oblique"):
        if not d.is_dir():
            continue
        vol, info = read_scan(d)
        shape = np.array(vol.array.shape)
        zz, yy, xx = np.indices(vol.array.shape)
        c, r = shape / 2, np.maximum(shape / 4, 1.5)
        blob = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + \
            ((xx - c[2]) / r[2]) ** 2 <= 1
        rs, seg = dest / f"{d.name}_rs.dcm", dest / f"{d.name}_seg.dcm"
        write_structure_set(rs, blob, vol, d, info["series_key"], organ="kidney",
                            side="left")
        write_dicom_seg(seg, blob, vol, d, info["series_key"], organ="kidney", side="left")
        np.savez(str(rs) + ".grid.npz", shape=np.array(vol.array.shape), spacing=vol.spacing,
                 origin=vol.origin, direction=vol.direction,
                 frame=np.array(scan_frame_of_reference(d) or ""))
        out["rtstruct"].append(rs)
        out["seg"].append(seg)


def dicom_object(b: bytes, rng) -> tuple[bytes, str]:
    """A structure set or a SEG: a value of a tag that places or sizes what it
    holds (contour data, frame positions, rows and columns), bytes anywhere, or
    the file cut short."""
    op = int(rng.integers(3))
    if op == 0:
        tags = [b"\x06\x30\x50\x00", b"\x06\x30\x46\x00", b"\x20\x00\x32\x00",
                b"\x20\x00\x37\x00", b"\x28\x00\x10\x00", b"\x28\x00\x11\x00",
                b"\x28\x00\x08\x00", b"\x28\x00\x30\x00", b"\x62\x00\x04\x00",
                b"\x06\x30\x84\x00", b"\x06\x30\x22\x00", b"\x06\x30\x26\x00"]
        tag = tags[int(rng.integers(len(tags)))]
        hits = [i for i in range(len(b)) if b.startswith(tag, i)][:64]
        if hits:
            a = bytearray(b)
            j = hits[int(rng.integers(len(hits)))] + 8
            n = int(rng.integers(1, 7))
            for k in range(n):
                if j + k < len(a):
                    a[j + k] = int(rng.choice([0x00, 0x2D, 0x2E, 0x30, 0x39, 0x5C, 0x65,
                                               0x6E, 0xFF]))
            return bytes(a), f"tag {tag.hex()} value bytes x{n}"
    if op <= 1:
        return flip_bytes(b, rng, len(b))
    return truncate(b, rng)


def mutate(family, seed_path, rng, work: Path, i: int):
    """Write mutant ``i`` of ``seed_path``; returns (kind, path, description)."""
    dst = work / "m"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir()
    if family in ("dicom", "dicom_bare"):
        folder = dst / "series"
        shutil.copytree(seed_path, folder)
        files = sorted(folder.iterdir())
        victim = files[int(rng.integers(len(files)))]
        b = victim.read_bytes()
        if family == "dicom_bare":
            b = without_preamble(b, rng)
        op = int(rng.integers(3))
        b, what = (flip_bytes(b, rng, 1024), truncate(b, rng), dicom_tag(b, rng))[op]
        victim.write_bytes(b)
        (dst / "expected_slices").write_text(str(_slices(seed_path)))
        return "dicom", folder, f"{victim.name}: {what}"
    if family == "npy":
        b = seed_path.read_bytes()
        op = int(rng.integers(3))
        if op == 0:                                 # the header's shape field
            head = b[:b.index(b"\n") + 1]
            v = [0, 1, 3, 4, 162, 163, 10 ** 6, 10 ** 12, -1][int(rng.integers(9))]
            new = re.sub(rb"'shape': \((\d+), ", b"'shape': (" + str(v).encode() + b", ",
                         head, count=1)
            new = new.rstrip(b" \n")
            new = new.ljust(len(head) - 1) + b"\n" if len(new) < len(head) else head
            b, what = new + b[len(head):], f"shape[0] = {v}"
        elif op == 1:
            b, what = flip_bytes(b, rng, 128)
        else:
            b, what = truncate(b, rng)
        p = dst / "x.npy"
        p.write_bytes(b)
        return "npy", p, what
    if family == "mesh":
        b = seed_path.read_bytes()
        b, what = flip_bytes(b, rng, len(b)) if rng.random() < 0.6 else truncate(b, rng)
        p = dst / f"x{seed_path.suffix}"
        p.write_bytes(b)
        return "mesh", p, what
    if family in ("rtstruct", "seg"):
        b, what = dicom_object(seed_path.read_bytes(), rng)
        p = dst / "x.dcm"
        p.write_bytes(b)
        if family == "rtstruct":
            shutil.copy(str(seed_path) + ".grid.npz", str(p) + ".grid.npz")
        return family, p, what
    if family == "model":
        z = dict(np.load(seed_path, allow_pickle=False))
        op = int(rng.integers(3))
        p = dst / "model.npz"
        if op == 0:
            z, what = model_array_edit(z, rng)
            np.savez_compressed(p, **z)
        else:
            b = seed_path.read_bytes()
            b, what = (flip_bytes(b, rng, len(b)) if op == 1 else truncate(b, rng))
            p.write_bytes(b)
        return "model", p, what
    if family == "tiff":
        b = seed_path.read_bytes()
        op = int(rng.integers(3))
        if op == 0:             # the page directories: the first one and those after it
            ifd = struct.unpack("<I", b[4:8])[0] if b[:2] == b"II" else 8
            a = bytearray(b)
            n = int(rng.integers(1, 5))
            for _ in range(n):
                k = int(rng.integers(min(ifd, len(a) - 1), len(a)))
                a[k] = int(rng.integers(0, 256))
            b, what = bytes(a), f"flip {n} bytes from the first page directory (byte {ifd}) on"
        elif op == 1:
            b, what = flip_bytes(b, rng, len(b))
        else:
            b, what = truncate(b, rng)
        p = dst / "x.tif"
        p.write_bytes(b)
        return "tiff", p, what
    if family == "itk_other":
        b = seed_path.read_bytes()
        b, what = flip_bytes(b, rng, 1024) if rng.random() < 0.5 else truncate(b, rng)
        p = dst / ("x." + seed_path.name.split(".", 1)[1])
        p.write_bytes(b)
        return "itk_other", p, what
    if family in TEXT_FIELDS:
        b = seed_path.read_bytes()
        op = int(rng.integers(4))
        if op == 0:
            b, what = text_header_field(b, family, rng)
        elif op == 1:
            b, what = text_header_field(b, family, rng)
            b, w2 = text_header_field(b, family, rng)
            what += "; " + w2
        elif op == 2:
            b, what = flip_bytes(b, rng, 400)
        else:
            b, what = truncate(b, rng)
        p = dst / f"x.{family}"
        p.write_bytes(b)
        return "image", p, what
    raw = gzip.decompress(seed_path.read_bytes()) if family == "nifti_gz" else \
        seed_path.read_bytes()
    op = int(rng.integers(4))
    if op == 0:
        raw, what = nifti_field(raw, rng)
    elif op == 1:
        raw, what = flip_bytes(raw, rng, 352)
    elif op == 2:
        raw, what = truncate(raw, rng)
    else:
        raw, what = nifti_field(raw, rng)
        raw, w2 = nifti_field(raw, rng)
        what += "; " + w2
    if family == "nifti_gz":
        gz = gzip.compress(raw, compresslevel=1)
        if rng.random() < 0.25:                  # and sometimes the gzip stream itself
            gz, w3 = (flip_bytes(gz, rng, len(gz)) if rng.random() < 0.5 else truncate(gz, rng))
            what += "; gzip " + w3
        p = dst / "x.nii.gz"
        p.write_bytes(gz)
    else:
        p = dst / "x.nii"
        p.write_bytes(raw)
    return "image", p, what


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="mutants in all (default 4000)")
    ap.add_argument("--seed", type=int, default=20261201)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fuzz_readers.json"))
    ap.add_argument("--families", default=None,
                    help="comma-separated families to mutate (default: all), e.g. rtstruct,seg")
    a = ap.parse_args(argv)
    if not data_root().is_dir():
        print(f"public data not found at {data_root()} (set SHAPEPRIOR_DATA)", file=sys.stderr)
        return 2
    rng = np.random.default_rng(a.seed)
    work = Path(tempfile.mkdtemp(prefix="shapeprior-fuzz-"))
    try:
        s = seeds(work)
        weights = {"nifti_gz": 0.2, "nifti": 0.2, "dicom": 0.13, "model": 0.13, "mha": 0.08,
                   "nrrd": 0.08, "tiff": 0.09, "itk_other": 0.09, "rtstruct": 0.08,
                   "seg": 0.08, "mesh": 0.08, "npy": 0.04, "dicom_bare": 0.13}
        s["dicom_bare"] = s["dicom"]
        fams = [f for f in weights if s[f] and (f not in OPT_IN if a.families is None
                                                 else f in a.families.split(","))]
        p = np.array([weights[f] for f in fams])
        p /= p.sum()
        counts = {f: {"read": 0, "refused": 0, "crash": 0, "hang": 0} for f in fams}
        problems, times, peak, peak_case, slowest = [], [], 0, None, (0.0, None)
        messages = {}
        t0 = time.perf_counter()
        for i in range(a.n):
            fam = fams[int(rng.choice(len(fams), p=p))]
            seed_path = s[fam][int(rng.integers(len(s[fam])))]
            kind, path, what = mutate(fam, seed_path, rng, work, i)
            res, dt, rss = run_one(kind, path)
            counts[fam][res["outcome"]] += 1
            times.append(dt)
            if rss > peak:
                peak, peak_case = rss, {"family": fam, "mutation": what, **res}
            if dt > slowest[0]:
                slowest = (dt, {"family": fam, "mutation": what, **res})
            if res["outcome"] in ("crash", "hang"):
                problems.append({"i": i, "family": fam, "seed": Path(seed_path).name,
                                 "mutation": what, **res})
            elif res["outcome"] == "refused":
                key = res["detail"].split(":")[0]
                messages[key] = messages.get(key, 0) + 1
            if (i + 1) % 250 == 0:
                print(f"{i + 1}/{a.n}: {sum(c['crash'] for c in counts.values())} crashes, "
                      f"{sum(c['hang'] for c in counts.values())} hangs", flush=True)
        total = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "fuzz_readers",
        "device": f"CPU ({platform.processor() or platform.machine()}), "
                  f"{os.cpu_count()} cores visible",
        "n_mutants": a.n, "seed": a.seed, "timeout_s": TIMEOUT_S,
        "child_address_space_limit_gib": CHILD_MEMORY / 2**30,
        "image_memory_limit_gib": IMAGE_LIMIT / 2**30,
        "counts": counts,
        "totals": {k: sum(c[k] for c in counts.values()) for k in ("read", "refused", "crash",
                                                                      "hang")},
        "refusal_types": messages,
        "problems": problems[:200],
        "time_s": {"total": total, "median_per_input": float(np.median(times)),
                   "max_per_input": float(np.max(times))},
        "peak_child_rss_mib": peak / 2**20, "peak_rss_input": peak_case,
        "slowest_input": {"seconds": slowest[0], **(slowest[1] or {})},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("totals", "time_s", "peak_child_rss_mib")}))
    return 1 if result["totals"]["crash"] or result["totals"]["hang"] else 0


if __name__ == "__main__":
    sys.exit(main())
