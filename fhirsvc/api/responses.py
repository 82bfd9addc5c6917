"""HTTP response helpers shared by the routes: orjson bodies and OperationOutcome errors."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel


class OrjsonResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def operation_outcome(status: int, message: str, code: str = "invalid") -> Response:
    """Errors carry an OperationOutcome body (CDS Hooks 3.0 STU, #returning-operationoutcome)."""
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": message}],
    }
    return OrjsonResponse(body, status_code=status)


class OutcomeIssue(BaseModel):
    severity: Literal["fatal", "error", "warning", "information"]
    code: str
    diagnostics: str | None = None


class OperationOutcome(BaseModel):
    """The error body of every 4xx/5xx that has one (OpenAPI documentation of `operation_outcome`)."""

    resourceType: Literal["OperationOutcome"]
    issue: list[OutcomeIssue]


def outcome(description: str) -> dict[str, Any]:
    """An OpenAPI `responses` entry for an OperationOutcome error."""
    return {"model": OperationOutcome, "description": description}


def document_as_served(schema: dict[str, Any], cds_auth: bool, discovery_auth: bool) -> dict[str, Any]:
    """Make the generated OpenAPI document say what the running service does (idempotent, in place).

    - Request validation errors are answered 400 with an OperationOutcome (app.py), never FastAPI's 422.
    - The CDS client JWT is documented where it is checked: nowhere with FHIRSVC_CDS_AUTH=off, and on discovery only
      with FHIRSVC_CDS_AUTH_DISCOVERY=true (FastAPI marks every route that reads the header as secured).
    """
    invalid = {
        "description": "Invalid request",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}},
    }
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", invalid)
            checked = cds_auth and (discovery_auth or (method, path) != ("get", "/cds-services"))
            if "security" in operation and not checked:
                del operation["security"]
                responses.pop("401", None)
    components = schema.get("components", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(unused, None)
    if not cds_auth:
        components.pop("securitySchemes", None)
    return schema
