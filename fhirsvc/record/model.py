"""PatientRecord: one patient's resources as plain dicts, grouped by resource type."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import orjson

from fhirsvc.fhir.resource_types import FHIR_RESOURCE_TYPES

log = logging.getLogger(__name__)

Resource = dict[str, Any]

PATIENT_ID_TOKEN = "{{context.patientId}}"  # noqa: S105 (a CDS Hooks prefetch token, not a secret)


@dataclass(frozen=True)
class RecordPart:
    """One resource type of a patient record: how to search it, under which CDS Hooks prefetch key, and whether
    an evaluation can be trusted without it."""

    key: str
    resource_type: str
    search: str  # a read or search relative to the FHIR base, with PATIENT_ID_TOKEN for the patient
    required: bool = False

    def query(self, patient_id: str) -> str:
        return self.search.replace(PATIENT_ID_TOKEN, patient_id)


# What a patient record holds: every door (CDS prefetch templates and fetches, the poller's changed-patient
# searches and bulk export, file reading) reads exactly these types, plus the Medication resources that
# `medicationReference`s name. Templates use only {{context.patientId}}, the one token every CDS Hooks 2.0 client
# fills, and parameters of the 2.0 query subset (https://cds-hooks.hl7.org/2.0/#prefetch-template); _count saves
# round trips on servers that page at 20. Required: conditions, medication orders and results decide every finding.
# Optional: demographics (death is read when present), MedicationStatement (US Core and Cerner have none),
# MedicationAdministration (infusion records; many servers expose none), allergies and goals (they refine findings).
RECORD_PARTS: tuple[RecordPart, ...] = (
    RecordPart("patient", "Patient", f"Patient/{PATIENT_ID_TOKEN}"),
    RecordPart("conditions", "Condition", f"Condition?patient={PATIENT_ID_TOKEN}", required=True),
    RecordPart("medicationStatements", "MedicationStatement", f"MedicationStatement?patient={PATIENT_ID_TOKEN}"),
    RecordPart(
        "medicationRequests", "MedicationRequest", f"MedicationRequest?patient={PATIENT_ID_TOKEN}", required=True
    ),
    RecordPart(
        "medicationAdministrations",
        "MedicationAdministration",
        f"MedicationAdministration?patient={PATIENT_ID_TOKEN}&_count=200",
    ),
    RecordPart("observations", "Observation", f"Observation?patient={PATIENT_ID_TOKEN}&_count=200", required=True),
    RecordPart("allergies", "AllergyIntolerance", f"AllergyIntolerance?patient={PATIENT_ID_TOKEN}"),
    RecordPart("goals", "Goal", f"Goal?patient={PATIENT_ID_TOKEN}"),
)
RECORD_PART_BY_KEY = {part.key: part for part in RECORD_PARTS}
# The types searched per patient (the poller's changed-patient searches, the bulk export's _type with Medication).
PATIENT_TYPES: tuple[str, ...] = tuple(part.resource_type for part in RECORD_PARTS)
MEDICATION_TYPES = frozenset({"MedicationStatement", "MedicationRequest", "MedicationAdministration"})
# Resource types the pipeline reads; anything else in a bundle is ignored (not an error).
CLINICAL_TYPES = frozenset({*PATIENT_TYPES, "Medication"})


@dataclass
class PatientRecord:
    """A patient's clinical resources plus a count of entries skipped as malformed."""

    patient_id: str
    resources: dict[str, list[Resource]] = field(default_factory=lambda: defaultdict(list))
    skipped: int = 0
    planned: list[Resource] = field(default_factory=list)  # draft orders (order-select / order-sign)
    medications: dict[str, Resource] = field(default_factory=dict)  # "Medication/<id>" -> resource
    # Resource types that could not be read completely (a search cut short, a server fault), with the reason:
    # findings that depend on them are withheld, never decided as if the data were absent.
    incomplete: dict[str, str] = field(default_factory=dict)

    @property
    def reference(self) -> str:
        return f"Patient/{self.patient_id}"

    def of_type(self, resource_type: str) -> list[Resource]:
        return self.resources.get(resource_type, [])

    def add(self, resource: Resource) -> None:
        self.resources[resource["resourceType"]].append(resource)

    def medication(self, reference: str) -> Resource | None:
        """The Medication a `medicationReference` names, when the record carries it."""
        return self.medications.get(normalise_reference(reference))

    def in_canonical_order(self) -> PatientRecord:
        """The record with each type's resources in one order that does not depend on how they were read.

        Readers meet a patient's resources in whatever order files, partitions or a shuffle deliver them, and
        order can decide a finding (two results of one test on one day: the later one in the list is the latest).
        So every engine that files records from files sorts them here: by id, and by content where ids repeat.
        """
        for resources in self.resources.values():
            resources.sort(key=_resource_id)
            if any(_resource_id(a) == _resource_id(b) for a, b in pairwise(resources)):
                resources.sort(key=_canonical_key)
        return self

    def referenced_medications(self) -> set[str]:
        """The `Medication/<id>`s its medication resources and draft orders name by `medicationReference`."""
        named = medication_references(self.planned)
        for rtype in MEDICATION_TYPES:
            named |= medication_references(self.of_type(rtype))
        return named

    def missing_medications(self) -> list[str]:
        """`Medication/<id>`s named by `medicationReference` (not contained) that the record does not hold."""
        return sorted(key for key in self.referenced_medications() if key not in self.medications)


def medication_references(resources: Iterable[Resource]) -> set[str]:
    """The `Medication/<id>`s that resources name by `medicationReference`; contained ones (`#id`) travel with
    their resource and are not among them."""
    named: set[str] = set()
    for resource in resources:
        ref = resource.get("medicationReference")
        target = ref.get("reference") if isinstance(ref, dict) else None
        if isinstance(target, str) and not target.startswith("#"):
            key = normalise_reference(target)
            if key.startswith("Medication/"):
                named.add(key)
    return named


def normalise_reference(reference: str) -> str:
    """`Type/id` from a relative, absolute or versioned reference (`http://x/fhir/Patient/1/_history/2`)."""
    if "/_history/" in reference:
        reference = reference.split("/_history/", 1)[0]
    if "://" in reference:
        parts = reference.rstrip("/").split("/")
        if len(parts) >= 2:
            return f"{parts[-2]}/{parts[-1]}"
    return reference


def subject_reference(resource: Resource) -> str | None:
    """The `Patient/<id>` a resource is about, or None when it names no patient."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return f"Patient/{rid}" if isinstance(rid, str) else None
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            reference = str(ref["reference"])
            return reference if reference.startswith("urn:") else normalise_reference(reference)
    return None


def _is_resource(value: object) -> bool:
    return isinstance(value, dict) and isinstance(value.get("resourceType"), str)


def bundle_resources(bundle: Resource) -> Iterator[tuple[str | None, Resource]]:
    """Yield (fullUrl, resource) for every entry of a Bundle of any type; skip entries without a resource."""
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return
    for entry in entries:
        if isinstance(entry, dict) and _is_resource(entry.get("resource")):
            full_url = entry.get("fullUrl")
            yield (full_url if isinstance(full_url, str) else None), entry["resource"]


def filing_patient(resource: Resource, aliases: dict[str, str] | None = None) -> tuple[str | None, bool]:
    """The `Patient/<id>` a resource is filed under, and whether a resource filed nowhere counts as malformed.

    (ref, False) for a clinical resource about a patient; (None, True) for one that names no patient, or a
    resourceType that is not FHIR; (None, False) for FHIR the pipeline simply does not read. `aliases` maps a
    bundle's `urn:uuid:` fullUrls to `Patient/<id>`.
    """
    rtype = resource.get("resourceType")
    if rtype not in CLINICAL_TYPES:
        return None, rtype not in FHIR_RESOURCE_TYPES
    ref = subject_reference(resource)
    if ref is not None and aliases:
        ref = aliases.get(ref, ref)
    if ref is None or not ref.startswith("Patient/"):
        log.debug("skipped a %s that names no patient", rtype)
        return None, True
    return ref, False


def _resource_id(resource: Resource) -> str:
    rid = resource.get("id")
    return rid if isinstance(rid, str) else ""


def _canonical_key(resource: Resource) -> tuple[str, bytes]:
    return _resource_id(resource), orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)


def _last_updated(resource: Resource) -> str:
    meta = resource.get("meta")
    updated = meta.get("lastUpdated") if isinstance(meta, dict) else None
    return updated if isinstance(updated, str) else ""


def keep_medication(medications: dict[str, Resource], resource: Resource) -> None:
    """Keep a Medication by `Medication/<id>`, for the `medicationReference`s that name it (it names no patient).

    Two different Medications under one id (two versions in one export) resolve to the same one whatever the
    reading order: the later `meta.lastUpdated`, then the greater content, so every engine files the same.
    """
    if not isinstance(resource.get("id"), str):
        return
    key = f"Medication/{resource['id']}"
    kept = medications.get(key)
    if (
        kept is not None
        and kept != resource
        and (_last_updated(kept), *_canonical_key(kept)) > (_last_updated(resource), *_canonical_key(resource))
    ):
        return
    medications[key] = resource


class RecordBuilder:
    """Groups resources from bundles and NDJSON lines into PatientRecords by their patient reference.

    Transaction bundles (Synthea, `fhirsvc sandbox load`) reference the patient by `urn:uuid:` fullUrl;
    those are resolved to `Patient/<id>` through the bundle's own Patient entry. Medication resources
    name no patient; they are shared by every record built here (for `medicationReference`).
    """

    def __init__(self) -> None:
        self.records: dict[str, PatientRecord] = {}
        self.skipped = 0
        self.medications: dict[str, Resource] = {}

    def _record(self, patient_ref: str) -> PatientRecord:
        patient_id = patient_ref.partition("/")[2]
        record = self.records.get(patient_id)
        if record is None:
            record = self.records[patient_id] = PatientRecord(patient_id, medications=self.medications)
        return record

    def add_resource(self, resource: Resource, aliases: dict[str, str] | None = None) -> None:
        rtype = resource.get("resourceType")
        if rtype == "Bundle":
            self.add_bundle(resource)
            return
        if rtype == "Medication":
            keep_medication(self.medications, resource)
            return
        ref, malformed = filing_patient(resource, aliases)
        if ref is None:
            self.skipped += malformed
            return
        self._record(ref).add(resource)

    def add_bundle(self, bundle: Resource) -> None:
        resources: list[Resource] = []
        aliases: dict[str, str] = {}
        entries = bundle.get("entry")
        if isinstance(entries, list):  # entries that hold no resource object are malformed: counted, not read
            self.skipped += sum(not (isinstance(e, dict) and _is_resource(e.get("resource"))) for e in entries)
        for full_url, resource in bundle_resources(bundle):
            if resource.get("resourceType") == "Patient":
                if not isinstance(resource.get("id"), str) and full_url:
                    resource = {**resource, "id": full_url.rpartition(":")[2]}
                if full_url and isinstance(resource.get("id"), str):
                    aliases[full_url] = f"Patient/{resource['id']}"
            resources.append(resource)
        for resource in resources:
            self.add_resource(resource, aliases)

    def add_all(self, resources: Iterable[object]) -> None:
        for resource in resources:
            if _is_resource(resource):
                self.add_resource(resource)  # type: ignore[arg-type]
            else:
                self.skipped += 1

    def build(self) -> list[PatientRecord]:
        """The records by patient id, each in canonical order (what the file and Bulk Data readers evaluate)."""
        return sorted((r.in_canonical_order() for r in self.records.values()), key=lambda r: r.patient_id)
