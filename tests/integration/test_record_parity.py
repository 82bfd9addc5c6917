"""Every door reads the same record: `evaluate` on the bundled files, a CDS call whose prefetch an EHR built from
the discovery templates, and a CDS call that fetches everything give the same cards for every example patient."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from fhirsvc.api.client_jwt import CdsClientIdentity
from fhirsvc.api.feedback import card_scope, card_uuid
from fhirsvc.pipeline import evaluate_record
from fhirsvc.record.model import RecordBuilder
from fhirsvc.render.cards import cards_for
from fhirsvc.terminology.knowledge import Knowledge
from tests.cds_helpers import CLIENT, hook_request
from tests.conftest import FIXTURES, MakeClient
from tests.integration.hapi import fhir_get, post_transaction

pytestmark = pytest.mark.hapi
AS_OF = date(2026, 6, 1)
PATIENT_VIEW = "/cds-services/second-line-patient-view"
EXAMPLES = sorted(p for p in FIXTURES.glob("*/*.json") if p.parent.name != "cds")  # cds/: hook requests


@pytest.fixture(scope="module")
def service(make_client: MakeClient, hapi_base_url: str) -> Iterator[TestClient]:
    for path in EXAMPLES:  # PUT with the fixtures' own ids: references in the cards compare as they are
        post_transaction(hapi_base_url, orjson.loads(path.read_bytes()))
    with make_client(None, as_of=AS_OF, fhir_servers=[hapi_base_url], cds_time_budget=60.0) as client:
        yield client


def from_files(path: Path, knowledge: Knowledge) -> tuple[str, list[tuple[str, str]]]:
    builder = RecordBuilder()
    builder.add_bundle(orjson.loads(path.read_bytes()))
    (record,) = builder.build()
    cards = cards_for(evaluate_record(record, knowledge, AS_OF))
    return record.patient_id, [(c.uuid, c.summary) for c in cards]


def ehr_prefetch(base: str, templates: dict[str, str], patient_id: str) -> dict[str, Any]:
    """What an EHR sends: each template filled and run on its server, every page of a search in one Bundle."""
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        url: str | None = f"{base}/{template.replace('{{context.patientId}}', patient_id)}"
        entries: list[dict[str, Any]] = []
        while url is not None:
            response = fhir_get(url)
            response.raise_for_status()
            body = response.json()
            if body["resourceType"] != "Bundle":
                prefetch[key] = body
                break
            entries += body.get("entry", [])
            url = next((link["url"] for link in body.get("link", []) if link["relation"] == "next"), None)
        else:
            prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}
    return prefetch


def as_shown_to(body: dict[str, Any], cards: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The file door's cards (uuid = the finding's id) with the uuids the CDS door gives them for this call's
    audience (client, server, clinician)."""
    identity = CdsClientIdentity(iss=CLIENT.iss, jti="")
    context = body["context"]
    scope = card_scope(identity, body.get("fhirServer"), f"Patient/{context['patientId']}", context["userId"])
    return [(card_uuid(finding_id, scope), summary) for finding_id, summary in cards]


def from_service(client: TestClient, body: dict[str, Any]) -> list[tuple[str, str]]:
    response = client.post(PATIENT_VIEW, json=body)
    assert response.status_code == 200, response.text
    return [(c["uuid"], c["summary"]) for c in response.json()["cards"]]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_door_gives_the_same_cards(
    path: Path, service: TestClient, knowledge: Knowledge, hapi_base_url: str
) -> None:
    patient_id, expected = from_files(path, knowledge)
    (discovered,) = [s for s in service.get("/cds-services").json()["services"] if s["hook"] == "patient-view"]
    prefetched = hook_request(patient_id, ehr_prefetch(hapi_base_url, discovered["prefetch"], patient_id))
    fetched = hook_request(patient_id, None, fhir_server=hapi_base_url)
    assert from_service(service, prefetched) == as_shown_to(prefetched, expected)
    assert from_service(service, fetched) == as_shown_to(fetched, expected)


def test_the_examples_cover_infusion_records() -> None:
    """The parity above matters for chemotherapy given as MedicationAdministration: the examples hold such patients."""
    with_infusions = [
        p for p in EXAMPLES if b'"resourceType": "MedicationAdministration"' in p.read_bytes().replace(b'":"', b'": "')
    ]
    assert len(with_infusions) >= 10 and len(EXAMPLES) >= 90
