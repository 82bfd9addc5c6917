"""GET /patients/{id}/therapy: the stored current line-of-therapy state per program, and its history, on one of
the FHIR servers the calling client is registered for."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from fhirsvc.api.client_jwt import CdsClientIdentity, cds_client
from fhirsvc.api.responses import OrjsonResponse, operation_outcome, outcome
from fhirsvc.config import Settings
from fhirsvc.fhir.urls import normalise_base_url
from fhirsvc.store.db import Store
from fhirsvc.store.repository import therapy_history

TherapyClientDep = Annotated[CdsClientIdentity | None, Depends(cds_client)]
router = APIRouter(tags=["patients"])


def registered_servers(settings: Settings, client: CdsClientIdentity | None) -> list[str]:
    """The FHIR servers whose patients `client` may read: its `fhir_servers` in FHIRSVC_CDS_CLIENTS. With
    FHIRSVC_CDS_AUTH=off (no client identity; local development only) the service's FHIRSVC_FHIR_SERVERS."""
    if client is None:
        return list(settings.fhir_servers)
    for registered in settings.cds_clients:
        if registered.iss == client.iss:
            return registered.fhir_servers
    return []


def _same_server(stored: str, server: str) -> bool:
    try:
        return normalise_base_url(stored) == server
    except ValueError:  # a prefetch-only namespace or another marker: never one of a client's servers
        return False


def _therapy(store: Store, patient: str, server: str) -> dict[str, Any] | None:
    with store.session() as session:
        # Stored server strings are compared as server identities: Patient/123 of another server is another person.
        rows = [row for row in therapy_history(session, patient) if _same_server(row.server, server)]
        if not rows:
            return None
        current: dict[str, Any] = {}
        for row in rows:
            current[row.program] = row
        return {
            "patient": patient,
            "server": server,
            "programs": [row.report for row in current.values()],
            "history": [
                {
                    "program": row.program,
                    "server": row.server,
                    "as_of": row.as_of.isoformat(),
                    "recorded": row.created_at.isoformat(),
                    "current_line": row.current_line,
                    "status": row.status,
                    "state": row.report,
                }
                for row in rows
            ],
        }


class StateChange(BaseModel):
    program: str
    server: str
    as_of: str
    recorded: str
    current_line: int | None
    status: str | None
    state: dict[str, Any]


class Therapy(BaseModel):
    patient: str
    server: str = Field(description="The FHIR server identity the patient id belongs to")
    programs: list[dict[str, Any]] = Field(description="One `fhirsvc evaluate` program item per program")
    history: list[StateChange]


ServerQuery = Annotated[
    str | None,
    Query(description="FHIR base URL the patient id belongs to; required when the client is registered for several"),
]


@router.get(
    "/patients/{patient_id}/therapy",
    response_model=Therapy,
    responses={
        400: outcome("No server named while the client is registered for several, or not a base URL"),
        401: {"description": "No valid client JWT (empty body)"},
        403: outcome("The server is not one the client is registered for"),
        404: outcome("No stored therapy state for this patient on this server"),
    },
)
async def therapy(patient_id: str, request: Request, client: TherapyClientDep, server: ServerQuery = None) -> Response:
    """Same shape as one `fhirsvc evaluate` item's programs, plus every recorded change, for one FHIR server.

    Protected health information: the same client JWTs as the CDS services (allowlisted issuers) are required, and
    a client reads only patients of the FHIR servers it is registered for (`fhir_servers` of its
    FHIRSVC_CDS_CLIENTS entry).
    """
    allowed = registered_servers(request.app.state.settings, client)
    if server is None:
        if len(allowed) > 1:
            return operation_outcome(400, "name the FHIR server: ?server=<base URL> (several are registered)")
        if not allowed:
            return operation_outcome(403, "this client is registered for no FHIR server", code="forbidden")
        wanted = allowed[0]
    else:
        try:
            wanted = normalise_base_url(server)
        except ValueError as exc:
            return operation_outcome(400, str(exc))
        if wanted not in allowed:
            return operation_outcome(403, "server is not one this client is registered for", code="forbidden")
    body = await run_in_threadpool(_therapy, request.app.state.store, f"Patient/{patient_id}", wanted)
    if body is None:
        return operation_outcome(404, f"no stored therapy state for Patient/{patient_id}", code="not-found")
    return OrjsonResponse(body)
