"""Fixtures for tests against real servers, a pytest plugin loaded by tests/conftest.py so integration and browser
tests share them: a HAPI FHIR JPA R4 server (built from ``tests/hapi/``) and a throw-away PostgreSQL (``postgres_url``).

One server process serves the whole test session, started the first time a test asks for it:

- ``hapi_base_url`` -> ``"http://127.0.0.1:<port>/fhir"``: open, no token needed.
- ``hapi_token_server`` -> ``("http://127.0.0.1:<port>/fhir-secure", token)``: the *same* server and data under
  a second base path that answers 401 unless ``Authorization: Bearer <token>`` is sent (``GET .../metadata``
  stays open). One JVM instead of two saves a full HAPI start-up (30-60 s on two cores).

Both use search-cache off (every search runs afresh). Mark tests with ``@pytest.mark.hapi``.

Needs Java 17+ and Maven (the first build downloads ~300 MB into ~/.m2). Without them the tests are skipped,
except under CI (``CI`` set), where they fail. Timeouts: ``FHIRSVC_HAPI_BUILD_TIMEOUT`` (default 1800 s) and
``FHIRSVC_HAPI_START_TIMEOUT`` (default 300 s). The server log is ``tests/hapi/target/pytest-hapi-<port>.log``:
its tail is shown when start-up fails, and the lines logged during a failing test are attached to its report.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
from collections.abc import Generator, Iterator

import pytest

from tests import postgres
from tests.integration.hapi import FAT_JAR, HAPI_DIR, HapiServer, HapiStartError, build, free_port, prune_logs

SECURE_BASE_PATH = "/fhir-secure"
HAPI_FIXTURES = ("hapi_base_url", "hapi_token_server", "hapi_server")
_log_offset_key = pytest.StashKey[int]()
_server_key = pytest.StashKey[HapiServer]()


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing_tools() -> list[str]:
    missing = []
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        missing.append("java (JDK 17+)")
    if shutil.which("mvn") is None and not FAT_JAR.exists():
        missing.append("mvn (Maven, to build tests/hapi)")
    return missing


@pytest.fixture(scope="session")
def hapi_server(request: pytest.FixtureRequest) -> Iterator[HapiServer]:
    """The running server (for its ``port``, ``base_url``, ``log_path``); prefer the two fixtures below."""
    missing = _missing_tools()
    if missing:
        message = f"HAPI FHIR integration tests need {' and '.join(missing)} on PATH"
        if _in_ci():
            pytest.fail(message + " (CI is set, so this is an error, not a skip)", pytrace=False)
        pytest.skip(message)

    target = HAPI_DIR / "target"
    prune_logs(target, "pytest-hapi-[0-9]*.log", max_age_seconds=2 * 24 * 3600)
    try:
        build(target / "pytest-hapi-build.log", timeout=float(os.environ.get("FHIRSVC_HAPI_BUILD_TIMEOUT", "1800")))
    except HapiStartError as e:
        pytest.fail(str(e), pytrace=False)

    token = secrets.token_urlsafe(24)
    start_timeout = float(os.environ.get("FHIRSVC_HAPI_START_TIMEOUT", "300"))
    server: HapiServer | None = None
    error: HapiStartError | None = None
    # A second try with a new port covers the small race between free_port() and the JVM binding it.
    for _attempt in range(2):
        port = free_port()
        server = HapiServer(
            port,
            ["--token", token, "--secure-base-path", SECURE_BASE_PATH, "--search-cache", "off"],
            target / f"pytest-hapi-{port}.log",
            token=token,
        )
        atexit.register(server.stop)  # safety net if the session dies before fixture teardown
        try:
            server.start(timeout=start_timeout)
            error = None
            break
        except HapiStartError as e:
            error = e
            if "already in use" not in str(e):
                break
    if error is not None or server is None:
        pytest.fail(str(error), pytrace=False)

    request.config.stash[_server_key] = server
    print(f"\nHAPI FHIR test server ready at {server.base_url} after {server.ready_seconds:.1f} s")
    try:
        yield server
    finally:
        server.stop()
        del request.config.stash[_server_key]


@pytest.fixture(scope="session")
def hapi_base_url(hapi_server: HapiServer) -> str:
    """Base URL of the open HAPI FHIR R4 endpoint, e.g. ``http://127.0.0.1:PORT/fhir``."""
    return hapi_server.base_url


@pytest.fixture(scope="session")
def hapi_token_server(hapi_server: HapiServer) -> tuple[str, str]:
    """``(base_url, token)`` of the same server's bearer-token-protected endpoint."""
    assert hapi_server.token is not None
    return f"http://127.0.0.1:{hapi_server.port}{SECURE_BASE_PATH}", hapi_server.token


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the server log lines written during a failed HAPI test to its report."""
    report = yield
    fixturenames = getattr(item, "fixturenames", ())
    server = item.config.stash.get(_server_key, None)
    if server is None or not any(name in fixturenames for name in HAPI_FIXTURES):
        return report
    if report.when == "setup":
        item.stash[_log_offset_key] = server.log_size()
    elif report.failed and _log_offset_key in item.stash:
        text = server.log_since(item.stash[_log_offset_key])
        lines = text.splitlines()[-200:]
        report.sections.append((f"HAPI server log ({server.log_path})", "\n".join(lines)))
    return report


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL server for the whole run (tests/postgres.py)."""
    if not postgres.available():
        if _in_ci():
            pytest.fail("CI must run the PostgreSQL store tests: install Debian's postgresql package")
        pytest.skip("PostgreSQL (initdb, pg_ctl) is not installed; `apt-get install postgresql` to run these")
    with postgres.postgres_server() as url:
        yield url
