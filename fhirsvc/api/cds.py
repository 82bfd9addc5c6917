"""CDS Hooks routes: discovery, service calls and feedback (thin: the steps are in hook_call, the pipeline and the
renderings)."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from fhirsvc.api.deps import (
    ClientDep,
    DiscoveryClientDep,
    KnowledgeDep,
    PoolDep,
    SettingsDep,
    StoreDep,
    TodayDep,
)
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
from fhirsvc.api.hook_call import EarlyAnswer, draft_medication_orders, gather_record, read_request
from fhirsvc.api.logs import annotate, annotate_patient, started_at
from fhirsvc.api.responses import OrjsonResponse, operation_outcome, outcome
from fhirsvc.cds.models import CdsRequest, CdsResponse, Discovery, inline_schema, response_body
from fhirsvc.cds.services import PREFETCH, SERVICES
from fhirsvc.pipeline import evaluate_record
from fhirsvc.render.cards import by_resource_type, cards_with_findings, incomplete_card
from fhirsvc.render.evidence import step_therapy_cards
from fhirsvc.render.timeout import not_evaluated_card

log = logging.getLogger(__name__)
router = APIRouter(tags=["CDS Hooks"])


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
    caller: ClientDep,
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
        cds_request = read_request(body, settings)
        annotate(request, hook=cds_request.hook)
        annotate_patient(request, cds_request.patient_id)
        if cds_request.hook != service.hook:
            raise EarlyAnswer(
                operation_outcome(
                    400, f"service {service.id!r} answers hook {service.hook!r}, not {cds_request.hook!r}"
                )
            )
        gathered = await gather_record(request, cds_request, settings, pool)
    except EarlyAnswer as answer:
        return answer.response
    if gathered.upstream_faults:
        annotate(request, fhir_unavailable=sorted(gathered.upstream_faults))
    if gathered.missing:
        # Evaluating without required data would turn "not fetched" into "not on file" (e.g. "no viral load"):
        # answer only that the check is incomplete.
        card = incomplete_card(cds_request.patient_id, by_resource_type(gathered.missing))
        return OrjsonResponse(response_body([card]))
    if service.plans_from_draft_orders:
        gathered.record.planned.extend(draft_medication_orders(cds_request.context.get("draftOrders")))
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
    findings = cards_with_findings(result, settings.smart_app_launch_url)
    if service.plans_from_draft_orders:  # the first-line evidence a next-line draft order will need
        findings += step_therapy_cards(gathered.record, result, knowledge)
    # A dead patient gets no card at all, not even "data incomplete".
    patient, unread = result.patient, ({} if result.death else result.incomplete)
    scope = card_scope(caller, cds_request.fhirServer, patient, cds_request.context.get("userId"))
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
async def feedback(service_id: str, request: Request, caller: ClientDep, store: StoreDep) -> Response:
    if service_id not in SERVICES:
        return operation_outcome(404, f"no CDS service {service_id!r}", code="not-found")
    try:
        items = parse_feedback(orjson.loads(await request.body()))
    except orjson.JSONDecodeError:
        return operation_outcome(400, "request body is not valid JSON")
    except ValueError as exc:
        return operation_outcome(400, str(exc))
    saved = await run_in_threadpool(store_feedback, store, service_id, client_of(caller), items)
    log.info("feedback stored=%d duplicates=%d ignored=%d", saved.stored, saved.duplicates, saved.ignored)
    return Response(status_code=200)
