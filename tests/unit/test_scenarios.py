"""Table-driven clinical scenarios: fixtures/scenarios/*.yaml → expected program, rule, line, status, evidence."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
import yaml

from fhirsvc.pipeline import evaluate_record
from fhirsvc.record.model import RecordBuilder
from fhirsvc.render.cards import cards_for
from fhirsvc.terminology.knowledge import Knowledge
from tests.conftest import FIXTURES, load_fixture


def _scenarios() -> list[Any]:
    cases = []
    for path in sorted((FIXTURES / "scenarios").glob("*.yaml")):
        for entry in yaml.safe_load(path.read_text()):
            cases.append(pytest.param(entry, id=f"{path.stem}:{entry['name']}"))
    return cases


def _date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


@pytest.mark.parametrize("scenario", _scenarios())
def test_scenario(scenario: dict[str, Any], knowledge: Knowledge) -> None:
    builder = RecordBuilder()
    builder.add_bundle(load_fixture(scenario["file"]))
    (record,) = builder.build()
    assert record.reference == scenario["patient"]
    expect = scenario["expect"]
    drafts = set(expect.get("draft_orders") or [])  # order-select: these are the call's context.draftOrders
    record.planned.extend(r for r in record.of_type("MedicationRequest") if f"MedicationRequest/{r['id']}" in drafts)
    result = evaluate_record(record, knowledge, _date(scenario["as_of"]))
    by_program = {p.program.id: p for p in result.programs}
    assert expect["program"] in by_program, f"program {expect['program']} not evaluated"
    program = by_program[expect["program"]]
    current = program.current_line
    assert (current.number if current else None) == expect["current_line"]
    if "lines" in expect:
        assert len(program.lines) == expect["lines"], [(line.start, sorted(line.drugs)) for line in program.lines]
    if "line_1_end" in expect:
        assert program.lines[0].end == _date(expect["line_1_end"])
    rule = expect.get("rule") or program.program.rules[0].id
    (assessment,) = [a for a in program.findings if a.rule == rule]
    assert assessment.status == expect["status"], assessment.summary
    missing = set(expect.get("evidence") or []) - set(assessment.evidence)
    assert not missing, f"evidence not cited: {missing}; cited {assessment.evidence}"
    mentions = expect.get("mentions") or []
    if mentions:
        (card,) = [c for c in cards_for(result) if c.summary == assessment.summary]
        text = f"{card.summary}\n{card.detail}".lower()
        assert all(m.lower() in text for m in mentions), (mentions, text)
