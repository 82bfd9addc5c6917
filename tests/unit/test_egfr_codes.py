"""eGFR as labs and Synthea send it: MDRD 33914-3 and CKD-EPI 2021 codes, in any unit spelling, are eGFR."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from fhirsvc.facts import extract_facts
from fhirsvc.record.model import RecordBuilder
from fhirsvc.rules.base import ProgramContext
from fhirsvc.terminology.knowledge import Knowledge

AS_OF = date(2026, 6, 1)
PATIENT = "Patient/egfr"


def _egfr(code: str, value: float, unit: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"egfr-{code}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": PATIENT},
        "effectiveDateTime": "2026-05-02",
        "valueQuantity": {"value": value, "unit": unit},
    }


def _measured(knowledge: Knowledge, observation: dict[str, Any]) -> list[float | None]:
    builder = RecordBuilder()
    builder.add_resource({"resourceType": "Patient", "id": "egfr"})
    builder.add_resource(observation)
    (record,) = builder.build()
    facts = extract_facts(record, knowledge.catalog, AS_OF, knowledge.observation_filter)
    t2d = next(p for p in knowledge.programs if p.id == "t2d")
    return [m.value for m in ProgramContext(t2d, facts, AS_OF, [], []).measurements("egfr")]


@pytest.mark.parametrize(
    ("code", "unit"),
    [
        ("33914-3", "mL/min/{1.73_m2}"),  # MDRD, serum/plasma: what Synthea writes
        ("76633-7", "mL/min/1.73m2"),  # MDRD, blood
        ("98979-8", "mL/min/1.73 m²"),  # CKD-EPI 2021
        ("62238-1", "mL/min/1.73 sq m"),  # CKD-EPI 2009
        ("48642-3", "ml/min/1,73 m2"),  # MDRD non-black
    ],
)
def test_egfr_codes_in_use_are_read(knowledge: Knowledge, code: str, unit: str) -> None:
    assert _measured(knowledge, _egfr(code, 4.0, unit)) == [4.0]


def test_a_creatinine_result_is_not_egfr(knowledge: Knowledge) -> None:
    assert _measured(knowledge, _egfr("2160-0", 4.0, "mg/dL")) == []
