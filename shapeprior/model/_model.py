"""The shape model: aligned training shapes, mean, PCA, optional learned
dictionary, metadata; a versioned, pickle-free file format."""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._validation import shape_problem
from ..align import procrustes
from ..appearance import ProfileModel, VoxelClassifier
from ..io import available_memory, input_path_error
from ._dictlearn import is_centred
from ._pose import PosePrior

FORMAT = "shapeprior-shape-model"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
#: prior 'auto' composes from the learned dictionary (when there is one) from this
#: many training shapes on. Measured (bench/results/online_*.json, held-out shapes,
#: mean error ratio over clean / 30 % displaced / 50 % missing): 1,150 adrenal shapes,
#: 64 raw-shape atoms (the default kind): 0.99 (1.20 / 0.69 / 1.08) at 6-47x the speed;
#: 96 deviation atoms: 1.06 (1.01 / 1.09 / 1.09); 280 kidneys, 128 atoms: 1.02
#: (1.03 / 0.99 / 1.03) at about 2x. Below this size the shapes stay the default.
#: Those ratios are plain L1 against plain L1; with each prior's default
#: reconstruction method (bench/results/online_methods.json) the 96 adrenal atoms
#: are at 2.1 / 1.5 / 1.1 the error of the 1,150 shapes for 100-200x the speed.
DICTIONARY_MIN_SHAPES = 1000
PRIORS = ("auto", "shapes", "dictionary")


class ModelFormatError(ValueError):
    """The file is not a shapeprior model, or of an unsupported version."""


@dataclass
class ShapeModel:
    """Point-distribution model in correspondence.

    Attributes
    ----------
    shapes : ndarray, shape (M, N, 3)
        GPA-aligned training shapes (model frame, mm): the SSC dictionary.
    mean : ndarray, shape (N, 3)
    faces : ndarray, shape (F, 3)
        Triangles shared by all shapes.
    pca_components : ndarray, shape (r, 3N)
        Orthonormal modes of variation.
    pca_variances : ndarray, shape (r,)
        mm^2.
    atoms : ndarray, shape (k, N, 3) or None
        Learned (K-SVD / online) dictionary, if any.
    metadata : dict
        organ, side, n_vertices, sources (name + sha256), parameters,
        versions, per-shape fit quality, rejected shapes.
    profile : ProfileModel or None
        Boundary appearance (normalised intensity profiles along the
        normals), when the model was built with training images.
    pose : PosePrior or None
        Where the organ sits in a training scan (initial placement).
    dictionary_state : dict or None
        The online dictionary learner's running statistics ``A`` (k, k) =
        sum of x x^T, ``B`` (3N, k) = sum of y x^T and ``S`` (k,) = sum of x
        (None in models written before it was kept) over the coded shapes,
        with which :func:`update_model` updates ``atoms`` without
        revisiting the old shapes.
    voxels : VoxelClassifier or None
        Decides the voxels next to a fitted surface from their appearance
        (learned with the boundary appearance from training images).
    """

    shapes: np.ndarray
    mean: np.ndarray
    faces: np.ndarray
    pca_components: np.ndarray
    pca_variances: np.ndarray
    atoms: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)
    profile: ProfileModel | None = None
    pose: PosePrior | None = None
    dictionary_state: dict | None = None
    voxels: VoxelClassifier | None = None

    def __repr__(self):
        """One line: what the model is, never its arrays or metadata (an interactive
        session would print thousands of lines)."""
        m = self.metadata if isinstance(self.metadata, dict) else {}
        lin = m.get("lineage")
        version = lin.get("model_version", 1) if isinstance(lin, dict) else 1
        atoms = "none" if self.atoms is None else str(int(np.shape(self.atoms)[0]))
        return (f"ShapeModel(organ={m.get('organ', '?')!r}, side={m.get('side', '?')!r}, "
                f"shapes={self.n_shapes}, vertices={self.n_vertices}, "
                f"pca_modes={len(self.pca_variances)}, atoms={atoms}, "
                f"appearance={'yes' if self.profile is not None else 'no'}, "
                f"voxel_classifier={'yes' if self.voxels is not None else 'no'}, "
                f"pose_prior={'yes' if self.pose is not None else 'no'}, version={version})")

    @property
    def n_shapes(self) -> int:
        return self.shapes.shape[0]

    @property
    def n_vertices(self) -> int:
        return self.mean.shape[0]

    @property
    def profile_mean(self):
        """``profile.mean`` (N, L), or None without appearance."""
        return None if self.profile is None else self.profile.mean

    @property
    def profile_var(self):
        """``profile.var`` (N, L), or None without appearance."""
        return None if self.profile is None else self.profile.var

    def to_file_parts(self):
        """``(arrays, metadata)`` as a model file stores them (see :func:`save_model`)."""
        meta = dict(self.metadata)
        meta["format"] = FORMAT
        meta["format_version"] = FORMAT_VERSION
        meta["pose_prior"] = None if self.pose is None else self.pose.to_dict()
        meta["appearance"] = None if self.profile is None else self.profile.to_meta()
        meta["voxel_classifier"] = None if self.voxels is None else self.voxels.to_meta()
        arrays = {
            "shapes": np.asarray(self.shapes, dtype=np.float64),
            "mean": np.asarray(self.mean, dtype=np.float64),
            "faces": np.asarray(self.faces, dtype=np.int64),
            "pca_components": np.asarray(self.pca_components, dtype=np.float64),
            "pca_variances": np.asarray(self.pca_variances, dtype=np.float64),
        }
        if self.atoms is not None:
            arrays["atoms"] = np.asarray(self.atoms, dtype=np.float64)
            if self.dictionary_state is not None:
                arrays["dictionary_A"] = np.asarray(self.dictionary_state["A"], dtype=np.float64)
                arrays["dictionary_B"] = np.asarray(self.dictionary_state["B"], dtype=np.float64)
                if self.dictionary_state.get("S") is not None:
                    arrays["dictionary_S"] = np.asarray(self.dictionary_state["S"],
                                                        dtype=np.float64)
        if self.profile is not None:
            arrays.update({k: np.asarray(v, dtype=np.float64)
                           for k, v in self.profile.to_arrays().items()})
        if self.voxels is not None:
            arrays.update(self.voxels.to_arrays())
        return arrays, meta

    @classmethod
    def from_file_parts(cls, arrays, meta):
        """Inverse of :meth:`to_file_parts`; the typed parts leave ``metadata``."""
        meta = dict(meta)
        pose = meta.pop("pose_prior", None)
        app = meta.pop("appearance", None)
        vox = meta.pop("voxel_classifier", None)
        voxels = None if vox is None else VoxelClassifier.from_parts(arrays, vox)
        profile = None
        if arrays.get("profile_mean") is not None:
            profile = ProfileModel.from_arrays(arrays, app)
        state = None
        if arrays.get("dictionary_A") is not None:
            state = {"A": arrays["dictionary_A"], "B": arrays["dictionary_B"],
                     "S": arrays.get("dictionary_S")}
        return cls(arrays["shapes"], arrays["mean"], arrays["faces"], arrays["pca_components"],
                   arrays["pca_variances"], arrays.get("atoms"), meta, profile,
                   None if pose is None else PosePrior.from_dict(pose), state, voxels)

    def ssc_dictionary(self, which="shapes", backend=None):
        """:class:`~shapeprior.ssc.ShapeDictionary` from the training shapes
        (``'shapes'``) or the learned atoms (``'atoms'``)."""
        from ..ssc import ShapeDictionary

        if which == "shapes":
            return ShapeDictionary(self.shapes, self.mean, backend=backend)
        if which == "atoms":
            if self.atoms is None:
                raise ValueError("this model has no learned dictionary (build with --atoms)")
            return ShapeDictionary(self.atoms, self.mean, backend=backend)
        raise ValueError(f"which={which!r} is not 'shapes' or 'atoms'")

    def resolve_prior(self, prior="auto") -> str:
        """``'shapes'`` or ``'dictionary'``: what SSC composes from for ``prior``.

        'auto' is the dictionary when the model has learned atoms and at least
        ``DICTIONARY_MIN_SHAPES`` training shapes, else the shapes."""
        if prior not in PRIORS:
            raise ValueError(f"prior={prior!r} is invalid: expected one of {list(PRIORS)}")
        if prior == "auto":
            return ("dictionary" if self.atoms is not None
                    and self.n_shapes >= DICTIONARY_MIN_SHAPES else "shapes")
        if prior == "dictionary" and self.atoms is None:
            raise ValueError("prior='dictionary': this model has no learned dictionary "
                             "(build it with --atoms)")
        return prior

    def prior_dictionary(self, prior="auto", backend=None):
        """The :class:`~shapeprior.ssc.ShapeDictionary` SSC composes from for
        ``prior`` (see :meth:`resolve_prior`)."""
        which = self.resolve_prior(prior)
        return self.ssc_dictionary("shapes" if which == "shapes" else "atoms", backend)

    def save(self, path):
        save_model(self, path)


def pca_from_shapes(shapes, var_kept=0.98):
    """Mean and principal modes of aligned shapes (M, N, 3)."""
    M = shapes.shape[0]
    X = shapes.reshape(M, -1)
    mean = X.mean(0)
    _, s, vt = np.linalg.svd(X - mean, full_matrices=False)
    var = s ** 2 / max(M - 1, 1)
    keep = int(np.searchsorted(np.cumsum(var) / max(var.sum(), 1e-300), var_kept) + 1)
    keep = max(1, min(keep, len(var)))
    return mean.reshape(shapes.shape[1:]), vt[:keep], var[:keep]


def total_variance(shapes) -> float:
    """Summed variance of aligned shapes (M, N, 3) over all 3N coordinates, mm^2
    (the denominator of the variance PCA keeps)."""
    X = np.asarray(shapes, dtype=float).reshape(len(shapes), -1)
    return float(np.sum((X - X.mean(0)) ** 2) / max(len(X) - 1, 1))


def pca_reconstruct(model: ShapeModel, shape, weights=None, clamp=3.0, n_align=10):
    """ASM-style projection: similarity-align, weighted least-squares mode
    coefficients clamped to +-clamp standard deviations, in y's frame."""
    y = np.asarray(shape, dtype=float)
    s = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)
    w = np.repeat(s * s, 3)
    P = model.pca_components
    mu = model.mean.ravel()
    sd = np.sqrt(model.pca_variances)
    recon = model.mean
    for _ in range(n_align):
        T = procrustes(y, recon, s * s)
        z = T.apply(y).ravel()
        A = P.T * np.sqrt(w)[:, None]
        b, *_ = np.linalg.lstsq(A, (z - mu) * np.sqrt(w), rcond=None)
        b = np.clip(b, -clamp * sd, clamp * sd)
        new = (mu + b @ P).reshape(-1, 3)
        if np.allclose(new, recon, atol=1e-6):
            recon = new
            break
        recon = new
    T = procrustes(y, recon, s * s)
    return T.inverse().apply(recon)


def save_model(model: ShapeModel, path):
    """Write ``model`` as a compressed NPZ (no pickle) with JSON metadata,
    atomically (temporary file + rename)."""
    p = Path(path)
    arrays, meta = model.to_file_parts()
    arrays["metadata_json"] = np.array(json.dumps(meta, default=str))
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, p)


def _name(p) -> str:
    return os.fsencode(Path(p).name).decode("utf-8", "backslashreplace")


def _open_npz(p: Path):
    """The model's NPZ archive; refuses non-zip files and sizes memory cannot hold."""
    name = _name(p)
    if not zipfile.is_zipfile(p):
        with open(p, "rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04":         # a zip's first member, and no directory at its end
            raise ModelFormatError(f"{name} is a truncated model file (an .npz archive "
                                   "without its end: an interrupted copy or download?)")
        raise ModelFormatError(f"{name} is not a shapeprior model file (not an .npz archive)")
    try:
        with zipfile.ZipFile(p) as zf:
            total = sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ModelFormatError(f"{name} is a corrupt model file ({exc})") from None
    if total > available_memory():
        raise ModelFormatError(f"{name}: its arrays claim {total / 2**30:.1f} GiB, more than "
                               "the memory available; corrupt model file?")
    try:
        z = np.load(p, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any corruption is one line
        raise ModelFormatError(f"{name} is a corrupt model file ({type(exc).__name__})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ModelFormatError(f"{name} is not a shapeprior model file (a single array)")
    return z


#: an array other than the shapes may declare at most the shapes' bytes plus this
#: many (the PCA modes, the dictionary and its statistics are at most as large as
#: the repository; the appearance and the voxel classifier are a few MB)
_SLACK_BYTES = 64 << 20


def _declared(z, key):
    """``(shape, bytes)`` that member ``key`` of the archive declares in its .npy
    header, read without its data; None when the header cannot be read."""
    try:
        with z.zip.open(key + ".npy") as f:
            fmt = np.lib.format
            read = {(1, 0): fmt.read_array_header_1_0,
                    (2, 0): fmt.read_array_header_2_0}.get(fmt.read_magic(f))
            if read is None:
                return None
            shape, _, dtype = read(f)
        return tuple(shape), int(np.prod(shape, dtype=object)) * int(dtype.itemsize)
    except Exception:  # noqa: BLE001 - judged when the array is read
        return None


def _check_declared(z, meta, name):
    """Refuse, before any array is inflated, a file whose shapes array declares
    another size than its metadata (``n_shapes`` x ``n_vertices`` x 3) or whose
    other arrays declare more than the shapes do: a small file can inflate to
    gigabytes (a 9 MB file declaring 8 GB of shapes was read for 33 s and 9 GB
    before the shapes were found degenerate)."""
    got = _declared(z, "shapes")
    if got is None:
        return
    shape, nbytes = got
    n, v = meta.get("n_shapes"), meta.get("n_vertices")
    if isinstance(n, int) and isinstance(v, int) and shape != (n, v, 3):
        raise ModelFormatError(f"{name}: its shapes array declares {shape}, its metadata "
                               f"{n} shapes of {v} vertices; corrupt model file?")
    for key in z.files:
        other = _declared(z, key) if key != "shapes" else None
        if other is not None and other[1] > nbytes + _SLACK_BYTES:
            raise ModelFormatError(f"{name}: model array {key!r} declares "
                                   f"{other[1] / 2**20:.0f} MiB, more than the shapes "
                                   f"({nbytes / 2**20:.0f} MiB); corrupt model file?")


def _metadata(z, name) -> dict:
    if "metadata_json" not in z.files:
        raise ModelFormatError(f"{name} is not a shapeprior model file (no metadata)")
    try:
        raw = z["metadata_json"]
    except Exception as exc:  # noqa: BLE001 - bad CRC, truncated member, pickled object
        raise ModelFormatError(f"{name}: model metadata is corrupt "
                               f"({type(exc).__name__})") from None
    if raw.shape != () or raw.dtype.kind != "U":
        raise ModelFormatError(f"{name}: model metadata is not a JSON text")
    try:
        meta = json.loads(str(raw))
    except ValueError:
        raise ModelFormatError(f"{name}: model metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise ModelFormatError(f"{name}: model metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise ModelFormatError(f"{name} is not a shapeprior model file "
                               f"(format {meta.get('format')!r})")
    ver = meta.get("format_version")
    if ver not in SUPPORTED_VERSIONS:
        raise ModelFormatError(
            f"{name} has model format version {ver!r}; this shapeprior reads "
            f"versions {list(SUPPORTED_VERSIONS)} (upgrade shapeprior or rebuild the model)")
    return meta


def read_model_metadata(path) -> dict:
    """The metadata of a model file, checked for format and version only."""
    p = Path(path)
    z = _open_npz(p)
    with z:
        try:
            return _metadata(z, _name(p))
        except ModelFormatError:
            raise
        except Exception as exc:  # noqa: BLE001 - corrupt member
            raise ModelFormatError(f"{_name(p)} is a corrupt model file "
                                   f"({type(exc).__name__})") from None


def _array(z, key, name, kind="f", ndim=None):
    try:
        a = z[key]
    except Exception as exc:  # noqa: BLE001 - bad CRC, truncated member, pickled object
        raise ModelFormatError(f"{name}: model array {key!r} is corrupt "
                               f"({type(exc).__name__})") from None
    if a.dtype.kind not in (("f",) if kind == "f" else ("i", "u")):
        raise ModelFormatError(f"{name}: model array {key!r} has dtype {a.dtype}, "
                               f"expected {'floating point' if kind == 'f' else 'integer'}")
    if ndim is not None and a.ndim != ndim:
        raise ModelFormatError(f"{name}: model array {key!r} has {a.ndim} dimensions, "
                               f"expected {ndim}")
    if kind == "f" and not np.all(np.isfinite(a)):
        raise ModelFormatError(f"{name}: model array {key!r} holds NaN or infinite values")
    return a


def _check_meta_types(meta, name):
    for key in ("organ", "side"):
        if key in meta and not isinstance(meta[key], str):
            raise ModelFormatError(f"{name}: model metadata {key!r} is not a text")
    pose = meta.get("pose_prior")
    if pose is not None:
        try:
            PosePrior.from_dict(pose)
        except ValueError:
            raise ModelFormatError(f"{name}: model metadata 'pose_prior' is malformed") from None
    dl = meta.get("dictionary_learning")
    if dl is not None:
        try:
            ok = isinstance(dl, dict) and (dl.get("centre") is None or (
                is_centred(dl) and np.isfinite(float(dl["centre_norm"]))
                and float(dl["centre_norm"]) > 0))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ModelFormatError(f"{name}: model metadata 'dictionary_learning' is malformed")
    app = meta.get("appearance")
    if app is not None:
        try:
            ok = float(app["step_mm"]) > 0 and int(app["half"]) >= 1 \
                and app["normalisation"] in ("percentile", "ct")
            bg = app.get("image_background_share_max")
            ok = ok and (bg is None or 0.0 <= float(bg) <= 1.0)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ModelFormatError(f"{name}: model metadata 'appearance' is malformed")


def load_model(path) -> ShapeModel:
    """Read a model file written by :func:`save_model`, checking its schema.

    Every array is checked for dtype, shape, finite values and index range,
    and the metadata for its types, so a damaged file is refused in one
    line instead of failing somewhere downstream.

    Raises
    ------
    FileNotFoundError
        No such file.
    ModelFormatError
        Not an NPZ, not a shapeprior model, an unsupported version, a
        corrupt member, or arrays/metadata that break the schema.
    """
    p = Path(path)
    name = _name(p)
    if p.is_dir():
        raise IsADirectoryError(f"{name} is a folder; a model file (.npz from build-model) "
                                "is expected here")
    if not p.is_file():
        if p.exists():      # a named pipe, socket or device: never opened
            raise input_path_error(p, name, "a model file (.npz from build-model)")
        raise FileNotFoundError(f"no such model file: {name}")
    z = _open_npz(p)
    with z:
        meta = _metadata(z, name)
        need = ("shapes", "mean", "faces", "pca_components", "pca_variances")
        missing = [k for k in need if k not in z.files]
        if missing:
            raise ModelFormatError(f"{name} lacks arrays {missing}")
        _check_declared(z, meta, name)
        shapes = _array(z, "shapes", name, ndim=3)
        mean = _array(z, "mean", name, ndim=2)
        faces = _array(z, "faces", name, kind="i", ndim=2)
        comps = _array(z, "pca_components", name, ndim=2)
        var = _array(z, "pca_variances", name, ndim=1)
        dims = {"atoms": 3, "dictionary_S": 1}
        opt = {k: (_array(z, k, name, ndim=dims.get(k, 2)) if k in z.files else None)
               for k in ("atoms", "profile_mean", "profile_var", "dictionary_A",
                         "dictionary_B", "dictionary_S")}
        vox = {f"voxel_{k}": _array(z, f"voxel_{k}", name, kind=kind, ndim=1)
               for k, kind in (("feature", "i"), ("threshold", "f"), ("left", "i"),
                               ("right", "i"), ("value", "f"), ("roots", "i"))
               if f"voxel_{k}" in z.files}
    _check_meta_types(meta, name)
    N = mean.shape[0]
    bad = []
    if N < 4 or mean.shape[1] != 3:
        bad.append(f"mean {mean.shape}")
    if shapes.shape[0] < 1 or shapes.shape[1:] != (N, 3):
        bad.append(f"shapes {shapes.shape}")
    if faces.shape[0] < 1 or faces.shape[1] != 3:
        bad.append(f"faces {faces.shape}")
    if comps.shape[0] < 1 or comps.shape[1] != 3 * N or var.shape != (comps.shape[0],):
        bad.append(f"pca {comps.shape}/{var.shape}")
    if opt["atoms"] is not None and opt["atoms"].shape[1:] != (N, 3):
        bad.append(f"atoms {opt['atoms'].shape}")
    dA, dB = opt["dictionary_A"], opt["dictionary_B"]
    # the statistics cover the learned atoms: all, or all but the mean of a centred one
    learned = None if opt["atoms"] is None else opt["atoms"].shape[0] - (
        1 if is_centred(meta.get("dictionary_learning")) else 0)
    if (dA is None) != (dB is None) or (dA is not None and (
            opt["atoms"] is None or dA.shape != (learned,) * 2
            or dB.shape != (3 * N, learned))) or (opt["dictionary_S"] is not None and (
            dA is None or opt["dictionary_S"].shape != (learned,))):
        bad.append("dictionary state")
    pm, pv = opt["profile_mean"], opt["profile_var"]
    if (pm is None) != (pv is None) or (pm is not None and (
            pm.shape[0] != N or pm.shape != pv.shape or pm.shape[1] < 1)):
        bad.append("appearance profiles")
    if bad:
        raise ModelFormatError(f"{name}: arrays have inconsistent shapes ({', '.join(bad)})")
    if faces.min() < 0 or faces.max() >= N:
        raise ModelFormatError(f"{name}: face indices outside 0..{N - 1}")
    if np.any(var < 0):
        raise ModelFormatError(f"{name}: negative PCA variances")
    for what, y in (("the mean shape", mean), *((f"training shape {k}", s)
                                                for k, s in enumerate(shapes))):
        why = shape_problem(y)
        if why is not None:
            raise ModelFormatError(f"{name}: {what} {why}")
    if pv is not None and np.any(pv <= 0):
        raise ModelFormatError(f"{name}: appearance variances must be > 0")
    if pm is not None and not isinstance(meta.get("appearance"), dict):
        raise ModelFormatError(f"{name}: appearance arrays without their metadata")
    if (meta.get("voxel_classifier") is not None) != bool(vox) or (vox and len(vox) != 6):
        raise ModelFormatError(f"{name}: voxel classifier arrays and metadata do not match")
    try:
        return ShapeModel.from_file_parts(
            {"shapes": shapes, "mean": mean, "faces": faces.astype(np.int64),
             "pca_components": comps, "pca_variances": var, **opt, **vox}, meta)
    except ValueError as exc:       # the voxel classifier's own checks
        raise ModelFormatError(f"{name}: {exc}") from None
