"""Per-stage wall time and peak resident memory.

:class:`StageClock` accumulates the wall time of named stages
(``with clock("search"): ...``). With ``rss=True`` a background thread
samples the process's resident set size every ``interval`` seconds and keeps
the highest value seen while each stage was running, so a stage's peak RSS
is measured, not inferred from the process-wide high-water mark.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``; elsewhere the
    peak from ``getrusage``, an upper bound)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import resource
        import sys

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(r if sys.platform == "darwin" else r * 1024)


class StageClock:
    """Wall time (s), call count and optional peak RSS (bytes) per stage.

    Parameters
    ----------
    rss : bool
        Sample the resident set size in a background thread.
    interval : float
        Sampling period in seconds.
    sync : callable, optional
        Called before each stage boundary is timed (e.g. a CUDA stream
        synchronise, so asynchronous GPU work is charged to its stage).
    """

    def __init__(self, rss=False, interval=0.002, sync=None):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.peak_rss: dict[str, int] = {}
        self._stack: list[str] = []
        self._sync = sync
        self._stop = None
        if rss:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
            self._thread.start()

    def _sample(self, interval):
        while not self._stop.is_set():
            stack = list(self._stack)
            if stack:
                r = current_rss_bytes()
                for name in stack:
                    if r > self.peak_rss.get(name, 0):
                        self.peak_rss[name] = r
            time.sleep(interval)

    @contextmanager
    def __call__(self, name):
        if self._sync is not None:
            self._sync()
        self._stack.append(name)
        if self._stop is not None:   # a stage shorter than the period still gets a sample
            r = current_rss_bytes()
            self.peak_rss[name] = max(self.peak_rss.get(name, 0), r)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self._sync is not None:
                self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            self.calls[name] = self.calls.get(name, 0) + 1
            if self._stop is not None:
                r = current_rss_bytes()
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), r)
            self._stack.remove(name)

    def close(self):
        """Stop the sampling thread (idempotent)."""
        if self._stop is not None:
            self._stop.set()
            self._thread.join()
            self._stop = None

    def as_dict(self):
        return {name: {"seconds": self.seconds[name], "calls": self.calls[name],
                       **({"peak_rss_mb": self.peak_rss[name] / 2**20}
                          if name in self.peak_rss else {})}
                for name in self.seconds}


class _NullClock:
    """Stand-in when no timing was asked for (no overhead beyond a call)."""

    @contextmanager
    def __call__(self, name):
        yield


NULL_CLOCK = _NullClock()
