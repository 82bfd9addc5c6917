"""Prefetch semantics (CDS Hooks 2.0 §Prefetch): use what came, fetch what is absent, 412 when unobtainable."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from fhirsvc.cds.models import CdsRequest, FhirAuthorization
from fhirsvc.cds.services import PREFETCH, REQUIRED, render
from fhirsvc.fhir.client import FhirClientPool, SearchResult, next_link
from fhirsvc.fhir.errors import FhirError
from fhirsvc.fhir.quirks import adaptive_search
from fhirsvc.fhir.record import PatientRecord, bundle_resources, subject_reference

log = logging.getLogger(__name__)


class DataUnavailable(Exception):
    """Required prefetch data could not be obtained (→ 412 Precondition Failed)."""

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys
        super().__init__("; ".join(f"{k}: {why}" for k, why in sorted(keys.items())))


@dataclass
class Gathered:
    record: PatientRecord
    fetched: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # optional keys that failed, with the reason


def _failed_outcome(value: dict[str, Any]) -> str | None:
    """A prefetch value that is, or contains, an error OperationOutcome means the client's fetch failed."""
    outcomes = [value] if value.get("resourceType") == "OperationOutcome" else []
    if value.get("resourceType") == "Bundle":
        outcomes += [r for _, r in bundle_resources(value) if r.get("resourceType") == "OperationOutcome"]
    for outcome in outcomes:
        for issue in outcome.get("issue") or ():
            if isinstance(issue, dict) and issue.get("severity") in ("error", "fatal"):
                return str(issue.get("diagnostics") or issue.get("code") or "OperationOutcome")
    return None


async def gather(request: CdsRequest, pool: FhirClientPool, max_pages: int) -> Gathered:
    """Build the patient's record from prefetch, fetching absent or failed keys from `fhirServer` in parallel."""
    patient_id = request.patient_id
    record = PatientRecord(patient_id)
    gathered = Gathered(record)
    prefetch = request.prefetch or {}
    token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
    client = pool.client(request.fhirServer) if request.fhirServer else None
    to_fetch: dict[str, str] = {}
    continuations: dict[str, dict[str, Any]] = {}
    unavailable: dict[str, str] = {}

    for key in PREFETCH:
        if key not in prefetch:
            to_fetch[key] = "absent from prefetch"
            continue
        value = prefetch[key]
        if value is None:
            continue  # queried by the client, no data: do not query again
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            raise ValueError(f"prefetch.{key} must be a FHIR resource, a Bundle or null")
        failure = _failed_outcome(value)
        if failure is not None:
            to_fetch[key] = f"client fetch failed ({failure})"
            continue
        if value.get("resourceType") == "Bundle":
            for _, resource in bundle_resources(value):
                _add(record, resource, patient_id)
            if next_link(value) is not None:
                continuations[key] = value  # a paginated prefetch: the rest is on the server
        else:
            _add(record, value, patient_id)

    async def fetch(key: str) -> tuple[str, SearchResult | FhirError | None]:
        if client is None:
            return key, None
        try:
            if key in continuations:
                result = SearchResult(pages=1)
                await client.follow_next(continuations[key], result, token, max_pages)
                return key, result
            query = render(PREFETCH[key], patient_id)
            if "?" not in query:
                return key, SearchResult(resources=[await client.get_json(query, token)], pages=1)
            return key, await adaptive_search(client, query, token, max_pages)
        except FhirError as exc:
            return key, exc

    results = await asyncio.gather(*(fetch(k) for k in [*to_fetch, *continuations]))
    for key, outcome in results:
        if isinstance(outcome, SearchResult):
            gathered.fetched.append(key)
            for resource in outcome.resources:
                _add(record, resource, patient_id)
            continue
        reason = to_fetch.get(key, "paging failed")
        why = f"{reason}; no fhirServer to fetch from" if outcome is None else f"{reason}; fetch failed: {outcome}"
        if key in REQUIRED:
            unavailable[key] = why
        else:
            gathered.failed[key] = why
            log.info("optional prefetch %s unavailable: %s", key, type(outcome).__name__)
    if unavailable:
        raise DataUnavailable(unavailable)
    return gathered


def _add(record: PatientRecord, resource: dict[str, Any], patient_id: str) -> None:
    """Keep the resources about this patient; `_include`d or stray ones are ignored, malformed ones counted."""
    rtype = resource.get("resourceType")
    if rtype == "Medication" and isinstance(resource.get("id"), str):
        record.medications[f"Medication/{resource['id']}"] = resource
        return
    if rtype == "OperationOutcome":
        return
    if not isinstance(rtype, str):
        record.skipped += 1
        return
    # A server that ignores an unsupported `patient` parameter returns everyone's data: keep only this patient's.
    if subject_reference(resource) != f"Patient/{patient_id}":
        record.skipped += 1
        return
    record.add(resource)


async def fetch_patient(
    pool: FhirClientPool, fhir_server: str, patient_id: str, token: str | None, max_pages: int
) -> Gathered:
    """Everything the prefetch templates would hold, fetched from the server (the poller's view of a patient)."""
    request = CdsRequest(hook="poll", hookInstance="poll", context={"patientId": patient_id}, fhirServer=fhir_server)
    if token:
        request.fhirAuthorization = FhirAuthorization(
            access_token=token, token_type="Bearer", expires_in=300, scope="system/*.read", subject="fhirsvc"  # noqa: S106
        )
    return await gather(request, pool, max_pages)
