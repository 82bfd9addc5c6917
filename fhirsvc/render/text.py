"""The `evaluate` text form: per patient and program the line table, then each finding with its evidence."""

from __future__ import annotations

from fhirsvc.pipeline import PatientResult


def patient_text(result: PatientResult) -> str:
    """Per program: the line table, then each assessment with its evidence values, dates and guideline."""
    out = [f"{result.patient} (as of {result.as_of.isoformat()})"]
    if result.death:
        when = result.death.date.isoformat() if result.death.date else "(date not recorded)"
        out.append(f"  deceased {when}: no findings")
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
