"""Serving: TCP_NODELAY, SO_REUSEPORT listeners, the worker supervisor end to end, metrics added up over workers."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from fhirsvc.api.serving import listening_socket, multiprocess_metrics, run_workers
from tests.conftest import ROOT

LOOPBACK = "127.0.0.1"
WORKERS = 2
STARTUP_TIMEOUT_S = 60.0
# The supervisor gives workers 10 s (STOP_GRACE_S) before it kills them; an orderly stop takes well under a second.
STOP_TIMEOUT_S = 20.0
# A dead worker is noticed within one 0.5 s poll; the others then stop gracefully.
CRASH_TIMEOUT_S = 10.0
# Enough connections that the kernel putting all of them on one of two workers (2 * 2**-16) is not a flake.
CONNECTIONS = 16
LISTEN, ESTABLISHED = "0A", "01"  # TCP states as /proc/net/tcp writes them

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads processes and sockets from Linux /proc")


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def _accepted_nodelay(listener: socket.socket) -> int:
    """TCP_NODELAY of the connection an asyncio server accepts on `listener` (asyncio's own setting, untouched)."""
    loop = asyncio.get_running_loop()
    nodelay: asyncio.Future[int] = loop.create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            nodelay.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await loop.create_server(Probe, sock=listener)
    try:
        host, port = listener.getsockname()[:2]
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        try:
            return await asyncio.wait_for(nodelay, 5)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "host",
    [
        LOOPBACK,
        pytest.param("::1", marks=pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")),
    ],
)
def test_accepted_connections_get_tcp_nodelay(host: str) -> None:
    listener = listening_socket(host, 0)
    assert listener.family == (socket.AF_INET6 if ":" in host else socket.AF_INET)
    assert asyncio.run(_accepted_nodelay(listener)) != 0


def test_reuse_port_listeners_share_a_port() -> None:
    with listening_socket(LOOPBACK, 0, reuse_port=True) as first:
        first.listen()
        port = first.getsockname()[1]
        with listening_socket(LOOPBACK, port, reuse_port=True) as second:
            second.listen()
            assert second.getsockname()[1] == port


@pytest.mark.parametrize(
    ("holder_reuses_port", "newcomer_reuses_port"),
    [(False, False), (False, True), (True, False)],
    ids=["neither", "only-newcomer", "only-holder"],
)
def test_a_port_someone_listens_on_is_refused(holder_reuses_port: bool, newcomer_reuses_port: bool) -> None:
    # (False, True) is the check `serve` makes before starting workers: another program on the port stops it there.
    with listening_socket(LOOPBACK, 0, reuse_port=holder_reuses_port) as holder:
        holder.listen()
        with pytest.raises(OSError) as refused:
            listening_socket(LOOPBACK, holder.getsockname()[1], reuse_port=newcomer_reuses_port)
        assert refused.value.errno == errno.EADDRINUSE


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...), or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


@dataclass(frozen=True)
class Worker:
    pid: int
    start_ticks: str  # /proc starttime: tells this worker from a later process that gets its pid

    def alive(self) -> bool:
        fields = _proc_stat(self.pid)
        return fields is not None and fields[19] == self.start_ticks and fields[0] not in ("Z", "X")


def _workers_of(parent: int) -> list[Worker]:
    """The multiprocessing workers `parent` spawned (its resource tracker, also a child, is not one)."""
    workers = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _proc_stat(int(entry.name))
        if fields is None or int(fields[1]) != parent:
            continue
        with contextlib.suppress(OSError):
            if b"spawn_main" in (entry / "cmdline").read_bytes():
                workers.append(Worker(int(entry.name), fields[19]))
    return sorted(workers, key=lambda worker: worker.pid)


def _tcp_table() -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state, inode) of every IPv4 TCP socket in this network namespace."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        rows.append((local_port, remote_port, fields[3], int(fields[9])))
    return rows


def _socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process `pid` holds open (empty once it is gone)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _livez_status(port: int) -> int | None:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=2)
    try:
        connection.request("GET", "/livez")
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


@dataclass
class Service:
    """`fhirsvc serve --workers 2` in its own session, so a failing test can still kill everything it started."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    workers: list[Worker] = field(default_factory=list)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_until_serving(self) -> list[Worker]:
        """Both workers listening on the port and /livez answering; the workers found."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"service exited with {self.process.returncode} while starting:\n{self.log_tail()}")
            self.workers = _workers_of(self.process.pid)
            listeners = {inode for port, _, state, inode in _tcp_table() if port == self.port and state == LISTEN}
            if (
                len(self.workers) == WORKERS
                and all(_socket_inodes(worker.pid) & listeners for worker in self.workers)
                and _livez_status(self.port) == 200
            ):
                return self.workers
            time.sleep(0.1)
        pytest.fail(f"no {WORKERS} workers serving within {STARTUP_TIMEOUT_S} s:\n{self.log_tail()}")

    def owner(self, client_port: int) -> int | None:
        """The worker that accepted the connection from `client_port`."""
        accepted = {
            inode
            for port, remote_port, state, inode in _tcp_table()
            if port == self.port and remote_port == client_port and state == ESTABLISHED
        }
        return next((worker.pid for worker in self.workers if _socket_inodes(worker.pid) & accepted), None)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    port = _free_port()
    env = {
        **os.environ,
        "FHIRSVC_CDS_AUTH": "off",
        "FHIRSVC_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "FHIRSVC_TODAY": "2026-06-01",
        "TMPDIR": str(tmp_path),  # where the supervisor makes its metrics directory
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [sys.executable, "-m", "fhirsvc.cli", "serve"]
    log = tmp_path / "service.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "--host", LOOPBACK, "--port", str(port), "--workers", str(WORKERS)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Service(process, port, log)
    try:
        yield running
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # its session: the supervisor, the workers, the resource tracker
            process.wait(timeout=10)
        for worker in running.workers:
            if worker.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)


@linux_only
@pytest.mark.parametrize("target", ["supervisor", "process-group"])
def test_workers_share_the_port_serve_keep_alive_and_stop_on_sigterm(service: Service, target: str) -> None:
    workers = service.wait_until_serving()
    listeners = {inode for port, _, state, inode in _tcp_table() if port == service.port and state == LISTEN}
    held = [_socket_inodes(worker.pid) & listeners for worker in workers]
    assert all(len(inodes) == 1 for inodes in held) and held[0] != held[1], "each worker has its own listener"
    assert not _socket_inodes(service.process.pid) & listeners, "the supervisor holds no listener"

    connections = [http.client.HTTPConnection(LOOPBACK, service.port, timeout=10) for _ in range(CONNECTIONS)]
    try:
        for connection in connections:
            connection.connect()
        client_sockets = [connection.sock for connection in connections]
        for _ in range(2):  # the second round proves the connections were kept alive
            for connection in connections:
                connection.request("GET", "/livez")
            for connection in connections:
                response = connection.getresponse()
                assert (response.status, orjson.loads(response.read())) == (200, {"status": "ok"})
                assert not response.will_close
        assert [connection.sock for connection in connections] == client_sockets
        owners = {service.owner(sock.getsockname()[1]) for sock in client_sockets}
        assert owners == {worker.pid for worker in workers}, "the kernel spreads connections over both workers"

        # Idle keep-alive connections stay open, as an EHR's pool would keep them: they must not hold up the stop.
        if target == "supervisor":
            os.kill(service.process.pid, signal.SIGTERM)
        else:  # systemd's default KillMode=control-group signals every process at once
            os.killpg(service.process.pid, signal.SIGTERM)
        try:
            returncode = service.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_TIMEOUT_S} s after SIGTERM:\n{service.log_tail()}")
        assert returncode == 0, service.log_tail()
        assert [worker for worker in workers if worker.alive()] == []
    finally:
        for connection in connections:
            connection.close()


def _get(connection: http.client.HTTPConnection, path: str) -> str:
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read().decode()
    assert response.status == 200, body
    return body


def _sample(exposition: str, name: str) -> float | None:
    """The value of one sample (`name{labels}`) in Prometheus text format, or None when it is absent."""
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@linux_only
def test_a_scrape_counts_the_calls_served_by_every_worker(service: Service, tmp_path: Path) -> None:
    """Prometheus multiprocess mode: whichever worker answers /metrics reports what both served."""
    workers = service.wait_until_serving()
    (metrics_dir,) = tmp_path.glob("fhirsvc-metrics-*")  # the supervisor's own directory (TMPDIR is tmp_path)
    discovery = 'fhirsvc_http_requests_total{method="GET",route="/cds-services",status="200"}'
    callers = [http.client.HTTPConnection(LOOPBACK, service.port, timeout=10) for _ in range(CONNECTIONS)]
    scrapers = [http.client.HTTPConnection(LOOPBACK, service.port, timeout=10) for _ in range(CONNECTIONS)]
    try:
        for connection in [*callers, *scrapers]:
            connection.connect()
        both = {worker.pid for worker in workers}
        for connection in callers:
            _get(connection, "/cds-services")
        assert {service.owner(c.sock.getsockname()[1]) for c in callers} == both, "calls served by both workers"
        counts = [_sample(_get(connection, "/metrics"), discovery) for connection in scrapers]
        assert {service.owner(c.sock.getsockname()[1]) for c in scrapers} == both, "scrapes answered by both"
        assert counts == [float(CONNECTIONS)] * CONNECTIONS
    finally:
        for connection in [*callers, *scrapers]:
            connection.close()
    os.kill(service.process.pid, signal.SIGTERM)
    assert service.process.wait(timeout=STOP_TIMEOUT_S) == 0, service.log_tail()
    assert not metrics_dir.exists()  # the next run starts from zero


def test_an_operators_metrics_directory_is_emptied_first_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    operators = tmp_path / "metrics"
    operators.mkdir()
    (operators / "counter_4242.db").write_bytes(b"counts of an earlier run")
    with multiprocess_metrics(operators) as directory:
        assert directory == operators and list(operators.iterdir()) == []
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(operators)  # what the workers inherit
    assert operators.is_dir() and "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    with multiprocess_metrics(None) as private:
        assert private.is_dir() and os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(private)
    assert not private.exists() and "PROMETHEUS_MULTIPROC_DIR" not in os.environ


@linux_only
def test_a_worker_dying_stops_the_service_with_an_error(service: Service) -> None:
    dying, survivor = service.wait_until_serving()
    os.kill(dying.pid, signal.SIGKILL)
    try:
        returncode = service.process.wait(timeout=CRASH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {CRASH_TIMEOUT_S} s after a worker died:\n{service.log_tail()}")
    assert returncode > 0, service.log_tail()  # an exit with an error, not a signal's death
    assert not survivor.alive()
    assert f"exited (code {-signal.SIGKILL})" in service.log_tail()


@linux_only
def test_workers_stop_when_the_supervisor_is_killed(service: Service) -> None:
    """A supervisor SIGKILLed outside a cgroup must not leave workers serving the port on their own."""
    workers = service.wait_until_serving()
    os.kill(service.process.pid, signal.SIGKILL)
    service.process.wait(timeout=10)
    deadline = time.monotonic() + CRASH_TIMEOUT_S
    while any(worker.alive() for worker in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [worker for worker in workers if worker.alive()] == []


@linux_only
def test_a_second_instance_on_the_same_port_is_refused(service: Service, tmp_path: Path) -> None:
    """SO_REUSEPORT would let it bind: it must ask the port first and refuse to share it."""
    service.wait_until_serving()
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "fhirsvc.cli",
            "serve",
            "--host",
            LOOPBACK,
            "--port",
            str(service.port),
            "--workers",
            "2",
        ],
        cwd=ROOT,
        env={**os.environ, "FHIRSVC_CDS_AUTH": "off", "FHIRSVC_STORE_URL": f"sqlite:///{tmp_path / 'second.db'}"},
        capture_output=True,
        timeout=STARTUP_TIMEOUT_S,
        check=False,
    )
    assert second.returncode != 0
    assert b"already in use" in second.stderr
    assert _livez_status(service.port) == 200  # the first instance is untouched


def test_workers_need_a_fixed_port() -> None:
    with pytest.raises(SystemExit, match="fixed --port"):
        run_workers(LOOPBACK, 0, 2)
