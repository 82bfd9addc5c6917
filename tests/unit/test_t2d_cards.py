"""Type 2 diabetes: every finding of a scenario patient, not only the one its scenario is about (expect.also)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from fhirsvc.pipeline import PatientResult, evaluate_record
from fhirsvc.record.model import RecordBuilder
from fhirsvc.render.cards import cards_for
from fhirsvc.render.writeback import guidance_entries
from fhirsvc.terminology.knowledge import Knowledge
from tests.conftest import FIXTURES, load_fixture

SCENARIOS = yaml.safe_load((FIXTURES / "scenarios" / "t2d.yaml").read_text())


def _result(entry: dict[str, Any], knowledge: Knowledge) -> PatientResult:
    builder = RecordBuilder()
    builder.add_bundle(load_fixture(entry["file"]))
    (record,) = builder.build()
    return evaluate_record(record, knowledge, entry["as_of"])


@pytest.mark.parametrize("entry", [e for e in SCENARIOS if e["expect"].get("also")], ids=lambda e: e["name"])
def test_other_findings_of_the_patient(entry: dict[str, Any], knowledge: Knowledge) -> None:
    statuses = {a.rule: a.status for a in _result(entry, knowledge).findings if a.program == "t2d"}
    for expected in entry["expect"]["also"]:
        rule, _, status = expected.partition(": ")
        assert statuses[rule] == status, (rule, statuses)


def test_organ_protection_is_shown_next_to_the_order_hba1c_reminder(knowledge: Knowledge) -> None:
    (entry,) = [e for e in SCENARIOS if e["name"] == "hf-no-recent-a1c"]
    result = _result(entry, knowledge)
    shown = {a.rule: a.status for a in result.findings if a.card}
    assert shown == {"t2d-a1c-above-target": "data-needed", "t2d-organ-protection": "add-on-evaluation"}
    assert len(cards_for(result)) == 2


def test_organ_protection_is_never_a_failure_of_the_line(knowledge: Knowledge) -> None:
    """An add-on for organ protection neither says the line failed nor labels how the line ended."""
    for entry in SCENARIOS:
        result = _result(entry, knowledge)
        for assessment in result.findings:
            if assessment.rule == "t2d-organ-protection":
                assert assessment.status in ("add-on-evaluation", "monitor", "no-action"), entry["name"]


def test_one_card_carries_the_class_advice(knowledge: Knowledge) -> None:
    """With both cards shown, the HbA1c card defers the class to the organ-protection card instead of repeating it."""
    (entry,) = [e for e in SCENARIOS if e["name"] == "hf-above"]
    by_rule = {a.rule: a for a in _result(entry, knowledge).findings if a.card}
    a1c, organ = by_rule["t2d-a1c-above-target"], by_rule["t2d-organ-protection"]
    assert "SGLT2 inhibitor" in organ.summary
    assert not any("SGLT2" in r for r in a1c.recommendations)
    assert any("organ-protection card" in r for r in a1c.recommendations)


@pytest.mark.parametrize(
    ("name", "rule", "task_code"),
    [
        ("hf-at-target", "t2d-organ-protection", "evaluate-add-on"),
        ("a1c-above", "t2d-a1c-above-target", "evaluate-second-line"),
    ],
)
def test_written_back_task_says_add_on_not_second_line(
    name: str, rule: str, task_code: str, knowledge: Knowledge
) -> None:
    (entry,) = [e for e in SCENARIOS if e["name"] == name]
    result = _result(entry, knowledge)
    finding = next(f for f in result.actionable if f.rule == rule)
    entries = guidance_entries(finding)
    (task,) = [e["resource"] for e in entries if e["resource"]["resourceType"] == "Task"]
    assert [c["code"] for c in task["code"]["coding"]] == [task_code]
