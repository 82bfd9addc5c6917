"""HTTP response helpers shared by the routes: orjson bodies and OperationOutcome errors."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse, Response


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
