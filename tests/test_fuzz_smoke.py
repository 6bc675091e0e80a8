"""A small run of the reader fuzzer (``bench/fuzz_readers.py``) in CI: mutated
real NIfTI, DICOM and model files, and structure sets and DICOM-SEGs written on the
shared DICOM series, never crash, hang or return a bad volume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "fuzz_readers.py"


@pytest.mark.slow
def test_reader_fuzz_smoke(data_root, tmp_path):
    out = tmp_path / "fuzz.json"
    env = dict(os.environ, SHAPEPRIOR_DATA=str(data_root))
    p = subprocess.run([sys.executable, str(BENCH), "--n", "100", "--seed", "7",
                        "--out", str(out)], capture_output=True, text=True, env=env,
                       timeout=600)
    r = json.loads(out.read_text())
    assert r["totals"]["crash"] == 0 and r["totals"]["hang"] == 0, r["problems"][:5]
    assert r["totals"]["refused"] > 30 and r["totals"]["read"] > 10   # both paths exercised
    assert all(sum(r["counts"][f].values()) > 0 for f in ("dicom", "rtstruct", "seg"))
    assert p.returncode == 0, p.stderr[-2000:]
