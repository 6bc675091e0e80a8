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


@pytest.mark.parametrize("m", mutation.MUTANTS, ids=[m[0] for m in mutation.MUTANTS])
def test_mutated_code_still_compiles(m):
    """A mutant that leaves a syntax error (a block's only line replaced by
    nothing) is 'killed' by every test without testing the bug it stands for
    (round 44's first reconstruct-triangles-unchecked, killed in 3 s)."""
    src = mutation._source(m)
    if not m[2].endswith(".py") or mutation.anchor_count(m) != 1:
        return          # not Python, or reported by the anchor test
    compile(src.replace(m[3], m[4]), m[2], "exec")


def test_mutant_ids_are_unique():
    ids = [m[0] for m in mutation.MUTANTS]
    assert len(ids) == len(set(ids))


def test_each_test_key_is_defined_once():
    """A key written twice in ``TESTS`` silently replaces the first one's test
    files (round 43's first run: a second 'safety' key sent six mutants to
    tests that never looked at them)."""
    import ast

    tree = ast.parse((BENCH / "mutation.py").read_text(encoding="utf-8"))
    found = [n for n in ast.walk(tree) if isinstance(n, ast.Assign)
             and any(getattr(t, "id", None) == "TESTS" for t in n.targets)]
    assert len(found) == 1
    keys = [k.value for k in found[0].value.keys]
    assert len(keys) == len(set(keys)), sorted(k for k in set(keys) if keys.count(k) > 1)


def test_recheck_runs_each_survivor_against_the_whole_suite(tmp_path, monkeypatch):
    """``--recheck``: a mutant its module's tests miss is run again against the
    whole suite, and the JSON says whether a test elsewhere catches it; a killed
    mutant is not run again."""
    import json

    calls = []

    def fake(m, timeout, whole_suite=False):
        calls.append((m[0], whole_suite))
        caught = m[0] == "data-sizes-unchecked" or whole_suite and m[0] == "build-channel-name"
        return {"id": m[0], "module": m[1], "status": "killed" if caught else "survived",
                "last_line": "1 failed" if caught else "9 passed"}

    monkeypatch.setattr(mutation, "run_mutant", fake)
    out = tmp_path / "m.json"
    ids = "build-channel-name,build-side-option-ignored,data-sizes-unchecked"
    assert mutation.main(["--only", ids, "--recheck", "--jobs", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["killed"] == 1 and {r["id"]: r["whole_suite"] for r in res["survivors"]} == {
        "build-channel-name": "killed", "build-side-option-ignored": "survived"}
    assert sorted(i for i, whole in calls if whole) == [
        "build-channel-name", "build-side-option-ignored"]


def test_a_run_of_equivalent_mutants_alone_reports_no_score(tmp_path, monkeypatch, capsys):
    """Only equivalent mutants (e.g. rechecking one): no valid mutant, so no
    score; the run still writes its JSON and ends normally."""
    import json

    def fake(m, timeout, whole_suite=False):
        return {"id": m[0], "module": m[1], "status": "survived", "last_line": "9 passed"}

    monkeypatch.setattr(mutation, "run_mutant", fake)
    out = tmp_path / "m.json"
    assert mutation.main(["--only", "ssc-overridden-invisible", "--recheck", "--jobs", "1",
                          "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["score"] is None and res["n_valid"] == 0
    assert res["equivalent"][0]["whole_suite"] == "survived"
    assert "score 0/0 = n/a" in capsys.readouterr().out


def test_the_readme_counts_the_mutants_and_runs():
    """The README's account of mutation testing states how many mutants the
    script holds and how many runs' JSON are committed (it said 633 and 87
    while the script held 788 and 130 files lay in bench/results)."""
    import re

    text = (BENCH.parent / "README.md").read_text(encoding="utf-8")
    said = re.search(r"applies (\d+) plausible one-line bugs", text)
    assert said and int(said.group(1)) == len(mutation.MUTANTS), said
    runs = re.search(r"`bench/results/mutation\*\.json` \((\d+) runs\)", text)
    assert runs and int(runs.group(1)) == len(list((BENCH / "results").glob("mutation*.json")))
