"""Line-of-therapy engine on synthetic exposures: windows, class changes, substitutions, gaps, planning."""

from __future__ import annotations

import itertools
from datetime import date, timedelta

from fhirsvc.facts import MedicationExposure
from fhirsvc.fhir.concepts import Coding
from fhirsvc.lot.engine import Line, build_lines, drug_eras, regimen_keys
from fhirsvc.terminology.programs import LineSettings

CLASSES = {
    "efavirenz": "NNRTI",
    "dolutegravir": "INSTI",
    "raltegravir": "INSTI",
    "darunavir": "PI",
    "ritonavir": "booster",
    "cobicistat": "booster",
    "emtricitabine": "NRTI",
    "tenofovir disoproxil": "NRTI",
    "tenofovir alafenamide": "NRTI",
}
HIV = LineSettings(regimen_window_days=28, era_gap_days=90, new_line_on="class-change", ignore_classes=["booster"])
AS_OF = date(2026, 6, 1)
NOT_TOLERATED = Coding("http://snomed.info/sct", "407563006", "Treatment not tolerated")


def exposure(
    drugs: str, start: str, end: str | None = None, reasons: tuple[Coding, ...] = (), planned: bool = False
) -> MedicationExposure:
    return MedicationExposure(
        ref=f"MedicationStatement/{drugs.replace(' ', '-').replace('+', '-')}-{start}",
        drugs=frozenset(drugs.split("+")),
        start=date.fromisoformat(start),
        end=date.fromisoformat(end) if end else None,
        status="active" if end is None else "stopped",
        text=drugs,
        stop_reasons=reasons,
        planned=planned,
    )


def lines(*exposures: MedicationExposure, settings: LineSettings = HIV, as_of: date = AS_OF) -> list[Line]:
    eras = drug_eras(exposures, set(CLASSES), settings.era_gap_days)
    return build_lines(eras, regimen_keys(settings, CLASSES), settings, as_of, CLASSES)


def test_drugs_started_within_the_window_form_one_regimen() -> None:
    (line,) = lines(exposure("efavirenz", "2025-01-01"), exposure("emtricitabine+tenofovir disoproxil", "2025-01-20"))
    assert line.number == 1 and line.ongoing
    assert line.drugs == {"efavirenz", "emtricitabine", "tenofovir disoproxil"}


def test_a_new_class_after_the_window_starts_line_2_and_ends_line_1_on_the_switch_day() -> None:
    first, second = lines(
        exposure("efavirenz", "2024-01-01", "2025-01-10", (NOT_TOLERATED,)),
        exposure("emtricitabine+tenofovir disoproxil", "2024-01-01"),
        exposure("dolutegravir", "2025-01-10"),
    )
    assert (first.end, first.end_reason) == (date(2025, 1, 10), "not-tolerated")
    assert first.drugs == {"efavirenz", "emtricitabine", "tenofovir disoproxil"}
    assert second.start == date(2025, 1, 10) and second.ongoing
    assert second.drugs == {"dolutegravir", "emtricitabine", "tenofovir disoproxil"}


def test_same_class_substitution_stays_on_the_line() -> None:
    (line,) = lines(
        exposure("efavirenz", "2024-01-01"),
        exposure("emtricitabine+tenofovir disoproxil", "2024-01-01", "2025-03-01"),
        exposure("emtricitabine+tenofovir alafenamide", "2025-03-01"),
        exposure("raltegravir", "2024-01-01", "2024-06-01"),
        exposure("dolutegravir", "2024-06-01"),
    )
    assert line.number == 1 and line.ongoing


def test_adding_or_swapping_a_booster_is_not_a_class_change() -> None:
    (line,) = lines(
        exposure("darunavir+ritonavir", "2024-01-01", "2025-01-01"),
        exposure("darunavir+cobicistat", "2025-01-01"),
        exposure("emtricitabine+tenofovir alafenamide", "2024-01-01"),
    )
    assert line.ongoing and "cobicistat" in line.drugs


def test_a_short_overlap_when_switching_does_not_make_an_extra_line() -> None:
    result = lines(
        exposure("efavirenz+emtricitabine+tenofovir disoproxil", "2024-01-01", "2025-01-15"),
        exposure("dolutegravir+emtricitabine+tenofovir disoproxil", "2025-01-10"),
    )
    assert [line.number for line in result] == [1, 2]
    assert "efavirenz" not in result[1].drugs


def test_interruption_then_same_regimen_continues_the_line_without_a_gap_rule() -> None:
    (line,) = lines(
        exposure("dolutegravir+emtricitabine+tenofovir alafenamide", "2024-01-01", "2024-06-01"),
        exposure("dolutegravir+emtricitabine+tenofovir alafenamide", "2025-06-01"),
    )
    assert line.ongoing and line.start == date(2024, 1, 1)


def test_discontinuation_gap_when_configured_starts_a_new_line() -> None:
    oncology = LineSettings(
        regimen_window_days=28,
        era_gap_days=30,
        discontinuation_gap_days=120,
        new_line_on="drug-change",
        new_line_on_drop=False,
    )
    first, second = lines(
        exposure("dolutegravir", "2024-01-01", "2024-03-01"),
        exposure("dolutegravir", "2024-08-01"),
        settings=oncology,
    )
    assert (first.end, first.end_reason) == (date(2024, 3, 1), "discontinued")
    assert second.start == date(2024, 8, 1)


def test_everything_stopped_closes_the_last_line() -> None:
    (line,) = lines(exposure("efavirenz+emtricitabine+tenofovir disoproxil", "2024-01-01", "2025-01-01"))
    assert (line.end, line.end_reason) == (date(2025, 1, 1), "discontinued")


def test_exposures_after_as_of_are_ignored() -> None:
    result = lines(exposure("efavirenz", "2024-01-01"), exposure("dolutegravir", "2026-07-01"))
    assert len(result) == 1


def test_planned_therapy_with_a_new_class_is_a_planned_line() -> None:
    first, second = lines(
        exposure("efavirenz+emtricitabine+tenofovir disoproxil", "2024-01-01"),
        exposure("dolutegravir", AS_OF.isoformat(), planned=True),
    )
    assert second.planned and second.start == AS_OF and first.end == AS_OF


def test_refills_within_the_era_gap_merge() -> None:
    eras = drug_eras(
        [exposure("efavirenz", "2024-01-01", "2024-01-31"), exposure("efavirenz", "2024-04-15", "2024-05-15")],
        set(CLASSES),
        era_gap_days=90,
    )
    assert len(eras) == 1 and eras[0].end == date(2024, 5, 15)
    eras = drug_eras(
        [exposure("efavirenz", "2024-01-01", "2024-01-31"), exposure("efavirenz", "2024-01-31", None)],
        set(CLASSES),
        era_gap_days=0,
    )
    assert len(eras) == 1 and eras[0].end is None


def test_lines_are_ordered_and_do_not_overlap() -> None:
    start = date(2020, 1, 1)
    drugs = ["efavirenz", "dolutegravir", "darunavir+ritonavir", "efavirenz"]
    exposures = [
        exposure(
            f"{drug}+emtricitabine",
            (start + timedelta(days=200 * i)).isoformat(),
            (start + timedelta(days=200 * i + 199)).isoformat(),
        )
        for i, drug in enumerate(drugs)
    ]
    result = lines(*exposures)
    assert [line.number for line in result] == [1, 2, 3, 4]
    for before, after in itertools.pairwise(result):
        assert before.end is not None and before.end <= after.start


def test_drug_eras_put_exposures_in_order_themselves() -> None:
    """Refills of one drug as a server may page them (newest first): the era and its evidence are the same."""
    refills = [
        exposure("dolutegravir", "2025-01-01", "2025-03-31"),
        exposure("dolutegravir", "2025-04-01", "2025-06-30"),
        exposure("dolutegravir", "2025-07-01", "2025-09-30", (NOT_TOLERATED,)),
    ]
    (era,) = drug_eras(reversed(refills), set(CLASSES), HIV.era_gap_days)
    assert (era.start, era.end) == (date(2025, 1, 1), date(2025, 9, 30))
    assert era.refs == [e.ref for e in refills]
    assert era.stop_reasons == [NOT_TOLERATED]  # the last refill's reason, not the first one read
