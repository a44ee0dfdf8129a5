"""`.ci/mutation_summary.py` (what `make mutation` prints): verdicts per file from mutmut's meta
files, the survival rate over the mutants the tests reach, the 10 % gate."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("mutation_summary", ROOT / ".ci" / "mutation_summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _meta(root: Path, rel: str, codes: dict) -> None:
    path = root / (rel + ".meta")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"exit_code_by_key": codes}))


def test_counts_rate_and_gate(tmp_path, capsys):
    s = _load()
    # a.py: 7 killed (1, 3, a timeout), 1 survived, 2 no tests; b.py: 1 killed, 1 survived
    _meta(tmp_path, "src/p/a.py", {**{f"a{i}": 1 for i in range(5)}, "a5": 3, "a6": 36,
                                   "a7": 0, "a8": 33, "a9": 5})
    _meta(tmp_path, "src/p/b.py", {"b0": 1, "b1": 0})
    _meta(tmp_path, "src/p/empty.py", {})
    rc = s.main(["--mutants", str(tmp_path), "--max-survival", "25"])
    out = capsys.readouterr().out
    last = json.loads(out.strip().splitlines()[-1])
    # reached = 8 killed + 2 survived; 2 / 10 = 20 % < 25 %; with the unreached: 4 / 12
    assert last == {"mutants": 12, "killed": 8, "survived": 2, "no_tests": 2, "not_checked": 0,
                    "survival_pct": 20.0, "survival_with_unreached_pct": 33.33}
    assert rc == 0
    assert "src/p/b.py" in out and "50.0%" in out and "empty.py" not in out
    assert s.main(["--mutants", str(tmp_path), "--max-survival", "20"]) == 1  # 20 % is not < 20 %


def test_unfinished_and_missing_runs_fail(tmp_path, capsys):
    s = _load()
    assert s.main(["--mutants", str(tmp_path / "none")]) == 2
    assert "run `make mutation` first" in capsys.readouterr().err
    _meta(tmp_path, "x.py", {"k": 1, "n": None})
    assert s.main(["--mutants", str(tmp_path)]) == 1
    assert "1 mutants were not checked" in capsys.readouterr().err


@pytest.mark.parametrize("code,verdict", [(1, "killed"), (3, "killed"), (36, "killed"), (0, "survived"),
                                          (33, "no tests"), (5, "no tests"), (None, "not checked"),
                                          (34, "other")])
def test_verdicts(code, verdict):
    assert _load().classify(code) == verdict
