"""Overrides are scoped: to the clinician, the CDS client, the FHIR server and the patient; stable card ids."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.cds_helpers import CLIENT, FHIR_BASE, SignedCalls, Signer, hook_request, prefetch_from
from tests.conftest import MakeClient, load_fixture

PATIENT_VIEW = "/cds-services/second-line-patient-view"
FEEDBACK = f"{PATIENT_VIEW}/feedback"
OTHER_CLIENT = Signer(iss="https://other-ehr.example.test", kid="other-key-1")
OTHER_BASE = "https://other-fhir.example.test/r4"


@pytest.fixture
def client(make_client: MakeClient) -> Iterator[TestClient]:
    trusted = [CLIENT.client_config(), OTHER_CLIENT.client_config()]
    with make_client(cds_clients=trusted, fhir_servers=[FHIR_BASE, OTHER_BASE]) as test_client:
        yield test_client


def request(user: str = "Practitioner/a", **kwargs: Any) -> dict[str, Any]:
    bundle = load_fixture("hiv/fail-basic.json")
    body = hook_request("hiv-fail-basic", prefetch_from(bundle), **kwargs)
    body["context"]["userId"] = user
    return body


def cards(client: TestClient, signer: Signer = CLIENT, path: str = PATIENT_VIEW, **kwargs: Any) -> list[dict[str, Any]]:
    client.auth = SignedCalls(signer)
    response = client.post(path, json=request(**kwargs))
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["cards"]
    return found


def override(client: TestClient, card: dict[str, Any], signer: Signer = CLIENT) -> None:
    client.auth = SignedCalls(signer)
    item = {
        "card": card["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "overrideReason": {"reason": card["overrideReasons"][0], "userComment": "discussed with patient"},
    }
    assert client.post(FEEDBACK, json={"feedback": [item]}).status_code == 200


def test_an_override_hides_the_card_for_that_clinician_only(client: TestClient) -> None:
    (card,) = cards(client, user="Practitioner/a")
    cards(client, user="Practitioner/b")  # the same card shown to a colleague afterwards
    override(client, card)
    assert cards(client, user="Practitioner/a") == []
    assert len(cards(client, user="Practitioner/b")) == 1


def test_an_override_lasts_only_until_the_evidence_changes(client: TestClient) -> None:
    (card,) = cards(client)
    override(client, card)
    assert cards(client) == []
    bundle = load_fixture("hiv/fail-basic.json")
    body = hook_request("hiv-fail-basic", prefetch_from(bundle))
    body["context"]["userId"] = "Practitioner/a"
    (latest,) = [e["resource"] for e in body["prefetch"]["observations"]["entry"]][-1:]
    newer = {**latest, "id": "vl-newer", "effectiveDateTime": "2026-05-20", "valueQuantity": latest["valueQuantity"]}
    body["prefetch"]["observations"]["entry"].append({"resource": newer})
    client.auth = SignedCalls(CLIENT)
    (again,) = client.post(PATIENT_VIEW, json=body).json()["cards"]
    assert again["uuid"] != card["uuid"] and "second-line" in again["summary"]


def test_the_operator_may_widen_an_override_to_every_clinician_of_the_client(make_client: MakeClient) -> None:
    trusted = [CLIENT.client_config(), OTHER_CLIENT.client_config()]
    with make_client(cds_clients=trusted, feedback_suppress_scope="client") as client:
        (card,) = cards(client, user="Practitioner/a")
        override(client, card)
        assert cards(client, user="Practitioner/b") == []
        assert len(cards(client, OTHER_CLIENT, user="Practitioner/a")) == 1  # never beyond the client


def test_an_override_never_crosses_clients(client: TestClient) -> None:
    (card,) = cards(client, user="Practitioner/a")
    (theirs,) = cards(client, OTHER_CLIENT, user="Practitioner/a")
    assert theirs["uuid"] != card["uuid"]  # the same finding, another audience: its own uuid
    override(client, card)
    assert cards(client, user="Practitioner/a") == []
    assert len(cards(client, OTHER_CLIENT, user="Practitioner/a")) == 1


def test_feedback_on_a_card_issued_to_another_client_is_ignored(client: TestClient) -> None:
    (card,) = cards(client, user="Practitioner/a")
    override(client, card, signer=OTHER_CLIENT)  # answered 200: refusing would confirm the uuid was issued
    assert len(cards(client, user="Practitioner/a")) == 1
    client.auth = None
    assert "fhirsvc_card_feedback_total{" not in client.get("/metrics").text


def test_an_override_on_one_fhir_server_does_not_hide_the_same_patient_id_on_another(client: TestClient) -> None:
    (card,) = cards(client, fhir_server=FHIR_BASE)
    cards(client, fhir_server=OTHER_BASE)
    override(client, card)
    assert cards(client, fhir_server=FHIR_BASE) == []
    assert len(cards(client, fhir_server=OTHER_BASE)) == 1
    assert len(cards(client)) == 1  # prefetch only: the client's own namespace, another patient again


def test_without_client_auth_every_caller_is_one_client(make_client: MakeClient) -> None:
    with make_client(signer=None, cds_auth="off") as client:
        response = client.post(PATIENT_VIEW, json=request(user="Practitioner/a"))
        (card,) = response.json()["cards"]
        override(client, card, signer=CLIENT)  # the JWT is not even read
        client.auth = None
        assert client.post(PATIENT_VIEW, json=request(user="Practitioner/a")).json() == {"cards": []}
        assert len(client.post(PATIENT_VIEW, json=request(user="Practitioner/b")).json()["cards"]) == 1


# Stable finding ids whatever the hook and the draft-order ids --------------------------------------------------------


def _renewal(draft_id: str) -> dict[str, Any]:
    """A draft renewing the patient's current (failing) tenofovir/emtricitabine."""
    coding = {
        "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
        "code": "476556",
        "display": "emtricitabine 200 MG / tenofovir disoproxil fumarate 300 MG",
    }
    order = {
        "resourceType": "MedicationRequest",
        "id": draft_id,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/hiv-fail-basic"},
        "medicationCodeableConcept": {"coding": [coding]},
    }
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": order}]}


def failure_cards(shown: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [card for card in shown if not card["summary"].startswith("This order")]


def test_the_same_finding_has_the_same_uuid_in_every_hook_whatever_the_draft_ids(client: TestClient) -> None:
    (viewed,) = cards(client)
    # At order time the renewal of the failing regimen also gets its own order-time warning ("This order ...").
    (selected,) = failure_cards(
        cards(
            client,
            path="/cds-services/second-line-order-select",
            hook="order-select",
            draftOrders=_renewal("request-123"),
            selections=["MedicationRequest/request-123"],
        )
    )
    (signed,) = failure_cards(
        cards(client, path="/cds-services/second-line-order-sign", hook="order-sign", draftOrders=_renewal("draft-B"))
    )
    assert viewed["uuid"] == selected["uuid"] == signed["uuid"]
    assert [s["uuid"] for s in viewed["suggestions"]] == [s["uuid"] for s in signed["suggestions"]]
    for card in (selected, signed):
        assert "this order" in card["detail"]
        assert "request-123" not in card["detail"] and "draft-B" not in card["detail"]
