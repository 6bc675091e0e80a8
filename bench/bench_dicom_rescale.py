"""A compressed DICOM series whose slices scale their values differently.

ITK's series reader decodes every slice into the pixel type of the first one. The
TotalSegmentator example series (JPEG 2000, 20 slices, RescaleSlope 1, intercept
-1024: int16) is copied and one slice's Rescale Slope (and Intercept) set otherwise,
its compressed pixels untouched, as a PET series scales each slice. Each copy is read
by a baseline revision's reader and by this checkout's, in the same run, and the
changed slice compared with what the modality LUT gives (stored value × slope +
intercept, the stored values taken from the unmodified read); the other slices must
be unchanged.

    python bench/bench_dicom_rescale.py [--baseline REV]
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from _common import RESULTS, baseline_cli, data_root, machine, read_image_in, unpack_rev, write_json

SERIES = "totalsegmentator_example/example_ct_dicom"
#: (slope, intercept) given to one slice
LUTS = [(20.0, -1024.0), (0.37, -1024.0), (2.0, -1024.0), (1.0, -1000.5), (0.5, 0.0)]


def main(argv=None):
    import pydicom

    args, here, rev = baseline_cli(__doc__, RESULTS / "dicom_rescale.json", argv)
    src = data_root() / SERIES
    if not src.is_dir():
        print(f"{src} not found (set SHAPEPRIOR_DATA)")
        return 2
    files = sorted(f for f in src.iterdir() if f.is_file())
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    depth = np.array([float(h.ImagePositionPatient[2]) for h in heads])
    victim = int(np.argsort(depth)[len(files) // 2])     # a middle slice
    k = int(np.flatnonzero(np.argsort(depth) == victim)[0])  # its index along z
    slope0, inter0 = float(heads[victim].RescaleSlope), float(heads[victim].RescaleIntercept)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = unpack_rev(args.baseline, tmp / "baseline")
        read_image_in(here, src, tmp / "ref.npy")
        ref = np.load(tmp / "ref.npy")
        stored = (ref[k].astype(np.float64) - inter0) / slope0
        for slope, inter in LUTS:
            d = tmp / "s"
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(src, d)
            ds = pydicom.dcmread(d / files[victim].name)
            ds.RescaleSlope, ds.RescaleIntercept = slope, inter
            ds.save_as(d / files[victim].name)
            want = stored * slope + inter
            row = {"slope": slope, "intercept": inter,
                   "expected_range": [float(want.min()), float(want.max())]}
            for name, tree in (("baseline", base), ("this", here)):
                got = read_image_in(tree, d, tmp / "a.npy")
                if "refused" in got:
                    row[name] = got
                    continue
                a = np.load(tmp / "a.npy")
                others = all(np.array_equal(a[j], ref[j]) for j in range(a.shape[0]) if j != k)
                row[name] = {"dtype": str(a.dtype),
                             "max_error": float(np.abs(a[k].astype(np.float64) - want).max()),
                             "voxels_off_by_1e-3": int((np.abs(a[k] - want) > 1e-3).sum()),
                             "other_slices_unchanged": bool(others)}
            rows.append(row)
            print(row)
    write_json(args.out, {"benchmark": "bench_dicom_rescale.py", "device": machine(),
                          "series": SERIES, "slices": len(files), "voxels_per_slice":
                          int(ref[k].size), "baseline_rev": rev, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
