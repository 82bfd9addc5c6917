"""The invariant checks themselves, on a bundled fixture changed one fact at a time (no Synthea, no Java)."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

from fhirsvc.record.model import RecordBuilder
from fhirsvc.terminology.knowledge import Knowledge
from tests.conftest import load_fixture
from tests.synthea import invariants

AS_OF = date(2026, 6, 1)  # the fixture's line starts 2025-06-01 (statements, no end): 365 days of evidence age


def outcome_of(bundle: dict[str, Any], knowledge: Knowledge, as_of: date = AS_OF) -> invariants.PatientOutcome:
    builder = RecordBuilder()
    builder.add_bundle(bundle)
    (record,) = builder.build()
    return invariants.evaluate(record, knowledge, as_of)


def failing_patient(**patient: object) -> dict[str, Any]:
    bundle = copy.deepcopy(load_fixture("hiv/fail-basic.json"))
    bundle["entry"][0]["resource"].update(patient)
    return bundle


def test_the_unchanged_fixture_breaks_no_invariant(knowledge: Knowledge) -> None:
    outcome = outcome_of(failing_patient(), knowledge)
    assert outcome.findings, "the fixture must give a card for the checks below to mean anything"
    assert invariants.check_all(outcome) == []


def test_a_card_for_a_patient_dead_on_or_before_the_as_of_date_is_a_violation(knowledge: Knowledge) -> None:
    """The check itself: cards computed for the living patient, then the death recorded on the same record."""
    for death in (
        {"deceasedDateTime": "2026-06-01T08:00:00Z"},
        {"deceasedDateTime": "2026-04-01"},
        {"deceasedBoolean": True},
    ):
        outcome = outcome_of(failing_patient(), knowledge)
        assert outcome.findings
        (patient,) = outcome.record.of_type("Patient")
        patient.update(death)
        violations = invariants.check_dead(outcome)
        assert {v.invariant for v in violations} == {"card-for-dead-patient"}, death


def test_the_product_gives_no_card_to_a_patient_dead_by_the_as_of_date(knowledge: Knowledge) -> None:
    for died in ("2026-06-01T08:00:00Z", "2026-04-01"):
        outcome = outcome_of(failing_patient(deceasedDateTime=died), knowledge)
        assert outcome.findings == [] and invariants.check_dead(outcome) == [], died


def test_death_after_the_as_of_date_or_a_false_flag_is_no_violation(knowledge: Knowledge) -> None:
    assert not invariants.check_dead(outcome_of(failing_patient(deceasedDateTime="2026-06-02"), knowledge))
    assert not invariants.check_dead(outcome_of(failing_patient(deceasedBoolean=False), knowledge))


def test_a_line_is_stale_one_day_past_its_allowance_without_evidence(knowledge: Knowledge) -> None:
    allowance = invariants.STALE_AFTER_DAYS
    on_time = date(2025, 6, 1) + timedelta(days=allowance)
    assert not invariants.check_stale_lines(outcome_of(failing_patient(), knowledge, on_time))
    stale = invariants.check_stale_lines(outcome_of(failing_patient(), knowledge, on_time + timedelta(days=1)))
    assert [v.invariant for v in stale] == ["stale-line"]
    assert f"2025-06-01 ({allowance + 1} days before as-of); alive" in stale[0].detail


def test_an_order_counts_until_its_repeats_run_out() -> None:
    request = {
        "resourceType": "MedicationRequest",
        "authoredOn": "2024-01-01",
        "dispenseRequest": {"numberOfRepeatsAllowed": 5, "expectedSupplyDuration": {"value": 30, "code": "d"}},
    }
    assert invariants.last_evidence(request, AS_OF) == date(2024, 6, 29)  # 6 fills of 30 days
    assert invariants.last_evidence(request, date(2024, 2, 1)) == date(2024, 2, 1)
    assert invariants.last_evidence({**request, "dispenseRequest": {}}, AS_OF) == date(2024, 1, 1)


def test_card_evidence_must_resolve_and_lie_in_the_rule_window(knowledge: Knowledge) -> None:
    outcome = outcome_of(failing_patient(), knowledge)
    card, failure = next((c, a) for c, a in outcome.findings if a.rule == "hiv-virologic-failure")
    assert failure.line is not None
    before_line = replace(failure.measurements[0], date=failure.line.start - timedelta(days=1))
    outcome.findings = [(card, replace(failure, measurements=[before_line, *failure.measurements[1:]]))]
    assert [v.invariant for v in invariants.check_evidence(outcome)] == ["evidence-outside-window"]
    outcome.findings = [(card, replace(failure, evidence=[*failure.evidence, "Observation/not-in-this-record"]))]
    assert [v.invariant for v in invariants.check_evidence(outcome)] == ["evidence-unresolved"]


def test_a_crash_is_reported_not_raised(knowledge: Knowledge) -> None:
    outcome = outcome_of(failing_patient(), knowledge)
    broken = invariants.evaluate(outcome.record, None, AS_OF)  # type: ignore[arg-type]
    assert broken.result is None
    assert [v.invariant for v in invariants.check_all(broken)] == ["crash"]


def administered(*days: str, stated_end: str | None = None) -> dict[str, Any]:
    """The fixture's regimen as infusion-like administrations on `days` (or statements that state their end)."""
    bundle = failing_patient()
    statements = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "MedicationStatement"]
    bundle["entry"] = [e for e in bundle["entry"] if e not in statements]
    for entry in statements:
        statement = entry["resource"]
        if stated_end:
            statement.update(status="completed", effectivePeriod={"start": "2025-06-01", "end": stated_end})
            bundle["entry"].append(entry)
            continue
        for number, day in enumerate(days):
            administration = {
                "resourceType": "MedicationAdministration",
                "id": f"{statement['id']}-{number}",
                "status": "completed",
                "subject": statement["subject"],
                "medicationCodeableConcept": statement["medicationCodeableConcept"],
                "effectiveDateTime": day,
            }
            bundle["entry"].append({"fullUrl": f"urn:uuid:{administration['id']}", "resource": administration})
    return bundle


def test_a_line_ended_within_the_longest_dosing_interval_is_reported(knowledge: Knowledge) -> None:
    days = ("2025-06-01", "2025-09-01", "2025-12-01", "2026-03-01")
    outcome = outcome_of(administered(*days), knowledge)
    program = outcome.program("hiv")
    assert program is not None and program.lines and program.lines[-1].end is not None
    found = invariants.check_ended_early(outcome)
    assert [v.invariant for v in found] == ["line-ended-within-dosing-interval"]
    assert "2026-03-01, 92 days before as-of" in found[0].detail


def test_a_stated_end_or_a_long_pause_is_no_early_end(knowledge: Knowledge) -> None:
    assert not invariants.check_ended_early(outcome_of(administered(stated_end="2026-05-01"), knowledge))
    long_ago = ("2025-06-01", "2025-09-01", "2025-11-29")  # 184 days before as-of
    assert not invariants.check_ended_early(outcome_of(administered(*long_ago), knowledge))
