"""Running the service under uvicorn: one process, or one worker process per core, each with its own listener."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from fhirsvc.config import Settings

log = logging.getLogger(__name__)

# How long workers get to finish their requests after SIGTERM before they are killed.
STOP_GRACE_S = 10.0
# Read by prometheus_client itself, unprefixed (Settings.prometheus_multiproc_dir reads the same variable).
MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def listening_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A bound TCP socket whose accepted connections get TCP_NODELAY.

    asyncio turns TCP_NODELAY on for an accepted connection only when the socket says `proto == IPPROTO_TCP`, and an
    accepted socket inherits `proto` from the listener; a socket made as uvicorn's `Config.bind_socket` makes it
    leaves `proto` 0, so every keep-alive response waited for the client's delayed ACK, about 40 ms per call on
    Linux (https://github.com/Kludex/uvicorn/issues/3149). Naming the protocol avoids that.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def serve(host: str, port: int, settings: Settings, workers: int = 1) -> None:
    """uvicorn with JSON logs (fhirsvc.api.logs: one line per request, httpx quiet, no uvicorn access log)."""
    import uvicorn

    from fhirsvc.api.app import create_app
    from fhirsvc.api.logs import configure_logging

    configure_logging()
    if workers <= 1:
        if settings.prometheus_multiproc_dir is not None:  # set by the operator (e.g. a shared volume)
            settings.prometheus_multiproc_dir.mkdir(parents=True, exist_ok=True)
        uvicorn.run(create_app(settings), host=host, port=port, **_UVICORN)
        return
    from fhirsvc.store.db import Store

    # Migrate once here: workers starting together would otherwise race to create the same tables.
    store = Store(settings.store_url)
    store.upgrade()
    store.close()
    run_workers(host, port, workers, metrics_dir=settings.prometheus_multiproc_dir)


_UVICORN: dict[str, Any] = {"log_level": "info", "log_config": None, "access_log": False}
SERVICE_APP = "fhirsvc.api.app:create_app"  # a factory: each worker builds the app from the environment


def _worker(host: str, port: int, app: str, factory: bool) -> None:
    """One worker process: its own SO_REUSEPORT listener, its own app built from the environment."""
    import uvicorn

    from fhirsvc.api.logs import configure_logging

    configure_logging()
    _stop_when_orphaned(os.getppid())
    config = uvicorn.Config(app, factory=factory, **_UVICORN)
    uvicorn.Server(config).run(sockets=[listening_socket(host, port, reuse_port=True)])


def _stop_when_orphaned(parent: int) -> None:
    """SIGTERM this worker once its supervisor is gone (e.g. SIGKILLed): an orphan would go on sharing the port."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _check_port(host: str, port: int) -> None:
    """Refuse port 0 and a port another process already listens on, before any worker starts.

    SO_REUSEPORT lets any process of the same user bind the same port, so a second instance (or an old one still
    running during a deploy) would silently take a share of the connections: ask the port first.
    """
    if port == 0:
        raise SystemExit("--workers needs a fixed --port: with port 0 every worker would listen on a port of its own")
    probe = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104 (probed, not bound)
    try:
        with socket.create_connection((probe, port), timeout=1.0):
            pass
    except OSError:
        listening_socket(host, port, reuse_port=True).close()  # nobody answers: the address must still be ours to bind
        return
    raise SystemExit(f"{host}:{port} is already in use by another process; fhirsvc does not share its port")


def run_workers(
    host: str,
    port: int,
    workers: int,
    app: str = SERVICE_APP,
    factory: bool = True,
    metrics_dir: Path | None = None,
) -> None:
    """Run `workers` processes serving `app` until SIGINT/SIGTERM, or until one of them exits.

    `app` is an import string, of an app factory unless `factory` is false (the benchmarks serve their own app).
    `metrics_dir` holds the workers' Prometheus metric files (`multiprocess_metrics`); None: a private temporary one.

    Each worker listens on its own SO_REUSEPORT socket, so the kernel spreads new connections over the workers.
    With one shared listener (uvicorn's `--workers`), the first worker to wake accepted every connection of a burst:
    ten keep-alive EHR connections could all land on one process while the other core sat idle. A worker that dies
    is not restarted here: the service stops with an error, and its supervisor (systemd, Kubernetes) restarts it.
    """
    _check_port(host, port)
    with multiprocess_metrics(metrics_dir) as directory:
        _supervise(host, port, workers, app, factory, directory)


@contextlib.contextmanager
def multiprocess_metrics(directory: Path | None) -> Iterator[Path]:
    """Prometheus multiprocess mode for the workers (https://prometheus.github.io/client_python/multiprocess/).

    Each worker would otherwise count in its own registry, and a scrape, answered by one worker, would see only its
    share. prometheus_client picks the mode from PROMETHEUS_MULTIPROC_DIR when it is imported, so the variable is
    set here, before the workers start (each is a fresh interpreter that inherits it); every worker then writes its
    counts to its own file in the directory, and `/metrics` adds them up. The library asks for the directory to be
    emptied between runs: an operator's directory is emptied at start, a private one is removed at the end.
    """
    own = directory is None
    path = Path(tempfile.mkdtemp(prefix="fhirsvc-metrics-")) if directory is None else directory
    if not own:
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # counts of a previous run would be added to this one's
            stale.unlink()
    previous = os.environ.get(MULTIPROC_DIR_VARIABLE)
    os.environ[MULTIPROC_DIR_VARIABLE] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_DIR_VARIABLE, None)
        else:
            os.environ[MULTIPROC_DIR_VARIABLE] = previous
        if own:
            shutil.rmtree(path, ignore_errors=True)


def _supervise(host: str, port: int, workers: int, app: str, factory: bool, metrics_dir: Path) -> None:
    """Start the workers, wait for a stop signal or a worker's exit, then stop them all (see `run_workers`)."""
    from prometheus_client.multiprocess import mark_process_dead

    spawn = multiprocessing.get_context("spawn")  # a clean interpreter per worker: no state forked from here
    processes: list[BaseProcess] = [
        spawn.Process(target=_worker, args=(host, port, app, factory), name=f"fhirsvc-worker-{index}")
        for index in range(workers)
    ]
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping %d workers", signal.Signals(signum).name, workers)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for process in processes:
            process.start()
        log.info("started %d workers on %s:%d", workers, host, port)
        while not stop.wait(0.5):
            ended = [p for p in processes if not p.is_alive()]
            if ended:
                log.error("worker %s exited (code %s): stopping the service", ended[0].name, ended[0].exitcode)
                raise SystemExit(1)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        deadline = time.monotonic() + STOP_GRACE_S  # one grace period for all workers, not one each
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
            if process.pid is not None:
                # Drops a dead worker's live gauges (its counters stay: they are part of the service's totals).
                mark_process_dead(process.pid, str(metrics_dir))  # type: ignore[no-untyped-call]
        for sig, handler in previous.items():
            signal.signal(sig, handler)
