"""The poller against a real HAPI server whose data no longer matches the store: stored references naming other
patients' resources, write-backs deleted or lost in a reset, a clinician editing a Task while the poller closes it.
Every case counts the resources touched that were not ours (always zero) and the copies of each write-back (one)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhirsvc.config import Settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.poll.worker import CycleReport, Poller
from fhirsvc.render.writeback import FINDING_SYSTEM
from fhirsvc.sandbox import load
from fhirsvc.store.db import Store
from fhirsvc.store.models import WriteBack
from fhirsvc.terminology.knowledge import Knowledge
from tests.integration import hapi
from tests.integration.hapi import copies_of

pytestmark = [pytest.mark.hapi, pytest.mark.anyio]
AS_OF = date(2026, 6, 1)
FAILING = ["fail-basic", "medicationrequest-only", "threshold-201"]  # one HIV finding each, on viral load
NO_CACHE = {"Cache-Control": "no-cache"}


def load_own(base: str, names: list[str], folder: Path) -> dict[str, str]:
    """Copies of example patients only the calling test reads and changes; name → server Patient id."""
    paths, ids = copies_of(names, folder)
    loaded = load(base, paths)
    return {name: loaded.patients[ids[name]] for name in names}


async def run_cycle(
    base: str,
    knowledge: Knowledge,
    store: Store,
    reconcile: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
) -> CycleReport:
    # No overlap window: a cycle re-evaluates only the patients changed since the last one, not everything loaded
    # in the last minutes (so the counts are this test's).
    settings = Settings(poll_overlap_seconds=0)
    pool = FhirClientPool(settings, transport=transport)
    try:
        poller = Poller(settings, knowledge, store, pool)
        return await (poller.cycle(base, as_of=AS_OF, reconcile=True) if reconcile else poller.cycle(base, as_of=AS_OF))
    finally:
        await pool.aclose()


def get(base: str, reference: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/{reference}", headers=NO_CACHE, timeout=hapi.HTTP_TIMEOUT)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def by_identifier(base: str, resource_type: str, value: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in hapi.search_all(f"{base}/{resource_type}?identifier={FINDING_SYSTEM}|{value}")]


def forget_others(store: Store, own: dict[str, str]) -> None:
    """Drop the store's rows of patients other tests loaded on the shared server (a first cycle backfills every
    patient there): the store then knows this test's patients only, as if the server held nothing else."""
    keep = [f"Patient/{patient}" for patient in own.values()]
    with store.session() as session:
        session.query(WriteBack).filter(WriteBack.patient.not_in(keep)).delete()


def writebacks(store: Store) -> dict[str, WriteBack]:
    """patient id → its one write-back row (each FAILING patient has one finding)."""
    with store.session() as session:
        rows = list(session.query(WriteBack))
        session.expunge_all()
    return {row.patient.removeprefix("Patient/"): row for row in rows}


def set_resources(store: Store, identifier: str, resources: dict[str, str]) -> None:
    with store.session() as session:
        row = session.get(WriteBack, identifier)
        assert row is not None
        row.resources = resources


def suppress_viral_load(base: str, patient: str) -> None:
    """A suppressed viral load after the failing ones: the patient's finding no longer holds."""
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": f"Patient/{patient}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "20447-9"}]},
        "effectiveDateTime": "2026-05-20",
        "valueQuantity": {"value": 20, "comparator": "<", "unit": "copies/mL"},
    }
    httpx.post(f"{base}/Observation", json=observation, timeout=hapi.HTTP_TIMEOUT).raise_for_status()


def delete(base: str, reference: str) -> None:
    httpx.delete(f"{base}/{reference}", timeout=hapi.HTTP_TIMEOUT).raise_for_status()


async def test_a_resolved_finding_never_closes_the_task_a_stale_reference_names(
    hapi_base_url: str, knowledge: Knowledge, store: Store, tmp_path: Path
) -> None:
    """The issue's scenario: after the server lost its data and the patients were reloaded, the stored Task
    references name other patients' Tasks. Resolving one finding closes its own Task, found by identifier."""
    base = hapi_base_url
    loaded = load_own(base, FAILING, tmp_path)
    assert not (await run_cycle(base, knowledge, store)).failed
    rows = writebacks(store)
    ids = [loaded[name] for name in FAILING]
    tasks = {patient: rows[patient].resources["Task"] for patient in ids}
    # The reload reused ids: every stored reference now names the next patient's resources.
    for patient, other in zip(ids, ids[1:] + ids[:1], strict=True):
        set_resources(store, rows[patient].identifier, dict(rows[other].resources))
    before = {patient: get(base, tasks[patient]) for patient in ids}

    resolved = loaded["fail-basic"]
    suppress_viral_load(base, resolved)
    report = await run_cycle(base, knowledge, store)

    assert not report.failed and report.closed == 1
    own = get(base, tasks[resolved])
    assert own["status"] == "cancelled" and "no longer holds" in own["statusReason"]["text"]
    wrongly_touched = [
        p for p in ids if p != resolved and get(base, tasks[p])["meta"]["versionId"] != before[p]["meta"]["versionId"]
    ]
    assert wrongly_touched == []
    assert writebacks(store)[resolved].resources["Task"] == tasks[resolved]  # the stored reference is repaired
    assert (report.mismatched, report.repaired, report.conflicts) == (1, 1, 0)


async def test_a_task_edited_between_read_and_update_is_never_overwritten(
    hapi_base_url: str, knowledge: Knowledge, store: Store, tmp_path: Path
) -> None:
    """A clinician saves the Task between the poller's read and its update: the version-aware update is refused.
    A Task the clinician completed is left as they saved it; one they only annotated is closed with the note kept."""
    base = hapi_base_url
    loaded = load_own(base, ["fail-basic", "threshold-201"], tmp_path)
    assert not (await run_cycle(base, knowledge, store)).failed
    rows = writebacks(store)
    completed_task = rows[loaded["fail-basic"]].resources["Task"]
    annotated_task = rows[loaded["threshold-201"]].resources["Task"]
    edits: dict[str, Callable[[dict[str, Any]], None]] = {
        completed_task: lambda task: task.update(status="completed", owner={"display": "Dr. Example"}),
        annotated_task: lambda task: task.update(note=[{"text": "Called the patient; repeat test booked."}]),
    }

    async def clinician_first(request: httpx.Request, send: httpx.AsyncBaseTransport) -> httpx.Response:
        reference = "/".join(request.url.path.split("/")[-2:])
        if request.method == "PUT" and reference in edits:
            task = get(base, reference)
            edits.pop(reference)(task)
            httpx.put(f"{base}/{reference}", json=task, timeout=hapi.HTTP_TIMEOUT).raise_for_status()
        return await send.handle_async_request(request)

    for patient in loaded.values():
        suppress_viral_load(base, patient)
    report = await run_cycle(base, knowledge, store, transport=Intercept(clinician_first))

    assert not edits, "both edits happened between the poller's read and its update"
    completed = get(base, completed_task)
    assert completed["status"] == "completed" and "statusReason" not in completed
    assert completed["owner"] == {"display": "Dr. Example"}
    annotated = get(base, annotated_task)
    assert annotated["status"] == "cancelled" and annotated["note"][0]["text"].startswith("Called the patient")
    assert not report.failed and report.conflicts == 2 and report.closed == 2


async def test_reconcile_writes_deleted_write_backs_again_once_and_repairs_references(
    hapi_base_url: str, knowledge: Knowledge, store: Store, tmp_path: Path
) -> None:
    base = hapi_base_url
    loaded = load_own(base, FAILING, tmp_path)
    assert not (await run_cycle(base, knowledge, store)).failed
    forget_others(store, loaded)
    rows = writebacks(store)
    lost, moved, kept = (loaded[name] for name in FAILING)
    delete(base, rows[lost].resources["Task"])  # a commit the server lost: the Task, then what it focused on
    delete(base, rows[lost].resources["GuidanceResponse"])
    set_resources(store, rows[moved].identifier, {**rows[moved].resources, "Task": rows[kept].resources["Task"]})

    report = await run_cycle(base, knowledge, store, reconcile=True)

    found = report.reconciliation
    assert found is not None and not found.server_reset and not report.failed
    assert (found.checked, found.present, found.missing, found.repaired) == (3, 2, 1, 1)
    assert found.rewrite == {lost} and report.written == 1
    for patient in (lost, moved, kept):
        finding = rows[patient].identifier
        for resource_type, value in (("Task", f"{finding}-task"), ("GuidanceResponse", finding)):
            assert len(by_identifier(base, resource_type, value)) == 1, (patient, resource_type)
    after = writebacks(store)
    assert after[moved].resources["Task"] == rows[moved].resources["Task"]  # repaired
    assert after[lost].status == "open" and after[lost].resources["Task"] != rows[lost].resources["Task"]
    (task,) = by_identifier(base, "Task", f"{rows[lost].identifier}-task")
    assert task["for"]["reference"] == f"Patient/{lost}" and task["status"] == "requested"

    again = await run_cycle(base, knowledge, store, reconcile=True)
    assert again.reconciliation is not None and again.reconciliation.present == 3
    assert again.reconciliation.missing == 0 and again.written == 0


async def test_a_server_reset_is_reported_and_only_patients_evaluated_anyway_are_written_again(
    hapi_base_url: str, knowledge: Knowledge, store: Store, tmp_path: Path
) -> None:
    """The server lost its data and the patients were loaded again under new ids: none of the store's write-backs
    is there. The stored patient ids may name other people now, so nothing is written for them unless their data
    changes; they are reported. The reloaded patients get their findings written as any new patient would."""
    base = hapi_base_url
    loaded = load_own(base, FAILING, tmp_path)
    assert not (await run_cycle(base, knowledge, store)).failed
    forget_others(store, loaded)
    rows = writebacks(store)
    assert set(rows) == set(loaded.values())
    for row in rows.values():  # the reset: our write-backs are gone (referrers first)
        for resource_type in ("Task", "GuidanceResponse", "RequestGroup"):
            delete(base, row.resources[resource_type])
    reloaded = load_own(base, FAILING, tmp_path)  # new ids: a fresh suffix
    # The poller runs on unaware: the reloaded patients are new to it, and the store still believes the old
    # write-backs open, so without reconciliation they are never written again.
    unaware = await run_cycle(base, knowledge, store)
    assert unaware.written == len(reloaded) and not unaware.failed
    changed = loaded["fail-basic"]  # one old id whose data changes after the reload
    patient = get(base, f"Patient/{changed}")
    patient["active"] = not patient.get("active", False)
    httpx.put(f"{base}/Patient/{changed}", json=patient, timeout=hapi.HTTP_TIMEOUT).raise_for_status()

    report = await run_cycle(base, knowledge, store, reconcile=True)

    found = report.reconciliation
    assert found is not None and found.server_reset and not report.failed
    assert (found.checked, found.present, found.missing) == (6, 3, 3) and found.rewrite == {changed}
    assert found.waiting == {loaded["medicationrequest-only"], loaded["threshold-201"]}
    assert report.written == 1
    for patient_id, row in rows.items():
        expected = 1 if patient_id == changed else 0
        assert len(by_identifier(base, "Task", f"{row.identifier}-task")) == expected
    statuses = {p: row.status for p, row in writebacks(store).items() if p in rows}
    assert statuses == {p: "open" if p == changed else "missing" for p in rows}
    for patient_id in reloaded.values():
        (task,) = hapi.search_all(f"{base}/Task?patient=Patient/{patient_id}")
        assert task["resource"]["status"] == "requested"


class Intercept(httpx.AsyncBaseTransport):
    """The real network, with `hook` run on every request before it is sent (to act between read and update)."""

    def __init__(self, hook: Callable[[httpx.Request, httpx.AsyncBaseTransport], Any]) -> None:
        self.hook, self.inner = hook, httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response: httpx.Response = await self.hook(request, self.inner)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
