"""Shared fixtures: the knowledge base loaded once, fixture bundles by name, and the one factory of test apps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from fhirsvc.api.app import create_app
from fhirsvc.api.deps import today
from fhirsvc.config import Settings
from fhirsvc.rules.registry import RULE_KINDS
from fhirsvc.store.db import Store
from fhirsvc.terminology.knowledge import Knowledge, load_knowledge
from tests.cds_helpers import CLIENT, FHIR_BASE, SignedCalls, Signer
from tests.virtual_time import VirtualClock

# The HAPI FHIR test server fixtures (hapi_base_url, hapi_token_server), shared by integration and browser tests.
pytest_plugins = ["tests.hapi_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
AS_OF = date(2026, 6, 1)  # the fixtures' evaluation date


def _no_network(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"unexpected outbound request to {request.url}")


NO_NETWORK = httpx.MockTransport(_no_network)  # fails the test on any request that leaves the app
# What a test app trusts unless told otherwise: CLIENT's JWTs and FHIR_BASE (the secure defaults stay on).
TRUSTED: dict[str, Any] = {"cds_clients": [CLIENT.client_config()], "fhir_servers": [FHIR_BASE]}


class MakeClient(Protocol):
    def __call__(
        self,
        fhir: httpx.AsyncBaseTransport | None = NO_NETWORK,
        *,
        jwks: httpx.AsyncBaseTransport | None = NO_NETWORK,
        signer: Signer | None = CLIENT,
        as_of: date | None = AS_OF,
        clock: VirtualClock | None = None,
        knowledge: Knowledge | None = None,
        **settings: Any,
    ) -> TestClient: ...


@pytest.fixture(autouse=True)
def _store_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every app a test builds gets its own SQLite store, never a file in the working directory."""
    path = tmp_path_factory.mktemp("store") / "fhirsvc.db"
    monkeypatch.setenv("FHIRSVC_STORE_URL", f"sqlite:///{path}")


@pytest.fixture(scope="session")
def knowledge() -> Knowledge:
    return load_knowledge(rule_kinds=RULE_KINDS)


@pytest.fixture(scope="session")
def make_client(knowledge: Knowledge) -> MakeClient:
    """The factory of every in-process app the tests call: `with make_client(...) as client:` starts it."""
    default_knowledge = knowledge

    def make(
        fhir: httpx.AsyncBaseTransport | None = NO_NETWORK,
        *,
        jwks: httpx.AsyncBaseTransport | None = NO_NETWORK,
        signer: Signer | None = CLIENT,
        as_of: date | None = AS_OF,
        clock: VirtualClock | None = None,
        knowledge: Knowledge | None = None,
        **settings: Any,
    ) -> TestClient:
        """The app trusting CLIENT and FHIR_BASE (`settings` override those and any other setting), reading FHIR
        servers through `fhir` and CDS client JWKS URLs through `jwks` (None: the real network), evaluating as of
        `as_of` (None: today). Every call is signed by `signer` (None: the test sends its own Authorization).
        With `clock`, the app and its event loop run on that virtual clock. `knowledge`: other mappings."""
        app = create_app(
            Settings(**{**TRUSTED, **settings}),
            knowledge=knowledge or default_knowledge,
            fhir_transport=fhir,
            jwks_transport=jwks,
            clock=clock or time.monotonic,
        )
        if as_of is not None:
            app.dependency_overrides[today] = lambda: as_of
        client = TestClient(app, backend_options={"loop_factory": clock.new_loop} if clock else None)
        if signer is not None:
            client.auth = SignedCalls(signer)
        return client

    return make


def load_fixture(relative: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((FIXTURES / relative).read_bytes())
    return data


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A migrated SQLite store of the test's own (the poller's; store tests define their own, per database)."""
    store = Store(f"sqlite:///{tmp_path / 'poll.db'}")
    store.upgrade()
    yield store
    store.close()


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (`@pytest.mark.anyio`) run on asyncio, the loop the service runs on."""
    return "asyncio"
