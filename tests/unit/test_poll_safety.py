"""Write-back safety without a server: identity checks, version-aware closing, batched reconciliation, the CLI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx
from typer.testing import CliRunner

from fhirsvc.cli import app
from fhirsvc.config import Settings
from fhirsvc.fhir.client import FhirClient, FhirClientPool
from fhirsvc.poll.reconcile import BATCH, Reconciliation, reconcile
from fhirsvc.poll.verify import Located, close_task, locate
from fhirsvc.poll.worker import CycleReport, Poller
from fhirsvc.render.writeback import FINDING_SYSTEM, is_part_of
from fhirsvc.store.db import Store
from fhirsvc.store.models import WriteBack
from fhirsvc.store.repository import MISSING, now

BASE = "https://fhir.example.test/r4"
FINDING = "00000000-0000-4000-8000-000000000001"
PATIENT = "Patient/p1"

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client() -> AsyncIterator[FhirClient]:
    pool = FhirClientPool(Settings(fhir_max_retries=0))
    yield pool.client(BASE)
    await pool.aclose()


def task(
    finding: str = FINDING, patient: str = PATIENT, status: str = "requested", version: str = "1", id_: str = "t1"
) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "id": id_,
        "meta": {"versionId": version},
        "identifier": [{"system": FINDING_SYSTEM, "value": f"{finding}-task"}],
        "status": status,
        "intent": "proposal",
        "for": {"reference": patient},
    }


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def test_a_write_back_part_is_ours_only_with_our_identifier_and_its_patient() -> None:
    assert is_part_of(task(), "Task", f"{FINDING}-task", PATIENT)
    assert is_part_of(task(patient=f"{BASE}/Patient/p1"), "Task", f"{FINDING}-task", PATIENT)
    assert not is_part_of(task(patient="Patient/p2"), "Task", f"{FINDING}-task", PATIENT)
    assert not is_part_of(task(finding="another"), "Task", f"{FINDING}-task", PATIENT)
    assert not is_part_of({**task(), "resourceType": "Goal"}, "Task", f"{FINDING}-task", PATIENT)
    assert not is_part_of({**task(), "identifier": "not a list"}, "Task", f"{FINDING}-task", PATIENT)


@respx.mock
async def test_if_match_sends_the_weak_version_and_only_when_asked(client: FhirClient) -> None:
    route = respx.put(f"{BASE}/Task/t1").mock(return_value=httpx.Response(200, json=task()))
    await client.put_json("Task/t1", task(), if_match="7")
    await client.put_json("Task/t1", task())
    assert route.calls[0].request.headers["If-Match"] == 'W/"7"'
    assert "If-Match" not in route.calls[1].request.headers


@respx.mock
async def test_a_stored_reference_naming_another_patients_task_is_not_used(client: FhirClient) -> None:
    respx.get(f"{BASE}/Task/t9").mock(return_value=httpx.Response(200, json=task(patient="Patient/p2", id_="t9")))
    respx.get(f"{BASE}/Task").mock(return_value=httpx.Response(200, json=searchset(task(id_="t1"))))
    located = await locate(client, None, "Task", f"{FINDING}-task", PATIENT, "Task/t9")
    assert (located.reference, located.mismatched, located.repaired) == ("Task/t1", True, True)


@respx.mock
async def test_a_deleted_task_is_searched_by_identifier_and_none_found_is_none(client: FhirClient) -> None:
    respx.get(f"{BASE}/Task/t1").mock(return_value=httpx.Response(410))
    search = respx.get(f"{BASE}/Task").mock(return_value=httpx.Response(200, json=searchset()))
    located = await locate(client, None, "Task", f"{FINDING}-task", PATIENT, "Task/t1")
    assert (located.reference, located.mismatched) == (None, False)
    assert search.calls[0].request.url.params["identifier"] == f"{FINDING_SYSTEM}|{FINDING}-task"


@respx.mock
@pytest.mark.parametrize("refused", [409, 412])
async def test_a_task_closed_by_someone_else_meanwhile_is_left_as_they_saved_it(
    client: FhirClient, refused: int
) -> None:
    put = respx.put(f"{BASE}/Task/t1").mock(return_value=httpx.Response(refused))
    respx.get(f"{BASE}/Task/t1").mock(return_value=httpx.Response(200, json=task(status="completed", version="2")))
    located = Located("Task/t1", task(), mismatched=False, repaired=False)
    outcome = await close_task(client, None, located, f"{FINDING}-task", PATIENT, False, "back in range")
    assert outcome == "edited-closed" and put.call_count == 1


@respx.mock
async def test_a_task_edited_but_open_is_closed_on_the_new_version_with_the_edit_kept(client: FhirClient) -> None:
    edited = {**task(version="2"), "note": [{"text": "called"}]}
    put = respx.put(f"{BASE}/Task/t1").mock(side_effect=[httpx.Response(412), httpx.Response(200, json=edited)])
    respx.get(f"{BASE}/Task/t1").mock(return_value=httpx.Response(200, json=edited))
    located = Located("Task/t1", task(), mismatched=False, repaired=False)
    outcome = await close_task(client, None, located, f"{FINDING}-task", PATIENT, False, "back in range")
    assert outcome == "edited-then-closed"
    second = put.calls[1].request
    assert second.headers["If-Match"] == 'W/"2"'
    sent = json.loads(second.content)
    assert sent["status"] == "cancelled" and sent["note"] == [{"text": "called"}]


@respx.mock
async def test_a_task_refused_twice_is_a_conflict_left_for_the_next_cycle(client: FhirClient) -> None:
    put = respx.put(f"{BASE}/Task/t1").mock(return_value=httpx.Response(412))
    respx.get(f"{BASE}/Task/t1").mock(return_value=httpx.Response(200, json=task(version="3")))
    located = Located("Task/t1", task(), mismatched=False, repaired=False)
    outcome = await close_task(client, None, located, f"{FINDING}-task", PATIENT, False, "back in range")
    assert outcome == "conflict" and put.call_count == 2


def add_writebacks(store: Store, count: int) -> list[str]:
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(count)]
    with store.session() as session:
        for n, finding in enumerate(ids):
            session.add(
                WriteBack(
                    identifier=finding,
                    server=BASE,
                    patient=f"Patient/p{n}",
                    program="hiv",
                    rule="r",
                    status="open",
                    resources={"Task": f"Task/t{n}"},
                    created_at=now(),
                )
            )
    return ids


@respx.mock
async def test_reconcile_searches_in_batches_repairs_and_marks_the_missing(client: FhirClient, store: Store) -> None:
    ids = add_writebacks(store, BATCH + 10)
    # The server holds every Task but the first, the second under another id than the stored one.
    held = {f"{f}-task": task(finding=f, patient=f"Patient/p{n}", id_=f"t{n}") for n, f in enumerate(ids) if n}
    held[f"{ids[1]}-task"]["id"] = "moved"

    def answer(request: httpx.Request) -> httpx.Response:
        wanted = [v.split("|")[1] for v in request.url.params["identifier"].split(",")]
        return httpx.Response(200, json=searchset(*(held[v] for v in wanted if v in held)))

    search = respx.get(f"{BASE}/Task").mock(side_effect=answer)
    found = await reconcile(client, store, BASE, None, changed=set())
    assert search.call_count == 2 and all(int(c.request.url.params["_count"]) == BATCH for c in search.calls)
    assert (found.checked, found.present, found.missing, found.repaired) == (BATCH + 10, BATCH + 9, 1, 1)
    assert not found.server_reset and found.rewrite == {"p0"}
    with store.session() as session:
        assert session.get(WriteBack, ids[0]).status == MISSING  # type: ignore[union-attr]
        assert session.get(WriteBack, ids[1]).resources == {"Task": "Task/moved"}  # type: ignore[union-attr]


@respx.mock
async def test_a_server_holding_none_of_many_is_a_reset_and_only_changed_patients_are_rewritten(
    client: FhirClient, store: Store
) -> None:
    add_writebacks(store, 4)
    respx.get(f"{BASE}/Task").mock(return_value=httpx.Response(200, json=searchset()))
    found = await reconcile(client, store, BASE, None, changed={"p2"})
    assert found.server_reset and found.missing == 4
    assert found.rewrite == {"p2"} and found.waiting == {"p0", "p1", "p3"}


runner = CliRunner()


def test_poll_reconcile_reconciles_and_says_what_it_found(monkeypatch: pytest.MonkeyPatch) -> None:
    from fhirsvc.config import get_settings

    asked: list[bool] = []

    async def cycle(self: Poller, server: str, reconcile: bool = False, **_: Any) -> CycleReport:
        asked.append(reconcile)
        found = Reconciliation(checked=5, missing=5, server_reset=True, waiting={"a", "b"}, rewrite={"c"})
        return CycleReport(reconciliation=found, mismatched=1, repaired=1)

    monkeypatch.setattr(Poller, "cycle", cycle)
    monkeypatch.setenv("FHIRSVC_FHIR_TOKEN", "t")
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["poll", "--fhir-server", BASE, "--once", "--reconcile"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert asked == [True]
    assert "reconcile: 5 open write-backs checked, 0 on the server, 5 missing" in result.output
    assert "data was reset or restored from a backup" in result.output
    assert "2 patients' write-backs wait" in result.output
    assert "1 stored references named another resource, 1 repaired" in result.output
