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
from pathlib import Path

from .._outputs import (PRODUCER, OutputExistsError, check_not_input, make_dirs, own_output,
                        one_line, read_manifest, remove_created, sha256_file,
                        write_text_atomic)
from ._cases import scrub

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


def case_state(folder, case_path, model_path, params, deidentify=False):
    """``('complete' | 'stale' | 'absent' | 'foreign', reason)`` of a case folder."""
    from ._run import input_hashes, params_record

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
    files, _ = input_hashes(Path(case_path), deidentify)
    files["model"] = Path(model_path)
    rec = m.get("inputs") or {}
    now = {k: sha256_file(v) for k, v in files.items()}
    was = {k: (v or {}).get("sha256") for k, v in rec.items() if k != "reference"}
    if now != was:
        return "stale", "the input or the model changed since it was segmented"
    recorded = {k: v for k, v in (m.get("parameters") or {}).items() if k != "argv"}
    if recorded != json.loads(json.dumps(params_record(params))):
        return "stale", "segmentation parameters differ"
    return "complete", None


def run_one(case, outdir, model_path, params, series, mesh_format, force, argv, deidentify,
            allow_no_orientation, redo, output_type="nifti", qc=True, one_thread=False):
    """Segment one case; never raises (returns a summary row). ``one_thread``:
    on one core (:func:`~shapeprior.backend.single_threaded`), as a worker of a
    process pool runs it."""
    from ..backend import single_threaded
    from ._run import run_case

    try:
        model, dic = _model(model_path, params.prior)
        with single_threaded() if one_thread else contextlib.nullcontext():
            rep = run_case(case.path, outdir, model, model_path, params, series=series,
                           mesh_format=mesh_format, force=force or redo, dictionary=dic,
                           argv=argv, case_name=case.name, deidentify=deidentify,
                           allow_no_orientation=allow_no_orientation, partial_ok=True,
                           output_type=output_type, qc=qc)
        row = {"case": case.name, "status": rep["status"], "quality": rep["quality"],
               "volume_ml": rep["volume_ml"], "iterations": rep["iterations"],
               "time_s": rep["time_s"]}
        if rep.get("side", "none") != "none":      # the side of a paired organ fitted
            row["side"] = rep["side"]
        if rep["reasons"]:
            row["reasons"] = rep["reasons"]
        if redo:
            row["note"] = f"redone: {redo}"
        return row
    except Exception as exc:  # noqa: BLE001 - one bad case must not stop the batch
        return failed_row(case, exc, deidentify)


def failed_row(case, exc, deidentify):
    msg = one_line(exc)
    if isinstance(exc, Exception) and not isinstance(exc, (ValueError, OSError)):
        msg = f"{type(exc).__name__}: {msg}"
    if deidentify:
        msg = scrub(msg, case.path, case.name)
    return {"case": case.name, "status": "failed", "error": msg}


def check_root(root, inputs):
    """The batch output folder may not overlap an input; a summary.json there
    must be ours."""
    root = Path(root)
    check_not_input(root, inputs)
    s = root / "summary.json"
    if s.exists() or s.is_symlink():
        why = own_summary(s)
        if why is not None:
            raise OutputExistsError(f"{s} exists and {why}; shapeprior never replaces it")


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


def write_summary(root, rows, n_cases):
    """Write ``root/summary.json`` (one row per case: status, quality, volume,
    reasons or error) atomically; only a previous shapeprior summary is replaced."""
    text = json.dumps({"producer": PRODUCER, "command": "segment", "n_cases": n_cases,
                       "cases": rows}, indent=1)
    write_text_atomic(Path(root) / "summary.json", text, own=own_summary)


def run_batch(cases, root, model_path, params, *, series=None, mesh_format="vtk", force=False,
              workers=0, scheduler=None, progress=True, argv=None, deidentify=False,
              allow_no_orientation=False, inputs=(), output_type="nifti", qc=True):
    """Run ``cases`` (``[Case]``) into ``root``; returns summary rows, one per case.

    ``workers=0`` and no ``scheduler``: sequential in this process. Otherwise
    a dask.distributed LocalCluster with ``workers`` processes on 127.0.0.1,
    or the existing cluster at ``scheduler`` (e.g. ``tcp://host:8786``).
    ``inputs``: paths ``root`` may not overlap (the input folder, the model).
    """
    from tqdm import tqdm

    root = Path(root)
    check_root(root, [*inputs, model_path])
    created = make_dirs(root)
    rows, todo = [], []
    try:
        for c in cases:
            if c.error is not None:
                rows.append(failed_row(c, c.error, deidentify))
                continue
            folder = root / c.name
            state, why = case_state(folder, c.path, model_path, params, deidentify)
            if state == "foreign":
                rows.append({"case": c.name, "status": "failed", "error": why})
            elif state == "complete" and not force:
                rows.append({"case": c.name, "status": "skipped",
                             "reason": "complete outputs exist (inputs unchanged)"})
            else:
                todo.append((c, state == "stale" and why))
    except BaseException:
        remove_created(created)
        raise
    parallel = bool(workers) or scheduler is not None
    args = [(c, root / c.name, model_path, params, series, mesh_format, force, argv,
             deidentify, allow_no_orientation, redo or None, output_type, qc, parallel)
            for c, redo in todo]
    bar = tqdm(total=len(args), desc="cases", unit="case", disable=not progress)
    if not workers and scheduler is None:
        for a in args:
            rows.append(run_one(*a))
            bar.update()
    else:
        try:
            from distributed import Client, LocalCluster, as_completed
        except ImportError:
            raise RuntimeError("parallel batches need dask.distributed: "
                               "pip install 'shapeprior[dist]'") from None
        cluster = None
        if scheduler is None:
            cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None)
        client = Client(scheduler or cluster)
        try:
            futs = [client.submit(run_one, *a, pure=False) for a in args]
            for fut in as_completed(futs):
                rows.append(fut.result())
                bar.update()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    bar.close()
    order = {c.name: i for i, c in enumerate(cases)}
    return sorted(rows, key=lambda r: order[r["case"]])
