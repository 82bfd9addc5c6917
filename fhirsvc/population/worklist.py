"""The worklist: one row per actionable finding, the same columns from every engine, and the finding it holds."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import orjson
import pyarrow as pa

from fhirsvc.findings import Finding, Measurement
from fhirsvc.lot.engine import Line
from fhirsvc.pipeline import PatientResult, evaluate_record
from fhirsvc.record.model import PatientRecord
from fhirsvc.terminology.knowledge import Knowledge

# The Parquet schema every engine writes. `finding` is the whole finding as JSON, so that writing back from the
# worklist needs neither the record nor a second evaluation; the other columns are what a worklist screen shows.
SCHEMA = pa.schema(
    [
        pa.field("server", pa.string(), nullable=False),
        pa.field("patient", pa.string(), nullable=False),
        pa.field("program", pa.string(), nullable=False),
        pa.field("line", pa.int32()),
        pa.field("regimen", pa.list_(pa.string()), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("indicator", pa.string(), nullable=False),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("outcome", pa.string(), nullable=False),
        pa.field("summary", pa.string(), nullable=False),
        pa.field("evidence", pa.list_(pa.string()), nullable=False),
        pa.field("as_of", pa.date32(), nullable=False),
        pa.field("finding_id", pa.string(), nullable=False),
        pa.field("finding", pa.string(), nullable=False),
    ]
)
COLUMNS = tuple(SCHEMA.names)
# The order rows are compared and written in: one patient's findings together, then by program and rule.
ROW_ORDER = ("patient", "program", "rule", "finding_id")


def evaluated_rows(
    record: PatientRecord, knowledge: Knowledge, as_of: date, server: str, summary: PopulationSummary
) -> list[dict[str, Any]]:
    """One patient evaluated into worklist rows and counted in `summary`: the step every engine takes per patient."""
    result = evaluate_record(record, knowledge, as_of)
    rows = worklist_rows(result, server)
    summary.add(result, len(rows))
    return rows


def worklist_rows(result: PatientResult, server: str) -> list[dict[str, Any]]:
    """The patient's actionable findings as worklist rows (most urgent first, as a card list would show them)."""
    return [worklist_row(finding, server) for finding in result.actionable]


def worklist_row(finding: Finding, server: str) -> dict[str, Any]:
    return {
        "server": server,
        "patient": finding.patient,
        "program": finding.program,
        "line": finding.line.number if finding.line else None,
        "regimen": list(finding.regimen),
        "status": finding.status,
        "indicator": finding.indicator,
        "rule": finding.rule,
        "outcome": finding.outcome,
        "summary": finding.summary,
        "evidence": list(finding.evidence),
        "as_of": finding.as_of,
        "finding_id": finding.id,
        "finding": orjson.dumps(_finding_document(finding)).decode(),
    }


def _line_document(line: Line) -> dict[str, Any]:
    return {
        "number": line.number,
        "start": line.start,
        "end": line.end,
        "end_reason": line.end_reason,
        "drugs": sorted(line.drugs),
        "signature": sorted(line.signature),
        "refs": line.refs,
        "planned": line.planned,
    }


def _finding_document(finding: Finding) -> dict[str, Any]:
    """What a finding is, minus what the mappings give back (the guideline, the suggestions' resources)."""
    drugs = set(finding.regimen) | (finding.line.drugs if finding.line else set())
    return {
        "patient": finding.patient,
        "as_of": finding.as_of,
        "program": finding.program,
        "rule": finding.rule,
        "outcome": finding.outcome,
        "status": finding.status,
        "indicator": finding.indicator,
        "summary": finding.summary,
        "card": finding.card,
        "evidence": finding.evidence,
        "measurements": finding.measurements,  # a dataclass: orjson writes its fields
        "recommendations": finding.recommendations,
        "suggestions": list(finding.suggestions),
        "line": _line_document(finding.line) if finding.line else None,
        "regimen": finding.regimen,
        "classes": {drug: cls for drug, cls in finding.classes.items() if drug in drugs},
        "drafts": finding.drafts,
        "planned_drugs": sorted(finding.planned_drugs),
    }


class UnknownFinding(ValueError):
    """A worklist row names a program or rule the loaded mappings do not have (written by other mappings)."""


def finding_from_row(document: str | bytes, knowledge: Knowledge) -> Finding:
    """The finding a worklist row holds, with its guideline and suggestions taken from the loaded mappings."""
    data = orjson.loads(document)
    program = next((p for p in knowledge.programs if p.id == data["program"]), None)
    rule = next((r for r in program.rules if r.id == data["rule"]), None) if program else None
    if program is None or rule is None:
        raise UnknownFinding(f"{data['program']}/{data['rule']}: not in the loaded mappings")
    missing = [key for key in data["suggestions"] if key not in program.suggestions]
    if missing:
        raise UnknownFinding(f"{data['program']}: unknown suggestions {missing}")
    line = data["line"]
    return Finding(
        patient=data["patient"],
        as_of=date.fromisoformat(data["as_of"]),
        program=data["program"],
        rule=data["rule"],
        outcome=data["outcome"],
        status=data["status"],
        indicator=data["indicator"],
        summary=data["summary"],
        card=data["card"],
        guideline=rule.guideline,
        evidence=data["evidence"],
        measurements=[Measurement(**{**m, "date": date.fromisoformat(m["date"])}) for m in data["measurements"]],
        recommendations=data["recommendations"],
        suggestions={key: program.suggestions[key] for key in data["suggestions"]},
        line=None
        if line is None
        else Line(
            number=line["number"],
            start=date.fromisoformat(line["start"]),
            end=date.fromisoformat(line["end"]) if line["end"] else None,
            end_reason=line["end_reason"],
            drugs=set(line["drugs"]),
            signature=frozenset(line["signature"]),
            refs=line["refs"],
            planned=line["planned"],
        ),
        regimen=data["regimen"],
        classes=data["classes"],
        drafts=data["drafts"],
        planned_drugs=frozenset(data["planned_drugs"]),
    )


@dataclass
class PopulationSummary:
    """What a population run saw: patients, findings by program and status, what could not be used."""

    patients: int = 0
    rows: int = 0
    deceased: int = 0
    incomplete: int = 0
    skipped: int = 0  # unreadable files, lines and resources, and resources that name no patient
    by_status: Counter[tuple[str, str]] = field(default_factory=Counter)  # (program, status) → findings

    def add(self, result: PatientResult, rows: int) -> None:
        self.patients += 1
        self.rows += rows
        self.deceased += result.death is not None
        self.incomplete += bool(result.incomplete)
        self.skipped += result.skipped
        self.by_status.update((f.program, f.status) for f in result.findings)

    def merge(self, other: PopulationSummary) -> None:
        self.patients += other.patients
        self.rows += other.rows
        self.deceased += other.deceased
        self.incomplete += other.incomplete
        self.skipped += other.skipped
        self.by_status.update(other.by_status)

    def lines(self) -> list[str]:
        out = [
            f"{self.patients:,} patients, {self.rows:,} worklist rows"
            f" ({self.deceased:,} deceased, {self.incomplete:,} with incomplete data, {self.skipped:,} skipped)"
        ]
        for program in sorted({p for p, _ in self.by_status}):
            counts = sorted((s, n) for (p, s), n in self.by_status.items() if p == program)
            out.append(f"  {program}: " + ", ".join(f"{status} {n:,}" for status, n in counts))
        return out
