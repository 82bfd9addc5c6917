"""Hostile bodies against the served app: worker memory stays flat and /readyz stays responsive.

`fhirsvc serve --workers N` on loopback (bench/load.py's server) gets, round after round and concurrently: many
distinct 1 MB medication texts (refused: FHIRSVC_MAX_TEXT_CHARS), distinct texts just under that limit (evaluated:
they reach the per-text memos), JSON nested deeper than orjson allows, resources nested as deep as it allows, and
100,000 tiny resources in one call (refused: FHIRSVC_MAX_RESOURCES_PER_REQUEST). A separate thread polls /readyz
the whole time. After each round: the workers' resident memory (VmRSS) and peak (VmHWM).
"""

from __future__ import annotations

import http.client
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.generate import SEED, patient_resources, request_body, seeded
from bench.load import SERVICE, server
from bench.timing import percentile

MB = 1 << 20
TEXT_LIMIT = 64 * 1024  # FHIRSVC_MAX_TEXT_CHARS's default
_PLACEHOLDER = b"@@HOSTILE-TEXT@@"


@dataclass(frozen=True)
class HostileKind:
    """One kind of hostile call: `count` distinct bodies per round, and the status each should get."""

    name: str
    count: int
    expected: int
    body: Callable[[int], bytes]


@dataclass
class RoundResult:
    round: int
    statuses: Counter[str]
    seconds: float
    rss_mb: float  # the largest VmRSS among the workers after the round
    peak_rss_mb: float  # the largest VmHWM among them so far

    def as_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "statuses": dict(self.statuses),
            "seconds": round(self.seconds, 2),
            "rss_mb": round(self.rss_mb, 1),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }


@dataclass
class HostileReport:
    rounds: list[RoundResult]
    readyz_ms: list[float] = field(default_factory=list)
    readyz_failures: int = 0
    unexpected: int = 0  # answers other than the expected status (a 500, a dropped connection)

    @property
    def growth_mb(self) -> float:
        """Resident memory after the last round minus after the first: flat means close to 0."""
        return self.rounds[-1].rss_mb - self.rounds[0].rss_mb

    def as_json(self) -> dict[str, Any]:
        return {
            "rounds": [r.as_json() for r in self.rounds],
            "rss_growth_mb": round(self.growth_mb, 1),
            "readyz": {
                "polls": len(self.readyz_ms),
                "failures": self.readyz_failures,
                "p50_ms": round(percentile(self.readyz_ms, 50), 2) if self.readyz_ms else None,
                "p99_ms": round(percentile(self.readyz_ms, 99), 2) if self.readyz_ms else None,
                "max_ms": round(max(self.readyz_ms), 2) if self.readyz_ms else None,
            },
            "unexpected_answers": self.unexpected,
        }


def _with_text(seed: int) -> tuple[bytes, bytes]:
    """A small failing HIV patient's call, split where its first medication text goes."""
    resources = patient_resources("hostile", 40, seeded(f"{seed}:hostile"), ["hiv"], failing=True)
    body = orjson.loads(request_body(resources))
    statement = body["prefetch"]["medicationStatements"]["entry"][0]["resource"]
    statement["medicationCodeableConcept"]["text"] = _PLACEHOLDER.decode()
    prefix, suffix = orjson.dumps(body).split(b'"' + _PLACEHOLDER + b'"')
    return prefix, suffix


def kinds(seed: int = SEED, scale: int = 1) -> list[HostileKind]:
    """The hostile calls of one round (`scale` multiplies the counts)."""
    prefix, suffix = _with_text(seed)
    base = orjson.loads(prefix + b'""' + suffix)

    def text_body(length: int) -> Callable[[int], bytes]:
        def body(index: int) -> bytes:
            # Distinct every time (round and index in the first characters), so no memo answers from before.
            text = f"{time.monotonic_ns()}-{index}-".encode().ljust(length, b"x")
            return prefix + b'"' + text + b'"' + suffix

        return body

    too_deep = b'{"hook":"patient-view","deep":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    levels = 500  # an object and a list per level: about 1,000 levels in all, under orjson's 1,024
    nested = b'{"url":"http://example.org/x","extension":[' * levels + b'{"url":"u","valueString":"x"}' + b"]}" * levels
    deep_patient = {**base["prefetch"]["patient"], "extension": ["DEEP"]}
    deep_but_allowed = orjson.dumps({**base, "prefetch": {**base["prefetch"], "patient": deep_patient}})
    deep_but_allowed = deep_but_allowed.replace(b'"DEEP"', nested)
    tiny = b",".join(b'{"resource":{"resourceType":"Observation","id":"o%d"}}' % i for i in range(100_000))
    many_tiny = orjson.dumps({**base, "prefetch": {**base["prefetch"], "observations": "TINY"}})
    many_tiny = many_tiny.replace(b'"TINY"', b'{"resourceType":"Bundle","type":"searchset","entry":[' + tiny + b"]}")

    return [
        HostileKind("1 MB texts", 20 * scale, 400, text_body(MB)),
        HostileKind("64 KiB texts", 20 * scale, 200, text_body(TEXT_LIMIT - 64)),
        HostileKind("nested 100,000 deep", 5 * scale, 400, lambda _: too_deep),
        HostileKind("nested 1,000 deep", 5 * scale, 200, lambda _: deep_but_allowed),
        HostileKind("100,000 tiny resources", 3 * scale, 413, lambda _: many_tiny),
    ]


def _post(port: int, body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", SERVICE, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        connection.close()


class ReadyzPoller:
    """Polls /readyz on its own connection every `interval` seconds; latencies in ms."""

    def __init__(self, port: int, interval: float = 0.05) -> None:
        self.port, self.interval = port, interval
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                connection.request("GET", "/readyz")
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                ok = False
            finally:
                connection.close()
            if ok:
                self.latencies.append((time.perf_counter() - started) * 1000)
            else:
                self.failures += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> ReadyzPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _worker_memory_kb(supervisor: int) -> tuple[int, int]:
    """The largest VmRSS and VmHWM among the server's worker processes (KiB)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children")
    pids = [int(pid) for pid in children.read_text().split()] if children.exists() else []
    rss = hwm = 0
    for pid in pids or [supervisor]:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss = max(rss, int(fields.get("VmRSS", "0 kB").split()[0]))
        hwm = max(hwm, int(fields.get("VmHWM", "0 kB").split()[0]))
    return rss, hwm


def _calls(round_kinds: list[HostileKind]) -> Iterator[tuple[HostileKind, int]]:
    """The kinds interleaved, so every kind is in flight at once."""
    longest = max(kind.count for kind in round_kinds)
    for index in range(longest):
        for kind in round_kinds:
            if index < kind.count:
                yield kind, index


def run(
    quick: bool = False, seed: int = SEED, concurrency: int = 8, progress: Callable[[str], None] = print
) -> HostileReport:
    round_kinds = kinds(seed, scale=1 if quick else 3)
    rounds = 3 if quick else 10
    results: list[RoundResult] = []
    unexpected = 0
    with (
        tempfile.TemporaryDirectory(prefix="fhirsvc-hostile-") as tmp,
        server(Path(tmp)) as running,
        ReadyzPoller(running.port) as poller,
        ThreadPoolExecutor(concurrency) as senders,
    ):
        for number in range(1, rounds + 1):
            started = time.perf_counter()
            statuses: Counter[str] = Counter()

            def send(call: tuple[HostileKind, int]) -> tuple[HostileKind, int]:
                kind, index = call
                return kind, _post(running.port, kind.body(index))

            for kind, status in senders.map(send, _calls(round_kinds)):
                statuses[f"{kind.name}: {status}"] += 1
                unexpected += status != kind.expected
            rss, hwm = _worker_memory_kb(running.pid)
            results.append(RoundResult(number, statuses, time.perf_counter() - started, rss / 1024, hwm / 1024))
            progress(f"  hostile round {number}/{rounds}: worker RSS {rss / 1024:.0f} MB, peak {hwm / 1024:.0f} MB")
    return HostileReport(results, poller.latencies, poller.failures, unexpected)


def table(report: HostileReport) -> str:
    lines = ["| round | seconds | worker RSS MB | worker peak RSS MB |", "|---:|---:|---:|---:|"]
    lines += [f"| {r.round} | {r.seconds:.1f} | {r.rss_mb:.0f} | {r.peak_rss_mb:.0f} |" for r in report.rounds]
    readyz = report.as_json()["readyz"]
    lines.append(
        f"\n/readyz: {readyz['polls']} polls, {readyz['failures']} failed, p50 {readyz['p50_ms']} ms, "
        f"p99 {readyz['p99_ms']} ms, max {readyz['max_ms']} ms; RSS growth first → last round "
        f"{report.growth_mb:+.1f} MB; unexpected answers {report.unexpected}"
    )
    return "\n".join(lines)
