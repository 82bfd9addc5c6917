"""Bulk Data exports the engines are compared on: a small hand-made one with every awkward case, and the bench one."""

from __future__ import annotations

import copy
import gzip
from pathlib import Path
from typing import Any

import orjson

from bench.generate import population, write_ndjson
from fhirsvc.record.model import RecordBuilder
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
