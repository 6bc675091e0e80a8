"""Scans the hippocampus model was not made for: what does the status say?
(issue #11).

The hippocampus model of ``bench_hippocampus.py`` (MSD brain MR crops, learned
appearance and voxel classifier) is run as a new user would run it, without a
seed, on real scans of other kinds from the shared data:

* ``whole_head_t1``: the TCIA brain T1 series (oblique, 5 mm slices 6.5 mm
  apart): the hippocampi are in it, at a resolution the model never saw;
* ``hippocrop_dicom``: a 1 mm hippocampus crop of the same patient stored as
  DICOM: the kind of image the model was made for (no reference label);
* ``abdomen_mr``: the TotalSegmentator example MR (3 mm, abdomen): no
  hippocampus.

The background itself is measured too (``background_fraction``: the share of each
grid it covers): on these scans, on the TotalSegmentator example CT, and over the 220
MSD hippocampus crops (which hold no air), with the committed rule and with dark
regions of any size (``MIN_REGION`` = 0), the alternative it was chosen against.

Each scan is fitted with the model as built and with the background rule off
(the model's appearance without ``background_share_max``, as a model built
before it was recorded), so that the rule's effect is measured in the same run.
Status, reasons, volume, the evidence behind the two newest checks
(the share of the surface whose inside is the background, measured for both
runs, and ``voxels_kept``) and the chosen placement are written to
``results/wrong_scan.json``.

    python bench/bench_wrong_scan.py
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, data_root, hippocampus_split_model, machine,  # noqa: E402
                     write_json)

from shapeprior.appearance import background_share  # noqa: E402
from shapeprior.io import read_image  # noqa: E402
from shapeprior.segmentation import SegmentParams, segment_volume  # noqa: E402

SCANS = {
    "whole_head_t1": "tcia_mr_dicom/Study3_T1post_oblique",
    "hippocrop_dicom": "tcia_mr_dicom/Study3_HCropVolume",
    "abdomen_mr": "totalsegmentator_example/example_mr_sm.nii.gz",
}


def _row(res, vol):
    voxel_ml = float(np.prod(vol.spacing)) / 1000.0
    ev = res.evidence
    return {"status": res.status, "reasons": list(res.reasons),
            "quality": round(float(res.quality), 4),
            "volume_ml": round(float(np.count_nonzero(res.label)) * voxel_ml, 3),
            "surface_inside_background": round(background_share(vol, res.verts, res.faces), 4),
            "voxels_kept": ev.get("voxels_kept"),
            "placement": res.placement["chosen"] if res.placement else None}


def _background_fractions(root, msd):
    """Share of each grid that is background, with the committed smallest region and
    with any region: the scans here, the TotalSegmentator CT, and the largest over the
    MSD crops."""
    from shapeprior.appearance import Background, _background

    paths = {**{k: root / v for k, v in SCANS.items()},
             "totalsegmentator_ct": root / "totalsegmentator_example" / "example_ct.nii.gz"}
    crops = sorted((msd / "images").glob("*.nii.gz"))
    out = {}
    for rule, region in (("min_region_0.1", _background.MIN_REGION), ("any_region", 0.0)):
        saved, _background.MIN_REGION = _background.MIN_REGION, region
        try:
            row = {k: round(Background(read_image(p)[0]).fraction, 4)
                   for k, p in paths.items() if p.exists()}
            fr = [Background(read_image(p)[0]).fraction for p in crops]
            row["msd_crops_max"] = round(max(fr), 4) if fr else None
            row["msd_crops_with_any"] = int(sum(f > 0 for f in fr))
            row["msd_crops"] = len(fr)
        finally:
            _background.MIN_REGION = saved
        out[rule] = row
        print(f"background, {rule}: {row}", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(RESULTS / "wrong_scan.json"))
    a = ap.parse_args(argv)
    root = data_root()
    msd = root / "msd_hippocampus"
    if not msd.is_dir():
        print(f"MSD hippocampus not found under {msd} (set SHAPEPRIOR_DATA)", file=sys.stderr)
        return 2
    model = hippocampus_split_model("test", msd)
    older = replace(model, profile=replace(model.profile, background_share_max=None))
    out = {"benchmark": "wrong_scan", "machine": machine(),
           "model": "bench/cache/hippocampus_642.npz (bench_hippocampus.py's training split)",
           "training_background_share_max": model.profile.background_share_max, "scans": {}}
    for name, rel in SCANS.items():
        path = root / rel
        if not path.exists():
            print(f"{name}: SKIP ({path} not found)")
            continue
        vol = read_image(path)[0]
        row = {}
        for rule, m in (("rule_on", model), ("rule_off", older)):
            res = segment_volume(vol, m, SegmentParams(backend="numba"))
            row[rule] = _row(res, vol)
            print(f"{name} {rule}: {res.status} {row[rule]['volume_ml']} ml, inside background "
                  f"{row[rule]['surface_inside_background']}, kept {row[rule]['voxels_kept']}, "
                  f"{'; '.join(res.reasons)}", flush=True)
        out["scans"][name] = {"path": rel, **row}
    out["background_fraction"] = _background_fractions(root, msd)
    write_json(a.out, out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
