"""The population worklist: the embedded engine's Parquet, its columns, and the finding each row carries back."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fhirsvc.cli import FILES_SERVER, app
from fhirsvc.pipeline import evaluate_record
from fhirsvc.population.embedded import run_embedded
from fhirsvc.population.worklist import COLUMNS, UnknownFinding, finding_from_row, worklist_row
from fhirsvc.record.files import index_records
from fhirsvc.render.writeback import transaction
from fhirsvc.terminology.knowledge import Knowledge
from tests.conftest import FIXTURES

AS_OF = date(2026, 6, 1)
runner = CliRunner()


def _actionable(knowledge: Knowledge) -> list:
    results = [evaluate_record(r, knowledge, AS_OF) for r in index_records([FIXTURES]).records()]
    return [f for result in results for f in result.actionable]


def test_a_rows_finding_writes_back_exactly_what_the_evaluated_finding_would(knowledge: Knowledge) -> None:
    findings = _actionable(knowledge)
    assert len({f.program for f in findings}) == 5  # every program has actionable fixtures
    for finding in findings:
        row = worklist_row(finding, "https://fhir.example.org/r4")
        back = finding_from_row(row["finding"], knowledge)
        assert back.id == finding.id == row["finding_id"]
        for target in ("guidance", "detectedissue"):
            assert transaction([back], target) == transaction([finding], target)


def test_a_row_from_other_mappings_is_refused_not_guessed(knowledge: Knowledge) -> None:
    finding = _actionable(knowledge)[0]
    document = orjson.loads(worklist_row(finding, FILES_SERVER)["finding"])
    with pytest.raises(UnknownFinding):
        finding_from_row(orjson.dumps({**document, "rule": "no-such-rule"}), knowledge)


def test_embedded_run_writes_one_row_per_actionable_finding(knowledge: Knowledge, tmp_path: Path) -> None:
    out = tmp_path / "worklist.parquet"
    summary = run_embedded([FIXTURES], out, knowledge, AS_OF, FILES_SERVER)
    table = pq.read_table(out)
    assert tuple(table.column_names) == COLUMNS
    expected = _actionable(knowledge)
    assert summary.rows == table.num_rows == len(expected) > 0
    assert sorted(table.column("finding_id").to_pylist()) == sorted(f.id for f in expected)
    assert set(table.column("as_of").to_pylist()) == {AS_OF}
    assert summary.patients == len(index_records([FIXTURES]))


def test_population_command_prints_the_summary_and_refuses_a_uri_for_the_embedded_engine(tmp_path: Path) -> None:
    out = tmp_path / "w.parquet"
    result = runner.invoke(
        app,
        [
            "population",
            str(FIXTURES),
            "--out",
            str(out),
            "--as-of",
            "2026-06-01",
            "--fhir-server",
            "HTTPS://Fhir.Example.org/r4/",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "worklist rows" in result.stdout and "patients/s" in result.stdout
    assert set(pq.read_table(out).column("server").to_pylist()) == {"https://fhir.example.org/r4"}
    refused = runner.invoke(app, ["population", "s3a://bucket/export", "--out", str(out)])
    assert refused.exit_code == 2 and "--engine spark" in refused.stderr


def test_a_run_that_fails_leaves_the_previous_worklist_as_it_was(
    knowledge: Knowledge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "worklist.parquet"
    run_embedded([FIXTURES], out, knowledge, AS_OF, FILES_SERVER)
    before = out.read_bytes()
    evaluated = 0

    def failing(*args: object) -> object:
        nonlocal evaluated
        evaluated += 1
        if evaluated > 3:
            raise MemoryError("the machine ran out of memory mid-run")
        return evaluate_record(*args)  # type: ignore[arg-type]

    monkeypatch.setattr("fhirsvc.population.worklist.evaluate_record", failing)
    with pytest.raises(MemoryError):
        run_embedded([FIXTURES], out, knowledge, date(2026, 7, 1), FILES_SERVER)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worklist.parquet"]  # no half-written file left behind
