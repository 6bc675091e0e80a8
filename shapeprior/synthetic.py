"""Synthetic shape populations in correspondence, for tests, benchmarks and the
zero-setup demo. Everything is generated from a seed; nothing is downloaded.

Shapes are star-shaped closed surfaces sampled at the same N directions
(Fibonacci sphere), with radius ``R(u) = (a, b, c) * u * (1 + smooth(u))``
where ``smooth`` is a random low-degree polynomial on the sphere -- organ-like
blobs of roughly kidney size (mm) by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations_with_replacement

import numpy as np


def fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors, shape (n, 3)."""
    if n < 4:
        raise ValueError(f"n={n} must be >= 4")
    i = np.arange(n) + 0.5
    phi = np.arccos(1.0 - 2.0 * i / n)
    theta = np.pi * (1.0 + 5.0 ** 0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)


def _monomials(u, degree):
    cols = []
    for deg in range(1, degree + 1):
        for idx in combinations_with_replacement(range(3), deg):
            cols.append(np.prod(u[:, list(idx)], axis=1))
    return np.stack(cols, 1)


@dataclass
class ShapePopulation:
    """A random family of smooth closed shapes sharing N corresponding points.

    Parameters
    ----------
    n_points : int
    axes : tuple of float
        Semi-axes of the mean ellipsoid in mm.
    degree : int
        Degree of the smooth radial perturbation.
    variability : float
        Relative amplitude of the perturbation.
    seed : int
    """

    n_points: int = 1000
    axes: tuple = (55.0, 30.0, 25.0)
    degree: int = 3
    variability: float = 0.12
    seed: int = 0

    def __post_init__(self):
        self.directions = fibonacci_sphere(self.n_points)
        self._basis = _monomials(self.directions, self.degree)
        self._basis -= self._basis.mean(0)
        self._basis /= np.linalg.norm(self._basis, axis=0) / np.sqrt(self.n_points)
        self._rng = np.random.default_rng(self.seed)

    def sample(self, n_shapes: int, rng=None) -> np.ndarray:
        """``n_shapes`` shapes, shape (n_shapes, N, 3), in mm, centred."""
        rng = self._rng if rng is None else rng
        nb = self._basis.shape[1]
        coef = rng.normal(scale=self.variability / np.sqrt(nb), size=(n_shapes, nb))
        # a few global modes (axis lengths) for realistic correlation
        ax = np.asarray(self.axes) * (1.0 + 0.1 * rng.normal(size=(n_shapes, 3)))
        rad = 1.0 + coef @ self._basis.T                      # (S, N)
        pts = self.directions[None] * rad[..., None] * ax[:, None, :]
        return pts - pts.mean(axis=1, keepdims=True)


def random_similarity(rng, ndim=3, scale_range=(0.8, 1.25), shift=50.0):
    """A random rotation, scale and translation ``(R, s, t)``."""
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    s = float(rng.uniform(*scale_range))
    t = rng.uniform(-shift, shift, size=ndim)
    return q, s, t


def vertex_normals_star(points: np.ndarray) -> np.ndarray:
    """Outward unit normals approximated by the radial direction (star shapes)."""
    c = points - points.mean(0)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def corrupt_patches(points, fraction, rng, magnitude=(10.0, 30.0), n_patches=None,
                    normals=None):
    """Displace contiguous patches of vertices along their normals (a leak).

    Parameters
    ----------
    points : ndarray, shape (N, 3)
    fraction : float
        Fraction of vertices to corrupt, in [0, 1).
    magnitude : (float, float)
        Displacement range in the points' units (mm).
    n_patches : int, optional
        Number of contiguous patches (default: 1 per 10% corrupted, >= 1).

    Returns
    -------
    corrupted : ndarray, shape (N, 3)
    mask : ndarray of bool, shape (N,)
    """
    pts = np.array(points, dtype=float)
    N = len(pts)
    n_bad = int(round(fraction * N))
    mask = np.zeros(N, dtype=bool)
    if n_bad == 0:
        return pts, mask
    if normals is None:
        normals = vertex_normals_star(pts)
    if n_patches is None:
        n_patches = max(1, int(round(fraction / 0.1)))
    per = np.full(n_patches, n_bad // n_patches)
    per[: n_bad % n_patches] += 1
    for k in range(n_patches):
        free = np.flatnonzero(~mask)
        centre = pts[rng.choice(free)]
        d = np.linalg.norm(pts - centre, axis=1)
        d[mask] = np.inf
        idx = np.argsort(d)[: per[k]]
        amp = rng.uniform(*magnitude) * rng.choice([-1.0, 1.0])
        # the whole patch moves by one amplitude within `magnitude`
        pts[idx] += amp * normals[idx]
        mask[idx] = True
    return pts, mask


@dataclass
class SSCProblem:
    """A planted SSC instance; see :func:`make_ssc_problem`."""

    atoms: np.ndarray       # (K, N, 3) aligned training shapes
    clean: np.ndarray       # (N, 3) true shape in the observed frame
    observed: np.ndarray    # (N, 3) noisy, corrupted, transformed
    gross: np.ndarray       # (N,) bool, planted gross-error vertices
    x_true: np.ndarray | None
    transform: tuple        # (R, s, t): observed = s * model @ R.T + t


def make_ssc_problem(n_points=1000, n_atoms=100, gross_fraction=0.1, noise=0.3,
                     planted_sparsity=None, transform=True, seed=0,
                     magnitude=(10.0, 30.0)):
    """A realistic SSC test problem.

    The dictionary holds ``n_atoms`` GPA-aligned random shapes. The observed
    shape is either a planted sparse combination of atoms
    (``planted_sparsity=k``) or a fresh shape of the same population, then
    transformed by a random similarity, perturbed by Gaussian noise (sd
    ``noise`` mm) and corrupted in contiguous patches.
    """
    from .align import generalized_procrustes

    rng = np.random.default_rng(seed)
    pop = ShapePopulation(n_points=n_points, seed=seed)
    train = pop.sample(n_atoms)
    gpa = generalized_procrustes(train, max_iter=20, tol=1e-8)
    atoms = gpa.aligned
    if planted_sparsity:
        idx = rng.choice(n_atoms, planted_sparsity, replace=False)
        x = np.zeros(n_atoms)
        x[idx] = rng.dirichlet(np.ones(planted_sparsity))
        model_shape = np.tensordot(x, atoms, axes=1)
    else:
        x = None
        model_shape = pop.sample(1, rng)[0]
    if transform:
        R, s, t = random_similarity(rng)
    else:
        R, s, t = np.eye(3), 1.0, np.zeros(3)
    clean = s * model_shape @ R.T + t
    noisy = clean + rng.normal(scale=noise, size=clean.shape)
    observed, gross = corrupt_patches(noisy, gross_fraction, rng, magnitude=magnitude,
                                      normals=vertex_normals_star(clean))
    return SSCProblem(atoms, clean, observed, gross, x, (R, s, t))


def star_mesh_faces(directions):
    """Triangles of a star-shaped surface sampled at unit ``directions``
    (their convex hull), oriented outward."""
    from scipy.spatial import ConvexHull

    f = ConvexHull(directions).simplices.astype(np.int64)
    a, b, c = directions[f[:, 0]], directions[f[:, 1]], directions[f[:, 2]]
    flip = np.einsum("ij,ij->i", np.cross(b - a, c - a), a + b + c) < 0
    f[flip] = f[flip][:, ::-1]
    return f


def write_phantom_cases(folder, n_cases=12, seed=0, with_leak=()):
    """Write synthetic MR-like image/label pairs (NIfTI) for the demo.

    Each case: a smooth organ-like blob (about 36 x 22 x 18 mm) from a
    seeded :class:`ShapePopulation`, in a slightly oblique 1 x 1 x 1.5 mm
    grid, bright on a darker background with a smooth bias field, noise and
    blur. Cases whose index is in ``with_leak`` also get an adjacent bright
    blob touching the organ (a leak for the appearance search).

    Returns ``(images_dir, labels_dir)``.
    """
    from pathlib import Path

    from scipy import ndimage

    from .io import Volume
    from .io import write_label
    from .segmentation import voxelize

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pop = ShapePopulation(n_points=642, axes=(18.0, 11.0, 9.0), degree=3, variability=0.1,
                          seed=seed)
    faces = star_mesh_faces(pop.directions)
    a = np.deg2rad(10.0)
    direction = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    spacing = np.array([1.0, 1.0, 1.5])
    shape_xyz = np.array([64, 56, 40])
    for i in range(n_cases):
        origin = rng.uniform(-20, 20, 3) + np.array([-30.0, -25.0, -30.0])
        grid = Volume(np.zeros(shape_xyz[::-1], np.float32), spacing, origin, direction)
        centre = grid.centre()
        ang = rng.uniform(-0.15, 0.15, 3)       # small rotations only (shared orientation)
        R = _small_rotation(ang)
        verts = pop.sample(1, rng)[0] @ R.T + centre + rng.uniform(-3, 3, 3)
        label = voxelize(verts, faces, grid)
        img = 100.0 + 80.0 * label.astype(np.float32)
        if i in with_leak:
            n = verts[np.argmax(verts[:, 0] - verts[:, 0].mean())]
            blob = Volume(np.zeros_like(label), spacing, origin, direction)
            idx = np.argwhere(np.ones_like(label, bool))
            pts = grid.index_to_physical(idx[:, ::-1].astype(float))
            inside = np.linalg.norm(pts - (n + np.array([5.0, 0, 0])), axis=1) < 7.0
            blob.array.reshape(-1)[inside] = 1
            img = np.maximum(img, 100.0 + 80.0 * blob.array)
        zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in label.shape], indexing="ij")
        img = img * (1.0 + 0.08 * xx + 0.05 * zz)
        img = ndimage.gaussian_filter(img, 1.0) + rng.normal(0, 12.0, img.shape)
        vol = Volume(img.astype(np.float32), spacing, origin, direction)
        import SimpleITK as sitk

        sitk.WriteImage(vol.to_sitk(), str(folder / "images" / f"phantom_{i:03d}.nii.gz"))
        write_label(grid, label, folder / "labels" / f"phantom_{i:03d}.nii.gz")
    return folder / "images", folder / "labels"


def _small_rotation(angles):
    rx, ry, rz = angles
    Rx = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    Ry = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    Rz = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    return Rz @ Ry @ Rx
