"""The worklist written back to its FHIR server: streamed, batched as transactions, rate-limited, resumable.

The driver does it alone, not the Spark partitions: the rate limit is one per server, and so is the store's
write-back journal that makes a re-run skip what is written (the poller reads the same journal to close Tasks).
A crash between the server's commit and the journal write is covered by If-None-Exist: resending creates nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from aiolimiter import AsyncLimiter

from fhirsvc.config import Settings
from fhirsvc.fhir.client import FhirClient
from fhirsvc.fhir.errors import FhirAuthError, FhirBadRequest, FhirError
from fhirsvc.fhir.resources import InvalidResource
from fhirsvc.fhir.urls import normalise_base_url
from fhirsvc.findings import Finding
from fhirsvc.population.worklist import UnknownFinding, finding_from_row
from fhirsvc.render.writeback import Target
from fhirsvc.store.db import Store
from fhirsvc.terminology.knowledge import Knowledge
from fhirsvc.writing.bounds import DEFAULT_BATCH, DEFAULT_RATE, MAX_BATCH, MAX_RATE
from fhirsvc.writing.transactions import failpoint, record_findings, send_findings, unrecorded

log = logging.getLogger(__name__)

CIRCUIT_FAILURES = 3  # transactions in a row failed for good (after the client's retries) before the run stops
READ_ROWS = 4096  # worklist rows per Arrow record batch read: memory stays flat however long the worklist is
PROGRESS_EVERY_S = 1.0
REQUIRED_COLUMNS = ("server", "finding_id", "finding")
SUCCESS_MARKER = "_SUCCESS"  # what a finished Spark write leaves in its output directory


def client_settings(settings: Settings) -> Settings:
    """The FHIR client's settings for the write-back: no caller waits on a batch job, so it waits out a longer
    Retry-After (FHIRSVC_WRITEBACK_MAX_RETRY_AFTER) than a CDS call can afford."""
    return settings.model_copy(update={"fhir_max_retry_after": settings.writeback_max_retry_after})


class WorklistRefused(ValueError):
    """The worklist cannot be written to this server: unreadable, or made for another server (or from files)."""


@dataclass(frozen=True, slots=True)
class Worklist:
    """A worklist checked against its target server: every row names it."""

    dataset: ds.Dataset
    server: str
    rows: int


def open_worklist(path: Path, server: str) -> Worklist:
    """Open a worklist (one Parquet file, or a directory of part files) and check, reading the `server` column
    only, that every row is for `server`; WorklistRefused before anything is written otherwise."""
    target = normalise_base_url(server)
    if not path.exists():
        raise WorklistRefused(f"{path}: no such file or directory")
    if path.is_dir() and not (path / SUCCESS_MARKER).exists():
        # Spark writes _SUCCESS last (Hadoop's FileOutputCommitter): without it the job failed or is still writing,
        # and the part files hold only some of the findings.
        raise WorklistRefused(f"{path}: no {SUCCESS_MARKER} marker: the run that wrote it did not finish")
    try:
        dataset = ds.dataset(path, format="parquet")
        missing = [c for c in REQUIRED_COLUMNS if c not in dataset.schema.names]
        if missing:
            raise WorklistRefused(f"{path}: not a worklist (no column {', '.join(missing)})")
        servers: Counter[str] = Counter()
        for batch in dataset.to_batches(columns=["server"], batch_size=READ_ROWS):
            for counted in pc.value_counts(batch.column("server")).to_pylist():
                servers[str(counted["values"])] += int(counted["counts"])
    except (OSError, pa.ArrowException) as exc:  # not Parquet, a damaged file, an unreadable directory
        raise WorklistRefused(f"{path}: not a readable Parquet worklist ({type(exc).__name__})") from None
    others = {name: count for name, count in servers.items() if _identity(name) != target}
    if others:
        named = ", ".join(
            f"{count:,} rows for {name}" if _identity(name) else f"{count:,} rows made from files (no --fhir-server)"
            for name, count in sorted(others.items())
        )
        raise WorklistRefused(
            f"{path}: the worklist holds findings of another server than {target} ({named}); a patient id names "
            f"another person on another server, so nothing was written. Make the worklist with "
            f"`fhirsvc population ... --fhir-server {target}`."
        )
    return Worklist(dataset, target, sum(servers.values()))


def _identity(server: str) -> str | None:
    """A worklist row's server as a server identity; None for the files marker (or anything not a base URL)."""
    try:
        return normalise_base_url(server)
    except ValueError:
        return None


@dataclass
class WriteBackSummary:
    """What a write-back run did, finding by finding."""

    rows: int = 0  # worklist rows read
    written: int = 0  # findings whose resources this run created
    already_there: int = 0  # findings the server already held (If-None-Exist matched: e.g. a crash before recording)
    skipped: int = 0  # findings the store records as written (an earlier run, the poller), or repeated: not sent
    unreadable: int = 0  # rows whose finding the loaded mappings cannot rebuild, skipped
    transactions: int = 0  # transactions the server committed
    failed_batches: int = 0  # transactions refused or failing for good (after the client's retries)
    failed_findings: int = 0  # findings of those batches not written (a re-run tries them again)
    not_attempted: int = 0  # rows left unread, or read and not sent, when the run stopped early
    stopped: str | None = None  # why the run stopped early

    @property
    def ok(self) -> bool:
        return self.failed_batches == 0 and self.stopped is None

    def lines(self) -> list[str]:
        out = [
            f"{self.rows:,} worklist rows: {self.written:,} findings written, {self.already_there:,} already on the "
            f"server, {self.skipped:,} skipped (recorded as written before), {self.unreadable:,} unreadable rows "
            f"skipped; {self.transactions:,} transactions, {self.failed_batches:,} failed batches "
            f"({self.failed_findings:,} findings not written)"
        ]
        if self.stopped:
            out.append(f"stopped early: {self.stopped}; {self.not_attempted:,} rows not attempted")
        if not self.ok:
            out.append("what was written is recorded: run the same command again to write the rest")
        return out


def worklist_rows(worklist: Worklist) -> Iterator[tuple[str, str]]:
    """(finding id, finding document) of every row, streamed record batch by record batch."""
    for batch in worklist.dataset.to_batches(columns=["finding_id", "finding"], batch_size=READ_ROWS):
        yield from zip(batch.column("finding_id").to_pylist(), batch.column("finding").to_pylist(), strict=True)


class WorklistWriter:
    """Writes a checked worklist to its server through one client: one transaction at a time, at most `rate` per
    second (a leaky bucket of one: evenly spaced, no burst), each recorded in the store once the server committed."""

    def __init__(
        self,
        client: FhirClient,
        store: Store,
        knowledge: Knowledge,
        settings: Settings,
        target: Target,
        token: str | None = None,
        batch: int = DEFAULT_BATCH,
        rate: float = DEFAULT_RATE,
        progress: Callable[[str], None] = lambda _: None,
    ) -> None:
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be 1 to {MAX_BATCH} findings")
        if not 0 < rate <= MAX_RATE:
            raise ValueError(f"rate must be above 0 and at most {MAX_RATE:g} transactions per second")
        self.client, self.store, self.knowledge, self.settings = client, store, knowledge, settings
        self.target, self.token, self.batch, self.rate, self.progress = target, token, batch, rate, progress
        self.summary = WriteBackSummary()
        self._failures_in_a_row = 0

    async def run(self, worklist: Worklist) -> WriteBackSummary:
        if self.client.base_url != worklist.server:
            raise WorklistRefused(f"the worklist was checked for {worklist.server}, not {self.client.base_url}")
        limiter = AsyncLimiter(1, 1 / self.rate)
        loop = asyncio.get_running_loop()
        started = last = loop.time()
        summary = self.summary
        pending: dict[str, Finding] = {}  # read, not recorded, not sent yet: full transactions after a resume too
        for candidates in self._findings(worklist):
            new = unrecorded(self.store, worklist.server, candidates)
            summary.skipped += len(candidates) - len(new)
            for finding in new:
                pending.setdefault(finding.id, finding)
            while len(pending) >= self.batch and summary.stopped is None:
                await self._send(limiter, [pending.pop(key) for key in list(pending)[: self.batch]])
            if summary.stopped is not None:
                summary.not_attempted = worklist.rows - summary.rows + len(pending)
                break
            if loop.time() - last >= PROGRESS_EVERY_S:
                last = loop.time()
                self._report(worklist, last - started)
        else:
            if pending:
                await self._send(limiter, list(pending.values()))
        self._report(worklist, loop.time() - started)
        return summary

    def _findings(self, worklist: Worklist) -> Iterator[list[Finding]]:
        """The rows' findings, `batch` rows at a time; rows the loaded mappings cannot rebuild are counted."""
        chunk: list[Finding] = []
        for finding_id, document in worklist_rows(worklist):
            self.summary.rows += 1
            try:
                finding = finding_from_row(document, self.knowledge)
            except (UnknownFinding, ValueError, KeyError, TypeError) as exc:  # orjson's JSONDecodeError is a ValueError
                self.summary.unreadable += 1
                log.warning("worklist row skipped: its finding cannot be rebuilt (%s)", type(exc).__name__)
                continue
            if finding.id != finding_id:  # other mappings or another version rebuilt another finding: not ours
                self.summary.unreadable += 1
                log.warning("worklist row skipped: its finding rebuilds with another id (other mappings)")
                continue
            chunk.append(finding)
            if len(chunk) >= self.batch:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    async def _send(self, limiter: AsyncLimiter, findings: list[Finding]) -> None:
        """One transaction; one refused (400/422), or holding a resource that does not validate, is sent again
        finding by finding, so a bad finding costs only itself."""
        failed = await self._transaction(limiter, findings)
        answered = failed is None
        if isinstance(failed, (FhirBadRequest, InvalidResource)) and len(findings) > 1:
            log.warning("a transaction of %d findings was refused; sending them one by one", len(findings))
            alone = [await self._transaction(limiter, [finding]) for finding in findings]
            failed = next((error for error in alone if error is not None), None)
            answered = any(error is None for error in alone)  # the server works: a finding of ours is at fault
            self.summary.failed_findings += sum(error is not None for error in alone)
        elif failed is not None:
            self.summary.failed_findings += len(findings)
        self._failures_in_a_row = 0 if answered else self._failures_in_a_row + 1
        if failed is None:
            return
        self.summary.failed_batches += 1
        log.warning("a write-back batch failed: %s", type(failed).__name__)
        if isinstance(failed, FhirAuthError):
            self.summary.stopped = f"the FHIR server refused the credentials ({failed.status})"
        elif self._failures_in_a_row >= CIRCUIT_FAILURES:
            self.summary.stopped = f"{self._failures_in_a_row} batches in a row failed ({type(failed).__name__})"

    async def _transaction(self, limiter: AsyncLimiter, findings: list[Finding]) -> FhirError | InvalidResource | None:
        """Send and record one transaction; the error that failed it (after the client's retries), or None."""
        async with limiter:
            try:
                sent = await send_findings(self.client, findings, self.target, self.token, retry=True)
            except (FhirError, InvalidResource) as exc:
                return exc
        self.summary.transactions += 1
        failpoint(self.settings, "worklist-sent", self.summary.transactions)
        record_findings(self.store, self.client.base_url, findings, sent)  # the worklist's server: checked in run
        failpoint(self.settings, "worklist-recorded", self.summary.transactions)
        self.summary.written += len(sent.created)
        self.summary.already_there += len(findings) - len(sent.created)
        return None

    def _report(self, worklist: Worklist, elapsed: float) -> None:
        s = self.summary
        rate = s.written / elapsed if elapsed > 0 else 0.0
        self.progress(
            f"{s.rows:,}/{worklist.rows:,} rows, {s.written:,} written, {s.already_there:,} already there, "
            f"{s.skipped:,} skipped, {s.failed_batches:,} failed batches, {rate:,.1f} findings/s"
        )
