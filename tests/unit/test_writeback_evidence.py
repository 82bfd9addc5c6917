"""The poller's write-back carries the first-line evidence document when configured (step therapy)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from fhirsvc.config import Settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.fhir.resources import validate
from fhirsvc.pipeline import evaluate_record
from fhirsvc.poll.worker import Poller
from fhirsvc.record.files import index_records
from fhirsvc.render.writeback import FINDING_SYSTEM, transaction
from fhirsvc.store.db import Store
from fhirsvc.terminology.knowledge import Knowledge
from tests.conftest import AS_OF, FIXTURES


def _poller(knowledge: Knowledge, tmp_path: Path) -> Poller:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.upgrade()
    return Poller(Settings(writeback_evidence=True), knowledge, store, FhirClientPool(Settings()))


def _entries(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


@pytest.mark.parametrize(("fixture", "attached"), [("t2d/a1c-above.json", True), ("hiv/fail-basic.json", False)])
def test_a_next_line_task_carries_the_evidence_document(
    fixture: str, attached: bool, knowledge: Knowledge, tmp_path: Path
) -> None:
    (record,) = index_records([FIXTURES / fixture]).records()
    result = evaluate_record(record, knowledge, AS_OF)
    findings = [f for f in result.actionable if f.status == "second-line-evaluation"]
    assert findings, "the fixture must hold a second-line finding"
    poller = _poller(knowledge, tmp_path)
    try:
        evidence = poller._evidence(record, result, findings)
    finally:
        asyncio.run(poller.pool.aclose())
    bundle = transaction(findings, "guidance", evidence)
    documents = _entries(bundle, "DocumentReference")
    if not attached:  # HIV has no step therapy: nothing to attach
        assert evidence == {} and documents == []
        return
    (document,) = documents
    validate(document["resource"])
    assert document["request"]["ifNoneExist"] == f"identifier={FINDING_SYSTEM}|{findings[0].id}-doc"
    assert document["resource"]["subject"] == {"reference": result.patient}
    assert document["resource"]["content"][0]["attachment"]["contentType"] == "application/fhir+json"
    (task,) = [e["resource"] for e in _entries(bundle, "Task")]
    inputs = [i["valueReference"]["reference"] for i in task["input"] if i["type"]["text"] == "step-therapy evidence"]
    assert inputs == [document["fullUrl"]]
    # The same evaluation writes the same document: a re-run's conditional create finds it.
    assert transaction(findings, "guidance", evidence) == bundle


def test_without_the_setting_no_document_is_written(knowledge: Knowledge) -> None:
    (record,) = index_records([FIXTURES / "t2d/a1c-above.json"]).records()
    result = evaluate_record(record, knowledge, AS_OF)
    bundle = transaction(result.actionable, "guidance")
    assert _entries(bundle, "DocumentReference") == []
