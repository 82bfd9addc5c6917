"""The poll cycle under trouble: a server that stops answering, a conditional create that lost a race, a second
poller on a SQLite store (MockTransport FHIR servers; the HAPI and PostgreSQL cases are in tests/integration)."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from fhirsvc.cli import POLLER_BUSY, app
from fhirsvc.config import Settings, get_settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.poll.leases import PollerBusy
from fhirsvc.poll.worker import CycleReport, Poller
from fhirsvc.store.db import Store
from fhirsvc.store.models import WriteBack
from fhirsvc.store.repository import claim_lease, get_cursor, now
from fhirsvc.terminology.knowledge import Knowledge
from tests.cds_helpers import FHIR_BASE, FakeFhirServer, resources_of, searchset
from tests.conftest import AS_OF, load_fixture

pytestmark = pytest.mark.anyio
PATIENTS = [f"p{n}" for n in range(1, 9)]


class FlakyServer:
    """Eight patients with nothing but a Patient resource; `down_from` makes every request fail (connection
    refused) from the read of that patient on, as a server that dies mid-cycle."""

    def __init__(self) -> None:
        self.down_from: str | None = None
        self.down = False
        self.patient_reads: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        parts = urlsplit(str(request.url))
        path = parts.path[len(urlsplit(FHIR_BASE).path) :].strip("/")
        if path.startswith("Patient/"):
            self.patient_reads.append(path.partition("/")[2])
            self.down |= path == f"Patient/{self.down_from}"
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if path == "metadata":
            return httpx.Response(200, json={"resourceType": "CapabilityStatement", "rest": []})
        if path.startswith("Patient/"):
            return httpx.Response(200, json=patient(path.partition("/")[2]))
        query = parse_qs(parts.query)
        if path == "Patient" and "_sort" in query:  # the changed-patient search
            return httpx.Response(200, json=searchset([patient(p) for p in PATIENTS]))
        return httpx.Response(200, json=searchset([]))


def patient(patient_id: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": patient_id, "meta": {"lastUpdated": "2026-05-01T00:00:00.000Z"}}


async def cycle(poller_settings: Settings, knowledge: Knowledge, store: Store, transport: Any) -> CycleReport:
    pool = FhirClientPool(poller_settings, transport=transport)
    try:
        return await Poller(poller_settings, knowledge, store, pool).cycle(FHIR_BASE, as_of=AS_OF, out=io.StringIO())
    finally:
        await pool.aclose()


async def test_a_server_that_goes_down_mid_cycle_ends_it_after_three_patients_and_the_next_resumes(
    knowledge: Knowledge, store: Store
) -> None:
    server = FlakyServer()
    server.down_from = "p3"
    settings = Settings(writeback_target="off", fhir_backoff_seconds=0)
    down = await cycle(settings, knowledge, store, httpx.MockTransport(server.handle))
    # p1 and p2 evaluated, p3 to p5 failed: the circuit opened and p6 to p8 were never tried.
    assert down.evaluated == ["p1", "p2", "p3", "p4", "p5"] and down.failed == ["p3", "p4", "p5"]
    assert down.not_attempted == 3 and down.circuit_open and "3 patients in a row" in down.circuit_open
    assert sorted(set(server.patient_reads)) == ["p1", "p2", "p3", "p4", "p5"]
    with store.session() as session:
        assert get_cursor(session, "https://fhir.example.test/r4", "Patient") is None  # the cursor stays

    server.down, server.down_from = False, None
    back = await cycle(settings, knowledge, store, httpx.MockTransport(server.handle))
    assert back.evaluated == PATIENTS and not back.failed and back.circuit_open is None
    with store.session() as session:
        assert get_cursor(session, "https://fhir.example.test/r4", "Patient") == "2026-05-01T00:00:00.000Z"


async def test_a_conditional_create_that_lost_a_race_is_found_written_by_identifier(
    knowledge: Knowledge, store: Store
) -> None:
    """Another writer committed the same resources first: HAPI answers HAPI-2745; the poller finds them by their
    identifiers, records them as written and counts no failure."""
    server = FakeFhirServer(resources_of(load_fixture("hiv/fail-basic.json")), token=None)
    written: dict[str, str] = {}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":  # the race winner's copies land; ours is refused
            for entry in orjson.loads(request.content)["entry"]:
                resource = {**entry["resource"], "id": str(uuid.uuid4())}
                server.resources.append(resource)
                written[entry["resource"]["identifier"][0]["value"]] = f"{resource['resourceType']}/{resource['id']}"
            outcome = {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "processing", "diagnostics": "HAPI-2745: multiple matches"}],
            }
            return httpx.Response(409, json=outcome)
        return server.handle(request)

    report = await cycle(Settings(), knowledge, store, httpx.MockTransport(handle))
    assert not report.failed and report.conflicts_resolved == 1 and report.written >= 1
    with store.session() as session:
        rows = session.query(WriteBack).all()
    assert rows and all(row.status == "open" for row in rows)
    for row in rows:
        assert row.resources["Task"] == written[f"{row.identifier}-task"]
        assert row.resources["GuidanceResponse"] == written[row.identifier]


async def test_a_second_poller_on_a_sqlite_store_is_refused_until_the_first_lets_go(
    knowledge: Knowledge, store: Store
) -> None:
    server = FakeFhirServer(resources_of(load_fixture("hiv/fail-basic.json")), token=None)
    settings = Settings(writeback_target="off")
    pool = FhirClientPool(settings, transport=server.transport)
    first = Poller(settings, knowledge, store, pool, owner="host-a:1")
    second = Poller(settings, knowledge, store, pool, owner="host-b:2")
    try:
        assert (await first.cycle(FHIR_BASE, as_of=AS_OF, out=io.StringIO())).patients == 1
        requests = len(server.requests)
        with pytest.raises(PollerBusy, match=r"another poller \(host-a:1\).*one poller per SQLite store"):
            await second.cycle(FHIR_BASE, as_of=AS_OF, out=io.StringIO())
        assert len(server.requests) == requests  # refused before asking the server anything
        assert (await first.cycle(FHIR_BASE, as_of=AS_OF, out=io.StringIO())).patients >= 0  # the holder goes on
        first.release(FHIR_BASE)
        await second.cycle(FHIR_BASE, as_of=AS_OF, out=io.StringIO())
    finally:
        await pool.aclose()


def test_poll_refuses_a_second_poller_with_a_message_and_exit_code_not_a_traceback(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with store.session() as session:
        assert claim_lease(session, FHIR_BASE, "*", "other-host:4242", now(), 300)
    monkeypatch.setenv("FHIRSVC_STORE_URL", store.url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["poll", "--fhir-server", FHIR_BASE, "--once"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == POLLER_BUSY, result.output
    assert "another poller (other-host:4242)" in result.stderr and "PostgreSQL" in result.stderr
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


async def test_the_lease_of_a_poller_process_that_died_on_this_host_is_taken_over_at_once(
    knowledge: Knowledge, store: Store
) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = f"{socket.gethostname()}:{finished.stdout.strip()}"
    with store.session() as session:
        assert claim_lease(session, FHIR_BASE, "*", dead, now(), 300)
    server = FakeFhirServer(resources_of(load_fixture("hiv/fail-basic.json")), token=None)
    report = await cycle(Settings(writeback_target="off"), knowledge, store, server.transport)
    assert report.evaluated and not report.failed
