"""The poller against a real HAPI server: write-back once, nothing twice, resolved findings closed, crash-safe."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhirsvc.config import Settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.poll.worker import Poller
from fhirsvc.render.writeback import FINDING_SYSTEM
from fhirsvc.sandbox import load
from fhirsvc.store.db import Store
from fhirsvc.store.models import WriteBack
from fhirsvc.terminology.knowledge import Knowledge
from tests.integration import hapi
from tests.integration.hapi import copies_of, post_transaction

pytestmark = [pytest.mark.hapi, pytest.mark.anyio]
AS_OF = date(2026, 6, 1)
FAILING = ["fail-basic", "medicationrequest-only", "threshold-201"]
QUIET = ["suppressed", "blip"]


def load_own(base: str, names: list[str], folder: Path) -> dict[str, str]:
    """Copies of example patients that only the calling test reads and changes; name → server Patient id."""
    paths, ids = copies_of(names, folder)
    first = load(base, paths)
    again = load(base, paths)  # conditional creates: loading twice creates nothing new
    assert first.created > 0 and again.created == 0, "loading twice must create nothing new"
    return {name: first.patients[ids[name]] for name in names}


def search_all(base: str, query: str) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in hapi.search_all(f"{base}/{query}")]


def finding_identifiers(base: str, resource_type: str) -> Counter[str]:
    resources = search_all(base, f"{resource_type}?identifier={FINDING_SYSTEM}|&_count=200")
    return Counter(i["value"] for r in resources for i in r.get("identifier", []) if i["system"] == FINDING_SYSTEM)


async def run_cycle(base: str, knowledge: Knowledge, store: Store) -> Any:
    pool = FhirClientPool(Settings())
    try:
        return await Poller(Settings(), knowledge, store, pool).cycle(base, as_of=AS_OF)
    finally:
        await pool.aclose()


async def test_poll_writes_each_finding_once_and_closes_resolved_ones(
    hapi_base_url: str, knowledge: Knowledge, store: Store, tmp_path: Path
) -> None:
    loaded = load_own(hapi_base_url, FAILING + QUIET, tmp_path)
    first = await run_cycle(hapi_base_url, knowledge, store)
    assert not first.failed and first.patients >= len(FAILING + QUIET)
    tasks = {
        t["for"]["reference"]: t
        for t in search_all(hapi_base_url, "Task?code=urn:fhirsvc:task|evaluate-second-line&_count=200")
    }
    for name in FAILING:
        task = tasks[f"Patient/{loaded[name]}"]
        assert task["status"] == "requested" and task["focus"]["reference"].startswith("GuidanceResponse/")
    for name in QUIET:
        assert f"Patient/{loaded[name]}" not in tasks
    guidance = search_all(hapi_base_url, f"GuidanceResponse?subject=Patient/{loaded['fail-basic']}")
    (response,) = guidance
    assert response["result"]["reference"].startswith("RequestGroup/")
    assert {r["reference"].split("/")[0] for r in response["reasonReference"]} >= {"Observation"}

    second = await run_cycle(hapi_base_url, knowledge, store)
    assert second.written == 0 and second.changed_states == 0
    assert all(count == 1 for count in finding_identifiers(hapi_base_url, "GuidanceResponse").values())

    # The viral load comes back suppressed: the open Task is cancelled with a reason.
    patient = loaded["fail-basic"]
    suppressed = {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": f"Patient/{patient}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "20447-9"}]},
        "effectiveDateTime": "2026-05-20",
        "valueQuantity": {"value": 20, "comparator": "<", "unit": "copies/mL"},
    }
    httpx.post(f"{hapi_base_url}/Observation", json=suppressed, timeout=30).raise_for_status()
    third = await run_cycle(hapi_base_url, knowledge, store)
    assert third.closed == 1
    (task,) = [t for t in search_all(hapi_base_url, f"Task?patient=Patient/{patient}") if t["status"] != "requested"]
    assert task["status"] == "cancelled" and "no longer holds" in task["statusReason"]["text"]
    with store.session() as session:
        assert (
            session.get(
                WriteBack,
                next(
                    iter(
                        w.identifier for w in session.query(WriteBack).filter(WriteBack.patient == f"Patient/{patient}")
                    )
                ),
            ).status
            == "closed"
        )


async def test_a_death_recorded_on_the_patient_closes_its_open_tasks(
    hapi_base_url: str, knowledge: Knowledge, store: Store, tmp_path: Path
) -> None:
    """Only the Patient changes (deceasedDateTime): the poller sees it, writes nothing new and closes the Task."""
    patient = load_own(hapi_base_url, ["line2-failing"], tmp_path)["line2-failing"]
    first = await run_cycle(hapi_base_url, knowledge, store)
    assert not first.failed
    (task,) = search_all(hapi_base_url, f"Task?patient=Patient/{patient}&status=requested")
    with httpx.Client(timeout=30, headers={"Cache-Control": "no-cache"}) as http:
        record = http.get(f"{hapi_base_url}/Patient/{patient}").raise_for_status().json()
        record["deceasedDateTime"] = "2026-05-01"
        http.put(f"{hapi_base_url}/Patient/{patient}", json=record).raise_for_status()
    second = await run_cycle(hapi_base_url, knowledge, store)
    assert second.written == 0 and second.closed >= 1 and not second.failed
    with httpx.Client(timeout=30, headers={"Cache-Control": "no-cache"}) as http:
        closed = http.get(f"{hapi_base_url}/Task/{task['id']}").raise_for_status().json()
    assert closed["status"] == "cancelled"
    assert closed["statusReason"]["text"] == "Patient deceased on 2026-05-01"


async def test_a_search_cut_short_writes_and_closes_nothing(
    hapi_base_url: str, knowledge: Knowledge, store: Store, tmp_path: Path
) -> None:
    """Orders beyond the page cap could hold the regimen change: the open Task stays open, nothing new is written."""
    patient = load_own(hapi_base_url, ["log10-above"], tmp_path)["log10-above"]
    assert not (await run_cycle(hapi_base_url, knowledge, store)).failed
    (task,) = search_all(hapi_base_url, f"Task?patient=Patient/{patient}&status=requested")
    other_drug = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "29046"}]}
    orders = [
        {
            "resource": {
                "resourceType": "MedicationRequest",
                "status": "completed",
                "intent": "order",
                "subject": {"reference": f"Patient/{patient}"},
                "authoredOn": f"2025-{month:02d}-01",
                "medicationCodeableConcept": other_drug,  # lisinopril: no program reads it
            },
            "request": {"method": "POST", "url": "MedicationRequest"},
        }
        for month in range(1, 13)
        for _ in range(2)
    ]
    post_transaction(hapi_base_url, {"resourceType": "Bundle", "type": "transaction", "entry": orders})
    pool = FhirClientPool(Settings())
    try:  # HAPI pages 20 at a time: one page holds fewer than the patient's 25 orders
        capped = await Poller(Settings(fhir_max_pages=1), knowledge, store, pool).cycle(hapi_base_url, as_of=AS_OF)
    finally:
        await pool.aclose()
    assert patient in capped.incomplete and not capped.failed
    assert capped.written == 0 and capped.closed == 0
    with httpx.Client(timeout=30, headers={"Cache-Control": "no-cache"}) as http:
        assert http.get(f"{hapi_base_url}/Task/{task['id']}").raise_for_status().json()["status"] == "requested"


def test_a_crash_between_write_back_and_cursor_loses_nothing_and_duplicates_nothing(
    hapi_base_url: str, tmp_path: Path
) -> None:
    failing = load_own(hapi_base_url, FAILING, tmp_path)
    env = {**os.environ, "FHIRSVC_STORE_URL": f"sqlite:///{tmp_path / 'crash.db'}", "FHIRSVC_TODAY": AS_OF.isoformat()}
    command = [sys.executable, "-m", "fhirsvc.cli", "poll", "--fhir-server", hapi_base_url, "--once"]
    crashed = subprocess.run(
        command, env={**env, "FHIRSVC_FAILPOINTS": '["after-writeback:1"]'}, capture_output=True, text=True, timeout=300
    )
    assert crashed.returncode == 70, crashed.stderr  # killed right after the first patient's write-back
    store = Store(env["FHIRSVC_STORE_URL"])
    with store.session() as session:
        assert session.query(WriteBack).count() == 1  # that one committed, the cursor did not move
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    counts = finding_identifiers(hapi_base_url, "GuidanceResponse")
    assert counts and all(count == 1 for count in counts.values()), counts
    with store.session() as session:
        patients = {w.patient for w in session.query(WriteBack)}
    assert {f"Patient/{patient}" for patient in failing.values()} <= patients
    store.close()
