"""Reads FHIR Bundles (any type), single resources and NDJSON files from paths into PatientRecords.

`load_records` holds every record in memory. `index_records` streams: a first pass reads every file once and
keeps, per patient, only where its resources are (byte offset and length of each NDJSON line; JSON files are
small and kept, or re-read when they hold one patient); `RecordIndex.records()` then builds one patient at a
time in patient order. Bulk Data NDJSON is split by resource type, not by patient, so a patient's lines are
spread over several files: the offsets bring them back together. Both give the same records in the same order.
"""

from __future__ import annotations

import logging
import os
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import orjson

from fhirsvc.record.model import PatientRecord, RecordBuilder, Resource, filing_patient

log = logging.getLogger(__name__)

SUFFIXES = (".json", ".ndjson", ".jsonl")
NDJSON_SUFFIXES = (".ndjson", ".jsonl")

_OFFSET_BITS = 40  # an NDJSON line's location packs (file number, byte offset < 1 TiB) into one int64
_OPEN_FILES = 32  # NDJSON files kept open while records are built


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
        if path.suffix in NDJSON_SUFFIXES:
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


def _read_json(path: Path) -> object:
    """A JSON file's content, or None (logged) when it is not JSON."""
    try:
        return orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError:
        log.warning("%s: not JSON; skipped", path.name)
        return None


@dataclass
class RecordIndex:
    """Where each patient's resources are; `records()` builds them one at a time, in patient order."""

    files: int = 0
    skipped: int = 0  # unreadable files, lines and resources that name no patient
    medications: dict[str, Resource] = field(default_factory=dict)  # shared by every record (medicationReference)
    # patient id -> pairs (location, length): an NDJSON line at `location` (file << 40 | offset), or, with a
    # negative location, the records of in-memory group -1 - location (a JSON file or a Bundle line).
    _where: dict[str, array[int]] = field(default_factory=dict)
    _ndjson: list[Path] = field(default_factory=list)
    _groups: list[dict[str, PatientRecord] | Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._where)

    @property
    def patients(self) -> list[str]:
        return sorted(self._where)

    def _note(self, patient_id: str, location: int, length: int) -> None:
        where = self._where.get(patient_id)
        if where is None:
            where = self._where[patient_id] = array("q")
        where.append(location)
        where.append(length)

    def _add_group(self, builder: RecordBuilder, source: Path | None) -> None:
        """Records a builder made from one JSON file or Bundle line: re-read later when they are one patient's."""
        self.skipped += builder.skipped
        if not builder.records:
            return
        keep: dict[str, PatientRecord] | Path = builder.records
        if source is not None and len(builder.records) == 1:
            keep = source
        self._groups.append(keep)
        location = -len(self._groups)
        for patient_id in builder.records:
            self._note(patient_id, location, 0)

    def _builder(self) -> RecordBuilder:
        builder = RecordBuilder()
        builder.medications = self.medications
        return builder

    def add_json(self, path: Path) -> None:
        data = _read_json(path)
        if data is None:
            self.skipped += 1
            return
        builder = self._builder()
        builder.add_all(data if isinstance(data, list) else [data])
        self._add_group(builder, path)

    def add_ndjson(self, path: Path) -> None:
        file_number = len(self._ndjson)
        self._ndjson.append(path)
        offset = 0
        with path.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                start, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                try:
                    resource = orjson.loads(line)
                except orjson.JSONDecodeError:
                    self.skipped += 1
                    log.warning("%s line %d: not JSON; skipped", path.name, number)
                    continue
                self._add_line(resource, (file_number << _OFFSET_BITS) | start, len(line))

    def _add_line(self, resource: object, location: int, length: int) -> None:
        """Index one NDJSON line the way RecordBuilder.add_all would file it."""
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            self.skipped += 1
            return
        rtype = resource["resourceType"]
        if rtype in ("Bundle", "Medication"):  # a Bundle resolves its own references; Medications are shared
            builder = self._builder()
            builder.add_resource(resource)
            self._add_group(builder, None)
            return
        ref, malformed = filing_patient(resource)
        if ref is None:
            self.skipped += malformed
            return
        self._note(ref.partition("/")[2], location, length)

    def records(self) -> Iterator[PatientRecord]:
        """Each patient's record, built from its lines and groups in the order they were read."""
        handles: dict[int, BinaryIO] = {}
        cached: tuple[Path, dict[str, PatientRecord]] | None = None
        try:
            for patient_id in self.patients:
                record = PatientRecord(patient_id, medications=self.medications)
                where = self._where[patient_id]
                for index in range(0, len(where), 2):
                    location, length = where[index], where[index + 1]
                    if location >= 0:
                        line = self._line(handles, location, length)
                        record.add(orjson.loads(line))
                        continue
                    group = self._groups[-1 - location]
                    if isinstance(group, Path):
                        if cached is None or cached[0] != group:
                            cached = (group, self._reread(group))
                        group = cached[1]
                    for rtype, resources in group[patient_id].resources.items():
                        record.resources[rtype].extend(resources)
                yield record
        finally:
            for handle in handles.values():
                handle.close()

    def _line(self, handles: dict[int, BinaryIO], location: int, length: int) -> bytes:
        file_number, offset = location >> _OFFSET_BITS, location & ((1 << _OFFSET_BITS) - 1)
        handle = handles.get(file_number)
        if handle is None:
            if len(handles) >= _OPEN_FILES:
                handles.pop(next(iter(handles))).close()
            handle = handles[file_number] = self._ndjson[file_number].open("rb", buffering=0)
        handle.seek(offset, os.SEEK_SET)
        return handle.read(length)

    def _reread(self, path: Path) -> dict[str, PatientRecord]:
        builder = RecordBuilder()  # its Medications were taken in the first pass
        data = _read_json(path)
        builder.add_all(data if isinstance(data, list) else [data])
        return builder.records


def index_records(paths: Iterable[Path]) -> RecordIndex:
    """First pass over every file: the index `RecordIndex.records()` streams patients from."""
    index = RecordIndex()
    for path in iter_files(paths):
        index.files += 1
        if path.suffix in NDJSON_SUFFIXES:
            index.add_ndjson(path)
        else:
            index.add_json(path)
    return index
