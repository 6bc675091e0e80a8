"""Cases of a run: discovery, safe unique names, their reference label maps,
de-identification.

A case name becomes a folder name and appears in reports, so it must be
safe (no path separators, no empty or dot names, printable on any
terminal), unique within a batch (``x.mha`` beside ``x.nii.gz``), and,
with ``--deidentify``, free of the file and folder names that in clinical
exports often hold a patient's name.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..io import (VOLUME_SUFFIXES, check_mask_name, damaged_files_text, detached_data_files,
                  display_name, folders_below_text, in_case_folder, in_case_folders,
                  input_path_error, is_dicom_seg, is_label_map_name, series_folders,
                  volume_suffix)

#: names a case folder may not take inside a batch output folder
RESERVED = frozenset({"summary.json", "summary.csv", "manifest.json"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Case:
    """One input of a run.

    Attributes
    ----------
    name : str
        Safe, unique folder name (hashed with ``--deidentify``).
    path : Path
        The image file or DICOM series folder.
    source : str
        Its name as found (printable; withheld from outputs when
        de-identifying).
    error : str or None
        Why the case cannot run (e.g. a subfolder with no DICOM series): it
        is still listed, as a failed row.
    folder : Path or None
        The case's own folder, when the case is a file inside it named like
        every other case's (``caseA/segmentations/kidney_left.nii.gz``): its
        name is the case's key (:func:`case_key`), hashed and withheld as the
        file's is.
    """

    name: str
    path: Path
    source: str
    error: str | None = None
    folder: Path | None = None


def _stem(name: str) -> str:
    s = volume_suffix(name)
    return name[: len(name) - len(s)] if s else name


def safe_name(text: str) -> str:
    """Folder-safe form of a name: ASCII letters, digits, ``._-``; no leading dot."""
    s = _UNSAFE.sub("_", text).lstrip(".")
    s = s[:100] or "unnamed"
    return s + "_case" if s in RESERVED else s


def unique_names(raw):
    """Safe, unique names for ``raw`` (one per case, in order), deterministically:
    clashing names get their file type appended (``x_mha``, ``x_nii_gz``), then
    a counter."""
    base = [safe_name(_stem(r)) for r in raw]
    counts = {}
    for b in base:
        counts[b] = counts.get(b, 0) + 1
    names = [b if counts[b] == 1 else
             safe_name(f"{b}_{volume_suffix(r).lstrip('.').replace('.', '_')}")
             for b, r in zip(base, raw)]
    seen, out = {}, []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n}-{k + 1}")
    # a counter may recreate a name already taken: keep counting until unique
    used = set()
    final = []
    for n in out:
        m, k = n, 1
        while m in used:
            k += 1
            m = f"{n}-{k}"
        used.add(m)
        final.append(m)
    return final


def discover_cases(path, list_series=None, image_name=None, deidentify=False):
    """``[Case]``: a file or a DICOM folder is one case; a folder of image files
    and/or DICOM subfolders is many. Every file with an image suffix and every
    visible subfolder is a case; a subfolder without a DICOM series is a case
    with an ``error`` (so it is reported, not dropped).

    A folder with no series of its own may keep it deeper: one series below a
    folder of no image files makes that folder one case (a CD export:
    ``DICOMDIR`` beside ``DICOM/PA0/ST0/SE0/``), and a subfolder leading to one
    series is a case read from it (a TCIA download: ``patient/study/series/``;
    :func:`~shapeprior.io.series_folders`), one leading to several a case with an
    ``error`` that names them (counted with ``deidentify``).

    ``image_name``: ``path`` holds one folder per case, and each case's scan is
    the file (or DICOM folder) of that name in it (KiTS19: ``imaging.nii.gz``;
    TotalSegmentator's data set: ``ct.nii.gz``), or the one entry matching it
    when it is a pattern (``*_ct.nii.gz``: :func:`in_case_folder`); the case
    takes its folder's name. ``deidentify``: messages name no subfolder of
    ``path``."""
    if list_series is None:
        from ..io import list_series
    p = Path(path)
    # the folder given is named in the errors about it, withheld with deidentify
    shown = "(withheld input)" if deidentify else display_name(p)
    if image_name is not None:
        if not p.is_dir():
            raise ValueError(f"--image-name names the scan in each case folder of a folder; "
                             f"{shown} is not a folder") if p.exists() \
                else input_path_error(p, shown)
        return _images_in_case_folders(p, image_name, list_series, shown)
    if p.is_file():
        return [Case(unique_names([p.name])[0], p, display_name(p))]
    if not p.is_dir():
        raise input_path_error(p, shown)
    if list_series(p):
        return [Case(unique_names([p.name])[0] if p.name else "case", p, display_name(p))]
    # hidden files are skipped, as build-model and refine skip them: the MSD archives
    # and macOS copies carry "._X.nii.gz" companions that are not images
    entries = sorted((e for e in p.iterdir() if not e.name.startswith(".")),
                     key=lambda e: os.fsencode(e.name))
    files = [f for f in entries if f.is_file() and volume_suffix(f.name)]
    dirs = [d for d in entries if d.is_dir()]
    if not files and not dirs:
        raise ValueError(f"{shown} holds no image files ({', '.join(VOLUME_SUFFIXES)}) "
                         "and no DICOM series")
    # the series below the subfolders: a case folder may keep its series deeper (one
    # patient of a TCIA download: patient/study/series/). Not where subfolders hold
    # image files: case folders of files (KiTS19's) take --image-name
    # Each subfolder searched on its own (a large download is not cut short by the
    # search's bound on the folders it looks into)
    nested = {d: _series_below(d, list_series) for d in dirs} \
        if dirs and not any(_volume_names(d) for d in dirs) else {}
    below = [b for found, _ in nested.values() for b in found]
    if not files and len(below) == 1 and below[0].parent != p and \
            not any(why for _, why in nested.values()):
        # a CD or USB export (DICOMDIR beside DICOM/PA0/ST0/SE0/, a viewer's folder): one scan
        return [Case(unique_names([p.name])[0] if p.name else "case", p, display_name(p))]
    items = files + dirs
    names = unique_names([e.name for e in items])
    cases = []
    for e, n in zip(items, names):
        err = None
        if e.is_dir():
            mine, err = nested[e] if nested else _series_below(e, list_series, depth=0)
            if len(mine) > 1:
                err = (f"no DICOM image series in this folder itself; "
                       f"{folders_below_text(mine, e, deidentify)} below it hold one each: "
                       "give the one to read")
            elif not mine and err is None:
                damaged = damaged_files_text(e)
                err = (f"no readable DICOM image series in this folder: {damaged}" if damaged
                       else "no DICOM image series in this folder" + _case_folder_hint(e))
        cases.append(Case(n, e, display_name(e), err))
    if not any(c.error is None for c in cases) and not files:
        if below:
            raise ValueError(f"{shown} holds no DICOM image series itself; "
                             f"{folders_below_text(below, p, deidentify)} below it do: give "
                             "the one to read, or a folder whose subfolders each lead to one "
                             "case's series")
        raise ValueError(f"{shown} holds no image files "
                         f"({', '.join(VOLUME_SUFFIXES)}) and no DICOM series"
                         + _image_subfolders(dirs, deidentify=deidentify))
    return cases


def _series_below(folder, list_series, depth=None):
    """``(folders, error)``: :func:`~shapeprior.io.series_folders` of ``folder``
    (``depth`` 0: the folder itself only), or ``([], why)`` when it cannot be read
    (the case's row says so; the other cases run)."""
    try:
        if depth == 0:
            return ([folder] if list_series(folder) else []), None
        return series_folders(folder, lister=list_series), None
    except (OSError, ValueError) as exc:
        return [], str(exc)


def _volume_names(folder):
    """The names of the visible image files in ``folder`` (none if unreadable)."""
    try:
        return [f.name for f in _volume_files(folder)]
    except OSError:
        return []


def _case_folder_hint(folder):
    """The end of a subfolder's error when it holds image files but no DICOM
    series: it is one case's folder (KiTS19's ``case_00000/imaging.nii.gz``).
    It names no file (they may carry the patient's name)."""
    k = len(_volume_names(folder))
    if not k:
        return ""
    return (f"; it holds {k} image file{'s' if k > 1 else ''}: a folder of case folders takes "
            "--image-name NAME, the scan's file name in each")


def _image_subfolders(dirs, masks=False, deidentify=False):
    """The hint for a dataset root: which of its subfolders hold image files,
    or ''. Folders of one case each that all hold a file of one name
    (``case_00000/imaging.nii.gz``) are named by the option that picks that
    file; others (nnU-Net's ``imagesTs/``, ``labelsTs/``) as the folders to
    give. ``masks``: the hint of a folder of masks to refine; ``deidentify``:
    the subfolders are counted, not named (case folders carry case names), and
    the names they share are not shown."""
    hold = {}
    for d in dirs:
        names = _volume_names(d)
        if names:
            hold[display_name(d)] = set(names)
    if not hold:
        return ""
    common = sorted(set.intersection(*hold.values())) if len(hold) > 1 else []
    if deidentify:
        which = f"{len(hold)} of its subfolders hold"
    else:
        which = f"its subfolders {', '.join(list(hold)[:4])}{' ...' if len(hold) > 4 else ''} hold"
    option = "--mask-name" if masks else "--image-name"
    if common:
        # (with --deidentify the shared names are not shown either: two folders of one
        # patient may share a file named after them)
        each = "a file of one name" if deidentify else ", ".join(common[:4])
        return (f"; {which} image files, each {each}: a folder of case folders takes "
                f"{option} NAME (the {'mask' if masks else 'scan'}'s file name in each)")
    if masks:
        return f"; {which} image files: give the folder of the masks"
    return (f"; {which} image files: give the scans' folder as the input (and the label maps' "
            "folder as --reference)")


def _images_in_case_folders(p, image_name, list_series, shown):
    """:func:`discover_cases` of a folder of case folders, each holding its scan
    as ``image_name`` (a file or a DICOM series folder); ``shown`` names ``p``."""
    if not image_name or Path(image_name).name != image_name or image_name in (".", ".."):
        raise ValueError(f"--image-name {image_name!r} is not a file or folder name (the "
                         "scan's name in each case folder, without a folder part: "
                         "imaging.nii.gz, or a DICOM folder's name)")
    found = in_case_folders(p, image_name, scans=True)
    names = unique_names([d.name for d, _, _ in found])
    cases = []
    for (d, f, err), n in zip(found, names):
        if f is None:
            f, err = d / image_name, err or f"no {image_name} in this folder"
        elif f.is_dir():
            try:
                if not list_series(f):
                    err = f"{image_name} in this folder holds no DICOM image series"
            except (OSError, ValueError) as exc:
                err = str(exc)
        elif not volume_suffix(f.name):
            err = (f"{image_name} is not an image file ({', '.join(VOLUME_SUFFIXES)}) or a "
                   "DICOM series folder")
        cases.append(Case(n, f, display_name(d), err, d))
    if not any(c.error is None for c in cases):
        raise ValueError(f"{shown}: no case folder in it holds {image_name} (an "
                         "image file or a DICOM series)")
    return cases


def match_in_case_folders(cases, name, option, folder=None, scans=False):
    """One file per case (``Path`` or None): ``name`` in the case's own folder
    (:attr:`Case.folder`), or with ``folder``, in ``folder/<case folder's
    name>/``; a label map also in that folder's ``segmentations/`` (as
    TotalSegmentator writes a case). ``scans``: the entry is a scan, an image
    file or a DICOM series folder.

    Raises ValueError when ``name`` is not a plain file name, when the cases
    are not case folders (``option`` names the option in the message), or
    when no case has the file."""
    if not name or Path(name).name != name or name in (".", "..") or \
            not (scans or is_label_map_name(name)):
        what = "an image file or DICOM folder" if scans else "a label map file"
        also = ", or a folder" if scans else ", or .dcm for a DICOM-SEG"
        raise ValueError(f"{option} {name!r} is not {what}'s name (a name ending "
                         f"{', '.join(VOLUME_SUFFIXES)}{also}, without a folder part)")
    if any(c.folder is None for c in cases):
        raise ValueError(f"{option} names a file in each case folder; the input is not a "
                         "folder of case folders (give --image-name, or --mask-name with "
                         "refine)")
    out = []
    for c in cases:
        base = Path(folder) / c.folder.name if folder is not None else c.folder
        found, err = in_case_folder(base, name, scans)
        if err is not None:
            raise ValueError(f"{option} {name}: {err.replace('this folder', c.source)}")
        if found is not None and found.resolve() == c.path.resolve():
            raise ValueError(f"{option} {name} is the case's own input file")
        out.append(found)
    if cases and not any(out):
        where = f" in {display_name(folder)}" if folder is not None else ""
        raise ValueError(f"{option} {name}: no case folder{where} holds it"
                         + ("" if scans else " (in it or in its segmentations/)"))
    return out


#: nnU-Net's channel suffix on image files (``case_0000.nii.gz`` beside a
#: label map ``case.nii.gz``)
_CHANNEL = re.compile(r"_\d{4}$")


def case_key(path) -> str:
    """The name a case's reference label map carries: an image file's name
    without its suffix, a DICOM folder's name; of a :class:`Case` with its own
    ``folder``, that folder's name."""
    if isinstance(path, Case):
        return path.folder.name if path.folder is not None else case_key(path.path)
    p = Path(path)
    return p.name if p.is_dir() else _stem(p.name)


def match_references(cases, folder, deidentify=False):
    """One reference label map per case (``Path`` or None), found in ``folder``
    by the case's file name (:func:`case_key`): ``images/x.nii.gz`` and
    ``dicom/x/`` take ``folder/x.<any image suffix>``; nnU-Net's
    ``x_0000.nii.gz`` takes ``folder/x.nii.gz`` when no ``x_0000`` is there.

    Raises ValueError when ``folder`` is not a folder, when two files could be
    one case's reference, or when no case has one (the wrong folder); with
    ``deidentify`` the messages name no case and no file of a case."""
    f = Path(folder)
    if not f.is_dir():
        if f.exists():
            raise ValueError(f"--reference {display_name(f)} is a file; with a folder of cases "
                             "it names a folder of label maps, one per case, named like the "
                             "cases")
        raise input_path_error(f)
    by_stem = _files_by_stem(f)
    out = []
    for c in cases:
        key = case_key(c)
        found = by_stem.get(key) or by_stem.get(_CHANNEL.sub("", key)) or []
        if len(found) > 1:
            shown = ("the suffixes " + ", ".join(volume_suffix(x.name) for x in found) if deidentify
                     else ", ".join(display_name(x) for x in found))
            raise ValueError(f"--reference: {len(found)} files could be the reference of "
                             f"{c.source}: {shown}")
        out.append(found[0] if found else None)
    if cases and not any(out):
        key = case_key(cases[0])
        names = " or ".join(f"{k}.nii.gz" for k in dict.fromkeys((key, _CHANNEL.sub("", key))))
        example = "" if deidentify else \
            f" (for {cases[0].source} it looked for {names}, or another image suffix)"
        raise ValueError(f"--reference {display_name(f)} holds no label map named like a "
                         f"case{example}")
    return out


def _volume_files(folder):
    """The visible image files in ``folder``, in byte order of their names."""
    return [e for e in sorted(Path(folder).iterdir(), key=lambda e: os.fsencode(e.name))
            if e.is_file() and volume_suffix(e.name) and not e.name.startswith(".")]


def _files_by_stem(folder):
    """``{stem: [file, ...]}`` of the visible image files in ``folder``."""
    by_stem = {}
    for e in _volume_files(folder):
        by_stem.setdefault(_stem(e.name), []).append(e)
    return by_stem


def discover_masks(folder, organ=None, deidentify=False, mask_name=None):
    """``[Case]``: the label maps in ``folder`` (its visible files with an image
    suffix; subfolders are not searched), one case each, for a refinement batch.

    Raises ValueError when it holds none, and when it looks like one scan's
    masks, a file per organ, as TotalSegmentator writes them, rather than a
    folder of cases: only some of its files named like the model's ``organ``
    (with ``deidentify`` that message names no file), or three or more files on
    one grid whose organs do not overlap (:func:`_one_scans_organs`).

    ``mask_name``: ``folder`` holds one folder per case, and each case's mask
    is the file of that name in it or in its ``segmentations/`` (as
    TotalSegmentator writes a case: ``caseA/segmentations/kidney_left.nii.gz``);
    the case takes its folder's name. A case folder without it is a case with
    an ``error``; none with it raises ValueError."""
    p = Path(folder)
    shown = "(withheld input)" if deidentify else display_name(p)
    if not p.is_dir():
        raise input_path_error(p, shown)
    if mask_name is not None:
        return _masks_in_case_folders(p, mask_name, shown)
    files = _volume_files(p)
    if not files:
        segs = [e for e in sorted(p.iterdir()) if e.is_file() and not e.name.startswith(".")
                and e.name.lower().endswith(".dcm") and is_dicom_seg(e)]
        if segs:
            raise ValueError(f"{shown} holds {len(segs)} DICOM-SEG files and no "
                             f"other label map ({', '.join(VOLUME_SUFFIXES)}): a folder of "
                             "SEGs is not refined as a batch; refine each SEG file, or "
                             "convert them to label maps")
        dirs = [d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")]
        raise ValueError(f"{shown} holds no label map files "
                         f"({', '.join(VOLUME_SUFFIXES)})"
                         + _image_subfolders(dirs, masks=True, deidentify=deidentify))
    named = [f.name for f in files if organ and organ.lower() in f.name.lower()]
    if named and len(named) < len(files):
        raise ValueError(
            f"{shown} holds {len(files)} label maps, {len(named)} of them named like "
            f"the model's organ '{organ}'" + ("" if deidentify else " (" + ", ".join(named[:4])
                                              + (", ..." if len(named) > 4 else "") + ")")
            + ": one scan's masks, a file per organ "
            "(TotalSegmentator)? Refine the organ's file; a folder is refined as a batch when "
            "each of its files is one case's mask")
    if len(files) >= 3 and _one_scans_organs(files):
        raise ValueError(
            f"{shown} holds {len(files)} label maps on one grid whose organs do not "
            "overlap: one scan's masks, a file per organ (TotalSegmentator)? Refine the "
            "organ's file; a folder is refined as a batch when each of its files is one "
            "case's mask")
    names = unique_names([f.name for f in files])
    return [Case(n, f, display_name(f)) for f, n in zip(files, names)]


def _masks_in_case_folders(p, mask_name, shown):
    """:func:`discover_masks` of a folder of case folders, each holding ``mask_name``;
    ``shown`` names ``p``."""
    check_mask_name(mask_name)
    found = in_case_folders(p, mask_name)
    names = unique_names([d.name for d, _, _ in found])
    cases = []
    for (d, f, err), n in zip(found, names):
        if f is None and err is None:
            err = f"no {mask_name} in this folder or its segmentations/"
        cases.append(Case(n, f if f is not None else d / mask_name, display_name(d), err, d))
    if not any(c.error is None for c in cases):
        raise ValueError(f"{shown}: no case folder in it holds {mask_name} (in it or "
                         "in its segmentations/)")
    return cases


def _one_scans_organs(files, n=3):
    """Whether ``files`` look like one scan's masks, a file per organ: all on one
    grid (from the headers), and the first ``n`` with a foreground pairwise
    disjoint. Masks of different cases lie on different grids, or, registered
    to one, overlap. A file that cannot be read answers False (the batch
    reports it)."""
    from ..io import geometry_difference, read_geometry, read_label_map

    try:
        geoms = [read_geometry(f, True) for f in files]
    except (OSError, ValueError):
        return False
    if any(geometry_difference(g, geoms[0]) for g in geoms[1:]):
        return False
    seen = None
    found = 0
    for f in files:
        try:
            fg = read_label_map(f, True).array != 0
        except (OSError, ValueError):
            return False
        if not fg.any():
            continue
        if seen is not None and (seen & fg).any():
            return False
        seen = fg if seen is None else seen | fg
        found += 1
        if found == n:
            return True
    return False


def match_images(cases, folder, deidentify=False):
    """One image per mask case (``Path`` or None), found in ``folder`` by the
    mask's name (:func:`case_key`): ``masks/x.nii.gz`` takes
    ``folder/x.<any image suffix>``, nnU-Net's first channel
    ``folder/x_0000.<suffix>`` or a DICOM series folder ``folder/x/``.

    Raises ValueError when ``folder`` is not a folder, is the masks' own
    folder, when two entries could be one mask's image, or when no mask has
    one (the wrong folder); with ``deidentify`` the messages name no mask and
    no image."""
    f = Path(folder)
    if not f.is_dir():
        raise ValueError(f"--image {display_name(f)} is not a folder; with a folder of masks "
                         "it names a folder of images, one per mask, named like the masks")
    if cases and any(f.resolve() in (c.path.resolve().parent, (c.folder or c.path).resolve())
                     for c in cases):
        raise ValueError("--image names the masks' own folder; it names the folder of the "
                         "scans")
    by_stem = _files_by_stem(f)
    out = []
    for c in cases:
        key = case_key(c)
        found = by_stem.get(key, []) + by_stem.get(f"{key}_0000", [])
        if (f / key).is_dir() and not key.startswith(".") and \
                (c.folder is None or (f / key).resolve() != c.folder.resolve()):
            found.append(f / key)                  # a DICOM folder (not the case's own)
        if len(found) > 1:
            shown = ("a folder or the suffixes " + ", ".join(volume_suffix(x.name) for x in found)
                     if deidentify else ", ".join(display_name(x) for x in found))
            raise ValueError(f"--image: {len(found)} entries could be the image of {c.source}: "
                             + shown)
        out.append(found[0] if found else None)
    if cases and not any(out):
        key = "x" if deidentify else case_key(cases[0])
        where = "" if deidentify else f"for {cases[0].source} "
        raise ValueError(f"--image {display_name(f)} holds no image named like a mask ({where}"
                         f"it looked for {key}.nii.gz, {key}_0000.nii.gz (or another image "
                         f"suffix) and a DICOM folder {key}/)")
    return out


class Deidentifier:
    """Stable salted hashes in place of case names.

    The salt (a secret: with it, names could be guessed back) comes from
    ``$SHAPEPRIOR_DEID_SALT``, else from ``salt_file`` (default
    ``~/.config/shapeprior/deid-salt``, created once with mode 0600). The
    same salt and name always give the same ``case-xxxxxxxxxxxx``."""

    def __init__(self, salt_file=None):
        env = os.environ.get("SHAPEPRIOR_DEID_SALT")
        if env:
            self.salt = env.encode()
        else:
            f = Path(salt_file) if salt_file else \
                Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / \
                "shapeprior" / "deid-salt"
            self.salt = _read_or_create_salt(f)

    def name(self, case_source: Path) -> str:
        """The pseudonym of a case named after its file or folder (its last part)."""
        return self.token(Path(case_source).name)

    def token(self, text) -> str:
        """The pseudonym of a whole name (``case_00001/segmentation``: a label map
        named by its path below a folder, whose last part many cases share)."""
        key = os.fsencode(str(text))
        return "case-" + hmac.new(self.salt, key, hashlib.sha256).hexdigest()[:12]

    def apply(self, cases):
        """Cases with hashed names; sources withheld."""
        out = []
        for c in cases:
            err = c.error if c.error is None else scrub(c.error, c.path, "(withheld)")
            if err is not None and c.folder is not None:
                err = scrub(err, c.folder, "(withheld)")
            out.append(Case(self.name(c.folder or c.path), c.path, "(withheld)", err, c.folder))
        return out


def _read_or_create_salt(f: Path) -> bytes:
    try:
        return f.read_bytes().strip()
    except FileNotFoundError:
        pass
    f.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(32).encode()
    try:
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return f.read_bytes().strip()
    with os.fdopen(fd, "wb") as fh:
        fh.write(salt)
    return salt


def scrub(text: str, path, replacement: str) -> str:
    """``text`` with every form of ``path``'s name (full path, name, stem) replaced,
    and first those of the data files a detached header at ``path`` names (a name
    that may say whose scan it is, ``Doe_John_1957.raw``) by ``(withheld)``.

    A form is replaced where it stands as a name of its own, not inside a longer
    word: the stem of TotalSegmentator's ``ct.nii.gz`` leaves "expected" as it
    is. An underscore, a dot or a slash ends a word (``Doe_John_seg`` loses
    ``Doe_John``)."""
    for f in detached_data_files(path):
        text = _replace_forms(text, Path(f), "(withheld)")
    return _replace_forms(text, Path(path), replacement)


def scrub_paths(text: str, pairs) -> str:
    """``text`` through :func:`scrub` for each ``(path, replacement)`` of ``pairs``
    in turn; a None path is skipped."""
    for path, replacement in pairs:
        if path is not None:
            text = scrub(text, path, replacement)
    return text


def _replace_forms(text, p, replacement):
    forms = {str(p), display_name(p), p.name, _stem(p.name), str(p.resolve())}
    forms |= {os.fsencode(f).decode("utf-8", "backslashreplace") for f in list(forms)}
    for f in sorted((f for f in forms if len(f) >= 2), key=len, reverse=True):
        text = _standalone(f).sub(lambda _: replacement, text)
    return text


def _standalone(form):
    """A pattern of ``form`` not run on from a letter or digit at an end that is
    itself a letter or digit (a path's ``/`` needs no boundary before it)."""
    before = r"(?<![^\W_])" if form[0].isalnum() else ""
    after = r"(?![^\W_])" if form[-1].isalnum() else ""
    return re.compile(before + re.escape(form) + after)
