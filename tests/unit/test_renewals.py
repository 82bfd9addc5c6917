"""Chronic orders: an active order covers a year, a renewal marked stopped without an end covers until the next one,
and the regimen a patient was switched from is still current the day before the switch (as Synthea writes it)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from fhirsvc.facts import MedicationExposure
from fhirsvc.fhir.concepts import Coding
from fhirsvc.lot.engine import drug_eras
from fhirsvc.lot.exposures import CoverageTable, program_exposures
from fhirsvc.terminology.knowledge import Knowledge
from fhirsvc.terminology.programs import Program

AS_OF = date(2026, 6, 1)
NOT_TOLERATED = Coding("http://snomed.info/sct", "407563006", "Treatment not tolerated")


def order(drug: str, start: date, status: str = "stopped", reasons: tuple[Coding, ...] = ()) -> MedicationExposure:
    end = start if status in ("stopped", "completed") else None
    return MedicationExposure(f"MedicationRequest/{drug}-{start}", frozenset({drug}), start, end, status, drug, reasons)


def hiv(knowledge: Knowledge) -> tuple[Program, dict[str, str], CoverageTable]:
    program = next(p for p in knowledge.programs if p.id == "hiv")
    classes = knowledge.program_drugs(program)
    assert program.lines.coverage is not None
    table = CoverageTable(program.lines.coverage, classes)
    assert table.renewal_days == 400
    return program, classes, table


def eras_of(
    knowledge: Knowledge, records: list[MedicationExposure], as_of: date = AS_OF
) -> list[tuple[str, date, date | None]]:
    program, classes, table = hiv(knowledge)
    records = sorted(records, key=lambda e: (e.start, e.ref))
    kept, ends, _ = program_exposures(records, program, classes, as_of, table)
    eras = drug_eras(kept, classes.keys(), program.lines.era_gap_days, ends=ends)
    return [(e.drug, e.start, e.end) for e in eras]


@pytest.mark.parametrize(("days", "current"), [(395, True), (396, False)])
def test_an_active_order_without_supply_covers_a_year_and_its_grace(
    knowledge: Knowledge, days: int, current: bool
) -> None:
    """365 days of cover plus 30 of grace: an order renewed on the 395th day is on time, not on the 396th."""
    authored = AS_OF - timedelta(days=days)
    (era,) = eras_of(knowledge, [order("dolutegravir", authored, status="active")])
    assert (era[2] is None) is current
    if not current:
        assert era[2] == authored + timedelta(days=364)


@pytest.mark.parametrize(("gap", "one_era"), [(371, True), (400, True), (401, False)])
def test_a_renewal_marked_stopped_covers_until_the_next_one(knowledge: Knowledge, gap: int, one_era: bool) -> None:
    first = date(2020, 1, 1)
    second = first + timedelta(days=gap)
    records = [order("dolutegravir", first), order("dolutegravir", second, status="active")]
    eras = eras_of(knowledge, records, as_of=second + timedelta(days=30))
    ongoing = second + timedelta(days=364)  # the active renewal covers its year
    if one_era:
        assert eras == [("dolutegravir", first, ongoing)]
    else:
        assert [(e[1], e[2]) for e in eras] == [(first, first), (second, ongoing)]


def test_a_recorded_stop_reason_is_a_real_stop(knowledge: Knowledge) -> None:
    first = date(2020, 1, 1)
    records = [order("dolutegravir", first, reasons=(NOT_TOLERATED,)), order("dolutegravir", date(2020, 7, 1))]
    assert next(e[2] for e in eras_of(knowledge, records)) == first


def test_the_regimen_switched_from_is_current_until_the_switch(knowledge: Knowledge) -> None:
    """The last renewal of the old regimen bridges to the first record of the new one, not beyond it."""
    switch = date(2021, 3, 10)
    records = [
        order("efavirenz", date(2020, 1, 1)),
        order("efavirenz", date(2020, 6, 1)),
        order("dolutegravir", switch, status="active"),
    ]
    eras = eras_of(knowledge, records)
    assert ("efavirenz", date(2020, 1, 1), switch - timedelta(days=1)) in eras


def test_same_day_records_bridge_to_the_next_day_with_a_record(knowledge: Knowledge) -> None:
    day = date(2020, 1, 1)
    renewal = day + timedelta(days=200)
    records = [order("efavirenz", day), order("emtricitabine", day), order("efavirenz", renewal, status="active")]
    eras = eras_of(knowledge, records, as_of=renewal + timedelta(days=30))
    assert ("efavirenz", day, renewal + timedelta(days=364)) in eras
    assert ("emtricitabine", day, renewal - timedelta(days=1)) in eras
