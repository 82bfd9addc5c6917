"""Time budget: a slow, down or failing FHIR server never makes a CDS call hang, 5xx, or invent findings.

The app and its event loop run on a virtual clock: a scripted delay takes exactly its seconds of that clock and the
work around it none, so every duration below is exact and no test depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import respx
from fastapi.testclient import TestClient

from fhirsvc.api.hook_call import FETCH_SHARE
from fhirsvc.cds.services import PREFETCH
from fhirsvc.config import Settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.record.gather import DataUnavailable, fetch_patient
from fhirsvc.render.cards import INCOMPLETE_SUMMARY
from tests.api.test_cds_hooks import assert_no_empty_fields
from tests.cds_helpers import FHIR_BASE, TOKEN, FakeFhirServer, hook_request, prefetch_from, resources_of
from tests.conftest import MakeClient, load_fixture
from tests.virtual_time import VirtualClock

PATIENT_VIEW = "/cds-services/second-line-patient-view"
BUDGET = 0.3
CUTOFF = BUDGET * FETCH_SHARE  # fetches still running then are cut; the rest of the budget is for the answer


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def budget_client(make_client: MakeClient, clock: VirtualClock) -> Callable[..., TestClient]:
    """The app on the virtual clock, with a `BUDGET` time budget unless told otherwise."""

    def make(transport: httpx.AsyncBaseTransport, **settings: Any) -> TestClient:
        return make_client(transport, clock=clock, **{"cds_time_budget": BUDGET, **settings})

    return make


def timed_call(client: TestClient, clock: VirtualClock, body: dict[str, Any]) -> tuple[httpx.Response, float]:
    """The response and the virtual seconds it took."""
    started = clock()
    response = client.post(PATIENT_VIEW, json=body)
    return response, clock() - started


def slow(seconds: float) -> Callable[[httpx.Request], Awaitable[httpx.Response]]:
    """A server answering every request with an empty searchset after `seconds`."""

    async def handle(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(seconds)
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": []})

    return handle


def answering_after(seconds: float, server: FakeFhirServer) -> httpx.MockTransport:
    """`server`, answering every request after `seconds`."""

    async def handle(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(seconds)
        return server.handle(request)

    return httpx.MockTransport(handle)


def assert_not_past_the_cutoff(elapsed: float) -> None:
    """Retries and their backoff may end before the cutoff or be cut by it, never outlast it."""
    assert elapsed <= CUTOFF or elapsed == pytest.approx(CUTOFF), elapsed


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


def fetch_everything() -> dict[str, Any]:
    """A call without prefetch: every key of the record is fetched from FHIR_BASE."""
    return hook_request("hiv-fail-basic", None, fhir_server=FHIR_BASE, token=TOKEN)


def test_slow_fhir_server_is_cut_at_the_fetch_cutoff_with_a_data_needed_card(
    budget_client: Callable[..., TestClient], clock: VirtualClock
) -> None:
    with budget_client(httpx.MockTransport(slow(5.0))) as client:
        response, elapsed = timed_call(client, clock, fetch_everything())
    assert elapsed == pytest.approx(CUTOFF)  # not 5 s: the fetches were cut, and the answer took no waiting
    card = assert_only_the_incomplete_card(response)
    assert "**Observation**" in card["detail"] and "**Condition**" in card["detail"]


@pytest.mark.parametrize(
    ("delay", "in_time"),
    [(CUTOFF - 0.01, True), (CUTOFF + 0.01, False)],
    ids=["just-before-the-cutoff", "just-after-the-cutoff"],
)
def test_what_arrives_before_the_cutoff_counts_and_what_arrives_after_does_not(
    budget_client: Callable[..., TestClient], clock: VirtualClock, delay: float, in_time: bool
) -> None:
    server = FakeFhirServer(resources_of(load_fixture("hiv/fail-basic.json")))
    with budget_client(answering_after(delay, server)) as client:
        response, elapsed = timed_call(client, clock, fetch_everything())
    assert response.status_code == 200
    (card,) = response.json()["cards"]
    if in_time:
        assert elapsed == pytest.approx(delay) and "second-line" in card["summary"]
    else:
        assert elapsed == pytest.approx(CUTOFF) and card["summary"] == INCOMPLETE_SUMMARY


def test_fetches_run_in_parallel_within_one_budget(
    budget_client: Callable[..., TestClient], clock: VirtualClock
) -> None:
    """Every key takes 0.5 s: one after the other they would run past the 1.6 s fetch cutoff of a 2 s budget."""
    assert len(PREFETCH) * 0.5 > 2.0 * FETCH_SHARE
    server = FakeFhirServer(resources_of(load_fixture("hiv/fail-basic.json")))
    with budget_client(answering_after(0.5, server), cds_time_budget=2.0) as client:
        response, elapsed = timed_call(client, clock, fetch_everything())
    assert response.status_code == 200
    (card,) = response.json()["cards"]  # the finding, not the data-needed card: every fetch made the cutoff
    assert "second-line" in card["summary"]
    assert elapsed == pytest.approx(0.5)
    assert len(server.requests) == len(PREFETCH)


def test_one_slow_required_key_gives_only_the_data_needed_card(
    budget_client: Callable[..., TestClient], clock: VirtualClock
) -> None:
    """Without observations, "no viral load on file" would be a false finding: nothing is evaluated."""
    prefetch = prefetch_from(load_fixture("hiv/fail-basic.json"))
    del prefetch["observations"]
    with budget_client(httpx.MockTransport(slow(5.0))) as client:
        response, elapsed = timed_call(
            client, clock, hook_request("hiv-fail-basic", prefetch, fhir_server=FHIR_BASE, token=TOKEN)
        )
    assert elapsed == pytest.approx(CUTOFF)
    card = assert_only_the_incomplete_card(response)
    assert "**Observation**" in card["detail"] and "**Condition**" not in card["detail"]


def test_slow_optional_key_keeps_the_findings_that_do_not_read_it(
    budget_client: Callable[..., TestClient], clock: VirtualClock
) -> None:
    """Allergies are read only by the intolerance rule: the virologic-failure finding stands, with the card."""
    bundle = load_fixture("hiv/medicationrequest-only.json")
    prefetch = prefetch_from(bundle)
    del prefetch["allergies"]
    with budget_client(httpx.MockTransport(slow(5.0))) as client:
        response, elapsed = timed_call(
            client, clock, hook_request("hiv-medicationrequest-only", prefetch, fhir_server=FHIR_BASE, token=TOKEN)
        )
    assert elapsed == pytest.approx(CUTOFF)
    assert response.status_code == 200
    cards = response.json()["cards"]
    assert [c["summary"] == INCOMPLETE_SUMMARY for c in cards] == [False, True]
    assert "second-line" in cards[0]["summary"]
    assert "**AllergyIntolerance**" in cards[1]["detail"]


def test_slow_optional_medication_key_withholds_every_line_finding(
    budget_client: Callable[..., TestClient], clock: VirtualClock
) -> None:
    """Lines are built from every medication type: without MedicationStatement no line can be trusted."""
    prefetch = prefetch_from(load_fixture("hiv/medicationrequest-only.json"))
    del prefetch["medicationStatements"]
    with budget_client(httpx.MockTransport(slow(5.0))) as client:
        response, elapsed = timed_call(
            client, clock, hook_request("hiv-medicationrequest-only", prefetch, fhir_server=FHIR_BASE, token=TOKEN)
        )
    assert elapsed == pytest.approx(CUTOFF)
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
def test_failing_fhir_server_is_200_never_5xx(
    budget_client: Callable[..., TestClient], clock: VirtualClock, failure: httpx.Response
) -> None:
    with respx.mock(base_url=FHIR_BASE, assert_all_called=False) as mock:
        route = mock.route().mock(return_value=failure)
        with budget_client(httpx.AsyncHTTPTransport()) as client:
            response, elapsed = timed_call(client, clock, fetch_everything())
    assert_not_past_the_cutoff(elapsed)
    assert_only_the_incomplete_card(response)
    assert route.called


def test_fhir_server_down_is_200_with_the_card(budget_client: Callable[..., TestClient], clock: VirtualClock) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with budget_client(httpx.MockTransport(refuse)) as client:
        response, elapsed = timed_call(client, clock, fetch_everything())
    assert_not_past_the_cutoff(elapsed)  # retries with backoff, but never beyond the cutoff
    assert_only_the_incomplete_card(response)


def test_refused_token_is_still_412_not_the_card(budget_client: Callable[..., TestClient], clock: VirtualClock) -> None:
    server = FakeFhirServer(resources_of(load_fixture("hiv/fail-basic.json")), token="another-token")
    with budget_client(server.transport) as client:
        response, _ = timed_call(client, clock, fetch_everything())
    assert response.status_code == 412


def test_the_budget_is_configurable(budget_client: Callable[..., TestClient], clock: VirtualClock) -> None:
    """With a budget longer than the server's delay, the slow answer is waited for."""
    server = FakeFhirServer(resources_of(load_fixture("hiv/fail-basic.json")))
    with budget_client(answering_after(2.0, server), cds_time_budget=3.0) as client:
        response, elapsed = timed_call(client, clock, fetch_everything())
    assert response.status_code == 200 and "second-line" in response.json()["cards"][0]["summary"]
    assert elapsed == pytest.approx(2.0)
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
