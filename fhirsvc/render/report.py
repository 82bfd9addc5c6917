"""The `evaluate` JSON contract: lines and findings per program, the cards, what was skipped or incomplete."""

from __future__ import annotations

from typing import Any

from fhirsvc.cds.models import compact
from fhirsvc.deceased import Death
from fhirsvc.findings import Finding
from fhirsvc.pipeline import PatientResult, ProgramResult
from fhirsvc.render.cards import cards_for


def _line(line: Any, classes: dict[str, str]) -> dict[str, Any]:
    return {
        "number": line.number,
        "drugs": sorted(line.drugs),
        "classes": sorted({classes.get(d, "unclassified") for d in line.drugs}),
        "start": line.start.isoformat(),
        "end": line.end.isoformat() if line.end else None,
        "end_reason": line.end_reason,
        **({"planned": True} if line.planned else {}),
    }


def _assessment(assessment: Finding) -> dict[str, Any]:
    return {
        "rule": assessment.rule,
        "status": assessment.status,
        "summary": assessment.summary,
        "evidence": assessment.evidence,
        "recommendations": assessment.recommendations,
        "values": [
            {"reference": m.ref, "date": m.date.isoformat(), "value": m.value, "unit": m.unit, "reported": m.shown}
            for m in assessment.measurements
        ],
        "guideline": {"label": assessment.guideline.label, "url": str(assessment.guideline.url)},
    }


def _program(program: ProgramResult) -> dict[str, Any]:
    current = program.current_line
    return {
        "program": program.program.id,
        "current_line": current.number if current else None,
        "lines": [_line(line, program.classes) for line in program.lines],
        "assessments": [_assessment(a) for a in program.findings],
    }


def patient_report(result: PatientResult) -> dict[str, Any]:
    """One item of `fhirsvc evaluate` output (the public JSON contract documented in the README)."""
    return {
        "patient": result.patient,
        "as_of": result.as_of.isoformat(),
        "programs": [_program(p) for p in result.programs],
        "cards": [compact(c.model_dump(mode="json", exclude_none=True)) for c in cards_for(result)],
        "skipped_resources": result.skipped,
        **({"deceased": death_date(result.death)} if result.death else {}),
        **({"incomplete": dict(sorted(result.incomplete.items()))} if result.incomplete else {}),
    }


def death_date(death: Death) -> str | bool:
    """The date of death, or true when the record says deceased without a date."""
    return death.date.isoformat() if death.date else True
