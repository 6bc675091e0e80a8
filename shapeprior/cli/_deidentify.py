"""``--deidentify`` for the commands that learn from label maps (build-model,
update-model): no label map's name or path reaches the model file, its report
and manifest, the screen or an error line.

A model is made to be shared, and it records where each training shape came
from (its sources, shape ids and lineage). Label maps exported from a clinical
system are often named after the patient. With ``--deidentify`` each one is
named by the salted hash of its name (``case-1a2b3c4d5e6f``, the salt of
``segment --deidentify``), the folders given become placeholders
(``<labels>``, ``<images>``, ``<model>``, ``<output>``), and every text that
leaves the run (the report's reasons, an error line) has each form of those
names and paths replaced.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: a shape id that names no file: a pseudonym (``case-`` and 12 hex digits) or a
#: model's own numbering (``shape_12``), with or without its side (``:left``)
_ANONYMOUS_ID = re.compile(r"(case-[0-9a-f]{12}|shape_[0-9]+)(:[a-z]+)?")
#: names and parts of a path below its folder shorter than this are left in the
#: text: ``01`` or ``a`` would replace digits and letters of unrelated words (the
#: run names its label maps by their pseudonyms itself; this scrubs what readers
#: and checks say about their files)
_SHORTEST = 3


def _forms(path) -> set:
    """The ways a path can appear in a message."""
    p = Path(path)
    out = {str(p), os.path.abspath(p), os.path.realpath(p)}
    return out | {os.fsencode(f).decode("utf-8", "backslashreplace") for f in list(out)}


def _stem(name: str) -> str:
    """A label map's file name without its volume suffix (``.nii.gz``, ``.nrrd``, ...)."""
    from ..io import volume_suffix

    return name[: len(name) - len(volume_suffix(name))]


class RunDeidentifier:
    """Pseudonyms for the label maps of one run, and the scrubbing of its texts.

    Parameters
    ----------
    items : list of (Path, str, Path)
        ``(file, case name, root)`` as :func:`~shapeprior.model.label_map_inputs`
        gives them.
    placeholders : dict
        ``{path: placeholder}`` of the other paths of the command line (the
        folders given, the images, the model, the output); None keys are skipped.
    """

    def __init__(self, items, placeholders):
        from ..pipeline import Deidentifier

        deid = Deidentifier()
        self.pseudonym = {name: deid.token(name) for _, name, _ in items}
        # a part of a path below its root names a case only when no other case has it
        # (case_00001 does, segmentation.nii.gz of every KiTS case does not)
        parts = {}
        for f, name, root in items:
            try:
                rel = Path(os.path.abspath(f)).relative_to(os.path.abspath(root))
            except ValueError:
                rel = Path(Path(f).name)
            for part in {*rel.parts, _stem(rel.name)}:
                parts.setdefault(part, set()).add(name)
        forms = {}
        for f, name, _ in items:
            for form in _forms(f) | ({name} if len(name) >= _SHORTEST else set()):
                forms.setdefault(form, self.pseudonym[name])
        for part, names in parts.items():
            if len(names) == 1 and len(part) >= _SHORTEST:
                forms.setdefault(part, self.pseudonym[next(iter(names))])
        for path, shown in placeholders.items():
            if path is not None:
                for form in _forms(path):
                    forms.setdefault(form, shown)
        # longest first, and only where the form is not inside a longer name
        self._forms = sorted(((f, v) for f, v in forms.items() if f and f != "."),
                             key=lambda t: -len(t[0]))
        self._pattern = re.compile("|".join(
            rf"(?<![A-Za-z0-9.]){re.escape(f)}(?![A-Za-z0-9])" for f, _ in self._forms)) \
            if self._forms else None
        self._value = dict(self._forms)

    def items(self, items):
        """``items`` with each case name replaced by its pseudonym."""
        return [(f, self.pseudonym[name], r) for f, name, r in items]

    def text(self, text) -> str:
        """``text`` with every name and path of the run replaced."""
        text = str(text)
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self._value[m.group(0)], text)

    def data(self, obj):
        """A JSON-like ``obj`` (dicts, lists, strings, numbers) with every
        string, key or value, passed through :meth:`text`."""
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {self.data(k) if isinstance(k, str) else k: self.data(v)
                    for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.data(v) for v in obj)
        return obj

    def error(self, exc):
        """``exc`` again, of the same type, its message scrubbed."""
        try:
            return type(exc)(self.text(exc))
        except Exception:        # an exception type that takes other arguments
            return ValueError(self.text(exc))


def add_deidentify(ap):
    """The ``--deidentify`` option of a command that learns from label maps."""
    ap.add_argument("--deidentify", action="store_true",
                    help="name each label map by a salted hash of its name (case-1a2b3c4d5e6f; "
                         "the salt of segment --deidentify): no label map's name or path "
                         "reaches the model file, its report and manifest, the screen or an "
                         "error line; the folders given are recorded as <labels>, <images>")


class _Run:
    """What a command asks of its de-identification; without ``--deidentify``
    every step passes its argument through."""

    def __init__(self, on, placeholders):
        self.on, self.placeholders, self._deid = on, placeholders, None

    @property
    def deid(self):
        if self._deid is None:
            self._deid = RunDeidentifier([], self.placeholders)
        return self._deid

    def start(self, items):
        """The run's label maps ``[(file, name, root)]``, named by their pseudonyms."""
        if not self.on:
            return items
        self._deid = RunDeidentifier(items, self.placeholders)
        return self._deid.items(items)

    def data(self, obj):
        return self.deid.data(obj) if self.on else obj

    def shown(self, items):
        """The manifest's ``input_paths``: each label map by its pseudonym."""
        return {n: n for _, n, _ in items} if self.on else None


class deidentified:
    """``with deidentified(on, placeholders) as run:`` a run whose errors leave
    scrubbed (:meth:`RunDeidentifier.error`) when ``on``; an output that exists
    is named as given (it is the user's own path)."""

    def __init__(self, on, placeholders):
        self.run = _Run(on, placeholders)

    def __enter__(self):
        return self.run

    def __exit__(self, kind, exc, tb):
        from .._outputs import OutputExistsError

        if (self.run.on and isinstance(exc, (ValueError, OSError, RuntimeError))
                and not isinstance(exc, OutputExistsError)):
            raise self.run.deid.error(exc) from None
        return False


def named_shapes(model) -> int:
    """How many of a model's shapes are recorded by a name that may be a file's
    (not a pseudonym nor the model's own numbering): what ``update-model
    --deidentify`` leaves as it was."""
    meta = model.metadata if isinstance(model.metadata, dict) else {}
    ids = meta.get("shape_ids") or []
    return sum(1 for i in ids if not _ANONYMOUS_ID.fullmatch(str(i)))
