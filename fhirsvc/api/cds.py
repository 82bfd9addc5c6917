"""CDS Hooks routes: discovery and service calls (thin; the work is in prefetch, rules and cards)."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from functools import partial
from typing import Annotated, Any
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from fhirsvc.api.client_jwt import CdsClientIdentity, cds_client, discovery_client
from fhirsvc.api.evaluation import EvaluationPool
from fhirsvc.api.feedback import (
    FeedbackItem,
    FeedbackRequest,
    card_scope,
    client_of,
    filter_and_record,
    parse_feedback,
    store_feedback,
)
from fhirsvc.api.limits import may_hold_overlong_text, overlong_text, resource_count
from fhirsvc.api.logs import Clock, annotate, annotate_patient, started_at
from fhirsvc.api.responses import OrjsonResponse, operation_outcome, outcome
from fhirsvc.cds.models import CdsRequest, CdsResponse, Discovery, inline_schema, response_body
from fhirsvc.cds.services import PREFETCH, SERVICES
from fhirsvc.config import Settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.fhir.urls import fhir_server_allowed
from fhirsvc.pipeline import evaluate_record
from fhirsvc.record.gather import DataUnavailable, gather
from fhirsvc.record.model import RECORD_PART_BY_KEY, bundle_resources
from fhirsvc.render.cards import by_resource_type, cards_with_findings, incomplete_card
from fhirsvc.render.evidence import step_therapy_cards
from fhirsvc.render.timeout import not_evaluated_card
from fhirsvc.store.db import Store
from fhirsvc.terminology.knowledge import Knowledge

log = logging.getLogger(__name__)
router = APIRouter(tags=["CDS Hooks"])


# Dependencies are `async def` although they never wait: FastAPI runs a plain `def` dependency in the thread pool,
# one hand-off per dependency per call (bench/README.md).
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_knowledge(request: Request) -> Knowledge:
    knowledge: Knowledge = request.app.state.knowledge
    return knowledge


async def get_pool(request: Request) -> FhirClientPool:
    pool: FhirClientPool = request.app.state.fhir_pool
    return pool


async def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def today(request: Request) -> date:
    """The evaluation date: FHIRSVC_TODAY when set (demos), else the current UTC date."""
    pinned: date | None = request.app.state.settings.today
    return pinned or datetime.now(UTC).date()


SettingsDep = Annotated[Settings, Depends(get_settings)]
KnowledgeDep = Annotated[Knowledge, Depends(get_knowledge)]
PoolDep = Annotated[FhirClientPool, Depends(get_pool)]
TodayDep = Annotated[date, Depends(today)]
StoreDep = Annotated[Store, Depends(get_store)]
ClientDep = Annotated[CdsClientIdentity | None, Depends(cds_client)]
DiscoveryClientDep = Annotated[CdsClientIdentity | None, Depends(discovery_client)]

# Share of the time budget for FHIR fetches; the rest is for evaluating, the store and the answer.
FETCH_SHARE = 0.8
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: {"description": "No valid CDS client JWT (empty body)"}}
_TOO_LARGE = outcome("Request body larger than FHIRSVC_MAX_BODY_BYTES")
# The routes read the raw body (size limit, our own 400s), so FastAPI cannot see it: documented here instead.
_HOOK_REQUEST = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(CdsRequest)}}}
}
_FEEDBACK_REQUEST = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                # The spec's {"feedback": [...]}, or one bare item (HAPI's CDS Hooks server sends that).
                "schema": {"anyOf": [inline_schema(FeedbackRequest), inline_schema(FeedbackItem)]}
            }
        },
    }
}


@router.get("/cds-services", response_model=Discovery, response_model_exclude_none=True, responses={**_UNAUTHORIZED})
def discovery(_client: DiscoveryClientDep) -> dict[str, Any]:
    return {
        "services": [
            {
                "hook": s.hook,
                "id": s.id,
                "title": s.title,
                "description": s.description,
                "prefetch": PREFETCH,
            }
            for s in SERVICES.values()
        ]
    }


@router.post(
    "/cds-services/{service_id}",
    response_model=CdsResponse,
    responses={
        400: outcome("Malformed request"),
        **_UNAUTHORIZED,
        404: outcome("Unknown service"),
        412: outcome("Required data unobtainable (or to be fetched from a fhirServer not on the allowlist)"),
        413: outcome("Body over FHIRSVC_MAX_BODY_BYTES, or resources over FHIRSVC_MAX_RESOURCES_PER_REQUEST"),
    },
    openapi_extra=_HOOK_REQUEST,
)
async def call_service(
    service_id: str,
    request: Request,
    _client: ClientDep,
    settings: SettingsDep,
    knowledge: KnowledgeDep,
    pool: PoolDep,
    store: StoreDep,
    as_of: TodayDep,
) -> Response:
    service = SERVICES.get(service_id)
    if service is None:
        return operation_outcome(404, f"no CDS service {service_id!r}", code="not-found")
    body = await request.body()  # size-limited by the BodySizeLimit middleware (FHIRSVC_MAX_BODY_BYTES)
    try:
        document = orjson.loads(body)  # nesting deeper than 1024 levels is refused here too
        cds_request = CdsRequest.model_validate(document)
    except orjson.JSONDecodeError:
        return operation_outcome(400, "request body is not valid JSON (or nested deeper than 1024 levels)")
    except ValidationError as exc:
        return operation_outcome(400, _validation_message(exc))
    too_many = _over_the_resource_limit(cds_request, settings.max_resources_per_request)
    if too_many is not None:
        return too_many
    overlong = None
    if may_hold_overlong_text(body, settings.max_text_chars):  # microseconds; the walk takes milliseconds
        overlong = overlong_text(document, settings.max_text_chars)
    if overlong is not None:
        return operation_outcome(
            400, f"a string in {overlong[:64]!r} is over {settings.max_text_chars} characters (FHIRSVC_MAX_TEXT_CHARS)"
        )
    del document
    annotate(request, hook=cds_request.hook)
    annotate_patient(request, cds_request.patient_id)
    if cds_request.hook != service.hook:
        return operation_outcome(400, f"service {service.id!r} answers hook {service.hook!r}, not {cds_request.hook!r}")
    # Never a proxy: the bearer token and our requests go only to servers the operator listed. A server off the
    # list is never contacted: a complete prefetch is evaluated as it came, and what it lacks is a 412.
    server = cds_request.fhirServer
    unlisted = bool(server) and not fhir_server_allowed(server or "", settings.fhir_servers)
    if unlisted:
        annotate(request, fhir_server="not-allowlisted", **_host_field(server or ""))
        absent = [key for key in RECORD_PART_BY_KEY if key not in (cds_request.prefetch or {})]
        if absent:
            return _not_fetched_from_unlisted_server(absent)
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
            return _not_fetched_from_unlisted_server(sorted(exc.keys))
        return operation_outcome(412, f"required data unavailable: {exc}", code="not-found")
    except ValueError as exc:
        return operation_outcome(400, str(exc))
    if unlisted:
        if gathered.failed:
            return _not_fetched_from_unlisted_server(sorted(gathered.failed))
        if gathered.record.missing_medications():
            # Read by id from the FHIR server when allowed; here they stay unread, like a failed read.
            gathered.record.incomplete["Medication"] = "referenced medications are on a FHIR server not listed"
    if gathered.upstream_faults:
        annotate(request, fhir_unavailable=sorted(gathered.upstream_faults))
    if gathered.missing:
        # Evaluating without required data would turn "not fetched" into "not on file" (e.g. "no viral load"):
        # answer only that the check is incomplete.
        card = incomplete_card(cds_request.patient_id, by_resource_type(gathered.missing))
        return OrjsonResponse(response_body([card]))
    if service.plans_from_draft_orders:
        gathered.record.planned.extend(_draft_medication_orders(cds_request.context.get("draftOrders")))
    evaluations: EvaluationPool = request.app.state.evaluations
    result = await evaluations.run(
        partial(evaluate_record, gathered.record, knowledge, as_of),
        deadline=started_at(request) + settings.cds_time_budget,
    )
    if result is None:  # out of time: no finding is made from a half-done evaluation, and nothing is stored
        annotate(request, evaluation="timed-out")
        return OrjsonResponse(response_body([not_evaluated_card(cds_request.patient_id)]))
    if result.skipped:  # malformed resources left out of the evaluation: counted on the request's log line
        annotate(request, skipped_resources=result.skipped)
    findings = cards_with_findings(result)
    if service.plans_from_draft_orders:  # the first-line evidence a next-line draft order will need
        findings += step_therapy_cards(gathered.record, result, knowledge)
    # A dead patient gets no card at all, not even "data incomplete".
    patient, unread = result.patient, ({} if result.death else result.incomplete)
    scope = card_scope(_client, cds_request.fhirServer, patient, cds_request.context.get("userId"))
    # The parsed request and record are not needed past this point: release them before waiting on the store,
    # so concurrent calls do not each hold a whole prefetch in memory (bench/README.md finding 6).
    del body, cds_request, gathered, result
    cards = await run_in_threadpool(
        filter_and_record,
        store,
        service.id,
        scope,
        findings,
        settings.feedback_suppress_days,
        settings.feedback_suppress_scope == "client",
    )
    if unread:  # the findings that read the missing data were withheld
        cards.append(incomplete_card(patient.partition("/")[2], unread))
    return OrjsonResponse(response_body(cards))


@router.post(
    "/cds-services/{service_id}/feedback",
    response_class=Response,  # 200 with an empty body
    responses={
        200: {"description": "Feedback stored (empty body)"},
        400: outcome("Malformed feedback"),
        **_UNAUTHORIZED,
        404: outcome("Unknown service"),
        413: _TOO_LARGE,
    },
    openapi_extra=_FEEDBACK_REQUEST,
)
async def feedback(service_id: str, request: Request, _client: ClientDep, store: StoreDep) -> Response:
    if service_id not in SERVICES:
        return operation_outcome(404, f"no CDS service {service_id!r}", code="not-found")
    try:
        items = parse_feedback(orjson.loads(await request.body()))
    except orjson.JSONDecodeError:
        return operation_outcome(400, "request body is not valid JSON")
    except ValueError as exc:
        return operation_outcome(400, str(exc))
    saved = await run_in_threadpool(store_feedback, store, service_id, client_of(_client), items)
    log.info("feedback stored=%d duplicates=%d ignored=%d", saved.stored, saved.duplicates, saved.ignored)
    return Response(status_code=200)


def _over_the_resource_limit(cds_request: CdsRequest, limit: int) -> Response | None:
    carried = resource_count(cds_request.prefetch, cds_request.context)
    if carried <= limit:
        return None
    return operation_outcome(
        413,
        f"the request carries {carried} resources; at most {limit} are accepted (FHIRSVC_MAX_RESOURCES_PER_REQUEST)",
        code="too-costly",
    )


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


def _draft_medication_orders(draft_orders: object) -> list[dict[str, Any]]:
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
