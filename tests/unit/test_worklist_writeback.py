"""The worklist written back: batches, the rate on a virtual clock, Retry-After, resume, refusals (a fake server)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import respx
from typer.testing import CliRunner

from fhirsvc.cli import FILES_SERVER, app
from fhirsvc.config import Settings, get_settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.population.embedded import run_embedded
from fhirsvc.population.worklist import SCHEMA
from fhirsvc.population.writeback import (
    WorklistRefused,
    WorklistWriter,
    WriteBackSummary,
    client_settings,
    open_worklist,
)
from fhirsvc.render.writeback import FINDING_SYSTEM, finding_of
from fhirsvc.store.db import Store
from fhirsvc.store.models import WriteBack
from fhirsvc.terminology.knowledge import Knowledge
from tests.conftest import FIXTURES
from tests.virtual_time import VirtualClock

AS_OF = date(2026, 6, 1)
BASE = "https://fhir.example.test/r4"
HIV_FINDINGS = 20  # actionable findings of fixtures/hiv on AS_OF
runner = CliRunner()


class FakeServer:
    """A FHIR server that answers transactions of conditional creates as HAPI does: 201 for a new identifier, 200
    with the existing resource for one it holds. `faults` answer chosen POSTs instead (by their order, from 1)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.held: dict[str, str] = {}  # identifier value → "Type/id"
        self.posts: list[tuple[float, list[str]]] = []  # (time, finding ids of the GuidanceResponses sent)
        self.faults: dict[int, httpx.Response] = {}
        self.refuse: set[str] = set()  # finding ids whose transactions are refused (400)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and str(request.url) == BASE, request.url
        bundle = orjson.loads(request.content)
        findings = [finding_of(e["resource"]) for e in bundle["entry"] if e["resource"]["resourceType"] == "Task"]
        self.posts.append((self.clock(), findings))
        fault = self.faults.get(len(self.posts))
        if fault is not None:
            return fault
        if self.refuse & set(findings):
            return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": [{"code": "invalid"}]})
        entries = []
        for entry in bundle["entry"]:
            resource = entry["resource"]
            value = entry["request"]["ifNoneExist"].removeprefix(f"identifier={FINDING_SYSTEM}|")
            status = "200 OK" if value in self.held else "201 Created"
            reference = self.held.setdefault(value, f"{resource['resourceType']}/{len(self.held) + 1}")
            entries.append({"response": {"status": status, "location": f"{reference}/_history/1"}})
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response", "entry": entries})


@pytest.fixture
def worklist(knowledge: Knowledge, tmp_path: Path) -> Path:
    out = tmp_path / "worklist.parquet"
    summary = run_embedded([FIXTURES / "hiv"], out, knowledge, AS_OF, BASE)
    assert summary.rows == HIV_FINDINGS
    return out


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def on_clock(clock: VirtualClock) -> Iterator[Callable[[Coroutine[Any, Any, Any]], Any]]:
    """Run a coroutine on an event loop whose time is `clock`: waits take exactly the time asked, no real time."""
    loop = clock.new_loop()
    yield loop.run_until_complete
    loop.close()


def write(
    path: Path,
    server: FakeServer,
    store: Store,
    knowledge: Knowledge,
    run: Callable[[Coroutine[Any, Any, Any]], Any],
    settings: Settings | None = None,
    **options: Any,
) -> WriteBackSummary:
    settings = settings or Settings()

    async def go() -> WriteBackSummary:
        pool = FhirClientPool(client_settings(settings), transport=httpx.MockTransport(server))
        try:
            writer = WorklistWriter(pool.client(BASE), store, knowledge, settings, "guidance", **options)
            return await writer.run(open_worklist(path, BASE))
        finally:
            await pool.aclose()

    summary: WriteBackSummary = run(go())
    return summary


def recorded(store: Store) -> dict[str, tuple[str, str]]:
    with store.session() as session:
        return {w.identifier: (w.server, w.patient) for w in session.query(WriteBack)}


def test_transactions_go_out_at_the_rate_evenly_spaced(
    worklist: Path, store: Store, knowledge: Knowledge, clock: VirtualClock, on_clock: Any
) -> None:
    server = FakeServer(clock)
    started = clock()
    summary = write(worklist, server, store, knowledge, on_clock, batch=6, rate=4.0)
    # 20 findings, 6 per transaction: 4 transactions, a quarter second apart (no burst at the start).
    assert [when - started for when, _ in server.posts] == [0.0, 0.25, 0.5, 0.75]
    assert [len(findings) for _, findings in server.posts] == [6, 6, 6, 2]
    assert summary.written == summary.rows == HIV_FINDINGS and summary.transactions == 4 and summary.ok


def test_a_429_is_retried_after_exactly_the_time_the_server_asks(
    worklist: Path, store: Store, knowledge: Knowledge, clock: VirtualClock, on_clock: Any
) -> None:
    server = FakeServer(clock)
    server.faults[1] = httpx.Response(429, headers={"Retry-After": "7"})
    started = clock()
    summary = write(worklist, server, store, knowledge, on_clock, batch=50, rate=1.0)
    assert [when - started for when, _ in server.posts] == [0.0, 7.0]
    assert server.posts[0][1] == server.posts[1][1]  # the same transaction again
    assert summary.ok and summary.written == HIV_FINDINGS and summary.failed_batches == 0
    assert len(recorded(store)) == HIV_FINDINGS


def test_a_batch_failing_for_good_is_reported_and_a_re_run_writes_the_rest(
    worklist: Path, store: Store, knowledge: Knowledge, clock: VirtualClock, on_clock: Any
) -> None:
    server = FakeServer(clock)
    # Longer than the client waits: the second transaction fails for good, the others go through.
    server.faults[2] = httpx.Response(503, headers={"Retry-After": "600"})
    settings = Settings(writeback_max_retry_after=120)
    first = write(worklist, server, store, knowledge, on_clock, settings, batch=8)
    assert not first.ok and first.failed_batches == 1 and first.failed_findings == 8
    assert first.written == HIV_FINDINGS - 8 and len(recorded(store)) == HIV_FINDINGS - 8
    assert any("run the same command again" in line for line in first.lines())
    second = write(worklist, server, store, knowledge, on_clock, settings, batch=8)
    assert second.ok and second.skipped == HIV_FINDINGS - 8 and second.written == 8 and second.transactions == 1
    assert len(recorded(store)) == HIV_FINDINGS


def test_a_re_run_skips_what_is_recorded_and_resending_creates_nothing(
    worklist: Path, store: Store, knowledge: Knowledge, clock: VirtualClock, on_clock: Any, tmp_path: Path
) -> None:
    server = FakeServer(clock)
    write(worklist, server, store, knowledge, on_clock, batch=7)
    rows = recorded(store)
    patients = set(pq.read_table(worklist).column("patient").to_pylist())
    assert len(rows) == HIV_FINDINGS and {server for server, _ in rows.values()} == {BASE}
    assert {patient for _, patient in rows.values()} == patients
    again = write(worklist, server, store, knowledge, on_clock, batch=7)
    assert again.skipped == HIV_FINDINGS and again.transactions == 0 and len(server.posts) == 3
    # The store lost (a crash after the server's commit, before the store write): the server finds every part.
    lost = Store(f"sqlite:///{tmp_path / 'lost.db'}")
    lost.upgrade()
    resent = write(worklist, server, lost, knowledge, on_clock, batch=7)
    assert resent.already_there == HIV_FINDINGS and resent.written == 0 and resent.ok
    assert recorded(lost) == rows
    lost.close()


def test_a_directory_of_part_files_is_one_worklist(
    worklist: Path, store: Store, knowledge: Knowledge, clock: VirtualClock, on_clock: Any, tmp_path: Path
) -> None:
    """The Spark engine writes a directory of part files (and _SUCCESS, .crc files beside them)."""
    table = pq.read_table(worklist)
    parts = tmp_path / "spark-worklist.parquet"
    parts.mkdir()
    pq.write_table(table.slice(0, 9), parts / "part-00000.parquet")
    pq.write_table(table.slice(9), parts / "part-00001.parquet")
    (parts / "_SUCCESS").write_text("")
    (parts / ".part-00000.parquet.crc").write_bytes(b"crc")
    server = FakeServer(clock)
    summary = write(parts, server, store, knowledge, on_clock, batch=50)
    assert summary.rows == summary.written == HIV_FINDINGS


def test_a_directory_spark_did_not_finish_writing_is_refused(worklist: Path, tmp_path: Path) -> None:
    parts = tmp_path / "unfinished.parquet"
    parts.mkdir()
    pq.write_table(pq.read_table(worklist).slice(0, 9), parts / "part-00000.parquet")  # no _SUCCESS: still writing
    with pytest.raises(WorklistRefused, match="did not finish"):
        open_worklist(parts, BASE)


def test_a_bad_row_an_invalid_and_a_refused_finding_cost_only_themselves(
    worklist: Path, store: Store, knowledge: Knowledge, clock: VirtualClock, on_clock: Any, tmp_path: Path
) -> None:
    rows = pq.read_table(worklist).to_pylist()
    document = orjson.loads(rows[0]["finding"])
    unknown = {**rows[0], "finding": orjson.dumps({**document, "rule": "no-such-rule"}).decode()}
    # An empty summary: the Task's description is not valid FHIR (the same finding id, so it is read).
    invalid = {**rows[1], "finding": orjson.dumps({**orjson.loads(rows[1]["finding"]), "summary": ""}).decode()}
    path = tmp_path / "with-bad-rows.parquet"
    pq.write_table(pa.Table.from_pylist([unknown, invalid, *rows[2:]], SCHEMA), path)
    server = FakeServer(clock)
    server.refuse = {rows[15]["finding_id"]}
    summary = write(path, server, store, knowledge, on_clock, batch=10)
    assert summary.unreadable == 1 and summary.failed_batches == 2 and summary.failed_findings == 2
    assert summary.written == HIV_FINDINGS - 3 and not summary.ok and not summary.stopped
    assert not {rows[1]["finding_id"], rows[15]["finding_id"]} & recorded(store).keys()


def test_a_server_that_stops_answering_stops_the_run(
    worklist: Path, store: Store, knowledge: Knowledge, clock: VirtualClock, on_clock: Any
) -> None:
    server = FakeServer(clock)
    server.faults = {n: httpx.Response(503, headers={"Retry-After": "1"}) for n in range(1, 100)}
    summary = write(worklist, server, store, knowledge, on_clock, batch=2)
    # Each transaction is tried three times (fhir_max_retries 2); three transactions in a row fail: stop.
    assert len(server.posts) == 9 and summary.failed_batches == 3 and summary.stopped
    assert summary.not_attempted == HIV_FINDINGS - 6 and recorded(store) == {}


def test_a_worklist_of_another_server_is_refused_before_anything_is_written(worklist: Path, tmp_path: Path) -> None:
    with pytest.raises(WorklistRefused, match=r"20 rows for https://fhir.example.test/r4"):
        open_worklist(worklist, "https://other.example.test/r4")
    assert open_worklist(worklist, "HTTPS://FHIR.example.test:443/r4/").rows == HIV_FINDINGS
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    table = pq.read_table(worklist)
    pq.write_table(table, mixed / "part-0.parquet")
    other = table.set_column(0, "server", pa.array([FILES_SERVER] * table.num_rows))
    pq.write_table(other.slice(0, 1), mixed / "part-1.parquet")
    (mixed / "_SUCCESS").write_text("")
    with pytest.raises(WorklistRefused, match="1 rows made from files"):
        open_worklist(mixed, BASE)


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("FHIRSVC_FHIR_TOKEN", "t0ken")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@respx.mock(assert_all_called=False)
def test_write_back_command_refuses_another_servers_worklist_and_writes_nothing(worklist: Path, cli_env: None) -> None:
    route = respx.route()
    refused = runner.invoke(app, ["write-back", str(worklist), "--fhir-server", "https://other.example.test/r4"])
    assert refused.exit_code == 2 and "another server" in refused.stderr and "nothing was written" in refused.stderr
    assert not route.called


def test_write_back_command_writes_prints_the_summary_and_fails_on_a_failed_batch(
    worklist: Path, cli_env: None
) -> None:
    server = FakeServer(lambda: 0.0)
    server.refuse = {pq.read_table(worklist).column("finding_id")[0].as_py()}
    with respx.mock(assert_all_called=False) as mock:
        mock.post(BASE).mock(side_effect=server)
        result = runner.invoke(app, ["write-back", str(worklist), "--fhir-server", BASE, "--rate", "100"])
    assert result.exit_code == 1, result.output
    assert f"{HIV_FINDINGS} worklist rows: {HIV_FINDINGS - 1} findings written" in result.stdout
    assert "1 failed batches (1 findings not written)" in result.stdout
    assert all(request.headers["Authorization"] == "Bearer t0ken" for request, _ in mock.calls)
    server.refuse = set()
    with respx.mock(assert_all_called=False) as mock:
        mock.post(BASE).mock(side_effect=server)
        again = runner.invoke(app, ["write-back", str(worklist), "--fhir-server", BASE])
    assert again.exit_code == 0, again.output
    assert "1 findings written" in again.stdout and f"{HIV_FINDINGS - 1} skipped" in again.stdout


def test_population_write_back_needs_the_server_and_refuses_a_files_worklist(tmp_path: Path, cli_env: None) -> None:
    out = tmp_path / "w.parquet"
    refused = runner.invoke(app, ["population", str(FIXTURES / "hiv"), "--out", str(out), "--write-back"])
    assert refused.exit_code == 2 and "--write-back needs --fhir-server" in refused.stderr
    assert not out.exists()
    made = runner.invoke(app, ["population", str(FIXTURES / "hiv"), "--out", str(out), "--as-of", "2026-06-01"])
    assert made.exit_code == 0, made.output
    files = runner.invoke(app, ["write-back", str(out), "--fhir-server", BASE])
    assert files.exit_code == 2 and "made from files (no --fhir-server)" in files.stderr


def test_population_write_back_writes_the_worklist_it_made(tmp_path: Path, cli_env: None) -> None:
    server = FakeServer(lambda: 0.0)
    out = tmp_path / "w.parquet"
    with respx.mock(assert_all_called=False) as mock:
        mock.post(BASE).mock(side_effect=server)
        result = runner.invoke(
            app,
            [
                *("population", str(FIXTURES / "hiv"), "--out", str(out), "--as-of", "2026-06-01"),
                *("--fhir-server", BASE, "--write-back", "--batch", "5", "--rate", "50"),
            ],
        )
    assert result.exit_code == 0, result.output
    assert "worklist written to" in result.stdout
    assert f"{HIV_FINDINGS} findings written" in result.stdout and len(server.posts) == 4
