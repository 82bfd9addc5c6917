"""Findings sent as one idempotent FHIR transaction, then recorded in the store's `writebacks` table.

The two steps are apart so a caller can put its crash failpoints between them: a crash after the server's commit
and before the store write is covered by If-None-Exist (resending creates nothing) and, for a conditional create
that races an identical one, by `written_already`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fhirsvc.config import Settings
from fhirsvc.fhir.client import FhirClient
from fhirsvc.fhir.errors import FhirResponseError
from fhirsvc.findings import Finding
from fhirsvc.render.writeback import Target, created_references, finding_of, transaction
from fhirsvc.store.db import Store
from fhirsvc.store.repository import open_writeback_identifiers, upsert_writeback


@dataclass(frozen=True, slots=True)
class Sent:
    """What the server made of one transaction of findings."""

    references: dict[str, dict[str, str]]  # finding id → {resource type: server reference}
    created: frozenset[str] = field(default_factory=frozenset)  # findings with at least one part created now
    conflict_resolved: bool = False  # the create lost a race with an identical one: found by identifier instead


def failpoint(settings: Settings, name: str, count: int) -> None:
    """Test-only crash injection: exit hard (no cleanup, like a kill) when `name:count` is configured."""
    if f"{name}:{count}" in settings.failpoints:
        os._exit(70)


def unrecorded(store: Store, server: str, findings: Iterable[Finding]) -> list[Finding]:
    """The findings the store does not record as written and open on `server`, in their order, each id once."""
    wanted = list({f.id: f for f in findings}.values())
    with store.session() as session:
        recorded = open_writeback_identifiers(session, server, [f.id for f in wanted])
    return [f for f in wanted if f.id not in recorded]


async def send_findings(
    client: FhirClient,
    findings: list[Finding],
    target: Target,
    token: str | None,
    evidence: dict[str, dict[str, Any]] | None = None,
    retry: bool = False,
) -> Sent:
    """POST the findings as one transaction of conditional creates (`render.writeback.transaction`)."""
    bundle = transaction(findings, target, evidence)
    try:
        answer = await client.post_json("", bundle, token, retry=retry)
    except FhirResponseError as exc:
        if not creation_conflict(exc):
            raise
        return Sent(await written_already(client, bundle, token, exc), conflict_resolved=True)
    return Sent(created_references(bundle, answer), created_now(bundle, answer))


def record_findings(store: Store, server: str, findings: list[Finding], sent: Sent) -> None:
    """Record each finding as written and open: the poller skips it from now on and closes its Task once it no
    longer holds; the worklist job skips it on a re-run."""
    with store.session() as session:
        for finding in findings:
            upsert_writeback(
                session,
                finding.id,
                server,
                finding.patient,
                finding.program,
                finding.rule,
                sent.references.get(finding.id, {}),
            )


def created_now(bundle: dict[str, Any], answer: dict[str, Any]) -> frozenset[str]:
    """Finding ids with a part the server created (201) rather than found by If-None-Exist (200): a transaction
    response's entries answer the request entries in order (https://hl7.org/fhir/R4/http.html#transaction-response)."""
    created = set()
    for sent, got in zip(bundle["entry"], answer.get("entry") or [], strict=False):
        status = str((got.get("response") or {}).get("status", "")) if isinstance(got, dict) else ""
        if status.startswith("201"):
            created.add(finding_of(sent["resource"]))
    return frozenset(created)


def creation_conflict(exc: FhirResponseError) -> bool:
    """A conditional create that lost a race with an identical one: 409 Conflict or 412 Precondition Failed on
    If-None-Exist (https://hl7.org/fhir/R4/http.html#ccreate: "multiple matches" is 412), or HAPI's HAPI-2745 for
    two creates of one match URL committed at once."""
    return exc.status in (409, 412) or "HAPI-2745" in str(exc)


async def written_already(
    client: FhirClient, bundle: dict[str, Any], token: str | None, conflict: FhirResponseError
) -> dict[str, dict[str, str]]:
    """finding id → {resource type: reference} of a transaction's resources found on the server by identifier (the
    same shape as `created_references`); the conflict is raised again when any of them is not there."""
    refs: dict[str, dict[str, str]] = {}
    for entry in bundle["entry"]:
        resource_type = entry["resource"]["resourceType"]
        found = await client.search(f"{resource_type}?{entry['request']['ifNoneExist']}", token)
        if not found.resources:
            raise conflict
        # The oldest copy is the one every earlier write and reference used.
        first = min(found.resources, key=lambda r: str((r.get("meta") or {}).get("lastUpdated", "")))
        refs.setdefault(finding_of(entry["resource"]), {})[resource_type] = f"{resource_type}/{first['id']}"
    return refs
