"""Same answers: the Spark engine (local[2]) and the embedded engine write identical worklists and summaries."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fhirsvc.cli import app
from fhirsvc.config import Settings
from fhirsvc.population.embedded import run_embedded
from fhirsvc.population.spark import run_spark
from fhirsvc.population.worklist import COLUMNS, ROW_ORDER, SCHEMA, PopulationSummary
from fhirsvc.terminology.knowledge import Knowledge
from tests.spark.exports import COUNTED, bench_export, gzipped_copy, handmade_export, shared_medication_export
from tests.synthea.cohort import REFERENCE_DATE, SyntheaUnavailable, generate

pytestmark = pytest.mark.spark

AS_OF = date.fromisoformat(REFERENCE_DATE)
SERVER = "https://fhir.example.org/r4"
# The seeded Synthea cohorts of tests/synthea/test_synthea_cohorts.py, as Bulk Data NDJSON.
COHORTS = {"hiv": 8, "t2d": 8, "nsclc": 6, "crc": 6, "ms": 4}


def _sorted(table: pa.Table) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = table.sort_by([(column, "ascending") for column in ROW_ORDER]).to_pylist()
    return rows


def both_engines(
    source: Path, tmp_path: Path, knowledge: Knowledge
) -> tuple[pa.Table, pa.Table, PopulationSummary, PopulationSummary, list[str]]:
    messages: list[str] = []
    spark_out = tmp_path / f"{source.name}-spark"
    embedded_out = tmp_path / f"{source.name}-embedded.parquet"
    by_spark = run_spark(str(source), spark_out, Settings(), AS_OF, SERVER, "local[2]", messages.append)
    embedded = run_embedded([source], embedded_out, knowledge, AS_OF, SERVER)
    return pq.read_table(spark_out), pq.read_table(embedded_out), by_spark, embedded, messages


def assert_same_answers(
    spark_table: pa.Table, embedded_table: pa.Table, by_spark: PopulationSummary, embedded: PopulationSummary
) -> None:
    assert tuple(spark_table.column_names) == COLUMNS
    assert [f.type for f in spark_table.schema] == [f.type for f in SCHEMA]
    assert _sorted(spark_table) == _sorted(embedded_table)
    assert by_spark == embedded


def test_the_handmade_export_gives_the_same_worklist(spark: Any, knowledge: Knowledge, tmp_path: Path) -> None:
    source = handmade_export(tmp_path / "handmade")
    spark_table, embedded_table, by_spark, embedded, messages = both_engines(source, tmp_path, knowledge)
    assert_same_answers(spark_table, embedded_table, by_spark, embedded)
    assert embedded.patients == 3 and embedded.skipped == COUNTED
    rows = _sorted(spark_table)
    assert {row["program"] for row in rows} >= {"hiv", "t2d"}  # the Bundle line's patient is t2d
    hiv = [row for row in rows if row["patient"] == "Patient/hiv-fail-basic"]
    assert hiv and "efavirenz" in hiv[0]["regimen"]  # named only through the Medication in another folder
    assert "1 Medications read, joined to the patients that name them" in messages

    gzipped = gzipped_copy(source, tmp_path / "gzipped")  # Spark reads compressed files (embedded: plain only)
    run_spark(str(gzipped), tmp_path / "from-gzip", Settings(), AS_OF, SERVER, "local[2]", lambda _: None)
    assert _sorted(pq.read_table(tmp_path / "from-gzip")) == rows


def test_a_medication_travels_to_each_patient_that_names_it_never_through_the_driver(
    spark: Any, knowledge: Knowledge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyspark import RDD, SparkContext

    def refused(*_: Any, **__: Any) -> None:
        raise AssertionError("Medications were collected to the driver or broadcast to every executor")

    monkeypatch.setattr(RDD, "collect", refused)  # in the driver process: the executors' workers are not patched
    monkeypatch.setattr(SparkContext, "broadcast", refused)
    source = shared_medication_export(tmp_path / "shared")
    spark_table, embedded_table, by_spark, embedded, messages = both_engines(source, tmp_path, knowledge)
    assert_same_answers(spark_table, embedded_table, by_spark, embedded)
    rows = _sorted(spark_table)
    # Each patient's efavirenz is named only through the one Medication, in a folder (a partition) of its own.
    for patient in ("Patient/hiv-fail-basic", "Patient/hiv-twin"):
        (row,) = [row for row in rows if row["patient"] == patient and row["program"] == "hiv"]
        assert "efavirenz" in row["regimen"]
    assert "3 Medications read, joined to the patients that name them" in messages


def test_the_bench_population_gives_the_same_worklist(spark: Any, knowledge: Knowledge, tmp_path: Path) -> None:
    source = bench_export(tmp_path / "bench", 300)
    spark_table, embedded_table, by_spark, embedded, messages = both_engines(source, tmp_path, knowledge)
    assert_same_answers(spark_table, embedded_table, by_spark, embedded)
    assert embedded.patients == 300
    assert set(spark_table.column("program").to_pylist()) == {"hiv", "t2d", "nsclc", "crc", "ms"}
    # The mappings are loaded once per executor Python process (2 cores), not per task or per patient.
    (loads,) = [m for m in messages if m.startswith("mappings loaded in")]
    assert int(loads.split()[3]) <= 2


@pytest.mark.synthea
def test_the_synthea_cohorts_give_the_same_worklists(spark: Any, knowledge: Knowledge, tmp_path: Path) -> None:
    programs: set[str] = set()
    for name, people in COHORTS.items():
        try:
            source = generate(name, 1, people, bulk=True)
        except SyntheaUnavailable as exc:
            pytest.skip(f"Synthea cohorts need Java 17+: {exc}")
        spark_table, embedded_table, by_spark, embedded, _ = both_engines(source, tmp_path / name, knowledge)
        assert_same_answers(spark_table, embedded_table, by_spark, embedded)
        assert embedded.patients == people
        programs |= set(spark_table.column("program").to_pylist())
    # Seed 1 of the nsclc and crc cohorts holds no finding that warrants a row (the bench population does).
    assert programs == {"hiv", "t2d", "ms"}


def test_the_population_command_runs_on_spark_and_keeps_other_data(spark: Any, tmp_path: Path) -> None:
    source = handmade_export(tmp_path / "handmade")
    out = tmp_path / "worklist"
    runner = CliRunner()
    arguments = ["population", str(source), "--engine", "spark", "--out", str(out), "--as-of", REFERENCE_DATE]
    for _ in range(2):  # a second night replaces the first night's worklist
        result = runner.invoke(app, arguments)
        assert result.exit_code == 0, result.output
        assert "3 patients" in result.stdout and pq.read_table(out).num_rows > 0
    other = tmp_path / "notes.txt"
    other.write_text("not a worklist")
    refused = runner.invoke(app, [*arguments[:4], "--out", str(other)])
    assert refused.exit_code == 2 and "not replaced" in refused.stderr
    assert other.read_text() == "not a worklist"
    missing = runner.invoke(app, ["population", str(tmp_path / "absent"), "--engine", "spark", "--out", str(out)])
    assert missing.exit_code == 2 and "no such file or directory" in missing.stderr
