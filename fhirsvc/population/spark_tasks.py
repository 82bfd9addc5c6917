"""What the Spark engine runs inside its executors: filing NDJSON lines to patients, and evaluating each patient.

Plain Python over iterators, no pyspark: the driver (`spark.py`) hands these functions to `mapPartitions`, and the
tests call them directly. Filing is the embedded engine's (`fhirsvc.record.model`: filing_patient, RecordBuilder,
keep_medication; `PatientRecord.in_canonical_order`), so both engines build the same records. Medications name
no patient: each travels, by a join on its `Medication/<id>`, to the patients whose resources name it
(`named_medications`), never to the driver.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson

from fhirsvc.population.worklist import COLUMNS, PopulationSummary, evaluated_rows
from fhirsvc.record.model import (
    MEDICATION_TYPES,
    PatientRecord,
    RecordBuilder,
    Resource,
    filing_patient,
    keep_medication,
    medication_references,
)
from fhirsvc.rules.registry import RULE_KINDS
from fhirsvc.terminology.knowledge import Knowledge, load_knowledge

# What a filed line becomes: the patient id and the resource as JSON (the NDJSON line itself, or a Bundle entry;
# or a Medication the patient's resources name, joined to it).
Filed = tuple[str, str]
Named = tuple[str, str]  # a `Medication/<id>` and the id of a patient whose resources name it
Row = tuple[Any, ...]  # a worklist row, values in COLUMNS order


@dataclass(frozen=True)
class MappingsSpec:
    """What selects the mappings (the settings' thresholds and programs): shipped to executors, loaded there."""

    thresholds: tuple[tuple[str, float], ...]
    programs: tuple[str, ...]

    @classmethod
    def of(cls, thresholds: dict[str, float], programs: list[str]) -> MappingsSpec:
        return cls(tuple(sorted(thresholds.items())), tuple(programs))


_KNOWLEDGE: dict[MappingsSpec, Knowledge] = {}  # per Python process: an executor's Python worker loads once


def knowledge_for(spec: MappingsSpec) -> tuple[Knowledge, bool]:
    """The mappings for `spec`, loaded once per Python process; and whether this call loaded them."""
    loaded = _KNOWLEDGE.get(spec)
    if loaded is not None:
        return loaded, False
    loaded = _KNOWLEDGE[spec] = load_knowledge(
        overrides=dict(spec.thresholds), enabled=list(spec.programs), rule_kinds=RULE_KINDS
    )
    return loaded, True


@dataclass
class FilingCounts:
    """What filing a partition's lines could not use (the embedded index's `skipped`)."""

    skipped: int = 0


def _parse(line: str, counts: FilingCounts) -> Resource | None:
    """A line's resource; None for a blank line (not counted) or an unreadable one (counted)."""
    if not line.strip():
        return None
    try:
        resource = orjson.loads(line)
    except orjson.JSONDecodeError:
        counts.skipped += 1
        return None
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        counts.skipped += 1
        return None
    return resource


def file_lines(lines: Iterable[str], counts: FilingCounts) -> Iterator[Filed]:
    """Each line filed to its patient as the embedded index files it (`RecordIndex._add_line`).

    A Bundle on a line files its own entries (resolving its urn:uuid references) and they travel as JSON of
    their own; Medications name no patient, so they are left to `medication_entries` (joined to the patients that
    name them); unreadable lines and resources that name no patient are counted in `counts`.
    """
    for line in lines:
        resource = _parse(line, counts)
        if resource is None:
            continue
        rtype = resource["resourceType"]
        if rtype == "Medication":
            continue
        if rtype == "Bundle":
            builder = RecordBuilder()
            builder.add_resource(resource)
            counts.skipped += builder.skipped
            for patient_id, record in builder.records.items():
                for resources in record.resources.values():
                    for entry in resources:
                        yield patient_id, orjson.dumps(entry).decode()
            continue
        ref, malformed = filing_patient(resource)
        if ref is None:
            counts.skipped += malformed
            continue
        yield ref.partition("/")[2], line


def medication_entries(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """`(Medication/<id>, JSON)` for each Medication on a line or in a Bundle on a line (nothing is counted here:
    `file_lines` counts what is unreadable)."""
    ignored = FilingCounts()
    for line in lines:
        resource = _parse(line, ignored)
        if resource is None or resource["resourceType"] not in ("Medication", "Bundle"):
            continue
        builder = RecordBuilder()
        builder.add_resource(resource)
        for key, medication in builder.medications.items():
            yield key, orjson.dumps(medication).decode()


def named_medications(lines: Iterable[str]) -> Iterator[Named]:
    """`(Medication/<id>, patient id)` for each Medication a line's resource names by `medicationReference` (or a
    Bundle's entries do), filed to the patient `file_lines` files the resource to; counted there, not here."""
    ignored = FilingCounts()
    for line in lines:
        resource = _parse(line, ignored)
        if resource is None:
            continue
        if resource["resourceType"] == "Bundle":
            builder = RecordBuilder()
            builder.add_resource(resource)
            for patient_id, record in builder.records.items():
                for key in record.referenced_medications():
                    yield key, patient_id
            continue
        if resource["resourceType"] not in MEDICATION_TYPES:  # what `PatientRecord.referenced_medications` reads
            continue
        ref, _ = filing_patient(resource)
        if ref is not None:
            for key in medication_references([resource]):
                yield key, ref.partition("/")[2]


def newer_medication(left: str, right: str) -> str:
    """Of two copies (JSON) of one Medication id, the one the filing rule keeps (`keep_medication`), whatever
    their order: what a reduce by id keeps."""
    kept: dict[str, Resource] = {}
    first, second = orjson.loads(left), orjson.loads(right)
    keep_medication(kept, first)
    keep_medication(kept, second)
    return right if kept[f"Medication/{second['id']}"] is second else left


def build_record(patient_id: str, documents: Iterable[str]) -> PatientRecord:
    """A patient's record from its filed JSON documents (the Medications it names among them), in the canonical
    order every engine uses."""
    record = PatientRecord(patient_id)
    for document in documents:
        resource = orjson.loads(document)
        if resource["resourceType"] == "Medication":
            keep_medication(record.medications, resource)
        else:
            record.add(resource)
    return record.in_canonical_order()


@dataclass(frozen=True)
class Evaluation:
    """What every executor needs to evaluate a patient: the mappings to load, the date and the server column."""

    mappings: MappingsSpec
    as_of: date
    server: str


def evaluate_patients(
    patients: Iterable[tuple[str, Iterable[str]]],
    knowledge: Knowledge,
    evaluation: Evaluation,
    summary: PopulationSummary,
) -> Iterator[Row]:
    """Each patient's worklist rows (tuples in COLUMNS order); what was seen is added to `summary`."""
    for patient_id, documents in patients:
        record = build_record(patient_id, documents)
        for row in evaluated_rows(record, knowledge, evaluation.as_of, evaluation.server, summary):
            yield tuple(row[column] for column in COLUMNS)
