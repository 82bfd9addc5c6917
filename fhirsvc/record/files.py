"""Reads FHIR files (Bundles of any type, single resources, NDJSON; directories of them) into PatientRecords."""

from __future__ import annotations

import logging
import os
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

import orjson

from fhirsvc.record.model import PatientRecord, RecordBuilder, Resource, filing_patient, keep_medication

log = logging.getLogger(__name__)

SUFFIXES = (".json", ".ndjson", ".jsonl")
NDJSON_SUFFIXES = (".ndjson", ".jsonl")

_OPEN_FILES = 32  # NDJSON files kept open while records are built


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")


def _read_json(path: Path) -> object:
    """A JSON file's content, or None (logged) when it is not JSON."""
    try:
        return orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError:
        log.warning("%s: not JSON; skipped", path.name)
        return None


@dataclass(frozen=True)
class NdjsonLines:
    """An NDJSON file: a patient's entry names one of its lines by byte offset and length."""

    path: Path


@dataclass(frozen=True)
class OnePatientFile:
    """A JSON file that holds one patient's resources: read again when that patient's record is built."""

    path: Path


@dataclass(frozen=True)
class HeldRecords:
    """Records filed from a JSON file of several patients, or from a Bundle on an NDJSON line: kept in memory."""

    records: dict[str, PatientRecord]


Source = NdjsonLines | OnePatientFile | HeldRecords


_MAX_BITS = 28  # hash groups at most: 2 GB of group starts past 2 billion Medications


def _key_hash(key: str) -> int:
    """A `Medication/<id>`'s place in `MedicationLines` (str hashes are stable within the process, which is the
    index's lifetime; two ids that share one are told apart when their lines are read back)."""
    return hash(key)


@dataclass
class MedicationLines:
    """Where each NDJSON Medication line is, found by a hash of its `Medication/<id>`: 33 bytes a Medication.

    Bulk exports may write a Medication for every medication order (Synthea's US Core export: hundreds per
    patient), so an export of millions of patients holds hundreds of millions of them: they cannot be held parsed,
    nor even as a dict of their ids (about 200 bytes an entry), only as flat arrays: the hashes and where each line
    is, grouped by the hashes' top bits (a counting sort) so that a lookup reads about 8 of them (bench/README.md,
    "Medications at scale").
    """

    hashes: array[int] = field(default_factory=lambda: array("q"))
    places: array[int] = field(default_factory=lambda: array("q"))  # (source, offset, length) per hash
    # Once grouped: where the group of each value of the hashes' top `_bits` bits starts, in `hashes`.
    _starts: array[int] = field(default_factory=lambda: array("q"))
    _bits: int = 0
    _grouped: bool = False

    def __len__(self) -> int:
        return len(self.hashes)

    def add(self, key: str, source: int, offset: int, length: int) -> None:
        self.hashes.append(_key_hash(key))
        self.places.extend((source, offset, length))
        self._grouped = False

    def _group(self) -> None:
        count = len(self.hashes)
        self._bits = bits = min(_MAX_BITS, max(1, count.bit_length() - 3))  # about 8 hashes a group
        shift, first = 64 - bits, 1 << (bits - 1)  # a hash's group: its top bits, from the most negative
        starts = array("q", bytes(8 * ((1 << bits) + 1)))
        for hashed in self.hashes:
            starts[(hashed >> shift) + first + 1] += 1
        for group in range(1 << bits):
            starts[group + 1] += starts[group]
        hashes, places = array("q", bytes(8 * count)), array("q", bytes(24 * count))
        free = array("q", starts)  # the next free slot of each group
        old = self.places
        for at, hashed in enumerate(self.hashes):
            group = (hashed >> shift) + first
            slot = free[group]
            free[group] = slot + 1
            hashes[slot] = hashed
            places[3 * slot], places[3 * slot + 1], places[3 * slot + 2] = old[3 * at], old[3 * at + 1], old[3 * at + 2]
        self.hashes, self.places, self._starts, self._grouped = hashes, places, starts, True

    def find(self, key: str) -> list[tuple[int, int, int]]:
        """(source, offset, length) of every line that may hold `key` (its hash's): the reader checks the id."""
        if not self._grouped:
            self._group()
        wanted = _key_hash(key)
        group = (wanted >> (64 - self._bits)) + (1 << (self._bits - 1))
        places = self.places
        return [
            (places[3 * at], places[3 * at + 1], places[3 * at + 2])
            for at in range(self._starts[group], self._starts[group + 1])
            if self.hashes[at] == wanted
        ]


@dataclass
class RecordIndex:
    """Where each patient's resources are, from one pass over every file; `records()` builds one patient at a time.

    Bulk Data NDJSON is split by resource type, not by patient, so a patient's lines are spread over several files:
    the index brings them back together without holding them. Resources are filed to patients by the one rule of
    `fhirsvc.record.model` (RecordBuilder, filing_patient).
    """

    files: int = 0
    skipped: int = 0  # unreadable files, lines and resources that name no patient
    # Which NDJSON lines are worth reading back (e.g. not the routine labs no program reads): a line it refuses is
    # still filed (a resource naming no patient is still counted as skipped), then forgotten. Bulk exports are
    # mostly such lines, and reading one back costs a read and a second parse (bench/README.md, "A faster core").
    keep: Callable[[Resource], bool] | None = None
    # Medications are named by the records' `medicationReference`s, and a record reads back only those it names:
    # the ones from JSON files and Bundles held parsed (few, and read whole anyway), NDJSON lines by where they are.
    medications: dict[str, Resource] = field(default_factory=dict)
    medication_lines: MedicationLines = field(default_factory=MedicationLines)
    sources: list[Source] = field(default_factory=list)
    # patient id -> (source number, byte offset, length) for each run of its NDJSON lines and each source, in the
    # order read; offset and length are 0 for a source that is not NDJSON. A run is one line, or several that
    # follow each other in the file (an export written patient by patient): read back with one read instead of
    # one per line (bench/README.md, "A faster core"). Flat int64 arrays rather than lists of tuples: at 10,000
    # patients of 40 resources the index takes 12 MB instead of about 56 MB (tracemalloc), where the whole
    # `fhirsvc evaluate` run peaks at 61 MB (bench/README.md, "Clarity back").
    _where: dict[str, array[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._where)

    @property
    def patients(self) -> list[str]:
        return sorted(self._where)

    def _note(self, patient_id: str, source: int, offset: int = 0, length: int = 0) -> None:
        where = self._where.get(patient_id)
        if where is None:
            where = self._where[patient_id] = array("q")
        _add_to_runs(where, source, offset, length)

    def _add_source(self, source: Source) -> int:
        self.sources.append(source)
        return len(self.sources) - 1

    def _builder(self) -> RecordBuilder:
        builder = RecordBuilder()
        builder.medications = self.medications
        return builder

    def _add_built(self, builder: RecordBuilder, path: Path | None) -> None:
        """Records a builder filed from one JSON file (`path`) or one Bundle line."""
        self.skipped += builder.skipped
        if not builder.records:
            return
        kept: Source = HeldRecords(builder.records)
        if path is not None and len(builder.records) == 1:
            kept = OnePatientFile(path)
        source = self._add_source(kept)
        for patient_id in builder.records:
            self._note(patient_id, source)

    def add_json(self, path: Path) -> None:
        data = _read_json(path)
        if data is None:
            self.skipped += 1
            return
        builder = self._builder()
        builder.add_all(data if isinstance(data, list) else [data])
        self._add_built(builder, path)

    def add_ndjson(self, path: Path) -> None:
        source = self._add_source(NdjsonLines(path))
        offset = 0
        with path.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                start, offset = offset, offset + len(line)
                if not line or line.isspace():  # blank (isspace, not strip: no copy of every line)
                    continue
                try:
                    resource = orjson.loads(line)
                except orjson.JSONDecodeError:
                    self.skipped += 1
                    log.warning("%s line %d: not JSON; skipped", path.name, number)
                    continue
                self._add_line(resource, source, start, len(line))

    def _add_line(self, resource: object, source: int, offset: int, length: int) -> None:
        """Index one NDJSON line under the patient RecordBuilder would file it to."""
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            self.skipped += 1
            return
        if resource["resourceType"] == "Medication":  # named by reference from any record: where it is
            if isinstance(resource.get("id"), str):  # (keep_medication ignores one without an id)
                self.medication_lines.add(f"Medication/{resource['id']}", source, offset, length)
            return
        if resource["resourceType"] == "Bundle":  # a Bundle resolves its own references
            builder = self._builder()
            builder.add_resource(resource)
            self._add_built(builder, None)
            return
        ref, malformed = filing_patient(resource)
        if ref is None:
            self.skipped += malformed
            return
        patient_id = ref.partition("/")[2]
        if self.keep is not None and not self.keep(resource):
            if patient_id not in self._where:  # still a patient of the export, evaluated like any other
                self._where[patient_id] = array("q")
            return
        self._note(patient_id, source, offset, length)

    def records(self) -> Iterator[PatientRecord]:
        """Each patient's record, built from its lines and sources, its resources in canonical order."""
        reader = _LineReader()
        try:
            for patient_id in self.patients:
                record = PatientRecord(patient_id)
                entries = iter(self._where[patient_id])
                for number, offset, length in zip(entries, entries, entries, strict=True):
                    source = self.sources[number]
                    if isinstance(source, NdjsonLines):
                        for resource in reader.resources(source.path, offset, length):
                            record.add(resource)
                        continue
                    held = source.records if isinstance(source, HeldRecords) else _reread(source.path)
                    for rtype, resources in held[patient_id].resources.items():
                        record.resources[rtype].extend(resources)
                record.medications = self._medications_named(record, reader)
                yield record.in_canonical_order()
        finally:
            reader.close()

    def _medications_named(self, record: PatientRecord, reader: _LineReader) -> dict[str, Resource]:
        """The Medications a record names, each id's copies resolved by the filing rule (`keep_medication`); one
        named but absent stays absent (`PatientRecord.missing_medications`)."""
        named: dict[str, Resource] = {}
        if not self.medications and not self.medication_lines:  # an export that names drugs inline
            return named
        keys = record.referenced_medications()
        for key in sorted(keys & self.medications.keys()):
            keep_medication(named, self.medications[key])
        # Read in file order, lines that follow each other with one read: an export writes a patient's
        # Medications together (Synthea: with the orders that name them), so a record's are mostly one run.
        runs: array[int] = array("q")
        for place in sorted(place for key in keys for place in self.medication_lines.find(key)):
            _add_to_runs(runs, *place)
        entries = iter(runs)
        for number, offset, length in zip(entries, entries, entries, strict=True):
            source = cast(NdjsonLines, self.sources[number])  # only NDJSON lines are noted there
            for medication in reader.resources(source.path, offset, length):
                if f"Medication/{medication['id']}" in keys:  # not another id's that shares its hash
                    keep_medication(named, medication)
        return named


def _add_to_runs(runs: array[int], source: int, offset: int, length: int) -> None:
    """Note a line as (source, offset, length) in flat triples; a line right after the last one noted (same source,
    next byte) lengthens that run instead, so lines that follow each other are read back with one read."""
    if length and runs and runs[-3] == source and runs[-2] + runs[-1] == offset:
        runs[-1] += length
    else:
        runs.extend((source, offset, length))


class _LineReader:
    """Reads indexed runs of NDJSON lines back, keeping a bounded number of files open."""

    def __init__(self) -> None:
        self._handles: dict[Path, BinaryIO] = {}

    def resources(self, path: Path, offset: int, length: int) -> Iterator[Resource]:
        """The resources of a run of whole lines: each ends with a newline (the last line of a file may not), and
        none is blank, so the pieces between newlines are the lines."""
        for line in self.read(path, offset, length).split(b"\n"):
            if line:
                yield orjson.loads(line)

    def read(self, path: Path, offset: int, length: int) -> bytes:
        handle = self._handles.get(path)
        if handle is None:
            if len(self._handles) >= _OPEN_FILES:
                self._handles.pop(next(iter(self._handles))).close()
            handle = self._handles[path] = path.open("rb", buffering=0)
        handle.seek(offset, os.SEEK_SET)
        return handle.read(length)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


def _reread(path: Path) -> dict[str, PatientRecord]:
    """A one-patient JSON file's records, filed again (its Medications were taken in the first pass)."""
    builder = RecordBuilder()
    data = _read_json(path)
    builder.add_all(data if isinstance(data, list) else [data])
    return builder.records


def index_records(paths: Iterable[Path], keep: Callable[[Resource], bool] | None = None) -> RecordIndex:
    """One pass over every file (Bundles, single resources, NDJSON, directories of them): the index
    `RecordIndex.records()` builds patients from, one at a time, in patient order; with `keep`, only the NDJSON
    lines it accepts are read back (Bundles and JSON files are taken whole)."""
    index = RecordIndex(keep=keep)
    for path in iter_files(paths):
        index.files += 1
        if path.suffix in NDJSON_SUFFIXES:
            index.add_ndjson(path)
        else:
            index.add_json(path)
    return index
