"""Refinement of degraded kidney masks (held-out KiTS19 cases).

Clean kidney masks from held-out KiTS19 cases (case number a multiple of 5,
never in the model) are degraded the way segmentation networks fail, at
three severities each:

* ``leak``: a ball attached to the surface (radius 8 / 14 / 20 mm);
* ``hole``: a cavity inside (radius 4 / 7 / 10 mm);
* ``missing_slices``: 2 / 4 / 6 consecutive slices emptied (KiTS19's slice axis);
* ``duplicated_slices``: 2 / 4 / 6 slices inserted as copies of the one before
  them (the rest of the organ shifted: without the image, the refinement cannot
  tell which side moved);
* ``copied_slices``: 2 / 4 / 6 slices replaced by copies of the one before
  them (an outline carried forward by an annotator or a slice-wise network);
* ``islands``: 2 / 4 / 8 separate blobs (radius 3-6 mm) 10-40 mm away;
* ``jitter``: the boundary moved by smooth noise of 1 / 2 / 3 mm;
* ``end_slices``: the slices of the last 5 / 10 / 20 mm of the organ at one
  end of the slice axis emptied (at least one; a network that stopped short
  of a pole). It draws its end from a generator of its own (case, severity),
  so that the other kinds' masks are those of the runs before it was added.

Each degraded mask is refined with the model alone (``refine_mask``, no
image: KiTS images are not in the shared data) twice: with kidney and tumour
as one organ label (``refined``), and with the tumour label kept
(``refined_keep_tumour``: ``--labels 1 --keep-labels 2``; a tumour bulges
beyond any plausible kidney exactly as a leak does, and only its label tells
them apart without the image). The baseline is morphology (largest
component, fill holes, closing with a 3 mm ball). Symmetric surface distance
(ASSD) and Dice against the clean mask (kidney and tumour), per degradation
and severity: mean, worst case, and the number of cases made worse.

Enclosed holes are filled only where the fit departs from the mask: clean
KiTS19 kidney masks hold enclosed cavities of up to 2 ml (renal sinus), as
large as the planted holes, so a hole alone is no evidence of an error.

    python bench/bench_refine.py [--cases 8]   # needs bench/cache/kidney_model.npz

Settings are chosen on training-split cases (``--split validation``, written
to ``results/refine_validation.json``), e.g. the gap rule::

    python bench/bench_refine.py --split validation --min-slice-mm 3 --cases 10 \\
        --kinds missing_slices,duplicated_slices,copied_slices \\
        --gap-fractions 0,0.2,0.3,0.4,0.5,1

and the interpolation across gaps (one run per ``--interpolation linear|chord|cubic``,
``results/refine_validation_interp_<mode>.json``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from _common import data_root, machine, write_json
from shapeprior.io import Volume, read_label_map
from shapeprior.mesh import grown_box, kidney_masks, mask_box
from shapeprior.model import load_model
from shapeprior.segmentation import SegmentParams, dice, refine_mask, surface_distances
from shapeprior.segmentation import _cut_ends as _cut_ends_mod
from shapeprior.segmentation import _refine as _refine_mod

HERE = Path(__file__).resolve().parent
KINDS = ("leak", "hole", "missing_slices", "duplicated_slices", "copied_slices", "islands",
         "jitter", "end_slices")


def crop(vol, mask, margin_mm=40.0):
    idx = np.argwhere(mask)
    m = np.ceil(margin_mm / vol.spacing[::-1]).astype(int)
    lo = np.maximum(idx.min(0) - m, 0)
    hi = np.minimum(idx.max(0) + m + 1, mask.shape)
    sub = vol.crop(lo, hi)
    return Volume(mask[tuple(slice(a, b) for a, b in zip(lo, hi))].astype(np.uint8),
                  sub.spacing, sub.origin, sub.direction)


def ball(shape, centre_zyx, r_mm, sp_zyx):
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((g[k] - centre_zyx[k]) * sp_zyx[k]) ** 2 for k in range(3))
    return d2 <= r_mm ** 2


def end_slab(mask, sp_zyx, mm, rng, ax):
    """The slices of the last ``mm`` of the organ ``mask`` at one end of array
    axis ``ax`` (drawn; at least one slice): a slice of the axis moved first."""
    k = max(1, int(round(mm / sp_zyx[ax])))
    zs = np.where(np.moveaxis(mask, ax, 0).any((1, 2)))[0]
    return slice(zs[-1] - k + 1, None) if rng.integers(2) else slice(0, zs[0] + k)


def degrade(mask, sp_zyx, kind, sev, rng, lab=None, slice_axis=2):
    """A degraded copy of ``mask`` (bool, zyx); ``sev`` in 1..3. With ``lab``
    (the clean label map: 1 kidney, 2 tumour), also that label map degraded
    the same way (new voxels are kidney, moved slices keep their labels):
    ``(mask, labels)``. Slice degradations act along the array axis
    ``slice_axis`` (KiTS19: 2, its acquired slices; an axial NIfTI: 0)."""
    out = _degrade(mask, sp_zyx, kind, sev, rng, lab, slice_axis)
    return out if lab is not None else out[0]


def _degrade(mask, sp_zyx, kind, sev, rng, lab, ax=2):
    m = mask.copy()
    lt = None if lab is None else np.moveaxis(lab.copy(), ax, 0)    # slice ops, as mt
    # inside distances on the mask's box (exact there); outside ones only when used
    box = grown_box(mask_box(mask), 1, mask.shape)
    dist_in = np.zeros(mask.shape)
    dist_in[box] = ndimage.distance_transform_edt(mask[box], sampling=sp_zyx)
    dist_out = ndimage.distance_transform_edt(~mask, sampling=sp_zyx) \
        if kind in ("islands", "jitter") else None
    surf = np.argwhere(mask & (dist_in <= max(sp_zyx)))
    if kind == "leak":
        r = (8.0, 14.0, 20.0)[sev - 1]
        p = surf[rng.integers(len(surf))].astype(float)
        c = np.argwhere(mask).mean(0)
        d = (p - c) * sp_zyx
        p = p + 0.7 * r * d / np.linalg.norm(d) / sp_zyx
        m |= ball(m.shape, p, r, sp_zyx)
    elif kind == "hole":
        r = (4.0, 7.0, 10.0)[sev - 1]
        deep = np.argwhere(dist_in >= min(r + 2.0, dist_in.max() * 0.8))
        p = deep[rng.integers(len(deep))]
        m &= ~ball(m.shape, p, r, sp_zyx)
    elif kind in ("missing_slices", "duplicated_slices", "copied_slices"):
        # KiTS19 stores the acquired slices along the first NIfTI axis: ITK's x,
        # the last array axis (the default ax)
        k = (2, 4, 6)[sev - 1]
        mt, tt = np.moveaxis(m, ax, 0), np.moveaxis(mask, ax, 0)   # views
        zs = np.where(tt.any((1, 2)))[0]
        a = int(rng.integers(zs[0] + len(zs) // 4, zs[0] + 3 * len(zs) // 4 - k + 1))

        def move(t, src):       # the same slice operation on the mask and the labels
            if kind == "missing_slices":
                t[a:a + k] = 0
            elif kind == "copied_slices":
                t[a + 1:a + k + 1] = src[a]
            else:
                t[a + k:] = src[a:len(src) - k]
                t[a:a + k] = src[a]

        move(mt, tt)
        if lt is not None:
            move(lt, np.moveaxis(lab, ax, 0))
    elif kind == "end_slices":
        cut = end_slab(mask, sp_zyx, (5.0, 10.0, 20.0)[sev - 1], rng, ax)
        np.moveaxis(m, ax, 0)[cut] = False
        if lt is not None:
            lt[cut] = 0
    elif kind == "islands":
        n = (2, 4, 8)[sev - 1]
        for _ in range(n):
            cand = np.argwhere((dist_out > 10.0) & (dist_out < 40.0))
            p = cand[rng.integers(len(cand))]
            m |= ball(m.shape, p, float(rng.uniform(3.0, 6.0)), sp_zyx)
    elif kind == "jitter":
        amp = (1.0, 2.0, 3.0)[sev - 1]
        noise = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 4.0 / sp_zyx)
        noise *= amp / max(noise.std(), 1e-9)
        m = (np.where(mask, dist_in, -dist_out) + noise) > 0
    if lab is None:
        return m, None
    if kind in ("missing_slices", "duplicated_slices", "copied_slices", "end_slices"):
        out = np.moveaxis(lt, 0, ax)
    else:               # voxels added are kidney, voxels removed are gone
        out = np.where(m, np.where(lab > 0, lab, 1), 0)
    return m, np.where(m, out, 0).astype(np.uint8)


def morphology(m, sp_zyx):
    lab, n = ndimage.label(m)
    if n > 1:
        m = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    m = ndimage.binary_fill_holes(m)
    r = np.maximum(1, np.round(3.0 / sp_zyx)).astype(int)
    st = ball(tuple(2 * r + 1), r, 3.0, sp_zyx)
    pad = [(int(k), int(k)) for k in r]
    # a closing changes nothing beyond the ball's reach: computed on the box
    box = grown_box(mask_box(m), r + 1, m.shape)
    out = np.zeros(m.shape, bool)
    out[box] = ndimage.binary_closing(np.pad(m[box], pad), st)[tuple(slice(k, -k) for k in r)]
    return out


def _cases(root, split, n, min_slice_mm):
    """Held-out cases (``test``: case number a multiple of 5, never in the
    model) or training-split cases (``validation``: in the model, for choosing
    settings), in order, keeping those whose slices are at least
    ``min_slice_mm`` thick."""
    held = split == "test"
    out = []
    for case in sorted(root.glob("case_*")):
        if (int(case.name.split("_")[1]) % 5 == 0) != held:
            continue
        if min_slice_mm > 0:
            # KiTS19 stores the acquired slices along the first NIfTI axis
            if read_label_map(sorted(case.glob("*.nii*"))[0]).spacing[0] < min_slice_mm:
                continue
        out.append(case)
        if len(out) == n:
            break
    return out


def kidney_inputs():
    """``(KiTS19 root, kidney model, its shapes dictionary)``, or None (said on
    stderr) when the data or the cached model is missing."""
    root = data_root() / "kits19"
    mpath = HERE / "cache" / "kidney_model.npz"
    if not root.is_dir() or not mpath.exists():
        print(f"needs {root} and {mpath} (run bench_robustness.py first)", file=sys.stderr)
        return None
    model = load_model(mpath)
    return root, model, model.ssc_dictionary("shapes")


def _refine_both(bvol, model, dic, side):
    """The two refinements of a degraded label map: the organ as one label,
    and with the tumour label kept."""
    # the organ as one label (what a tool without a lesion label gives) ...
    res = refine_mask(bvol, model, (1, 2), SegmentParams(side=side), None, dic)
    # ... and with the tumour label kept (--labels 1 --keep-labels 2)
    res_keep = refine_mask(bvol, model, (1,), SegmentParams(side=side), None, dic, keep=(2,))
    return res, res_keep


def _bridged(mask, sp):
    """What the refinement bridges in ``mask`` under the current rules (a key:
    refinements with the same bridges are the same)."""
    parts, gaps, fill = _refine_mod.bridged_target(mask, sp)
    ends = _cut_ends_mod.cut_ends((parts & ~gaps) | fill) if _refine_mod.CUT_ENDS else []
    return b"".join(np.packbits(v).tobytes() for v in (parts, gaps, fill)) + repr(ends).encode()


def _clean_assd(cvol, model, dic, side, ratio):
    """ASSD (mm) of the refinement of the clean mask ``cvol`` against itself,
    with END_RATIO = ``ratio``."""
    _cut_ends_mod.END_RATIO = ratio
    res = refine_mask(cvol, model, (1,), SegmentParams(side=side), None, dic)
    return round(float(surface_distances(res.label > 0, cvol.array > 0, cvol.spacing)[
        "assd_mm"]), 4)


def clean_bridges(root, split, sweep, model=None, dic=None):
    """For each value of the swept setting, the clean kidney masks (kidney and
    tumour, both sides, every case of the split) in which the refinement
    bridges anything, and the voxels it would change: a clean mask has no
    missing slices, so every bridge is a false alarm."""
    name, values, module = sweep
    out = {f"{v:g}": {"masks": 0, "masks_changed": 0, "voxels_changed": 0} for v in values}
    n = 0
    for case in _cases(root, split, -1, 0.0):
        vol = read_label_map(sorted(case.glob("*.nii*"))[0])
        for side, m in kidney_masks(vol).items():
            cvol = crop(vol, m)
            m = cvol.array > 0
            sp = vol.spacing[::-1]
            n += 1
            base = []           # the clean mask refined with no end read as cut, once
            for v in values:
                setattr(module, name, v)
                _, gaps, fill = _refine_mod.bridged_target(m, sp)
                changed = int((((m & ~gaps) | fill) ^ m).sum())
                o = out[f"{v:g}"]
                if module is _cut_ends_mod:
                    # ends read as cut; the fit decides whether its shape carries
                    # on beyond them: the refinement against the clean mask, with
                    # the value and with no end read as cut
                    if _cut_ends_mod.cut_ends((m & ~gaps) | fill):
                        o["masks"] += 1
                        base = base or [_clean_assd(cvol, model, dic, side, np.inf)]
                        o.setdefault("assd_mm", []).append(
                            [_clean_assd(cvol, model, dic, side, v), base[0]])
                        setattr(module, name, v)
                        o["masks_changed"] += int(o["assd_mm"][-1][0] != o["assd_mm"][-1][1])
                    continue
                o["masks"] += int(gaps.any())
                o["masks_changed"] += int(changed > 0)
                o["voxels_changed"] += changed
    return {"setting": name, "kidneys": n, "by_value": out}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=8, help="cases (default 8)")
    ap.add_argument("--split", choices=("test", "validation"), default="test",
                    help="test: held-out cases (case %% 5 == 0); validation: training-split "
                         "cases, to choose settings (default test)")
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"degradations, comma-separated (default all: {','.join(KINDS)})")
    ap.add_argument("--min-slice-mm", type=float, default=0.0,
                    help="only cases whose slices are at least this thick (default: all)")
    ap.add_argument("--gap-fractions", default=None,
                    help="sweep MAX_GAP_FRACTION over these comma-separated values (each "
                         "variant is reported as refined@F); default: the library's value")
    ap.add_argument("--part-fractions", default=None,
                    help="sweep GAP_PART_FRACTION over these comma-separated values (each "
                         "variant is reported as refined@part=F); default: the library's "
                         "value")
    ap.add_argument("--end-ratios", default=None,
                    help="sweep END_RATIO (ends read as cut) over these comma-separated "
                         "values, inf for none (each variant is reported as refined@end=F); "
                         "default: the library's value")
    ap.add_argument("--interpolation", choices=("linear", "chord", "cubic"), default=None,
                    help="shape-based interpolation across missing and copied slices "
                         "(GAP_INTERPOLATION; default: the library's value)")
    ap.add_argument("--output", default=None,
                    help="result file (default results/refine.json, or "
                         "results/refine_validation.json for --split validation)")
    a = ap.parse_args(argv)
    kinds = tuple(k for k in a.kinds.split(",") if k)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        ap.error(f"--kinds: unknown degradation {bad[0]!r}; allowed: {', '.join(KINDS)}")
    if sum(v is not None for v in (a.gap_fractions, a.part_fractions, a.end_ratios)) > 1:
        ap.error("--gap-fractions, --part-fractions and --end-ratios: one sweep at a time")
    sweep = None
    if a.gap_fractions is not None:
        sweep = ("MAX_GAP_FRACTION", "@", [float(v) for v in a.gap_fractions.split(",")],
                 _refine_mod)
    elif a.part_fractions is not None:
        sweep = ("GAP_PART_FRACTION", "@part=",
                 [float(v) for v in a.part_fractions.split(",")], _refine_mod)
    elif a.end_ratios is not None:
        sweep = ("END_RATIO", "@end=", [float(v) for v in a.end_ratios.split(",")],
                 _cut_ends_mod)
    if a.interpolation is not None:
        _refine_mod.GAP_INTERPOLATION = a.interpolation
    out_path = Path(a.output) if a.output else HERE / "results" / (
        "refine.json" if a.split == "test" else "refine_validation.json")
    inputs = kidney_inputs()
    if inputs is None:
        return 2
    root, model, dic = inputs
    cases = _cases(root, a.split, a.cases, a.min_slice_mm)
    variants = [""] if sweep is None else [f"{sweep[1]}{f:g}" for f in sweep[2]]
    refined_names = [f"{n}{v}" for v in variants for n in ("refined", "refined_keep_tumour")]
    rows = []
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i, case in enumerate(cases):
        files = sorted(case.glob("*.nii*"))
        vol = read_label_map(files[0])
        masks = kidney_masks(vol)
        side = ("left", "right")[i % 2] if len(masks) == 2 else next(iter(masks))
        clean_vol = crop(vol, np.where(masks[side], vol.array, 0))   # 1 kidney, 2 tumour
        clean = clean_vol.array > 0
        tumour = clean_vol.array == 2
        sp = clean_vol.spacing[::-1]
        for kind in KINDS:
            for sev in (1, 2, 3):
                # every kind draws from the generator, so that a subset of kinds
                # degrades each mask as the whole run does
                gen = np.random.default_rng((i, sev)) if kind == "end_slices" else rng
                bad, bad_lab = degrade(clean, sp, kind, sev, gen, lab=clean_vol.array)
                if kind not in kinds:
                    continue
                bvol = Volume(bad_lab, clean_vol.spacing, clean_vol.origin, clean_vol.direction)
                row = {"case": case.name, "side": side, "kind": kind, "severity": sev,
                       "slice_mm": float(clean_vol.spacing[0]),
                       "tumour_ml": float(tumour.sum() * np.prod(sp) / 1000.0)}
                masks_out = {"degraded": bad, "morphology": morphology(bad, sp)}
                done = {}
                for v, f in zip(variants, [None] if sweep is None else sweep[2]):
                    if f is not None:
                        setattr(sweep[3], sweep[0], f)
                    key = _bridged(bad, sp)
                    if key not in done:
                        done[key] = _refine_both(bvol, model, dic, side)
                    res, res_keep = done[key]
                    masks_out[f"refined{v}"] = res.label > 0
                    masks_out[f"refined_keep_tumour{v}"] = res_keep.label > 0
                    row[f"status{v}"] = res.fit.status
                    row[f"status_keep_tumour{v}"] = res_keep.fit.status
                for name, m in masks_out.items():
                    row[name] = {"dice": dice(m, clean),
                                 "assd_mm": surface_distances(m, clean, clean_vol.spacing)[
                                     "assd_mm"]}
                rows.append(row)
                print(f"{case.name} {side:5s} {kind:17s} {sev}: ASSD "
                      f"{row['degraded']['assd_mm']:.2f} -> "
                      + ", ".join(f"{n} {row[n]['assd_mm']:.2f}" for n in refined_names)
                      + f" / morphology {row['morphology']['assd_mm']:.2f} mm", flush=True)
    table = []
    for kind in kinds:
        for sev in (1, 2, 3):
            rs = [r for r in rows if r["kind"] == kind and r["severity"] == sev]
            t = {"kind": kind, "severity": sev, "n": len(rs)}
            for name in ["degraded", *refined_names, "morphology"]:
                a_ = np.array([r[name]["assd_mm"] for r in rs])
                d_ = np.array([r[name]["dice"] for r in rs])
                t[name] = {"assd_mm_mean": float(a_.mean()), "assd_mm_worst": float(a_.max()),
                           "dice_mean": float(d_.mean()), "dice_worst": float(d_.min())}
            for name in refined_names:
                t[f"{name}_halves_error"] = bool(t[name]["assd_mm_mean"]
                                                 <= 0.5 * t["degraded"]["assd_mm_mean"])
                t[f"{name}_beats_morphology"] = bool(t[name]["assd_mm_mean"]
                                                     < t["morphology"]["assd_mm_mean"])
                t[f"{name}_worse_than_input"] = int(sum(
                    r[name]["assd_mm"] > r["degraded"]["assd_mm"] + 0.05 for r in rs))
            table.append(t)
            print(f"{kind:17s} {sev}: ASSD {t['degraded']['assd_mm_mean']:.2f} -> "
                  + ", ".join(f"{n} {t[n]['assd_mm_mean']:.2f} (worst "
                              f"{t[n]['assd_mm_worst']:.2f})" for n in refined_names)
                  + f", morphology {t['morphology']['assd_mm_mean']:.2f}")
    clean = None
    if sweep is not None:
        clean = clean_bridges(root, a.split, (sweep[0], sweep[2], sweep[3]), model, dic)
        print(f"clean {a.split}-split kidneys ({clean['kidneys']}) with a bridge / changed: "
              + ", ".join(f"{sweep[1]}{k} {v['masks']} / {v['masks_changed']}"
                          for k, v in clean["by_value"].items()))
    write_json(out_path, {
        "benchmark": "refine_degraded_kidney_masks", "machine": machine(),
        "command": "python bench/bench_refine.py " + " ".join(argv if argv is not None
                                                              else sys.argv[1:]),
        "data": ("KiTS19 held-out cases (case number % 5 == 0)" if a.split == "test" else
                 "KiTS19 training-split cases (case number % 5 != 0; in the model: for "
                 "choosing settings only)")
                + (f" with slices of at least {a.min_slice_mm:g} mm" if a.min_slice_mm else "")
                + ", one kidney each (kidney and tumour), cropped with a 40 mm margin",
        "cases_used": [c.name for c in cases],
        "max_gap_fraction": sweep[2] if sweep and sweep[0] == "MAX_GAP_FRACTION"
        else _refine_mod.MAX_GAP_FRACTION,
        "gap_part_fraction": sweep[2] if sweep and sweep[0] == "GAP_PART_FRACTION"
        else _refine_mod.GAP_PART_FRACTION,
        "gap_interpolation": _refine_mod.GAP_INTERPOLATION,
        "end_ratio": sweep[2] if sweep and sweep[0] == "END_RATIO" else _cut_ends_mod.END_RATIO,
        "carry_on_fraction": _cut_ends_mod.CARRY_ON_FRACTION,
        "columns": {"refined": "refine_mask with labels (1, 2): the organ as one label",
                    "refined_keep_tumour": "refine_mask with labels (1,), keep (2,): the "
                                           "tumour label is fitted as organ, never removed",
                    "@F": "with MAX_GAP_FRACTION = F",
                    "@part=F": "with GAP_PART_FRACTION = F",
                    "@end=F": "with END_RATIO = F (inf: no end read as cut)",
                    "worse_than_input": "cases whose ASSD rose by more than 0.05 mm"},
        "model": "bench/cache/kidney_model.npz (KiTS19 training split)",
        "baseline": "largest component + fill holes + closing (3 mm ball)",
        "time_s": time.perf_counter() - t0, "table": table,
        "clean_masks_bridged": clean, "cases": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
