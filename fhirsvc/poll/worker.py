"""The poll cycle: changed patients → record → evaluation → write-back → stored state → cursor (in that order).

The cursor advances only after every changed patient's write-back is committed, so a crash at any step is
followed by a re-run of the same window: write-backs are idempotent (If-None-Exist on finding identifiers) and
states are stored only when they differ, so nothing is duplicated and no patient is missed.

Several pollers share a store through leases (poll/leases.py): each changed patient is evaluated by one of them. A
server that stops answering opens a circuit: after `CIRCUIT_FAILURES` patients in a row lost to server faults the
cycle ends, the cursor stays, and the next cycle resumes from it.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, TextIO

import orjson

from fhirsvc.config import Settings
from fhirsvc.fhir.client import FhirClient, FhirClientPool
from fhirsvc.fhir.errors import FhirError, FhirUnsafeLink
from fhirsvc.findings import Finding
from fhirsvc.pipeline import PatientResult, evaluate_record
from fhirsvc.poll.bulk import BulkExportFailed, bulk_export, supports_export
from fhirsvc.poll.changes import POLLED_TYPES, Changes, changed_patients
from fhirsvc.poll.leases import Leases, process_owner
from fhirsvc.poll.reconcile import Reconciliation, reconcile
from fhirsvc.poll.verify import close_task, locate
from fhirsvc.record.gather import UPSTREAM_FAULTS, DataUnavailable, fetch_patient
from fhirsvc.record.model import PatientRecord, RecordBuilder
from fhirsvc.render.evidence import document_reference, evidence_document
from fhirsvc.render.report import patient_report
from fhirsvc.render.writeback import part_identifier
from fhirsvc.step_therapy import evidence_for
from fhirsvc.store.db import Store
from fhirsvc.store.models import WriteBack
from fhirsvc.store.repository import (
    get_cursor,
    latest_state,
    now,
    save_state,
    set_cursor,
    unclosed_writebacks,
)
from fhirsvc.terminology.knowledge import Knowledge
from fhirsvc.writing.transactions import failpoint, record_findings, send_findings, unrecorded

log = logging.getLogger(__name__)

# Patients in a row lost to server faults (transport errors, 5xx after the client's retries, unreadable answers, a
# required search that failed) before the cycle gives up: each costs the client's full retry schedule.
CIRCUIT_FAILURES = 3
# How long a lease holds without renewal: longer than one patient's evaluation, short enough that a poller on
# another host takes over soon after one dies (a dead process of the same host is taken over at once).
LEASE_SECONDS = 300.0


@dataclass
class CycleReport:
    patients: int = 0
    changed_states: int = 0
    written: int = 0
    writeback_batches: int = 0  # patients whose findings were written (counts failpoints)
    closed: int = 0
    failed: list[str] = field(default_factory=list)
    resources_seen: int = 0
    incomplete: list[str] = field(default_factory=list)  # patients evaluated on a search cut short
    # Write-back safety: stored references that named another resource, replaced by the one found by identifier;
    # updates refused because someone edited the resource meanwhile (never overwritten).
    mismatched: int = 0
    repaired: int = 0
    conflicts: int = 0
    reconciliation: Reconciliation | None = None  # with reconcile: what the server was found to hold
    evaluated: list[str] = field(default_factory=list)  # patients this poller evaluated (or tried to)
    elsewhere: list[str] = field(default_factory=list)  # patients another poller evaluated or is evaluating
    deferred: list[str] = field(default_factory=list)  # of those, still in progress there: the cursor stays
    conflicts_resolved: int = 0  # conditional creates that lost a race: found already written by identifier
    circuit_open: str | None = None  # why the cycle ended early (the server stopped answering)
    not_attempted: int = 0  # patients left for the next cycle when the circuit opened


class Progress:
    """Patients done, rate and time left, at most once a second (long backfills)."""

    def __init__(self, total: int, out: TextIO) -> None:
        self.total, self.out, self.start, self.last = total, out, time.monotonic(), 0.0

    def step(self, done: int) -> None:
        elapsed = time.monotonic() - self.start
        if done < self.total and elapsed - self.last < 1.0:
            return
        self.last = elapsed
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (self.total - done) / rate if rate > 0 else 0.0
        self.out.write(f"\r{done}/{self.total} patients, {rate:.1f}/s, {left:.0f} s left")
        if done >= self.total:
            self.out.write("\n")
        self.out.flush()


def fingerprint(program_report: dict[str, Any]) -> str:
    """What makes a state different: lines and findings, not the evaluation date."""
    essential = {
        "lines": program_report["lines"],
        "assessments": [(a["rule"], a["status"], a["evidence"]) for a in program_report["assessments"]],
    }
    return hashlib.sha256(orjson.dumps(essential, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Poller:
    def __init__(
        self,
        settings: Settings,
        knowledge: Knowledge,
        store: Store,
        pool: FhirClientPool,
        owner: str | None = None,
        circuit_failures: int = CIRCUIT_FAILURES,
    ) -> None:
        self.settings, self.knowledge, self.store, self.pool = settings, knowledge, store, pool
        self.leases = Leases(store, owner or process_owner(), LEASE_SECONDS)
        self.circuit_failures = circuit_failures

    def release(self, server: str) -> None:
        """Give up the whole-server lease (SQLite) when the poller stops, so the next one need not wait it out."""
        self.leases.release_server(self.pool.client(server).base_url)

    async def cycle(
        self,
        server: str,
        token: str | None = None,
        since: str | None = None,
        as_of: date | None = None,
        out: TextIO = sys.stderr,
        reconcile: bool = False,
    ) -> CycleReport:
        client = self.pool.client(server)
        server = client.base_url
        started = now()
        self.leases.hold_server(server, started)  # SQLite: raises PollerBusy while another poller runs
        with self.store.session() as session:
            cursors = {t: get_cursor(session, server, t) for t in POLLED_TYPES}
        day = as_of or self.settings.today or date.today()
        exported = await self._backfill(client, token, since) if not any(cursors.values()) else None
        if exported is not None:
            changes, records = exported
        else:
            overlap = timedelta(seconds=self.settings.poll_overlap_seconds)
            changes = await changed_patients(client, cursors, overlap, since, token, self.settings.fhir_max_pages)
            records = {}
        report = CycleReport(resources_seen=changes.resources)
        if reconcile:
            changes.patients |= await self._reconcile(client, server, token, changes.patients, report)
        patients = sorted(changes.patients)
        progress = Progress(len(patients), out)
        faults_in_a_row = 0
        renewed = time.monotonic()
        for done, patient_id in enumerate(patients, 1):
            if time.monotonic() - renewed > LEASE_SECONDS / 3:  # a long backfill outlasts the lease: renew it
                self.leases.hold_server(server, started)
                renewed = time.monotonic()
            report.patients = done
            if not self.leases.claim_patient(server, patient_id, started):
                report.elsewhere.append(patient_id)
                if self.leases.held_elsewhere(server, patient_id):
                    report.deferred.append(patient_id)
                progress.step(done)
                continue
            report.evaluated.append(patient_id)
            evaluated = False
            try:
                await self._patient(client, server, patient_id, token, day, report, records.get(patient_id))
                evaluated = True
                faults_in_a_row = 0
            except (DataUnavailable, FhirError) as exc:
                # Not advancing past a patient we could not read: the cursor stays, the next cycle retries.
                report.failed.append(patient_id)
                log.warning("patient could not be evaluated (%s)", type(exc).__name__)
                faults_in_a_row = faults_in_a_row + 1 if isinstance(exc, (DataUnavailable, *UPSTREAM_FAULTS)) else 0
            finally:
                self.leases.finish_patient(server, patient_id, done=evaluated)
            failpoint(self.settings, "after-patient", done)
            progress.step(done)
            if faults_in_a_row >= self.circuit_failures:
                report.not_attempted = len(patients) - done
                report.circuit_open = (
                    f"the FHIR server failed {faults_in_a_row} patients in a row; cycle ended early with "
                    f"{report.not_attempted} patients not attempted (the cursor stays: the next cycle resumes there)"
                )
                log.warning("circuit open: %s", report.circuit_open)
                break
        if not report.failed and not report.deferred:
            with self.store.session() as session:
                for resource_type, cursor in changes.cursors.items():
                    set_cursor(session, server, resource_type, cursor)
        return report

    async def _backfill(
        self, client: FhirClient, token: str | None, since: str | None
    ) -> tuple[Changes, dict[str, PatientRecord]] | None:
        """First run on a server that offers Bulk Data: one `$export` instead of a search per resource type.

        None (backfill with searches instead) when the server offers no export or the export fails: a malformed
        manifest, a file off the server, a fault. What a failed export delivered is dropped, never half-used.
        """
        try:
            capability = await client.get_json("metadata", token)
        except FhirError:
            return None
        if not supports_export(capability):
            return None
        builder = RecordBuilder()  # resources go in line by line as the files stream
        try:
            export = await bulk_export(client, client.http, token, builder.add_resource, since)
        except FhirError as exc:
            # Our own messages name what is wrong and never a URL (signed storage links carry credentials); a
            # server's answer may quote patient data, so only its class is logged.
            reason = str(exc) if isinstance(exc, (BulkExportFailed, FhirUnsafeLink)) else type(exc).__name__
            log.warning("bulk export failed, backfilling with searches instead: %s", reason)
            return None
        if export.skipped_lines:
            log.warning("bulk export: %d lines were not FHIR resources and were skipped", export.skipped_lines)
        records = {record.patient_id: record for record in builder.build()}
        changes = Changes(patients=set(records), resources=export.resources)
        if export.transaction_time:
            changes.cursors = {t: export.transaction_time for t in POLLED_TYPES}
        return changes, records

    async def _patient(
        self,
        client: FhirClient,
        server: str,
        patient_id: str,
        token: str | None,
        day: date,
        report: CycleReport,
        record: PatientRecord | None = None,
    ) -> None:
        if record is None:
            gathered = await fetch_patient(self.pool, server, patient_id, token, self.settings.fhir_max_pages)
            if gathered.failed:  # an optional search failed: the data exists but was not read; retry next cycle
                raise DataUnavailable(gathered.failed)
            record = gathered.record
        result = evaluate_record(record, self.knowledge, day)
        if result.incomplete:
            report.incomplete.append(patient_id)
        findings = result.actionable
        target = self.settings.writeback_target
        new = unrecorded(self.store, server, findings)
        if new and target != "off":
            attached = self._evidence(record, result, new) if self.settings.writeback_evidence else {}
            sent = await send_findings(client, new, target, token, attached)
            report.conflicts_resolved += sent.conflict_resolved
            record_findings(self.store, server, new, sent)
            report.written += len(new)
            report.writeback_batches += 1
            failpoint(self.settings, "after-writeback", report.writeback_batches)
        if not result.incomplete or result.death:
            # On partial data a finding that no longer shows may still hold: nothing is closed until it is read whole.
            await self._close_resolved(client, server, result, {f.id for f in findings}, token, report)
        self._save_states(server, result, day, report)

    async def _reconcile(
        self, client: FhirClient, server: str, token: str | None, changed: set[str], report: CycleReport
    ) -> set[str]:
        """Check the store's open write-backs against the server; the patients (ids) to re-evaluate for a rewrite."""
        found = await reconcile(client, self.store, server, token, changed)
        report.reconciliation, report.repaired = found, report.repaired + found.repaired
        report.mismatched += found.mismatched
        return found.rewrite

    def _evidence(
        self, record: PatientRecord, result: PatientResult, findings: list[Finding]
    ) -> dict[str, dict[str, Any]]:
        """For each next-line finding of a program with step therapy, the first-line evidence on file as a
        DocumentReference (finding id → resource), so the worklist Task carries what an insurer will ask for."""
        attached: dict[str, dict[str, Any]] = {}
        for finding in findings:
            if finding.status not in ("second-line-evaluation", "next-line-evaluation"):
                continue
            evidence = evidence_for(record, result, self.knowledge, finding.program, [])
            if evidence is None or not evidence.trials:
                continue
            stamp = f"{result.as_of.isoformat()}T00:00:00Z"  # the evaluation date: the same document on a re-run
            document = evidence_document(evidence, self.knowledge.catalog, stamp)
            reference = document_reference(evidence, document, result.as_of)
            if reference is not None:
                attached[finding.id] = reference
        return attached

    async def _close_resolved(
        self,
        client: FhirClient,
        server: str,
        result: PatientResult,
        current: set[str],
        token: str | None,
        report: CycleReport,
    ) -> None:
        with self.store.session() as session:
            stale = [w for w in unclosed_writebacks(session, server, result.patient) if w.identifier not in current]
            lines = {p.program.id: p.current_line.number if p.current_line else None for p in result.programs}
            previous = {w.identifier: latest_state(session, server, result.patient, w.program) for w in stale}
        death = result.death
        for writeback in stale:
            before = previous[writeback.identifier]
            switched = before is not None and lines.get(writeback.program) not in (None, before.current_line)
            if death is not None:
                switched = False
                reason = f"Patient deceased{f' on {death.date.isoformat()}' if death.date else ''}"
            elif switched:
                reason = f"Switched to line {lines.get(writeback.program)}"
            else:
                reason = "Finding no longer holds on re-evaluation (e.g. results back in range)"
            if "Task" in writeback.resources and not await self._close_task(
                client, token, writeback, switched, reason, report
            ):
                continue  # edited concurrently and still open: left as it is, tried again next cycle
            with self.store.session() as session:
                row = session.get(WriteBack, writeback.identifier)
                if row is not None:
                    row.status, row.closed_at, row.close_reason = "closed", now(), reason
            report.closed += 1

    async def _close_task(
        self,
        client: FhirClient,
        token: str | None,
        writeback: WriteBack,
        switched: bool,
        reason: str,
        report: CycleReport,
    ) -> bool:
        """Close the write-back's Task only once it is proven ours (identifier and patient), repairing a stored
        reference that named another resource; False when a concurrent edit left it open."""
        identifier = part_identifier(writeback.identifier, "Task")
        # A write-back marked missing was not found by identifier: its stored reference is known not to be ours.
        stored = writeback.resources.get("Task") if writeback.status == "open" else None
        located = await locate(client, token, "Task", identifier, writeback.patient, stored)
        report.mismatched += int(located.mismatched)
        if located.repaired and located.reference is not None:
            report.repaired += 1
            with self.store.session() as session:
                row = session.get(WriteBack, writeback.identifier)
                if row is not None:
                    row.resources = {**row.resources, "Task": located.reference}
        if located.reference is None:
            return True  # the server holds no Task of this finding: nothing to close there
        outcome = await close_task(client, token, located, identifier, writeback.patient, switched, reason)
        if outcome in ("edited-closed", "edited-then-closed", "conflict"):
            report.conflicts += 1
        return outcome != "conflict"

    def _save_states(self, server: str, result: PatientResult, day: date, report: CycleReport) -> None:
        item = patient_report(result)
        with self.store.session() as session:
            for program in item["programs"]:
                if save_state(session, server, result.patient, program["program"], day, program, fingerprint(program)):
                    report.changed_states += 1
