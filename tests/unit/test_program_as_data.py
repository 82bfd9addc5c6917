"""A program defined only as YAML in test data (RA: methotrexate → biologic) gets lines and cards, no Python."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from fhirsvc.pipeline import evaluate_record
from fhirsvc.record.model import PatientRecord
from fhirsvc.render.cards import cards_for
from fhirsvc.rules.registry import RULE_KINDS
from fhirsvc.terminology.knowledge import Knowledge, load_knowledge

RA = Path(__file__).resolve().parent.parent / "data" / "programs" / "ra.yaml"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
AS_OF = date(2026, 6, 1)


@pytest.fixture(scope="module")
def with_ra() -> Knowledge:
    return load_knowledge(extra_programs=[RA], rule_kinds=RULE_KINDS)


def record(*extra: dict[str, Any], das28: list[tuple[str, float]]) -> PatientRecord:
    patient = PatientRecord("ra-1")
    subject = {"reference": "Patient/ra-1"}
    patient.add(
        {
            "resourceType": "Condition",
            "id": "ra-dx",
            "subject": subject,
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "69896004"}]},
        }
    )
    patient.add(
        {
            "resourceType": "MedicationStatement",
            "id": "mtx",
            "status": "active",
            "subject": subject,
            "effectivePeriod": {"start": "2025-09-01"},
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "6851"}]},
        }
    )
    for index, (when, value) in enumerate(das28):
        patient.add(
            {
                "resourceType": "Observation",
                "id": f"das-{index}",
                "status": "final",
                "subject": subject,
                "code": {"text": "DAS28-CRP score"},
                "effectiveDateTime": when,
                "valueQuantity": {"value": value},
            }
        )
    for resource in extra:
        patient.add(resource)
    return patient


def test_methotrexate_failure_suggests_a_biologic(with_ra: Knowledge) -> None:
    result = evaluate_record(record(das28=[("2026-05-01", 4.1)]), with_ra, AS_OF)
    (program,) = result.programs
    assert program.program.id == "ra" and program.current_line is not None and program.current_line.number == 1
    (assessment,) = program.findings
    assert assessment.status == "second-line-evaluation"
    assert assessment.recommendations == [
        "Add a biologic or targeted synthetic DMARD (poor prognostic factors present or not)."
    ]
    (card,) = cards_for(result)
    assert card.indicator == "warning" and "Observation/das-0" in card.detail


def test_at_target_and_too_early(with_ra: Knowledge) -> None:
    at_target = evaluate_record(record(das28=[("2026-05-01", 3.1)]), with_ra, AS_OF)
    assert at_target.programs[0].findings[0].status == "no-action"
    early = evaluate_record(record(das28=[("2025-11-01", 4.5)]), with_ra, date(2025, 11, 2))
    assert early.programs[0].findings[0].status == "monitor"


def test_adding_a_biologic_starts_line_2(with_ra: Knowledge) -> None:
    adalimumab = {
        "resourceType": "MedicationStatement",
        "id": "ada",
        "status": "active",
        "subject": {"reference": "Patient/ra-1"},
        "effectivePeriod": {"start": "2026-01-15"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "327361"}]},
    }
    result = evaluate_record(record(adalimumab, das28=[("2026-05-01", 4.4)]), with_ra, AS_OF)
    (program,) = result.programs
    assert [line.number for line in program.lines] == [1, 2]
    assert program.lines[1].drugs == {"methotrexate", "adalimumab"}
    assessment = program.findings[0]
    assert assessment.status == "next-line-evaluation"
    assert assessment.recommendations == ["Switch to a biologic with another mechanism."]


def test_the_bundled_programs_do_not_see_the_test_program(knowledge: Knowledge) -> None:
    assert "ra" not in {p.id for p in knowledge.programs}
