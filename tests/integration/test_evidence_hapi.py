"""The step-therapy evidence round-trips through a real HAPI FHIR server: the card's DocumentReference and the
document Bundle are accepted, read back and still valid."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from fhirsvc.fhir.resources import validate
from tests.cds_helpers import hook_request
from tests.conftest import MakeClient, load_fixture
from tests.integration.hapi import FHIR_JSON, HTTP_TIMEOUT, auth_headers, fhir_get, post_transaction

pytestmark = pytest.mark.hapi
PATIENT = "t2d-a1c-above"
DRAFT = {
    "resourceType": "MedicationRequest",
    "id": "t2d-a1c-above-draft-glp1",
    "status": "draft",
    "intent": "order",
    "subject": {"reference": f"Patient/{PATIENT}"},
    "medicationCodeableConcept": {
        "coding": [
            {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1991302", "display": "semaglutide"}
        ]
    },
}


@pytest.fixture(scope="module")
def service(make_client: MakeClient, hapi_base_url: str) -> Iterator[TestClient]:
    post_transaction(hapi_base_url, load_fixture("t2d/a1c-above.json"))
    with make_client(None, fhir_servers=[hapi_base_url], cds_time_budget=60.0) as client:
        yield client


def _create(base: str, resource: dict[str, Any]) -> dict[str, Any]:
    headers = auth_headers(None) | {"Content-Type": FHIR_JSON, "Prefer": "return=representation"}
    response = httpx.post(
        f"{base}/{resource['resourceType']}", content=orjson.dumps(resource), headers=headers, timeout=HTTP_TIMEOUT
    )
    assert response.status_code == 201, response.text[:2000]
    created: dict[str, Any] = response.json()
    return created


def _evidence_reference(service: TestClient, base: str) -> dict[str, Any]:
    draft_orders = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": DRAFT}]}
    request = hook_request(PATIENT, None, hook="order-sign", fhir_server=base, draftOrders=draft_orders)
    response = service.post("/cds-services/second-line-order-sign", json=request)
    assert response.status_code == 200
    (card,) = [c for c in response.json()["cards"] if c["summary"].startswith("Step therapy")]
    resource: dict[str, Any] = card["suggestions"][0]["actions"][0]["resource"]
    return resource


def test_the_document_reference_is_stored_and_read_back_valid(service: TestClient, hapi_base_url: str) -> None:
    reference = _evidence_reference(service, hapi_base_url)
    # The order the DocumentReference relates to must exist on the server (HAPI checks references on create).
    put = httpx.put(
        f"{hapi_base_url}/MedicationRequest/{DRAFT['id']}",
        content=orjson.dumps(DRAFT),
        headers=auth_headers(None) | {"Content-Type": FHIR_JSON},
        timeout=HTTP_TIMEOUT,
    )
    assert put.status_code in (200, 201), put.text[:2000]
    created = _create(hapi_base_url, reference)
    read = fhir_get(f"{hapi_base_url}/DocumentReference/{created['id']}")
    assert read.status_code == 200
    stored = read.json()
    validate(stored)
    assert stored["subject"]["reference"] == f"Patient/{PATIENT}"
    assert stored["context"]["related"][0]["reference"] == f"MedicationRequest/{DRAFT['id']}"
    attachment = stored["content"][0]["attachment"]
    assert attachment["contentType"] == "application/fhir+json"
    document = orjson.loads(base64.b64decode(attachment["data"]))
    validate(document)
    assert document["entry"][0]["resource"]["subject"] == {"reference": f"Patient/{PATIENT}"}


def test_the_document_bundle_is_stored_and_read_back_valid(service: TestClient, hapi_base_url: str) -> None:
    reference = _evidence_reference(service, hapi_base_url)
    document = orjson.loads(base64.b64decode(reference["content"][0]["attachment"]["data"]))
    created = _create(hapi_base_url, document)
    read = fhir_get(f"{hapi_base_url}/Bundle/{created['id']}")
    assert read.status_code == 200
    stored = read.json()
    validate(stored)
    assert stored["type"] == "document" and stored["identifier"] == document["identifier"]
    sections = stored["entry"][0]["resource"]["section"]
    assert [s["title"] for s in sections] == [s["title"] for s in document["entry"][0]["resource"]["section"]]
