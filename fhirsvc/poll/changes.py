"""Which patients changed since the cursor: `_lastUpdated` searches per resource type, with an overlap window."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from fhirsvc.fhir.client import FhirClient
from fhirsvc.fhir.quirks import adaptive_search
from fhirsvc.record.model import PATIENT_TYPES, filing_patient

# Every type of the record definition: a new result, order, allergy or a death recorded on the Patient all change
# what the patient's findings should be.
POLLED_TYPES = PATIENT_TYPES


@dataclass
class Changes:
    patients: set[str] = field(default_factory=set)  # plain ids
    cursors: dict[str, str] = field(default_factory=dict)  # resource type → newest meta.lastUpdated seen
    resources: int = 0
    truncated: bool = False


def since_parameter(cursor: str, overlap: timedelta) -> str:
    """Step back by the overlap: servers commit out of order, so a late commit can carry an older timestamp."""
    instant = datetime.fromisoformat(cursor.replace("Z", "+00:00")) - overlap
    return instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def changed_patients(
    client: FhirClient,
    cursors: dict[str, str | None],
    overlap: timedelta,
    since: str | None,
    token: str | None,
    max_pages: int,
) -> Changes:
    """Patients with a changed resource of a polled type; the new cursors are the newest timestamps seen.

    Repeats caused by the overlap are harmless: re-evaluation and write-back are idempotent.
    """
    changes = Changes()
    for resource_type in POLLED_TYPES:
        cursor = cursors.get(resource_type)
        start = since_parameter(cursor, overlap) if cursor else since
        query = f"{resource_type}?_sort=_lastUpdated&_count=100"
        if start:
            query += f"&_lastUpdated=ge{start}"
        result = await adaptive_search(client, query, token, max_pages)
        changes.truncated |= result.truncated
        newest = cursor
        for resource in result.resources:
            changes.resources += 1
            patient, _ = filing_patient(resource)
            if patient is not None:
                changes.patients.add(patient.partition("/")[2])
            updated = (resource.get("meta") or {}).get("lastUpdated")
            if isinstance(updated, str) and (newest is None or _instant(updated) > _instant(newest)):
                newest = updated
        if newest:
            changes.cursors[resource_type] = newest
    return changes


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
