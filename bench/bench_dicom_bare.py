"""A slice written without the DICOM preamble, in the shared DICOM series.

Each series of the shared data whose pixel data is native (uncompressed) is copied,
and one slice (the lowest, a middle one, the highest along the slice normal) is
rewritten as its data set alone: no 128-byte preamble, no ``DICM``, no file meta
(implicit VR little endian, as an older writer stores it). The copy is read by this
checkout's reader, by a baseline revision's reader in the same run, and by GDCM
(SimpleITK's series reader, the reference), and each read is compared with the
unmodified series as this checkout reads it: slices, voxels, origin.

    python bench/bench_dicom_bare.py [--baseline REV]
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from _common import RESULTS, baseline_cli, data_root, machine, read_image_in, unpack_rev, write_json

SERIES = ("tcia_mr_dicom/Study3_T1post_oblique", "tcia_mr_dicom/Study3_HCropVolume",
          "totalsegmentator_example/example_ct_dicom")

def _strip(path):
    import pydicom
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(path)
    bare = Dataset()
    bare.update(ds)
    path.unlink()
    pydicom.dcmwrite(path, bare, enforce_file_format=False, implicit_vr=True,
                     little_endian=True)


def _gdcm(folder):
    import SimpleITK as sitk

    try:
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
        r = sitk.ImageSeriesReader()
        r.SetFileNames(names)
        img = r.Execute()
        return {"n_slices": img.GetSize()[2], "origin": list(img.GetOrigin())}, \
            sitk.GetArrayFromImage(img)
    except RuntimeError as e:
        return {"refused": " ".join(str(e).split())[-200:]}, None


def _compare(got, arr, ref):
    if "refused" in got:
        return {**got, "whole": False}
    same = arr.shape == ref.array.shape and np.array_equal(arr, ref.array)
    off = float(np.linalg.norm(np.subtract(got["origin"], ref.origin)))
    return {"n_slices": got["n_slices"], "voxels_equal": bool(same),
            "origin_off_mm": round(off, 4), "whole": bool(same and off < 1e-3)}


def main(argv=None):
    import pydicom

    from shapeprior.io import read_image

    args, here, rev = baseline_cli(__doc__, RESULTS / "dicom_bare.json", argv)
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = unpack_rev(args.baseline, tmp / "baseline")
        for rel in SERIES:
            src = data_root() / rel
            if not src.is_dir():
                skipped.append({"series": rel, "why": "not in the data root"})
                continue
            files = sorted(f for f in src.iterdir() if f.is_file())
            heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
            syntax = {str(h.file_meta.TransferSyntaxUID) for h in heads}
            if not syntax <= {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}:
                skipped.append({"series": rel, "why": f"compressed pixel data {sorted(syntax)}"
                                ": a data set without file meta cannot say its syntax"})
                continue
            ref, _ = read_image(src)
            normal = np.cross(*np.reshape(np.asarray(heads[0].ImageOrientationPatient,
                                                     float), (2, 3)))
            depth = [float(np.dot(h.ImagePositionPatient, normal)) for h in heads]
            order = np.argsort(depth)
            for where, idx in (("lowest", order[0]), ("middle", order[len(order) // 2]),
                               ("highest", order[-1])):
                d = tmp / "s"
                shutil.rmtree(d, ignore_errors=True)
                shutil.copytree(src, d)
                _strip(d / files[idx].name)
                row = {"series": rel, "slices": len(files), "stripped": where}
                for name, tree in (("baseline", base), ("this", here)):
                    got = read_image_in(tree, d, tmp / "a.npy")
                    arr = np.load(tmp / "a.npy") if "refused" not in got else None
                    row[name] = _compare(got, arr, ref)
                got, arr = _gdcm(d)
                row["gdcm"] = _compare(got, arr, ref)
                rows.append(row)
                print(json.dumps(row))
    out = {"benchmark": "bench_dicom_bare.py", "device": machine(), "baseline_rev": rev,
           "rows": rows, "skipped": skipped,
           "whole": {k: sum(r[k]["whole"] for r in rows) for k in ("baseline", "this", "gdcm")},
           "n": len(rows)}
    write_json(args.out, out)
    print(json.dumps(out["whole"]), "of", len(rows))


if __name__ == "__main__":
    main()
