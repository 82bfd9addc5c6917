"""The service under load: `fhirsvc serve` on loopback, a separate load generator process, p50/p99 and requests/s."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from bench.client_auth import BenchClient
from bench.generate import AS_OF, PROGRAMS, SEED, patient_resources, request_body, seeded
from bench.inprocess import Pipeline
from bench.population import vm_hwm_kb
from bench.timing import measure, percentile

SERVICE = "/cds-services/second-line-patient-view"
RESOURCES = 300
BODIES = 20  # distinct patients, sent in turn
TOKENS_PER_RUN = 4_000  # signed JWTs per run with client authentication: more than 5 + 1 s at 600 calls/s
CONCURRENCY = (1, 10, 50)
REPO = Path(__file__).resolve().parent.parent


def bodies(count: int = BODIES, size: int = RESOURCES, seed: int = SEED) -> list[bytes]:
    """Patient-view calls with full prefetch: one main program each (t2d as well for some), most of them failing."""
    out = []
    for index in range(count):
        rng = seeded(f"{seed}:load:{index}")
        program = PROGRAMS[index % len(PROGRAMS)]
        programs = [program, "t2d"] if program != "t2d" and index % 3 == 0 else [program]
        resources = patient_resources(f"load-{index:03d}", size, rng, programs, failing=index % 4 != 3)
        out.append(request_body(resources))
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# One worker per core: evaluation is CPU-bound Python (BENCH_WORKERS overrides, e.g. 1 to compare).
WORKERS = int(os.environ.get("BENCH_WORKERS", os.cpu_count() or 1))


def _command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("fhirsvc")
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(WORKERS)]
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "fhirsvc.cli", *args]


def _floor_command(port: int) -> list[str]:
    """The service floor (bench/floor_app.py): the same server and workers, an app that only parses the body."""
    return [sys.executable, "-m", "bench.floor_app", "--port", str(port), "--workers", str(WORKERS)]


@dataclass(frozen=True)
class Server:
    base: str
    pid: int

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])


@contextmanager
def server(
    workdir: Path,
    command: Callable[[int], list[str]] = _command,
    startup_s: float = 30.0,
    settings: dict[str, str] | None = None,
) -> Iterator[Server]:
    """`fhirsvc serve` (or the floor) in a subprocess with FHIRSVC_TODAY pinned; yields its address, stops it after.

    `settings`: FHIRSVC_ variables on top of the defaults here (client authentication off, a store of its own).
    """
    port = free_port()
    env = {
        **os.environ,
        "FHIRSVC_TODAY": AS_OF.isoformat(),
        "FHIRSVC_CDS_AUTH": "off",
        "FHIRSVC_STORE_URL": f"sqlite:///{workdir / f'{port}-store.db'}",
        **(settings or {}),
    }
    log_path = workdir / f"{command.__name__.strip('_')}.log"
    log = log_path.open("wb")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # bench.floor_app
    proc = subprocess.Popen(command(port), cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{command.__name__} server exited ({proc.returncode}); see {log_path}")
            try:
                with urllib.request.urlopen(f"{base}/livez", timeout=1) as response:  # noqa: S310 (loopback)
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command.__name__} server not ready after {startup_s:.0f} s; see {log_path}")
            time.sleep(0.1)
        yield Server(base, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _call(base: str, body: bytes) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 (loopback)
        base + SERVICE, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        answer: dict[str, Any] = orjson.loads(response.read())
        return answer


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    server_peak_rss_kb: int = 0  # the server's VmHWM after this run (it only grows from run to run)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 2),
            "server_peak_rss_mb": round(self.server_peak_rss_kb / 1024, 1),
        }


def _loadgen(
    port: int, bodies_file: Path, concurrency: int, seconds: float, warmup: float, tokens_file: Path | None = None
) -> LoadResult:
    command = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--port",
        str(port),
        "--path",
        SERVICE,
        "--bodies",
        str(bodies_file),
        "--concurrency",
        str(concurrency),
        "--seconds",
        str(seconds),
        "--warmup",
        str(warmup),
        *(["--tokens", str(tokens_file)] if tokens_file else []),
    ]
    done = subprocess.run(  # noqa: S603
        command, cwd=REPO, capture_output=True, timeout=seconds + warmup + 120, check=True
    )
    out = orjson.loads(done.stdout)
    if out.get("out_of_tokens"):
        raise RuntimeError(f"the load generator ran out of signed JWTs at {concurrency} clients: raise TOKENS_PER_RUN")
    latencies = out["latencies_ms"]
    return LoadResult(
        concurrency,
        out["requests"],
        out["errors"],
        out["seconds"],
        percentile(latencies, 50),
        percentile(latencies, 99),
    )


@dataclass(frozen=True)
class LoadReport:
    results: list[LoadResult]
    in_process_ms: float  # the same bodies through the in-process pipeline (median): what HTTP adds is the rest
    body_bytes: int
    floor: list[LoadResult] = field(default_factory=list)  # the floor server under the same load
    signed: list[LoadResult] = field(default_factory=list)  # the service with client JWTs checked on every call

    def floor_at(self, concurrency: int) -> LoadResult | None:
        return next((r for r in self.floor if r.concurrency == concurrency), None)

    def signed_at(self, concurrency: int) -> LoadResult | None:
        return next((r for r in self.signed if r.concurrency == concurrency), None)

    def as_json(self) -> dict[str, Any]:
        return {
            "resources_per_call": RESOURCES,
            "body_bytes_mean": self.body_bytes,
            "in_process_eval_ms": round(self.in_process_ms, 3),
            "workers": WORKERS,
            **{str(r.concurrency): r.as_json() for r in self.results},
            "floor": {str(r.concurrency): r.as_json() for r in self.floor},
            "signed": {str(r.concurrency): r.as_json() for r in self.signed},
        }


def run(
    quick: bool = False,
    seed: int = SEED,
    concurrency: tuple[int, ...] = CONCURRENCY,
    progress: Callable[[str], None] = print,
) -> LoadReport:
    calls = bodies(seed=seed)
    pipeline = Pipeline()
    try:
        in_process = measure(lambda: [pipeline(body) for body in calls], budget_s=0.5 if quick else 2.0).median_ms
    finally:
        pipeline.close()
    seconds, warmup = (2.0, 0.5) if quick else (5.0, 1.0)
    client = BenchClient()
    signed = {"FHIRSVC_CDS_AUTH": "on", "FHIRSVC_CDS_CLIENTS": orjson.dumps([client.client_config()]).decode()}
    setups: tuple[tuple[str, Callable[[int], list[str]], dict[str, str]], ...] = (
        ("service", _command, {}),
        ("signed", _command, signed),
        ("floor", _floor_command, {}),
    )
    results: dict[str, list[LoadResult]] = {name: [] for name, _, _ in setups}
    with tempfile.TemporaryDirectory(prefix="fhirsvc-bench-") as tmp:
        workdir = Path(tmp)
        bodies_file = workdir / "bodies.ndjson"
        bodies_file.write_bytes(b"\n".join(calls) + b"\n")
        for name, command, settings in setups:
            with server(workdir, command, settings=settings) as running:
                if name == "service":
                    answer = _call(running.base, calls[0])
                    if not answer.get("cards"):
                        raise RuntimeError("the service answered the first (failing) patient without cards")
                for clients in concurrency:
                    tokens_file = None
                    if name == "signed":  # each JWT is good once (jti): signed afresh, before the clock starts
                        tokens_file = workdir / "tokens.txt"
                        tokens_file.write_text("\n".join(client.tokens(TOKENS_PER_RUN, SERVICE)))
                    progress(f"  load ({name}): {clients} concurrent client(s) for {seconds:g} s")
                    result = _loadgen(running.port, bodies_file, clients, seconds, warmup, tokens_file)
                    results[name].append(replace(result, server_peak_rss_kb=_peak_rss_kb(running.pid)))
    mean_bytes = sum(len(b) for b in calls) // len(calls)
    return LoadReport(results["service"], in_process / len(calls), mean_bytes, results["floor"], results["signed"])


def _peak_rss_kb(supervisor: int) -> int:
    """The largest VmHWM among the server's processes (its workers serve; the supervisor only waits)."""
    pids = [supervisor]
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children")
    if children.exists():
        pids += [int(pid) for pid in children.read_text().split()]
    return max((vm_hwm_kb(pid) for pid in pids), default=0)
