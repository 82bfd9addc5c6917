"""`python -m bench.compare OLD.json NEW.json`: two `python -m bench --json` files side by side, with ratios."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from bench.report import _table

# (section, figure, True when higher is better): the figures worth following between commits.
FIGURES = (
    ("in_process", "eval_ms", False),
    ("in_process", "orjson_floor_ms", False),
    ("load", "rps", True),
    ("load", "p99_ms", False),
    ("population", "patients_per_s", True),
    ("population", "floor_ratio", False),
    ("population", "evaluate_patients_per_s", True),
    ("population", "evaluate_peak_rss_mb", False),
    ("population", "peak_rss_mb", False),
)
NOISE = 0.10  # a shared machine moves figures by about this much between runs: smaller changes are not flagged


def rows(old: dict[str, Any], new: dict[str, Any]) -> Iterator[list[str]]:
    """One row per figure present in both files: where, old, new, new/old, and whether it got better or worse."""
    for section, figure, higher_is_better in FIGURES:
        before, after = old.get(section) or {}, new.get(section) or {}
        for key in sorted(set(before) & set(after), key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0)):
            if not (isinstance(before[key], dict) and isinstance(after[key], dict)):
                continue
            was, now = before[key].get(figure), after[key].get(figure)
            if not isinstance(was, int | float) or not isinstance(now, int | float) or was == 0:
                continue
            ratio = now / was
            better = ratio > 1 + NOISE if higher_is_better else ratio < 1 - NOISE
            worse = ratio < 1 - NOISE if higher_is_better else ratio > 1 + NOISE
            verdict = "better" if better else "worse" if worse else ""
            yield [f"{section}[{key}].{figure}", f"{was:,.2f}", f"{now:,.2f}", f"{ratio:.2f}", verdict]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args(argv)
    old, new = orjson.loads(args.old.read_bytes()), orjson.loads(args.new.read_bytes())
    for label, figures in (("old", old), ("new", new)):
        machine = figures.get("machine", {})
        print(f"{label}: commit {machine.get('commit', '?')}, load average {machine.get('loadavg_1m', '?')}")
    table = list(rows(old, new))
    print(_table(["figure", "old", "new", "new/old", ""], table) if table else "no figure in common")
    return 0


if __name__ == "__main__":
    sys.exit(main())
