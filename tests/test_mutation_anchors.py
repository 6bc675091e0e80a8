"""The mutation benchmark's mutants still apply to the code.

``bench/mutation.py`` plants each mutant by replacing an original text that
must occur exactly once in its file; code moved or duplicated since leaves a
mutant invalid, and the bug it stands for silently untested.
"""

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import mutation  # noqa: E402

sys.path.remove(str(BENCH))


@pytest.mark.parametrize("m", mutation.MUTANTS, ids=[m[0] for m in mutation.MUTANTS])
def test_mutant_text_occurs_once(m):
    assert mutation.anchor_count(m) == 1, (
        f"mutant {m[0]}: its original text occurs {mutation.anchor_count(m)} times in {m[2]}")
    assert m[3] != m[4], f"mutant {m[0]} changes nothing"
    assert m[1] in mutation.TESTS, f"mutant {m[0]}: no tests listed for module {m[1]}"


def test_mutant_ids_are_unique():
    ids = [m[0] for m in mutation.MUTANTS]
    assert len(ids) == len(set(ids))
