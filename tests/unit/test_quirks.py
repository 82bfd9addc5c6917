"""Sandbox quirks a real HAPI server won't show on demand (respx): Cerner, Epic, paging caps, profiles."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx

from fhirsvc.config import ServerProfile, Settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.fhir.quirks import NO_MEDICATION_STATEMENT, OBSERVATION_NEEDS_CATEGORY, adaptive_search

BASE = "https://ehr.example.test/fhir/r4"
pytestmark = pytest.mark.anyio


def bundle(*ids: str, next_url: str | None = None, rtype: str = "Observation") -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": rtype, "id": i}} for i in ids],
    }
    if next_url:
        body["link"] = [{"relation": "next", "url": next_url}]
    return body


async def make_pool(**settings: Any) -> FhirClientPool:
    return FhirClientPool(Settings(fhir_max_retries=0, **settings))


@pytest.fixture
async def pool() -> AsyncIterator[FhirClientPool]:
    pool = await make_pool()
    yield pool
    await pool.aclose()


@respx.mock
async def test_cerner_repeats_an_id_across_pages_and_it_is_kept_once(pool: FhirClientPool) -> None:
    respx.get(f"{BASE}/Observation", params={"patient": "1"}).respond(
        json=bundle("a", "b", next_url=f"{BASE}/Observation?page=2")
    )
    respx.get(f"{BASE}/Observation", params={"page": "2"}).respond(json=bundle("b", "c"))
    result = await adaptive_search(pool.client(BASE), "Observation?patient=1", None)
    assert [r["id"] for r in result.resources] == ["a", "b", "c"] and result.duplicates == 1


@respx.mock
async def test_no_medication_statement_falls_back_and_is_remembered(pool: FhirClientPool) -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-supported"}]}
    route = respx.get(f"{BASE}/MedicationStatement").respond(404, json=outcome)
    client = pool.client(BASE)
    first = await adaptive_search(client, "MedicationStatement?patient=1", None)
    second = await adaptive_search(client, "MedicationStatement?patient=1", None)
    assert first.resources == [] and second.resources == []
    assert NO_MEDICATION_STATEMENT in client.learned and route.call_count == 1


@respx.mock
async def test_profile_without_medication_statement_sends_nothing() -> None:
    pool = await make_pool(server_profiles={BASE: ServerProfile(medication_statement=False)})
    route = respx.get(f"{BASE}/MedicationStatement")
    result = await adaptive_search(pool.client(BASE), "MedicationStatement?patient=1", None)
    await pool.aclose()
    assert result.resources == [] and not route.called


@respx.mock
async def test_epic_observation_search_needs_a_category(pool: FhirClientPool) -> None:
    def epic(request: httpx.Request) -> httpx.Response:
        category = request.url.params.get("category")
        if category is None:
            return httpx.Response(
                400,
                json={
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "required", "diagnostics": "category or code is required"}],
                },
            )
        if category == "laboratory":
            return httpx.Response(200, json=bundle("lab-1"))
        if category == "exam":
            return httpx.Response(200, json=bundle("status-1"))
        if category == "survey":
            return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": []})
        return httpx.Response(200, json=bundle())

    respx.get(f"{BASE}/Observation").mock(side_effect=epic)
    client = pool.client(BASE)
    result = await adaptive_search(client, "Observation?patient=1&_count=200", None)
    assert sorted(r["id"] for r in result.resources) == ["lab-1", "status-1"]
    assert OBSERVATION_NEEDS_CATEGORY in client.learned


@respx.mock
async def test_profile_categories_and_page_size_shape_the_query() -> None:
    profile = ServerProfile(observation_categories=["laboratory"], page_size=50)
    pool = await make_pool(server_profiles={BASE + "/": profile})
    route = respx.get(f"{BASE}/Observation", params={"patient": "1", "category": "laboratory", "_count": "50"})
    route.respond(json=bundle("x"))
    result = await adaptive_search(pool.client(BASE), "Observation?patient=1&_count=200", None)
    await pool.aclose()
    assert route.call_count == 1 and [r["id"] for r in result.resources] == ["x"]


@respx.mock
async def test_paging_stops_at_the_cap_like_hapi_at_10000(pool: FhirClientPool) -> None:
    def page(request: httpx.Request) -> httpx.Response:
        number = int(request.url.params.get("page", "1"))
        return httpx.Response(200, json=bundle(f"o{number}", next_url=f"{BASE}/Observation?page={number + 1}"))

    respx.get(f"{BASE}/Observation").mock(side_effect=page)
    result = await adaptive_search(pool.client(BASE), "Observation?patient=1", None, max_pages=5)
    assert result.pages == 5 and result.truncated and len(result.resources) == 5


@respx.mock
async def test_other_errors_are_not_swallowed(pool: FhirClientPool) -> None:
    from fhirsvc.fhir.errors import FhirAuthError

    respx.get(f"{BASE}/Condition").respond(401)
    with pytest.raises(FhirAuthError):
        await adaptive_search(pool.client(BASE), "Condition?patient=1", None)
