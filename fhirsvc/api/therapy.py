"""GET /patients/{id}/therapy: the stored current line-of-therapy state per program, and its history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from fhirsvc.api.client_jwt import CdsClientIdentity, cds_client
from fhirsvc.api.responses import OrjsonResponse, operation_outcome, outcome
from fhirsvc.store.db import Store
from fhirsvc.store.repository import therapy_history

TherapyClientDep = Annotated[CdsClientIdentity | None, Depends(cds_client)]
router = APIRouter(tags=["patients"])


def _therapy(store: Store, patient: str) -> dict[str, Any] | None:
    with store.session() as session:
        rows = therapy_history(session, patient)
        if not rows:
            return None
        current: dict[tuple[str, str], Any] = {}
        for row in rows:
            current[(row.server, row.program)] = row
        return {
            "patient": patient,
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
    programs: list[dict[str, Any]] = Field(description="One `fhirsvc evaluate` program item per program and server")
    history: list[StateChange]


@router.get(
    "/patients/{patient_id}/therapy",
    response_model=Therapy,
    responses={
        401: {"description": "No valid client JWT (empty body)"},
        404: outcome("No stored therapy state for this patient"),
    },
)
async def therapy(patient_id: str, request: Request, _client: TherapyClientDep) -> Response:
    """Same shape as one `fhirsvc evaluate` item's programs, plus every recorded change.

    Protected health information: the same client JWTs as the CDS services (allowlisted issuers) are required.
    """
    body = await run_in_threadpool(_therapy, request.app.state.store, f"Patient/{patient_id}")
    if body is None:
        return operation_outcome(404, f"no stored therapy state for Patient/{patient_id}", code="not-found")
    return OrjsonResponse(body)
