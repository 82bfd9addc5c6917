"""Time budget: a slow, down or failing FHIR server never makes a CDS call hang, 5xx, or invent findings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import respx
from fastapi.testclient import TestClient

from fhirsvc.config import Settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.record.gather import DataUnavailable, fetch_patient
from fhirsvc.render.cards import INCOMPLETE_SUMMARY
from fhirsvc.terminology.knowledge import Knowledge
from tests.api.test_cds_hooks import assert_no_empty_fields
from tests.cds_helpers import (
    FHIR_BASE,
    TOKEN,
    FakeFhirServer,
    hook_request,
    prefetch_from,
    resources_of,
    signed_client,
)
from tests.conftest import load_fixture

PATIENT_VIEW = "/cds-services/second-line-patient-view"
BUDGET = 0.3
MARGIN = 0.5  # TestClient, evaluation and the store on a busy CI machine

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def make_client(knowledge: Knowledge, transport: httpx.AsyncBaseTransport, **settings: Any) -> TestClient:
    return signed_client(knowledge, transport, **{"cds_time_budget": BUDGET, **settings})


def timed_call(client: TestClient, body: dict[str, Any]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.post(PATIENT_VIEW, json=body)
    return response, time.monotonic() - started


def slow(seconds: float, then: Handler | None = None) -> Handler:
    async def handle(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(seconds)
        if then is not None:
            return await then(request)
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": []})

    return handle


def assert_only_the_incomplete_card(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200
    body = response.json()
    assert_no_empty_fields(body)
    (card,) = body["cards"]
    assert card["summary"] == INCOMPLETE_SUMMARY and len(card["summary"]) < 140
    assert card["indicator"] == "info" and card["uuid"]
    assert card["source"]["label"] and card["source"]["url"].startswith("https://")
    assert card["source"]["topic"]["code"] == "data-needed"
    assert card["links"] and all(link["type"] == "absolute" for link in card["links"])
    return card


def test_slow_fhir_server_answers_within_budget_with_a_data_needed_card(knowledge: Knowledge) -> None:
    with make_client(knowledge, httpx.MockTransport(slow(5.0))) as client:
        response, elapsed = timed_call(client, hook_request("hiv-fail-basic", None, fhir_server=FHIR_BASE, token=TOKEN))
    assert elapsed < BUDGET + MARGIN, elapsed
    card = assert_only_the_incomplete_card(response)
    assert "**Observation**" in card["detail"] and "**Condition**" in card["detail"]


def test_fetches_run_in_parallel_within_one_budget(knowledge: Knowledge) -> None:
    """Five keys taking 0.5 s each: 2.5 s one after the other, past the 1.6 s fetch cutoff of a 2 s budget."""
    server = FakeFhirServer(resources_of(load_fixture("hiv/fail-basic.json")))

    async def handle(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.5)
        return server.handle(request)

    with make_client(knowledge, httpx.MockTransport(handle), cds_time_budget=2.0) as client:
        response, elapsed = timed_call(client, hook_request("hiv-fail-basic", None, fhir_server=FHIR_BASE, token=TOKEN))
    assert response.status_code == 200
    (card,) = response.json()["cards"]  # the finding, not the data-needed card: every fetch made the cutoff
    assert "second-line" in card["summary"]
    assert 0.5 <= elapsed < 2.0 + MARGIN


def test_one_slow_required_key_gives_only_the_data_needed_card(knowledge: Knowledge) -> None:
    """Without observations, "no viral load on file" would be a false finding: nothing is evaluated."""
    prefetch = prefetch_from(load_fixture("hiv/fail-basic.json"))
    del prefetch["observations"]
    with make_client(knowledge, httpx.MockTransport(slow(5.0))) as client:
        response, elapsed = timed_call(
            client, hook_request("hiv-fail-basic", prefetch, fhir_server=FHIR_BASE, token=TOKEN)
        )
    assert elapsed < BUDGET + MARGIN
    card = assert_only_the_incomplete_card(response)
    assert "**Observation**" in card["detail"] and "**Condition**" not in card["detail"]


def test_slow_optional_key_keeps_the_findings_that_do_not_read_it(knowledge: Knowledge) -> None:
    """Allergies are read only by the intolerance rule: the virologic-failure finding stands, with the card."""
    bundle = load_fixture("hiv/medicationrequest-only.json")
    prefetch = prefetch_from(bundle)
    del prefetch["allergies"]
    with make_client(knowledge, httpx.MockTransport(slow(5.0))) as client:
        response, elapsed = timed_call(
            client, hook_request("hiv-medicationrequest-only", prefetch, fhir_server=FHIR_BASE, token=TOKEN)
        )
    assert elapsed < BUDGET + MARGIN
    assert response.status_code == 200
    cards = response.json()["cards"]
    assert [c["summary"] == INCOMPLETE_SUMMARY for c in cards] == [False, True]
    assert "second-line" in cards[0]["summary"]
    assert "**AllergyIntolerance**" in cards[1]["detail"]


def test_slow_optional_medication_key_withholds_every_line_finding(knowledge: Knowledge) -> None:
    """Lines are built from every medication type: without MedicationStatement no line can be trusted."""
    prefetch = prefetch_from(load_fixture("hiv/medicationrequest-only.json"))
    del prefetch["medicationStatements"]
    with make_client(knowledge, httpx.MockTransport(slow(5.0))) as client:
        response, elapsed = timed_call(
            client, hook_request("hiv-medicationrequest-only", prefetch, fhir_server=FHIR_BASE, token=TOKEN)
        )
    assert elapsed < BUDGET + MARGIN
    card = assert_only_the_incomplete_card(response)
    assert "**MedicationStatement**" in card["detail"]


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(503),
        httpx.Response(
            500, json={"resourceType": "OperationOutcome", "issue": [{"severity": "fatal", "code": "exception"}]}
        ),
        httpx.Response(429, headers={"Retry-After": "3"}),  # would wait 3 s: the budget cuts it
        httpx.Response(200, text="<html>proxy error</html>"),
    ],
    ids=["503", "500-outcome", "429-retry-after", "html"],
)
def test_failing_fhir_server_is_200_never_5xx(knowledge: Knowledge, failure: httpx.Response) -> None:
    with respx.mock(base_url=FHIR_BASE, assert_all_called=False) as mock:
        route = mock.route().mock(return_value=failure)
        with make_client(knowledge, httpx.AsyncHTTPTransport()) as client:
            response, elapsed = timed_call(
                client, hook_request("hiv-fail-basic", None, fhir_server=FHIR_BASE, token=TOKEN)
            )
    assert elapsed < BUDGET + MARGIN
    assert_only_the_incomplete_card(response)
    assert route.called


def test_fhir_server_down_is_200_with_the_card(knowledge: Knowledge) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with make_client(knowledge, httpx.MockTransport(refuse)) as client:
        response, elapsed = timed_call(client, hook_request("hiv-fail-basic", None, fhir_server=FHIR_BASE, token=TOKEN))
    assert elapsed < BUDGET + MARGIN
    assert_only_the_incomplete_card(response)


def test_refused_token_is_still_412_not_the_card(knowledge: Knowledge) -> None:
    server = FakeFhirServer(resources_of(load_fixture("hiv/fail-basic.json")), token="another-token")
    with make_client(knowledge, server.transport) as client:
        response, _ = timed_call(client, hook_request("hiv-fail-basic", None, fhir_server=FHIR_BASE, token=TOKEN))
    assert response.status_code == 412


def test_the_budget_is_configurable(knowledge: Knowledge) -> None:
    """With a budget longer than the server's delay, the slow answer is waited for."""
    server = FakeFhirServer(resources_of(load_fixture("hiv/fail-basic.json")))

    async def handle(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.4)
        return server.handle(request)

    with make_client(knowledge, httpx.MockTransport(handle), cds_time_budget=3.0) as client:
        response, elapsed = timed_call(client, hook_request("hiv-fail-basic", None, fhir_server=FHIR_BASE, token=TOKEN))
    assert response.status_code == 200 and "second-line" in response.json()["cards"][0]["summary"]
    assert 0.4 <= elapsed < 3.0
    assert Settings().cds_time_budget == 2.0


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_poller_never_evaluates_partial_data(anyio_backend: str) -> None:
    """Outside a CDS call (the poller), a failing server still means DataUnavailable, not a partial record."""
    pool = FhirClientPool(Settings(fhir_max_retries=0), transport=httpx.MockTransport(lambda r: httpx.Response(503)))
    try:
        with pytest.raises(DataUnavailable):
            await fetch_patient(pool, FHIR_BASE, "hiv-fail-basic", TOKEN, max_pages=5)
    finally:
        await pool.aclose()
