"""The population worklist written back to a real HAPI server: once, never twice, whole after crashes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from fhirsvc.fhir.urls import normalise_base_url
from fhirsvc.population.worklist import finding_from_row
from fhirsvc.render.writeback import FINDING_SYSTEM, transaction
from fhirsvc.store.db import Store
from fhirsvc.store.models import WriteBack
from fhirsvc.terminology.knowledge import Knowledge
from tests.integration import hapi
from tests.integration.hapi import copies_of, post_transaction

pytestmark = pytest.mark.hapi
AS_OF = "2026-06-01"
# One actionable finding each on AS_OF: five findings, three transactions of two.
FAILING = ["fail-basic", "medicationrequest-only", "threshold-201", "line2-failing", "weeks-25"]


def export_of(base: str, folder: Path) -> Path:
    """Example patients under ids of this test alone, stored on the server under those ids, and their files: the
    Bulk Data export the worklist is made from (its patient ids are the server's)."""
    export = folder / "export"
    export.mkdir()
    paths, _ = copies_of(FAILING, export)
    for path in paths:
        post_transaction(base, orjson.loads(path.read_bytes()))
    return export


def fhirsvc(*args: str, store: Path, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FHIRSVC_STORE_URL": f"sqlite:///{store}"}
    if failpoint is not None:
        env["FHIRSVC_FAILPOINTS"] = orjson.dumps([failpoint]).decode()
    command = [sys.executable, "-m", "fhirsvc.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


def population(export: Path, base: str, worklist: Path, store: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`fhirsvc population` of the export for `base`, as the nightly job runs it."""
    made = fhirsvc(
        *("population", str(export), "--out", str(worklist), "--as-of", AS_OF, "--fhir-server", base, *extra),
        store=store,
    )
    assert made.returncode == 0, made.stderr
    return made


def parts_of(worklist: Path, knowledge: Knowledge) -> dict[str, str]:
    """Every resource the worklist's findings write: identifier value → resource type."""
    findings = [finding_from_row(document, knowledge) for document in pq.read_table(worklist)["finding"].to_pylist()]
    assert len(findings) == len(FAILING)
    entries = transaction(findings, "guidance")["entry"]
    return {e["resource"]["identifier"][0]["value"]: e["resource"]["resourceType"] for e in entries}


def copies_on_server(base: str, parts: dict[str, str]) -> Counter[str]:
    """How many resources on the server carry each part's identifier (system urn:fhirsvc:finding)."""
    return Counter(
        {
            value: len(hapi.search_all(f"{base}/{resource_type}?identifier={FINDING_SYSTEM}|{value}"))
            for value, resource_type in parts.items()
        }
    )


def store_rows(path: Path) -> dict[str, tuple[str, str, str]]:
    store = Store(f"sqlite:///{path}")
    try:
        with store.session() as session:
            return {w.identifier: (w.server, w.patient, w.status) for w in session.query(WriteBack)}
    finally:
        store.close()


def test_population_writes_its_worklist_back_once_and_a_re_run_creates_nothing(
    hapi_base_url: str, knowledge: Knowledge, tmp_path: Path
) -> None:
    export = export_of(hapi_base_url, tmp_path)
    worklist, store = tmp_path / "worklist.parquet", tmp_path / "fhirsvc.db"
    made = population(export, hapi_base_url, worklist, store, "--write-back", "--batch", "2", "--rate", "20")
    assert "5 worklist rows: 5 findings written, 0 already on the server" in made.stdout
    assert "3 transactions, 0 failed batches" in made.stdout
    parts = parts_of(worklist, knowledge)
    assert set(copies_on_server(hapi_base_url, parts).values()) == {1}
    server = normalise_base_url(hapi_base_url)
    patients = set(pq.read_table(worklist)["patient"].to_pylist())
    rows = store_rows(store)
    assert {(s, status) for s, _, status in rows.values()} == {(server, "open")}
    assert {patient for _, patient, _ in rows.values()} == patients and len(rows) == len(FAILING)

    again = fhirsvc("write-back", str(worklist), "--fhir-server", hapi_base_url, store=store)
    assert again.returncode == 0, again.stderr
    assert "0 findings written, 0 already on the server, 5 skipped" in again.stdout
    assert "0 transactions" in again.stdout

    # A store that never heard of them (lost, or another one): every part is found, none created again.
    elsewhere = fhirsvc("write-back", str(worklist), "--fhir-server", hapi_base_url, store=tmp_path / "other.db")
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert "0 findings written, 5 already on the server, 0 skipped" in elsewhere.stdout
    assert set(copies_on_server(hapi_base_url, parts).values()) == {1}
    assert store_rows(tmp_path / "other.db") == rows


def test_crashes_after_a_batch_and_between_commit_and_record_lose_and_duplicate_nothing(
    hapi_base_url: str, knowledge: Knowledge, tmp_path: Path
) -> None:
    export = export_of(hapi_base_url, tmp_path)
    worklist, store = tmp_path / "worklist.parquet", tmp_path / "fhirsvc.db"
    population(export, hapi_base_url, worklist, store)
    parts = parts_of(worklist, knowledge)
    write_back = ("write-back", str(worklist), "--fhir-server", hapi_base_url, "--batch", "2", "--rate", "20")

    # Killed right after the first batch was committed and recorded.
    crashed = fhirsvc(*write_back, store=store, failpoint="worklist-recorded:1")
    assert crashed.returncode == 70, crashed.stderr
    assert len(store_rows(store)) == 2

    # Resumed, and killed after the server committed the next batch but before the store heard of it.
    crashed = fhirsvc(*write_back, store=store, failpoint="worklist-sent:1")
    assert crashed.returncode == 70, crashed.stderr
    assert len(store_rows(store)) == 2
    on_server = copies_on_server(hapi_base_url, parts)
    assert sum(1 for count in on_server.values() if count) < len(parts)  # the third batch was never sent

    finished = fhirsvc(*write_back, store=store)
    assert finished.returncode == 0, finished.stderr
    assert "5 worklist rows: 1 findings written, 2 already on the server, 2 skipped" in finished.stdout
    assert copies_on_server(hapi_base_url, parts) == Counter(dict.fromkeys(parts, 1))  # each part once, none missing
    rows = store_rows(store)
    assert {patient for _, patient, _ in rows.values()} == set(pq.read_table(worklist)["patient"].to_pylist())
    assert {server for server, _, _ in rows.values()} == {normalise_base_url(hapi_base_url)}


def test_write_back_sends_the_token_as_poll_does(
    hapi_token_server: tuple[str, str], knowledge: Knowledge, tmp_path: Path
) -> None:
    base, token = hapi_token_server
    export = tmp_path / "export"
    export.mkdir()
    paths, _ = copies_of(FAILING[:1], export)
    post_transaction(base, orjson.loads(paths[0].read_bytes()), token=token)
    worklist, store = tmp_path / "worklist.parquet", tmp_path / "fhirsvc.db"
    population(export, base, worklist, store)
    refused = fhirsvc("write-back", str(worklist), "--fhir-server", base, store=store)
    assert refused.returncode == 1 and "refused the credentials (401)" in refused.stdout
    token_file = tmp_path / "token"
    token_file.write_text(token)
    written = fhirsvc("write-back", str(worklist), "--fhir-server", base, "--token-file", str(token_file), store=store)
    assert written.returncode == 0, written.stderr
    assert "1 findings written" in written.stdout
    assert token not in written.stdout + written.stderr
