"""CDS Hooks endpoints in-process: discovery, prefetch semantics, error statuses, card rules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from fhirsvc.cds.services import PREFETCH
from fhirsvc.rules.registry import RULE_KINDS
from fhirsvc.terminology.knowledge import load_knowledge
from tests.cds_helpers import (
    FHIR_BASE,
    TOKEN,
    FakeFhirServer,
    hook_request,
    prefetch_from,
    resources_of,
    searchset,
)
from tests.conftest import MakeClient, load_fixture

PATIENT_VIEW = "/cds-services/second-line-patient-view"


@pytest.fixture
def client(make_client: MakeClient) -> Iterator[TestClient]:
    with make_client() as test_client:
        yield test_client


def fixture_request(name: str, **kwargs: Any) -> dict[str, Any]:
    bundle = load_fixture(f"hiv/{name}.json")
    return hook_request(f"hiv-{name}", prefetch_from(bundle), **kwargs)


def assert_no_empty_fields(value: Any, path: str = "$") -> None:
    """CDS Hooks §Use of JSON: no null, "", [] or {} anywhere (the caller checks `cards` separately)."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert item not in (None, "", [], {}), f"{path}.{key} is empty"
            assert_no_empty_fields(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            assert item not in (None, "", [], {}), f"{path}[{index}] is empty"
            assert_no_empty_fields(item, f"{path}[{index}]")


# Discovery ---------------------------------------------------------------------------------------------------


def test_discovery_lists_one_service_per_hook_with_patient_id_templates(client: TestClient) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    services = response.json()["services"]
    assert sorted(s["hook"] for s in services) == ["order-select", "order-sign", "patient-view"]
    assert len({s["id"] for s in services}) == 3
    for service in services:
        assert service["description"] and service["title"]
        for template in service["prefetch"].values():
            tokens = [t.split("}}")[0] for t in template.split("{{")[1:]]
            assert tokens == ["context.patientId"], template
    assert_no_empty_fields(response.json())


# Cards ----------------------------------------------------------------------------------------------------------


def test_failing_patient_gets_one_warning_card_that_obeys_the_response_rules(client: TestClient) -> None:
    response = client.post(PATIENT_VIEW, json=fixture_request("fail-basic"))
    assert response.status_code == 200
    body = response.json()
    assert_no_empty_fields(body)
    (card,) = body["cards"]
    assert card["indicator"] == "warning"
    assert len(card["summary"]) < 140 and "second-line" in card["summary"]
    assert card["source"]["label"] and card["source"]["url"].startswith("https://")
    assert card["uuid"] and all(s["uuid"] for s in card["suggestions"])
    assert card["selectionBehavior"] == "at-most-one"
    assert sum(bool(s.get("isRecommended")) for s in card["suggestions"]) <= 1
    assert card["overrideReasons"] and all(r["display"] and r["system"] for r in card["overrideReasons"])
    assert card["links"] == [{"label": card["links"][0]["label"], "url": card["source"]["url"], "type": "absolute"}]
    # Evidence shows values, dates, the regimen and its start.
    for text in ("450", "900", "2026-02-01", "2026-03-15", "efavirenz", "since 2025-06-01", "Observation/"):
        assert text in card["detail"], text
    (action,) = card["suggestions"][0]["actions"]
    resource = action["resource"]
    assert action["type"] == "create"
    assert resource["resourceType"] == "ServiceRequest" and resource["intent"] == "proposal"
    assert resource["subject"] == {"reference": "Patient/hiv-fail-basic"}
    assert {r["reference"] for r in resource["reasonReference"]} == {
        "Observation/hiv-fail-basic-vl-1",
        "Observation/hiv-fail-basic-vl-2",
    }


def test_card_uuid_is_stable_for_the_same_finding(client: TestClient) -> None:
    first = client.post(PATIENT_VIEW, json=fixture_request("fail-basic")).json()["cards"][0]["uuid"]
    second = client.post(PATIENT_VIEW, json=fixture_request("fail-basic")).json()["cards"][0]["uuid"]
    assert first == second


def test_suppressed_patient_gets_an_empty_card_list(client: TestClient) -> None:
    response = client.post(PATIENT_VIEW, json=fixture_request("suppressed"))
    assert response.status_code == 200
    assert response.content == b'{"cards":[]}'


def test_data_needed_is_an_info_card(client: TestClient) -> None:
    (card,) = client.post(PATIENT_VIEW, json=fixture_request("no-viral-load")).json()["cards"]
    assert card["indicator"] == "info" and "No HIV-1 RNA" in card["summary"]


def test_who_threshold_is_a_configuration_change(make_client: MakeClient) -> None:
    who = load_knowledge(overrides={"hiv.failure_threshold": 1000}, rule_kinds=RULE_KINDS)
    with make_client(knowledge=who) as who_client:
        cards = who_client.post(PATIENT_VIEW, json=fixture_request("fail-basic")).json()["cards"]
    # 450 and 900 copies/mL are failure under DHHS (200) but not under WHO (1000).
    assert all("second-line" not in c["summary"] for c in cards)
    assert any("Low-level viremia" in c["summary"] for c in cards)


# Prefetch semantics ----------------------------------------------------------------------------------------------


def test_null_and_empty_prefetch_mean_no_data_and_are_not_refetched(client: TestClient) -> None:
    prefetch: dict[str, Any] = {key: None for key in PREFETCH}
    prefetch["medicationRequests"] = searchset([])
    request = hook_request("p1", prefetch, fhir_server=FHIR_BASE, token=TOKEN)
    response = client.post(PATIENT_VIEW, json=request)  # NO_NETWORK fails the test on any fetch
    assert response.status_code == 200 and response.json() == {"cards": []}


def test_absent_keys_are_fetched_with_the_bearer_token(make_client: MakeClient) -> None:
    bundle = load_fixture("hiv/fail-basic.json")
    server = FakeFhirServer(resources_of(bundle))
    with make_client(server.transport) as test_client:
        response = test_client.post(
            PATIENT_VIEW, json=hook_request("hiv-fail-basic", None, fhir_server=FHIR_BASE, token=TOKEN)
        )
    assert response.status_code == 200
    assert "second-line" in response.json()["cards"][0]["summary"]
    assert len(server.requests) == len(PREFETCH)
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in server.requests)
    assert all(
        "patient=hiv-fail-basic" in str(r.url) or r.url.path.endswith("/Patient/hiv-fail-basic")
        for r in server.requests
    )


def test_partial_prefetch_fetches_only_the_missing_keys(make_client: MakeClient) -> None:
    bundle = load_fixture("hiv/fail-basic.json")
    server = FakeFhirServer(resources_of(bundle))
    prefetch = prefetch_from(bundle)
    del prefetch["observations"]
    with make_client(server.transport) as test_client:
        response = test_client.post(
            PATIENT_VIEW, json=hook_request("hiv-fail-basic", prefetch, fhir_server=FHIR_BASE, token=TOKEN)
        )
    assert response.status_code == 200 and response.json()["cards"]
    assert [r.url.path.rsplit("/", 1)[-1] for r in server.requests] == ["Observation"]


def test_paginated_prefetch_is_followed_on_the_same_server(make_client: MakeClient) -> None:
    bundle = load_fixture("hiv/fail-basic.json")
    resources = resources_of(bundle)
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    server = FakeFhirServer(resources, page_size=1)
    prefetch = prefetch_from(bundle)
    # The client sent only the first page of observations; the rest is behind the `next` link.
    prefetch["observations"] = searchset(observations[:1], f"{FHIR_BASE}/Observation?patient=hiv-fail-basic&_offset=1")
    with make_client(server.transport) as test_client:
        response = test_client.post(
            PATIENT_VIEW, json=hook_request("hiv-fail-basic", prefetch, fhir_server=FHIR_BASE, token=TOKEN)
        )
    assert response.status_code == 200 and "second-line" in response.json()["cards"][0]["summary"]
    assert len(server.requests) == len(observations) - 1


def test_next_link_to_another_server_is_refused_with_412(client: TestClient) -> None:
    bundle = load_fixture("hiv/fail-basic.json")
    prefetch = prefetch_from(bundle)
    prefetch["observations"]["link"] = [{"relation": "next", "url": "https://evil.example.test/steal"}]
    response = client.post(
        PATIENT_VIEW, json=hook_request("hiv-fail-basic", prefetch, fhir_server=FHIR_BASE, token=TOKEN)
    )
    assert response.status_code == 412  # NO_NETWORK proves nothing was sent anywhere


def test_absent_required_data_without_fhir_server_is_412(client: TestClient) -> None:
    bundle = load_fixture("hiv/fail-basic.json")
    prefetch = prefetch_from(bundle)
    del prefetch["observations"]
    response = client.post(PATIENT_VIEW, json=hook_request("hiv-fail-basic", prefetch))
    assert response.status_code == 412
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome" and "observations" in outcome["issue"][0]["diagnostics"]


def test_absent_optional_data_without_fhir_server_still_answers(client: TestClient) -> None:
    prefetch = prefetch_from(load_fixture("hiv/fail-basic.json"))
    del prefetch["medicationStatements"], prefetch["patient"]
    response = client.post(PATIENT_VIEW, json=hook_request("hiv-fail-basic", prefetch))
    assert response.status_code == 200  # fail-basic has its medications as MedicationStatements: no regimen now
    assert response.json() == {"cards": []}


def test_operation_outcome_prefetch_is_a_failed_fetch(make_client: MakeClient) -> None:
    bundle = load_fixture("hiv/fail-basic.json")
    prefetch = prefetch_from(bundle)
    prefetch["observations"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout", "diagnostics": "upstream timeout"}],
    }
    with make_client() as no_server:
        assert no_server.post(PATIENT_VIEW, json=hook_request("hiv-fail-basic", prefetch)).status_code == 412
    server = FakeFhirServer(resources_of(bundle))
    with make_client(server.transport) as with_server:
        response = with_server.post(
            PATIENT_VIEW, json=hook_request("hiv-fail-basic", prefetch, fhir_server=FHIR_BASE, token=TOKEN)
        )
    assert response.status_code == 200 and response.json()["cards"]
    assert [r.url.path.rsplit("/", 1)[-1] for r in server.requests] == ["Observation"]


def test_fhir_server_refusing_the_token_gives_412_not_500(make_client: MakeClient) -> None:
    server = FakeFhirServer(resources_of(load_fixture("hiv/fail-basic.json")), token="another-token")
    with make_client(server.transport) as test_client:
        response = test_client.post(
            PATIENT_VIEW, json=hook_request("hiv-fail-basic", None, fhir_server=FHIR_BASE, token=TOKEN)
        )
    assert response.status_code == 412
    assert TOKEN not in response.text


def test_resources_about_another_patient_are_dropped(client: TestClient) -> None:
    failing = prefetch_from(load_fixture("hiv/fail-basic.json"))
    response = client.post(PATIENT_VIEW, json=hook_request("someone-else", failing))
    assert response.status_code == 200 and response.json() == {"cards": []}


# Errors ------------------------------------------------------------------------------------------------------------


def test_unknown_service_is_404(client: TestClient) -> None:
    response = client.post("/cds-services/nope", json=fixture_request("fail-basic"))
    assert response.status_code == 404 and response.json()["resourceType"] == "OperationOutcome"


def test_hook_that_does_not_match_the_service_is_400(client: TestClient) -> None:
    response = client.post(PATIENT_VIEW, json=fixture_request("fail-basic", hook="order-sign"))
    assert response.status_code == 400
    assert "patient-view" in response.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (orjson.dumps({"hook": "patient-view", "context": {"patientId": "x"}}), "hookInstance"),
        (orjson.dumps({"hook": "patient-view", "hookInstance": "1", "context": {}}), "patientId"),
        (orjson.dumps(hook_request("x", None, token=TOKEN)), "fhirServer is required"),
        (orjson.dumps({**hook_request("x", None), "prefetch": {"observations": [1, 2]}}), "prefetch.observations"),
    ],
)
def test_malformed_requests_are_400_with_a_clear_message(client: TestClient, body: bytes, expected: str) -> None:
    response = client.post(PATIENT_VIEW, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert expected in response.json()["issue"][0]["diagnostics"]


def test_malformed_resources_are_skipped_not_fatal(client: TestClient) -> None:
    request = fixture_request("fail-basic")
    request["prefetch"]["observations"]["entry"] += [
        {
            "resource": {
                "resourceType": "Observation",
                "id": "bad-1",
                "status": 7,
                "subject": {"reference": "Patient/hiv-fail-basic"},
            }
        },
        {
            "resource": {
                "resourceType": "Observation",
                "id": "bad-2",
                "status": "final",
                "subject": {"reference": "Patient/hiv-fail-basic"},
                "effectiveDateTime": "not a date",
            }
        },
        {"resource": "a string"},
    ]
    response = client.post(PATIENT_VIEW, json=request)
    assert response.status_code == 200 and "second-line" in response.json()["cards"][0]["summary"]


# order-select / order-sign ----------------------------------------------------------------------------------------


def _draft(rxcui: str, display: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "MedicationRequest",
                    "id": "draft-1",
                    "status": "draft",
                    "intent": "order",
                    "subject": {"reference": "Patient/hiv-fail-basic"},
                    "medicationCodeableConcept": {
                        "coding": [
                            {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": rxcui, "display": display}
                        ]
                    },
                }
            }
        ],
    }


def test_order_sign_with_a_new_class_counts_as_planned_second_line(client: TestClient) -> None:
    # A whole new regimen (two new active drugs): dolutegravir alone would add one drug to a failing regimen,
    # which the order-time safety checks warn about (tests/api/test_order_safety.py).
    draft = _draft("1999667", "bictegravir 50 MG / emtricitabine 200 MG / tenofovir alafenamide 25 MG")
    request = fixture_request("fail-basic", hook="order-sign", draftOrders=draft)
    response = client.post("/cds-services/second-line-order-sign", json=request)
    assert response.status_code == 200 and response.json() == {"cards": []}


def test_order_select_renewing_the_failing_regimen_still_warns(client: TestClient) -> None:
    draft = _draft("476556", "emtricitabine 200 MG / tenofovir disoproxil fumarate 300 MG")
    request = fixture_request(
        "fail-basic", hook="order-select", draftOrders=draft, selections=["MedicationRequest/draft-1"]
    )
    response = client.post("/cds-services/second-line-order-select", json=request)
    assert response.status_code == 200 and "second-line" in response.json()["cards"][0]["summary"]


def test_cors_preflight_allows_the_configured_browser_clients(make_client: MakeClient) -> None:
    with make_client(cors_origins=["https://sandbox.cds-hooks.org"]) as client:  # closed unless configured
        response = client.options(
            PATIENT_VIEW,
            headers={
                "Origin": "https://sandbox.cds-hooks.org",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://sandbox.cds-hooks.org"
