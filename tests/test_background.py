"""Work overlapped on threads: hashes ahead of the manifest, the QC picture
beside the other writes, the smoothing split in slabs. Each must give what
the sequential code gives."""

import hashlib
import os
import threading
import time

import numpy as np
import pytest
from scipy import ndimage

from shapeprior._background import background
from shapeprior._provenance import FileDigests, sha256_file
from shapeprior.appearance._levels import gaussian_filter


@pytest.mark.parametrize("shape", [(40, 50, 60), (1, 600, 600), (600, 1, 500), (3, 2, 90000)])
@pytest.mark.parametrize("sigma", [(1.0, 2.0, 2.0), (0.0, 3.0, 1.5), (2.2, 0.5, 0.0)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_gaussian_filter_is_scipys_bit_for_bit(shape, sigma, threads, monkeypatch):
    import shapeprior.appearance._levels as levels

    monkeypatch.setattr(levels, "SMOOTH_SPLIT_VOXELS", 0)     # split even small arrays
    rng = np.random.default_rng(sum(shape))
    a = rng.normal(size=shape).astype(np.float32)
    ref = ndimage.gaussian_filter(a, sigma, truncate=4.0, mode="reflect")
    b = a.copy()
    out = gaussian_filter(b, sigma, threads=threads)
    assert out is b                                          # in place
    assert np.array_equal(b, ref)


def test_file_digests_match_and_skip_what_is_not_a_regular_file(tmp_path):
    files = []
    for i in range(3):
        f = tmp_path / f"f{i}.bin"
        f.write_bytes(os.urandom(100_000 * (i + 1)))
        files.append(f)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    d = FileDigests([*files, None, files[0], fifo, tmp_path / "missing"])
    for f in files:
        assert d.sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    assert time.perf_counter() - t0 < 5          # the FIFO was never opened (it would block)
    other = tmp_path / "later.bin"
    other.write_bytes(b"x")
    assert d.sha256(other) == sha256_file(other)  # not listed: hashed when asked
    with pytest.raises(FileNotFoundError):
        d.sha256(tmp_path / "missing")
    d.cancel()


def test_background_waits_and_raises():
    done = threading.Event()

    def slow():
        time.sleep(0.2)
        done.set()
        return 7

    with background(slow) as job:
        pass
    assert done.is_set() and job.result() == 7       # the block's end waited for it

    def broken():
        raise RuntimeError("picture failed")

    with pytest.raises(RuntimeError, match="picture failed"):
        with background(broken):
            pass
    finished = threading.Event()

    def slow_ok():
        time.sleep(0.2)
        finished.set()

    # the block's own error wins, and the job has finished before it propagates
    with pytest.raises(KeyError):
        with background(slow_ok):
            raise KeyError("write failed")
    assert finished.is_set()


def test_qc_centre_from_counts_is_the_voxel_centroid():
    from shapeprior.pipeline._qc import _centre_index

    rng = np.random.default_rng(5)
    for k in range(6):
        m = np.zeros((17, 23, 29), np.uint8)
        lo = rng.integers(0, 10, 3)
        hi = lo + rng.integers(1, 7, 3)
        m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1
        m[tuple(rng.integers(0, 17, 3))] = 1                 # a stray voxel off the block
        view = np.transpose(m, (2, 0, 1))[::-1, :, ::-1] if k % 2 else m
        want = np.argwhere(view).mean(0).round().astype(int)
        assert np.array_equal(_centre_index(view), want)
    assert np.array_equal(_centre_index(np.zeros((4, 6, 8), bool)), [2, 3, 4])


def test_single_threaded_limits_this_threads_helpers_and_restores():
    numba = pytest.importorskip("numba")
    from threadpoolctl import threadpool_info

    from shapeprior.appearance._levels import smooth_threads
    from shapeprior.backend import single_threaded, thread_budget

    before = numba.get_num_threads()
    assert thread_budget() is None
    with single_threaded():
        assert numba.get_num_threads() == 1 and thread_budget() == 1
        assert smooth_threads() == 1
        assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
        seen = []
        t = threading.Thread(target=lambda: seen.append(thread_budget()))
        t.start()
        t.join()
        assert seen == [None]                  # another thread keeps its own budget
    assert numba.get_num_threads() == before and thread_budget() is None


def test_file_digests_cancel_stops_a_long_hash(tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:               # sparse: 64 GiB that read as zeros
        f.truncate(64 << 30)
    d = FileDigests([big])
    time.sleep(0.05)
    t0 = time.perf_counter()
    d.cancel()
    for f in d._futures.values():
        f.result(timeout=5)                  # returns within a megabyte's read
    assert time.perf_counter() - t0 < 5


def test_qc_planes_cut_the_label_when_its_centroid_lies_between_two_organs():
    """Both kidneys of a paired refinement: the plane through the centroid along the
    left-right axis lies between them and would show nothing; the plane cutting
    most of the label is shown instead. Planes that cut it stay at the centroid."""
    from shapeprior.pipeline._qc import _centre_index

    m = np.zeros((20, 24, 60), bool)
    m[5:15, 6:18, 5:20] = True              # one organ
    m[4:16, 5:19, 40:52] = True             # the other, larger in cross-section
    c = _centre_index(m)
    assert m[:, :, c[2]].any() and 40 <= c[2] < 52
    want = np.argwhere(m).mean(0).round().astype(int)
    assert list(c[:2]) == list(want[:2])
