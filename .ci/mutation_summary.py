"""Summarise a ``mutmut run`` (``make mutation``): per mutated file, how many mutants the tests
killed, how many survived, how many no selected test reaches; exit 1 when 10 % or more of the
reached mutants survive.

Reads mutmut's own result files (``mutants/**/*.py.meta``: JSON with ``exit_code_by_key``, the exit
code of the test run of each mutant: 1 or 3 killed, 0 survived, 33 or 5 no tests, 36/24/-24/152/255
timeout, None not yet checked). Usage: ``python .ci/mutation_summary.py [--max-survival 10]``;
``mutmut results`` lists the survivors by name and ``mutmut show NAME`` prints one as a diff.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1, 3}
SURVIVED = {0}
NO_TESTS = {5, 33}
TIMEOUT = {36, 24, -24, 152, 255}


def classify(code: int | None) -> str:
    """mutmut's verdict for one exit code (a timeout counts as killed: the mutant hung the tests)."""
    if code is None:
        return "not checked"
    if code in KILLED or code in TIMEOUT:
        return "killed"
    if code in SURVIVED:
        return "survived"
    if code in NO_TESTS:
        return "no tests"
    return "other"


def summarise(root: Path) -> dict[str, Counter]:
    """Per source file (path under ``root``, without ``.meta``): a Counter of verdicts."""
    out: dict[str, Counter] = {}
    for meta in sorted(root.rglob("*.py.meta")):
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        if codes:
            out[str(meta.relative_to(root))[: -len(".meta")]] = Counter(classify(c) for c in codes.values())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", default="mutants", help="mutmut's work folder (default: mutants)")
    ap.add_argument("--max-survival", type=float, default=10.0,
                    help="fail when this percentage or more of the reached mutants survive")
    a = ap.parse_args(argv)
    per_file = summarise(Path(a.mutants))
    if not per_file:
        print(f"{a.mutants}: no mutmut results; run `make mutation` first", file=sys.stderr)
        return 2
    cols = ("killed", "survived", "no tests", "not checked")
    print(f"{'file':48s} {'mutants':>7s} " + " ".join(f"{c:>11s}" for c in cols) + f" {'survival':>8s}")
    total = Counter()
    for path, c in per_file.items():
        total += c
        reached = c["killed"] + c["survived"]
        rate = 100.0 * c["survived"] / reached if reached else 0.0
        print(f"{path:48s} {sum(c.values()):7d} " + " ".join(f"{c[k]:11d}" for k in cols)
              + f" {rate:7.1f}%")
    reached = total["killed"] + total["survived"]
    rate = 100.0 * total["survived"] / reached if reached else 0.0
    print(f"{'total':48s} {sum(total.values()):7d} " + " ".join(f"{total[k]:11d}" for k in cols)
          + f" {rate:7.1f}%")
    # the stricter figure: a mutant no selected test reaches counts as a survivor
    strict = 100.0 * (total["survived"] + total["no tests"]) / max(reached + total["no tests"], 1)
    print(json.dumps({"mutants": sum(total.values()), **{k.replace(" ", "_"): total[k] for k in cols},
                      "survival_pct": round(rate, 2), "survival_with_unreached_pct": round(strict, 2)}))
    if total["not checked"]:
        print(f"{total['not checked']} mutants were not checked: the run did not finish", file=sys.stderr)
        return 1
    if rate >= a.max_survival:
        print(f"{rate:.1f} % of the mutants the tests reach survive (limit {a.max_survival:g} %): "
              "`mutmut results` lists them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
