"""A file named the same in every case folder of a data set (KiTS19's
``case_00000/imaging.nii.gz``; TotalSegmentator's ``s0011/ct.nii.gz`` beside
``s0011/segmentations/kidney_left.nii.gz``): found by one rule wherever a command takes
a folder of case folders (``segment --image-name``, ``refine --mask-name``,
``build-model --mask-name``)."""

from __future__ import annotations

import os
from pathlib import Path

from ._volume import VOLUME_SUFFIXES, volume_suffix

#: characters that make a case folder's file name a pattern (``fnmatch``)
_PATTERN = frozenset("*?[")


def is_label_map_name(name) -> bool:
    """Whether a file name is a label map's: an image suffix, or ``.dcm`` (a
    DICOM-SEG, read as a label map wherever one is taken)."""
    return bool(volume_suffix(name)) or str(name).lower().endswith(".dcm")


def check_mask_name(name):
    """Refuse a ``--mask-name`` that is no label map's file name (ValueError)."""
    if not name or Path(name).name != name or not is_label_map_name(name):
        raise ValueError(f"--mask-name {name!r} is not a label map's file name (a name "
                         f"ending {', '.join(VOLUME_SUFFIXES)}, or .dcm for a DICOM-SEG, "
                         "without a folder)")


def in_case_folder(base, name, scans=False):
    """``(entry, error)``: the file (or with ``scans`` the file or DICOM folder)
    ``name`` in the case folder ``base``, a label map also in its
    ``segmentations/``. ``name`` may be a pattern (``*_ct.nii.gz``, for scans
    named per case): the one visible entry that matches it (an image file, or a
    folder with ``scans``). ``(None, None)`` when there is none; an error when
    several match."""
    places = (base,) if scans else (base, base / "segmentations")
    if not _PATTERN & set(name):
        return next((x for x in (d / name for d in places)
                     if x.is_file() or (scans and x.is_dir())), None), None
    for d in places:
        try:
            hits = sorted((e for e in d.glob(name) if not e.name.startswith(".") and (
                (e.is_file() and (volume_suffix(e.name) if scans else is_label_map_name(e.name)))
                or (scans and e.is_dir()))),
                key=lambda e: os.fsencode(e.name))
        except OSError:
            hits = []
        if len(hits) > 1:
            return None, f"{len(hits)} entries in this folder match {name}"
        if hits:
            return hits[0], None
    return None, None


def case_folders(folder):
    """The visible subfolders of ``folder`` in byte order of their names: a data
    set's case folders."""
    return sorted((d for d in Path(folder).iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: os.fsencode(d.name))


def in_case_folders(folder, name, scans=False):
    """``[(case folder, entry or None, error or None)]``: :func:`in_case_folder` of
    ``name`` in each of ``folder``'s :func:`case_folders`."""
    return [(d, *in_case_folder(d, name, scans)) for d in case_folders(folder)]
