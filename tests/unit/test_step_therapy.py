"""Step therapy: the program descriptions, the first-line evidence per program and its FHIR document."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from fhirsvc.fhir.resources import validate
from fhirsvc.pipeline import evaluate_record
from fhirsvc.record.model import PatientRecord, RecordBuilder
from fhirsvc.render import evidence as rendering
from fhirsvc.render.evidence import (
    document_reference,
    evidence_document,
    evidence_html,
    step_therapy_cards,
)
from fhirsvc.step_therapy import StepEvidence, evidence_for, ordered_next_line, trial_summary
from fhirsvc.terminology.knowledge import Knowledge
from fhirsvc.terminology.program_files import drug_name_problems
from fhirsvc.terminology.programs import StepTherapy
from tests.conftest import load_fixture

AS_OF = date(2026, 6, 1)
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def draft(patient: str, rxcui: str, display: str, order_id: str = "draft-1") -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": patient},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": rxcui, "display": display}]},
    }


SEMAGLUTIDE = ("1991302", "semaglutide")
EMPAGLIFLOZIN = ("1545653", "empagliflozin")
GLIPIZIDE = ("4821", "glipizide")


def record_of(fixture: str, drop: str | None = None) -> PatientRecord:
    bundle = load_fixture(fixture)
    if drop:
        bundle = {**bundle, "entry": [e for e in bundle["entry"] if e["resource"]["resourceType"] != drop]}
    builder = RecordBuilder()
    builder.add_bundle(bundle)
    (record,) = builder.build()
    return record


def ordered(fixture: str, knowledge: Knowledge, *drugs: tuple[str, str], drop: str | None = None) -> list[StepEvidence]:
    record = record_of(fixture, drop)
    record.planned.extend(draft(record.reference, code, name, f"draft-{i}") for i, (code, name) in enumerate(drugs))
    return ordered_next_line(record, evaluate_record(record, knowledge, AS_OF), knowledge)


def asked(fixture: str, knowledge: Knowledge, program: str, requested: list[str]) -> StepEvidence | None:
    record = record_of(fixture)
    return evidence_for(record, evaluate_record(record, knowledge, AS_OF), knowledge, program, requested)


# --- the program descriptions -------------------------------------------------------------------------------------


def test_t2d_and_ms_name_their_steps_and_oncology_and_hiv_say_there_are_none(knowledge: Knowledge) -> None:
    steps = {p.id: p.step_therapy for p in knowledge.programs}
    t2d, ms = steps["t2d"], steps["ms"]
    assert t2d is not None and t2d.first_line_drugs == ["metformin"] and t2d.min_trial_days == 90
    assert set(t2d.next_line_classes) == {"GLP1RA", "SGLT2i"} and t2d.insurer_asks
    assert ms is not None and "interferon-beta" in ms.first_line_classes and "anti-CD20" in ms.next_line_classes
    for program in ("hiv", "crc", "nsclc"):
        step = steps[program]
        assert step is not None and not step.applies and step.source


def test_step_therapy_names_must_be_program_drugs(knowledge: Knowledge) -> None:
    (t2d,) = [p for p in knowledge.programs if p.id == "t2d"]
    wrong = t2d.step_therapy.model_copy(update={"first_line_drugs": ["metfromin"], "next_line_classes": ["GLP1"]})  # type: ignore[union-attr]
    problems = drug_name_problems(t2d.model_copy(update={"step_therapy": wrong}), knowledge.program_drugs(t2d))
    assert any("step_therapy.first_line_drugs[0]: unknown drug 'metfromin'" in p for p in problems)
    assert any("step_therapy.next_line_classes[0]: unknown drug class 'GLP1'" in p for p in problems)


def test_a_step_therapy_that_applies_needs_both_steps_and_a_guideline() -> None:
    with pytest.raises(ValueError, match="first-line and next-line"):
        StepTherapy.model_validate({"source": "x", "first_line_drugs": ["metformin"]})


# --- the evidence, per program ------------------------------------------------------------------------------------


def test_t2d_metformin_failure_is_on_file_for_a_glp1_ra(knowledge: Knowledge) -> None:
    (found,) = ordered("t2d/a1c-above.json", knowledge, SEMAGLUTIDE)
    assert found.requested == ["semaglutide"] and found.orders == ["MedicationRequest/draft-0"]
    assert found.standing == "on-file"
    (trial,) = found.trials
    assert trial_summary(trial) == "metformin 2025-06 to 2026-06, HbA1c 7.8 % on 2026-04-01 after 9 months"
    assert trial.line.end_reason == "glycemic-target-not-met"
    assert found.sources == [
        "Condition/t2d-a1c-above-condition",
        "MedicationStatement/t2d-a1c-above-ms-metformin",
        "Observation/t2d-a1c-above-a1c-2",
    ]


def test_t2d_a_first_line_drug_or_another_class_is_no_step(knowledge: Knowledge) -> None:
    assert ordered("t2d/a1c-above.json", knowledge, GLIPIZIDE) == []
    assert [e.requested for e in ordered("t2d/a1c-above.json", knowledge, EMPAGLIFLOZIN)] == [["empagliflozin"]]


def test_t2d_short_trial_says_what_an_insurer_asks_for(knowledge: Knowledge) -> None:
    (found,) = ordered("t2d/metformin-short-trial.json", knowledge, SEMAGLUTIDE)
    assert found.standing == "too-short" and found.trials[0].days == 61


def test_t2d_intolerance_only_history_stands_in_for_a_trial(knowledge: Knowledge) -> None:
    (found,) = ordered("t2d/metformin-not-tolerated.json", knowledge, SEMAGLUTIDE)
    (trial,) = found.trials
    assert trial.days == 36 and trial.ended_by_intolerance and found.standing == "on-file"
    assert trial_summary(trial).endswith("stopped: not tolerated")


def test_t2d_without_metformin_on_file_is_missing(knowledge: Knowledge) -> None:
    (found,) = ordered("t2d/a1c-above.json", knowledge, SEMAGLUTIDE, drop="MedicationStatement")
    assert found.standing == "missing" and found.trials == []


def test_ms_platform_therapy_before_a_high_efficacy_drug(knowledge: Knowledge) -> None:
    on_file = asked("ms/relapse-on-interferon.json", knowledge, "ms", ["ocrelizumab"])
    assert on_file is not None and on_file.standing == "on-file"
    assert on_file.trials[0].drugs == ["interferon beta-1a"]
    short = asked("ms/too-early.json", knowledge, "ms", ["natalizumab"])
    assert short is not None and short.standing == "too-short" and short.trials[0].days == 151
    intolerant = asked("ms/interferon-not-tolerated.json", knowledge, "ms", ["ocrelizumab"])
    assert intolerant is not None and intolerant.standing == "on-file" and intolerant.trials[0].days == 75


def test_ms_escalated_patient_keeps_the_platform_line_as_evidence(knowledge: Knowledge) -> None:
    found = asked("ms/escalated.json", knowledge, "ms", ["natalizumab"])
    assert found is not None and [t.line.number for t in found.trials] == [1]


@pytest.mark.parametrize(
    ("fixture", "program"),
    [("hiv/fail-basic.json", "hiv"), ("crc/folfox-progression.json", "crc"), ("nsclc/stable.json", "nsclc")],
)
def test_no_step_therapy_in_hiv_and_oncology(fixture: str, program: str, knowledge: Knowledge) -> None:
    assert asked(fixture, knowledge, program, []) is None


# --- the document -------------------------------------------------------------------------------------------------


def test_the_document_is_a_valid_fhir_document_referencing_every_source(knowledge: Knowledge) -> None:
    (found,) = ordered("t2d/a1c-above.json", knowledge, SEMAGLUTIDE)
    document = evidence_document(found, knowledge.catalog, "2026-06-01T00:00:00Z")
    validate(document)
    assert document["type"] == "document" and document["identifier"]["value"].startswith("urn:uuid:")
    composition = document["entry"][0]["resource"]
    assert composition["resourceType"] == "Composition" and composition["subject"] == {
        "reference": "Patient/t2d-a1c-above"
    }
    titles = [s["title"] for s in composition["section"]]
    assert titles == ["Diagnosis", "Line 1: metformin", "Guideline: why the requested drug is the next step"]
    referenced = {e["reference"] for s in composition["section"] for e in s.get("entry", [])}
    assert set(found.sources) | {"MedicationRequest/draft-0"} == referenced
    assert "Type 2 diabetes mellitus (Condition/t2d-a1c-above-condition)" in composition["section"][0]["text"]["div"]
    line = composition["section"][1]["text"]["div"]
    for shown in ("RxNorm 6809", "2025-06-01", "2026-06-01", "365 days", "7.8 %", "glycemic target not met"):
        assert shown in line
    page = evidence_html(document)
    assert page.startswith("<!DOCTYPE html>") and "7.8 %" in page and "ADA Standards of Care" in page


def test_the_document_of_a_missing_trial_still_validates(knowledge: Knowledge) -> None:
    (found,) = ordered("t2d/a1c-above.json", knowledge, SEMAGLUTIDE, drop="MedicationStatement")
    validate(evidence_document(found, knowledge.catalog, "2026-06-01T00:00:00Z"))


def test_the_document_reference_links_patient_and_order_and_states_its_size(knowledge: Knowledge) -> None:
    (found,) = ordered("t2d/a1c-above.json", knowledge, SEMAGLUTIDE)
    document = evidence_document(found, knowledge.catalog, "2026-06-01T00:00:00Z")
    reference = document_reference(found, document, AS_OF)
    assert reference is not None
    validate(reference)
    attachment = reference["content"][0]["attachment"]
    assert attachment["contentType"] == "application/fhir+json" and attachment["size"] < rendering.MAX_ATTACHED_BYTES
    assert reference["subject"] == {"reference": "Patient/t2d-a1c-above"}
    assert reference["context"]["related"] == [{"reference": "MedicationRequest/draft-0"}]


def test_a_document_over_the_size_limit_is_not_attached(knowledge: Knowledge, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rendering, "MAX_ATTACHED_BYTES", 100)
    record = record_of("t2d/a1c-above.json")
    record.planned.append(draft(record.reference, *SEMAGLUTIDE))
    ((card, _),) = step_therapy_cards(record, evaluate_record(record, knowledge, AS_OF), knowledge)
    assert card.suggestions == [] and "not attached" in (card.detail or "")


def test_no_card_on_partial_data(knowledge: Knowledge) -> None:
    record = record_of("t2d/a1c-above.json")
    record.planned.append(draft(record.reference, *SEMAGLUTIDE))
    record.incomplete["MedicationStatement"] = "page cap"
    assert step_therapy_cards(record, evaluate_record(record, knowledge, AS_OF), knowledge) == []


def test_a_renewal_of_a_next_line_drug_already_taken_is_no_step(knowledge: Knowledge) -> None:
    assert ordered("t2d/already-added.json", knowledge, EMPAGLIFLOZIN) == []
    (found,) = ordered("t2d/already-added.json", knowledge, SEMAGLUTIDE)
    assert found.requested == ["semaglutide"] and [t.line.number for t in found.trials] == [1, 2]
