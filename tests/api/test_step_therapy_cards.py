"""Order-time step-therapy card: a next-line draft order shows the first-line evidence on file."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from fhirsvc.fhir.resources import validate
from tests.cds_helpers import hook_request, prefetch_from
from tests.conftest import MakeClient, load_fixture

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


@pytest.fixture
def client(make_client: MakeClient) -> Iterator[TestClient]:
    with make_client() as test_client:
        yield test_client


def _draft_orders(patient: str, rxcui: str, display: str) -> dict[str, Any]:
    order = {
        "resourceType": "MedicationRequest",
        "id": "draft-glp1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": patient},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": rxcui, "display": display}]},
    }
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": order}]}


def _call(client: TestClient, fixture: str, hook: str, rxcui: str, display: str) -> list[dict[str, Any]]:
    patient = f"t2d-{fixture}"
    request = hook_request(
        patient,
        prefetch_from(load_fixture(f"t2d/{fixture}.json")),
        hook=hook,
        draftOrders=_draft_orders(f"Patient/{patient}", rxcui, display),
        **({"selections": ["MedicationRequest/draft-glp1"]} if hook == "order-select" else {}),
    )
    response = client.post(f"/cds-services/second-line-{hook}", json=request)
    assert response.status_code == 200
    cards: list[dict[str, Any]] = response.json()["cards"]
    return [c for c in cards if c["summary"].startswith("Step therapy")]


def test_order_select_of_a_glp1_ra_after_metformin_failure_shows_the_evidence(client: TestClient) -> None:
    (card,) = _call(client, "a1c-above", "order-select", "1991302", "semaglutide")
    assert card["indicator"] == "info" and card["source"]["topic"]["code"] == "step-therapy-evidence"
    assert card["summary"] == (
        "Step therapy for semaglutide: metformin 2025-06 to 2026-06, HbA1c 7.8 % on 2026-04-01 after 9 months"
    )
    (suggestion,) = card["suggestions"]
    (action,) = suggestion["actions"]
    reference = action["resource"]
    validate(reference)
    assert reference["subject"] == {"reference": "Patient/t2d-a1c-above"}
    assert reference["context"]["related"] == [{"reference": "MedicationRequest/draft-glp1"}]
    attachment = reference["content"][0]["attachment"]
    assert attachment["contentType"] == "application/fhir+json"
    document = orjson.loads(base64.b64decode(attachment["data"]))
    assert len(base64.b64decode(attachment["data"])) == attachment["size"]
    validate(document)
    assert document["type"] == "document" and document["entry"][0]["resource"]["resourceType"] == "Composition"


def test_order_sign_with_a_short_trial_says_what_an_insurer_asks_for(client: TestClient) -> None:
    (card,) = _call(client, "metformin-short-trial", "order-sign", "1545653", "empagliflozin")
    assert "under 90 days" in card["summary"]
    assert "An insurer will likely ask for" in card["detail"] and "HbA1c results" in card["detail"]


def test_a_draft_of_no_next_line_drug_brings_no_step_therapy_card(client: TestClient) -> None:
    assert _call(client, "a1c-above", "order-select", "4821", "glipizide") == []
