"""The SMART app in Chromium: EHR and standalone launch through a SMART server, the page, the cookie, refusals."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import orjson
import pytest

from fhirsvc.api.app import create_app
from fhirsvc.api.deps import today
from fhirsvc.config import Settings
from fhirsvc.pipeline import evaluate_record
from fhirsvc.record.files import index_records
from fhirsvc.sandbox import load
from fhirsvc.terminology.knowledge import Knowledge
from tests.browser.smart_server import SmartServer, free_port, serving, smart_app
from tests.conftest import AS_OF, FIXTURES, ROOT
from tests.integration.hapi import copies_of

if TYPE_CHECKING:
    from playwright.sync_api import Page

CLIENT_ID = "fhirsvc-timeline"
FIXTURE = FIXTURES / "hiv" / "fail-basic.json"
SCREENSHOT = ROOT / "docs" / "smart-app.png"


@dataclass
class Launchable:
    app_url: str
    server: SmartServer
    finding_id: str


@contextmanager
def serving_both(
    server: SmartServer, smart_port: int, app_port: int, knowledge: Knowledge, folder: Path
) -> Iterator[None]:
    """The SMART test server and fhirsvc (uvicorn, real ports), fhirsvc trusting the SMART server's FHIR base."""
    app_url = f"http://127.0.0.1:{app_port}"
    with serving(smart_app(server), smart_port) as smart_base:
        server.base = smart_base
        settings = Settings(
            public_url=app_url,
            fhir_servers=[server.fhir_base],
            smart_app_client_id=CLIENT_ID,
            store_url=f"sqlite:///{folder / 'store.db'}",
        )
        app = create_app(settings, knowledge=knowledge)
        app.dependency_overrides[today] = lambda: AS_OF
        with serving(app, app_port):
            yield


@pytest.fixture(scope="module")
def stack(knowledge: Knowledge, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launchable]:
    """fhirsvc (uvicorn, a real port) trusting the SMART test server, which holds one HIV patient."""
    app_port, smart_port = free_port(), free_port()
    app_url = f"http://127.0.0.1:{app_port}"
    bundle = orjson.loads(FIXTURE.read_bytes())
    resources = [entry["resource"] for entry in bundle["entry"]]
    server = SmartServer(CLIENT_ID, f"{app_url}/app/callback", resources, patient="hiv-fail-basic")
    (record,) = index_records([FIXTURE]).records()
    result = evaluate_record(record, knowledge, AS_OF)
    finding_id = next(f.id for p in result.programs for f in p.findings if f.card)
    with serving_both(server, smart_port, app_port, knowledge, tmp_path_factory.mktemp("smart")):
        yield Launchable(app_url, server, finding_id)


@pytest.fixture
def smart(stack: Launchable) -> Iterator[Launchable]:
    yield stack
    stack.server.answer_wrong_state = stack.server.expect_other_verifier = False
    stack.server.redirect_uri = f"{stack.app_url}/app/callback"
    stack.server.refusals.clear()


def launch_url(smart: Launchable, **params: str) -> str:
    return f"{smart.app_url}/app/launch?{urlencode({'iss': smart.server.fhir_base, **params})}"


def test_ehr_launch_opens_the_page_on_the_cards_finding(
    page: Page, smart: Launchable, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app_context = orjson.dumps({"program": "hiv", "finding": smart.finding_id}).decode()
    response = page.goto(launch_url(smart, launch=smart.server.new_launch(app_context)))
    assert response is not None and response.status == 200
    assert page.url == f"{smart.app_url}/app#finding-{smart.finding_id}"
    chart = page.locator('svg[data-program="hiv"]')
    assert chart.locator("g.line-bar").count() == 1
    assert page.get_by_role("img", name="threshold 200 copies/mL").is_visible()
    assert chart.locator('[data-evidence="true"]').count() == 2
    article = page.locator(f"#finding-{smart.finding_id}")
    assert article.is_visible() and "HIV-1 RNA ≥200 copies/mL twice" in article.inner_text()
    assert article.evaluate("el => el.matches(':target')")

    (cookie,) = page.context.cookies()
    assert cookie["name"] == "fhirsvc_app" and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert cookie["path"] == "/app" and not cookie["secure"]  # loopback: http; elsewhere Secure
    (token,) = smart.server.tokens
    assert token not in page.content() and token not in cookie["value"]
    assert token not in caplog.text and smart.server.fhir_reads > 0
    if os.environ.get("FHIRSVC_UPDATE_SCREENSHOT") == "1":  # the README's picture
        page.screenshot(path=SCREENSHOT, full_page=True)


def test_standalone_launch_with_a_finding(page: Page, smart: Launchable) -> None:
    page.goto(launch_url(smart, finding=smart.finding_id))
    assert page.url == f"{smart.app_url}/app#finding-{smart.finding_id}"
    assert page.locator('svg[data-program="hiv"] g.line-bar').count() == 1


def test_a_wrong_state_is_refused(page: Page, smart: Launchable) -> None:
    smart.server.answer_wrong_state = True
    response = page.goto(launch_url(smart, launch=smart.server.new_launch()))
    assert response is not None and response.status == 400
    assert "Unknown or expired state" in page.inner_text("body")
    assert page.context.cookies() == []


def test_a_wrong_verifier_is_refused_by_the_token_endpoint(page: Page, smart: Launchable) -> None:
    smart.server.expect_other_verifier = True
    response = page.goto(launch_url(smart, launch=smart.server.new_launch()))
    assert response is not None and response.status == 401
    assert "token endpoint refused the code (invalid_grant)" in page.inner_text("body")
    assert smart.server.refusals == ["code_verifier"] and page.context.cookies() == []


def test_an_unregistered_redirect_uri_is_refused(page: Page, smart: Launchable) -> None:
    smart.server.redirect_uri = f"{smart.app_url}/elsewhere"
    response = page.goto(launch_url(smart, launch=smart.server.new_launch()))
    assert response is not None and response.status == 400
    assert smart.server.refusals == ["redirect_uri"] and page.context.cookies() == []


def test_an_iss_off_the_allowlist_is_refused(page: Page, smart: Launchable) -> None:
    response = page.goto(f"{smart.app_url}/app/launch?{urlencode({'iss': 'https://fhir.example.org/r4'})}")
    assert response is not None and response.status == 400
    assert "not one this service may read from" in page.inner_text("body")


def test_the_page_without_a_session_is_refused(page: Page, smart: Launchable) -> None:
    response = page.goto(f"{smart.app_url}/app")
    assert response is not None and response.status == 401
    assert "Session expired" in page.inner_text("body")


@pytest.fixture(scope="module")
def hapi_stack(
    knowledge: Knowledge, hapi_base_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Launchable]:
    """The same stack with the chart on the HAPI test server: the SMART server checks the token and passes the
    reads on to HAPI, which holds a copy of the HIV example patient under an id no other test uses."""
    folder = tmp_path_factory.mktemp("smart-hapi")
    paths, ids = copies_of(["fail-basic"], folder)
    patient = load(hapi_base_url, paths).patients[ids["fail-basic"]]
    app_port, smart_port = free_port(), free_port()
    app_url = f"http://127.0.0.1:{app_port}"
    server = SmartServer(CLIENT_ID, f"{app_url}/app/callback", [], patient=patient, upstream=hapi_base_url)
    with serving_both(server, smart_port, app_port, knowledge, folder):
        yield Launchable(app_url, server, finding_id="")  # ids follow the server's references


def test_ehr_launch_reads_the_chart_from_the_hapi_server(page: Page, hapi_stack: Launchable) -> None:
    """The whole path: EHR launch, PKCE code exchange, the record fetched with the session's token from a real FHIR
    server (HAPI behind the SMART server), the page with the line, the threshold and the finding's evidence."""
    response = page.goto(launch_url(hapi_stack, launch=hapi_stack.server.new_launch()))
    assert response is not None and response.status == 200
    chart = page.locator('svg[data-program="hiv"]')
    assert chart.locator("g.line-bar").count() == 1
    assert page.get_by_role("img", name="threshold 200 copies/mL").is_visible()
    assert chart.locator('[data-evidence="true"]').count() == 2
    assert page.locator("article", has_text="HIV-1 RNA ≥200 copies/mL twice").count() == 1
    assert hapi_stack.server.fhir_reads > 0
