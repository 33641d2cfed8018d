#!/usr/bin/env python3
"""Keeps README.md's result tables identical to the files that hold them.

README.md marks each quoted result file with a pair of comments:

    <!-- results: docs/results/bench.md -->
    ...the file's content, verbatim...
    <!-- /results -->

`python3 scripts/readme_results.py` rewrites every marked block with the current content of its file (run it after
`scripts/results.sh`); `--check` only compares, and exits 1 naming every block that differs or whose file is missing
(CI runs it, so a table cannot drift from the file that a command wrote). Standard library only.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"(<!-- results: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare only; exit 1 if a block differs from its file")
    p.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    a = p.parse_args()
    with open(a.readme, encoding="utf-8") as f:
        text = f.read()
    problems: list[str] = []
    count = 0

    def replace(m: re.Match) -> str:
        nonlocal count
        count += 1
        path = os.path.join(ROOT, m.group("path"))
        if not os.path.isfile(path):
            problems.append(f"{m.group('path')}: the file is missing")
            return m.group(0)
        with open(path, encoding="utf-8") as f:
            content = f.read()
        if not content.endswith("\n"):
            content += "\n"
        if content != m.group("body"):
            problems.append(f"{m.group('path')}: README's block differs from the file")
        return m.group(1) + content + m.group(4)

    updated = BLOCK.sub(replace, text)
    if a.check:
        for problem in problems:
            print(f"README.md: {problem}", file=sys.stderr)
        print(f"{count} result blocks checked, {len(problems)} out of date")
        return 1 if problems else 0
    missing = [p for p in problems if "missing" in p]
    for problem in missing:
        print(f"README.md: {problem}", file=sys.stderr)
    if updated != text:
        with open(a.readme, "w", encoding="utf-8") as f:
            f.write(updated)
    print(f"{count} result blocks, {len(problems) - len(missing)} rewritten")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
