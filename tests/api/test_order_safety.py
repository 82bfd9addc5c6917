"""Order-time safety checks through the CDS door: the draft orders of order-select warn, patient-view does not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhirsvc.pipeline import evaluate_record
from fhirsvc.record.files import index_records
from fhirsvc.terminology.knowledge import Knowledge
from tests.cds_helpers import hook_request, prefetch_from, resources_of
from tests.conftest import AS_OF, FIXTURES, MakeClient, load_fixture

ORDER_SELECT = "/cds-services/second-line-order-select"
ORDER_SIGN = "/cds-services/second-line-order-sign"
PATIENT_VIEW = "/cds-services/second-line-patient-view"


@pytest.fixture
def client(make_client: MakeClient) -> Iterator[TestClient]:
    with make_client() as test_client:
        yield test_client


def _calls(program: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fixture as an order-select call (its draft MedicationRequests as context.draftOrders, left out of the
    prefetch as an EHR keeps unsigned orders) and as a patient-view call of the same patient."""
    bundle = load_fixture(f"{program}/{name}.json")
    drafts = [r for r in resources_of(bundle) if r["resourceType"] == "MedicationRequest" and r["status"] == "draft"]
    assert drafts, "the fixture holds no draft order"
    recorded = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources_of(bundle) if r not in drafts],
    }
    prefetch = prefetch_from(recorded)
    draft_orders = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in drafts]}
    selections = [f"MedicationRequest/{r['id']}" for r in drafts]
    patient = f"{program}-{name}"
    order_select = hook_request(patient, prefetch, hook="order-select", draftOrders=draft_orders, selections=selections)
    return order_select, hook_request(patient, prefetch)


def _summaries(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [card["summary"] for card in response.json()["cards"]]


@pytest.mark.parametrize(
    ("program", "name", "says"),
    [
        ("hiv", "order-renews-failing", "continues the failing regimen"),
        ("hiv", "order-adds-one-drug", "adds dolutegravir alone"),
        ("nsclc", "order-pd1-after-pd1", "no PD-1/PD-L1 re-challenge"),
        ("t2d", "order-glp1-not-tolerated", "liraglutide (GLP1RA) not tolerated"),
    ],
)
def test_order_select_warns_and_patient_view_of_the_same_patient_does_not(
    client: TestClient, program: str, name: str, says: str
) -> None:
    order_select, patient_view = _calls(program, name)
    response = client.post(ORDER_SELECT, json=order_select)
    (card,) = [c for c in response.json()["cards"] if says in c["summary"]]
    assert card["indicator"] == "warning"
    assert card["summary"].startswith("This order") and "evaluate before signing" in card["summary"]
    assert "this order" in card["detail"]  # the evidence names the draft by what it is, never its client id
    assert card["source"]["url"].startswith("https://")
    assert not [s for s in _summaries(client.post(PATIENT_VIEW, json=patient_view)) if says in s]


def test_order_sign_warns_as_order_select_does(client: TestClient) -> None:
    order_select, _ = _calls("hiv", "order-adds-one-drug")
    order_sign = {**order_select, "hook": "order-sign"}
    order_sign["context"] = {k: v for k, v in order_select["context"].items() if k != "selections"}
    assert [s for s in _summaries(client.post(ORDER_SIGN, json=order_sign)) if "adds dolutegravir alone" in s]


@pytest.mark.parametrize(
    ("program", "name"),
    [
        ("hiv", "order-true-switch"),
        ("hiv", "order-adds-two-drugs"),
        ("hiv", "order-renews-suppressed"),
        ("hiv", "order-nrti-after-abc-allergy"),
        ("nsclc", "order-pd1-after-chemo"),
        ("t2d", "order-sglt2-after-glp1-intolerance"),
    ],
)
def test_a_safe_order_gets_no_order_warning(client: TestClient, program: str, name: str) -> None:
    order_select, _ = _calls(program, name)
    assert not [s for s in _summaries(client.post(ORDER_SELECT, json=order_select)) if s.startswith("This order")]


def test_order_time_rules_are_not_run_without_draft_orders(knowledge: Knowledge) -> None:
    """Files, the poller and patient-view carry no draft orders: the order-time rules make no finding at all."""
    (record,) = index_records([FIXTURES / "hiv" / "order-renews-failing.json"]).records()
    rules = {f.rule for f in evaluate_record(record, knowledge, AS_OF).findings}
    assert "hiv-virologic-failure" in rules
    assert not {r for r in rules if "-order-" in r}
