"""What a CDS call reads and how it says what it could not read: the record definition, referenced Medications,
searches cut short, and patients who have died."""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

import httpx

from fhirsvc.record.model import RECORD_PARTS
from fhirsvc.render.cards import INCOMPLETE_SUMMARY
from tests.cds_helpers import (
    FHIR_BASE,
    TOKEN,
    FakeFhirServer,
    hook_request,
    prefetch_from,
    resources_of,
    searchset,
)
from tests.conftest import MakeClient, load_fixture

AS_OF = date(2026, 6, 1)
PATIENT_VIEW = "/cds-services/second-line-patient-view"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def call(make_client: MakeClient, server: FakeFhirServer, prefetch: dict[str, Any] | None, **settings: Any) -> Any:
    with make_client(server.transport, **settings) as client:
        response = client.post(
            PATIENT_VIEW, json=hook_request("hiv-fail-basic", prefetch, fhir_server=FHIR_BASE, token=TOKEN)
        )
    assert response.status_code == 200, response.text
    return response.json()["cards"]


def summaries(cards: list[dict[str, Any]]) -> list[str]:
    return [c["summary"] for c in cards]


def test_discovery_asks_for_every_type_of_the_record(make_client: MakeClient) -> None:
    with make_client(FakeFhirServer([]).transport) as client:
        services = client.get("/cds-services").json()["services"]
    wanted = {part.key: part.search for part in RECORD_PARTS}
    assert wanted["medicationAdministrations"].startswith("MedicationAdministration?patient={{context.patientId}}")
    assert all(service["prefetch"] == wanted for service in services)


def test_absent_medication_administrations_are_fetched(make_client: MakeClient) -> None:
    """Chemotherapy recorded as infusions is read over CDS Hooks, not only from files."""
    bundle = load_fixture("hiv/fail-basic.json")
    prefetch = prefetch_from(bundle)
    del prefetch["medicationAdministrations"]
    server = FakeFhirServer(resources_of(bundle))
    cards = call(make_client, server, prefetch)
    assert [r.url.path.rsplit("/", 1)[-1] for r in server.requests] == ["MedicationAdministration"]
    assert "second-line" in cards[0]["summary"]


def _by_reference(bundle: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The fixture with each medication coded on a Medication resource that the order references by id."""
    resources = copy.deepcopy(resources_of(bundle))
    medications = []
    for resource in resources:
        concept = resource.pop("medicationCodeableConcept", None)
        if concept is not None:
            medication = {"resourceType": "Medication", "id": f"med-{resource['id']}", "code": concept}
            medications.append(medication)
            resource["medicationReference"] = {"reference": f"Medication/{medication['id']}"}
    return resources, medications


def test_referenced_medications_are_fetched_by_id(make_client: MakeClient) -> None:
    resources, medications = _by_reference(load_fixture("hiv/fail-basic.json"))
    server = FakeFhirServer(resources + medications)
    prefetch = prefetch_from({"entry": [{"resource": r} for r in resources]})
    cards = call(make_client, server, prefetch)
    (request,) = server.requests
    assert request.url.path.endswith("/Medication")
    assert sorted(request.url.params["_id"].split(",")) == sorted(m["id"] for m in medications)
    assert "second-line" in cards[0]["summary"]


def test_unreadable_referenced_medications_withhold_the_findings(make_client: MakeClient) -> None:
    """A regimen known only by reference cannot be judged: "no therapy" would be a false answer."""
    resources, medications = _by_reference(load_fixture("hiv/fail-basic.json"))
    server = FakeFhirServer(resources + medications)
    server.overrides["Medication"] = lambda request: httpx.Response(503)
    prefetch = prefetch_from({"entry": [{"resource": r} for r in resources]})
    (card,) = call(make_client, server, prefetch, fhir_max_retries=0)
    assert card["summary"] == INCOMPLETE_SUMMARY and "**Medication**" in card["detail"]


def _many_results_prefetch() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    bundle = load_fixture("hiv/fail-basic.json")
    resources = resources_of(bundle)
    prefetch = prefetch_from(bundle)
    del prefetch["observations"]
    return prefetch, resources


def test_search_stopped_by_the_page_cap_withholds_what_reads_it(make_client: MakeClient) -> None:
    """Two viral loads on two pages, one page allowed: the failure must not turn into "repeat viral load"."""
    prefetch, resources = _many_results_prefetch()
    server = FakeFhirServer(resources, page_size=1)
    (card,) = call(make_client, server, prefetch, fhir_max_pages=1)
    assert card["summary"] == INCOMPLETE_SUMMARY
    assert "**Observation**" in card["detail"] and "stopped after 1 pages" in card["detail"]


def test_search_within_the_page_cap_decides(make_client: MakeClient) -> None:
    prefetch, resources = _many_results_prefetch()
    server = FakeFhirServer(resources, page_size=1)
    cards = call(make_client, server, prefetch, fhir_max_pages=2)
    assert INCOMPLETE_SUMMARY not in summaries(cards) and "second-line" in cards[0]["summary"]


def test_a_total_larger_than_the_pages_read_is_incomplete(make_client: MakeClient) -> None:
    """HAPI stops offering `next` after 10,000 results while `total` counts them all."""
    prefetch, resources = _many_results_prefetch()
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    server = FakeFhirServer(resources)

    def capped(request: httpx.Request) -> httpx.Response:
        body = {**searchset(observations[:1]), "total": len(observations)}
        return httpx.Response(200, json=body, headers={"Content-Type": "application/fhir+json"})

    server.overrides["Observation"] = capped
    (card,) = call(make_client, server, prefetch)
    assert card["summary"] == INCOMPLETE_SUMMARY and "**Observation**" in card["detail"]


def test_a_total_that_matches_is_complete(make_client: MakeClient) -> None:
    prefetch, resources = _many_results_prefetch()
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    server = FakeFhirServer(resources)

    def complete(request: httpx.Request) -> httpx.Response:
        body = {**searchset(observations), "total": len(observations)}
        return httpx.Response(200, json=body, headers={"Content-Type": "application/fhir+json"})

    server.overrides["Observation"] = complete
    cards = call(make_client, server, prefetch)
    assert INCOMPLETE_SUMMARY not in summaries(cards) and "second-line" in cards[0]["summary"]


def test_a_prefetch_short_of_its_total_is_incomplete(make_client: MakeClient) -> None:
    bundle = load_fixture("hiv/fail-basic.json")
    prefetch = prefetch_from(bundle)
    prefetch["observations"]["total"] = len(prefetch["observations"]["entry"]) + 1
    (card,) = call(make_client, FakeFhirServer([]), prefetch)
    assert card["summary"] == INCOMPLETE_SUMMARY and "**Observation**" in card["detail"]


def _with_death(death: dict[str, Any]) -> dict[str, Any]:
    prefetch = prefetch_from(load_fixture("hiv/fail-basic.json"))
    prefetch["patient"] = {**prefetch["patient"], **death}
    return prefetch


def test_no_card_for_a_patient_who_died_before_the_evaluation_date(make_client: MakeClient) -> None:
    assert call(make_client, FakeFhirServer([]), _with_death({"deceasedDateTime": "2026-05-31"})) == []


def test_no_card_for_a_patient_recorded_dead_without_a_date(make_client: MakeClient) -> None:
    assert call(make_client, FakeFhirServer([]), _with_death({"deceasedBoolean": True})) == []


def test_a_death_dated_after_the_evaluation_date_has_not_happened(make_client: MakeClient) -> None:
    for death in ({"deceasedDateTime": "2026-06-02"}, {"deceasedBoolean": False}):
        cards = call(make_client, FakeFhirServer([]), _with_death(death))
        assert "second-line" in cards[0]["summary"]


def test_a_server_without_medication_administrations_is_not_incomplete(make_client: MakeClient) -> None:
    """A refused search of an optional type (400/404: not offered) means none on that server, and is remembered."""
    bundle = load_fixture("hiv/fail-basic.json")
    prefetch = prefetch_from(bundle)
    del prefetch["medicationAdministrations"]
    server = FakeFhirServer(resources_of(bundle))
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-supported"}]}
    server.overrides["MedicationAdministration"] = lambda request: httpx.Response(400, json=outcome)
    cards = call(make_client, server, prefetch)
    assert INCOMPLETE_SUMMARY not in summaries(cards) and "second-line" in cards[0]["summary"]


def test_a_failing_search_of_an_optional_type_is_incomplete(make_client: MakeClient) -> None:
    bundle = load_fixture("hiv/fail-basic.json")
    prefetch = prefetch_from(bundle)
    del prefetch["medicationAdministrations"]
    server = FakeFhirServer(resources_of(bundle))
    server.overrides["MedicationAdministration"] = lambda request: httpx.Response(503)
    (card,) = call(make_client, server, prefetch, fhir_max_retries=0)
    assert card["summary"] == INCOMPLETE_SUMMARY and "**MedicationAdministration**" in card["detail"]
