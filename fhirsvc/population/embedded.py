"""The embedded engine: one process streams the export patient by patient into the Parquet worklist."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fhirsvc.population.worklist import SCHEMA, PopulationSummary, evaluated_rows
from fhirsvc.record.files import RecordIndex, index_records
from fhirsvc.terminology.knowledge import Knowledge

ROW_GROUP = 10_000  # rows buffered per Parquet row group: memory stays flat however many patients there are
PROGRESS_EVERY_S = 5.0


def run_embedded(
    paths: Iterable[Path],
    out: Path,
    knowledge: Knowledge,
    as_of: date,
    server: str,
    progress: Callable[[str], None] = lambda _: None,
    clock: Callable[[], float] = time.monotonic,
) -> PopulationSummary:
    """Index the files, evaluate every patient, write the worklist; the summary of what was seen."""
    index = index_records(paths, keep=knowledge.observation_filter.reads)
    summary = PopulationSummary(skipped=index.skipped)
    progress(f"indexed {len(index):,} patients from {index.files:,} files")
    # Written beside `out` and renamed over it at the end: a run that fails leaves last night's worklist as it was,
    # and no reader (write-back, a worklist screen) ever opens a half-written file.
    partial = out.with_name(f".{out.name}.partial")
    try:
        _write(index, partial, knowledge, as_of, server, summary, progress, clock)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return summary


def _write(
    index: RecordIndex,
    partial: Path,
    knowledge: Knowledge,
    as_of: date,
    server: str,
    summary: PopulationSummary,
    progress: Callable[[str], None],
    clock: Callable[[], float],
) -> None:
    total = len(index)
    buffered: list[dict[str, Any]] = []
    started = last = clock()
    with pq.ParquetWriter(partial, SCHEMA) as writer:
        for record in index.records():
            buffered.extend(evaluated_rows(record, knowledge, as_of, server, summary))
            if len(buffered) >= ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(buffered, SCHEMA))
                buffered.clear()
            now = clock()
            if now - last >= PROGRESS_EVERY_S:
                last = now
                rate = summary.patients / (now - started)
                progress(f"{summary.patients:,}/{total:,} patients, {rate:,.0f}/s")
        writer.write_table(pa.Table.from_pylist(buffered, SCHEMA))
