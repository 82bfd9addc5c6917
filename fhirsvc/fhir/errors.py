"""FHIR client errors, carrying the server's OperationOutcome when it sent one.

FhirError
├── FhirTransportError        network failure or timeout, after retries
├── FhirResponseError         the server answered with an error status
│   ├── FhirAuthError         401 / 403: the token was refused
│   ├── FhirNotFound          404 / 410: no such resource type, or resource
│   ├── FhirBadRequest        400 / 422: the search is not supported as sent
│   └── FhirServerError       429 / 5xx, after retries
├── FhirInvalidResponse       a body that is not the FHIR JSON we asked for
└── FhirUnsafeLink            a paging link that leaves the server we were told to use
"""

from __future__ import annotations

from typing import Any


class FhirError(Exception):
    """Base class of everything the FHIR client raises."""


class FhirTransportError(FhirError):
    """Could not reach the server (connect/read timeout, refused, reset), after retries."""


class FhirResponseError(FhirError):
    """The server answered with an error status; `operation_outcome` is its body when it sent one."""

    def __init__(self, status: int, url: str, operation_outcome: dict[str, Any] | None = None) -> None:
        self.status = status
        self.url = url
        self.operation_outcome = operation_outcome
        super().__init__(f"FHIR server answered {status}{_diagnostics(operation_outcome)}")


class FhirAuthError(FhirResponseError):
    """401 or 403."""


class FhirNotFound(FhirResponseError):
    """404 or 410."""


class FhirBadRequest(FhirResponseError):
    """400 or 422: e.g. Cerner without MedicationStatement, Epic without a required search parameter."""


class FhirServerError(FhirResponseError):
    """429 or 5xx that persisted through the retries."""


class FhirInvalidResponse(FhirError):
    """The body was not JSON, or not the resource type expected."""


class FhirUnsafeLink(FhirError):
    """A `next` link pointing off the server (never followed: the bearer token would leak)."""


def _diagnostics(outcome: dict[str, Any] | None) -> str:
    if not outcome:
        return ""
    issues = outcome.get("issue") or []
    texts = [str(i.get("diagnostics") or i.get("code") or "") for i in issues if isinstance(i, dict)]
    return f": {'; '.join(t for t in texts if t)[:300]}" if any(texts) else ""


def response_error(status: int, url: str, outcome: dict[str, Any] | None) -> FhirResponseError:
    if status in (401, 403):
        return FhirAuthError(status, url, outcome)
    if status in (404, 410):
        return FhirNotFound(status, url, outcome)
    if status in (400, 422):
        return FhirBadRequest(status, url, outcome)
    if status == 429 or status >= 500:
        return FhirServerError(status, url, outcome)
    return FhirResponseError(status, url, outcome)
