"""Card rendering: what we propose validates as FHIR R4; summaries stay under 140 characters."""

from __future__ import annotations

from datetime import date

import pytest

from fhirsvc.cds.cards import cards_for
from fhirsvc.fhir.record import RecordBuilder
from fhirsvc.fhir.resources import InvalidResource, validate
from fhirsvc.rules.evaluate import evaluate_record
from fhirsvc.terminology.knowledge import Knowledge
from tests.conftest import FIXTURES, load_fixture

AS_OF = date(2026, 6, 1)


def _result(name: str, knowledge: Knowledge):  # type: ignore[no-untyped-def]
    builder = RecordBuilder()
    builder.add_bundle(load_fixture(f"hiv/{name}.json"))
    (record,) = builder.build()
    return evaluate_record(record, knowledge, AS_OF)


@pytest.mark.parametrize("name", sorted(p.stem for p in (FIXTURES / "hiv").glob("*.json")))
def test_every_card_obeys_the_rules_and_its_resources_validate(name: str, knowledge: Knowledge) -> None:
    for card in cards_for(_result(name, knowledge)):
        assert len(card.summary) < 140
        assert card.detail and "does not order" in card.detail
        assert card.links and card.source.url
        for suggestion in card.suggestions:
            for action in suggestion.actions:
                assert action.resource is not None
                validate(action.resource)


def test_validate_rejects_invalid_fhir() -> None:
    with pytest.raises(InvalidResource):
        validate({"resourceType": "ServiceRequest", "status": "draft"})  # intent and subject are required
    with pytest.raises(InvalidResource):
        validate({"resourceType": "NotAType"})


def test_line_end_reason_comes_from_the_failure_rule(knowledge: Knowledge) -> None:
    (program,) = _result("already-switched", knowledge).programs
    assert program.lines[0].end_reason == "virologic-failure"
