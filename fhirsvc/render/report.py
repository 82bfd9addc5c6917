"""The `evaluate` JSON contract and its readable text form."""

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
        **({"deceased": _death(result.death)} if result.death else {}),
        **({"incomplete": dict(sorted(result.incomplete.items()))} if result.incomplete else {}),
    }


def _death(death: Death) -> str | bool:
    return death.date.isoformat() if death.date else True


def patient_text(result: PatientResult) -> str:
    """Per program: the line table, then each assessment with its evidence values, dates and guideline."""
    out = [f"{result.patient} (as of {result.as_of.isoformat()})"]
    if result.death:
        out.append(f"  deceased {_death(result.death) if result.death.date else '(date not recorded)'}: no findings")
    for what, why in sorted(result.incomplete.items()):
        out.append(f"  incomplete {what}: {why}")
    if not result.programs:
        out.append("  no program applies")
    for program in result.programs:
        current = program.current_line
        out.append(
            f"  [{program.program.id}] {program.program.title}: current line {current.number if current else '-'}"
        )
        for line in program.lines:
            end = line.end.isoformat() if line.end else "ongoing"
            classes = "+".join(sorted({program.classes.get(d, "?") for d in line.drugs}))
            reason = f"  ({line.end_reason})" if line.end_reason else ""
            out.append(
                f"    line {line.number}: {line.start.isoformat()} → {end}  {', '.join(sorted(line.drugs))}"
                f"  [{classes}]{reason}"
            )
        for assessment in program.findings:
            out.append(f"    {assessment.status.upper()}: {assessment.summary}")
            for m in assessment.measurements:
                out.append(f"      {m.date.isoformat()}  {m.shown:<28} {m.ref}")
            if assessment.status != "no-action":
                out.append(f"      guideline: {assessment.guideline.label} <{assessment.guideline.url}>")
    if result.skipped:
        out.append(f"  ({result.skipped} malformed resource(s) skipped)")
    return "\n".join(out)
