"""Structured JSON logs: one line per request, patient ids hashed, never tokens, JWTs or FHIR payloads."""

from __future__ import annotations

import contextvars
import hashlib
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("fhirsvc.access")

# The request being served, so every line logged while serving it carries its id.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("fhirsvc_request_id", default=None)

_FIELDS = "fhirsvc.log"  # ASGI scope key: what the routes add to the request's log line
_STARTED = "fhirsvc.started"  # ASGI scope key: the app clock's reading when the request arrived
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # anything else from a client is replaced, not logged
_RESERVED = ("ts", "level", "logger", "msg")
Clock = Callable[[], float]  # monotonic seconds: time.monotonic, or a test's virtual clock


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the request id, and the record's `fields` dict."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            line["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update({k: v for k, v in fields.items() if k not in _RESERVED})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: int = logging.INFO, stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record to `stream` (stderr) as JSON lines; returns the handler (tests remove it again)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "fhirsvc_json", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.fhirsvc_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request URL at INFO, and our FHIR URLs carry patient ids (`Observation?patient=…`).
    for noisy in ("httpx", "httpcore", "httpx2", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # uvicorn's access log prints raw paths (/patients/{id}/therapy); our one line per request replaces it.
    logging.getLogger("uvicorn.access").disabled = True
    return handler


def hash_patient(salt: str, patient_id: str) -> str:
    """sha256(salt + id), first 16 hex digits: lines of one patient correlate, the id itself is not in the log."""
    return hashlib.sha256((salt + patient_id).encode()).hexdigest()[:16]


def annotate(request: Request, **fields: Any) -> None:
    """Add fields to this request's log line (hook, service id, ...). Never pass a token or a payload here."""
    request.scope.setdefault(_FIELDS, {}).update(fields)


def annotate_patient(request: Request, patient_id: str) -> None:
    """Log the patient only as a salted hash (FHIRSVC_LOG_SALT)."""
    annotate(request, patient=hash_patient(request.app.state.log_salt, patient_id))


def started_at(request: Request) -> float:
    """The app clock's reading (`app.state.clock`) when the request arrived: the CDS time budget counts from there."""
    started = request.scope.get(_STARTED)
    if isinstance(started, float):
        return started
    clock: Clock = request.app.state.clock
    return clock()


def _path_fields(scope: Scope) -> dict[str, str]:
    """Service and (hashed) patient ids from the route's path parameters, also for requests refused early."""
    params = scope.get("path_params") or {}
    fields = {}
    if isinstance(params.get("service_id"), str):
        fields["service"] = params["service_id"]
    salt = getattr(getattr(scope.get("app"), "state", None), "log_salt", None)
    if isinstance(params.get("patient_id"), str) and isinstance(salt, str):
        fields["patient"] = hash_patient(salt, params["patient_id"])
    return fields


Observer = Callable[[str, str, int, float], None]  # (method, route template, status, seconds)


class RequestLog:
    """ASGI middleware: request id (X-Request-ID or new, echoed), one JSON line per request, metrics hook.

    It logs the route template (`/cds-services/{service_id}`), never the raw path, query or headers.
    """

    def __init__(self, app: ASGIApp, observer: Observer | None = None, clock: Clock = time.monotonic) -> None:
        self.app = app
        self.observer = observer
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = Headers(scope=scope).get("x-request-id", "")
        request_id = offered if _SAFE_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = self.clock()
        scope[_STARTED] = started
        status = 500  # unless the app answers: an exception escaping it becomes a 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = self.clock() - started
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            fields = {
                "method": scope["method"],
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 1),
                **_path_fields(scope),
                **scope.get(_FIELDS, {}),
            }
            try:
                access_log.info("%s %s %d", scope["method"], route, status, extra={"fields": fields})
                if self.observer is not None:
                    self.observer(scope["method"], route, status, seconds)
            finally:
                request_id_var.reset(token)
