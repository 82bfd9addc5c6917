"""Load generator process: N keep-alive HTTP/1.1 clients POST request bodies in turn for a bounded time.

A minimal asyncio client (loopback only, Content-Length responses) so that the client's own cost stays far below
the server's and the latency measured is the server's. Prints one JSON object on stdout:
`{"requests", "errors", "seconds", "latencies_ms"}`.

    python -m bench.loadgen --port 8000 --bodies bodies.ndjson --concurrency 10 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

MAX_REQUESTS_PER_CLIENT = 100_000  # a second bound besides time


@dataclass
class Tally:
    """Every exchange as (start, end, status); status 0 for a transport error."""

    exchanges: list[tuple[float, float, int]] = field(default_factory=list)
    out_of_tokens: bool = False


def _request(host: str, port: int, path: str, body: bytes, token: str | None = None) -> bytes:
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: application/json\r\n{authorization}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


class Requests:
    """The requests to send, in turn: pre-built, or built per call with the next unused JWT (each is good once)."""

    def __init__(self, host: str, port: int, path: str, bodies: list[bytes], tokens: list[str] | None) -> None:
        self.host, self.port, self.path, self.bodies = host, port, path, bodies
        self.tokens = iter(tokens) if tokens is not None else None
        self.built = [_request(host, port, path, body) for body in bodies] if tokens is None else []

    def get(self, index: int) -> bytes | None:
        """The request to send; None once the JWTs are used up (the run then reports it rather than replays one)."""
        if self.tokens is None:
            return self.built[index % len(self.built)]
        token = next(self.tokens, None)
        if token is None:
            return None
        return _request(self.host, self.port, self.path, self.bodies[index % len(self.bodies)], token)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length is None:
        raise ConnectionError("response without Content-Length")
    await reader.readexactly(length)
    return status


async def _client(host: str, port: int, requests: Requests, offset: int, stop_at: float, tally: Tally) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for count in range(MAX_REQUESTS_PER_CLIENT):
            start = time.perf_counter()
            if start >= stop_at:
                break
            request = requests.get(offset + count)
            if request is None:
                tally.out_of_tokens = True
                break
            try:
                status = await _exchange(reader, writer, request)
            except (ConnectionError, asyncio.IncompleteReadError, ValueError):
                status = 0
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
            tally.exchanges.append((start, time.perf_counter(), status))
    finally:
        writer.close()


async def run(
    host: str,
    port: int,
    path: str,
    bodies: list[bytes],
    concurrency: int,
    seconds: float,
    warmup: float,
    tokens: list[str] | None = None,
) -> dict[str, object]:
    """Clients run for warm-up + `seconds`; exchanges that end inside the measured window are counted."""
    requests = Requests(host, port, path, bodies, tokens)
    tally = Tally()
    window_start = time.perf_counter() + warmup
    window_end = window_start + seconds
    clients = [_client(host, port, requests, i * 7, window_end, tally) for i in range(concurrency)]
    await asyncio.wait_for(asyncio.gather(*clients), timeout=warmup + seconds + 60)
    counted = [(end - start, status) for start, end, status in tally.exchanges if window_start <= end <= window_end]
    statuses: dict[str, int] = {}
    for _, status in counted:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "requests": sum(1 for _, status in counted if status == 200),
        "errors": sum(1 for _, status in counted if status != 200),
        "statuses": statuses,
        "seconds": seconds,
        "out_of_tokens": tally.out_of_tokens,
        "latencies_ms": [elapsed * 1000 for elapsed, status in counted if status == 200],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/cds-services/second-line-patient-view")
    parser.add_argument("--bodies", type=Path, required=True, help="request bodies, one per line")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--tokens", type=Path, help="CDS client JWTs, one per line, each sent once")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("loopback only")
    bodies = [line for line in args.bodies.read_bytes().splitlines() if line.strip()]
    tokens = args.tokens.read_text().split() if args.tokens else None
    result = asyncio.run(
        run(args.host, args.port, args.path, bodies, args.concurrency, args.seconds, args.warmup, tokens)
    )
    sys.stdout.buffer.write(orjson.dumps(result))


if __name__ == "__main__":
    main()
