"""Medications in a Bulk Data export are indexed by where they are, and a record reads back only those it names."""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.generate import write_ndjson
from bench.medications import with_medications
from fhirsvc.record import files
from fhirsvc.record.files import index_records
from tests.spark.exports import EFAVIRENZ, records_as_spark_builds_them, shared_medication_export


def _indexed_bytes(export: Path) -> tuple[files.RecordIndex, int]:
    tracemalloc.start()
    try:
        index = index_records([export])
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return index, held


def test_the_index_holds_no_medication_line_parsed_and_grows_by_a_few_bytes_a_medication(tmp_path: Path) -> None:
    few, many = tmp_path / "few", tmp_path / "many"
    write_ndjson(few, with_medications(20, 200))
    write_ndjson(many, with_medications(20, 20_200))
    _, baseline = _indexed_bytes(few)
    index, held = _indexed_bytes(many)
    assert index.medications == {} and len(index.medication_lines) == 20_200
    # Four int64s a Medication (its id's hash and where its line is), where a parsed one takes kilobytes.
    assert (held - baseline) / 20_000 < 64
    records = list(index.records())
    assert sum(len(record.medications) for record in records) == 20_200
    assert all(record.medications.keys() == record.referenced_medications() for record in records)


def test_a_record_holds_the_medications_it_names_the_newest_copy_and_misses_the_absent_one(tmp_path: Path) -> None:
    records = {record.patient_id: record for record in index_records([shared_medication_export(tmp_path)]).records()}
    newest = {**EFAVIRENZ, "meta": {"lastUpdated": "2024-01-01T00:00:00Z"}}
    for record in records.values():  # med-nobody is named by no record: no record reads it back
        assert record.medications == {"Medication/med-efavirenz": newest}
    assert records["hiv-twin"].missing_medications() == ["Medication/med-absent"]
    assert records["hiv-fail-basic"].missing_medications() == []


def test_ids_that_share_a_hash_are_told_apart_when_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export = shared_medication_export(tmp_path / "export")
    expected = {record.patient_id: record.medications for record in index_records([export]).records()}
    monkeypatch.setattr(files, "_key_hash", lambda key: 7)
    assert {record.patient_id: record.medications for record in index_records([export]).records()} == expected


def test_a_medication_in_a_bundle_line_is_held_and_named_from_another_file(tmp_path: Path) -> None:
    order = {
        "resourceType": "MedicationRequest",
        "id": "order",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p"},
        "medicationReference": {"reference": "https://ehr.example/fhir/Medication/med-efavirenz/_history/2"},
    }
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": EFAVIRENZ}]}
    (tmp_path / "MedicationRequest.ndjson").write_bytes(orjson.dumps(order) + b"\n")
    (tmp_path / "Bundle.ndjson").write_bytes(orjson.dumps(bundle) + b"\n")
    (record,) = index_records([tmp_path]).records()
    assert record.medications == {"Medication/med-efavirenz": EFAVIRENZ}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_executors_join_the_same_medications_as_the_embedded_index_in_any_order(tmp_path: Path, seed: int) -> None:
    export = shared_medication_export(tmp_path / "export")
    embedded = {record.patient_id: record.medications for record in index_records([export]).records()}
    lines = [line for path in sorted(export.rglob("*.ndjson")) for line in path.read_text().splitlines()]
    random.Random(seed).shuffle(lines)  # noqa: S311 (a seeded order, not a secret)
    joined: dict[str, Any] = {p: r.medications for p, r in records_as_spark_builds_them(lines)[0].items()}
    assert joined == embedded and set(joined) == {"hiv-fail-basic", "hiv-twin"}
