"""Feedback: spec and bare shapes, duplicates, override suppression for the same evidence, metrics per rule."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.cds_helpers import hook_request, prefetch_from
from tests.conftest import MakeClient, load_fixture

PATIENT_VIEW = "/cds-services/second-line-patient-view"


@pytest.fixture
def client(make_client: MakeClient) -> Iterator[TestClient]:
    with make_client() as test_client:
        yield test_client


def failing_card(client: TestClient) -> dict[str, Any]:
    request = hook_request("hiv-fail-basic", prefetch_from(load_fixture("hiv/fail-basic.json")))
    cards: list[dict[str, Any]] = client.post(PATIENT_VIEW, json=request).json()["cards"]
    assert cards, "the failing patient should get a card"
    return cards[0]


def stamp(days_ago: int = 0) -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def override(card: dict[str, Any], days_ago: int = 0, reason: bool = True) -> dict[str, Any]:
    item: dict[str, Any] = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": stamp(days_ago)}
    if reason:
        item["overrideReason"] = {"reason": card["overrideReasons"][0], "userComment": "discussed with patient"}
    return item


def test_overridden_card_is_not_shown_again_for_the_same_evidence(client: TestClient) -> None:
    card = failing_card(client)
    response = client.post(f"{PATIENT_VIEW}/feedback", json={"feedback": [override(card)]})
    assert response.status_code == 200
    request = hook_request("hiv-fail-basic", prefetch_from(load_fixture("hiv/fail-basic.json")))
    assert client.post(PATIENT_VIEW, json=request).json() == {"cards": []}


def test_override_without_reason_or_older_than_the_period_does_not_suppress(client: TestClient) -> None:
    card = failing_card(client)
    client.post(f"{PATIENT_VIEW}/feedback", json={"feedback": [override(card, reason=False)]})
    client.post(f"{PATIENT_VIEW}/feedback", json={"feedback": [override(card, days_ago=31)]})
    assert failing_card(client)["uuid"] == card["uuid"]


def test_bare_feedback_object_is_accepted_and_duplicates_count_once(client: TestClient) -> None:
    card = failing_card(client)
    accepted = {
        "card": card["uuid"],
        "outcome": "accepted",
        "outcomeTimestamp": stamp(),
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
    }
    assert client.post(f"{PATIENT_VIEW}/feedback", json=accepted).status_code == 200
    assert client.post(f"{PATIENT_VIEW}/feedback", json={"feedback": [accepted, accepted]}).status_code == 200
    client.post(f"{PATIENT_VIEW}/feedback", json={"feedback": [override(card)]})
    metrics = client.get("/metrics").text
    assert 'fhirsvc_card_feedback_total{outcome="accepted",rule="hiv-virologic-failure"} 1.0' in metrics
    assert 'fhirsvc_card_feedback_total{outcome="overridden",rule="hiv-virologic-failure"} 1.0' in metrics


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"feedback": []}, "non-empty"),
        ({"feedback": [{"card": "x", "outcome": "maybe", "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}, "outcome"),
        ({"card": "x", "outcome": "accepted"}, "outcomeTimestamp"),
    ],
)
def test_malformed_feedback_is_400(client: TestClient, body: dict[str, Any], message: str) -> None:
    response = client.post(f"{PATIENT_VIEW}/feedback", json=body)
    assert response.status_code == 400 and message in response.json()["issue"][0]["diagnostics"]


def test_feedback_for_unknown_service_is_404(client: TestClient) -> None:
    assert client.post("/cds-services/nope/feedback", json={"feedback": []}).status_code == 404


def test_probes(client: TestClient) -> None:
    assert client.get("/livez").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
