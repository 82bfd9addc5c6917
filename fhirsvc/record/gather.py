"""A patient record from what a client sent (CDS Hooks prefetch) and what the FHIR server holds: use what came,
fetch what is absent, say what could not be read (CDS Hooks 2.0 §Prefetch)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fhirsvc.fhir.client import FhirClient, FhirClientPool, SearchResult, bundle_total, next_link
from fhirsvc.fhir.errors import FhirError, FhirInvalidResponse, FhirNotFound, FhirServerError, FhirTransportError
from fhirsvc.fhir.quirks import adaptive_search
from fhirsvc.record.model import CLINICAL_TYPES, RECORD_PART_BY_KEY, PatientRecord, filing_patient, keep_medication

log = logging.getLogger(__name__)


class DataUnavailable(Exception):
    """Required prefetch data could not be obtained (→ 412 Precondition Failed)."""

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys
        super().__init__("; ".join(f"{k}: {why}" for k, why in sorted(keys.items())))


# The FHIR server is slow, down or failing: worth an answer with what we can decide, never a 412 or a 5xx.
# (A refused token, a missing fhirServer or a `next` link off the server stay 412: retrying would not help.)
UPSTREAM_FAULTS = (FhirTransportError, FhirServerError, FhirInvalidResponse)


class OutOfTime(Exception):
    """The fetch did not finish within the CDS call's time budget."""

    def __str__(self) -> str:
        return "no answer within the time budget"


@dataclass
class Gathered:
    record: PatientRecord
    fetched: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # optional keys that failed, with the reason
    # Required keys the FHIR server did not deliver (slow, down, failing): only with `tolerate_upstream_faults`.
    missing: dict[str, str] = field(default_factory=dict)
    upstream_faults: list[str] = field(default_factory=list)  # every key, required or optional, lost that way


def _failed_outcome(outcomes: list[dict[str, Any]]) -> str | None:
    """A prefetch value that is, or contains, an error OperationOutcome means the client's fetch failed."""
    for outcome in outcomes:
        for issue in outcome.get("issue") or ():
            if isinstance(issue, dict) and issue.get("severity") in ("error", "fatal"):
                return str(issue.get("diagnostics") or issue.get("code") or "OperationOutcome")
    return None


def _bundle_resources(bundle: dict[str, Any], record: PatientRecord) -> list[Any]:
    """The entries' resources; entries without a resource object are malformed, counted on the record."""
    entries = bundle.get("entry")
    entries = entries if isinstance(entries, list) else []  # `"entry": 5` must not raise
    resources = [e["resource"] for e in entries if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    record.skipped += len(entries) - len(resources)
    return resources


def _take(record: PatientRecord, resources: list[Any], expected: str) -> str | None:
    """Add one prefetch value's resources to the record (`_add` decides each one), unless it reports a failed fetch:
    then nothing is added and the failure is returned."""
    outcomes = [r for r in resources if r.get("resourceType") == "OperationOutcome"]
    failure = _failed_outcome(outcomes)
    if failure is not None:
        return failure
    for resource in resources:
        _add(record, resource, expected)
    return None


async def gather(
    patient_id: str,
    prefetch: Mapping[str, Any] | None,
    client: FhirClient | None,
    token: str | None,
    max_pages: int,
    deadline: float | None = None,
    tolerate_upstream_faults: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> Gathered:
    """Build the patient's record from prefetch, fetching absent or failed keys from `fhirServer` in parallel,
    then the Medication resources the record's medications reference.

    `deadline` (read on `clock`) cuts every fetch still running then. With `tolerate_upstream_faults`, required
    keys lost to a slow, down or failing server land in `Gathered.missing` instead of raising DataUnavailable
    (the CDS call answers anyway; the poller must not act on partial data, so it keeps the default). A search cut
    short (page cap, a server-side limit) and an optional key lost to a fault are recorded in
    `record.incomplete`, so the findings that depend on them are withheld.
    """
    record = PatientRecord(patient_id)
    gathered = Gathered(record)
    prefetch = prefetch or {}
    to_fetch: dict[str, str] = {}
    continuations: dict[str, dict[str, Any]] = {}
    unavailable: dict[str, str] = {}

    for key in RECORD_PART_BY_KEY:
        if key not in prefetch:
            to_fetch[key] = "absent from prefetch"
            continue
        value = prefetch[key]
        if value is None:
            continue  # queried by the client, no data: do not query again
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            raise ValueError(f"prefetch.{key} must be a FHIR resource, a Bundle or null")
        is_bundle = value.get("resourceType") == "Bundle"
        failure = _take(record, _bundle_resources(value, record) if is_bundle else [value], f"Patient/{patient_id}")
        if failure is not None:
            to_fetch[key] = f"client fetch failed ({failure})"
            continue
        if is_bundle and next_link(value) is not None:
            continuations[key] = value  # a paginated prefetch: the rest is on the server
        elif is_bundle and _short_of_total(value):
            record.incomplete[RECORD_PART_BY_KEY[key].resource_type] = "the prefetch holds fewer results than its total"

    if not to_fetch and not continuations and (client is None or not record.missing_medications()):
        # A complete prefetch (the common CDS call): nothing to fetch, so no deadline, futures or tasks either.
        return gathered
    loop = asyncio.get_running_loop()
    cutoff = None if deadline is None else loop.time() + (deadline - clock())

    async def fetch(key: str) -> tuple[str, SearchResult | FhirError | OutOfTime | None]:
        if client is None:
            return key, None
        try:
            # Each fetch has the same cutoff, so the ones that finished in time are kept.
            async with asyncio.timeout_at(cutoff):
                if key in continuations:
                    result = SearchResult(pages=1)
                    await client.follow_next(continuations[key], result, token, max_pages)
                    return key, result
                query = RECORD_PART_BY_KEY[key].query(patient_id)
                if "?" not in query:
                    try:
                        return key, SearchResult(resources=[await client.get_json(query, token)], pages=1)
                    except FhirNotFound:  # a read of what the server does not hold: no data, not a failure
                        return key, SearchResult(pages=1)
                return key, await adaptive_search(client, query, token, max_pages)
        except FhirError as exc:
            return key, exc
        except TimeoutError:
            return key, OutOfTime()

    results = await asyncio.gather(*(fetch(k) for k in [*to_fetch, *continuations]))
    for key, outcome in results:
        resource_type = RECORD_PART_BY_KEY[key].resource_type
        if isinstance(outcome, SearchResult):
            gathered.fetched.append(key)
            for resource in outcome.resources:
                _add(record, resource, f"Patient/{patient_id}")
            if outcome.truncated:
                record.incomplete[resource_type] = f"the search stopped after {outcome.pages} pages"
                log.warning("search for %s cut short after %d pages", resource_type, outcome.pages)
            continue
        reason = to_fetch.get(key, "paging failed")
        why = f"{reason}; no fhirServer to fetch from" if outcome is None else f"{reason}; fetch failed: {outcome}"
        upstream_fault = isinstance(outcome, (OutOfTime, *UPSTREAM_FAULTS))
        if upstream_fault and tolerate_upstream_faults:
            gathered.upstream_faults.append(key)
        if not RECORD_PART_BY_KEY[key].required:
            gathered.failed[key] = why
            if outcome is not None:  # a fetch was tried and failed: the data exists but was not read
                record.incomplete[resource_type] = why
            log.info("optional prefetch %s unavailable: %s", key, type(outcome).__name__)
        elif upstream_fault and tolerate_upstream_faults:
            gathered.missing[key] = why
            log.warning("required prefetch %s unavailable: %s", key, type(outcome).__name__)
        else:
            unavailable[key] = why
    if unavailable:
        raise DataUnavailable(unavailable)
    if client is not None and not gathered.missing:
        await _fetch_medications(client, record, token, max_pages, cutoff, gathered)
    return gathered


# Medications referenced by id are read in batches of this many ids (`_id=a,b,...`; URLs stay short).
_MEDICATION_BATCH = 50


async def _fetch_medications(
    client: FhirClient,
    record: PatientRecord,
    token: str | None,
    max_pages: int,
    cutoff: float | None,
    gathered: Gathered,
) -> None:
    """Read the Medication resources that `medicationReference`s name and the record lacks (no prefetch template
    can ask for them: they depend on the orders' content). Without them a product coded only on the Medication
    would be unrecognised, so a failed read marks Medication incomplete."""
    missing = [ref.partition("/")[2] for ref in record.missing_medications()]
    if not missing:
        return
    try:
        async with asyncio.timeout_at(cutoff):
            for start in range(0, len(missing), _MEDICATION_BATCH):
                ids = ",".join(missing[start : start + _MEDICATION_BATCH])
                result = await client.search(f"Medication?_id={ids}", token, max_pages)
                for resource in result.resources:
                    if resource.get("resourceType") == "Medication":
                        keep_medication(record.medications, resource)
        gathered.fetched.append("medications")
    except (FhirError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        record.incomplete["Medication"] = f"referenced medications could not be read: {reason}"
        log.info("referenced medications unavailable: %s", type(exc).__name__)


def _short_of_total(bundle: dict[str, Any]) -> bool:
    """A searchset whose `total` counts more matches than it carries entries, with no `next` link to read the rest.

    Entries are counted, not matches: our templates ask for no `_include`, and counting only `search.mode` "match"
    would cost a pass over every entry of every prefetch for a case no template produces.
    """
    total = bundle_total(bundle)
    entries = bundle.get("entry")
    return total is not None and (len(entries) if isinstance(entries, list) else 0) < total


def _add(record: PatientRecord, resource: dict[str, Any], expected: str) -> None:
    """Keep the resources about this patient (`expected` = "Patient/<id>"), filed by the one filing rule
    (`filing_patient`); Medications are kept for `medicationReference`s, resources the pipeline does not read are
    ignored, malformed ones and other patients' counted (a server that ignores an unsupported `patient` parameter
    returns everyone's data)."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):  # e.g. a list from a hostile server: not a resource
        record.skipped += 1
        return
    subject = resource.get("subject") or resource.get("patient")
    if isinstance(subject, dict) and subject.get("reference") == expected and rtype in CLINICAL_TYPES:
        # What filing_patient decides for a reference that is already "Patient/<id>", without normalising it: the
        # common case, and at 10,000 resources the full rule cost 12 % of the in-process evaluation (bench.profile).
        record.add(resource)
        return
    if rtype == "Medication":
        keep_medication(record.medications, resource)
        return
    patient, malformed = filing_patient(resource)
    if patient == expected:
        record.add(resource)
    elif patient is not None or malformed:
        record.skipped += 1


async def fetch_patient(
    pool: FhirClientPool, fhir_server: str, patient_id: str, token: str | None, max_pages: int
) -> Gathered:
    """Everything a patient record holds, fetched from the server (the poller's view of a patient)."""
    return await gather(patient_id, None, pool.client(fhir_server), token, max_pages)
