"""Bulk Data $export client (respx: our HAPI test server has no bulk export): kick-off, Retry-After, files."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import respx

from fhirsvc.config import Settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.fhir.errors import FhirServerError, FhirUnsafeLink
from fhirsvc.poll import bulk as bulk_module
from fhirsvc.poll.bulk import bulk_export, supports_export

BASE = "https://bulk.example.test/fhir"
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waited: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(bulk_module.asyncio, "sleep", fake_sleep)
    return waited


@pytest.fixture
async def pool() -> AsyncIterator[FhirClientPool]:
    pool = FhirClientPool(Settings())
    yield pool
    await pool.aclose()


def ndjson(*resources: dict[str, object]) -> bytes:
    return b"\n".join(orjson.dumps(r) for r in resources) + b"\n{broken\n"


@respx.mock
async def test_export_polls_with_retry_after_and_downloads_ndjson(pool: FhirClientPool, sleeps: list[float]) -> None:
    kickoff = respx.get(f"{BASE}/$export").respond(202, headers={"Content-Location": f"{BASE}/$export-poll/1"})
    respx.get(f"{BASE}/$export-poll/1").mock(
        side_effect=[
            httpx.Response(202, headers={"Retry-After": "3", "X-Progress": "50%"}),
            httpx.Response(202),
            httpx.Response(
                200,
                json={
                    "transactionTime": "2026-06-01T00:00:00Z",
                    "requiresAccessToken": True,
                    "output": [
                        {"type": "Observation", "url": f"{BASE}/files/obs.ndjson"},
                        {"type": "Patient", "url": f"{BASE}/files/pat.ndjson"},
                    ],
                },
            ),
        ]
    )
    files = respx.get(url__startswith=f"{BASE}/files/", headers={"Authorization": "Bearer t"})
    files.mock(
        side_effect=lambda request: httpx.Response(
            200,
            content=ndjson({"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"}})
            if "obs" in str(request.url)
            else ndjson({"resourceType": "Patient", "id": "p1"}),
        )
    )
    client = pool.client(BASE)
    resources, transaction_time = await bulk_export(client, client.http, "t", since="2026-01-01T00:00:00Z")
    assert sorted(r["id"] for r in resources) == ["o1", "p1"] and transaction_time == "2026-06-01T00:00:00Z"
    assert sleeps == [3.0, 1.0]
    assert "_since=2026-01-01T00%3A00%3A00Z" in str(kickoff.calls[0].request.url)
    assert kickoff.calls[0].request.headers["Prefer"] == "respond-async"


@respx.mock
async def test_failed_kickoff_carries_the_status(pool: FhirClientPool, sleeps: list[float]) -> None:
    respx.get(f"{BASE}/$export").respond(503, json={"resourceType": "OperationOutcome", "issue": []})
    client = pool.client(BASE)
    with pytest.raises(FhirServerError):
        await bulk_export(client, client.http, None)


@respx.mock
async def test_file_on_another_host_never_gets_the_token(pool: FhirClientPool, sleeps: list[float]) -> None:
    respx.get(f"{BASE}/$export").respond(202, headers={"Content-Location": f"{BASE}/status"})
    respx.get(f"{BASE}/status").respond(
        200, json={"output": [{"type": "Observation", "url": "https://cdn.evil.test/x"}]}
    )
    stolen = respx.get("https://cdn.evil.test/x")
    client = pool.client(BASE)
    with pytest.raises(FhirUnsafeLink):
        await bulk_export(client, client.http, "secret")
    assert not stolen.called


def test_capability_statement_detection() -> None:
    with_export = {
        "rest": [
            {
                "mode": "server",
                "operation": [
                    {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}
                ],
            }
        ]
    }
    assert supports_export(with_export)
    assert not supports_export({"rest": [{"mode": "server", "operation": [{"name": "everything"}]}]})
