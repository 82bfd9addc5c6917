"""Table-driven clinical scenarios: fixtures/scenarios/*.yaml → expected program, line and status."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
import yaml

from fhirsvc.fhir.record import RecordBuilder
from fhirsvc.rules.evaluate import evaluate_record
from fhirsvc.terminology.knowledge import Knowledge
from tests.conftest import FIXTURES, load_fixture


def _scenarios() -> list[Any]:
    cases = []
    for path in sorted((FIXTURES / "scenarios").glob("*.yaml")):
        for entry in yaml.safe_load(path.read_text()):
            cases.append(pytest.param(entry, id=f"{path.stem}:{entry['name']}"))
    return cases


@pytest.mark.parametrize("scenario", _scenarios())
def test_scenario(scenario: dict[str, Any], knowledge: Knowledge) -> None:
    builder = RecordBuilder()
    builder.add_bundle(load_fixture(scenario["file"]))
    (record,) = builder.build()
    assert record.reference == scenario["patient"]
    as_of = scenario["as_of"] if isinstance(scenario["as_of"], date) else date.fromisoformat(scenario["as_of"])
    result = evaluate_record(record, knowledge, as_of)
    expect = scenario["expect"]
    by_program = {p.program.id: p for p in result.programs}
    assert expect["program"] in by_program, f"program {expect['program']} not evaluated"
    program = by_program[expect["program"]]
    current = program.current_line
    assert (current.number if current else None) == expect["current_line"]
    (assessment,) = [a for a in program.assessments if a.rule.startswith(expect["program"])][:1]
    assert assessment.status == expect["status"], assessment.summary
    cited = {ref for ref in assessment.evidence if ref.startswith("Observation/")}
    assert set(expect.get("evidence") or []) <= cited | set(), (cited, expect.get("evidence"))
    if "line_1_end" in expect:
        assert program.lines[0].end == expect["line_1_end"]
