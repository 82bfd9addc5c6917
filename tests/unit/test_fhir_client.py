"""FHIR client fault handling with respx: retries, Retry-After, error classes, paging safety."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import respx

from fhirsvc.config import Settings
from fhirsvc.fhir import client as client_module
from fhirsvc.fhir.client import FhirClientPool, retry_after_seconds
from fhirsvc.fhir.errors import (
    FhirAuthError,
    FhirBadRequest,
    FhirInvalidResponse,
    FhirNotFound,
    FhirServerError,
    FhirTransportError,
    FhirUnsafeLink,
)
from fhirsvc.fhir.urls import is_under

BASE = "https://fhir.example.test/r4"
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "forbidden", "diagnostics": "token expired"}],
}

pytestmark = pytest.mark.anyio


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waited: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(client_module.asyncio, "sleep", fake_sleep)
    return waited


@pytest.fixture
async def pool() -> AsyncIterator[FhirClientPool]:
    pool = FhirClientPool(Settings(fhir_max_retries=2, fhir_backoff_seconds=0.1, fhir_max_retry_after=5))
    yield pool
    await pool.aclose()


def bundle(n: int, next_url: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "Observation", "id": f"o{n}-{i}"}} for i in range(2)],
    }
    if next_url:
        body["link"] = [{"relation": "next", "url": next_url}]
    return body


@respx.mock
async def test_retries_503_then_succeeds_with_backoff(pool: FhirClientPool, sleeps: list[float]) -> None:
    route = respx.get(f"{BASE}/Patient/1").mock(
        side_effect=[httpx.Response(503), httpx.Response(200, json={"resourceType": "Patient", "id": "1"})]
    )
    body = await pool.client(BASE).get_json("Patient/1", token="t")
    assert body["id"] == "1" and route.call_count == 2
    assert len(sleeps) == 1 and 0.1 <= sleeps[0] <= 0.15


@respx.mock
async def test_honours_retry_after_seconds_and_dates(pool: FhirClientPool, sleeps: list[float]) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
    respx.get(f"{BASE}/Patient/1").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "2"}),
            httpx.Response(429, headers={"Retry-After": later}),
            httpx.Response(200, json={"resourceType": "Patient", "id": "1"}),
        ]
    )
    await pool.client(BASE).get_json("Patient/1")
    assert sleeps[0] == 2.0 and 0.0 <= sleeps[1] <= 3.0  # an HTTP date has whole-second resolution


@respx.mock
async def test_retry_after_beyond_budget_fails_at_once(pool: FhirClientPool, sleeps: list[float]) -> None:
    route = respx.get(f"{BASE}/Patient/1").mock(return_value=httpx.Response(503, headers={"Retry-After": "120"}))
    with pytest.raises(FhirServerError) as caught:
        await pool.client(BASE).get_json("Patient/1")
    assert caught.value.status == 503 and route.call_count == 1 and sleeps == []


@respx.mock
async def test_persistent_5xx_raises_server_error_after_retries(pool: FhirClientPool, sleeps: list[float]) -> None:
    route = respx.get(f"{BASE}/Patient/1").mock(return_value=httpx.Response(502))
    with pytest.raises(FhirServerError):
        await pool.client(BASE).get_json("Patient/1")
    assert route.call_count == 3 and len(sleeps) == 2 and sleeps[1] > sleeps[0] * 1.3


@respx.mock
async def test_transport_errors_are_retried_then_raised(pool: FhirClientPool, sleeps: list[float]) -> None:
    route = respx.get(f"{BASE}/Patient/1").mock(side_effect=httpx.ConnectTimeout("slow"))
    with pytest.raises(FhirTransportError):
        await pool.client(BASE).get_json("Patient/1")
    assert route.call_count == 3


@respx.mock
@pytest.mark.parametrize(
    ("status", "error"), [(401, FhirAuthError), (403, FhirAuthError), (404, FhirNotFound), (400, FhirBadRequest)]
)
async def test_client_errors_are_not_retried_and_carry_the_outcome(
    pool: FhirClientPool, sleeps: list[float], status: int, error: type[Exception]
) -> None:
    route = respx.get(f"{BASE}/Observation").mock(return_value=httpx.Response(status, json=OUTCOME))
    with pytest.raises(error) as caught:
        await pool.client(BASE).get_json("Observation")
    assert route.call_count == 1 and sleeps == []
    assert caught.value.operation_outcome == OUTCOME  # type: ignore[attr-defined]
    assert "token expired" in str(caught.value)


@respx.mock
async def test_bearer_token_and_accept_header_are_sent(pool: FhirClientPool) -> None:
    route = respx.get(
        f"{BASE}/Patient/1", headers={"Authorization": "Bearer secret", "Accept": "application/fhir+json"}
    )
    route.mock(return_value=httpx.Response(200, json={"resourceType": "Patient", "id": "1"}))
    await pool.client(BASE).get_json("Patient/1", token="secret")
    assert route.called


@respx.mock
async def test_every_search_page_asks_past_server_result_caches(pool: FhirClientPool) -> None:
    """HAPI answers a repeated search from its 60 s result cache unless told not to: the poller and a CDS call must
    see what was written a moment ago, on the first page and on every page after it."""
    route = respx.get(f"{BASE}/Observation").mock(
        side_effect=[
            httpx.Response(200, json=bundle(1, f"{BASE}/Observation?page=2")),
            httpx.Response(200, json=bundle(2)),
        ]
    )
    await pool.client(BASE).search("Observation?patient=1")
    assert route.call_count == 2
    assert [call.request.headers.get("Cache-Control") for call in route.calls] == ["no-cache", "no-cache"]


@respx.mock
async def test_non_json_body_is_an_invalid_response(pool: FhirClientPool) -> None:
    respx.get(f"{BASE}/Patient/1").mock(return_value=httpx.Response(200, text="<html>login</html>"))
    with pytest.raises(FhirInvalidResponse):
        await pool.client(BASE).get_json("Patient/1")


@respx.mock
async def test_search_follows_next_links_and_caps_pages(pool: FhirClientPool) -> None:
    respx.get(f"{BASE}/Observation", params={"patient": "1"}).mock(
        return_value=httpx.Response(200, json=bundle(1, f"{BASE}/Observation?page=2"))
    )
    respx.get(f"{BASE}/Observation", params={"page": "2"}).mock(
        return_value=httpx.Response(200, json=bundle(2, f"{BASE}/Observation?page=3"))
    )
    respx.get(f"{BASE}/Observation", params={"page": "3"}).mock(return_value=httpx.Response(200, json=bundle(3)))
    full = await pool.client(BASE).search("Observation?patient=1")
    assert full.pages == 3 and len(full.resources) == 6 and not full.truncated
    capped = await pool.client(BASE).search("Observation?patient=1", max_pages=2)
    assert capped.pages == 2 and capped.truncated


@respx.mock
async def test_next_link_off_the_server_is_never_followed(pool: FhirClientPool) -> None:
    respx.get(f"{BASE}/Observation").mock(
        return_value=httpx.Response(200, json=bundle(1, "https://fhir.example.test.evil.example/r4/Observation?p=2"))
    )
    with pytest.raises(FhirUnsafeLink):
        await pool.client(BASE).search("Observation")


@pytest.mark.parametrize(
    "hostile",
    [
        f"{BASE}/../admin/Observation?p=2",  # httpx resolves `..` before sending: /admin/Observation
        f"{BASE}/%2e%2e/admin/Observation?p=2",  # servers that decode before routing do the same
        f"{BASE}/..;/admin/Observation?p=2",  # servlet containers read `..;` as `..`
        f"{BASE}/Observation%2F..%2F..%2Fadmin?p=2",
    ],
)
async def test_a_next_link_climbing_out_of_the_base_gets_no_request_and_no_token(
    pool: FhirClientPool, hostile: str
) -> None:
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{BASE}/Observation").mock(return_value=httpx.Response(200, json=bundle(1, hostile)))
        elsewhere = mock.get(url__regex=r"/admin")
        with pytest.raises(FhirUnsafeLink):
            await pool.client(BASE).search("Observation", token="secret")
    assert not elsewhere.called


async def test_a_next_link_with_dot_segments_inside_the_base_is_followed_as_resolved(pool: FhirClientPool) -> None:
    link = "https://FHIR.example.test:443/r4/x/../Observation?p=2"
    with respx.mock() as mock:
        route = mock.get(f"{BASE}/Observation").mock(
            side_effect=lambda request: httpx.Response(200, json=bundle(2) if request.url.query else bundle(1, link))
        )
        result = await pool.client(BASE).search("Observation")
    assert [str(call.request.url) for call in route.calls] == [f"{BASE}/Observation", f"{BASE}/Observation?p=2"]
    assert result.pages == 2


async def test_one_pooled_client_per_server(pool: FhirClientPool) -> None:
    assert pool.client(BASE) is pool.client(BASE + "/")
    assert pool.client(BASE) is not pool.client("https://other.example.test/fhir")


@pytest.mark.parametrize(
    ("url", "under"),
    [
        (f"{BASE}/Observation?_getpages=x", True),
        (f"{BASE}?_getpages=x", True),
        ("https://fhir.example.test/r4evil/Observation", False),
        ("http://fhir.example.test/r4/Observation", False),
        ("https://fhir.example.test:8443/r4/Observation", False),
        (f"{BASE}/../admin", False),
        (f"{BASE}/Observation/../../admin", False),
        (f"{BASE}/%2E%2E/admin", False),
        (f"{BASE}/..;/admin", False),
        (f"{BASE}/a%2F..%2F..%2Fadmin", False),
        (f"{BASE}/a\\..\\..\\admin", False),
        ("https://user@fhir.example.test/r4/Observation", False),
        ("https://FHIR.example.test:443/r4/./Observation", True),
        (f"{BASE}/x/../Observation", True),
    ],
)
def test_is_under(url: str, under: bool) -> None:
    assert is_under(url, BASE) is under


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
