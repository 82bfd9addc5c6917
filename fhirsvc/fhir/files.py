"""Reads FHIR Bundles (any type), single resources and NDJSON files from paths into PatientRecords."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from fhirsvc.fhir.record import PatientRecord, RecordBuilder

log = logging.getLogger(__name__)

SUFFIXES = (".json", ".ndjson", ".jsonl")


@dataclass
class LoadResult:
    records: list[PatientRecord]
    files: int
    skipped: int  # unreadable files, lines and resources that name no patient


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")


def load_records(paths: Iterable[Path]) -> LoadResult:
    builder = RecordBuilder()
    files = 0
    skipped = 0
    for path in iter_files(paths):
        files += 1
        if path.suffix in (".ndjson", ".jsonl"):
            with path.open("rb") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        builder.add_all([orjson.loads(line)])
                    except orjson.JSONDecodeError:
                        skipped += 1
                        log.warning("%s line %d: not JSON; skipped", path.name, number)
            continue
        try:
            data = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            skipped += 1
            log.warning("%s: not JSON; skipped", path.name)
            continue
        builder.add_all(data if isinstance(data, list) else [data])
    return LoadResult(builder.build(), files, skipped + builder.skipped)
