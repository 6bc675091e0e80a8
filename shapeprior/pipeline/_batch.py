"""Many cases: sequential or on dask.distributed, resumable, failures isolated.

Each case runs :func:`~shapeprior.pipeline.run_case` into
``OUTDIR/<case>``. Resuming trusts the manifest, not the presence of a
report: a case is complete only when its folder holds exactly the outputs
its manifest lists, with the recorded hashes, and the input files, the
model and the parameters still hash and compare as recorded. An incomplete
or stale case of ours is redone (its outputs replaced); a folder shapeprior
did not write is never touched and its case is reported as failed. Every
discovered case gets a row in the summary.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

from .._interrupt import reraise_interruption
from .._outputs import (PRODUCER, OutputExistsError, check_not_input, json_text, make_dirs,
                        one_line, own_output, read_manifest, remove_created, sha256_file,
                        write_text_atomic)
from ..io import image_sha256
from ._cases import scrub_paths

_MODELS = {}


def _model(path, prior="auto"):
    from ..model import load_model

    p = Path(path)
    key = (str(p.resolve()), p.stat().st_mtime_ns, prior)
    if key not in _MODELS:
        m = load_model(p)
        _MODELS.clear()
        _MODELS[key] = (m, m.prior_dictionary(prior))
    return _MODELS[key]


def case_state(folder, case_path, model_path, params, deidentify=False, reference=None,
               reference_labels=(1,), outputs=None):
    """``('complete' | 'stale' | 'absent' | 'foreign', reason)`` of a case folder.
    A ``reference`` given now must be the one its Dice was computed against, and
    ``reference_labels`` the labels it was computed on. ``outputs``: the file
    names asked for now (:func:`~._run.output_names`; default: the defaults')."""
    from ._run import input_hashes, output_names, params_record

    files, _ = input_hashes(Path(case_path), deidentify)
    files["model"] = Path(model_path)
    return folder_state(folder, files, params_record(params),
                        output_names() if outputs is None else outputs, reference,
                        reference_labels)


def folder_state(folder, files, record, outputs, reference=None, reference_labels=(1,),
                 done="segmented", what="segmentation"):
    """``('complete' | 'rescore' | 'stale' | 'absent' | 'foreign', reason)`` of a
    job's output folder. Complete: ours, holding exactly the ``outputs`` (file
    names besides the manifest) with the hashes its manifest records, written
    from the input ``files`` (``{manifest key: path}``, the model among them) as
    they are now, with the parameters ``record`` (the manifest's parameters but
    ``argv`` and ``reference_labels``), and compared with this ``reference`` on
    these ``reference_labels`` when one is given. Rescore: complete but for the
    reference (none compared before, another map or other labels): its written
    label is compared again (:func:`~._rescore.rescore_outputs`), nothing
    fitted. ``done``/``what`` name the job in the reasons ("since it was
    segmented", "segmentation parameters differ")."""
    from ._run import reference_selection

    f = Path(folder)
    if not f.exists() and not f.is_symlink():
        return "absent", None
    why = own_output(f, partial_ok=True)
    if why is not None:
        return "foreign", f"{f.name} exists and {why}; shapeprior never replaces it"
    m = read_manifest(f)
    if m is None:
        return "stale", "incomplete outputs (no manifest)"
    outs = m.get("outputs")
    if not isinstance(outs, dict) or not outs:
        return "stale", "outputs written by an older version"
    for name, digest in outs.items():
        p = f / name
        if not p.is_file():
            return "stale", f"output {name} is missing"
        if sha256_file(p) != digest:
            return "stale", f"output {name} changed since it was written"
    asked = set(outputs)
    if set(outs) != asked:
        return "stale", ("other outputs were asked for (now: " + ", ".join(sorted(asked))
                         + "; written: " + ", ".join(sorted(outs)) + ")")
    rec = m.get("inputs") or {}
    now = {k: image_sha256(v) for k, v in files.items()}
    was = {k: (v or {}).get("sha256") for k, v in rec.items() if k != "reference"}
    if set(now) != set(was):
        return "stale", f"it was {done} from other input files"
    if now != was:
        return "stale", f"the input or the model changed since it was {done}"
    recorded = m.get("parameters") or {}
    compare = None                  # why the reference given now was not the one compared
    if reference is not None:
        was_ref = (rec.get("reference") or {}).get("sha256")
        was_labels = recorded.get("reference_labels")
        labels = reference_selection(reference_labels, reference)
        if was_ref is None:
            compare = "it was not compared with a reference"
        elif image_sha256(reference) != was_ref:
            compare = "the reference differs from the one it was compared with"
        elif was_labels != labels:
            compare = f"it was compared with the reference's labels {was_labels}, not {labels}"
    recorded = {k: v for k, v in recorded.items() if k not in ("argv", "reference_labels")}
    if recorded != json.loads(json.dumps(record)):
        return "stale", f"{what} parameters differ"
    if compare is not None:
        # the same fit from the same inputs: its written label is compared again
        # (a label map written as DICOM-SEG alone is fitted again)
        return ("rescore" if "label.nii.gz" in outs else "stale"), compare
    return "complete", None


def run_one(case, outdir, model_path, params, series, mesh_format, force, argv, deidentify,
            allow_no_orientation, redo, output_type="nifti", qc=True, one_thread=False,
            reference=None, reference_labels=(1,)):
    """Segment one case; never raises (returns a summary row). ``one_thread``:
    on one core (:func:`~shapeprior.backend.single_threaded`), as a worker of a
    process pool runs it. ``reference``: its label map, for Dice and surface
    distances in the row."""
    from ..backend import single_threaded
    from ..io import names_withheld
    from ._run import run_case

    try:
        model, dic = _model(model_path, params.prior)
        with single_threaded() if one_thread else contextlib.nullcontext(), \
                names_withheld(deidentify):
            rep = run_case(case.path, outdir, model, model_path, params, series=series,
                           mesh_format=mesh_format, force=force or redo, dictionary=dic,
                           argv=argv, case_name=case.name, deidentify=deidentify,
                           allow_no_orientation=allow_no_orientation, partial_ok=True,
                           output_type=output_type, qc=qc, reference=reference,
                           reference_labels=reference_labels)
        return with_redo_note({"case": case.name, **result_fields(rep)}, redo)
    except Exception as exc:  # noqa: BLE001 - one bad case must not stop the batch
        reraise_interruption(exc)   # Ctrl-C or SIGTERM does
        return failed_row(case, exc, deidentify, reference)


#: a row's note when its reference holds none of the organ: the case is not among
#: those compared (its Dice would be 0 whatever was segmented)
EMPTY_REFERENCE_NOTE = "the reference holds no organ: not compared"


def result_fields(rep):
    """A summary row's fields from a case's report: status, quality, volume,
    iterations, time, side, reasons, and Dice and distances against its
    reference."""
    row = {k: rep[k] for k in ("status", "quality", "volume_ml", "iterations", "time_s")}
    if rep.get("side", "none") != "none":      # the side of a paired organ fitted
        row["side"] = rep["side"]
    if rep.get("reasons"):
        row["reasons"] = rep["reasons"]
    row.update(reference_fields(rep))
    row.update(side_fields(rep))
    return row


def side_fields(rep):
    """A ``--side both`` row's account of each side (a report's ``sides``): its
    status and, against a reference, its own Dice (``left_status``,
    ``left_dice``, ...); nothing for one organ."""
    out = {}
    if rep.get("side") != "both":
        return out
    from ..segmentation import BOTH

    for s in BOTH:
        b = rep.get("sides", {}).get(s)
        if b is None:
            continue
        out[f"{s}_status"] = b["status"]
        ref = b.get("reference")
        if ref is not None and not ref.get("empty") and ref.get("dice") is not None:
            out[f"{s}_dice"] = ref["dice"]
    return out


def reference_fields(rep):
    """A row's comparison with the case's reference (segment and refine rows):
    Dice and distances (None where no surface, an empty label), nothing when
    the report has no reference, and :data:`EMPTY_REFERENCE_NOTE` without a
    Dice when the reference holds no organ."""
    ref = rep.get("reference")
    if ref is None:
        return {}
    if ref.get("empty"):
        return {"note": EMPTY_REFERENCE_NOTE}    # nothing to score against: not compared
    return {"dice": ref["dice"], **{k: ref[k] if ref[k] is not None and math.isfinite(ref[k])
                                    else None for k in ("assd_mm", "hd95_mm")}}


def with_redo_note(row, redo):
    """``row`` with the reason it was redone (``redo``, if any) before its own note."""
    if redo:
        row["note"] = "; ".join(filter(None, (f"redone: {redo}", row.get("note"))))
    return row


def kept_row(case, folder, compared=False, fields=None):
    """The row of a case whose complete outputs are kept: ``skipped``, with the
    results its report holds (``result``: the status it got then; ``fields``:
    the function that reads them, default :func:`result_fields`). Its Dice and
    distances only when ``compared``: this run gave the reference they were
    computed against (:func:`case_state` checked it is the same)."""
    row = {"case": case.name, "status": "skipped",
           "reason": "complete outputs exist (inputs unchanged)"}
    try:
        rep = json.loads((Path(folder) / "report.json").read_bytes())
        fields = (fields or result_fields)(rep)
    except (OSError, ValueError, KeyError, TypeError):
        return row                      # the manifest vouched for it; older report layout
    row["result"] = fields.pop("status")
    if not compared:
        for k in ("dice", "assd_mm", "hd95_mm", "input_dice"):
            fields.pop(k, None)
    row.update(fields)
    return row


def rescore_row(case, folder, why, reference, reference_labels, deidentify,
                allow_no_orientation, mask=None, fields=None, scan=None):
    """The row of a case whose outputs are kept and compared with the reference
    given now (:func:`~._rescore.rescore_outputs`; ``why``: what differed,
    ``scan``: ``(path, series)`` of the scan, for an RT Structure Set's frame of
    reference); a reference that cannot be compared fails its row, the outputs
    left as they were."""
    from ._rescore import rescore_outputs

    try:
        rescore_outputs(folder, reference, reference_labels, mask=mask,
                        allow_no_orientation=allow_no_orientation, deidentify=deidentify,
                        scan=scan)
    except Exception as exc:  # noqa: BLE001 - one bad case must not stop the batch
        reraise_interruption(exc)   # Ctrl-C or SIGTERM does
        return failed_row(case, exc, deidentify, reference, None)
    row = kept_row(case, folder, compared=True, fields=fields)
    row["reason"] = f"complete outputs exist (inputs unchanged); compared again: {why}"
    return row


def failed_row(case, exc, deidentify, reference=None, image=None):
    """The summary row of a case that failed with ``exc``; with ``deidentify``
    its error names neither the case's file or folder, nor its ``reference``
    or ``image`` (a mask's, in a refinement batch)."""
    msg = one_line(exc)
    if isinstance(exc, Exception) and not isinstance(exc, (ValueError, OSError)):
        msg = f"{type(exc).__name__}: {msg}"
    if deidentify:
        msg = scrub_paths(msg, ((reference, "(withheld reference)"),
                                (image, "(withheld image)"), (case.path, case.name),
                                (getattr(case, "folder", None), case.name)))
    return {"case": case.name, "status": "failed", "error": msg}


def check_root(root, inputs):
    """The batch output folder may not overlap an input; a summary.json or
    summary.csv there must be ours."""
    root = Path(root)
    check_not_input(root, inputs)
    for name, own in (("summary.json", own_summary), ("summary.csv", own_summary_csv)):
        s = root / name
        if s.exists() or s.is_symlink():
            why = own(s)
            if why is not None:
                raise OutputExistsError(f"{s} exists and {why}; shapeprior never replaces it")


#: the columns of a batch's summary.csv (a row per case; empty where a row has none)
SUMMARY_COLUMNS = ("case", "status", "result", "quality", "volume_ml", "iterations", "time_s",
                   "side", "dice", "assd_mm", "hd95_mm", "left_status", "left_dice",
                   "right_status", "right_dice", "reasons", "error", "note")
#: the segment summary.csv header before each side had its columns (its file is still
#: a shapeprior summary, replaced by a rerun)
_SUMMARY_COLUMNS_1 = ("case", "status", "result", "quality", "volume_ml", "iterations",
                      "time_s", "side", "dice", "assd_mm", "hd95_mm", "reasons", "error", "note")
#: the columns of a refinement batch's summary.csv: the input mask's volume, the
#: refined one (``volume_ml``), what was removed and added, and against a
#: reference the input mask's Dice beside the refined label's
REFINE_COLUMNS = ("case", "status", "result", "quality", "input_ml", "volume_ml", "removed_ml",
                  "added_ml", "iterations", "time_s", "input_dice", "dice", "assd_mm",
                  "hd95_mm", "reasons", "error", "note")
_COLUMNS = {"segment": SUMMARY_COLUMNS, "refine": REFINE_COLUMNS}
_HEADERS = frozenset(",".join(c) for c in (*_COLUMNS.values(), _SUMMARY_COLUMNS_1))


def own_summary_csv(path):
    """Why ``path`` is not a shapeprior batch summary.csv (its exact header), or None."""
    p = Path(path)
    try:
        if p.is_file() and not p.is_symlink():
            with open(p, newline="") as f:
                if f.readline().rstrip("\r\n") in _HEADERS:
                    return None
    except (OSError, UnicodeDecodeError):
        pass
    return "is not a shapeprior summary"


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = "; ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    # a spreadsheet would take a cell starting with one of these for a formula
    return "'" + text if text[:1] in ("=", "+", "@", "\t", "\r") else text


def summary_csv(rows, columns=SUMMARY_COLUMNS):
    """The text of summary.csv: ``columns`` (:data:`SUMMARY_COLUMNS` of a
    segmentation batch), one line per row."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        r = {**r, "note": r.get("note") or r.get("reason")}
        w.writerow([_cell(r.get(k)) for k in columns])
    return buf.getvalue()


def own_summary(path):
    """Why ``path`` is not a shapeprior batch summary, or None."""
    p = Path(path)
    try:
        s = json.loads(p.read_bytes()) if p.is_file() and not p.is_symlink() else None
    except (OSError, ValueError):
        s = None
    if isinstance(s, dict) and s.get("producer") == PRODUCER:
        return None
    if isinstance(s, list) and all(isinstance(r, dict) and "case" in r and "status" in r
                                   for r in s):
        return None                     # written by an older version
    return "is not a shapeprior summary"


def reference_summary(rows):
    """Dice and surface distances over the rows compared with a reference:
    mean, median and the worst case (the lowest Dice, the largest distance),
    or None when no row was. Rows without a result (an error) are not
    compared, nor are rows whose reference holds no organ
    (:data:`EMPTY_REFERENCE_NOTE`); a distance is left out where a label is
    empty (``n_without_surface`` counts those rows; their Dice is 0)."""
    import numpy as np

    scored = [r for r in rows if "dice" in r]
    if not scored:
        return None
    out = {"n_compared": len(scored)}
    keys = (("dice", min), ("assd_mm", max), ("hd95_mm", max))
    if any(r.get("input_dice") is not None for r in scored):
        keys += (("input_dice", min),)  # a refinement batch: the masks as given
    for key, worst in keys:
        have = [r for r in scored if r.get(key) is not None]
        entry = {} if "dice" in key else {"n_without_surface": len(scored) - len(have)}
        if have:
            v = np.array([r[key] for r in have], float)
            w = worst(have, key=lambda r: r[key])
            entry.update({"mean": float(v.mean()), "median": float(np.median(v)),
                          "worst": float(w[key]), "worst_case": w["case"]})
        out[key] = entry
    return out


def write_summary(root, rows, n_cases, n_references=None, command="segment"):
    """Write ``root/summary.json`` (one row per case: status, quality, volume,
    reasons or error, Dice and distances against a reference) atomically, with
    :func:`reference_summary` when references were given (``n_references``:
    how many cases had one), and the rows as ``root/summary.csv``
    (:data:`SUMMARY_COLUMNS`, or :data:`REFINE_COLUMNS` for ``command``
    'refine'); only a previous shapeprior summary is replaced. Returns the
    summary's ``reference`` block, or None without references."""
    doc = {"producer": PRODUCER, "command": command, "n_cases": n_cases}
    if n_references is not None:
        doc["reference"] = {"n_cases_with_reference": n_references,
                            **(reference_summary(rows) or {"n_compared": 0})}
    check_root(root, ())                 # both must be ours before either is written
    write_text_atomic(Path(root) / "summary.csv", summary_csv(rows, _COLUMNS[command]),
                      own=own_summary_csv)
    text = json_text({**doc, "cases": rows})
    write_text_atomic(Path(root) / "summary.json", text, own=own_summary)
    return doc.get("reference")


def run_batch(cases, root, model_path, params, *, series=None, mesh_format="vtk", force=False,
              workers=0, scheduler=None, progress=True, argv=None, deidentify=False,
              allow_no_orientation=False, inputs=(), output_type="nifti", qc=True,
              references=None, reference_labels=(1,)):
    """Run ``cases`` (``[Case]``) into ``root``; returns summary rows, one per case.

    ``references``: one reference label map (or None) per case, from
    :func:`~shapeprior.pipeline.match_references`; its ``reference_labels``
    are the organ. A case already complete keeps its outputs, and its row the
    results of its report (status ``skipped``, ``result`` the status it had).

    ``workers=0`` and no ``scheduler``: sequential in this process. Otherwise
    a dask.distributed LocalCluster with ``workers`` processes on 127.0.0.1,
    or the existing cluster at ``scheduler`` (e.g. ``tcp://host:8786``).
    ``inputs``: paths ``root`` may not overlap (the input folder, the model).
    """
    from ._run import output_names

    root = Path(root)
    refs = list(references) if references is not None else [None] * len(cases)
    if len(refs) != len(cases):
        raise ValueError(f"references: {len(refs)} for {len(cases)} cases")
    check_root(root, [*inputs, model_path, *(c.path for c in cases if c.error is None), *refs])
    created = make_dirs(root)
    rows, todo = [], []
    try:
        for c, ref in zip(cases, refs):
            if c.error is not None:
                rows.append(failed_row(c, c.error, deidentify))
                continue
            folder = root / c.name
            try:
                state, why = case_state(folder, c.path, model_path, params, deidentify, ref,
                                        reference_labels,
                                        output_names(output_type, mesh_format, qc))
            except OSError as exc:      # gone or unreadable since it was found: this row
                rows.append(failed_row(c, exc, deidentify, ref))
                continue
            if state == "foreign":
                rows.append({"case": c.name, "status": "failed", "error": why})
            elif state == "complete" and not force:
                rows.append(kept_row(c, folder, compared=ref is not None))
            elif state == "rescore" and not force:
                rows.append(rescore_row(c, folder, why, ref, reference_labels, deidentify,
                                        allow_no_orientation, scan=(c.path, series)))
            else:
                todo.append((c, state in ("stale", "rescore") and why, ref))
    except BaseException:
        remove_created(created)
        raise
    parallel = bool(workers) or scheduler is not None
    args = [(c, root / c.name, model_path, params, series, mesh_format, force, argv,
             deidentify, allow_no_orientation, redo or None, output_type, qc, parallel, ref,
             tuple(reference_labels))
            for c, redo, ref in todo]
    rows += dispatch(run_one, args, workers, scheduler, progress)
    order = {c.name: i for i, c in enumerate(cases)}
    return sorted(rows, key=lambda r: order[r["case"]])


def dispatch(job, args, workers=0, scheduler=None, progress=True):
    """``[job(*a) for a in args]`` (in the order they finish): in this process
    when ``workers`` is 0 and there is no ``scheduler``, else on a dask.distributed
    LocalCluster of ``workers`` one-thread processes on 127.0.0.1, or on the
    existing cluster at ``scheduler``. ``job`` must not raise (it returns a row)."""
    from tqdm import tqdm

    rows = []
    bar = tqdm(total=len(args), desc="cases", unit="case", disable=not progress)
    if not workers and scheduler is None:
        for a in args:
            rows.append(job(*a))
            bar.update()
        bar.close()
        return rows
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise RuntimeError("parallel batches need dask.distributed: "
                           "pip install 'shapeprior[dist]'") from None
    cluster = None
    if scheduler is None:
        import logging
        import signal
        import threading

        # Ctrl-C at a terminal reaches every process of its group: the workers
        # start with SIGINT ignored (a disposition their interpreters keep), so
        # that this process alone stops the run and closes them, and dask's
        # warnings about the tasks it cancels stay off the terminal
        main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            # no dashboard; the scheduler's HTTP server (which it starts regardless, on
            # 8787 by default) on a free port of 127.0.0.1: with 8787 taken (another
            # run's cluster) dask printed a UserWarning about it on the terminal
            cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1,
                                   processes=True, host="127.0.0.1", dashboard_address=None,
                                   scheduler_kwargs={"dashboard": False,
                                                     "dashboard_address": "127.0.0.1:0"},
                                   silence_logs=logging.CRITICAL)
        finally:
            if main:
                signal.signal(signal.SIGINT, old)
    client = Client(scheduler or cluster)
    try:
        futs = [client.submit(job, *a, pure=False) for a in args]
        for fut in as_completed(futs):
            rows.append(fut.result())
            bar.update()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    bar.close()
    return rows
