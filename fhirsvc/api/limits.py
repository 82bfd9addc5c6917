"""Request limits: body size (413 before it is read), resources per request (413) and text per field (400)."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhirsvc.api.responses import operation_outcome


class BodyTooLarge(Exception):
    """The request body passed FHIRSVC_MAX_BODY_BYTES."""


class BodySizeLimit:
    """ASGI middleware: refuse bodies over `max_bytes` with 413 before they are parsed, chunked ones included."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            # Without Content-Length (chunked), count as the bytes arrive and stop at the limit.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = operation_outcome(413, f"request body larger than {self.max_bytes} bytes", code="too-costly")
        response.headers["Connection"] = "close"  # the rest of the body is not read
        await response(scope, receive, send)


def resource_count(prefetch: dict[str, Any] | None, context: dict[str, Any]) -> int:
    """Resources a CDS call carries: each prefetch value (a Bundle's entries, or one resource) and draftOrders."""
    carried = [*(prefetch or {}).values(), context.get("draftOrders")]
    count = 0
    for value in carried:
        if isinstance(value, dict):
            entries = value.get("entry") if value.get("resourceType") == "Bundle" else None
            count += len(entries) if isinstance(entries, list) else 1
    return count


def overlong_text(document: object, max_chars: int) -> str | None:
    """The name of the first field (or key) whose text is longer than `max_chars`, else None.

    Walked without recursion: orjson already refused anything nested deeper than 1024 levels, and this walk must not
    be the next thing to overflow. Lists name their field's key; `[]` when a list sits at the top.
    """
    stack: list[tuple[str, object]] = [("[]", document)]
    pop, push = stack.pop, stack.append
    while stack:
        field, node = pop()
        if type(node) is dict:
            for key, value in node.items():
                kind = type(value)
                if kind is str:
                    if len(value) > max_chars:
                        return str(key)
                elif kind is dict or kind is list:
                    push((key, value))
                if len(key) > max_chars:
                    return "a key"
        elif type(node) is list:
            for value in node:
                kind = type(value)
                if kind is str:
                    if len(value) > max_chars:
                        return field
                elif kind is dict or kind is list:
                    push((field, value))
    return None
