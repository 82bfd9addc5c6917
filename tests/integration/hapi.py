"""Helpers for the integration tests that run against the real HAPI FHIR JPA server in ``tests/hapi/``.

``HapiServer`` starts ``tests/hapi/run`` (which builds the server with Maven when needed) and stops it again;
the pytest fixtures in ``conftest.py`` use it. ``post_transaction`` and friends are small httpx wrappers for tests.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import FIXTURES

HAPI_DIR = Path(__file__).resolve().parents[1] / "hapi"
RUN_SCRIPT = HAPI_DIR / "run"
FAT_JAR = HAPI_DIR / "target" / "hapi-testserver.jar"
READY_PREFIX = "HAPI FHIR ready at "

FHIR_JSON = "application/fhir+json"
# Generous: HAPI answers in milliseconds, but the first request of a kind warms up a cold JVM.
HTTP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


class HapiStartError(RuntimeError):
    """The server could not be built or did not become ready; the message includes its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prune_logs(directory: Path, pattern: str, max_age_seconds: float) -> None:
    """Delete old per-run server logs so ``tests/hapi/target`` does not fill up over weeks of test runs."""
    cutoff = time.time() - max_age_seconds
    for path in directory.glob(pattern):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()


def _tail(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def build(log_path: Path, timeout: float) -> None:
    """``tests/hapi/run --build-only``: a no-op when the jar is up to date, a Maven build otherwise."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        try:
            proc = subprocess.run(
                [str(RUN_SCRIPT), "--build-only"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise HapiStartError(
                f"building the HAPI test server took more than {timeout:.0f} s; log {log_path}:\n" + _tail(log_path)
            ) from e
    if proc.returncode != 0:
        raise HapiStartError(
            f"building the HAPI test server failed (exit {proc.returncode}); log {log_path}:\n" + _tail(log_path)
        )


class HapiServer:
    """One ``tests/hapi/run`` process (its own process group), started by :meth:`start`, ended by :meth:`stop`."""

    def __init__(self, port: int, args: list[str], log_path: Path, token: str | None = None) -> None:
        self.port = port
        self.args = args
        self.token = token
        self.log_path = log_path
        self.base_url = ""
        self.ready_seconds = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self, timeout: float) -> str:
        """Start the server and wait for its ready line; returns the base URL (e.g. http://127.0.0.1:N/fhir)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        started = time.monotonic()
        self._proc = subprocess.Popen(
            [str(RUN_SCRIPT), "--port", str(self.port), *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            # Own process group: stop() signals the JVM and the script's readiness watcher together.
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        deadline = started + timeout
        buffer = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.stop()
                    raise HapiStartError(
                        f"HAPI test server not ready after {timeout:.0f} s; log {self.log_path}:\n"
                        + _tail(self.log_path)
                    )
                if not sel.select(timeout=min(remaining, 1.0)):
                    if self._proc.poll() is not None:
                        break
                    continue
                chunk = os.read(self._proc.stdout.fileno(), 4096)
                if not chunk:  # EOF: the script and its watcher are gone
                    break
                buffer += chunk
        line = buffer.decode("utf-8", errors="replace").split("\n", 1)[0].strip()
        if not line.startswith(READY_PREFIX):
            code = self._proc.poll()
            self.stop()
            raise HapiStartError(
                f"HAPI test server did not start (exit code {code}, stdout {line!r}); log {self.log_path}:\n"
                + _tail(self.log_path)
            )
        self.ready_seconds = time.monotonic() - started
        self.base_url = line[len(READY_PREFIX) :]
        return self.base_url

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after 30 s; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
            else:
                # The JVM is gone, but a readiness watcher may still be polling: end the group all the same.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None


def auth_headers(token: str | None) -> dict[str, str]:
    headers = {"Accept": FHIR_JSON}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def fhir_get(url: str, token: str | None = None, params: dict[str, str] | None = None) -> httpx.Response:
    """GET a FHIR URL (absolute: a search, a read, or a ``next`` link) with JSON accept and optional token."""
    return httpx.get(url, params=params, headers=auth_headers(token), timeout=HTTP_TIMEOUT)


def post_transaction(base_url: str, bundle: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    """POST a transaction (or batch) Bundle to the server base and return the response Bundle.

    Raises ``httpx.HTTPStatusError`` (with HAPI's OperationOutcome text in the message) on a 4xx/5xx.
    """
    headers = auth_headers(token) | {"Content-Type": FHIR_JSON}
    response = httpx.post(base_url.rstrip("/"), json=bundle, headers=headers, timeout=HTTP_TIMEOUT)
    if response.is_error:
        raise httpx.HTTPStatusError(
            f"transaction failed: {response.status_code} {response.text[:2000]}",
            request=response.request,
            response=response,
        )
    result: dict[str, Any] = response.json()
    return result


def copies_of(names: list[str], folder: Path) -> tuple[list[Path], dict[str, str]]:
    """Copies of example patients (`fixtures/hiv/<name>.json`) under ids no other test uses, written to `folder`:
    loaded with `fhirsvc sandbox load`, their patients, findings and write-backs belong to one test alone on the
    shared server. Returns the files and each name's fixture Patient id in them."""
    suffix = uuid.uuid4().hex[:8]
    paths, ids = [], {}
    for name in names:
        fixture_id = f"hiv-{name}"
        ids[name] = f"{fixture_id}-{suffix}"
        path = folder / f"{ids[name]}.json"
        path.write_text((FIXTURES / "hiv" / f"{name}.json").read_text().replace(fixture_id, ids[name]))
        paths.append(path)
    return paths, ids


def search_all(url: str, token: str | None = None, max_pages: int = 100) -> list[dict[str, Any]]:
    """Every entry of a search, following ``next`` links (at most ``max_pages`` pages)."""
    entries: list[dict[str, Any]] = []
    next_url: str | None = url
    pages = 0
    while next_url is not None:
        pages += 1
        if pages > max_pages:
            raise AssertionError(f"more than {max_pages} pages for {url}")
        response = fhir_get(next_url, token)
        response.raise_for_status()
        bundle = response.json()
        entries.extend(bundle.get("entry", []))
        next_url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
    return entries
