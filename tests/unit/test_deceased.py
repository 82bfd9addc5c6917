"""A patient who has died: lines end at death, no rule runs, and the evaluate output says so."""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

import pytest

from fhirsvc.pipeline import evaluate_record
from fhirsvc.record.model import RecordBuilder
from fhirsvc.render.report import patient_report
from fhirsvc.terminology.knowledge import Knowledge
from tests.conftest import load_fixture

AS_OF = date(2026, 6, 1)


def evaluate(knowledge: Knowledge, death: dict[str, Any]) -> dict[str, Any]:
    bundle = copy.deepcopy(load_fixture("hiv/fail-basic.json"))
    (patient,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    patient.update(death)
    builder = RecordBuilder()
    builder.add_bundle(bundle)
    (record,) = builder.build()
    return patient_report(evaluate_record(record, knowledge, AS_OF))


def test_the_line_ends_at_death_and_no_rule_runs(knowledge: Knowledge) -> None:
    report = evaluate(knowledge, {"deceasedDateTime": "2026-04-10T08:00:00Z"})
    (program,) = report["programs"]
    assert report["deceased"] == "2026-04-10" and report["cards"] == []
    assert program["current_line"] is None and program["assessments"] == []
    assert (program["lines"][-1]["end"], program["lines"][-1]["end_reason"]) == ("2026-04-10", "death")


def test_data_after_death_does_not_extend_the_lines(knowledge: Knowledge) -> None:
    report = evaluate(knowledge, {"deceasedDateTime": "2025-07-01"})
    (program,) = report["programs"]
    assert [(line["start"], line["end"]) for line in program["lines"]] == [("2025-06-01", "2025-07-01")]


def test_a_death_without_a_date_ends_the_line_at_its_last_evidence(knowledge: Knowledge) -> None:
    report = evaluate(knowledge, {"deceasedBoolean": True})
    (program,) = report["programs"]
    assert report["deceased"] is True and report["cards"] == []
    assert program["lines"][-1]["end_reason"] == "death" and program["lines"][-1]["end"] is not None


@pytest.mark.parametrize("alive", [{}, {"deceasedBoolean": False}, {"deceasedDateTime": "2026-06-02"}])
def test_alive_on_the_evaluation_date(knowledge: Knowledge, alive: dict[str, Any]) -> None:
    report = evaluate(knowledge, alive)
    assert "deceased" not in report and report["programs"][0]["current_line"] == 1
    assert any(a["status"] == "second-line-evaluation" for a in report["programs"][0]["assessments"])
