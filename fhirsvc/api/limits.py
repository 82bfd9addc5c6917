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


_BACKSLASH = ord("\\")
# Past this many escaped quotes in a block, or backslashes before one quote, walking the parsed strings is cheaper
# than stepping over them here (and a hostile body cannot make this test the slow part).
_MOST_ESCAPES = 64


def may_hold_overlong_text(body: bytes, max_chars: int) -> bool:
    """False when no JSON string in `body` can be longer than `max_chars` characters: a test on the raw bytes, in
    microseconds, that spares almost every request the walk over all its strings (`overlong_text`, milliseconds).

    Why it is sound: a string of more than `max_chars` characters spans more than `max_chars` bytes between two
    unescaped quotes (an escape is longer than the character it stands for), so it covers one of the aligned blocks
    of `max_chars // 2` bytes entirely, and that block holds no unescaped quote. Each block is searched for one
    (`bytes.find` is memchr, in C); a block without one, or with too many escapes to step over, may lie inside a
    long string: True, and the caller walks the parsed request.
    """
    block = max(max_chars // 2, 1)
    find = body.find
    for start in range(0, len(body) - block + 1, block):  # whole blocks only: a long string covers a whole one
        end = start + block
        quote = find(b'"', start, end)
        for _ in range(_MOST_ESCAPES):
            if quote == -1:
                return True
            backslashes = 0  # an odd number before the quote escapes it: `\"` is in the text, `\\"` ends it
            while backslashes <= _MOST_ESCAPES and quote > backslashes and body[quote - backslashes - 1] == _BACKSLASH:
                backslashes += 1
            if backslashes > _MOST_ESCAPES:
                return True
            if backslashes % 2 == 0:
                break  # an unescaped quote: no string spans this block
            quote = find(b'"', quote + 1, end)
        else:
            return True
    return False


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
