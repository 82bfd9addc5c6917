"""Bulk Data exports the engines are compared on: a small hand-made one with every awkward case, and the bench one."""

from __future__ import annotations

import copy
import gzip
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from bench.generate import population, write_ndjson
from fhirsvc.population.spark_tasks import (
    FilingCounts,
    build_record,
    file_lines,
    medication_entries,
    named_medications,
    newer_medication,
)
from fhirsvc.record.model import PatientRecord, RecordBuilder
from tests.conftest import load_fixture

EFAVIRENZ = {
    "resourceType": "Medication",
    "id": "med-efavirenz",
    "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "195085"}]},
}
# What the hand-made export holds that no record may take: each is skipped and counted (or ignored, not counted).
UNREADABLE = (
    b'{"resourceType": "Condition", "id": "cut-short", "subject": {"refer\n',  # a corrupted line: counted
    b"[1, 2, 3]\n",  # JSON, not a resource: counted
    b"\n",  # blank: ignored
    b'{"resourceType": "Observation", "id": "nobody", "status": "final"}\n',  # names no patient: counted
    b'{"resourceType": "NotFhir", "id": "x", "subject": {"reference": "Patient/hiv-fail-basic"}}\n',  # counted
    b'{"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/hiv-fail-basic"}}\n',  # ignored
)
COUNTED = 4


def _lines(resources: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(resource) + b"\n" for resource in resources)


def _as_bulk(fixture: str) -> list[dict[str, Any]]:
    """A fixture bundle's resources as a server's export writes them: `Patient/<id>` references."""
    builder = RecordBuilder()
    builder.add_bundle(load_fixture(fixture))
    (record,) = builder.build()
    resources = []
    for resource in (r for rs in record.resources.values() for r in rs):
        resource = copy.deepcopy(resource)
        for key in ("subject", "patient"):
            if key in resource:
                resource[key] = {"reference": record.reference}
        resources.append(resource)
    return resources


def handmade_export(directory: Path) -> Path:
    """Two patients as NDJSON split by type (one Medication referenced from another folder, conditions .jsonl),
    one patient as a transaction Bundle on a line, and lines no record may take (UNREADABLE)."""
    hiv = _as_bulk("hiv/fail-basic.json")
    for resource in hiv:  # efavirenz is named by reference only: without the shared Medication, no line
        if resource["id"] == "hiv-fail-basic-ms-efv":
            del resource["medicationCodeableConcept"]
            resource["medicationReference"] = {"reference": "Medication/med-efavirenz"}
    ms = _as_bulk("ms/escalated.json")
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in [*hiv, *ms]:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    (directory / "medications").mkdir(parents=True)
    # Written with a \u escape in its type, as JSON allows: a reader that looks for the plain word misses it.
    escaped = _lines([EFAVIRENZ]).replace(b'"Medication"', b'"Medic\\u0061tion"')
    (directory / "medications" / "Medication.ndjson").write_bytes(escaped)
    for rtype, resources in by_type.items():
        (directory / f"{rtype}.{'jsonl' if rtype == 'Condition' else 'ndjson'}").write_bytes(_lines(resources))
    bundle = load_fixture("t2d/a1c-above.json")
    (directory / "Bundle.ndjson").write_bytes(orjson.dumps(bundle) + b"\n")
    (directory / "Other.ndjson").write_bytes(b"".join(UNREADABLE))
    return directory


def bench_export(directory: Path, patients: int) -> Path:
    write_ndjson(directory, population(patients))
    return directory


def gzipped_copy(source: Path, directory: Path) -> Path:
    """The export with every file compressed (`.ndjson.gz`, as Bulk Data servers may serve it)."""
    for path in source.rglob("*"):
        if path.is_file():
            target = directory / path.relative_to(source).with_name(path.name + ".gz")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(gzip.compress(path.read_bytes()))
    return directory


def shared_medication_export(directory: Path) -> Path:
    """Two patients, each in a folder of its own (so in partitions of their own), whose efavirenz orders name one
    Medication kept in a third folder in two versions; a Medication nobody names; one named that is absent."""
    hiv = _as_bulk("hiv/fail-basic.json")
    for resource in hiv:
        if resource["id"] == "hiv-fail-basic-ms-efv":
            del resource["medicationCodeableConcept"]
            resource["medicationReference"] = {"reference": "Medication/med-efavirenz"}
    twin = orjson.loads(orjson.dumps(hiv).replace(b"hiv-fail-basic", b"hiv-twin"))
    (efavirenz,) = [resource for resource in twin if resource["id"] == "hiv-twin-ms-efv"]
    absent = {**efavirenz, "id": "hiv-twin-ms-absent", "medicationReference": {"reference": "Medication/med-absent"}}
    for patient, resources in (("first", hiv), ("second", [*twin, absent])):
        (directory / patient).mkdir(parents=True)
        (directory / patient / "Resources.ndjson").write_bytes(_lines(resources))
    older = {**EFAVIRENZ, "meta": {"lastUpdated": "2020-01-01T00:00:00Z"}, "code": {"text": "a retired code"}}
    newer = {**EFAVIRENZ, "meta": {"lastUpdated": "2024-01-01T00:00:00Z"}}
    nobody = {**EFAVIRENZ, "id": "med-nobody"}
    (directory / "medications").mkdir()
    (directory / "medications" / "Medication.ndjson").write_bytes(_lines([newer, nobody, older]))
    return directory


def records_as_spark_builds_them(lines: list[str]) -> tuple[dict[str, PatientRecord], int]:
    """What the Spark engine's executors build, without Spark: file, reduce Medications by id, join them to the
    patients that name them, group by patient, build; and the count of what filing skipped."""
    counts = FilingCounts()
    grouped: dict[str, list[str]] = defaultdict(list)
    for patient_id, document in file_lines(lines, counts):
        grouped[patient_id].append(document)
    medications: dict[str, str] = {}
    for key, document in medication_entries(lines):
        medications[key] = newer_medication(medications[key], document) if key in medications else document
    for key, patient_id in named_medications(lines):
        if key in medications:
            grouped[patient_id].append(medications[key])
    return {p: build_record(p, documents) for p, documents in grouped.items()}, counts.skipped
