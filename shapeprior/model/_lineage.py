"""Where each training shape of a model came from: content hash, when and by
which shapeprior it was added, and the model version counter."""

from __future__ import annotations

import datetime as _dt

from .. import __version__


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def new_lineage(shapes) -> dict:
    """Lineage of a freshly built model (version 1).

    Parameters
    ----------
    shapes : sequence of (str, str)
        ``(shape id, sha256 of its label map)`` in the model's shape order.
    """
    when = _now()
    return {"model_version": 1, "created": when, "updates": [],
            "shapes": [{"id": i, "sha256": h, "added": when, "shapeprior": __version__,
                        "model_version": 1} for i, h in shapes]}


def lineage_of(meta: dict) -> dict:
    """The model's lineage, or, for a model built before lineage was recorded,
    one reconstructed from its shape ids and source hashes (version 1)."""
    lin = meta.get("lineage")
    if isinstance(lin, dict) and isinstance(lin.get("shapes"), list):
        return {**lin, "shapes": list(lin["shapes"]), "updates": list(lin.get("updates", []))}
    hashes = {s.get("name"): s.get("sha256") for s in meta.get("sources", [])
              if isinstance(s, dict)}
    ids = meta.get("shape_ids", [])
    return {"model_version": 1, "created": None, "updates": [],
            "shapes": [{"id": i, "sha256": hashes.get(str(i).rsplit(":", 1)[0]), "added": None,
                        "shapeprior": (meta.get("versions") or {}).get("shapeprior"),
                        "model_version": 1} for i in ids]}


def extend_lineage(lin: dict, shapes, summary: dict) -> dict:
    """``lin`` with the next model version, the added shapes and one update record."""
    v = int(lin.get("model_version", 1)) + 1
    when = _now()
    out = dict(lin)
    out["model_version"] = v
    out["shapes"] = list(lin["shapes"]) + [
        {"id": i, "sha256": h, "added": when, "shapeprior": __version__, "model_version": v}
        for i, h in shapes]
    out["updates"] = list(lin.get("updates", [])) + [
        {"model_version": v, "when": when, "shapeprior": __version__, **summary}]
    return out
