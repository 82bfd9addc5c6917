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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from bench.generate import AS_OF, PROGRAMS, SEED, patient_resources, request_body, seeded
from bench.inprocess import Pipeline
from bench.population import vm_hwm_kb
from bench.timing import measure, percentile

SERVICE = "/cds-services/second-line-patient-view"
RESOURCES = 300
BODIES = 20  # distinct patients, sent in turn
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


@dataclass(frozen=True)
class Server:
    base: str
    pid: int

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])


@contextmanager
def server(workdir: Path, startup_s: float = 30.0) -> Iterator[Server]:
    """`fhirsvc serve` in a subprocess with FHIRSVC_TODAY pinned; yields its address, stops it afterwards."""
    port = free_port()
    env = {
        **os.environ,
        "FHIRSVC_TODAY": AS_OF.isoformat(),
        "FHIRSVC_CDS_AUTH": "off",  # no JWT signing in the load generator: see README, open findings
        "FHIRSVC_STORE_URL": f"sqlite:///{workdir / 'bench-store.db'}",
    }
    log = (workdir / "server.log").open("wb")
    proc = subprocess.Popen(_command(port), cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"fhirsvc serve exited ({proc.returncode}); see {workdir / 'server.log'}")
            try:
                with urllib.request.urlopen(f"{base}/livez", timeout=1) as response:  # noqa: S310 (loopback)
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"fhirsvc serve not ready after {startup_s:.0f} s")
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


def _loadgen(port: int, bodies_file: Path, concurrency: int, seconds: float, warmup: float) -> LoadResult:
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
    ]
    done = subprocess.run(  # noqa: S603
        command, cwd=REPO, capture_output=True, timeout=seconds + warmup + 120, check=True
    )
    out = orjson.loads(done.stdout)
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

    def as_json(self) -> dict[str, Any]:
        return {
            "resources_per_call": RESOURCES,
            "body_bytes_mean": self.body_bytes,
            "in_process_eval_ms": round(self.in_process_ms, 3),
            **{str(r.concurrency): r.as_json() for r in self.results},
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
    results = []
    with tempfile.TemporaryDirectory(prefix="fhirsvc-bench-") as tmp:
        workdir = Path(tmp)
        bodies_file = workdir / "bodies.ndjson"
        bodies_file.write_bytes(b"\n".join(calls) + b"\n")
        with server(workdir) as running:
            answer = _call(running.base, calls[0])
            if not answer.get("cards"):
                raise RuntimeError("the service answered the first (failing) patient without cards")
            for clients in concurrency:
                progress(f"  load: {clients} concurrent client(s) for {seconds:g} s")
                result = _loadgen(running.port, bodies_file, clients, seconds, warmup)
                results.append(replace(result, server_peak_rss_kb=vm_hwm_kb(running.pid)))
    mean_bytes = sum(len(b) for b in calls) // len(calls)
    return LoadReport(results, in_process / len(calls), mean_bytes)
