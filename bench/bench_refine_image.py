"""Errors only the image can decide, refined with the image (issue #11):
holes, and runs of identical slices (inserted or copied).

Without the image a hole in a mask is no evidence of an error (KiTS19
kidney masks hold enclosed sinus cavities as large as a network's holes), and
a run of identical slices may be copies over slices that were there (the
organ in place) or slices inserted (one side of the organ displaced): the
mask cannot say which, so ``bench_refine.py`` (masks only, KiTS has no
images) leaves holes alone and bridges every run as copies. With the image,
``refine_mask`` fills an enclosed cavity whose median intensity lies within
the organ's own central range (``_cavities.CAVITY_PERCENTILES``) and keeps one
that differs (fat, fluid), and reads each run as copied or inserted by which
reading's mask explains more of the image's intensity variance in the organ's
box (``_inserted.INSERTED_MARGIN``). Measured on real scans with the errors
planted in their masks:

* ``totalseg_ct``: TotalSegmentator example CT (3 mm, non-contrast) and its
  kidney labels (``example_seg_fast_force_split``, labels 2 and 3; network
  output, not manual), KiTS19-built kidney model, CT intensity model. The
  right kidney's clean mask holds one natural cavity (sinus fat, about
  -60 HU): it must stay.
* ``hippocampus_mr``: MSD hippocampus MR, held-out cases (case number a
  multiple of 5, never in the model), manual labels 1 and 2 as one organ,
  the hippocampus model built from the other cases (``bench_hippocampus.py``).

Kinds (``--kinds``), three severities each, and severity 0 (the clean mask
refined unchanged: what the rules cost on a mask with nothing to fix):

* ``hole``: holes at random deep points (as ``bench_refine.py`` plants them:
  centre at least ``r + 2`` mm inside, or 0.8 of the deepest; a draw that
  breaks through the surface is drawn again, counted as a redraw), radius
  4 / 7 / 10 mm (CT) or 1 / 1.5 / 2 mm (MR);
* ``duplicated_slices``: 2 / 4 / 6 slices inserted along the slice axis (array
  axis 0 of these axial NIfTI files) as copies of the one before them, the
  rest of the organ shifted (``bench_refine.degrade``);
* ``copied_slices``: 2 / 4 / 6 slices replaced by copies of the one before
  them (the organ in place: the insertion reading must not move it).

Columns: the degraded mask, refined from the mask alone, refined with the
image with the kind's rule off (holes: ``CAVITY_PERCENTILES = None``; slices:
``INSERTED_MARGIN = None``), refined with the image (the default), and
morphology (largest component, fill holes, 3 mm closing). ASSD and Dice
against the clean mask.

    python bench/bench_refine_image.py [--draws 5] [--cases 20] [--kinds ...]
    # needs bench/cache/kidney_model.npz (bench_robustness.py) and
    # bench/cache/hippocampus_642.npz (bench_hippocampus.py)

``INSERTED_MARGIN`` is chosen on validation cases that never enter the table
(no fit, the reading alone; voxels that differ from the clean mask)::

    python bench/bench_refine_image.py --validation
    # -> results/refine_image_validation.json: TotalSegmentator example CT organs
    #    other than the kidneys, its MR organs, MSD hippocampus training-split cases
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from _common import data_root, machine, write_json
from bench_refine import ball, degrade, end_slab, morphology
from shapeprior.io import Volume, read_label_map, read_volume
from shapeprior.model import load_model
from shapeprior.segmentation import SegmentParams, dice, refine_mask, surface_distances
from shapeprior.segmentation import _cavities, _inserted
from shapeprior.segmentation import _refine as _refine_mod

HERE = Path(__file__).resolve().parent
CT = dict(normalisation="ct", window=(-0.05, 0.15), inside_brighter=True)
COLUMNS = ("degraded", "mask_only", "image_rule_off", "image", "morphology")
KINDS = ("hole", "duplicated_slices", "copied_slices", "end_slices")
#: the array axis the slice degradations act along (axial NIfTI: z)
SLICE_AXIS = 0
#: the INSERTED_MARGIN and JUNCTION_FRACTION values --validation compares (margin
#: None: every run read as copies; junction 0: the organ's continuity not asked)
MARGINS = (0.0, 0.1, 0.25, 0.5, 1.0)
JUNCTIONS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9)
SETTINGS = [(None, 0.0)] + [(mg, jn) for mg in MARGINS for jn in JUNCTIONS]


#: draws of a hole's centre before giving up on an enclosed one
MAX_DRAWS = 100


def plant_hole(mask, sp_zyx, r, rng):
    """``mask`` with a ball of radius ``r`` mm removed around a random deep
    point, and the number of draws it took. A hole is an enclosed cavity: a
    draw whose ball breaks through the surface (a dent, not a hole; on 3 mm
    voxels a 2 mm wall often does) is drawn again. None when no draw of
    :data:`MAX_DRAWS` gives an enclosed hole."""
    d = ndimage.distance_transform_edt(mask, sampling=sp_zyx)
    deep = np.argwhere(d >= min(r + 2.0, d.max() * 0.8))
    for k in range(1, MAX_DRAWS + 1):
        p = deep[rng.integers(len(deep))]
        hole = mask & ball(mask.shape, p, r, sp_zyx)
        out = mask & ~hole
        if (ndimage.binary_fill_holes(out) & hole).sum() == hole.sum():
            return out, k
    return None, MAX_DRAWS


def _refine(mvol, model, dic, params, image):
    res = refine_mask(mvol, model, (1,), params, image, dic)
    ev = res.fit.evidence
    return res.label > 0, res.fit.status, ev.get("cavities"), ev.get("inserted_slices")


class _RulesOff:
    """The image's rule for ``kind`` switched off (both for the clean mask)."""

    def __init__(self, kind):
        self.kind = kind

    def __enter__(self):
        self.saved = (_cavities.CAVITY_PERCENTILES, _inserted.INSERTED_MARGIN,
                      _refine_mod.CUT_ENDS)
        if self.kind in ("end_slices", "clean"):
            _refine_mod.CUT_ENDS = False
        if self.kind in ("hole", "clean"):
            _cavities.CAVITY_PERCENTILES = None
        if self.kind not in ("hole", "end_slices"):
            _inserted.INSERTED_MARGIN = None

    def __exit__(self, *exc):
        (_cavities.CAVITY_PERCENTILES, _inserted.INSERTED_MARGIN,
         _refine_mod.CUT_ENDS) = self.saved


def _degraded(kind, clean, sp, sev, size, rng):
    """``(mask, draws, None)``, or ``(None, draws, why)`` when ``clean`` cannot
    take this degradation."""
    if kind == "clean":
        return clean.copy(), 0, None
    if kind == "end_slices":
        bad = clean.copy()
        np.moveaxis(bad, SLICE_AXIS, 0)[end_slab(clean, sp, size, rng, SLICE_AXIS)] = False
        return bad, 1, None
    if kind == "hole":
        bad, draws = plant_hole(clean, sp, size, rng)
        return bad, draws, None if bad is not None else f"no enclosed hole in {MAX_DRAWS} draws"
    try:
        return degrade(clean, sp, kind, sev, rng, slice_axis=SLICE_AXIS), 1, None
    except ValueError:      # no room for the run in the organ's middle half
        return None, 1, "the organ is too short along the slice axis"


class _End:
    """Stands in for the generator of ``bench_refine.end_slab``: the end it gives."""

    def __init__(self, end):
        self.end = end

    def integers(self, n):
        return self.end


def run_case(name, clean, vol, image, model, dic, params, plan, rng):
    """Rows for one clean mask; ``plan``: ``(kind, severity, size)`` per row
    (size: the hole's radius in mm, or the slices inserted or copied)."""
    sp = vol.spacing[::-1]
    rows = []
    draw = {}           # end_slices: the draw of each severity
    for kind, sev, size in plan:
        # end_slices takes the ends in turn (two draws of a kidney: both ends), not
        # from the generator: the other kinds' draws stay those of the runs before
        draw[sev] = draw.get(sev, 0) + 1
        gen = _End((draw[sev] + sum(name.encode())) % 2) if kind == "end_slices" else rng
        bad, draws, why = _degraded(kind, clean, sp, sev, size, gen)
        head = {"case": name, "kind": kind, "severity": sev, "size": size}
        if bad is None:
            rows.append({**head, "skipped": why})
            print(f"{name} {kind} {sev}: skipped, {why}", flush=True)
            continue
        mvol = Volume(bad.astype(np.uint8), vol.spacing, vol.origin, vol.direction)
        masks = {"degraded": bad, "morphology": morphology(bad, sp)}
        masks["mask_only"], st_mask, _, _ = _refine(mvol, model, dic, params, None)
        with _RulesOff(kind):
            masks["image_rule_off"], _, _, _ = _refine(mvol, model, dic, params, image)
        masks["image"], st_img, cav, ins = _refine(mvol, model, dic, params, image)
        row = {**head, "draws": draws,
               "changed_ml": float((clean != bad).sum() * np.prod(sp) / 1000.0),
               "status_mask_only": st_mask, "status_image": st_img, "cavities": cav,
               "inserted_slices": ins}
        for k, m in masks.items():
            row[k] = {"dice": dice(m, clean),
                      "assd_mm": surface_distances(m, clean, vol.spacing)["assd_mm"]}
        rows.append(row)
        print(f"{name} {kind} {sev}: " + ", ".join(
            f"{k} {row[k]['assd_mm']:.3f}" for k in COLUMNS)
            + f" mm; cavities {cav and (cav['filled'], cav['kept'])}; slices moved "
              f"{ins and ins['moved']}", flush=True)
    return rows


def plan_for(kinds, hole_radii, draws, end_mm=(5.0, 10.0, 20.0)):
    """Severity 0 once, then each kind's three severities ``draws`` times."""
    sizes = {"hole": hole_radii, "duplicated_slices": (2, 4, 6), "copied_slices": (2, 4, 6),
             "end_slices": end_mm}
    return [("clean", 0, 0)] + [(kind, k + 1, size) for kind in kinds
                                for k, size in enumerate(sizes[kind]) for _ in range(draws)]


def table(rows):
    out = []
    for kind, sev in sorted({(r["kind"], r["severity"]) for r in rows},
                            key=lambda ks: (ks[0] != "clean", ks)):
        here = [r for r in rows if (r["kind"], r["severity"]) == (kind, sev)]
        rs = [r for r in here if "skipped" not in r]
        t = {"kind": kind, "severity": sev, "size": here[0]["size"], "n": len(rs),
             "skipped": len(here) - len(rs)}
        if not rs:
            out.append(t)
            continue
        if kind == "hole":
            t["redraws"] = sum(r["draws"] - 1 for r in rs)
        for k in COLUMNS:
            a = np.array([r[k]["assd_mm"] for r in rs])
            d = np.array([r[k]["dice"] for r in rs])
            t[k] = {"assd_mm_mean": float(a.mean()), "assd_mm_worst": float(a.max()),
                    "dice_mean": float(d.mean()), "dice_worst": float(d.min())}
        t["image_halves_error"] = bool(sev > 0 and t["image"]["assd_mm_mean"]
                                       <= 0.5 * t["degraded"]["assd_mm_mean"])
        t["image_beats_morphology"] = bool(t["image"]["assd_mm_mean"]
                                           < t["morphology"]["assd_mm_mean"])
        t["image_worse_than_input"] = int(sum(
            r["image"]["assd_mm"] > r["degraded"]["assd_mm"] + 0.05 for r in rs))
        if kind == "clean":
            t["natural_cavities_filled"] = int(sum(
                (r["cavities"] or {}).get("filled", 0) for r in rs))
        if kind != "hole":
            t["slices_moved"] = int(sum((r["inserted_slices"] or {}).get("moved", 0)
                                        for r in rs))
        out.append(t)
        print(f"{kind} {sev} (size {t['size']:g}, n {len(rs)}): " + ", ".join(
            f"{k} {t[k]['assd_mm_mean']:.3f} ({t[k]['assd_mm_worst']:.3f})" for k in COLUMNS))
    return out


# -- choosing INSERTED_MARGIN: validation cases, the reading alone ----------------------------

def validation_cases(root, n_hippocampus=20):
    """(name, clean mask, label grid, image) for every validation case: organs
    of the TotalSegmentator example CT other than the kidneys (and their cysts)
    at least 10 slices long, organs of its MR, MSD hippocampus training-split
    cases (case number not a multiple of 5)."""
    ts, msd = root / "totalsegmentator_example", root / "msd_hippocampus"
    out = []
    for img_name, seg_name, skip, n_max in (
            ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz", (2, 3, 23, 24), 12),
            ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz", (), 8)):
        img = read_volume(ts / img_name)
        seg = read_label_map(ts / seg_name)
        count = np.bincount(seg.array.ravel().astype(np.int64))
        picked = 0
        for lab in np.argsort(-count, kind="stable"):
            if lab == 0 or lab in skip or count[lab] < 1500 or picked == n_max:
                continue
            m = seg.array == lab
            if np.ptp(np.flatnonzero(m.any((1, 2)))) < 10:
                continue
            out.append((f"{img_name.split('.')[0]} label {lab}", m, seg, img))
            picked += 1
    files = [f for f in sorted((msd / "labels").glob("*.nii*"))
             if int(f.name.split("_")[1].split(".")[0]) % 5 != 0][:n_hippocampus]
    for f in files:
        lab = read_label_map(f)
        out.append((f.name.split(".")[0], lab.array > 0, lab, read_volume(msd / "images" / f.name)))
    return out


def _set_of(name):
    return "hippocampus" if name.startswith("hippocampus") else name.split(" ")[0]


def validation(a):
    """Voxels that differ from the clean mask after the reading alone (no fit),
    relative to the clean volume, per setting (INSERTED_MARGIN,
    JUNCTION_FRACTION): inserted and copied slices ->
    results/refine_image_validation.json."""
    rng = np.random.default_rng(1)
    cases = validation_cases(data_root())
    kinds = ("duplicated_slices", "copied_slices")
    err = {st: {k: [] for k in kinds} for st in SETTINGS}
    degraded = {k: [] for k in kinds}
    by_set = {}         # (set, setting, kind) -> errors
    natural_runs = []   # clean masks with runs of identical slices, and what the rule does
    for name, clean, vol, img in cases:
        natural = sum(len(_inserted.identical_runs(clean, ax)) for ax in range(3))
        if natural:
            out, _ = _inserted.undo_inserted_slices(clean.astype(np.uint8), (1,), vol, img)
            natural_runs.append({"case": name, "runs": natural,
                                 "voxels_moved": int(((out > 0) != clean).sum())})
        sp = vol.spacing[::-1]
        for kind in kinds:
            for sev in (1, 2, 3):
                bad, _, why = _degraded(kind, clean, sp, sev, 0, rng)
                if bad is None:
                    continue
                n = float(clean.sum())
                degraded[kind].append(float((bad != clean).sum()) / n)
                for st in SETTINGS:
                    out, _ = _inserted.undo_inserted_slices(bad.astype(np.uint8), (1,), vol,
                                                            img, margin=st[0], junction=st[1])
                    e = float(((out > 0) != clean).sum()) / n
                    err[st][kind].append(e)
                    by_set.setdefault((_set_of(name), st, kind), []).append(e)
        print(f"{name}: done", flush=True)
    rows = [{"margin": st[0], "junction": st[1],
             **{k: {"mean": float(np.mean(v)), "worst": float(np.max(v)), "n": len(v)}
                for k, v in err[st].items()},
             "summed_means": float(sum(np.mean(v) for v in err[st].values())),
             "by_set": {f"{name} {k}": float(np.mean(v)) for (name, s, k), v in by_set.items()
                        if s == st}}
            for st in SETTINGS]
    best = min((r for r in rows if r["margin"] is not None), key=lambda r: r["summed_means"])
    for r in rows:
        print(f"margin {r['margin']} junction {r['junction']}: inserted "
              f"{r['duplicated_slices']['mean']:.4f}, copied {r['copied_slices']['mean']:.4f}, "
              f"summed {r['summed_means']:.4f}")
    in_use = [_inserted.INSERTED_MARGIN, _inserted.JUNCTION_FRACTION]
    out = {"benchmark": "refine_image_validation: reading runs of identical slices",
           "machine": machine(), "command": "python bench/bench_refine_image.py --validation",
           "metric": "voxels that differ from the clean mask after undo_inserted_slices "
                     "(no fit), relative to the clean mask's volume; 2 / 4 / 6 slices "
                     f"inserted or copied along array axis {SLICE_AXIS}",
           "cases": [c[0] for c in cases],
           "clean_masks_with_identical_runs": natural_runs,
           "degraded": {k: float(np.mean(v)) for k, v in degraded.items()},
           "rule": "the setting (INSERTED_MARGIN, JUNCTION_FRACTION) with the least summed "
                   "mean error (inserted + copied)",
           "chosen": [best["margin"], best["junction"]], "in_use": in_use,
           "rows": rows}
    print(f"chosen {out['chosen']} (in use {in_use})")
    print(f"wrote {write_json(HERE / 'results' / 'refine_image_validation.json', out)}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=5,
                    help="draws per kind and severity per TotalSegmentator kidney (default 5)")
    ap.add_argument("--cases", type=int, default=20,
                    help="held-out hippocampus cases (default 20), one draw per kind and "
                         "severity each")
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"comma-separated, of {', '.join(KINDS)} (default all)")
    ap.add_argument("--validation", action="store_true",
                    help="choose INSERTED_MARGIN on the validation cases instead")
    ap.add_argument("--output", default=str(HERE / "results" / "refine_image.json"))
    ap.add_argument("--hippocampus-model", default=str(HERE / "cache" / "hippocampus_642.npz"),
                    help="the hippocampus model: built without the held-out cases (default "
                         "bench_hippocampus.py's; bench_hippocampus_validation.py's "
                         "hippocampus_val_642.npz leaves out the validation cases too)")
    a = ap.parse_args(argv)
    kinds = [k for k in a.kinds.split(",") if k]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        ap.error(f"--kinds: {bad[0]!r} is not one of {', '.join(KINDS)}")
    root = data_root()
    kid, hip = HERE / "cache" / "kidney_model.npz", Path(a.hippocampus_model)
    ts, msd = root / "totalsegmentator_example", root / "msd_hippocampus"
    needed = (ts, msd) if a.validation else (kid, hip, ts, msd)
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        print(f"needs {', '.join(missing)} (bench_robustness.py, bench_hippocampus.py)",
              file=sys.stderr)
        return 2
    if a.validation:
        return validation(a)
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    out = {"benchmark": "refine_with_image: holes, inserted and copied slices",
           "machine": machine(),
           "command": "python bench/bench_refine_image.py " + " ".join(
               argv if argv is not None else sys.argv[1:]),
           "cavity_percentiles": list(_cavities.CAVITY_PERCENTILES),
           "inserted_margin": _inserted.INSERTED_MARGIN,
           "junction_fraction": _inserted.JUNCTION_FRACTION, "slice_axis": SLICE_AXIS,
           "columns": {"mask_only": "refine_mask without the image",
                       "image_rule_off": "refine_mask with the image, the kind's rule off "
                                         "(hole: CAVITY_PERCENTILES = None; slices: "
                                         "INSERTED_MARGIN = None; end_slices: CUT_ENDS = "
                                         "False; clean: all three)",
                       "image": "refine_mask with the image (default)",
                       "morphology": "largest component + fill holes + closing (3 mm ball)"},
           "sizes": "hole: radius (mm); duplicated_slices / copied_slices: slices; "
                    "end_slices: mm of the organ removed at one end of the slice axis",
           "sets": {}}
    # TotalSegmentator example CT, both kidneys
    model = load_model(kid)
    dic = model.ssc_dictionary("shapes")
    ct = read_volume(ts / "example_ct.nii.gz")
    seg = read_label_map(ts / "example_seg_fast_force_split.nii.gz")
    plan = plan_for(kinds, (4.0, 7.0, 10.0), a.draws)
    rows = []
    for side, lab in (("right", 2), ("left", 3)):
        rows += run_case(f"example_ct {side}", seg.array == lab, seg, ct, model, dic,
                         SegmentParams(side=side, **CT), plan, rng)
    out["sets"]["totalseg_ct"] = {
        "data": "TotalSegmentator example_ct.nii.gz (3 mm, non-contrast), kidneys of "
                "example_seg_fast_force_split.nii.gz (labels 2, 3; network output)",
        "model": "bench/cache/kidney_model.npz (KiTS19 training split)",
        "hole_radii_mm": [4.0, 7.0, 10.0], "end_slices_mm": [5.0, 10.0, 20.0],
        "draws_per_severity_per_kidney": a.draws,
        "table": table(rows), "cases": rows}
    # MSD hippocampus MR, held-out cases
    model = load_model(hip)
    dic = model.ssc_dictionary("shapes")
    files = [f for f in sorted((msd / "labels").glob("*.nii*"))
             if int(f.name.split("_")[1].split(".")[0]) % 5 == 0][:a.cases]
    plan = plan_for(kinds, (1.0, 1.5, 2.0), 1, end_mm=(2.0, 4.0, 6.0))
    rows = []
    for f in files:
        lab = read_label_map(f)
        img = read_volume(msd / "images" / f.name)
        rows += run_case(f.name.split(".")[0], lab.array > 0, lab, img, model, dic,
                         SegmentParams(), plan, rng)
    out["sets"]["hippocampus_mr"] = {
        "data": "MSD Task04 hippocampus, held-out cases (case number % 5 == 0), "
                "labels 1 and 2 as one organ (manual)",
        "model": f"{hip.name} ({model.n_shapes} shapes; cases whose number % 5 is not "
                 + ("0 or 1)" if "_val_" in hip.name else "0)"),
        "cases_used": [f.name for f in files],
        "hole_radii_mm": [1.0, 1.5, 2.0], "end_slices_mm": [2.0, 4.0, 6.0],
        "draws_per_severity_per_case": 1,
        "table": table(rows), "cases": rows}
    out["time_s"] = time.perf_counter() - t0
    write_json(a.output, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
