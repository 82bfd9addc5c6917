"""The steps of one CDS service call before evaluation: read the request within its limits, and gather the
patient record from the prefetch and the allowlisted FHIR server. A step that must answer early (400, 412, 413)
raises EarlyAnswer with the response."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import orjson
from fastapi import Request, Response
from pydantic import ValidationError

from fhirsvc.api.limits import may_hold_overlong_text, overlong_text, resource_count
from fhirsvc.api.logs import Clock, annotate, started_at
from fhirsvc.api.responses import operation_outcome
from fhirsvc.cds.models import CdsRequest
from fhirsvc.config import Settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.fhir.urls import fhir_server_allowed
from fhirsvc.record.gather import DataUnavailable, Gathered, gather
from fhirsvc.record.model import RECORD_PART_BY_KEY, bundle_resources

# Share of the time budget for FHIR fetches; the rest is for evaluating, the store and the answer.
FETCH_SHARE = 0.8


class EarlyAnswer(Exception):
    """The call is answered before evaluation (an error, or data that cannot be obtained)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def read_request(body: bytes, settings: Settings) -> CdsRequest:
    """The parsed request, or an EarlyAnswer: 400 for malformed JSON, a request that is not CDS Hooks or a string
    over FHIRSVC_MAX_TEXT_CHARS; 413 for more resources than FHIRSVC_MAX_RESOURCES_PER_REQUEST."""
    try:
        document = orjson.loads(body)  # nesting deeper than 1024 levels is refused here too
        cds_request = CdsRequest.model_validate(document)
    except orjson.JSONDecodeError:
        raise EarlyAnswer(
            operation_outcome(400, "request body is not valid JSON (or nested deeper than 1024 levels)")
        ) from None
    except ValidationError as exc:
        raise EarlyAnswer(operation_outcome(400, _validation_message(exc))) from None
    carried = resource_count(cds_request.prefetch, cds_request.context)
    limit = settings.max_resources_per_request
    if carried > limit:
        raise EarlyAnswer(
            operation_outcome(
                413,
                f"the request carries {carried} resources; at most {limit} are accepted "
                "(FHIRSVC_MAX_RESOURCES_PER_REQUEST)",
                code="too-costly",
            )
        )
    if may_hold_overlong_text(body, settings.max_text_chars):  # microseconds; the walk takes milliseconds
        overlong = overlong_text(document, settings.max_text_chars)
        if overlong is not None:
            raise EarlyAnswer(
                operation_outcome(
                    400,
                    f"a string in {overlong[:64]!r} is over {settings.max_text_chars} characters "
                    "(FHIRSVC_MAX_TEXT_CHARS)",
                )
            )
    return cds_request


async def gather_record(
    request: Request, cds_request: CdsRequest, settings: Settings, pool: FhirClientPool
) -> Gathered:
    """The patient record from the prefetch, fetching what is absent from `fhirServer` within the fetch share of
    the time budget; draft orders added as planned therapy by the caller."""
    # Never a proxy: the bearer token and our requests go only to servers the operator listed. A server off the
    # list is never contacted: a complete prefetch is evaluated as it came, and what it lacks is a 412.
    server = cds_request.fhirServer
    unlisted = bool(server) and not fhir_server_allowed(server or "", settings.fhir_servers)
    if unlisted:
        annotate(request, fhir_server="not-allowlisted", **_host_field(server or ""))
        absent = [key for key in RECORD_PART_BY_KEY if key not in (cds_request.prefetch or {})]
        if absent:
            raise EarlyAnswer(_not_fetched_from_unlisted_server(absent))
    client = pool.client(server) if server and not unlisted else None
    authorization = cds_request.fhirAuthorization
    clock: Clock = request.app.state.clock
    try:
        gathered = await gather(
            cds_request.patient_id,
            cds_request.prefetch,
            client,
            authorization.access_token if client and authorization else None,
            settings.fhir_max_pages,
            deadline=started_at(request) + settings.cds_time_budget * FETCH_SHARE,
            clock=clock,
            tolerate_upstream_faults=True,
        )
    except DataUnavailable as exc:
        if unlisted:  # a failed client fetch or a paged prefetch: the rest is on that server
            raise EarlyAnswer(_not_fetched_from_unlisted_server(sorted(exc.keys))) from None
        raise EarlyAnswer(operation_outcome(412, f"required data unavailable: {exc}", code="not-found")) from None
    except ValueError as exc:
        raise EarlyAnswer(operation_outcome(400, str(exc))) from None
    if unlisted:
        if gathered.failed:
            raise EarlyAnswer(_not_fetched_from_unlisted_server(sorted(gathered.failed)))
        if gathered.record.missing_medications():
            # Read by id from the FHIR server when allowed; here they stay unread, like a failed read.
            gathered.record.incomplete["Medication"] = "referenced medications are on a FHIR server not listed"
    return gathered


def _host_field(fhir_server: str) -> dict[str, str]:
    """The unlisted server's host for the log line: never the URL, whose path or query may carry a secret."""
    try:
        host = urlsplit(fhir_server).hostname
    except ValueError:
        return {}
    return {"fhir_server_host": host[:253]} if host else {}


def _not_fetched_from_unlisted_server(keys: list[str]) -> Response:
    return operation_outcome(
        412,
        "fhirServer is not one of this service's FHIR servers, so nothing is fetched from it, and the prefetch "
        f"lacks: {', '.join(keys)}",
        code="security",
    )


def draft_medication_orders(draft_orders: object) -> list[dict[str, Any]]:
    """MedicationRequests in `context.draftOrders` (a Bundle): planned therapy for order-select/order-sign."""
    if not isinstance(draft_orders, dict):
        return []
    return [r for _, r in bundle_resources(draft_orders) if r.get("resourceType") == "MedicationRequest"]


def _validation_message(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or "body"
        problems.append(f"{where}: {error['msg']}")
    return "invalid CDS Hooks request: " + "; ".join(problems[:5])
