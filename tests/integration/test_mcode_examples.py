"""The public mCODE STU4 examples loaded into HAPI and evaluated: no errors; john-anyperson's intolerance found."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from fhirsvc.config import Settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.pipeline import evaluate_record
from fhirsvc.record.gather import fetch_patient
from fhirsvc.terminology.knowledge import Knowledge
from tests.cds_helpers import hook_request
from tests.conftest import MakeClient
from tests.integration import mcode
from tests.integration.hapi import post_transaction

pytestmark = [pytest.mark.hapi, pytest.mark.anyio]
JOHN = "cancer-patient-john-anyperson"


@pytest.fixture(scope="module")
def patients(hapi_base_url: str) -> list[str]:
    try:
        resources = mcode.example_resources()
    except (FileNotFoundError, OSError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the mCODE example tests: {exc}")
        pytest.skip(f"mCODE examples unavailable: {exc}")
    answer = post_transaction(hapi_base_url, mcode.as_transaction(resources))
    assert all(str(e["response"]["status"]).startswith(("200", "201")) for e in answer["entry"])
    return sorted(r["id"] for r in resources if r["resourceType"] == "Patient")


@pytest.fixture(scope="module")
def service(make_client: MakeClient, hapi_base_url: str) -> Iterator[TestClient]:
    with make_client(None, fhir_servers=[hapi_base_url], cds_time_budget=60.0) as client:
        yield client


def test_every_mcode_patient_is_evaluated_without_error(
    service: TestClient, hapi_base_url: str, patients: list[str]
) -> None:
    assert len(patients) == 7
    for patient in patients:
        request = hook_request(patient, None, fhir_server=hapi_base_url)
        response = service.post("/cds-services/second-line-patient-view", json=request)
        assert response.status_code == 200, (patient, response.text)
        for card in response.json()["cards"]:
            assert len(card["summary"]) < 140 and card["source"]["label"]


async def test_john_anyperson_cisplatin_stopped_as_not_tolerated(
    hapi_base_url: str, patients: list[str], knowledge: Knowledge
) -> None:
    pool = FhirClientPool(Settings())
    try:
        gathered = await fetch_patient(pool, hapi_base_url, JOHN, None, 20)
    finally:
        await pool.aclose()
    from datetime import date

    result = evaluate_record(gathered.record, knowledge, date(2026, 6, 1))
    (nsclc,) = [p for p in result.programs if p.program.id == "nsclc"]
    line = nsclc.lines[0]
    assert {"cisplatin", "gefitinib"} <= line.drugs
    (intolerance,) = [a for a in nsclc.findings if a.rule == "intolerance"]
    # Cisplatin was stopped as not tolerated and nothing replaced it (gefitinib was already running).
    assert intolerance.status == "second-line-evaluation"
    assert "MedicationRequest/cancer-related-medication-request-cisplatin-stopped" in intolerance.evidence
    assert "cisplatin" in intolerance.summary
