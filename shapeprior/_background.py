"""One job on a background thread while the caller carries on.

Output writing overlaps the QC picture (Matplotlib's PNG encoding and NumPy
release the GIL) with the label, mesh and report writes.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor


@contextlib.contextmanager
def background(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` on a thread while the ``with`` block runs.

    The block's exit waits for the job, so nothing it writes outlives the
    block (a failed run discards its staging folder only afterwards). The
    job's exception is raised at the end of the block; an exception of the
    block itself takes precedence. Yields the job's future.
    """
    pool = ThreadPoolExecutor(1, thread_name_prefix="shapeprior-background")
    job = pool.submit(fn, *args, **kwargs)
    try:
        yield job
    finally:
        pool.shutdown(wait=True)
    job.result()


__all__ = ["background"]
