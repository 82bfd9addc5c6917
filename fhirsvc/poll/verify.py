"""Updates of our write-backs that first prove the target is ours (identifier and patient) and still as read."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from fhirsvc.fhir.client import FhirClient
from fhirsvc.fhir.errors import FhirNotFound, FhirResponseError
from fhirsvc.render.writeback import FINDING_SYSTEM, closed_task, is_part_of

log = logging.getLogger(__name__)

OPEN_TASK_STATUSES = frozenset({"draft", "requested", "received", "accepted", "ready", "in-progress"})
# A version-aware update refused because the resource changed since it was read: 412 per the FHIR spec
# (https://hl7.org/fhir/R4/http.html#concurrency); HAPI answers 409 (ResourceVersionConflictException).
VERSION_CONFLICT = frozenset({409, 412})
# "edited-…": our update was refused once because someone saved the Task after our read.
CloseOutcome = Literal["closed", "not-open", "edited-closed", "edited-then-closed", "conflict"]


@dataclass(frozen=True, slots=True)
class Located:
    """Where our write-back part is on the server, as proven by reading it."""

    reference: str | None  # "Task/<id>" of the resource that is ours; None when the server holds none
    resource: dict[str, Any] | None
    mismatched: bool  # the stored reference named something else: another patient's or finding's resource
    repaired: bool  # the resource was found by identifier under another reference than the stored one


async def locate(
    client: FhirClient, token: str | None, resource_type: str, identifier: str, patient: str, stored: str | None
) -> Located:
    """Read the stored reference and keep it only when the resource carries our identifier and patient; otherwise
    search our identifier (`Task?identifier=urn:fhirsvc:finding|<id>-task`)."""
    mismatched = False
    if stored:
        try:
            resource: dict[str, Any] | None = await client.get_json(stored, token)
        except FhirNotFound:  # deleted, or never on this server: not a mismatch, only gone
            resource = None
        if resource is not None:
            if is_part_of(resource, resource_type, identifier, patient):
                return Located(stored, resource, mismatched=False, repaired=False)
            mismatched = True
            log.warning(
                "a stored %s reference names another resource than this write-back; searching it", resource_type
            )
    found = await client.search(f"{resource_type}?identifier={FINDING_SYSTEM}|{identifier}", token)
    ours = [
        r for r in found.resources if is_part_of(r, resource_type, identifier, patient) and isinstance(r.get("id"), str)
    ]
    if not ours:
        return Located(None, None, mismatched=mismatched, repaired=False)
    reference = f"{resource_type}/{ours[0]['id']}"
    return Located(reference, ours[0], mismatched=mismatched, repaired=reference != stored)


def version_of(resource: dict[str, Any]) -> str | None:
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    return version if isinstance(version, str) and version else None


async def close_task(
    client: FhirClient,
    token: str | None,
    located: Located,
    identifier: str,
    patient: str,
    completed: bool,
    reason: str,
) -> CloseOutcome:
    """Close our open Task with `If-Match` on the version read. A refused update (someone edited it meanwhile) is
    never forced: the Task is read once more; left alone when it is no longer open ("edited-closed"), closed on the
    new version when it still is ("edited-then-closed": the edit is kept, only status and reason change), "conflict"
    when that is refused too."""
    assert located.reference is not None and located.resource is not None
    task, conflicted = located.resource, False
    for _attempt in range(2):
        if task.get("status") not in OPEN_TASK_STATUSES:
            return "edited-closed" if conflicted else "not-open"
        try:
            # No versionId (a server without versioning): a plain update is all the server offers.
            await client.put_json(
                located.reference, closed_task(task, completed, reason), token, if_match=version_of(task)
            )
            return "edited-then-closed" if conflicted else "closed"
        except FhirResponseError as exc:
            if exc.status not in VERSION_CONFLICT:
                raise
        conflicted = True
        log.warning("a Task changed between read and update; read again, not overwritten")
        task = await client.get_json(located.reference, token)
        if not is_part_of(task, "Task", identifier, patient):
            return "conflict"
    return "conflict"
