"""FHIR Bulk Data `$export` for the first backfill: kick-off, status polling (Retry-After), NDJSON line by line.

https://hl7.org/fhir/uv/bulkdata/export.html — used when the server's CapabilityStatement lists the system-level
`export` operation; otherwise the poller backfills with paged `_lastUpdated` searches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson

from fhirsvc.fhir.client import FHIR_JSON, FhirClient, retry_after_seconds
from fhirsvc.fhir.errors import FhirError, FhirResponseError, FhirTransportError, FhirUnsafeLink, response_error
from fhirsvc.fhir.urls import link_under, normalise_url, origin
from fhirsvc.record.model import PATIENT_TYPES

# A kick-off answer, a status answer or a manifest larger than this is not what the spec describes: refused unread.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
# One NDJSON line is one resource; a longer line is skipped (and counted) without being held in memory.
MAX_LINE_BYTES = 16 * 1024 * 1024


class BulkExportFailed(FhirError):
    """The export job failed, was cancelled, or did not finish in time."""


class BulkManifestInvalid(BulkExportFailed):
    """The completed job's manifest is not the JSON object the Bulk Data spec describes."""


@dataclass(frozen=True)
class Manifest:
    transaction_time: str | None
    requires_access_token: bool
    files: tuple[str, ...]  # normalised URLs: what was checked is what is requested


@dataclass
class ExportResult:
    transaction_time: str | None  # the cursor to continue from
    resources: int = 0  # lines handed to the sink
    skipped_lines: int = 0  # lines that were not a JSON object with a resourceType, or too long


def supports_export(capability: dict[str, Any]) -> bool:
    for rest in capability.get("rest") or ():
        if rest.get("mode") != "server":
            continue
        for operation in rest.get("operation") or ():
            if operation.get("name") == "export" or str(operation.get("definition", "")).endswith("/export"):
                return True
    return False


async def bulk_export(
    client: FhirClient,
    http: httpx.AsyncClient,
    token: str | None,
    sink: Callable[[dict[str, Any]], None],
    since: str | None = None,
    types: tuple[str, ...] = (*PATIENT_TYPES, "Medication"),
    max_wait: float = 3600.0,
    poll_floor: float = 1.0,
) -> ExportResult:
    """Run an export job and hand each exported resource to `sink`, file by file, line by line.

    Status polls honour Retry-After (at least `poll_floor` seconds apart). Every file of the manifest must be on the
    FHIR server's origin or one of its profile's `bulk_storage_origins`, or nothing is downloaded; the access token
    goes only under the FHIR base URL, and not even there when the manifest says files need none. Raises a FhirError
    (BulkManifestInvalid for a malformed manifest, FhirUnsafeLink for a file elsewhere); the sink may then have
    seen part of the export.
    """
    try:
        manifest = await _run_job(client, http, token, since, types, max_wait, poll_floor)
        result = ExportResult(manifest.transaction_time)
        for url in manifest.files:
            await _download(http, url, token, manifest.requires_access_token, sink, result)
    except httpx.TransportError as exc:
        raise FhirTransportError(f"{type(exc).__name__} during the bulk export") from exc
    return result


async def _run_job(
    client: FhirClient,
    http: httpx.AsyncClient,
    token: str | None,
    since: str | None,
    types: tuple[str, ...],
    max_wait: float,
    poll_floor: float,
) -> Manifest:
    """Kick off, poll until complete, and return the checked manifest."""
    headers = {"Accept": FHIR_JSON, "Prefer": "respond-async"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    params = {"_type": ",".join(types), **({"_since": since} if since else {})}
    kickoff_url = f"{client.base_url}/$export?{urlencode(params, safe=',')}"
    kickoff = await _get_small(http, kickoff_url, headers, "export kick-off")
    if kickoff.status != 202:
        raise kickoff.error()
    status_url = link_under(kickoff.headers.get("Content-Location", ""), client.base_url)
    if status_url is None:
        raise FhirUnsafeLink("export status URL leaves the FHIR server; not followed")
    deadline = time.monotonic() + max_wait
    poll_headers = {k: v for k, v in headers.items() if k != "Prefer"}
    while True:
        status = await _get_small(http, status_url, poll_headers, "export status")
        if status.status == 200:
            return parse_manifest(status.body, client)
        if status.status != 202:
            raise status.error()
        wait = retry_after_seconds(status.headers.get("Retry-After")) or poll_floor
        if time.monotonic() + wait > deadline:
            raise BulkExportFailed("export did not finish in time")
        await asyncio.sleep(max(wait, poll_floor))


def parse_manifest(body: bytes, client: FhirClient) -> Manifest:
    """The complete-status body, checked before any file is fetched: an object with an `output` list of
    `{"type", "url"}` objects, a string `transactionTime` and a boolean `requiresAccessToken` (absent = true, the
    safe reading), every file URL on the server's origin or a listed storage origin."""
    try:
        manifest = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BulkManifestInvalid("export manifest is not JSON") from None
    if not isinstance(manifest, dict):
        raise BulkManifestInvalid("export manifest is not a JSON object")
    outputs = manifest.get("output")
    if not isinstance(outputs, list):
        raise BulkManifestInvalid("export manifest has no `output` list")
    transaction_time = manifest.get("transactionTime")
    if transaction_time is not None and not isinstance(transaction_time, str):
        raise BulkManifestInvalid("export manifest `transactionTime` is not a string")
    requires_token = manifest.get("requiresAccessToken", True)
    if not isinstance(requires_token, bool):
        raise BulkManifestInvalid("export manifest `requiresAccessToken` is not a boolean")
    allowed = {origin(client.base_url), *client.profile.bulk_storage_origins}
    files = []
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("url"), str):
            raise BulkManifestInvalid(f"export manifest `output[{index}]` has no string `url`")
        if not isinstance(output.get("type", ""), str):
            raise BulkManifestInvalid(f"export manifest `output[{index}].type` is not a string")
        # The URL itself is never put in a message: storage links are often signed, their query a credential.
        try:
            url = normalise_url(output["url"])
        except ValueError:
            raise BulkManifestInvalid(f"export manifest `output[{index}].url` is not a usable http(s) URL") from None
        if origin(url) not in allowed:
            raise FhirUnsafeLink(
                f"export file `output[{index}]` is on neither the FHIR server's origin nor a listed storage origin;"
                " nothing downloaded"
            )
        if requires_token and link_under(url, client.base_url) is None:
            raise FhirUnsafeLink(
                f"export file `output[{index}]` needs the access token outside the FHIR server's base URL; not sent"
            )
        files.append(url)
    return Manifest(transaction_time, requires_token, tuple(files))


async def _download(
    http: httpx.AsyncClient,
    url: str,
    token: str | None,
    requires_access_token: bool,
    sink: Callable[[dict[str, Any]], None],
    result: ExportResult,
) -> None:
    """Stream one NDJSON file into the sink; a bad line is skipped and counted, never fatal."""
    headers = {"Accept": "application/fhir+ndjson"}
    if token and requires_access_token:
        headers["Authorization"] = f"Bearer {token}"
    # requiresAccessToken false: no credential at all, not even the client's own (SMART Backend Services) auth.
    auth = httpx.USE_CLIENT_DEFAULT if requires_access_token else None
    async with http.stream("GET", url, headers=headers, auth=auth) as response:
        if response.status_code != 200:
            body = await _read_capped(response, MAX_MANIFEST_BYTES)
            raise _error(response.status_code, "export file", body)
        async for line in ndjson_lines(response.aiter_bytes(), MAX_LINE_BYTES):
            resource = _resource(line)
            if resource is None:
                result.skipped_lines += 1
                continue
            sink(resource)
            result.resources += 1


def _resource(line: bytes | None) -> dict[str, Any] | None:
    if line is None:
        return None
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return item if isinstance(item, dict) and isinstance(item.get("resourceType"), str) else None


async def ndjson_lines(chunks: AsyncIterator[bytes], max_line_bytes: int) -> AsyncIterator[bytes | None]:
    """The non-blank lines of a byte stream, each held only until it is complete; None for a line longer than
    `max_line_bytes` (its bytes are dropped as they arrive)."""
    pending = bytearray()
    oversized = False
    async for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if not oversized:
                pending += chunk[start:end]
            if oversized or len(pending) > max_line_bytes:
                yield None
            elif pending.strip():
                yield bytes(pending)
            pending.clear()
            oversized, start = False, end + 1
        if not oversized:
            pending += chunk[start:]
            if len(pending) > max_line_bytes:
                oversized = True
                pending.clear()
    if oversized:
        yield None
    elif pending.strip():
        yield bytes(pending)


@dataclass(frozen=True)
class _Small:
    """A bounded answer of the export protocol (kick-off, status, manifest)."""

    status: int
    headers: httpx.Headers
    body: bytes
    what: str  # named in errors instead of the URL

    def error(self) -> FhirResponseError:
        return _error(self.status, self.what, self.body)


async def _get_small(http: httpx.AsyncClient, url: str, headers: dict[str, str], what: str) -> _Small:
    async with http.stream("GET", url, headers=headers) as response:
        body = await _read_capped(response, MAX_MANIFEST_BYTES)
        return _Small(response.status_code, response.headers, body, what)


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise BulkManifestInvalid(f"export answer larger than {limit} bytes; not read")
    return bytes(body)


def _error(status: int, what: str, body: bytes) -> FhirResponseError:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    outcome = parsed if isinstance(parsed, dict) and parsed.get("resourceType") == "OperationOutcome" else None
    return response_error(status, what, outcome)
