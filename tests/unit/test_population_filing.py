"""One filing rule for both population engines: the records they build do not depend on the order lines arrive in."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson

from fhirsvc.pipeline import evaluate_record
from fhirsvc.population.worklist import worklist_rows
from fhirsvc.record.files import index_records, iter_files
from fhirsvc.record.model import PatientRecord, keep_medication
from fhirsvc.terminology.knowledge import Knowledge
from tests.conftest import AS_OF
from tests.spark.exports import COUNTED, bench_export, handmade_export, records_as_spark_builds_them


def _ndjson_lines(source: Path) -> list[str]:
    return [line for path in iter_files([source]) for line in path.read_text().splitlines(keepends=True)]


def _same_records(left: PatientRecord, right: PatientRecord) -> bool:
    return (
        {t: rs for t, rs in left.resources.items() if rs} == {t: rs for t, rs in right.resources.items() if rs}
        and left.medications == right.medications
        and left.skipped == right.skipped
    )


def test_executors_file_every_line_as_the_embedded_index_does_in_any_order(tmp_path: Path) -> None:
    handmade = handmade_export(tmp_path / "handmade")
    for source in (handmade, bench_export(tmp_path / "bench", 40)):
        index = index_records([source])
        embedded = {record.patient_id: record for record in index.records()}
        lines = _ndjson_lines(source)
        random.Random(7).shuffle(lines)  # noqa: S311 (a seeded order, not a secret): a shuffle delivers a patient's lines in any order
        by_spark, skipped = records_as_spark_builds_them(lines)
        assert by_spark.keys() == embedded.keys() and skipped == index.skipped
        assert all(_same_records(by_spark[p], embedded[p]) for p in embedded)
        assert skipped == (COUNTED if source == handmade else 0)


def _same_day_results(first: str, second: str) -> bytes:
    """The t2d fixture above target with its latest HbA1c reported twice (two feeds, two ids, one value): NDJSON
    lines with the two copies in the order given. The rule cites one of the two, and the citation is in the id."""
    bundle: dict[str, Any] = orjson.loads((Path(__file__).parents[2] / "fixtures/t2d/a1c-above.json").read_bytes())
    resources = {e["resource"]["id"]: e["resource"] for e in bundle["entry"]}
    latest = resources.pop("t2d-a1c-above-a1c-2")
    copies = {"lab": latest, "feed": {**latest, "id": "t2d-a1c-above-a1c-2-feed"}}
    ordered = [*resources.values(), copies[first], copies[second]]
    return b"".join(orjson.dumps(resource) + b"\n" for resource in ordered)


def test_the_order_of_a_patients_lines_decides_no_finding(knowledge: Knowledge, tmp_path: Path) -> None:
    worklists = []
    for first, second in (("lab", "feed"), ("feed", "lab")):
        export = tmp_path / first
        export.mkdir()
        (export / "Resources.ndjson").write_bytes(_same_day_results(first, second))
        (record,) = index_records([export]).records()
        worklists.append(worklist_rows(evaluate_record(record, knowledge, AS_OF), "urn:test"))
    assert worklists[0] and worklists[0] == worklists[1]


def test_two_versions_of_a_medication_resolve_to_one_whatever_the_order() -> None:
    older = {"resourceType": "Medication", "id": "m", "meta": {"lastUpdated": "2026-01-01T00:00:00Z"}, "code": {}}
    newer = {**older, "meta": {"lastUpdated": "2026-02-01T00:00:00Z"}, "code": {"text": "metformin"}}
    for first, second in ((older, newer), (newer, older)):
        medications: dict[str, Any] = {}
        keep_medication(medications, first)
        keep_medication(medications, second)
        assert medications == {"Medication/m": newer}
