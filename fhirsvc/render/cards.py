"""Assessments → CDS Hooks cards: evidence with values and dates, guideline source, suggestions, links."""

from __future__ import annotations

import copy
import uuid
from typing import Any

from fhirsvc.cds.models import Action, Card, Coding, Link, Source, Suggestion
from fhirsvc.pipeline import PatientResult, ProgramResult
from fhirsvc.rules.base import Assessment

# Stable uuids: the same finding on the same evidence keeps its uuid across calls, so feedback and
# "don't show again" (CDS Hooks feedback) attach to the finding, not to one rendering of it.
_NAMESPACE = uuid.UUID("5b0f3c8e-2f4a-4c55-9d1e-6f1c2a7b9e01")

_SAFETY_NOTE = "_This card suggests an evaluation. It does not order, stop or change any therapy._"


def card_uuid(patient: str, assessment: Assessment) -> str:
    key = "|".join([patient, assessment.rule, assessment.outcome, *sorted(assessment.evidence)])
    return str(uuid.uuid5(_NAMESPACE, key))


def detail_markdown(assessment: Assessment, classes: dict[str, str]) -> str:
    parts: list[str] = []
    if assessment.measurements:
        rows = "\n".join(
            f"| {m.date.isoformat()} | {m.shown}" + (f" (= {m.converted})" if m.converted else "") + f" | {m.ref} |"
            for m in assessment.measurements
        )
        parts.append(f"**Evidence**\n\n| Date | Result | Record |\n|---|---|---|\n{rows}")
    line = assessment.line
    if line is not None:
        drugs = ", ".join(f"{d} ({classes.get(d, '?')})" for d in assessment.regimen)
        parts.append(
            f"**Current regimen** (line {line.number}, since {line.start.isoformat()}): {drugs}\n\n"
            f"Medication records: {', '.join(line.refs)}"
        )
    if assessment.recommendations:
        parts.append("**Consider**\n\n" + "\n".join(f"- {r}" for r in assessment.recommendations))
    parts.append(f"**Guideline**: {assessment.guideline.citation}")
    parts.append(_SAFETY_NOTE)
    return "\n\n".join(parts)


def _suggestion(
    key: str, program: ProgramResult, assessment: Assessment, patient: str, card_id: str, as_of: str
) -> Suggestion:
    template = program.program.suggestions[key]
    resource: dict[str, Any] = copy.deepcopy(template.resource)
    resource["subject"] = {"reference": patient}
    resource["authoredOn"] = as_of
    reasons = [{"reference": m.ref} for m in assessment.measurements]
    if reasons:
        resource["reasonReference"] = reasons
    return Suggestion(
        label=template.label,
        uuid=str(uuid.uuid5(uuid.UUID(card_id), key)),
        isRecommended=template.is_recommended or None,
        actions=[Action(type="create", description=template.description, resource=resource)],
    )


def card_for(result: PatientResult, program: ProgramResult, assessment: Assessment) -> Card:
    card_id = card_uuid(result.patient, assessment)
    suggestions = [
        _suggestion(key, program, assessment, result.patient, card_id, result.as_of.isoformat())
        for key in assessment.suggestions
    ]
    guideline = assessment.guideline
    return Card(
        uuid=card_id,
        summary=assessment.summary,
        detail=detail_markdown(assessment, program.classes),
        indicator=assessment.indicator,
        source=Source(label=f"{guideline.label} (fhirsvc)", url=str(guideline.url)),
        suggestions=suggestions,
        selectionBehavior="at-most-one" if suggestions else None,
        overrideReasons=[
            Coding(system=r.system, code=r.code, display=r.display) for r in program.program.override_reasons
        ],
        links=[Link(label=guideline.label, url=str(guideline.url), type="absolute")],
    )


def cards_with_findings(result: PatientResult) -> list[tuple[Card, Assessment]]:
    """One card per assessment that warrants one, most urgent first, each with the assessment behind it."""
    order = {"critical": 0, "warning": 1, "info": 2}
    pairs = [
        (card_for(result, program, assessment), assessment)
        for program in result.programs
        for assessment in program.assessments
        if assessment.card
    ]
    return sorted(pairs, key=lambda pair: order[pair[0].indicator])


def cards_for(result: PatientResult) -> list[Card]:
    return [card for card, _ in cards_with_findings(result)]
