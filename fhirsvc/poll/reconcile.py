"""Reconciliation: the write-backs the store believes open are looked up on the server by identifier, in batches.

A restore from backup, a reset or a commit the server lost leaves the store naming resources the server no longer
has (or has under other ids). Each write-back part is searched by its identifier (`Task?identifier=a,b,c`); a part
found under another id repairs the stored reference; a write-back with a part not found is marked missing, so the
next evaluation of its patient writes it again with the same conditional-create transaction (nothing twice).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fhirsvc.fhir.client import FhirClient
from fhirsvc.render.writeback import FINDING_SYSTEM, PART_SUFFIX, is_part_of, part_identifier
from fhirsvc.store.db import Store
from fhirsvc.store.models import WriteBack
from fhirsvc.store.repository import MISSING, server_open_writebacks

log = logging.getLogger(__name__)

# Identifiers per search: ~60 characters each keeps the URL far below the 8 KiB many servers and proxies accept.
BATCH = 50
# At least this many write-backs missing, and at least half of those checked (none at all right after a reset; the
# poller may already have written for patients loaded again since): the server's data was reset or restored from an
# older backup, not a few resources lost. Patient ids may then name other people, so only the patients this cycle
# evaluates anyway are written again; the others wait for their next change and are reported.
RESET_AT = 3


@dataclass
class Reconciliation:
    """What the server was found to hold of the write-backs the store believes open."""

    checked: int = 0  # write-backs looked up
    present: int = 0  # every part found
    repaired: int = 0  # parts found under another reference than the stored one (the store now names them)
    mismatched: int = 0  # parts carrying our identifier but naming another patient (not ours, not used)
    missing: int = 0  # write-backs with a part the server does not hold (marked missing, rewritten on evaluation)
    server_reset: bool = False  # most of many missing: the server's data was reset or restored
    rewrite: set[str] = field(default_factory=set)  # patient ids re-evaluated now to write their missing parts
    waiting: set[str] = field(default_factory=set)  # patient ids whose missing parts wait for their next change


async def reconcile(
    client: FhirClient, store: Store, server: str, token: str | None, changed: set[str]
) -> Reconciliation:
    """Look up every open write-back of `server`, repair references, mark what is missing. `changed`: the patient
    ids this cycle evaluates anyway (after a reset, the only ones rewritten)."""
    with store.session() as session:
        rows = {w.identifier: (w.patient, dict(w.resources)) for w in server_open_writebacks(session, server)}
    wanted: dict[str, dict[str, tuple[str, str]]] = {}  # type → part identifier → (write-back, patient)
    for finding_id, (patient, resources) in rows.items():
        for resource_type in resources:
            if resource_type in PART_SUFFIX:  # ServiceRequests are numbered parts the store does not list
                wanted.setdefault(resource_type, {})[part_identifier(finding_id, resource_type)] = (finding_id, patient)
    found: dict[tuple[str, str], str] = {}  # (finding id, type) → reference
    result = Reconciliation(checked=len(rows))
    for resource_type, parts in wanted.items():
        values = sorted(parts)
        for start in range(0, len(values), BATCH):
            batch = values[start : start + BATCH]
            query = f"{resource_type}?identifier={','.join(f'{FINDING_SYSTEM}|{v}' for v in batch)}&_count={BATCH}"
            for resource in (await client.search(query, token)).resources:
                for value in _our_values(resource):
                    if value not in parts or not isinstance(resource.get("id"), str):
                        continue
                    finding_id, patient = parts[value]
                    if is_part_of(resource, resource_type, value, patient):
                        found[(finding_id, resource_type)] = f"{resource_type}/{resource['id']}"
                    else:
                        result.mismatched += 1
    held = {
        finding_id: {t: found.get((finding_id, t)) for t in resources if t in PART_SUFFIX}
        for finding_id, (_patient, resources) in rows.items()
    }
    missing = sum(not all(parts.values()) for parts in held.values())
    result.server_reset = missing >= RESET_AT and 2 * missing >= len(rows)
    with store.session() as session:
        for finding_id, (patient, resources) in rows.items():
            row = session.get(WriteBack, finding_id)
            if row is None:
                continue
            if all(held[finding_id].values()):
                result.present += 1
                repaired = {t: r for t, r in held[finding_id].items() if r is not None and r != resources[t]}
                if repaired:
                    result.repaired += len(repaired)
                    row.resources = {**resources, **repaired}
                continue
            result.missing += 1
            row.status = MISSING
            patient_id = patient.removeprefix("Patient/")
            rewrite_now = patient_id in changed or not result.server_reset
            (result.rewrite if rewrite_now else result.waiting).add(patient_id)
    if result.server_reset:
        log.warning(
            "the FHIR server lacks %d of the %d write-backs the store believes open: its data was reset or restored. "
            "Patients changed since are written again; %d others wait for their next change",
            result.missing,
            result.checked,
            len(result.waiting),
        )
    elif result.missing or result.repaired:
        log.warning(
            "reconciliation: %d of %d write-backs missing on the server (written again now), %d references repaired",
            result.missing,
            result.checked,
            result.repaired,
        )
    return result


def _our_values(resource: dict[str, object]) -> list[str]:
    identifiers = resource.get("identifier")
    return [
        str(i["value"])
        for i in (identifiers if isinstance(identifiers, list) else ())
        if isinstance(i, dict) and i.get("system") == FINDING_SYSTEM and isinstance(i.get("value"), str)
    ]
