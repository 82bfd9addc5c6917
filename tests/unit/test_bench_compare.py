"""`python -m bench.compare`: ratios between two benchmark runs, with noise left unflagged."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bench.compare import main, rows


def run(eval_ms: float, rps: float, extra: dict[str, object] | None = None) -> dict[str, object]:
    return {
        "machine": {"commit": "abc", "loadavg_1m": 0.5},
        "in_process": {"1000": {"eval_ms": eval_ms}},
        "load": {"10": {"rps": rps}, "resources_per_call": 300},
        **(extra or {}),
    }


def test_faster_evaluation_and_more_requests_are_better() -> None:
    table = {row[0]: row for row in rows(run(40.0, 100.0), run(20.0, 150.0))}
    assert table["in_process[1000].eval_ms"][3:] == ["0.50", "better"]
    assert table["load[10].rps"][3:] == ["1.50", "better"]


def test_slower_is_worse_and_small_changes_are_noise() -> None:
    table = {row[0]: row for row in rows(run(20.0, 150.0), run(25.0, 140.0))}
    assert table["in_process[1000].eval_ms"][4] == "worse"
    assert table["load[10].rps"][4] == ""  # 0.93: within the machine's noise


def test_figures_missing_on_either_side_are_left_out() -> None:
    old = run(20.0, 150.0, {"population": {"1000": {"patients_per_s": 300.0}}})
    names = [row[0] for row in rows(old, run(20.0, 150.0))]
    assert names == ["in_process[1000].eval_ms", "load[10].rps"]  # no population, no scalar resources_per_call


def test_the_command_prints_both_commits_and_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_bytes(orjson.dumps(run(40.0, 100.0)))
    new.write_bytes(orjson.dumps(run(20.0, 100.0)))
    assert main([str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "old: commit abc" in out and "in_process[1000].eval_ms" in out and "better" in out
