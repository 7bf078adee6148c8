"""Per-module mutation score from mutmut's results in mutants/ (run by scripts/mutation after ``mutmut run``).

Prints a Markdown table: module, mutants, killed, survived, no test, timeout, score. Score = killed (timeouts
count as killed: the mutant hung the tests) / mutants that some test ran. "No test" mutants sit in code no
selected fast test reaches; they are listed, not scored.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1, 3}  # pytest failed / internal error
SURVIVED = {0}
NO_TESTS = {5, 33}
TIMEOUT = {-24, 24, 152, 255, 36}


def module_counts(meta: Path) -> Counter[str]:
    codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
    counts: Counter[str] = Counter(total=len(codes))
    for code in codes.values():
        if code in KILLED:
            counts["killed"] += 1
        elif code in SURVIVED:
            counts["survived"] += 1
        elif code in NO_TESTS:
            counts["no tests"] += 1
        elif code in TIMEOUT:
            counts["timeout"] += 1
        else:
            counts["other"] += 1  # not checked, suspicious, segfault
    return counts


def main(root: Path = Path("mutants")) -> int:
    metas = sorted(root.rglob("*.py.meta"))
    if not metas:
        print(f"no mutmut results under {root}/; run scripts/mutation first", file=sys.stderr)
        return 1
    print("| module | mutants | killed | survived | no test | timeout | score |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for meta in metas:
        c = module_counts(meta)
        ran = c["killed"] + c["survived"] + c["timeout"]
        score = f"{100 * (c['killed'] + c['timeout']) / ran:.0f} %" if ran else "-"
        module = meta.relative_to(root).as_posix().removesuffix(".meta")
        print(f"| `{module}` | {c['total']} | {c['killed']} | {c['survived']} | {c['no tests']} "
              f"| {c['timeout']} | {score} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
