"""The one file reader: its index gives the records RecordBuilder files from every resource at once, one at a time."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import orjson
from typer.testing import CliRunner

from fhirsvc.cli import app
from fhirsvc.pipeline import evaluate_record
from fhirsvc.record import files
from fhirsvc.record.files import NDJSON_SUFFIXES, index_records, iter_files
from fhirsvc.record.model import PatientRecord, RecordBuilder, bundle_resources
from fhirsvc.render.report import patient_report
from fhirsvc.render.text import patient_text
from fhirsvc.terminology.knowledge import Knowledge
from tests.conftest import FIXTURES, load_fixture

runner = CliRunner()
AS_OF = date(2026, 6, 1)


def _resources(fixture: str) -> list[dict[str, Any]]:
    return [r for _, r in bundle_resources(load_fixture(fixture))]


def _ndjson(path: Path, resources: list[Any], extra: tuple[bytes, ...] = ()) -> None:
    path.write_bytes(b"\n".join([*(orjson.dumps(r) for r in resources), *extra]) + b"\n")


def _snapshot(records: list[PatientRecord]) -> list[tuple[str, dict[str, list[Any]]]]:
    return [(r.patient_id, {t: list(rs) for t, rs in r.resources.items()}) for r in records]


def _filed_at_once(root: Path) -> tuple[list[PatientRecord], int]:
    """Every file's content handed to one RecordBuilder, all in memory: the records (and the count of what was
    skipped) the streaming index must reproduce."""
    builder = RecordBuilder()
    unreadable = 0
    for path in iter_files([root]):
        chunks = path.read_bytes().splitlines() if path.suffix in NDJSON_SUFFIXES else [path.read_bytes()]
        for chunk in chunks:
            if not chunk.strip():
                continue
            try:
                data = orjson.loads(chunk)
            except orjson.JSONDecodeError:
                unreadable += 1
                continue
            builder.add_all(data if isinstance(data, list) and path.suffix not in NDJSON_SUFFIXES else [data])
    return builder.build(), unreadable + builder.skipped


def _mixed_directory(root: Path) -> Path:
    """Bundles, a multi-patient collection, NDJSON split by type (one patient over several files), junk."""
    root.mkdir()
    (root / "bundles").mkdir()
    for name in ("hiv/line2-failing.json", "t2d/a1c-above.json", "hiv/suppressed.json"):
        (root / "bundles" / name.replace("/", "-")).write_bytes((FIXTURES / name).read_bytes())
    collection = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in [*_resources("hiv/blip.json"), *_resources("hiv/weeks-25.json")]],
    }
    (root / "bundles" / "collection.json").write_bytes(orjson.dumps(collection))
    (root / "bundles" / "broken.json").write_bytes(b"{not json")
    export = root / "export"
    export.mkdir()
    fail = _resources("hiv/fail-basic.json")
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in fail:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    observations = by_type.pop("Observation")
    half = len(observations) // 2
    # The same patient's Observations in two files, one of them referring to the patient by absolute URL.
    absolute = [
        {**o, "subject": {"reference": f"https://ehr.example/fhir/{o['subject']['reference']}"}}
        for o in observations[half:]
    ]
    _ndjson(export / "Observation-1.ndjson", observations[:half], (b"", b"{broken"))
    _ndjson(export / "Observation-2.ndjson", absolute, (b'["a list"]',))
    for rtype, resources in by_type.items():
        _ndjson(export / f"{rtype}.ndjson", resources)
    orphan = {"resourceType": "Observation", "id": "orphan", "status": "final", "code": {"text": "x"}}
    medication = {"resourceType": "Medication", "id": "med-1", "code": {"text": "dolutegravir 50 MG"}}
    bundle_line = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in _resources("hiv/no-viral-load.json")],
    }
    _ndjson(export / "Other.ndjson", [orphan, medication, bundle_line, {"resourceType": "Practitioner", "id": "p"}])
    # More lines for a patient a bundle already holds: they join that patient's record.
    more = [r for r in _resources("hiv/line2-failing.json") if r["resourceType"] == "Observation"]
    _ndjson(export / "More.jsonl", [{**r, "id": f"{r['id']}-again"} for r in more])
    return root


def test_streamed_records_equal_the_in_memory_ones_on_a_mixed_directory(tmp_path: Path) -> None:
    root = _mixed_directory(tmp_path / "mixed")
    filed, skipped = _filed_at_once(root)
    index = index_records([root])
    streamed = list(index.records())
    assert _snapshot(streamed) == _snapshot(filed)
    assert index.skipped == skipped == 4  # broken.json, "{broken", the JSON list, the orphan Observation
    assert index.files == len(list(iter_files([root])))
    assert len(index) == len(streamed) == len(filed) >= 5
    # The in-memory builder shares every Medication; a streamed record holds those it names, and none names med-1.
    assert filed[0].medications == {
        "Medication/med-1": {"resourceType": "Medication", "id": "med-1", "code": {"text": "dolutegravir 50 MG"}}
    }
    assert all(record.medications == {} for record in streamed)


def test_a_patient_split_across_ndjson_files_is_one_record(tmp_path: Path) -> None:
    root = _mixed_directory(tmp_path / "mixed")
    (record,) = [r for r in index_records([root]).records() if r.patient_id == "hiv-fail-basic"]
    expected = _resources("hiv/fail-basic.json")
    observations = [r["id"] for r in expected if r["resourceType"] == "Observation"]
    assert [r["id"] for r in record.of_type("Observation")] == observations  # both files, in file order
    for rtype in {r["resourceType"] for r in expected} - {"Observation"}:
        assert record.of_type(rtype) == [r for r in expected if r["resourceType"] == rtype]


def test_patients_come_out_one_at_a_time_in_patient_order(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    patients = [f"p{n}" for n in (3, 1, 2)]
    for rtype in ("Condition", "Observation"):
        _ndjson(
            export / f"{rtype}.ndjson",
            [{"resourceType": rtype, "id": f"{p}-{rtype}", "subject": {"reference": f"Patient/{p}"}} for p in patients],
        )
    records = index_records([export]).records()
    first = next(records)
    assert first.patient_id == "p1" and first.of_type("Observation")[0]["id"] == "p1-Observation"
    assert [r.patient_id for r in records] == ["p2", "p3"]


def test_evaluate_output_is_byte_identical_to_the_in_memory_list(tmp_path: Path, knowledge: Knowledge) -> None:
    root = _mixed_directory(tmp_path / "mixed")
    results = [evaluate_record(r, knowledge, AS_OF) for r in _filed_at_once(root)[0]]
    as_json = runner.invoke(app, ["evaluate", str(root), "--as-of", AS_OF.isoformat()])
    assert as_json.exit_code == 0, as_json.output
    expected = orjson.dumps([patient_report(r) for r in results], option=orjson.OPT_INDENT_2) + b"\n"
    assert as_json.stdout_bytes == expected
    assert "4 unreadable" in as_json.stderr
    as_text = runner.invoke(app, ["evaluate", str(root), "--as-of", AS_OF.isoformat(), "--format", "text"])
    assert as_text.stdout == "\n\n".join(patient_text(r) for r in results) + "\n"


def test_evaluate_with_no_patients_prints_an_empty_list(tmp_path: Path) -> None:
    _ndjson(tmp_path / "Practitioner.ndjson", [{"resourceType": "Practitioner", "id": "p"}])
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--as-of", AS_OF.isoformat()])
    assert result.exit_code == 0 and result.stdout == "[]\n"


def test_a_run_of_one_patients_lines_is_read_back_with_one_read(tmp_path: Path, monkeypatch: Any) -> None:
    """Lines that follow each other in a file (an export written patient by patient) are one read, whatever sits
    between runs (another patient, a blank line, junk, a file without a final newline)."""
    export = tmp_path / "export"
    export.mkdir()

    def obs(patient: str, n: int) -> bytes:
        return orjson.dumps(
            {"resourceType": "Observation", "id": f"{patient}-{n}", "subject": {"reference": f"Patient/{patient}"}}
        )

    lines = [
        obs("a", 1),
        obs("a", 2),
        obs("a", 3),
        obs("b", 1),
        obs("a", 4),
        b"",
        b"  ",
        obs("a", 5),
        b"{junk",
        obs("a", 6),
    ]
    (export / "Observation.ndjson").write_bytes(b"\n".join(lines))  # no newline after the last line
    reads: list[int] = []
    original = files._LineReader.read

    def counted(self: Any, path: Path, offset: int, length: int) -> bytes:
        reads.append(length)
        return original(self, path, offset, length)

    monkeypatch.setattr(files._LineReader, "read", counted)
    index = index_records([export])
    a, b = index.records()
    assert [r["id"] for r in a.of_type("Observation")] == ["a-1", "a-2", "a-3", "a-4", "a-5", "a-6"]
    assert [r["id"] for r in b.of_type("Observation")] == ["b-1"]
    assert len(reads) == 5  # a-1..a-3, a-4, a-5, a-6; b-1
    assert index.skipped == 1


def test_lines_the_caller_does_not_read_are_filed_but_not_read_back(tmp_path: Path, knowledge: Knowledge) -> None:
    """`keep` (the observation filter in `evaluate` and `population`): a routine lab no program reads is never read
    back, its patient is still there, and a resource that names no patient is still counted as skipped."""
    export = tmp_path / "export"
    export.mkdir()
    viral_load = _resources("hiv/fail-basic.json")[-1]
    assert viral_load["resourceType"] == "Observation" and knowledge.observation_filter.wants(viral_load)
    routine = {
        "resourceType": "Observation",
        "id": "bp",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
    }
    _ndjson(
        export / "Observation.ndjson",
        [
            {**routine, "subject": {"reference": "Patient/only-routine"}},
            {**routine, "id": "bp-2", "subject": {"reference": "Patient/hiv-fail-basic"}},
            {**viral_load, "subject": {"reference": "Patient/hiv-fail-basic"}},
            {**routine, "id": "orphan"},
        ],
    )
    index = index_records([export], keep=knowledge.observation_filter.reads)
    records = {r.patient_id: r for r in index.records()}
    assert set(records) == {"hiv-fail-basic", "only-routine"}
    assert [r["id"] for r in records["hiv-fail-basic"].of_type("Observation")] == [viral_load["id"]]
    assert records["only-routine"].of_type("Observation") == []
    assert index.skipped == 1  # the orphan names no patient
