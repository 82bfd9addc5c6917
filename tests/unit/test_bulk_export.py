"""Bulk Data $export client (respx: our HAPI test server has no bulk export): kick-off, Retry-After, files."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import respx
from pydantic import ValidationError

from fhirsvc.config import Settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.fhir.errors import FhirServerError, FhirUnsafeLink
from fhirsvc.poll import bulk as bulk_module
from fhirsvc.poll.bulk import BulkManifestInvalid, bulk_export, ndjson_lines, supports_export
from fhirsvc.poll.worker import Poller
from fhirsvc.store.db import Store
from fhirsvc.terminology.knowledge import Knowledge
from tests.cds_helpers import FHIR_BASE, FakeFhirServer, resources_of
from tests.conftest import AS_OF, load_fixture

BASE = "https://bulk.example.test/fhir"
pytestmark = pytest.mark.anyio


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


def ignore(resource: dict[str, object]) -> None:
    """A sink for exports whose resources the test does not look at."""


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
    resources: list[dict[str, object]] = []
    result = await bulk_export(client, client.http, "t", resources.append, since="2026-01-01T00:00:00Z")
    assert sorted(r["id"] for r in resources) == ["o1", "p1"] and result.transaction_time == "2026-06-01T00:00:00Z"
    assert result.resources == 2 and result.skipped_lines == 2  # the `{broken` line of each file
    assert sleeps == [3.0, 1.0]
    assert "_since=2026-01-01T00%3A00%3A00Z" in str(kickoff.calls[0].request.url)
    assert kickoff.calls[0].request.headers["Prefer"] == "respond-async"


@respx.mock
async def test_failed_kickoff_carries_the_status(pool: FhirClientPool, sleeps: list[float]) -> None:
    respx.get(f"{BASE}/$export").respond(503, json={"resourceType": "OperationOutcome", "issue": []})
    client = pool.client(BASE)
    with pytest.raises(FhirServerError):
        await bulk_export(client, client.http, None, ignore)


@respx.mock
async def test_file_on_another_host_never_gets_the_token(pool: FhirClientPool, sleeps: list[float]) -> None:
    respx.get(f"{BASE}/$export").respond(202, headers={"Content-Location": f"{BASE}/status"})
    respx.get(f"{BASE}/status").respond(
        200, json={"output": [{"type": "Observation", "url": "https://cdn.evil.test/x"}]}
    )
    stolen = respx.get("https://cdn.evil.test/x")
    client = pool.client(BASE)
    with pytest.raises(FhirUnsafeLink):
        await bulk_export(client, client.http, "secret", ignore)
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


# Hostile and malformed manifests ------------------------------------------------------------------------------------

STORAGE = "https://storage.example.test"


def job_with_manifest(manifest: bytes) -> None:
    """A job that completes at once with this status body (inside an active respx mock)."""
    respx.get(f"{BASE}/$export").respond(202, headers={"Content-Location": f"{BASE}/status"})
    respx.get(f"{BASE}/status").respond(200, content=manifest)


def manifest(*urls: str, **fields: object) -> bytes:
    return orjson.dumps({"output": [{"type": "Patient", "url": url} for url in urls], **fields})


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"<html>Service Unavailable</html>", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"transactionTime": "2026-06-01T00:00:00Z"}', "no `output` list"),
        (b'{"output": {"url": "x"}}', "no `output` list"),
        (b'{"output": ["https://bulk.example.test/fhir/f.ndjson"]}', "`output[0]` has no string `url`"),
        (b'{"output": [{"type": "Patient", "url": 7}]}', "`output[0]` has no string `url`"),
        (b'{"output": [{"type": 1, "url": "https://bulk.example.test/fhir/f"}]}', "`output[0].type`"),
        (b'{"output": [{"type": "Patient", "url": "ftp://bulk.example.test/f"}]}', "not a usable http(s) URL"),
        (b'{"output": [], "transactionTime": 20260601}', "`transactionTime` is not a string"),
        (b'{"output": [], "requiresAccessToken": "no"}', "`requiresAccessToken` is not a boolean"),
    ],
)
@respx.mock
async def test_a_malformed_manifest_is_a_clear_error_and_nothing_is_downloaded(
    pool: FhirClientPool, sleeps: list[float], body: bytes, problem: str
) -> None:
    job_with_manifest(body)
    files = respx.get(url__startswith="https://bulk.example.test/fhir/f")
    client = pool.client(BASE)
    with pytest.raises(BulkManifestInvalid, match=re.escape(problem)):
        await bulk_export(client, client.http, "t", ignore)
    assert not files.called


@pytest.mark.parametrize("token", [None, "secret"])
@respx.mock
async def test_a_file_on_an_unlisted_host_is_never_fetched_with_or_without_a_token(
    pool: FhirClientPool, sleeps: list[float], token: str | None
) -> None:
    job_with_manifest(manifest(f"{BASE}/files/ok.ndjson", "https://cdn.evil.test/x", requiresAccessToken=False))
    ours = respx.get(f"{BASE}/files/ok.ndjson").respond(200, content=b"")
    stolen = respx.get("https://cdn.evil.test/x")
    client = pool.client(BASE)
    with pytest.raises(FhirUnsafeLink):
        await bulk_export(client, client.http, token, ignore)
    assert not stolen.called and not ours.called  # checked before anything is downloaded


@respx.mock
async def test_a_file_link_climbing_out_of_the_base_never_gets_the_token(
    pool: FhirClientPool, sleeps: list[float]
) -> None:
    job_with_manifest(manifest(f"{BASE}/../admin/export.ndjson"))
    elsewhere = respx.get(url__startswith="https://bulk.example.test/admin")
    client = pool.client(BASE)
    with pytest.raises(FhirUnsafeLink):
        await bulk_export(client, client.http, "secret", ignore)
    assert not elsewhere.called


class Credential(httpx.Auth):
    """The client's own auth (as SMART Backend Services sets it on the pooled client)."""

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        request.headers["Authorization"] = "Bearer backend-services"
        yield request


@respx.mock
async def test_files_from_a_listed_storage_origin_come_without_any_credential(sleeps: list[float]) -> None:
    settings = Settings(server_profiles={BASE: {"bulk_storage_origins": [STORAGE + ":443/"]}})
    pool = FhirClientPool(settings)
    job_with_manifest(
        manifest(f"{STORAGE}/signed/pat.ndjson?sig=abc", f"{BASE}/files/obs.ndjson", requiresAccessToken=False)
    )
    stored = respx.get(f"{STORAGE}/signed/pat.ndjson").respond(200, content=ndjson({"resourceType": "Patient"}))
    ours = respx.get(f"{BASE}/files/obs.ndjson").respond(200, content=ndjson({"resourceType": "Observation"}))
    client = pool.client(BASE, auth=Credential())
    try:
        seen: list[dict[str, object]] = []
        await bulk_export(client, client.http, "static", seen.append)
    finally:
        await pool.aclose()
    assert [r["resourceType"] for r in seen] == ["Patient", "Observation"]
    assert "Authorization" not in stored.calls[0].request.headers
    assert "Authorization" not in ours.calls[0].request.headers  # requiresAccessToken false: not even our own


@respx.mock
async def test_a_storage_origin_never_gets_the_token_even_when_the_manifest_asks(sleeps: list[float]) -> None:
    pool = FhirClientPool(Settings(server_profiles={BASE: {"bulk_storage_origins": [STORAGE]}}))
    job_with_manifest(manifest(f"{STORAGE}/pat.ndjson", requiresAccessToken=True))
    stored = respx.get(f"{STORAGE}/pat.ndjson")
    client = pool.client(BASE)
    try:
        with pytest.raises(FhirUnsafeLink, match="access token"):
            await bulk_export(client, client.http, "secret", ignore)
    finally:
        await pool.aclose()
    assert not stored.called


@pytest.mark.parametrize("origin", ["http://storage.example.test", "https://storage.example.test/bucket", "s3://b"])
def test_a_storage_origin_is_an_https_origin(origin: str) -> None:
    with pytest.raises(ValidationError):
        Settings(server_profiles={BASE: {"bulk_storage_origins": [origin]}})


# Streaming ----------------------------------------------------------------------------------------------------------


@respx.mock
async def test_files_are_processed_line_by_line_as_they_stream(pool: FhirClientPool, sleeps: list[float]) -> None:
    """The first resource reaches the sink before the file's last bytes have arrived: nothing is buffered whole."""
    seen: list[dict[str, object]] = []
    seen_when_last_chunk_was_asked: list[int] = []

    class SlowFile(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b'{"resourceType": "Patient", "id": "p1"}\n{"resourceType": "Pat'
            yield b'ient", "id": "p2"}\n'
            seen_when_last_chunk_was_asked.append(len(seen))
            yield b'{"resourceType": "Patient", "id": "p3"}'  # no final newline

    job_with_manifest(manifest(f"{BASE}/files/pat.ndjson"))
    respx.get(f"{BASE}/files/pat.ndjson").mock(return_value=httpx.Response(200, stream=SlowFile()))
    client = pool.client(BASE)
    result = await bulk_export(client, client.http, "t", seen.append)
    assert [r["id"] for r in seen] == ["p1", "p2", "p3"] and result.resources == 3
    assert seen_when_last_chunk_was_asked == [2]


async def test_an_overlong_line_is_skipped_without_being_held() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"a": 1}\n' + b"x" * 10
        yield b"y" * 10 + b'\n{"b": 2}\n\n'
        yield b"z" * 30

    lines = [line async for line in ndjson_lines(chunks(), max_line_bytes=15)]
    assert lines == [b'{"a": 1}', None, b'{"b": 2}', None]


@respx.mock
async def test_an_error_status_for_a_file_is_a_fhir_error_without_the_url(
    pool: FhirClientPool, sleeps: list[float]
) -> None:
    job_with_manifest(manifest(f"{BASE}/files/pat.ndjson?signature=s3cr3t"))
    respx.get(f"{BASE}/files/pat.ndjson").respond(503)
    client = pool.client(BASE)
    with pytest.raises(FhirServerError) as raised:
        await bulk_export(client, client.http, "t", ignore)
    assert "s3cr3t" not in str(raised.value) and "s3cr3t" not in raised.value.url


# The poll cycle ---------------------------------------------------------------------------------------------------

CAPABILITY_WITH_EXPORT = {
    "resourceType": "CapabilityStatement",
    "rest": [{"mode": "server", "operation": [{"name": "export", "definition": "x/OperationDefinition/export"}]}],
}


@pytest.mark.parametrize(
    ("status_body", "reported"),
    [
        (b"{not json", "export manifest is not JSON"),
        (b'{"transactionTime": "2026-06-01T00:00:00Z"}', "no `output` list"),
        (b'{"output": [{"type": "Patient", "url": "https://cdn.evil.test/p.ndjson"}]}', "nothing downloaded"),
    ],
)
async def test_a_failed_export_is_reported_and_the_cycle_backfills_with_searches(
    knowledge: Knowledge, tmp_path: Path, caplog: pytest.LogCaptureFixture, status_body: bytes, reported: str
) -> None:
    server = FakeFhirServer(resources_of(load_fixture("hiv/fail-basic.json")), token=None)
    server.overrides = {
        "metadata": lambda _: httpx.Response(200, json=CAPABILITY_WITH_EXPORT),
        "$export": lambda _: httpx.Response(202, headers={"Content-Location": f"{FHIR_BASE}/status"}),
        "status": lambda _: httpx.Response(200, content=status_body),
    }
    settings = Settings(writeback_target="off")
    store = Store(f"sqlite:///{tmp_path / 'poll.db'}")
    store.upgrade()
    pool = FhirClientPool(settings, transport=server.transport)
    try:
        with caplog.at_level(logging.WARNING, logger="fhirsvc.poll.worker"):
            report = await Poller(settings, knowledge, store, pool).cycle(FHIR_BASE, as_of=AS_OF, out=io.StringIO())
    finally:
        await pool.aclose()
        store.close()
    assert report.patients == 1 and not report.failed
    assert any("_lastUpdated" in str(r.url) or "_sort" in str(r.url) for r in server.requests)  # the searches
    assert all(r.url.host == "fhir.example.test" for r in server.requests)
    assert reported in caplog.text and "cdn.evil.test" not in caplog.text
