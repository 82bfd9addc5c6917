"""Results before a line are not about it: a viral load drawn on the first day is a baseline, a switch after
breakthrough disease is labelled so, and imaging before a line started does not monitor it."""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

import pytest

from fhirsvc.pipeline import PatientResult, ProgramResult, evaluate_record
from fhirsvc.record.model import RecordBuilder
from fhirsvc.terminology.knowledge import Knowledge
from tests.conftest import load_fixture


def evaluate(knowledge: Knowledge, bundle: dict[str, Any], as_of: date) -> PatientResult:
    builder = RecordBuilder()
    builder.add_bundle(bundle)
    (record,) = builder.build()
    return evaluate_record(record, knowledge, as_of)


def program(result: PatientResult, program_id: str) -> ProgramResult:
    return next(p for p in result.programs if p.program.id == program_id)


def outcome(result: PatientResult, program_id: str, rule: str) -> str:
    return next(a.outcome for a in program(result, program_id).findings if a.rule == rule)


@pytest.mark.parametrize(("drawn", "expected"), [("2025-06-01", "awaiting-first-result"), ("2025-06-02", "suppressed")])
def test_a_viral_load_on_the_first_day_of_a_line_is_its_baseline(
    knowledge: Knowledge, drawn: str, expected: str
) -> None:
    """fail-basic's regimen starts 2025-06-01; as of 2025-07-15 its only viral load is the one added here."""
    bundle = copy.deepcopy(load_fixture("hiv/fail-basic.json"))
    (load,) = [e["resource"] for e in bundle["entry"] if e["resource"]["id"] == "hiv-fail-basic-vl-1"]
    load["effectiveDateTime"] = drawn
    load["valueQuantity"] = {"value": 20, "comparator": "<", "unit": "copies/mL"}
    result = evaluate(knowledge, bundle, date(2025, 7, 15))
    assert outcome(result, "hiv", "hiv-virologic-failure") == expected


@pytest.mark.parametrize(("reason", "label"), [(None, "breakthrough-disease"), ("266721009", "no-response")])
def test_a_switch_after_a_relapse_on_a_platform_therapy_is_labelled_breakthrough(
    knowledge: Knowledge, reason: str | None, label: str
) -> None:
    """Interferon 2023-01-01 to the natalizumab start on 2025-01-01, relapse 2024-10-01: without a recorded stop
    reason the line ended for breakthrough disease, although natalizumab was already active on its last day."""
    bundle = copy.deepcopy(load_fixture("ms/escalated.json"))
    (interferon,) = [e["resource"] for e in bundle["entry"] if e["resource"]["id"] == "ms-escalated-medstmt-ifnb1a"]
    if reason is None:
        del interferon["statusReason"]
    lines = program(evaluate(knowledge, bundle, date(2026, 6, 1)), "ms").lines
    assert (lines[0].end, lines[0].end_reason) == (date(2025, 1, 1), label)


@pytest.mark.parametrize(
    ("kept", "expected"),
    [({"status-1", "status-2"}, "never-recorded"), ({"status-1", "status-2", "status-3"}, "overdue")],
)
def test_imaging_before_a_line_started_does_not_monitor_it(knowledge: Knowledge, kept: set[str], expected: str) -> None:
    """Docetaxel (line 2) from 2025-07-15; disease status 2025-05-19 and 2025-07-01 precede it, 2025-10-06 does not."""
    bundle = copy.deepcopy(load_fixture("nsclc/progression-on-docetaxel.json"))
    prefix = "nsclc-progression-on-docetaxel-"
    bundle["entry"] = [
        e
        for e in bundle["entry"]
        if e["resource"]["resourceType"] != "Observation" or e["resource"]["id"].removeprefix(prefix) in kept
    ]
    assert outcome(evaluate(knowledge, bundle, date(2026, 6, 1)), "nsclc", "nsclc-imaging-overdue") == expected


def _with_heart_disease(code: str, status: str, verification: str = "confirmed") -> dict[str, Any]:
    """t2d-a1c-6-9 (metformin, HbA1c at target, nothing else on file) with one cardiac diagnosis added."""
    bundle = copy.deepcopy(load_fixture("t2d/a1c-6-9.json"))
    condition = {
        "resourceType": "Condition",
        "id": "t2d-a1c-6-9-heart",
        "subject": {"reference": "Patient/t2d-a1c-6-9"},
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": status}]
        },
        "verificationStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]
        },
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
        "onsetDateTime": "2024-03-01",
        "abatementDateTime": "2024-04-01" if status == "resolved" else None,
    }
    bundle["entry"].append({"resource": {k: v for k, v in condition.items() if v is not None}})
    return bundle


@pytest.mark.parametrize(
    ("code", "status", "verification", "expected"),
    [
        ("401303003", "resolved", "confirmed", "indicated"),  # a past STEMI is established ASCVD for life
        ("414545008", "active", "confirmed", "indicated"),  # ischaemic heart disease as Synthea codes it
        ("401303003", "resolved", "refuted", "not-indicated"),
        ("44054006", "resolved", "confirmed", "not-indicated"),  # not a cardiac code
    ],
)
def test_past_myocardial_infarction_is_ascvd_for_organ_protection(
    knowledge: Knowledge, code: str, status: str, verification: str, expected: str
) -> None:
    result = evaluate(knowledge, _with_heart_disease(code, status, verification), date(2026, 6, 1))
    assert outcome(result, "t2d", "t2d-organ-protection") == expected


@pytest.mark.parametrize(("resource_type", "lines"), [("MedicationAdministration", 1), ("MedicationRequest", 2)])
def test_a_hospital_insulin_dose_is_no_new_diabetes_line(knowledge: Knowledge, resource_type: str, lines: int) -> None:
    """Insulin glargine once, administered (inpatient) or ordered (an added agent), on metformin since 2025-06-01."""
    bundle = copy.deepcopy(load_fixture("t2d/a1c-6-9.json"))
    insulin: dict[str, Any] = {
        "resourceType": resource_type,
        "id": "t2d-a1c-6-9-insulin",
        "status": "completed" if resource_type == "MedicationAdministration" else "active",
        "subject": {"reference": "Patient/t2d-a1c-6-9"},
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "274783"}]
        },
    }
    if resource_type == "MedicationAdministration":
        insulin["effectiveDateTime"] = "2026-03-01"
    else:
        insulin |= {"intent": "order", "authoredOn": "2026-03-01"}
    bundle["entry"].append({"resource": insulin})
    found = program(evaluate(knowledge, bundle, date(2026, 6, 1)), "t2d").lines
    assert len(found) == lines


def _latest_a1c(knowledge: Knowledge, value: float) -> tuple[str, str]:
    bundle = copy.deepcopy(load_fixture("t2d/a1c-6-9.json"))
    (latest,) = [e["resource"] for e in bundle["entry"] if e["resource"]["id"] == "t2d-a1c-6-9-a1c-2"]
    latest["valueQuantity"]["value"] = value
    found = next(
        a
        for a in program(evaluate(knowledge, bundle, date(2026, 6, 1)), "t2d").findings
        if a.rule == "t2d-a1c-above-target"
    )
    return found.outcome, found.summary


@pytest.mark.parametrize(("value", "expected"), [(3.9, "implausible"), (4.0, "at-target"), (6.99, "at-target")])
def test_an_hba1c_below_the_plausible_range_is_questioned_not_at_target(
    knowledge: Knowledge, value: float, expected: str
) -> None:
    assert _latest_a1c(knowledge, value)[0] == expected


@pytest.mark.parametrize(
    ("value", "shown"), [(7.04, "HbA1c 7.04 % on"), (7.0, "HbA1c 7.0 % on"), (7.4, "HbA1c 7.4 % on")]
)
def test_a_result_rounding_to_its_target_keeps_the_decimal_that_tells_them_apart(
    knowledge: Knowledge, value: float, shown: str
) -> None:
    outcome_found, summary = _latest_a1c(knowledge, value)
    assert outcome_found == "above" and summary.startswith(shown), summary


@pytest.mark.parametrize(
    ("onset", "expected"),
    [("2026-02-01", "activity-on-high-efficacy"), ("2025-05-01", "not-platform"), (None, "not-platform")],
)
def test_a_relapse_on_a_higher_efficacy_therapy_asks_for_a_review(
    knowledge: Knowledge, onset: str | None, expected: str
) -> None:
    """ms-jcv-negative is on natalizumab (line 2); an exacerbation in the last year is activity to review."""
    bundle = copy.deepcopy(load_fixture("ms/jcv-negative.json"))
    patient = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    if onset is not None:
        exacerbation = {
            "resourceType": "Condition",
            "id": "ms-jcv-negative-exacerbation",
            "subject": {"reference": f"Patient/{patient}"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "192929006"}]},
            "onsetDateTime": onset,
        }
        bundle["entry"].append({"resource": exacerbation})
    result = evaluate(knowledge, bundle, date(2026, 6, 1))
    found = next(a for a in program(result, "ms").findings if a.rule == "ms-breakthrough")
    assert found.outcome == expected
    assert (found.status, found.card) == (("monitor", True) if onset == "2026-02-01" else ("no-action", False))


@pytest.mark.parametrize(("index", "label"), [(1.4, "pml-risk"), (0.3, "new-line")])
def test_natalizumab_stopped_after_a_positive_jcv_antibody_is_a_safety_stop(
    knowledge: Knowledge, index: float, label: str
) -> None:
    """ms-jcv-positive (natalizumab from 2025-01-01, JCV index on 2026-04-01) switched to ocrelizumab on 2026-05-01."""
    bundle = copy.deepcopy(load_fixture("ms/jcv-positive.json"))
    (jcv,) = [e["resource"] for e in bundle["entry"] if e["resource"]["id"] == "ms-jcv-positive-jcv-2"]
    jcv["valueQuantity"]["value"] = index
    if index < 0.9:
        jcv.pop("interpretation", None)  # the fixture's result is flagged positive
    (natalizumab,) = [
        e["resource"] for e in bundle["entry"] if e["resource"]["id"] == "ms-jcv-positive-medstmt-natalizumab"
    ]
    natalizumab["status"] = "completed"
    natalizumab["effectivePeriod"]["end"] = "2026-05-01"
    ocrelizumab = {
        "resourceType": "MedicationStatement",
        "id": "ms-jcv-positive-ocrelizumab",
        "status": "active",
        "subject": natalizumab["subject"],
        "medicationCodeableConcept": {"text": "Ocrevus (ocrelizumab) 300 mg infusion"},
        "effectivePeriod": {"start": "2026-05-01"},
    }
    bundle["entry"].append({"resource": ocrelizumab})
    lines = program(evaluate(knowledge, bundle, date(2026, 6, 1)), "ms").lines
    assert [(line.end, line.end_reason) for line in lines[1:]] == [(date(2026, 5, 1), label), (None, None)]
