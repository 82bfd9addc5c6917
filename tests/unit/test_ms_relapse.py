"""MS relapses read from an "Exacerbation of multiple sclerosis" diagnosis, whatever its clinicalStatus."""

from __future__ import annotations

from datetime import date

import pytest

from fhirsvc.facts import Diagnosis, PatientFacts, extract_facts
from fhirsvc.pipeline import evaluate_program
from fhirsvc.record.model import RecordBuilder
from fhirsvc.terminology.knowledge import Knowledge
from tests.conftest import load_fixture

AS_OF = date(2026, 6, 1)
EXACERBATION = "http://snomed.info/sct|192929006"
MS = "http://snomed.info/sct|24700007"


def _facts(knowledge: Knowledge) -> PatientFacts:
    """Interferon beta-1a since 2024-01-01, MRI without new lesions, the only MS relapse outside the window."""
    builder = RecordBuilder()
    builder.add_bundle(load_fixture("ms/relapse-366-days-ago.json"))
    (record,) = builder.build()
    return extract_facts(record, knowledge.catalog, AS_OF, knowledge.observation_filter)


def _breakthrough(knowledge: Knowledge, facts: PatientFacts) -> tuple[str, list[str]]:
    ms = next(p for p in knowledge.programs if p.id == "ms")
    result = evaluate_program(ms, facts, knowledge, AS_OF)
    assert result is not None
    (found,) = [a for a in result.findings if a.rule == "ms-breakthrough"]
    return found.status, found.evidence


def test_without_a_relapse_in_the_window_there_is_no_finding(knowledge: Knowledge) -> None:
    status, evidence = _breakthrough(knowledge, _facts(knowledge))
    assert status == "no-action" and not any(e.startswith("Condition/") for e in evidence)


@pytest.mark.parametrize("status", ["active", "resolved", "inactive", "remission", "recurrence", "relapse"])
def test_an_exacerbation_in_the_window_is_a_relapse_whatever_its_status(knowledge: Knowledge, status: str) -> None:
    facts = _facts(knowledge)
    facts.diagnoses.append(Diagnosis("Condition/x", frozenset({EXACERBATION}), date(2026, 2, 1), status))
    status_found, evidence = _breakthrough(knowledge, facts)
    assert status_found == "second-line-evaluation" and "Condition/x" in evidence


@pytest.mark.parametrize(
    ("onset", "counts"),
    [(date(2025, 6, 1), True), (date(2025, 5, 31), False), (AS_OF, True), (None, False)],
)
def test_the_exacerbation_onset_decides_the_window(knowledge: Knowledge, onset: date | None, counts: bool) -> None:
    facts = _facts(knowledge)
    facts.diagnoses.append(Diagnosis("Condition/x", frozenset({EXACERBATION}), onset, "resolved"))
    status, _ = _breakthrough(knowledge, facts)
    assert status == ("second-line-evaluation" if counts else "no-action")


def test_a_resolved_ms_diagnosis_is_not_a_relapse(knowledge: Knowledge) -> None:
    # Only the exacerbation concept is an episode; the disease coded "resolved" is not a relapse.
    facts = _facts(knowledge)
    facts.diagnoses.append(Diagnosis("Condition/x", frozenset({MS}), date(2026, 2, 1), "resolved"))
    assert _breakthrough(knowledge, facts)[0] == "no-action"


def test_one_relapse_recorded_both_ways_is_counted_once(knowledge: Knowledge) -> None:
    facts = _facts(knowledge)
    both = frozenset({EXACERBATION, MS})
    facts.diagnoses.append(Diagnosis("Condition/x", both, date(2026, 2, 1), "relapse"))
    ms = next(p for p in knowledge.programs if p.id == "ms")
    result = evaluate_program(ms, facts, knowledge, AS_OF)
    assert result is not None
    (found,) = [a for a in result.findings if a.rule == "ms-breakthrough"]
    assert "1 relapse(s)" in found.summary


@pytest.mark.parametrize("status", ["resolved", "inactive", "active"])
def test_a_recorded_exacerbation_counts_through_the_facts_whatever_its_status(
    knowledge: Knowledge, status: str
) -> None:
    """From the FHIR resource: resolved and inactive Conditions are kept apart as ended, and still date a relapse."""
    bundle = load_fixture("ms/relapse-366-days-ago.json")
    patient = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    condition = {
        "resourceType": "Condition",
        "id": "exacerbation-from-resource",
        "subject": {"reference": f"Patient/{patient}"},
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": status}]
        },
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "192929006"}]},
        "onsetDateTime": "2026-02-01",
    }
    builder = RecordBuilder()
    builder.add_bundle({**bundle, "entry": [*bundle["entry"], {"resource": condition}]})
    (record,) = builder.build()
    facts = extract_facts(record, knowledge.catalog, AS_OF, knowledge.observation_filter)
    status_found, evidence = _breakthrough(knowledge, facts)
    assert status_found == "second-line-evaluation" and "Condition/exacerbation-from-resource" in evidence
