"""The Spark engine: the embedded engine's worklist, with lines filed and patients evaluated inside Spark executors."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyspark import Accumulator, AccumulatorParam
from pyspark.errors import AnalysisException, PySparkException
from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DataType, DateType, IntegerType, StringType, StructField, StructType

from fhirsvc.config import Settings
from fhirsvc.population.spark_tasks import (
    Evaluation,
    Filed,
    FilingCounts,
    MappingsSpec,
    Named,
    evaluate_patients,
    file_lines,
    knowledge_for,
    medication_entries,
    named_medications,
    newer_medication,
)
from fhirsvc.population.worklist import SCHEMA, PopulationSummary

# Bulk Data NDJSON as Spark's file sources find it under SOURCE (any depth); Hadoop's glob syntax, and Hadoop's
# codecs read the compressed ones by their suffix.
NDJSON_FILES = "*.{ndjson,jsonl,ndjson.gz,jsonl.gz}"
PROGRESS_EVERY_S = 5.0
# Partitions of the patient shuffle per core at least: a slow partition (a patient with a long history) then
# holds back one core for a shorter time, and each Python worker groups less at once.
PARTITIONS_PER_CORE = 4
LOOPBACK = "127.0.0.1"


class SparkUnavailable(RuntimeError):
    """Spark could not start (no Java 17, a master that does not answer)."""


_SPARK_TYPES: dict[pa.DataType, DataType] = {
    pa.string(): StringType(),
    pa.int32(): IntegerType(),
    pa.date32(): DateType(),
}


def _spark_type(arrow: pa.DataType) -> DataType:
    if pa.types.is_list(arrow):
        return ArrayType(_spark_type(arrow.value_type), containsNull=arrow.value_field.nullable)
    return _SPARK_TYPES[arrow]


def spark_schema() -> StructType:
    """The worklist SCHEMA as a Spark schema: the same names, types and nullability."""
    return StructType([StructField(f.name, _spark_type(f.type), nullable=f.nullable) for f in SCHEMA])


class SummaryParam(AccumulatorParam[PopulationSummary]):
    """Adds up the executors' PopulationSummaries (one per task) on the driver."""

    def zero(self, value: PopulationSummary) -> PopulationSummary:
        return PopulationSummary()

    def addInPlace(self, value1: PopulationSummary, value2: PopulationSummary) -> PopulationSummary:
        value1.merge(value2)
        return value1


def _file_partition(rows: Iterable[Row], skipped: Accumulator[int]) -> Iterator[Filed]:
    counts = FilingCounts()
    yield from file_lines((row[0] for row in rows), counts)
    skipped.add(counts.skipped)


def _medication_partition(rows: Iterable[Row], read: Accumulator[int]) -> Iterator[tuple[str, str]]:
    count = 0
    for entry in medication_entries(row[0] for row in rows):
        count += 1
        yield entry
    read.add(count)


def _named_partition(rows: Iterable[Row]) -> Iterator[Named]:
    return named_medications(row[0] for row in rows)


def _to_patient(joined: tuple[str, tuple[str, str]]) -> Filed:
    _, (patient_id, medication) = joined
    return patient_id, medication


def _evaluate_partition(
    patients: Iterable[tuple[str, Iterable[str]]],
    evaluation: Evaluation,
    summary: Accumulator[PopulationSummary],
    loads: Accumulator[int],
) -> Iterator[tuple[Any, ...]]:
    knowledge, loaded = knowledge_for(evaluation.mappings)  # once per executor Python process
    loads.add(int(loaded))
    seen = PopulationSummary()
    yield from evaluate_patients(patients, knowledge, evaluation, seen)
    summary.add(seen)


def _session(master: str) -> tuple[SparkSession, bool]:
    """The active session (a test's, an application's), or a new one on `master`; and whether it is ours."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    builder = SparkSession.builder.master(master).appName("fhirsvc population")
    # Our own progress lines replace Spark's console bar.
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    if master.startswith("local"):
        # Local executors run Python workers beside the driver: they need this interpreter, which has fhirsvc
        # (Spark would start `python3` from PATH otherwise). On a cluster the nodes' own Python is configured
        # with PYSPARK_PYTHON or spark.pyspark.python. A local driver and its web UI (no authentication by default)
        # listen on loopback only.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
        builder = builder.config("spark.driver.bindAddress", LOOPBACK).config("spark.driver.host", LOOPBACK)
    try:
        session = builder.getOrCreate()
    except PySparkException as exc:
        raise SparkUnavailable(f"Spark could not start on {master} (it needs Java 17): {exc}") from exc
    return session, True


def _check_output(session: SparkSession, out: str) -> None:
    """Refuse to replace anything but an earlier worklist (a Spark output directory) or an empty directory."""
    jvm: Any = session._jvm  # Hadoop's FileSystem: the same check for file:, hdfs:, s3a:, abfss:
    path = jvm.org.apache.hadoop.fs.Path(out)
    fs = path.getFileSystem(session._jsc.hadoopConfiguration())
    if not fs.exists(path):
        return
    replaceable = fs.getFileStatus(path).isDirectory() and (
        fs.exists(jvm.org.apache.hadoop.fs.Path(path, "_SUCCESS")) or len(fs.listStatus(path)) == 0
    )
    if not replaceable:
        raise FileExistsError(f"{out} exists and is not a worklist directory written by Spark: not replaced")


def _report_progress(
    session: SparkSession,
    summary: Accumulator[PopulationSummary],
    progress: Callable[[str], None],
    done: threading.Event,
    clock: Callable[[], float],
) -> None:
    tracker = session.sparkContext.statusTracker()
    started = clock()
    while not done.wait(PROGRESS_EVERY_S):
        stages = [tracker.getStageInfo(stage) for stage in tracker.getActiveStageIds()]
        tasks = ", ".join(f"{s.numCompletedTasks}/{s.numTasks} tasks" for s in stages if s is not None)
        patients = summary.value.patients
        rate = patients / max(clock() - started, 1e-9)
        progress(f"{patients:,} patients evaluated, {rate:,.0f}/s" + (f" ({tasks})" if tasks else ""))


def run_spark(
    source: str,
    out: Path | str,
    settings: Settings,
    as_of: date,
    server: str,
    master: str,
    progress: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
) -> PopulationSummary:
    """Read every NDJSON line under `source`, file and evaluate each patient in the executors, write the worklist
    (a directory of Parquet part files) to `out`; the summary of what was seen."""
    session, owned = _session(master)
    try:
        return _run(session, source, str(out), settings, as_of, server, progress, clock)
    finally:
        if owned:
            session.stop()


def _run(
    session: SparkSession,
    source: str,
    out: str,
    settings: Settings,
    as_of: date,
    server: str,
    progress: Callable[[str], None],
    clock: Callable[[], float],
) -> PopulationSummary:
    context = session.sparkContext
    _check_output(session, out)
    try:
        lines = session.read.option("recursiveFileLookup", "true").option("pathGlobFilter", NDJSON_FILES).text(source)
        files = len(lines.inputFiles())
    except AnalysisException as exc:
        if exc.getCondition() == "PATH_NOT_FOUND":
            raise FileNotFoundError(f"no such file or directory: {source}") from None
        raise
    progress(f"reading {files:,} NDJSON files on {context.master} ({context.defaultParallelism} cores)")

    # The summary comes back in accumulators, one update per task. Spark applies a task's updates again when it
    # re-runs the task after losing an executor (https://spark.apache.org/docs/latest/rdd-programming-guide.html
    # #accumulators): the worklist stays exact, the printed counts may then be too high.
    skipped = context.accumulator(0)
    summary = context.accumulator(PopulationSummary(), SummaryParam())
    loads = context.accumulator(0)
    medications_read = context.accumulator(0)
    evaluation = Evaluation(MappingsSpec.of(settings.thresholds, settings.programs), as_of, server)
    filed = lines.rdd.mapPartitions(partial(_file_partition, skipped=skipped))
    partitions = max(filed.getNumPartitions(), context.defaultParallelism * PARTITIONS_PER_CORE)

    # Medications name no patient, and an export may hold one per medication order (hundreds of millions): never
    # collected to the driver nor copied to every executor, they are joined by `Medication/<id>` to the patients
    # whose resources name them, and travel with those patients' lines; one nobody names goes no further. The JVM
    # picks the candidate lines and Python reads only those: a line that holds a Medication, alone or in a Bundle,
    # has the JSON string "Medication" in it, and one that names a Medication has "medicationReference", or writes
    # them with \u escapes (RFC 8259 section 7: no other escape makes a letter). A substring search, where parsing
    # every line in the JVM took 3x as long.
    value = F.col("value")
    escaped = value.contains("\\u")
    medications = (
        lines.where(value.contains('"Medication"') | escaped)
        .rdd.mapPartitions(partial(_medication_partition, read=medications_read))
        .reduceByKey(newer_medication, partitions)  # one copy per id, as `keep_medication` keeps it
    )
    named = lines.where(value.contains('"medicationReference"') | escaped).rdd.mapPartitions(_named_partition)
    joined = named.join(medications, partitions).map(_to_patient)
    patients = filed.union(joined).groupByKey(partitions)
    rows = patients.mapPartitions(partial(_evaluate_partition, evaluation=evaluation, summary=summary, loads=loads))
    done = threading.Event()
    reporter = threading.Thread(
        target=_report_progress, args=(session, summary, progress, done, clock), name="population progress"
    )
    reporter.start()
    try:
        session.createDataFrame(rows, spark_schema()).write.mode("overwrite").parquet(out)
    finally:
        done.set()
        reporter.join()
    result: PopulationSummary = summary.value
    result.skipped += skipped.value
    progress(f"{medications_read.value:,} Medications read, joined to the patients that name them")
    progress(f"mappings loaded in {loads.value} executor Python process(es)")
    return result
