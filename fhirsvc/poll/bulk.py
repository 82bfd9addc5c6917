"""FHIR Bulk Data `$export` for the first backfill: kick-off, status polling (Retry-After), NDJSON download.

https://hl7.org/fhir/uv/bulkdata/export.html — used when the server's CapabilityStatement lists the system-level
`export` operation; otherwise the poller backfills with paged `_lastUpdated` searches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson

from fhirsvc.fhir.client import FHIR_JSON, FhirClient, retry_after_seconds
from fhirsvc.fhir.errors import FhirError, FhirResponseError, FhirUnsafeLink, response_error
from fhirsvc.fhir.urls import is_under
from fhirsvc.record.model import PATIENT_TYPES


class BulkExportFailed(FhirError):
    """The export job failed, was cancelled, or did not finish in time."""


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
    since: str | None = None,
    types: tuple[str, ...] = (*PATIENT_TYPES, "Medication"),
    max_wait: float = 3600.0,
    poll_floor: float = 1.0,
) -> tuple[list[dict[str, Any]], str | None]:
    """Run an export job; return its resources and its transactionTime (the cursor to continue from).

    Status polls honour Retry-After (at least `poll_floor` seconds apart).
    """
    headers = {"Accept": FHIR_JSON, "Prefer": "respond-async"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    params = {"_type": ",".join(types), **({"_since": since} if since else {})}
    kickoff = await http.get(f"{client.base_url}/$export?{urlencode(params, safe=',')}", headers=headers)
    if kickoff.status_code != 202:
        raise _error(kickoff)
    status_url = kickoff.headers.get("Content-Location", "")
    if not is_under(status_url, client.base_url):
        raise FhirUnsafeLink("export status URL leaves the FHIR server; not followed")
    deadline = time.monotonic() + max_wait
    poll_headers = {k: v for k, v in headers.items() if k != "Prefer"}
    while True:
        status = await http.get(status_url, headers=poll_headers)
        if status.status_code == 200:
            manifest = orjson.loads(status.content)
            break
        if status.status_code != 202:
            raise _error(status)
        wait = retry_after_seconds(status.headers.get("Retry-After")) or poll_floor
        if time.monotonic() + wait > deadline:
            raise BulkExportFailed("export did not finish in time")
        await asyncio.sleep(max(wait, poll_floor))
    resources: list[dict[str, Any]] = []
    for output in manifest.get("output") or ():
        url = str(output.get("url", ""))
        file_headers = {"Accept": "application/fhir+ndjson"}
        if token and manifest.get("requiresAccessToken", True):
            file_headers["Authorization"] = f"Bearer {token}"  # only to our own server; see the check below
            if not is_under(url, client.base_url):
                raise FhirUnsafeLink("export file URL leaves the FHIR server; token not sent")
        response = await http.get(url, headers=file_headers)
        if response.status_code != 200:
            raise _error(response)
        resources.extend(_ndjson(response.content))
    transaction_time = manifest.get("transactionTime")
    return resources, transaction_time if isinstance(transaction_time, str) else None


def _ndjson(content: bytes) -> Iterator[dict[str, Any]]:
    for line in content.splitlines():
        if line.strip():
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # one bad line never sinks the export
            if isinstance(item, dict):
                yield item


def _error(response: httpx.Response) -> FhirResponseError:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    outcome = body if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome" else None
    return response_error(response.status_code, str(response.request.url), outcome)
