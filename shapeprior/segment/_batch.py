"""Many cases: sequential or on dask.distributed, resumable, failures isolated.

Each case runs :func:`~shapeprior.segment._run.run_case` into
``OUTDIR/<case>``. A case whose folder already holds a ``report.json`` is
complete and skipped (resume), unless ``force``. A failing case becomes a
``failed`` row with its error message; the others go on.
"""

from __future__ import annotations

from pathlib import Path

_MODELS = {}


def _model(path):
    from ..model import load_model

    p = Path(path)
    key = (str(p.resolve()), p.stat().st_mtime_ns)
    if key not in _MODELS:
        m = load_model(p)
        _MODELS.clear()
        _MODELS[key] = (m, m.ssc_dictionary("shapes"))
    return _MODELS[key]


def run_one(name, path, outdir, model_path, params, series, mesh_format, force, argv):
    """Segment one case; never raises (returns a summary row)."""
    from ._run import run_case

    try:
        model, dic = _model(model_path)
        rep = run_case(path, outdir, model, model_path, params, series=series,
                       mesh_format=mesh_format, force=force, dictionary=dic, argv=argv)
        return {"case": name, "status": "ok", "volume_ml": rep["volume_ml"],
                "iterations": rep["iterations"], "time_s": rep["time_s"]}
    except Exception as exc:  # noqa: BLE001 - one bad case must not stop the batch
        return {"case": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def run_batch(cases, root, model_path, params, *, series=None, mesh_format="vtk", force=False,
              workers=0, scheduler=None, progress=True, argv=None):
    """Run ``cases`` (``[(name, path)]``) into ``root``; returns summary rows.

    ``workers=0`` and no ``scheduler``: sequential in this process. Otherwise
    a dask.distributed LocalCluster with ``workers`` processes on 127.0.0.1,
    or the existing cluster at ``scheduler`` (e.g. ``tcp://host:8786``).
    """
    from tqdm import tqdm

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows, todo = [], []
    for name, path in cases:
        if (root / name / "report.json").is_file() and not force:
            rows.append({"case": name, "status": "skipped", "reason": "complete outputs exist"})
        else:
            todo.append((name, path))
    args = [(n, p, root / n, model_path, params, series, mesh_format, force, argv)
            for n, p in todo]
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
    order = {n: i for i, (n, _) in enumerate(cases)}
    return sorted(rows, key=lambda r: order[r["case"]])
