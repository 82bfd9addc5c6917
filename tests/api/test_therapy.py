"""GET /patients/{id}/therapy: the stored current state per program and its history; protected like the services,
and only for patients of the FHIR servers the client is registered for."""

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
from tests.cds_helpers import CLIENT, SignedCalls, Signer
from tests.conftest import MakeClient, load_fixture

SERVER_A = "https://fhir.example.test"
SERVER_B = "https://other-fhir.example.test/r4"
TWO_SERVER_CLIENT = Signer(iss="https://two-servers.example.test", kid="two-1")
NO_SERVER_CLIENT = Signer(iss="https://no-servers.example.test", kid="none-1")
REGISTERED = [
    {**CLIENT.client_config(), "fhir_servers": [SERVER_A]},
    {**TWO_SERVER_CLIENT.client_config(), "fhir_servers": [SERVER_A, "https://OTHER-fhir.example.test:443/r4/"]},
    NO_SERVER_CLIENT.client_config(),
]


@pytest.fixture
def client(make_client: MakeClient) -> Iterator[TestClient]:
    with make_client(signer=None, cds_clients=REGISTERED) as test_client:  # each test decides who calls
        yield test_client


def store_states(client: TestClient, knowledge: Knowledge, server: str = SERVER_A, days: int = 2) -> None:
    """Evaluations of the same patient: before and after the second failing viral load."""
    builder = RecordBuilder()
    builder.add_bundle(load_fixture("hiv/fail-basic.json"))
    (record,) = builder.build()
    store = client.app.state.store  # type: ignore[attr-defined]
    for day in (date(2026, 2, 15), date(2026, 6, 1))[:days]:
        (program,) = patient_report(evaluate_record(record, knowledge, day))["programs"]
        with store.session() as session:
            save_state(session, server, record.reference, "hiv", day, program, fingerprint(program))


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


def test_the_same_patient_id_on_another_server_is_never_merged(client: TestClient, knowledge: Knowledge) -> None:
    store_states(client, knowledge)
    store_states(client, knowledge, server=SERVER_B, days=1)  # Patient/hiv-fail-basic of B: another person
    client.auth = SignedCalls(CLIENT)
    body = client.get("/patients/hiv-fail-basic/therapy").json()
    assert body["server"] == SERVER_A and len(body["programs"]) == 1
    assert {h["server"] for h in body["history"]} == {SERVER_A} and len(body["history"]) == 2
    client.auth = SignedCalls(TWO_SERVER_CLIENT)
    body = client.get("/patients/hiv-fail-basic/therapy", params={"server": SERVER_B + "/"}).json()
    assert body["server"] == SERVER_B and [h["status"] for h in body["history"]] == ["monitor"]


def test_a_client_reads_only_patients_of_its_registered_servers(client: TestClient, knowledge: Knowledge) -> None:
    store_states(client, knowledge, server=SERVER_B)
    client.auth = SignedCalls(CLIENT)  # registered for A only: B's patient is not its to read
    assert client.get("/patients/hiv-fail-basic/therapy").status_code == 404
    response = client.get("/patients/hiv-fail-basic/therapy", params={"server": SERVER_B})
    assert response.status_code == 403 and response.json()["issue"][0]["code"] == "forbidden"
    client.auth = SignedCalls(NO_SERVER_CLIENT)
    assert client.get("/patients/hiv-fail-basic/therapy").status_code == 403


def test_a_client_of_several_servers_names_one(client: TestClient, knowledge: Knowledge) -> None:
    store_states(client, knowledge)
    client.auth = SignedCalls(TWO_SERVER_CLIENT)
    response = client.get("/patients/hiv-fail-basic/therapy")
    assert response.status_code == 400 and "server" in response.json()["issue"][0]["diagnostics"]
    assert client.get("/patients/hiv-fail-basic/therapy", params={"server": "not a url"}).status_code == 400
    assert client.get("/patients/hiv-fail-basic/therapy", params={"server": SERVER_A}).status_code == 200
