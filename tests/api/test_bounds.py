"""Bounded work per request: evaluation off the event loop within the time budget, and limits on what a call carries.

Timing is scripted, never measured: the budget tests run the app on a virtual clock (tests/virtual_time.py) where an
evaluation takes exactly the virtual seconds it advances, and the responsiveness test blocks an evaluation on an event.
"""

from __future__ import annotations

import asyncio
import gc
import io
import threading
import time
import tracemalloc
from collections.abc import Callable
from datetime import date
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

import fhirsvc.api.cds
from fhirsvc.api.evaluation import EvaluationPool
from fhirsvc.config import Settings
from fhirsvc.pipeline import PatientResult, evaluate_record
from fhirsvc.record.model import PatientRecord
from fhirsvc.render.cards import INCOMPLETE_SUMMARY
from fhirsvc.render.timeout import NOT_EVALUATED_SUMMARY
from fhirsvc.terminology.knowledge import Knowledge
from tests.api.test_cds_hooks import assert_no_empty_fields
from tests.api.test_malformed_fhir import request_line
from tests.cds_helpers import hook_request, prefetch_from, searchset
from tests.conftest import MakeClient, load_fixture
from tests.virtual_time import VirtualClock

PATIENT_VIEW = "/cds-services/second-line-patient-view"
BUDGET = 0.3
Evaluate = Callable[[PatientRecord, Knowledge, date], PatientResult]


def failing_patient_request() -> dict[str, Any]:
    """hiv-fail-basic: evaluated in time, it gets a second-line warning card."""
    return hook_request("hiv-fail-basic", prefetch_from(load_fixture("hiv/fail-basic.json")))


def replace_evaluation(monkeypatch: pytest.MonkeyPatch, evaluate: Evaluate) -> None:
    monkeypatch.setattr(fhirsvc.api.cds, "evaluate_record", evaluate)


# ---- evaluation off the event loop, inside the time budget -----------------------------------------------------------


def test_evaluation_runs_in_a_worker_thread_not_on_the_event_loop(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []

    def recording(record: PatientRecord, knowledge: Knowledge, as_of: date) -> PatientResult:
        threads.append(threading.current_thread().name)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return evaluate_record(record, knowledge, as_of)
        raise AssertionError("evaluate_record ran on the event loop")

    replace_evaluation(monkeypatch, recording)
    with make_client() as client:
        response = client.post(PATIENT_VIEW, json=failing_patient_request())
    assert response.status_code == 200
    assert "second-line" in response.json()["cards"][0]["summary"]
    (thread,) = threads
    assert thread.startswith("fhirsvc-evaluate")


def test_an_evaluation_past_the_budget_gives_one_data_needed_card_and_no_finding(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch, log_lines: io.StringIO
) -> None:
    """The evaluation takes longer than the whole budget: its (real) result comes too late and is discarded."""
    clock = VirtualClock()
    finished: list[PatientResult] = []

    def slow(record: PatientRecord, knowledge: Knowledge, as_of: date) -> PatientResult:
        clock.advance(BUDGET * 2)
        finished.append(evaluate_record(record, knowledge, as_of))
        return finished[-1]

    replace_evaluation(monkeypatch, slow)
    with make_client(clock=clock, cds_time_budget=BUDGET) as client:
        response = client.post(PATIENT_VIEW, json=failing_patient_request())
    assert response.status_code == 200
    body = response.json()
    assert_no_empty_fields(body)
    (card,) = body["cards"]
    assert card["summary"] == NOT_EVALUATED_SUMMARY and card["summary"] != INCOMPLETE_SUMMARY
    assert card["indicator"] == "info" and card["source"]["topic"]["code"] == "data-needed"
    assert finished and finished[0].programs  # it did finish, with findings: late, so none is shown
    assert request_line(log_lines)["evaluation"] == "timed-out"


def test_an_evaluation_within_the_budget_is_answered_as_usual(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch, log_lines: io.StringIO
) -> None:
    clock = VirtualClock()

    def just_in_time(record: PatientRecord, knowledge: Knowledge, as_of: date) -> PatientResult:
        clock.advance(BUDGET * 0.9)
        return evaluate_record(record, knowledge, as_of)

    replace_evaluation(monkeypatch, just_in_time)
    with make_client(clock=clock, cds_time_budget=BUDGET) as client:
        response = client.post(PATIENT_VIEW, json=failing_patient_request())
    (card,) = response.json()["cards"]
    assert "second-line" in card["summary"]
    assert "evaluation" not in request_line(log_lines)


def test_readyz_answers_while_an_evaluation_is_blocked(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, released = threading.Event(), threading.Event()
    released_while_waiting: list[bool] = []

    def blocked(record: PatientRecord, knowledge: Knowledge, as_of: date) -> PatientResult:
        started.set()
        # Not a timing margin: on the event loop this wait would block /readyz, and the timeout only ends that
        # deadlock (the test then fails on `released_while_waiting`).
        released_while_waiting.append(released.wait(timeout=20))
        return evaluate_record(record, knowledge, as_of)

    replace_evaluation(monkeypatch, blocked)
    responses: list[Any] = []
    with make_client(cds_time_budget=60) as client:
        call = threading.Thread(
            target=lambda: responses.append(client.post(PATIENT_VIEW, json=failing_patient_request()))
        )
        call.start()
        assert started.wait(timeout=20)
        ready = client.get("/readyz")
        released.set()
        call.join()
    assert ready.status_code == 200
    assert released_while_waiting == [True]
    assert responses[0].status_code == 200


def test_evaluations_beyond_the_pool_wait_for_a_thread() -> None:
    """One thread: the second evaluation cannot start while the first holds it (hostile calls cannot take more)."""

    async def scenario() -> list[str]:
        pool = EvaluationPool(1, time.monotonic)
        events: list[str] = []
        first_running, release = threading.Event(), threading.Event()

        def first() -> str:
            first_running.set()
            release.wait()
            events.append("first done")
            return "first"

        def second() -> str:
            events.append("second started")
            return "second"

        far = time.monotonic() + 3600
        first_task = asyncio.create_task(pool.run(first, far))
        await asyncio.to_thread(first_running.wait)
        second_task = asyncio.create_task(pool.run(second, far))
        await asyncio.sleep(0)
        events.append("both submitted")
        release.set()
        assert await first_task == "first" and await second_task == "second"
        pool.close()
        return events

    assert asyncio.run(scenario()) == ["both submitted", "first done", "second started"]


def test_no_time_left_means_no_evaluation_started() -> None:
    started: list[bool] = []

    async def scenario() -> object:
        pool = EvaluationPool(1, time.monotonic)
        try:
            return await pool.run(lambda: started.append(True), deadline=time.monotonic() - 1)
        finally:
            pool.close()

    assert asyncio.run(scenario()) is None and not started


# ---- limits on what one call carries ---------------------------------------------------------------------------------


def tiny_observations(count: int) -> dict[str, Any]:
    """A searchset of `count` resources as small as a resource can be (about 55 bytes each)."""
    entries = [{"resource": {"resourceType": "Observation", "id": f"o{i}"}} for i in range(count)]
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


def assert_outcome(response: Any, status: int, code: str, *phrases: str) -> None:
    assert response.status_code == status, response.text[:500]
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    (issue,) = outcome["issue"]
    assert issue["severity"] == "error" and issue["code"] == code
    assert all(phrase in issue["diagnostics"] for phrase in phrases), issue["diagnostics"]


def test_100k_tiny_resources_are_a_413_under_the_default_limits(make_client: MakeClient) -> None:
    body = failing_patient_request()
    body["prefetch"]["observations"] = tiny_observations(100_000)
    payload = orjson.dumps(body)
    assert len(payload) < Settings().max_body_bytes  # small enough to arrive: refused for its count, not its size
    with make_client() as client:
        response = client.post(PATIENT_VIEW, content=payload, headers={"Content-Type": "application/json"})
    assert_outcome(response, 413, "too-costly", "FHIRSVC_MAX_RESOURCES_PER_REQUEST", "100")


def test_the_resource_limit_counts_every_prefetch_bundle_and_the_draft_orders(make_client: MakeClient) -> None:
    body = failing_patient_request()
    carried = 1 + sum(len(v.get("entry", [])) for k, v in body["prefetch"].items() if k != "patient")
    with make_client(max_resources_per_request=carried) as client:
        assert client.post(PATIENT_VIEW, json=body).status_code == 200
        body["context"]["draftOrders"] = searchset([{"resourceType": "MedicationRequest", "id": "draft"}])
        body["hook"], service = "order-select", "/cds-services/second-line-order-select"
        body["context"]["selections"] = ["MedicationRequest/draft"]
        assert_outcome(client.post(service, json=body), 413, "too-costly", f"{carried + 1} resources")


def test_a_text_longer_than_the_limit_is_a_400_naming_its_field(make_client: MakeClient) -> None:
    body = failing_patient_request()
    statement = next(
        entry["resource"]
        for entry in body["prefetch"]["medicationStatements"]["entry"]
        if entry["resource"]["resourceType"] == "MedicationStatement"
    )
    limit = Settings().max_text_chars
    statement["medicationCodeableConcept"]["text"] = "x" * limit
    with make_client() as client:
        assert client.post(PATIENT_VIEW, json=body).status_code == 200  # at the limit: accepted
        statement["medicationCodeableConcept"]["text"] = "x" * (limit + 1)
        assert_outcome(client.post(PATIENT_VIEW, json=body), 400, "invalid", "'text'", "FHIRSVC_MAX_TEXT_CHARS")
        statement["note"] = [{"text": "ok"}, "y" * (limit + 1)]  # a string in a list names the list's field
        del statement["medicationCodeableConcept"]["text"]
        assert_outcome(client.post(PATIENT_VIEW, json=body), 400, "invalid", "'note'")


def with_nested_extension(body: dict[str, Any], levels: int) -> bytes:
    """`body` with the Patient carrying an extension nested `levels` deep (an object and a list per level)."""
    body["prefetch"]["patient"]["extension"] = ["DEEP"]
    opening = b'{"url":"http://example.org/level","extension":[' * levels
    leaf = b'{"url":"http://example.org/leaf","valueString":"x"}'
    return orjson.dumps(body).replace(b'"DEEP"', opening + leaf + b"]}" * levels)


# orjson refuses more than 1024 levels when it parses; everything that reads the parsed request must cope with up to
# that (an iterative walk, or recursion well within Python's limit of 1000 frames).
@pytest.mark.parametrize("levels", [100, 500])
def test_deep_nesting_that_json_allows_is_answered_not_a_500(make_client: MakeClient, levels: int) -> None:
    payload = with_nested_extension(failing_patient_request(), levels)
    with make_client() as client:
        response = client.post(PATIENT_VIEW, content=payload, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert "second-line" in response.json()["cards"][0]["summary"]


def test_nesting_deeper_than_json_allows_is_a_400_operation_outcome(make_client: MakeClient) -> None:
    body = failing_patient_request()
    prefix = orjson.dumps(body)[:-1] + b',"deep":'
    payload = prefix + b"[" * 2000 + b"]" * 2000 + b"}"
    with make_client() as client:
        response = client.post(PATIENT_VIEW, content=payload, headers={"Content-Type": "application/json"})
    assert_outcome(response, 400, "invalid", "1024 levels")


def test_the_default_body_limit_fits_a_large_chart_and_no_more() -> None:
    """bench/'s 10,000-resource prefetch is 6.3 MB; 20 MB only let one call hold more memory."""
    assert Settings().max_body_bytes == 10 * 1024 * 1024


def test_memory_kept_after_many_distinct_long_texts_stays_flat(make_client: MakeClient) -> None:
    """Distinct texts at the length limit, round after round: what the process keeps stops growing (bounded memos)."""
    body = failing_patient_request()
    statement = next(
        entry["resource"]
        for entry in body["prefetch"]["medicationStatements"]["entry"]
        if entry["resource"]["resourceType"] == "MedicationStatement"
    )
    limit = Settings().max_text_chars

    def send_round(client: TestClient, round_number: int) -> int:
        for index in range(40):
            statement["medicationCodeableConcept"]["text"] = f"{round_number}-{index}-".ljust(limit, "z")
            assert client.post(PATIENT_VIEW, json=body).status_code == 200
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    with make_client() as client:
        tracemalloc.start()
        try:
            kept = [send_round(client, round_number) for round_number in range(3)]
        finally:
            tracemalloc.stop()
    # 40 texts of 64 KiB are 2.6 MB a round: kept, the second and third rounds would add that much each.
    assert kept[2] - kept[0] < 1_000_000, kept
