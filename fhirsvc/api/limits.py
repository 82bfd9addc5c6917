"""The request body size limit: 413 before a body over FHIRSVC_MAX_BODY_BYTES is read, chunked ones included."""

from __future__ import annotations

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
