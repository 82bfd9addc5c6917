"""ProgramContext.at_end_of: a rule asked about an ended line sees that day only, with nothing carried over."""

from __future__ import annotations

from datetime import date
from typing import Any, cast

import pytest

from fhirsvc.facts import extract_facts
from fhirsvc.findings import Finding
from fhirsvc.lot.engine import Line
from fhirsvc.record.model import RecordBuilder
from fhirsvc.rules.base import ProgramContext
from fhirsvc.terminology.knowledge import Knowledge

AS_OF = date(2026, 6, 1)
LINE_ONE_END = date(2023, 3, 1)


def _viral_load(day: str, copies: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"vl-{day}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "20447-9"}]},
        "subject": {"reference": "Patient/p"},
        "effectiveDateTime": day,
        "valueQuantity": {"value": copies, "unit": "copies/mL", "code": "{copies}/mL"},
    }


def _context(knowledge: Knowledge) -> ProgramContext:
    builder = RecordBuilder()
    builder.add_all(
        [{"resourceType": "Patient", "id": "p"}, _viral_load("2022-11-01", 450), _viral_load("2026-05-01", 60)]
    )
    (record,) = builder.build()
    facts = extract_facts(record, knowledge.catalog, AS_OF, knowledge.observation_filter)
    hiv = next(p for p in knowledge.programs if p.id == "hiv")
    lines = [
        Line(1, date(2020, 1, 1), LINE_ONE_END, "new-line", {"efavirenz"}),
        Line(2, LINE_ONE_END, None, None, {"dolutegravir"}),
    ]
    return ProgramContext(hiv, facts, AS_OF, lines, [])


def test_the_context_at_a_line_end_reads_only_what_was_known_that_day(knowledge: Knowledge) -> None:
    ctx = _context(knowledge)
    assert [m.value for m in ctx.measurements("viral_load")] == [450, 60]  # answers kept for AS_OF
    ctx.findings["earlier-rule"] = cast(Finding, object())  # what an earlier rule said as of AS_OF
    past = ctx.at_end_of(ctx.lines[0])
    assert past.as_of == LINE_ONE_END
    assert [m.value for m in past.measurements("viral_load")] == [450]
    assert [lab.value for lab in past.results("viral_load")] == [450]
    assert past.current_line is not None and past.current_line.number == 1 and len(past.lines) == 1
    assert past.findings == {}
    # The context it came from is unchanged: its line still ended, its answers still those of AS_OF.
    assert ctx.lines[0].end == LINE_ONE_END and len(ctx.lines) == 2
    assert [m.value for m in ctx.measurements("viral_load")] == [450, 60]


def test_an_ongoing_line_has_no_end_to_go_back_to(knowledge: Knowledge) -> None:
    ctx = _context(knowledge)
    with pytest.raises(ValueError, match="has not ended"):
        ctx.at_end_of(ctx.lines[1])
