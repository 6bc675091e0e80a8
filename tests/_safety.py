"""Helpers of the data-safety tests: the state of a file tree, leftovers of a run,
and the CLI in a child process (for kills and signals)."""

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

LEFTOVER_MARKS = (".shapeprior-staging", ".tmp", ".old")


def tree_state(*roots):
    """{path: sha256 or 'dir'} of everything under ``roots`` (hidden files too)."""
    out = {}
    for r in roots:
        r = Path(r)
        if r.is_file():
            out[str(r)] = hashlib.sha256(r.read_bytes()).hexdigest()
            continue
        for dirpath, dirs, files in os.walk(os.fsencode(r)):
            for d in dirs:
                out[os.path.join(dirpath, d)] = "dir"
            for f in files:
                p = os.path.join(dirpath, f)
                if not os.path.isfile(p):           # a named pipe is never opened here
                    out[p] = "special"
                    continue
                with open(p, "rb") as fh:
                    out[p] = hashlib.sha256(fh.read()).hexdigest()
    return out


def leftovers(root):
    """Staging folders and temporary files anywhere under ``root``."""
    bad = []
    for dirpath, dirs, files in os.walk(os.fsencode(root)):
        for n in dirs + files:
            s = n.decode("utf-8", "backslashreplace")
            if any(m in s for m in LEFTOVER_MARKS):
                bad.append(os.path.join(dirpath, n))
    return bad


def _subprocess(args, env=None, timeout=300):
    e = {k: v for k, v in os.environ.items() if k != "SHAPEPRIOR_TEST_KILL_AT"}
    e.update(env or {})
    # a background job inherits SIGINT ignored, and Python then keeps it ignored:
    # the child gets the default disposition, as from an interactive shell
    p = subprocess.run([sys.executable, "-m", "shapeprior.cli", *args], capture_output=True,
                       env=e, timeout=timeout,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
