"""`python -m bench.turns`: two checkouts measured in turns, medians over rounds, new/old."""

from __future__ import annotations

from bench.turns import REPO, command, medians, ratios


def test_medians_are_taken_per_figure_over_the_rounds() -> None:
    runs = [{"a": 1.0, "b": 10.0}, {"a": 3.0, "b": 30.0}, {"a": 2.0, "b": 20.0}]
    assert medians(runs) == {"a": 2.0, "b": 20.0}


def test_ratios_are_new_over_old_for_the_figures_both_have() -> None:
    assert ratios({"a": 2.0, "b": 4.0, "gone": 1.0}, {"a": 1.0, "b": 5.0}) == {"a": 0.5, "b": 1.25}


def test_a_command_reports_its_wall_and_cpu_seconds() -> None:
    wall, cpu = command(REPO, ["--help"], timeout_s=120)
    assert wall > 0 and 0 < cpu < wall * 2
