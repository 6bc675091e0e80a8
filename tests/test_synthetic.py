"""The synthetic data the tests and benchmarks stand on: what each generator
promises (leak patches, similarity transforms, planted combinations, the
phantom scans and their label maps)."""

from __future__ import annotations

import numpy as np
import pytest

from shapeprior.synthetic import (ShapePopulation, corrupt_patches, make_ssc_problem,
                                  random_similarity, vertex_normals_star)


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.3, 0.45])
@pytest.mark.parametrize("seed", range(3))
def test_leak_patches_corrupt_the_share_asked_along_the_normals(fraction, seed):
    """Exactly round(fraction N) vertices, each moved along its own normal by
    one amplitude of its patch, within the magnitude range; the others stay."""
    pts = ShapePopulation(n_points=642, seed=seed).sample(1)[0]
    normals = vertex_normals_star(pts)
    out, mask = corrupt_patches(pts, fraction, np.random.default_rng(seed),
                                magnitude=(10.0, 30.0), normals=normals)
    assert mask.sum() == round(fraction * len(pts))
    assert np.array_equal(out[~mask], pts[~mask])
    d = out[mask] - pts[mask]
    amp = np.einsum("ij,ij->i", d, normals[mask])
    assert np.allclose(d, amp[:, None] * normals[mask], atol=1e-9)     # along the normal
    assert np.all((np.abs(amp) >= 10.0 - 1e-9) & (np.abs(amp) <= 30.0 + 1e-9))


def test_random_similarity_is_a_rotation_never_a_reflection():
    rng = np.random.default_rng(0)
    for _ in range(200):
        R, s, t = random_similarity(rng)
        assert np.allclose(R.T @ R, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        assert 0.8 <= s <= 1.25 and np.all(np.abs(t) <= 50.0)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_a_planted_problem_is_a_convex_combination_of_its_atoms(k):
    """The planted shape lies in the atoms' hull (weights >= 0 summing to 1), so
    its scale is the atoms' scale, and ``clean`` is it under the recorded
    similarity."""
    p = make_ssc_problem(n_points=300, n_atoms=40, planted_sparsity=k, seed=k)
    assert np.count_nonzero(p.x_true) == k
    assert np.all(p.x_true >= 0) and p.x_true.sum() == pytest.approx(1.0)
    R, s, t = p.transform
    shape = np.tensordot(p.x_true, p.atoms, axes=1)
    assert np.allclose(p.clean, s * shape @ R.T + t)


def test_phantom_scans_lie_on_their_label_maps(tmp_path):
    """Each phantom image is bright where its label map is (same grid, exactly),
    and the leaking case's blob touches the organ."""
    from scipy import ndimage

    from shapeprior.io import read_label_map, read_volume
    from shapeprior.synthetic import write_phantom_cases

    images, labels = write_phantom_cases(tmp_path, n_cases=2, seed=5, with_leak=(1,))
    for i in range(2):
        img = read_volume(images / f"phantom_{i:03d}.nii.gz")
        lab = read_label_map(labels / f"phantom_{i:03d}.nii.gz")
        assert img.same_grid(lab) and np.allclose(img.origin, lab.origin, atol=1e-4)
        organ = lab.array > 0
        smooth = ndimage.gaussian_filter(img.array.astype(float), 1.0)
        bright = smooth > 140.0                      # halfway between 100 and 180
        # the bright region's organ part is the label: Dice >= 0.9 on the organ's box
        inside = bright & ndimage.binary_dilation(organ, iterations=2)
        assert 2 * (inside & organ).sum() / (inside.sum() + organ.sum()) >= 0.9
        blob = bright & ~ndimage.binary_dilation(organ, iterations=2)
        comp, n = ndimage.label(blob)
        sizes = np.bincount(comp.ravel())[1:]
        if i == 1:       # the leak: a 7 mm ball (about 1400 voxels) beside the organ
            assert n and sizes.max() > 300
            ball = comp == 1 + int(np.argmax(sizes))
            gap = ndimage.distance_transform_edt(~organ)[ball].min()      # voxels
            assert gap <= 3.5, gap                   # it touches the organ
        else:
            assert not n or sizes.max() < 50
