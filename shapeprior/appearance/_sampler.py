"""Image intensities along vertex normals: intensity scales and the sampler.

The sampler dispatches to the kernels of :mod:`shapeprior_kernels`
(``sample_normals_numpy`` / ``_numba`` / ``_cupy``) through
:func:`shapeprior.backend.kernel`.
"""

from __future__ import annotations

import numpy as np

from ..backend import kernel, to_numpy


#: a CT in Hounsfield units shows fat (-150 to -50 HU) or air (-1000 HU) in any field
#: of view that holds an organ and some of its surroundings: an image with less than
#: ``HU_MIN_SHARE`` of its voxels below ``HU_BELOW`` is not in HU (an MR, a CT stored
#: without its rescale slope and intercept, an image already normalised), and the CT
#: intensity model (or appearance learned on HU) does not apply to it. Measured
#: (share below -20 HU): the TotalSegmentator example CT, its crops, resamplings and
#: kidney-free slabs, and the DICOM slab of another subject 62-75 %
#: (bench/results/totalseg_ct.json); boxes cropped tight around its kidneys, liver
#: or spleen 33-52 %; the example MR 0.02 %, all 220 shared MSD hippocampus MR crops 0 %
HU_BELOW, HU_MIN_SHARE = -20.0, 0.005
#: and an image with at least this share is taken for a CT where it matters which
#: (a model whose appearance was learned on images that are not in HU): between the
#: two, nothing is concluded (an MR with some negative values, an image of noise: the
#: status bench's Gaussian noise of 40 hippocampus MRs' own mean and SD 0.04-1.9 %)
HU_CT_SHARE = 0.10
#: voxels read for that share at most (a regular subsample of a larger image)
HU_SAMPLE = 4_000_000


#: the image's minimum is padding, not anything scanned, when it lies below air in HU
#: (-1024 HU, the lowest a CT's rescale gives air) and at least ``PADDING_MIN_SHARE``
#: of the voxels hold it: a CT's corners outside its circular field of view (-2048,
#: -3024), or what a reformatting tool filled in (-32768). An MR crop padded with
#: -32768 had 55 % of its voxels "below -20 HU": taken for a CT, failed as the wrong
#: modality, and its percentiles were the padding's. (The TotalSegmentator example
#: CT's minimum, -1207, is one voxel: not padding.)
PADDING_BELOW, PADDING_MIN_SHARE = -1024.0, 0.001


def padding_value(a):
    """The value of ``a`` (an image array, or a subsample of one) that is
    padding (:data:`PADDING_BELOW`), or None."""
    if a.size == 0:
        return None
    lo = a.min()
    if float(lo) >= PADDING_BELOW:
        return None
    return lo if np.count_nonzero(a == lo) >= PADDING_MIN_SHARE * a.size else None


def unpadded(a):
    """The values of ``a`` without its padding (:func:`padding_value`), flat; ``a``
    itself where it has none, or nothing else: what its percentiles are taken of."""
    pad = padding_value(a)
    if pad is None:
        return a
    kept = a[a != pad]
    return kept if kept.size else a


def hounsfield_share(vol):
    """Share of the image's voxels below :data:`HU_BELOW` (a regular subsample of
    at most about :data:`HU_SAMPLE` voxels), padding (:func:`padding_value`)
    left out."""
    a = vol.array
    step = max(1, int(np.ceil((a.size / HU_SAMPLE) ** (1.0 / 3.0))))
    # one contiguous copy: each pass below then reads it in order (the strided
    # view made every pass walk whole rows: 7 against 17 ms on a 512 x 512 x
    # 300 CT, the same voxels)
    sub = np.ascontiguousarray(a[::step, ::step, ::step])
    pad = padding_value(sub)
    if pad is not None:
        sub = sub[sub != pad]
    return float(np.count_nonzero(sub < HU_BELOW)) / max(sub.size, 1)


def intensity_scale(vol, mode):
    """``(offset, scale)`` that map the image to a comparable intensity scale,
    ``(I - offset) / scale``.

    ``'percentile'``: offset p1, scale p99 - p1 (whole image, padding
    (:func:`padding_value`) left out), for MR; ``'ct'``: HU / 1000.
    """
    if mode == "ct":
        return 0.0, 1000.0
    if mode == "percentile":
        lo, hi = np.percentile(unpadded(vol.array), [1, 99])
        return float(lo), max(float(hi - lo), 1e-6)
    raise ValueError(f"intensity normalisation {mode!r} is not 'percentile' or 'ct'")


def normalise_intensity(vol, mode):
    """Float32 copy of the image in the scale of :func:`intensity_scale`."""
    off, sc = intensity_scale(vol, mode)
    return ((vol.array.astype(np.float32) - np.float32(off)) / np.float32(sc))


class NormalSampler:
    """Trilinear samples of one image along vertex normals, on a backend.

    Parameters
    ----------
    vol : Volume
        Grid (spacing, origin, direction) of ``image``.
    image : ndarray, shape (nz, ny, nx)
        Intensities on that grid (NumPy, or CuPy for the 'cupy' backend, which
        keeps the image on the GPU between calls).
    backend : {'numpy', 'numba', 'cupy'}
        Resolved backend name (see :func:`shapeprior.backend.resolve_backend`):
        scipy's ``map_coordinates``, the Numba kernel or the CUDA kernel of
        :mod:`shapeprior_kernels.normal_sampling`; all give the same values.
    """

    def __init__(self, vol, image, backend="numpy"):
        self.A = np.linalg.inv(vol.index_to_physical_matrix)
        self.origin = np.asarray(vol.origin, dtype=np.float64)
        self.image = image
        self.backend = backend
        self._fn = kernel("sample_normals", backend)

    def __call__(self, verts, normals, offsets):
        """Samples at ``verts + offsets[m] * normals``: (N, M) float64 on the host.
        ``offsets`` may be any shape (M = its size)."""
        return to_numpy(self._fn(self.image, verts, normals, np.ravel(offsets), self.A,
                                 self.origin))
