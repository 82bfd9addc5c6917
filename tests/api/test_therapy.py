"""GET /patients/{id}/therapy: the stored current state per program and its history; protected like the services."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest
from fastapi.testclient import TestClient

from fhirsvc.pipeline import evaluate_record
from fhirsvc.poll.worker import fingerprint
from fhirsvc.record.model import RecordBuilder
from fhirsvc.render.report import patient_report
from fhirsvc.store.repository import save_state
from fhirsvc.terminology.knowledge import Knowledge
from tests.cds_helpers import CLIENT, SignedCalls
from tests.conftest import MakeClient, load_fixture


@pytest.fixture
def client(make_client: MakeClient) -> Iterator[TestClient]:
    with make_client(signer=None) as test_client:  # each test decides whether it calls as the trusted client
        yield test_client


def store_states(client: TestClient, knowledge: Knowledge) -> None:
    """Two evaluations of the same patient: before and after the second failing viral load."""
    builder = RecordBuilder()
    builder.add_bundle(load_fixture("hiv/fail-basic.json"))
    (record,) = builder.build()
    store = client.app.state.store  # type: ignore[attr-defined]
    for day in (date(2026, 2, 15), date(2026, 6, 1)):
        (program,) = patient_report(evaluate_record(record, knowledge, day))["programs"]
        with store.session() as session:
            save_state(
                session, "https://fhir.example.test", record.reference, "hiv", day, program, fingerprint(program)
            )


def test_current_state_and_history(client: TestClient, knowledge: Knowledge) -> None:
    store_states(client, knowledge)
    client.auth = SignedCalls(CLIENT)
    body = client.get("/patients/hiv-fail-basic/therapy").json()
    (current,) = body["programs"]
    assert current["program"] == "hiv" and current["current_line"] == 1
    assert current["assessments"][0]["status"] == "second-line-evaluation"
    assert [h["status"] for h in body["history"]] == ["monitor", "second-line-evaluation"]
    assert [h["as_of"] for h in body["history"]] == ["2026-02-15", "2026-06-01"]


def test_unknown_patient_is_404(client: TestClient) -> None:
    client.auth = SignedCalls(CLIENT)
    response = client.get("/patients/nobody/therapy")
    assert response.status_code == 404 and response.json()["resourceType"] == "OperationOutcome"


def test_therapy_needs_a_trusted_client(client: TestClient, knowledge: Knowledge) -> None:
    store_states(client, knowledge)
    response = client.get("/patients/hiv-fail-basic/therapy")
    assert response.status_code == 401 and response.content == b""
