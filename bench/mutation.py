"""Mutation testing of the core: does the test suite catch plausible bugs?

Each mutant is a one-line change of the kind a developer makes by mistake
(a wrong axis, a dropped weight, an off-by-half index, a flipped sign).
For each one the source tree is copied, the mutant applied, and the tests
that cover the module run against the copy (``PYTHONPATH`` puts the copy
first, subprocesses included). A mutant is *killed* when those tests fail
(or time out), and *survives* when they pass. Survivors must be killed by a
new test or explained as equivalent in ``EQUIVALENT``.

    python bench/mutation.py                  # all mutants, JSON in bench/results
    python bench/mutation.py --only align     # one module's mutants
    python bench/mutation.py --only seg-dice,mesh-kidney-side   # some mutants
    python bench/mutation.py --jobs 2

Every mutant's original text must occur exactly once in its file; a mutant
whose text moved or repeats is *invalid* and fails the run (exit 1), and
``tests/test_mutation_anchors.py`` checks this in CI.

Runs outside CI (about 95 CPU-minutes: 45 minutes with two jobs on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import RESULTS, machine, write_json

REPO = Path(__file__).resolve().parents[1]

#: tests that cover each module (run with -x; the slow real-data tests are left out)
TESTS = {
    "align": ["tests/test_align.py", "tests/test_align_properties.py", "tests/test_ssc_weights.py"],
    "ssc": ["tests/test_ssc_weights.py", "tests/test_ssc.py"],
    "io": ["tests/test_io.py", "tests/test_reader_corpus.py", "tests/test_hostile.py",
           "tests/test_segment.py"],
    "segment": ["tests/test_fit.py", "tests/test_segment.py", "tests/test_io.py"],
    "mesh": ["tests/test_mesh.py", "tests/test_model.py", "tests/test_fit.py"],
    "model": ["tests/test_model.py", "tests/test_fit.py"],
    "kernels": ["tests/test_kernels.py", "tests/test_segment.py"],
    "pipeline": ["tests/test_hostile.py", "tests/test_segment.py"],
    "appearance": ["tests/test_fit.py", "tests/test_segment.py"],
    "voxels": ["tests/test_voxels.py"],
    "refine": ["tests/test_refine.py", "tests/test_refine_boxes.py", "tests/test_cavities.py",
               "tests/test_inserted.py", "tests/test_inpaint.py"],
    "assess": ["tests/test_status.py", "tests/test_fit.py", "tests/test_refine.py"],
    "place": ["tests/test_fit.py", "tests/test_status.py", "tests/test_segment.py"],
    "online": ["tests/test_online.py", "tests/test_model.py"],
    "outputs": ["tests/test_outputs.py"],
    "safety": ["tests/test_output_safety.py", "tests/test_hostile.py", "tests/test_outputs.py",
               "tests/test_reconstruct.py", "tests/test_segment.py"],
}

# (id, module, file, original text (must occur exactly once), mutated text, the bug)
MUTANTS = [
    # -- align ---------------------------------------------------------------------------
    ("align-reflect-axis", "align", "shapeprior/align/_procrustes.py",
     "sign[-1] = -1.0", "sign[0] = -1.0", "reflection fixed on the wrong axis"),
    ("align-scale-no-sign", "align", "shapeprior/align/_procrustes.py",
     "scale = float(sv @ sign) / var_s", "scale = float(sv.sum()) / var_s",
     "similarity scale without the reflection sign"),
    ("align-det-test", "align", "shapeprior/align/_procrustes.py",
     "if not reflection and np.linalg.det(u) * np.linalg.det(vt) < 0:",
     "if not reflection and np.linalg.det(u) * np.linalg.det(vt) > 0:",
     "reflection test inverted"),
    ("align-det-test-batched", "align", "shapeprior/align/_procrustes.py",
     "flip = np.linalg.det(u) * np.linalg.det(vt) < 0",
     "flip = np.linalg.det(u) * np.linalg.det(vt) > 0",
     "reflection test inverted in the batched alignment"),
    ("align-unweighted-centroid", "align", "shapeprior/align/_procrustes.py",
     "mu_s = w @ src / wsum", "mu_s = src.mean(0)", "source centroid ignores weights"),
    ("align-unweighted-cov", "align", "shapeprior/align/_procrustes.py",
     "cov = (xt * w[:, None]).T @ xs / wsum", "cov = xt.T @ xs / wsum",
     "covariance ignores weights"),
    ("align-inverse-translation", "align", "shapeprior/align/_procrustes.py",
     "return Transform(inv, -inv @ self.translation, self.kind)",
     "return Transform(inv, -self.translation, self.kind)", "inverse forgets to rotate t"),
    ("align-compose", "align", "shapeprior/align/_procrustes.py",
     "self.linear @ other.translation + self.translation,",
     "other.translation + self.translation,", "composition forgets to map t"),
    ("align-affine-weights", "align", "shapeprior/align/_procrustes.py",
     "sw = np.sqrt(w)[:, None]", "sw = w[:, None]", "affine weights not square-rooted"),
    # -- ssc -------------------------------------------------------------------------------
    ("ssc-gram-cache-stale", "ssc", "shapeprior/ssc/_dictionary.py",
     "        if key != self._wkey:", "        if self._wgram is None:",
     "the weighted Gram of the first weights reused for new ones"),
    ("ssc-gram-update-sign", "ssc", "shapeprior/ssc/_dictionary.py",
     "G = self.gram - Dd.T @ ((1.0 - w[diff])[:, None] * Dd)",
     "G = self.gram + Dd.T @ ((1.0 - w[diff])[:, None] * Dd)",
     "the low-rank update of D^T D adds the down-weighted rows instead of removing them"),
    ("ssc-pair-key-no-weights", "ssc", "shapeprior/ssc/_dictionary.py",
     "    h.update(np.ascontiguousarray(s2, dtype=np.float64).tobytes())\n",
     "",
     "a stored D^T W y pass reused for the same shape under other weights"),
    ("ssc-weights-not-squared", "ssc", "shapeprior/ssc/_compose.py",
     "w = xp.asarray(np.repeat(s * s, dic.n_dims))", "w = xp.asarray(np.repeat(s, dic.n_dims))",
     "vertex weights s used instead of s^2"),
    ("ssc-align-weights", "ssc", "shapeprior/ssc/_compose.py",
     "w_align = s * s", "w_align = s", "alignment weights s instead of s^2"),
    ("ssc-error-norm-units", "ssc", "shapeprior/ssc/_compose.py",
     "x=sol.x, error=e, error_norm=np.linalg.norm(e, axis=1) / beta.scale,",
     "x=sol.x, error=e, error_norm=np.linalg.norm(e, axis=1),",
     "error_norm in model units, not input mm"),
    ("ssc-error-norm-units-refit", "ssc", "shapeprior/ssc/_compose.py",
     "x=res.x, error=e, error_norm=np.linalg.norm(e, axis=1) / beta.scale,",
     "x=res.x, error=e, error_norm=np.linalg.norm(e, axis=1),",
     "error_norm of the inlier refit in model units, not input mm"),
    ("ssc-overridden-invisible", "ssc", "shapeprior/ssc/_compose.py",
     "overridden = np.any(e != 0, axis=1) & visible", "overridden = np.any(e != 0, axis=1)",
     "unseen vertices counted as overridden"),
    ("ssc-direct-round-unaligned", "ssc", "shapeprior/ssc/_compose.py",
     "return dic.correlation_aligned(z, w_align)",
     "return dic.correlation_aligned(y, w_align)",
     "a round's direct D^T W z from the shape before its alignment"),
    ("ssc-align-tol-old", "ssc", "shapeprior/ssc/_compose.py",
     "ALIGN_TOL = 1e-3", "ALIGN_TOL = 1e-4",
     "the default alignment tolerance back at 1e-4 (up to 4x the rounds)"),
    ("ssc-l0-one-calm-round", "ssc", "shapeprior/ssc/_compose.py",
     "need = L0_SETTLED_ROUNDS if method == \"l0\" else 1", "need = 1",
     "L0's rounds stop at the first small move (a stall, not settled)"),
    ("ssc-align-calm-reset", "ssc", "shapeprior/ssc/_compose.py",
     "calm = calm + 1 if last_move <= align_tol else 0",
     "calm = calm + 1 if last_move <= align_tol else calm",
     "small moves counted even when a larger one came between them"),
    ("correspond-certify-unmoved", "model", "shapeprior/correspond/_nicp.py",
     "moved = np.sqrt(np.sum((q - self.q0) ** 2, axis=1))",
     "moved = np.zeros(len(q))",
     "a vertex keeps its list's closest target point however far it has moved"),
    ("correspond-certify-cloud-unmoved", "model", "shapeprior/correspond/_nicp.py",
     "moved = self.spent_total - self.spent_at",
     "moved = np.zeros(len(q))",
     "a target point keeps its list's closest template vertex however far the others moved"),
    ("correspond-certify-cloud-typical-move", "model", "shapeprior/correspond/_nicp.py",
     "step = np.sqrt(np.max(np.sum((cloud - self.cloud) ** 2, axis=1)))",
     "step = np.sqrt(np.median(np.sum((cloud - self.cloud) ** 2, axis=1)))",
     "the certificate charged for a typical vertex's move, not the largest"),
    ("correspond-list-reach", "model", "shapeprior/correspond/_nicp.py",
     "i[:, 0], i[:, :self.k], d[:, self.k]",
     "i[:, 0], i[:, 1:self.k + 1], d[:, self.k]",
     "a list made without the nearest point (off by one)"),
    ("kernels-knn-shell-bound", "kernels", "kernels/neighbour_list.py",
     "bound = r * h + edge", "bound = (r + 1) * h + edge",
     "the grid search stops a shell early: a nearer point beyond it is missed"),
    ("kernels-list-moved-nb", "kernels", "kernels/neighbour_list.py",
     "ok[i] = np.sqrt(bd) + moved[i] + slack * reach[i] < reach[i]",
     "ok[i] = np.sqrt(bd) + slack * reach[i] < reach[i]",
     "a list certified without the moves since it was made (Numba twin)"),
    ("kernels-list-moved-ref", "kernels", "kernels/neighbour_list.py",
     "return cand[rows, j], best + moved + slack * reach < reach",
     "return cand[rows, j], best + slack * reach < reach",
     "a list certified without the moves since it was made (reference)"),
    ("io-gzip-whole-request", "io", "shapeprior/io/_gzip.py",
     "got = super().readinto(view[n:n + READ_PIECE])",
     "got = super().readinto(view[n:])",
     "a .nii.gz inflated into one temporary as large as its voxels (twice the memory)"),
    ("ssc-partial-gram-rows", "ssc", "shapeprior/ssc/_dictionary.py",
     "if rows * self.n_atoms <= PARTIAL_COLUMNS * self.n_rows:",
     "if rows <= PARTIAL_COLUMNS * self.n_rows:",
     "the whole weighted Gram for any number of reweighted rows"),
    ("kernels-cold-gradient-sign", "kernels", "kernels/huber_lasso.py",
     "        g = GW[:, S] @ xS - c\n", "        g = GW[:, S] @ xS + c\n",
     "the cold start's violators from a gradient of the wrong sign (reference)"),
    ("kernels-cold-gradient-nb", "kernels", "kernels/huber_lasso.py",
     "            acc = -c[k]\n            for p in range(S.shape[0]):\n"
     "                acc += GW[k, S[p]] * xS[p]\n            g[k] = acc\n            inS[k] = False",
     "            acc = c[k]\n            for p in range(S.shape[0]):\n"
     "                acc += GW[k, S[p]] * xS[p]\n            g[k] = acc\n            inS[k] = False",
     "the Numba cold start's gradient (and the robust start's) with c added, not subtracted"),
    ("kernels-robust-rhs-sign", "kernels", "kernels/huber_lasso.py",
     "        v_T = w[T] * z[T] - l2[T] * s_T\n", "        v_T = w[T] * z[T] + l2[T] * s_T\n",
     "the robust start's Newton model with the gross rows' sign term reversed (reference)"),
    ("kernels-robust-model-gradient", "kernels", "kernels/huber_lasso.py",
     "            g = GW[:, S] @ xS - c + D[T].T @ (v_T - w[T] * (DT_S @ xS))\n",
     "            g = GW[:, S] @ xS - c\n",
     "the robust start grows its working set from the outlier-free gradient (reference)"),
    ("kernels-robust-nb-unweighted", "kernels", "kernels/huber_lasso.py",
     "                            u[i] -= w[T[i]] * col[T[i]] * xp_\n",
     "                            u[i] -= col[T[i]] * xp_\n",
     "the Numba robust start's model gradient without the row weights"),
    ("kernels-robust-nb-scale", "kernels", "kernels/huber_lasso.py",
     "        q = sigmas * 1.4826 * np.median(a)\n", "        q = sigmas * np.median(a)\n",
     "the Numba robust threshold in median units, not standard deviations"),
    ("kernels-robust-nb-threshold-weights", "kernels", "kernels/huber_lasso.py",
     "                thr[j] = max(tau[j], q / np.sqrt(w[j]))\n",
     "                thr[j] = max(tau[j], q)\n",
     "the Numba robust threshold ignores the row weights"),
    ("ssc-soft-threshold", "ssc", "shapeprior/ssc/_l1.py",
     "xp.maximum(xp.abs(r) - tau, 0.0)", "xp.maximum(xp.abs(r) - 0.5 * tau, 0.0)",
     "gross-error threshold halved"),
    ("ssc-tau", "ssc", "shapeprior/ssc/_l1.py",
     "return xp.where(w > 0, l2 / xp.where(w > 0, w, 1.0), xp.inf)",
     "return xp.where(w > 0, l2 * xp.where(w > 0, w, 1.0), xp.inf)",
     "per-row threshold multiplies by the weight"),
    ("ssc-halving", "ssc", "shapeprior/ssc/_l1.py",
     "l1, l2 = 0.5 * lam1, 0.5 * lam2", "l1, l2 = lam1, 0.5 * lam2",
     "lambda1 not halved into solver units"),
    ("ssc-outlier-fraction", "ssc", "shapeprior/ssc/_compose.py",
     "return float(self.overridden[self.visible].sum()) / nv if nv else 0.0",
     "return float(self.overridden[self.visible].sum()) / len(self.visible) if nv else 0.0",
     "overridden fraction over all vertices, not the visible ones"),
    ("ssc-l0-threshold", "ssc", "kernels/trimmed_omp.py",
     "thr = threshold_factor * np.median(vis_rn)",
     "thr = threshold_factor * np.median(rn)",
     "L0 threshold from hidden vertices too (the compiled twin, the default backend)"),
    ("kernels-l0-threshold-reference", "kernels", "kernels/trimmed_omp.py",
     "thr = float(threshold_factor * float(xp.median(rn[visible])))",
     "thr = float(threshold_factor * float(xp.median(rn)))",
     "L0 threshold from hidden vertices too (the reference twin)"),
    ("kernels-l0-forward-solve", "kernels", "kernels/trimmed_omp.py",
     "                        acc -= L[p, t] * y[t]", "                        acc -= L[t, p] * y[t]",
     "the compiled OMP's forward substitution reads the factor's upper triangle"),
    ("kernels-l0-held-move-sign", "kernels", "kernels/trimmed_omp.py",
     "            sw = -w[i] if trim[i] else w[i]", "            sw = w[i] if trim[i] else -w[i]",
     "the compiled twin moves the kept rows' Gram the wrong way"),
    # -- io ----------------------------------------------------------------------------------
    ("io-centre-half-voxel", "io", "shapeprior/io/_volume.py",
     "c = (np.array(self.array.shape[::-1]) - 1) / 2.0",
     "c = np.array(self.array.shape[::-1]) / 2.0", "field-of-view centre off by half a voxel"),
    ("io-spacing-rows", "io", "shapeprior/io/_volume.py",
     "return self.direction * self.spacing[None, :]",
     "return self.direction * self.spacing[:, None]", "spacing applied to rows, not columns"),
    ("io-empty-grid", "io", "shapeprior/io/_checks.py",
     "    if any(s < 1 for s in size):", "    if any(s < 0 for s in size):",
     "a header with a zero-length axis gets past the reader's checks"),
    ("io-memory-one-copy", "io", "shapeprior/io/_checks.py",
     "    if need > have:", "    if nbytes > have:",
     "an image whose working copies exceed memory is read anyway"),
    ("geo-crop-origin-zyx", "io", "shapeprior/io/_volume.py",
     "        new_origin = self.index_to_physical(lo[::-1][None].astype(float))[0]",
     "        new_origin = self.index_to_physical(lo[None].astype(float))[0]",
     "a crop's origin moved by its (z, y, x) offset read as (x, y, z)"),
    ("geo-same-grid-origin", "io", "shapeprior/io/_volume.py",
     "                and np.allclose(self.origin, other.origin, atol=atol))",
     "                and True)",
     "two grids that differ only by their origin taken for the same grid"),
    ("geo-to-index-transpose", "io", "shapeprior/io/_volume.py",
     "        return (np.asarray(points, dtype=float) - self.origin) @ inv.T",
     "        return (np.asarray(points, dtype=float) - self.origin) @ inv",
     "physical to index with the inverse transposed (only oblique grids differ)"),
    ("geo-sitk-direction-transpose", "io", "shapeprior/io/_volume.py",
     "        img.SetDirection([float(v) for v in self.direction.ravel()])",
     "        img.SetDirection([float(v) for v in self.direction.T.ravel()])",
     "an oblique grid handed to SimpleITK with its direction transposed"),
    ("mesh-faces-one-past", "safety", "shapeprior/mesh/_read.py",
     "faces.max() >= len(verts)):", "faces.max() > len(verts)):",
     "a mesh whose triangles name one vertex past the last is accepted"),
    ("mesh-nonfinite-accepted", "safety", "shapeprior/mesh/_read.py",
     "    if not np.all(np.isfinite(verts)):", "    if False:",
     "a mesh with NaN coordinates is accepted"),
    ("io-nifti-precedence", "io", "shapeprior/io/_nifti.py",
     "    if h.sform_code > 0:\n        aff = np.asarray(hdr.get_sform(), dtype=float)",
     "    if h.sform_code > 0 and h.qform_code == 0:\n"
     "        aff = np.asarray(hdr.get_sform(), dtype=float)", "qform preferred over the sform"),
    ("io-nifti-lps", "io", "shapeprior/io/_nifti.py",
     "_LPS = np.diag([-1.0, -1.0, 1.0])", "_LPS = np.diag([-1.0, 1.0, 1.0])",
     "RAS->LPS flips x only"),
    ("io-nifti-write-code", "io", "shapeprior/io/_nifti.py",
     "img.set_sform(A, code=code)", "img.set_sform(A, code=1)", "label sform code always 1"),
    ("io-nifti-truncation-slack", "io", "shapeprior/io/_nifti.py",
     "    if held < expected:", "    if held < expected - 4096:",
     "a file a few KiB short passes the truncation check"),
    ("io-nifti-bitpix", "io", "shapeprior/io/_nifti.py",
     "    if h.bitpix != 8 * itemsize:", "    if h.bitpix < 8:",
     "datatype/bitpix disagreement not noticed"),
    ("io-dicom-pixel-spacing", "io", "shapeprior/io/_dicom.py",
     "vol = Volume(arr, np.array([ps[1], ps[0], step]), np.asarray(pos[order[0]]), D)",
     "vol = Volume(arr, np.array([ps[0], ps[1], step]), np.asarray(pos[order[0]]), D)",
     "PixelSpacing read as (x, y) instead of (row, column)"),
    ("io-dicom-axes", "io", "shapeprior/io/_dicom.py",
     "    D = np.column_stack([row, col, normal])\n    vol = Volume(arr,",
     "    D = np.column_stack([col, row, normal])\n    vol = Volume(arr,",
     "row and column directions swapped"),
    ("io-dicom-origin", "io", "shapeprior/io/_dicom.py",
     "vol = Volume(arr, np.array([ps[1], ps[0], step]), np.asarray(pos[order[0]]), D)",
     "vol = Volume(arr, np.array([ps[1], ps[0], step]), np.asarray(pos[0]), D)",
     "origin from the first file, not the first slice"),
    ("io-dicom-rescale", "io", "shapeprior/io/_dicom.py",
     "slices.append(a.astype(np.float64) * slope + inter if (slope, inter) != (1.0, 0.0)",
     "slices.append(a.astype(np.float64) * slope if (slope, inter) != (1.0, 0.0)",
     "rescale intercept dropped"),
    ("io-nan-check", "io", "shapeprior/io/_checks.py",
     "if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):",
     "if np.issubdtype(array.dtype, np.floating) and np.all(np.isnan(array)):",
     "only all-NaN images refused"),
    # -- segment -------------------------------------------------------------------------------
    ("seg-voxelize-half-voxel", "segment", "shapeprior/mesh/_voxelize.py",
     "V = volume.physical_to_index(verts)          # continuous (x, y, z) indices",
     "V = volume.physical_to_index(verts) + 0.5", "voxelisation shifted by half a voxel"),
    ("seg-mirror-targets", "segment", "shapeprior/segmentation/_fit.py",
     "y = tgt * MIRROR if self.mirror else tgt", "y = tgt",
     "search targets not mirrored for a right-side organ"),
    ("seg-lambda2-half", "segment", "shapeprior/segmentation/_fit.py",
     "x0=f.x_prev, lambda2=2.0 * tau,", "x0=f.x_prev, lambda2=tau,",
     "lambda2 halved in the fit"),
    ("seg-tau-scale", "segment", "shapeprior/segmentation/_fit.py",
     "tau = p.outlier_base_mm + 0.5 * search_mm",
     "tau = p.outlier_base_mm + 5.0 * search_mm", "gross-error threshold 10x too loose"),
    ("seg-refine-conf", "segment", "shapeprior/segmentation/_fit.py",
     "    d = (tgt - v) * conf[:, None]", "    d = (tgt - v)",
     "refinement ignores search confidence"),
    ("seg-mirror-faces", "segment", "shapeprior/segmentation/_fit.py",
     "faces = model.faces[:, ::-1].copy() if mirror else model.faces", "faces = model.faces",
     "mirrored shape searched along inward normals"),
    ("seg-mirror-offset", "segment", "shapeprior/segmentation/_fit.py",
     "        off = off * MIRROR\n", "", "pose offset not mirrored for the right side"),
    ("seg-dice", "segment", "shapeprior/mesh/_surface.py",
     "return float(2.0 * np.logical_and(a, b).sum() / s) if s else 1.0",
     "return float(np.logical_and(a, b).sum() / s) if s else 1.0", "Dice without the 2"),
    ("seg-overridden-last", "segment", "shapeprior/segmentation/_fit.py",
     "f.overridden_max = max(f.overridden_max, res.outlier_fraction)",
     "f.overridden_max = res.outlier_fraction",
     "overridden fraction from the last iteration only"),
    # -- mesh ------------------------------------------------------------------------------------
    ("mesh-kidney-side", "mesh", "shapeprior/mesh/_surface.py",
     'sides = ["left" if cents[0][0] > centre[0] else "right"]',
     'sides = ["left" if cents[0][0] < centre[0] else "right"]',
     "a single kidney assigned to the wrong side"),
    ("mesh-iso-step", "mesh", "shapeprior/mesh/_surface.py",
     "step = iso_spacing / sp_zyx", "step = iso_spacing / sp_zyx[::-1]",
     "resampling step with the axes reversed"),
    ("mesh-neighbour-degree", "mesh", "shapeprior/mesh/_operators.py",
     "return sparse.diags(1.0 / np.maximum(deg, 1)) @ A", "return A",
     "neighbour operator not normalised"),
    # -- model -----------------------------------------------------------------------------------
    ("model-pca-ddof", "model", "shapeprior/model/_model.py",
     "var = s ** 2 / max(M - 1, 1)", "var = s ** 2 / M", "PCA variance with ddof 0"),
    ("model-pose-offset-sign", "model", "shapeprior/model/_pose.py",
     "offs.append(v.mean(0) - np.asarray(c, dtype=float))",
     "offs.append(np.asarray(c, dtype=float) - v.mean(0))", "pose offset sign flipped"),
    ("model-mirror-centre", "model", "shapeprior/model/_build.py",
     "c = centre * np.array([-1.0, 1.0, 1.0])", "c = centre",
     "mirrored shape keeps the unmirrored FOV centre"),
    ("model-pca-clamp", "model", "shapeprior/model/_model.py",
     "b = np.clip(b, -clamp * sd, clamp * sd)", "b = np.clip(b, -clamp * sd ** 2, clamp * sd ** 2)",
     "ASM clamp in variances, not standard deviations"),
    # -- kernels ---------------------------------------------------------------------------------
    ("appearance-one-region", "appearance", "shapeprior/appearance/_levels.py",
     "self._regions = [(lo, hi, sampler)] + self._regions[:MAX_REGIONS - 1]",
     "self._regions = [(lo, hi, sampler)]",
     "a level keeps one smoothed region: each placement hypothesis recrops"),
    ("kernels-lerp-clamp", "kernels", "kernels/normal_sampling.py",
     "        if c >= size - 1:\n            return size - 2, 1.0",
     "        if c >= size - 1:\n            return size - 2, 0.0", "upper edge clamps to the wrong voxel"),
    ("kernels-trilinear", "kernels", "kernels/normal_sampling.py",
     "out[i, m] = c0 * (1 - fz) + c1 * fz", "out[i, m] = c0 * fz + c1 * (1 - fz)",
     "z weights swapped"),
    ("kernels-lasso-tol", "kernels", "kernels/gram_lasso.py",
     "def gram_lasso_numba(H, b, lam, x0=None, tol=1e-10, max_iter=2000):",
     "def gram_lasso_numba(H, b, lam, x0=None, tol=1e-3, max_iter=2000):",
     "Numba Lasso stops early"),
    # -- status from evidence (ok / suspect / failed) --------------------------------------
    ("assess-appearance-all-vertices", "assess", "shapeprior/segmentation/_assess.py",
     "    seen = np.flatnonzero(border_distance(vol, res.verts) >= scorer.reach(1.5))",
     "    seen = np.flatnonzero(border_distance(vol, res.verts) >= -np.inf)",
     "the appearance scored over every vertex, those beyond the image too"),
    ("assess-appearance-unseen-fallback", "assess", "shapeprior/segmentation/_assess.py",
     "vertices=seen) if len(seen) else 0.0",
     "vertices=seen) if len(seen) else scorer(res.verts, res.faces, search_mm=1.5)",
     "an organ the image does not show at all scored over its unseen vertices"),
    ("assess-region-failed-old", "assess", "shapeprior/segmentation/_assess.py",
     'QUALITY_FAILED = {"profile": 0.60, "region": 0.50}',
     'QUALITY_FAILED = {"profile": 0.60, "region": 0.25}',
     "the region score's failed threshold back at 0.25: kidney-free CT crops only suspect"),
    ("assess-not-found", "assess", "shapeprior/segmentation/_assess.py",
     "    if quality < QUALITY_FAILED[kind]:", "    if False:",
     "a surface that matches nothing in the image is not failed (organ not found)"),
    ("assess-overridden-last-only", "assess", "shapeprior/segmentation/_assess.py",
     "    if res.overridden_fraction_max > OVERRIDDEN_SUSPECT[0]:",
     "    if res.overridden_fraction > OVERRIDDEN_SUSPECT[0]:",
     "what the prior overrode judged from the last projection only"),
    ("assess-scale-range", "assess", "shapeprior/segmentation/_assess.py",
     "if scale < lo / SCALE_SLACK ** 2 or scale > hi * SCALE_SLACK ** 2:",
     "if scale < lo / SCALE_SLACK ** 20 or scale > hi * SCALE_SLACK ** 20:",
     "an organ far outside the training sizes is not failed"),
    ("assess-fov-failed", "assess", "shapeprior/segmentation/_assess.py",
     "    if outside > OUTSIDE_FAILED:", "    if outside > 1.0:",
     "a surface mostly outside the image is not failed"),
    ("assess-fov-touches", "assess", "shapeprior/segmentation/_assess.py",
     "    elif outside > OUTSIDE_SUSPECT or touches:", "    elif outside > OUTSIDE_SUSPECT:",
     "a label touching the image border is not suspect"),
    ("assess-empty", "assess", "shapeprior/segmentation/_assess.py",
     "    if not res.label.any():", "    if False:", "an empty segmentation is not failed"),
    ("assess-shape-suspect", "assess", "shapeprior/segmentation/_assess.py",
     "    elif d > SHAPE_SUSPECT * dmax:", "    elif d > SHAPE_FAILED * dmax:",
     "an unusual shape is never suspect"),
    ("assess-border-half-voxel", "assess", "shapeprior/segmentation/_assess.py",
     "d = np.minimum(idx + 0.5, n - 0.5 - idx)", "d = np.minimum(idx, n - 1 - idx)",
     "the field of view ends at the outer voxel centres, not their boundaries"),
    ("assess-status-order", "assess", "shapeprior/segmentation/_assess.py",
     'status = "failed" if failed else "suspect" if suspect else "ok"',
     'status = "suspect" if suspect else "failed" if failed else "ok"',
     "a failed case with a suspect reason too is reported suspect"),
    # -- placement without a seed ---------------------------------------------------------
    ("place-side-flip", "place", "shapeprior/segmentation/_place.py",
     'keep = cands[:, 0] > mid if side == "left" else cands[:, 0] < mid',
     'keep = cands[:, 0] < mid if side == "left" else cands[:, 0] > mid',
     "a paired organ searched on the wrong side of the midline"),
    ("place-no-outside-band", "place", "shapeprior/segmentation/_place.py",
     "kern = b_in / b_in.sum() - b_out / b_out.sum()", "kern = b_in / b_in.sum()",
     "the matched filter scores brightness inside only, not the contrast at the boundary"),
    ("place-window-contrast", "place", "shapeprior/segmentation/_place.py",
     "return np.clip(fin - fout, 0.0, 1.0)", "return np.clip(fin, 0.0, 1.0)",
     "the region score ignores what lies outside the surface"),
    ("place-midline-stride", "place", "shapeprior/segmentation/_place.py",
     "c = np.array(c)[::-1] * 2.0", "c = np.array(c)[::-1]",
     "the body midline from the strided grid without its stride"),
    # -- boundary appearance ---------------------------------------------------------------
    ("appearance-profile-unnormalised", "appearance", "shapeprior/appearance/_profiles.py",
     "    return d / (np.sum(np.abs(d), axis=-1, keepdims=True) + 1e-6)", "    return d",
     "profiles not normalised: the image's contrast shifts the match"),
    ("appearance-profile-variance", "appearance", "shapeprior/appearance/_profiles.py",
     "    mean, raw = P.mean(0), P.var(0)", "    mean, raw = P.mean(0), P.std(0)",
     "profile variances learned as standard deviations"),
    ("appearance-search-offset-sign", "appearance", "shapeprior/appearance/_profiles.py",
     "    return verts + cand[best][:, None] * normals, conf",
     "    return verts - cand[best][:, None] * normals, conf",
     "the profile search moves the vertex the wrong way along its normal"),
    ("appearance-edge-polarity", "appearance", "shapeprior/appearance/_profiles.py",
     "    grad = (a - b) if inside_brighter else (b - a)",
     "    grad = (b - a) if inside_brighter else (a - b)",
     "the edge search looks for the opposite polarity"),
    ("appearance-edge-window", "appearance", "shapeprior/appearance/_profiles.py",
     "        grad = np.where((a >= lo) & (a <= hi), grad, -np.inf)",
     "        grad = np.where((b >= lo) & (b <= hi), grad, -np.inf)",
     "the organ's intensity window tested outside the edge instead of inside"),
    ("online-api-overwrites", "online", "shapeprior/api.py",
     "    if output is not None:      # checked before the slow stages; never overwritten",
     "    if False:      # checked before the slow stages; never overwritten",
     "the Python update_model reads everything before it finds its output taken"),
    # -- the voxel classifier's smoothed decisions -----------------------------------------
    ("voxels-smooth-axis-order", "voxels", "shapeprior/appearance/_voxels.py",
     "    sp = np.asarray(spacing, dtype=float)[::-1]              # zyx",
     "    sp = np.asarray(spacing, dtype=float)              # zyx",
     "the smoothing widths taken in x, y, z order for a z, y, x array"),
    ("voxels-smooth-coarsest-axis", "voxels", "shapeprior/appearance/_voxels.py",
     "    sigma = sigma_vox * sp.min() / sp", "    sigma = sigma_vox * sp.max() / sp",
     "the smoothing width set by the coarsest axis: thick slices blur the planes"),
    ("voxels-outside-band-sign", "voxels", "shapeprior/appearance/_voxels.py",
     "np.where(np.asarray(label)[sl] > 0, float(outside), -float(outside))",
     "np.where(np.asarray(label)[sl] > 0, -float(outside), float(outside))",
     "voxels outside the band counted on the wrong side of the label"),
    ("voxels-smoothing-skipped", "voxels", "shapeprior/appearance/_voxels.py",
     "        if smooth_vox > 0:\n            dec = smoothed_decision(",
     "        if smooth_vox > 1:\n            dec = smoothed_decision(",
     "refine decides by the raw log-odds at the default width"),
    ("voxels-later-pass-on-first-band", "voxels", "shapeprior/appearance/_voxels.py",
     "            out, box, band = self._refine_once(vol, out, verts, faces, backend, smooth_vox,",
     "            out, box, band = self._refine_once(vol, start, verts, faces, backend, smooth_vox,",
     "every pass decides the band of the given label: the second pass repeats the first"),
    ("voxels-later-pass-beyond-first-band", "voxels", "shapeprior/appearance/_voxels.py",
     "            beyond = ~np.isin(np.ravel_multi_index(index, out.shape), first,",
     "            beyond = np.isin(np.ravel_multi_index(index, out.shape), first[:0],",
     "later passes move the boundary beyond the first band (into a bright neighbour)"),
    ("voxels-changed-against-last-pass", "voxels", "shapeprior/appearance/_voxels.py",
     "        return out, int(np.count_nonzero(out[sl] != start[sl]))",
     "        return out, int(np.count_nonzero(out[sl] != np.asarray(label)[sl]) if passes == 1 "
     "else len(np.flatnonzero(out[sl])) - int(np.count_nonzero(start[sl])))",
     "changed voxels counted as the net growth of the label, not the voxels that changed"),
    # -- online update of a model ----------------------------------------------------------
    ("online-mean-weights", "online", "shapeprior/model/_update.py",
     "    mean = (n_old * mu_a + m * mu_b) / n", "    mean = 0.5 * (mu_a + mu_b)",
     "the updated mean ignores how many shapes each side holds"),
    ("online-mean-shift", "online", "shapeprior/model/_update.py",
     "    shift = np.sqrt(n_old * m / n) * (mu_a - mu_b)", "    shift = 0.0 * (mu_a - mu_b)",
     "the PCA update forgets the scatter between the old and the new means"),
    ("online-old-variances", "online", "shapeprior/model/_update.py",
     "np.sqrt(model.pca_variances * (n_old - 1))[:, None]",
     "np.sqrt(model.pca_variances)[:, None]",
     "the old modes enter the update with variances, not scatter"),
    ("online-var-ddof", "online", "shapeprior/model/_update.py",
     "    var = s ** 2 / (n - 1)", "    var = s ** 2 / n", "updated variances with ddof 0"),
    ("online-scale-margin", "online", "shapeprior/model/_update.py",
     "        if not lo / SCALE_MARGIN <= scale <= hi * SCALE_MARGIN:",
     "        if not lo / SCALE_MARGIN <= scale:",
     "a new map far beyond the training sizes (2.5x) is added once fitted"),
    # -- DICOM-SEG output ---------------------------------------------------------------------
    ("dicomseg-frame-rows-cols", "outputs", "shapeprior/io/_dicom_seg.py",
     "    step_c = vol.physical_to_index((ipp + dc * iop[:3])[None])[0] - idx0",
     "    step_c = vol.physical_to_index((ipp + dr * iop[:3])[None])[0] - idx0",
     "column step taken from the row spacing"),
    ("dicomseg-frame-index-order", "outputs", "shapeprior/io/_dicom_seg.py",
     "    out[inside] = label[k, j, i] > 0", "    out[inside] = label[i, j, k] > 0",
     "label indexed (x, y, z) instead of (z, y, x)"),
    ("dicomseg-grid-check", "outputs", "shapeprior/io/_dicom_seg.py",
     "        raise ValueError(\"the label is not on the DICOM series' voxel grid\")",
     "        pass",
     "a label off the series' grid written as if it were on it"),
    # -- refine --------------------------------------------------------------------------
    ("refine-gap-both-limits", "refine", "shapeprior/segmentation/_refine.py",
     "    return 1 <= n and (n * float(spacing) <= MAX_GAP_MM or n <= MAX_GAP_FRACTION * extent)",
     "    return 1 <= n and (n * float(spacing) <= MAX_GAP_MM and n <= MAX_GAP_FRACTION * extent)",
     "a gap must be short in mm and a small part of the organ (thick slices never bridged)"),
    ("refine-part-without-gap", "refine", "shapeprior/segmentation/_refine.py",
     "        if g > n_gap:", "        if g >= n_gap:",
     "any component of 10 % counts as a part, gap or not"),
    ("refine-pieces-never", "refine", "shapeprior/segmentation/_refine.py",
     "    return int(np.count_nonzero(sizes >= GAP_PART_FRACTION * sizes.max()))",
     "    return int(np.count_nonzero(sizes > sizes.max()))",
     "a refined organ in pieces is never reported"),
    ("refine-keep-carried", "refine", "shapeprior/segmentation/_refine.py",
     "            kept = np.where(gaps, 0, kept)\n", "",
     "a kept label's outline carried through copied slices"),
    ("refine-empty-side-inside", "refine", "shapeprior/segmentation/_refine.py",
     "sb = np.full(a.shape, -sa.min()) if sb is None else sb",
     "sb = np.full(a.shape, sa.min()) if sb is None else sb",
     "a region on one side of a gap fills the whole slab"),
    ("interp-always-linear", "refine", "shapeprior/segmentation/_refine.py",
     '    if GAP_INTERPOLATION == "linear" or sa is None or sb is None:',
     "    if True:", "the slices beyond a gap are never used"),
    ("interp-slopes-swapped", "refine", "shapeprior/segmentation/_refine.py",
     "return (sb - s0) / L, (s3 - sa) / L", "return (s3 - sa) / L, (sb - s0) / L",
     "each end of a gap gets the other end's slope"),
    ("interp-hermite-basis", "refine", "shapeprior/segmentation/_refine.py",
     "(t ** 3 - t ** 2) * mb)", "(t ** 3 + t ** 2) * mb)",
     "a wrong Hermite basis function"),
    ("cavity-any-intensity", "refine", "shapeprior/segmentation/_cavities.py",
     "lo <= np.median(v) <= hi)", "lo <= np.median(v) or np.median(v) <= hi)",
     "every enclosed cavity is filled, sinus fat included"),
    ("cavity-kept-labels-in-range", "refine", "shapeprior/segmentation/_cavities.py",
     "    organ = label[box] == organ_value\n", "    organ = label[box] > 0\n",
     "a kept lesion's intensity widens the organ's range"),
    ("cavity-grid-axes", "refine", "shapeprior/segmentation/_cavities.py",
     "    at = image.physical_to_index(pts)[:, ::-1]", "    at = image.physical_to_index(pts)",
     "the image sampled with its axes in the wrong order"),
    ("cavity-box-offset", "refine", "shapeprior/segmentation/_cavities.py",
     "(at - lo).T, order=1)", "at.T, order=1)",
     "the image sampled on its cropped box at uncropped indices"),
    ("cavity-unused", "refine", "shapeprior/segmentation/_refine.py",
     "    if image is not None and agree >= MASK_AGREEMENT:",
     "    if False:",
     "refine with the image leaves its holes"),
    ("inserted-never", "refine", "shapeprior/segmentation/_inserted.py",
     "    if margin is None or _contrast(scores[best])", "    if True or _contrast(scores[best])",
     "every run of identical slices is read as copies, even with the image"),
    ("inserted-side-swapped", "refine", "shapeprior/segmentation/_inserted.py",
     '    if side == "after":', '    if side != "after":',
     "the other side of the organ is moved back"),
    ("inserted-box-offset", "refine", "shapeprior/segmentation/_inserted.py",
     "    i, j = int(i - lo[ax]), int(j - lo[ax])", "    i, j = int(i), int(j)",
     "the run's slices read on the box at uncropped indices"),
    ("inserted-no-margin", "refine", "shapeprior/segmentation/_inserted.py",
     "<= (1.0 + margin) * _contrast(", "<= (1.0 + 0.0 * margin) * _contrast(",
     "any reading that explains a little more than the copies moves the organ"),
    ("inserted-no-junction", "refine", "shapeprior/segmentation/_inserted.py",
     "scores[(\"copies\", 0)]) or joint < junction:", "scores[(\"copies\", 0)]):",
     "copies that replaced slices are removed wherever the image leans that way"),
    ("inserted-kept-labels-lost", "refine", "shapeprior/segmentation/_inserted.py",
     "    out = np.where(np.isin(label, organ), label, 0)",
     "    out = np.isin(label, organ).astype(label.dtype)",
     "kept labels become the organ's when slices are moved"),
    ("inserted-unused", "refine", "shapeprior/segmentation/_refine.py",
     '        if inserted["moved"]:', "        if False:",
     "refine with the image reads inserted slices but fits the mask as given"),
    ("inserted-corrections-after-move", "refine", "shapeprior/segmentation/_refine.py",
     "describe_corrections(m_input, label > 0", "describe_corrections(m, label > 0",
     "the report's corrections are counted from the moved mask, not the input"),
    ("inpaint-sign", "refine", "shapeprior/segmentation/_inpaint.py",
     "    return verts + offset[:, None] * normals, bad",
     "    return verts - offset[:, None] * normals, bad",
     "the surface moved away from the mask's boundary instead of onto it"),
    ("inpaint-no-bridge", "refine", "shapeprior/segmentation/_inpaint.py",
     "    offset = harmonic_fill(offset, bad, faces)", "    offset = np.where(bad, 0.0, offset)",
     "departing vertices stay where the fit put them"),
    ("inpaint-no-rings", "refine", "shapeprior/segmentation/_inpaint.py",
     "        for _ in range(rings):", "        for _ in range(0):",
     "the rim of a departing region is trusted"),
    ("inpaint-no-tolerance", "refine", "shapeprior/segmentation/_inpaint.py",
     "(np.abs(offset) > tolerance_mm + slack_mm)", "(np.abs(offset) > np.inf)",
     "a leak taller than the tolerance is followed"),
    ("inpaint-no-slack", "refine", "shapeprior/segmentation/_inpaint.py",
     "(np.abs(offset) > tolerance_mm + slack_mm)", "(np.abs(offset) > tolerance_mm)",
     "a thick-sliced mask's staircase departs"),
    ("inpaint-no-local", "refine", "shapeprior/segmentation/_inpaint.py",
     "    if local_mm is not None and np.isfinite(local_mm):", "    if False:",
     "a leak lower than the tolerance is followed"),
    ("inpaint-harmonic-damped", "refine", "shapeprior/segmentation/_inpaint.py",
     'A = sparse.identity(u.size, format="csc") * (1.0 + 1e-9)',
     'A = sparse.identity(u.size, format="csc") * 2.0',
     "bridged offsets shrink towards 0"),
    ("inpaint-along-direction", "refine", "shapeprior/segmentation/_refine.py",
     "        sgn = np.where(s0 < 0, 1.0, -1.0)", "        sgn = np.where(s0 < 0, -1.0, 1.0)",
     "the boundary looked for away from it"),
    ("inpaint-unused", "refine", "shapeprior/segmentation/_refine.py",
     "        if INPAINT:", "        if False:",
     "mask-only refinement cuts at the fit's own surface"),
    # -- pipeline / outputs ------------------------------------------------------------------------
    ("pipe-within", "pipeline", "shapeprior/_outputs.py",
     "        if _within(o, r):", "        if False and _within(o, r):",
     "an output inside an input folder is allowed"),
    ("pipe-own-names", "pipeline", "shapeprior/_outputs.py",
     "if e.is_symlink() or not e.is_file() or e.name not in allowed:",
     "if e.is_symlink() or not e.is_file():", "foreign files in an output folder are replaced"),
    ("pipe-resume-inputs", "pipeline", "shapeprior/pipeline/_batch.py",
     "    if now != was:", "    if False:", "a replaced input is skipped on resume"),
    # -- data safety and privacy (2026-12-04: modules no mutant had covered) ---------------
    ("safe-output-contains-input", "safety", "shapeprior/_outputs.py",
     "        if _within(r, o):", "        if False and _within(r, o):",
     "an output folder that contains an input is allowed (--force could replace it)"),
    ("safe-no-realpath", "safety", "shapeprior/_outputs.py",
     "    return os.path.realpath(os.path.abspath(os.fsencode(Path(p)))).decode(",
     "    return os.path.abspath(os.fsencode(Path(p))).decode(",
     "a symbolic link smuggles an input in as the output"),
    ("safe-symlinked-folder-owned", "safety", "shapeprior/_outputs.py",
     "    if p.is_symlink() or not p.is_dir():\n        return \"it is not a folder shapeprior wrote\"",
     "    if not p.is_dir():\n        return \"it is not a folder shapeprior wrote\"",
     "a link to a folder passes for our output and is replaced"),
    ("safe-replace-without-force", "safety", "shapeprior/_outputs.py",
     "    if not force and not empty_dir:", "    if False and not empty_dir:",
     "an existing output replaced without --force"),
    ("safe-commit-no-recheck", "safety", "shapeprior/_outputs.py",
     "            check_replaceable(self.path, self.force, self._own, during_run=True)",
     "            pass",
     "a folder that appeared during the run is moved aside at commit"),
    ("safe-any-manifest", "safety", "shapeprior/_outputs.py",
     "    return m if m.get(\"producer\") == PRODUCER or legacy else None",
     "    return m",
     "any folder with a manifest.json passes for a shapeprior output"),
    ("safe-publish-input", "safety", "shapeprior/_outputs.py",
     "    dest = Path(dest)\n    check_not_input(dest, inputs)",
     "    dest = Path(dest)",
     "a published file (model, summary) may overwrite an input"),
    ("safe-text-foreign", "safety", "shapeprior/_outputs.py",
     "        why = own(p) if own is not None else None\n        if why is not None:",
     "        why = own(p) if own is not None else None\n        if False:",
     "a small text output overwrites a foreign file"),
    ("safe-created-order", "safety", "shapeprior/_outputs.py",
     "    for d in reversed(list(dirs)):", "    for d in list(dirs):",
     "a failed run leaves the parent folders it created (removed outermost first)"),
    ("privacy-deid-file-names", "safety", "shapeprior/pipeline/_run.py",
     "        keys = [f\"input/{i:04d}\" for i in range(len(files))]",
     "        keys = [f\"input/{display_name(f)}\" for f in files]",
     "--deidentify keeps the input file names in the manifest"),
    ("privacy-argv-unscrubbed", "safety", "shapeprior/pipeline/_run.py",
     "        out.append(hit or os.fsencode(a).decode(\"utf-8\", \"backslashreplace\"))",
     "        out.append(os.fsencode(a).decode(\"utf-8\", \"backslashreplace\"))",
     "--deidentify records the command line's input paths"),
    ("run-statistics-of-failed", "safety", "shapeprior/pipeline/_run.py",
     "    if res.status == \"failed\" or not np.any(res.label):\n        return head",
     "    if not np.any(res.label):\n        return head",
     "a failed result's label is measured as if it were the organ"),
    ("run-seg-of-failed", "safety", "shapeprior/pipeline/_run.py",
     "    if res.status == \"failed\" or not np.any(res.label):\n        return {\"written\": False",
     "    if not np.any(res.label):\n        return {\"written\": False",
     "a DICOM-SEG written for a failed result"),
    ("lineage-version-not-bumped", "online", "shapeprior/model/_lineage.py",
     "    v = int(lin.get(\"model_version\", 1)) + 1", "    v = int(lin.get(\"model_version\", 1))",
     "update-model keeps the model version"),
    ("lineage-old-shapes-dropped", "online", "shapeprior/model/_lineage.py",
     "    out[\"shapes\"] = list(lin[\"shapes\"]) + [", "    out[\"shapes\"] = [] + [",
     "update-model forgets the lineage of the shapes it had"),
]

#: survivors that cannot be killed because they do not change behaviour
EQUIVALENT = {
    "ssc-overridden-invisible":
        "e is exactly 0 on weight-0 vertices in both solvers (L1: their threshold is "
        "infinite; L0: only visible vertices are trimmed), so '& visible' changes nothing; "
        "tests/test_ssc_weights.py::test_unseen_vertices_are_never_overridden pins the "
        "behaviour itself",
}


def _copy_tree(dst: Path):
    ignore = shutil.ignore_patterns(".git", ".venv", "cache", "__pycache__", "*.nbi", "*.nbc",
                                    ".shapeprior-staging")
    for name in ("shapeprior", "kernels", "tests", "bench", "data_samples"):
        shutil.copytree(REPO / name, dst / name, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", dst / "pyproject.toml")
    (dst / "shapeprior_kernels").symlink_to("kernels")


def _source(m, root=REPO):
    """The text of mutant ``m``'s file under ``root`` ("" when it is gone)."""
    f = Path(root) / m[2]
    return f.read_text() if f.is_file() else ""


def anchor_count(m, root=REPO):
    """How often mutant ``m``'s original text occurs in its file under ``root``
    (valid: exactly once)."""
    return _source(m, root).count(m[3])


def run_mutant(m, timeout):
    mid, module, rel, find, repl, why = m
    work = Path(tempfile.mkdtemp(prefix=f"mut-{mid}-"))
    try:
        _copy_tree(work)
        f = work / rel
        src = _source(m, work)
        n = src.count(find)
        if n != 1:
            return {"id": mid, "module": module, "status": "invalid",
                    "reason": f"original text found {n} times"}
        f.write_text(src.replace(find, repl))
        tests = [t for t in TESTS[module] if (work / t).is_file()]
        env = dict(os.environ, PYTHONPATH=str(work), NUMBA_CACHE_DIR=str(work / ".numba"))
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p",
                                "no:cacheprovider", "-m", "not slow", *tests], cwd=work, env=env,
                               capture_output=True, text=True, timeout=timeout)
            status = "survived" if p.returncode == 0 else "killed"
            tail = p.stdout.strip().splitlines()[-1:] if p.stdout else []
        except subprocess.TimeoutExpired:
            status, tail = "killed", ["timeout"]
        return {"id": mid, "module": module, "file": rel, "bug": why, "status": status,
                "tests": tests, "seconds": round(time.perf_counter() - t0, 1),
                "last_line": tail[0] if tail else ""}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None,
                    help="modules or mutant ids, comma-separated (default: all)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--out", default=str(RESULTS / "mutation.json"))
    a = ap.parse_args(argv)
    only = None if a.only is None else set(a.only.split(","))
    unknown = only - {m[0] for m in MUTANTS} - {m[1] for m in MUTANTS} if only else set()
    if unknown:
        ap.error(f"--only: no module or mutant {sorted(unknown)[0]!r}")
    todo = [m for m in MUTANTS if only is None or only & {m[0], m[1]}]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.jobs) as ex:
        rows = list(ex.map(lambda m: run_mutant(m, a.timeout), todo))
    for r in rows:
        if r["status"] == "survived" and r["id"] in EQUIVALENT:
            r["status"], r["equivalent_because"] = "equivalent", EQUIVALENT[r["id"]]
        print(f"{r['status']:10s} {r['id']:28s} {r.get('seconds', '')}", flush=True)
    valid = [r for r in rows if r["status"] in ("killed", "survived")]
    killed = sum(r["status"] == "killed" for r in valid)
    result = {"benchmark": "mutation", "machine": machine(), "n_mutants": len(rows),
              "n_valid": len(valid), "killed": killed,
              "score": killed / len(valid) if valid else None,
              "equivalent": [r for r in rows if r["status"] == "equivalent"],
              "survivors": [r for r in rows if r["status"] == "survived"],
              "invalid": [r for r in rows if r["status"] == "invalid"],
              "time_s": round(time.perf_counter() - t0, 1), "mutants": rows}
    write_json(a.out, result)
    print(f"score {killed}/{len(valid)} = {result['score']:.0%}; survivors: "
          f"{[r['id'] for r in result['survivors']]}")
    if result["invalid"]:
        print(f"invalid mutants (their original text moved or repeats): "
              f"{[r['id'] for r in result['invalid']]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
