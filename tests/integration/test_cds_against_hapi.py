"""CDS Hooks calls where fhirsvc fetches everything itself from a real HAPI FHIR JPA server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.cds_helpers import hook_request
from tests.conftest import MakeClient, load_fixture
from tests.integration.hapi import post_transaction

pytestmark = pytest.mark.hapi
AS_OF = date(2026, 6, 1)
PATIENT_VIEW = "/cds-services/second-line-patient-view"
FIXTURES = ["fail-basic", "medicationrequest-only", "suppressed", "already-switched", "text-only"]


@pytest.fixture(scope="module")
def service(make_client: MakeClient, hapi_base_url: str, hapi_token_server: tuple[str, str]) -> Iterator[TestClient]:
    # Real httpx (no transport): every fetch goes to HAPI over loopback, which must be listed to be allowed. A
    # generous time budget: these tests check what is read, not how fast a cold JVM answers. CDS client
    # authentication stays on: every call is signed.
    servers = [hapi_base_url, hapi_token_server[0]]
    with make_client(None, fhir_servers=servers, cds_time_budget=60.0) as client:
        yield client


@pytest.fixture(scope="module")
def open_server(hapi_base_url: str) -> str:
    for name in FIXTURES:
        post_transaction(hapi_base_url, load_fixture(f"hiv/{name}.json"))
    post_transaction(hapi_base_url, many_results_bundle("hiv-paging", results=26))
    return hapi_base_url


@pytest.fixture(scope="module")
def token_server(hapi_token_server: tuple[str, str]) -> tuple[str, str]:
    base, token = hapi_token_server
    post_transaction(base, load_fixture("hiv/fail-basic.json"), token=token)
    return base, token


def many_results_bundle(patient_id: str, results: int) -> dict[str, Any]:
    """A patient on DTG/3TC since 2024-01-01 with `results` suppressed viral loads, then two failing ones last."""
    start = date(2024, 1, 1)
    subject = {"reference": f"Patient/{patient_id}"}
    resources: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": patient_id, "gender": "female", "birthDate": "1980-01-01"},
        {
            "resourceType": "MedicationRequest",
            "id": f"{patient_id}-mr",
            "status": "active",
            "intent": "order",
            "subject": subject,
            "authoredOn": start.isoformat(),
            "medicationCodeableConcept": {
                "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "2122519"}]
            },
            # 90-day fills, renewable for three years: the regimen is still current at the evaluation date.
            "dispenseRequest": {
                "numberOfRepeatsAllowed": 11,
                "expectedSupplyDuration": {
                    "value": 90,
                    "unit": "days",
                    "system": "http://unitsofmeasure.org",
                    "code": "d",
                },
            },
        },
    ]
    for index in range(results):
        when = start + timedelta(days=30 + 30 * index)
        failing = index >= results - 2
        quantity = {"value": 700 + index} if failing else {"value": 20, "comparator": "<"}
        resources.append(
            {
                "resourceType": "Observation",
                "id": f"{patient_id}-vl-{index}",
                "status": "final",
                "subject": subject,
                "code": {"coding": [{"system": "http://loinc.org", "code": "20447-9"}]},
                "effectiveDateTime": when.isoformat(),
                "valueQuantity": {
                    **quantity,
                    "unit": "copies/mL",
                    "system": "http://unitsofmeasure.org",
                    "code": "{copies}/mL",
                },
            }
        )
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources
        ],
    }


def call(service: TestClient, patient: str, server: str, token: str | None = None, **extra: Any) -> Any:
    response = service.post(PATIENT_VIEW, json=hook_request(patient, None, fhir_server=server, token=token, **extra))
    return response


@pytest.mark.parametrize(
    ("patient", "expected"),
    [
        ("hiv-fail-basic", "second-line"),
        ("hiv-medicationrequest-only", "second-line"),
        ("hiv-text-only", "second-line"),
        ("hiv-suppressed", None),
        ("hiv-already-switched", None),
    ],
)
def test_no_prefetch_the_service_fetches_everything(
    service: TestClient, open_server: str, patient: str, expected: str | None
) -> None:
    response = call(service, patient, open_server)
    assert response.status_code == 200, response.text
    cards = response.json()["cards"]
    if expected is None:
        assert cards == []
    else:
        assert expected in cards[0]["summary"]


def test_more_results_than_one_page_are_all_read(service: TestClient, open_server: str) -> None:
    # HAPI pages 20 by default; the two failing results are the last of 28 observations.
    response = call(service, "hiv-paging", open_server)
    assert response.status_code == 200
    (card,) = response.json()["cards"]
    assert "second-line" in card["summary"] and "hiv-paging-vl-25" in card["detail"]


def test_bearer_token_is_passed_to_the_fhir_server(service: TestClient, token_server: tuple[str, str]) -> None:
    base, token = token_server
    response = call(service, "hiv-fail-basic", base, token=token)
    assert response.status_code == 200 and "second-line" in response.json()["cards"][0]["summary"]


def test_refused_token_means_412(service: TestClient, token_server: tuple[str, str]) -> None:
    base, _ = token_server
    response = call(service, "hiv-fail-basic", base, token="wrong-token")
    assert response.status_code == 412
    assert "wrong-token" not in response.text


def test_unknown_patient_on_the_server_gets_no_cards(service: TestClient, open_server: str) -> None:
    response = call(service, "nobody-here", open_server)
    assert response.status_code == 200 and response.json() == {"cards": []}
