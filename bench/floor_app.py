"""The service floor for the load benchmark: the same server and workers, an app that only parses the body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ANSWER = b'{"cards":[]}'


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """ASGI: every POST body is read and parsed with orjson (what any service must do) and answered with no cards."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = bytearray()
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    status = 200
    if scope["method"] == "POST":
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            status = 400
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


def main() -> None:
    """`python -m bench.floor_app --port N [--workers W]`: serve it on loopback the way `fhirsvc serve` does."""
    import argparse

    from fhirsvc.api.serving import run_workers

    parser = argparse.ArgumentParser(prog="python -m bench.floor_app", description=main.__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    run_workers("127.0.0.1", args.port, args.workers, app="bench.floor_app:app", factory=False)


if __name__ == "__main__":
    main()
