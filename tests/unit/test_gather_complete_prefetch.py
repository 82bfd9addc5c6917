"""A complete prefetch is gathered without I/O: the coroutine finishes at its first step, no event loop needed."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from fhirsvc.record.gather import DataUnavailable, Gathered, gather
from fhirsvc.record.model import RECORD_PARTS

PATIENT = {"resourceType": "Patient", "id": "p1"}
CONDITION = {
    "resourceType": "Condition",
    "id": "c1",
    "subject": {"reference": "Patient/p1"},
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "86406008"}]},
}


def _complete_prefetch() -> dict[str, Any]:
    prefetch: dict[str, Any] = {part.key: None for part in RECORD_PARTS}
    prefetch["patient"] = PATIENT
    prefetch["conditions"] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": CONDITION}]}
    return prefetch


def _first_step(coroutine: Coroutine[Any, Any, Gathered]) -> Gathered:
    """Run a coroutine's first step outside any event loop; it must finish there."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: Gathered = done.value
        return result
    coroutine.close()
    raise AssertionError("gather suspended on a complete prefetch")


def test_a_complete_prefetch_is_gathered_at_once_without_an_event_loop() -> None:
    gathered = _first_step(gather("p1", _complete_prefetch(), None, None, 10))
    assert [r["id"] for r in gathered.record.of_type("Condition")] == ["c1"]
    assert gathered.fetched == [] and not gathered.failed and not gathered.record.incomplete


def test_a_prefetch_missing_a_required_key_is_not_taken_for_complete() -> None:
    prefetch = _complete_prefetch()
    del prefetch["observations"]  # required, and no FHIR server to fetch it from
    with pytest.raises(DataUnavailable) as raised:
        asyncio.run(gather("p1", prefetch, None, None, 10))
    assert "observations" in raised.value.keys
