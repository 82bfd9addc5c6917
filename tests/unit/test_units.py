"""Unit conversion: every eGFR unit spelling labs send reads as mL/min/1.73 m²; other quantities do not."""

from __future__ import annotations

import pytest

from fhirsvc.terminology.units import egfr


@pytest.mark.parametrize(
    "unit",
    [
        "mL/min/{1.73_m2}",
        "mL/min/1.73m2",
        "mL/min/1.73 m2",
        "ml/min/1.73m^2",
        "mL/min/1.73 m²",
        "mL/min/1.73m²",
        "mL/min/1.73 sq m",
        "mL/min/1.73sq.m",
        "mL/min/1.73 sqm",
        "mL/min per 1.73 m2",
        "mL/min/{1.73m2}",
        "ml/min/1,73 m2",
        "mL/min/(1.73 m2)",
        "mL/min",
        "",
        " ML/MIN/1.73M2 ",
    ],
)
def test_egfr_unit_spellings_read_as_the_canonical_unit(unit: str) -> None:
    assert egfr(4.0, unit, False) == 4.0


@pytest.mark.parametrize("unit", ["mL/s/1.73 m2", "mL/s/{1.73_m2}", "ml/sec/1.73m2"])
def test_si_egfr_converts_to_per_minute(unit: str) -> None:
    assert egfr(0.5, unit, False) == 30.0


@pytest.mark.parametrize("unit", ["mg/dL", "umol/L", "%", "mL/min/kg", "mL/h"])
def test_other_units_are_not_egfr(unit: str) -> None:
    assert egfr(60.0, unit, False) is None
