"""Smoke tests: the HAPI FHIR test server is a real HAPI JPA R4 server, configured as fhirsvc's tests expect."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.integration.hapi import FHIR_JSON, HTTP_TIMEOUT, auth_headers, fhir_get, post_transaction, search_all

pytestmark = pytest.mark.hapi


def _links(bundle: dict[str, Any]) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in bundle.get("link", [])}


def _create(base_url: str, resource: dict[str, Any], token: str | None = None, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}/{resource['resourceType']}",
        json=resource,
        headers=auth_headers(token) | {"Content-Type": FHIR_JSON} | headers,
        timeout=HTTP_TIMEOUT,
    )


def test_metadata_is_hapi_r4(hapi_base_url: str) -> None:
    response = fhir_get(f"{hapi_base_url}/metadata")
    assert response.status_code == 200
    capability = response.json()
    assert capability["resourceType"] == "CapabilityStatement"
    assert capability["fhirVersion"] == "4.0.1"
    assert capability["software"]["name"] == "HAPI FHIR Server"
    resources = {r["type"] for r in capability["rest"][0]["resource"]}
    assert {"Patient", "Observation", "Condition", "MedicationStatement", "MedicationRequest"} <= resources


def test_transaction_then_paging_over_25_observations(hapi_base_url: str) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    entries: list[dict[str, Any]] = [
        {
            "resource": {"resourceType": "Patient", "id": "smoke-1", "name": [{"family": "Smoke", "given": ["One"]}]},
            "request": {"method": "PUT", "url": "Patient/smoke-1"},
        }
    ]
    for i in range(25):
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                    "subject": {"reference": "Patient/smoke-1"},
                    "effectiveDateTime": f"2026-01-{i + 1:02d}",
                    "valueQuantity": {"value": 7 + i / 10, "unit": "%", "system": "http://unitsofmeasure.org"},
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    result = post_transaction(hapi_base_url, {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert result["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert len(statuses) == 26
    assert statuses[0].split()[0] in ("200", "201")  # client-assigned id: PUT creates Patient/smoke-1
    assert all(s.startswith("201") for s in statuses[1:])

    patient = fhir_get(f"{hapi_base_url}/Patient/smoke-1")
    assert patient.status_code == 200
    assert patient.json()["id"] == "smoke-1"

    first = fhir_get(f"{hapi_base_url}/Observation", params={"patient": "smoke-1"})
    assert first.status_code == 200
    page = first.json()
    assert page["type"] == "searchset"
    assert len(page["entry"]) == 20  # default page size, as on hapi.fhir.org
    links = _links(page)
    assert "next" in links
    assert links["next"].startswith(hapi_base_url)

    everything = search_all(f"{hapi_base_url}/Observation?patient=smoke-1")
    ids = [e["resource"]["id"] for e in everything]
    assert len(ids) == 25
    assert len(set(ids)) == 25

    # _lastUpdated works and _count is honoured (up to the 500 maximum).
    since = before.strftime("%Y-%m-%dT%H:%M:%SZ")
    recent = fhir_get(
        f"{hapi_base_url}/Observation", params={"patient": "smoke-1", "_lastUpdated": f"ge{since}", "_count": "100"}
    ).json()
    assert len(recent["entry"]) == 25
    assert "next" not in _links(recent)
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    none = fhir_get(f"{hapi_base_url}/Observation", params={"patient": "smoke-1", "_lastUpdated": f"gt{future}"})
    assert none.json().get("entry", []) == []


def test_conditional_create_if_none_exist_creates_once(hapi_base_url: str) -> None:
    value = f"cond-{uuid.uuid4()}"
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:fhirsvc:test", "value": value}],
        "name": [{"family": "Conditional"}],
    }
    header = {"If-None-Exist": f"identifier=urn:fhirsvc:test|{value}"}
    first = _create(hapi_base_url, patient, **header)
    second = _create(hapi_base_url, patient, **header)
    assert first.status_code == 201
    assert second.status_code == 200  # matched the existing resource, nothing created
    assert first.headers["Location"].split("/_history")[0] == second.headers["Location"].split("/_history")[0]

    found = search_all(f"{hapi_base_url}/Patient?identifier=urn:fhirsvc:test|{value}")
    assert len(found) == 1

    # The same inside a transaction (how fhirsvc's sandbox loader uses it).
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": patient,
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": f"identifier=urn:fhirsvc:test|{value}",
                },
            }
        ],
    }
    result = post_transaction(hapi_base_url, bundle)
    assert result["entry"][0]["response"]["status"].startswith("200")
    assert len(search_all(f"{hapi_base_url}/Patient?identifier=urn:fhirsvc:test|{value}")) == 1


def test_token_endpoint_requires_bearer_token(hapi_token_server: tuple[str, str]) -> None:
    base_url, token = hapi_token_server

    # The CapabilityStatement stays public, as on SMART servers.
    assert fhir_get(f"{base_url}/metadata").status_code == 200

    missing = fhir_get(f"{base_url}/Patient")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert missing.json()["resourceType"] == "OperationOutcome"
    assert fhir_get(f"{base_url}/Patient", token="not-the-token").status_code == 401
    assert _create(base_url, {"resourceType": "Patient"}).status_code == 401

    ok = fhir_get(f"{base_url}/Patient", token=token)
    assert ok.status_code == 200
    assert ok.json()["resourceType"] == "Bundle"

    # Writes with the token work, and paging links stay under the protected base path.
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "id": "token-1", "name": [{"family": "Token"}]},
                "request": {"method": "PUT", "url": "Patient/token-1"},
            }
        ],
    }
    post_transaction(base_url, bundle, token=token)
    with pytest.raises(httpx.HTTPStatusError):
        post_transaction(base_url, bundle)
    page = fhir_get(f"{base_url}/Patient", token=token, params={"_count": "1"}).json()
    assert _links(page)["next"].startswith(base_url)
    assert fhir_get(_links(page)["next"]).status_code == 401
    assert fhir_get(_links(page)["next"], token=token).status_code == 200


def test_open_endpoint_needs_no_token(hapi_base_url: str, hapi_token_server: tuple[str, str]) -> None:
    # Same server, same data: the open base path ignores tokens entirely.
    assert fhir_get(f"{hapi_base_url}/Patient").status_code == 200
    assert fhir_get(f"{hapi_base_url}/Patient", token="anything").status_code == 200


def test_search_cache_off_sees_new_resource_immediately(hapi_base_url: str) -> None:
    family = f"Fresh{uuid.uuid4().hex[:10]}"
    url = f"{hapi_base_url}/Patient?family={family}"
    assert search_all(url) == []
    created = _create(hapi_base_url, {"resourceType": "Patient", "name": [{"family": family}]})
    assert created.status_code == 201
    # The identical search, right away: with HAPI's default 60 s result cache this would still be empty.
    assert len(search_all(url)) == 1
    _create(hapi_base_url, {"resourceType": "Patient", "name": [{"family": family}]})
    assert len(search_all(url)) == 2
