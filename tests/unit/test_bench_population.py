"""`bench.population`: the embedded engine measured against the orjson parse floor, and its targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.population import ChildRun, PopulationResult, measure_population
from bench.report import population_table, population_targets


def result(patients: int, seconds: float, floor_s: float, peak_kb: int = 50_000) -> PopulationResult:
    return PopulationResult(
        patients,
        patients * 40,
        patients * 20_000,
        ChildRun(seconds, peak_kb),
        ChildRun(seconds * 1.1, peak_kb),
        floor_s,
        patients // 2,
    )


def test_targets_are_the_engine_throughput_its_floor_ratio_and_flat_memory() -> None:
    targets = {t.name: t for t in population_targets([result(1_000, 1.0, 0.06), result(10_000, 4.0, 0.55, 60_000)])}
    assert targets["patients/s at 10,000 patients"].value == 2_500
    assert targets["patients/s at 10,000 patients"].met
    assert targets["population/orjson floor at 10,000 patients"].value == pytest.approx(4.0 / 0.55)
    assert targets["population/orjson floor at 10,000 patients"].met
    assert targets["evaluate peak RSS 10,000 / 1,000 patients"].met


def test_a_slow_engine_misses_both_throughput_targets() -> None:
    (throughput, ratio) = population_targets([result(10_000, 6.2, 0.55)])
    assert not throughput.met and not ratio.met  # 1,613 patients/s, 11.3x the floor


def test_the_table_shows_the_floor_and_evaluate_beside_the_engine() -> None:
    table = population_table(result(1, 0.5, 0.001), [result(10_000, 4.0, 0.5)])
    assert "of floor" in table and "8.0x" in table and "evaluate patients/s" in table


def test_a_small_population_is_measured_end_to_end(tmp_path: Path) -> None:
    measured = measure_population(3, tmp_path)
    assert measured.patients == 3 and measured.resources > 3
    assert measured.floor_s > 0 and measured.engine.seconds > 0 and measured.evaluate.seconds > 0
    assert measured.as_json()["rows"] == measured.rows  # the worklist's rows, checked against its summary
    assert measured.as_json()["floor_ratio"] > 1
