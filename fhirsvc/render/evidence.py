"""Step-therapy evidence as a FHIR document (Bundle + Composition), its HTML, and the order-time card."""

from __future__ import annotations

import base64
import html
import uuid
from datetime import date
from typing import Any

import orjson

from fhirsvc.cds.models import Action, Card, Coding, Link, Source, Suggestion
from fhirsvc.facts import DRAFT_REF_PREFIX
from fhirsvc.findings import Finding, derived_id
from fhirsvc.pipeline import PatientResult
from fhirsvc.record.model import PatientRecord
from fhirsvc.step_therapy import StepEvidence, Trial, ordered_next_line, trial_summary
from fhirsvc.terminology.catalog import DrugCatalog
from fhirsvc.terminology.knowledge import Knowledge

# The document attached to a card's DocumentReference suggestion, as JSON: a CDS response carries it inline
# (base64), so it is kept small; a larger one is not offered (the card says so) and `fhirsvc evidence` writes it.
MAX_ATTACHED_BYTES = 256 * 1024
DOCUMENT_CONTENT_TYPE = "application/fhir+json"
_NAMESPACE = uuid.UUID("9d7c2f0a-5a3e-4b8e-8f61-2c4e0b7d1a93")
_XHTML = "http://www.w3.org/1999/xhtml"
# Not a Da Vinci CRD "coverage-info" card (http://terminology.hl7.org/CodeSystem/cdshooks-card-type): that type
# carries a payer's assertion about coverage, and this service is not the payer. Its own topic lets an EHR route it.
_TOPIC = Coding(system="urn:fhirsvc:card-type", code="step-therapy-evidence", display="Step-therapy evidence")
_STANDING_TEXT = {
    "on-file": "First-line therapy documented",
    "too-short": "First-line trial shorter than the usual minimum",
    "missing": "No first-line trial on file",
}


def _id(evidence: StepEvidence, part: str) -> str:
    key = "|".join([evidence.patient, evidence.program.program.id, *evidence.requested, *evidence.sources, part])
    return str(uuid.uuid5(_NAMESPACE, key))


def _trial_rows(trial: Trial, classes: dict[str, str], codes: dict[str, str | None]) -> list[tuple[str, str]]:
    drugs = "; ".join(f"{d} ({classes.get(d, '?')}; RxNorm {codes.get(d) or 'not coded'})" for d in trial.drugs)
    rows = [
        ("Drugs", drugs),
        ("Start", trial.start.isoformat()),
        ("End", trial.end.isoformat() if trial.end else "ongoing"),
        ("Duration", f"{trial.days} days"),
        ("Adherence", "not recorded"),
        ("Why it ended", (trial.line.end_reason or "not ended").replace("-", " ")),
    ]
    rows += [
        (f"{name} (latest during the line)", f"{m.reading} on {m.date.isoformat()} ({m.ref})")
        for name, m in trial.results
    ]
    rows += [("Recorded intolerance", f"{', '.join(sorted(a.drugs))} ({a.ref})") for a in trial.intolerances]
    rows.append(("Sources", ", ".join(_trial_refs(trial))))
    return rows


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _div(inner: str) -> dict[str, str]:
    return {"status": "generated", "div": f'<div xmlns="{_XHTML}">{inner}</div>'}


def _sections(evidence: StepEvidence, codes: dict[str, str | None]) -> list[dict[str, Any]]:
    program, step = evidence.program.program, evidence.step
    diagnosis_rows = [("Program", program.title)] + [
        ("Diagnosis", f"{evidence.diagnosis_names.get(ref, '')} ({ref})") for ref in evidence.diagnoses
    ]
    diagnosis: dict[str, Any] = {"title": "Diagnosis", "text": _div(_table(diagnosis_rows))}
    if evidence.diagnoses:  # FHIR JSON has no empty arrays
        diagnosis["entry"] = [{"reference": ref} for ref in evidence.diagnoses]
    else:
        diagnosis["emptyReason"] = {"text": "No diagnosis coded with the program's codes (in it by treatment)"}
    sections = [diagnosis]
    for trial in evidence.trials:
        sections.append(
            {
                "title": f"Line {trial.line.number}: {', '.join(trial.drugs)}",
                "text": _div(
                    f"<p>{html.escape(trial_summary(trial))}</p>"
                    + _table(_trial_rows(trial, evidence.program.classes, codes))
                ),
                "entry": [{"reference": r} for r in _trial_refs(trial)],
            }
        )
    if not evidence.trials:
        sections.append(
            {
                "title": "First-line therapy",
                "text": _div("<p>No first-line trial on file.</p>"),
                "emptyReason": {"text": "No first-line trial on file"},
            }
        )
    guideline = step.guideline
    requested = ", ".join(evidence.requested) or "the next-line therapy"
    rows = [
        ("Requested", requested),
        ("Standing", _STANDING_TEXT[evidence.standing]),
        ("Minimum first-line trial", f"{step.min_trial_days} days"),
        ("Guideline", f"{guideline.label}: {guideline.citation} {guideline.url}" if guideline else step.source),
        ("Basis", step.source),
    ] + [("An insurer usually asks for", ask) for ask in step.insurer_asks]
    sections.append(
        {
            "title": "Guideline: why the requested drug is the next step",
            "text": _div(_table(rows)),
            **({"entry": [{"reference": o} for o in evidence.orders]} if evidence.orders else {}),
        }
    )
    return sections


def _trial_refs(trial: Trial) -> list[str]:
    refs = [*trial.line.refs, *(m.ref for _, m in trial.results), *(a.ref for a in trial.intolerances)]
    return [r for r in dict.fromkeys(refs) if not r.startswith(DRAFT_REF_PREFIX)]


def evidence_document(evidence: StepEvidence, catalog: DrugCatalog, timestamp: str) -> dict[str, Any]:
    """A Bundle of type document: a Composition (subject the patient) whose sections reference every source resource
    by its record reference; ingredient codes from `catalog`; `timestamp`: when it was assembled (FHIR instant)."""
    program = evidence.program.program
    codes = {d: catalog.drugs[d].rxnorm if d in catalog.drugs else None for t in evidence.trials for d in t.drugs}
    sections = _sections(evidence, codes)
    title = f"Step-therapy evidence: {program.title}"
    narrative = f"<h1>{html.escape(title)}</h1>" + "".join(
        f"<h2>{html.escape(s['title'])}</h2>{_inner(s['text']['div'])}" for s in sections
    )
    composition_id = _id(evidence, "composition")
    composition = {
        "resourceType": "Composition",
        "id": composition_id,
        "text": _div(narrative),
        "status": "final",
        "type": {"text": "Step-therapy evidence of first-line therapy"},
        "subject": {"reference": evidence.patient},
        "date": timestamp,
        "author": [{"display": "fhirsvc"}],
        "title": title,
        "section": sections,
    }
    return {
        "resourceType": "Bundle",
        "id": _id(evidence, "bundle"),
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{_id(evidence, 'document')}"},
        "type": "document",
        "timestamp": timestamp,
        "entry": [{"fullUrl": f"urn:uuid:{composition_id}", "resource": composition}],
    }


def _inner(div: str) -> str:
    return div[div.index(">") + 1 : -len("</div>")]


def evidence_html(document: dict[str, Any]) -> str:
    """A standalone HTML page of the document: the Composition's narrative (the same content)."""
    composition = document["entry"][0]["resource"]
    style = "body{font-family:sans-serif;max-width:60em;margin:2em auto}th{text-align:left;padding-right:1em}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(composition["title"])}'
        f"</title><style>{style}</style></head><body>{_inner(composition['text']['div'])}</body></html>\n"
    )


def document_reference(evidence: StepEvidence, document: dict[str, Any], created: date) -> dict[str, Any] | None:
    """A DocumentReference with the document attached, linked to the patient and the draft orders; None when the
    document is over MAX_ATTACHED_BYTES."""
    data = orjson.dumps(document)
    if len(data) > MAX_ATTACHED_BYTES:
        return None
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": "current",
        "docStatus": "final",
        "type": {"text": "Step-therapy evidence of first-line therapy"},
        "subject": {"reference": evidence.patient},
        "date": f"{created.isoformat()}T00:00:00Z",
        "description": f"First-line therapy on file for {', '.join(evidence.requested)}",
        "content": [
            {
                "attachment": {
                    "contentType": DOCUMENT_CONTENT_TYPE,
                    "data": base64.b64encode(data).decode("ascii"),
                    "size": len(data),
                    "title": document["entry"][0]["resource"]["title"],
                    "creation": document["timestamp"],
                }
            }
        ],
    }
    if evidence.orders:
        resource["context"] = {"related": [{"reference": order} for order in evidence.orders]}
    return resource


def step_therapy_finding(evidence: StepEvidence) -> Finding:
    """The card's finding (its id keys feedback and "don't show again" like every other card)."""
    program, step = evidence.program.program, evidence.step
    assert step.guideline is not None  # checked at load for programs where step therapy applies
    drugs = ", ".join(evidence.requested)
    if evidence.standing == "on-file":
        summary = f"Step therapy for {drugs}: " + "; ".join(trial_summary(t) for t in evidence.trials)
    elif evidence.standing == "too-short":
        summary = (
            f"Step therapy for {drugs}: first-line trial under {step.min_trial_days} days; insurer may ask for more"
        )
    else:
        summary = f"Step therapy for {drugs}: no first-line trial on file; an insurer will likely ask for one"
    return Finding(
        patient=evidence.patient,
        as_of=evidence.as_of,
        program=program.id,
        rule="step-therapy",
        outcome=evidence.standing,
        status="monitor" if evidence.standing == "on-file" else "data-needed",
        indicator="info",
        summary=summary if len(summary) < 140 else summary[:138] + "…",
        card=True,
        guideline=step.guideline,
        evidence=evidence.sources,
        planned_drugs=frozenset(evidence.requested),
    )


def step_therapy_card(evidence: StepEvidence, finding: Finding, document: dict[str, Any]) -> Card:
    """An info card: the evidence on file (with a suggestion to file it as a DocumentReference), or what an insurer
    will likely ask for."""
    step = evidence.step
    assert step.guideline is not None
    lines = [f"- {trial_summary(t)} ({t.days} days)" for t in evidence.trials] or ["- none on file"]
    detail = f"**First-line therapy on file** (minimum usually asked for: {step.min_trial_days} days):\n\n"
    detail += "\n".join(lines)
    suggestions = []
    if evidence.standing != "on-file":
        detail += "\n\n**An insurer will likely ask for:**\n\n" + "\n".join(f"- {ask}" for ask in step.insurer_asks)
    if evidence.trials:
        reference = document_reference(evidence, document, evidence.as_of)
        if reference is None:
            detail += f"\n\nThe evidence document is over {MAX_ATTACHED_BYTES // 1024} KiB: not attached here."
        else:
            suggestions.append(
                Suggestion(
                    label="File the step-therapy evidence with the order (DocumentReference)",
                    uuid=derived_id(finding.id, "document-reference"),
                    actions=[
                        Action(
                            type="create",
                            description="A DocumentReference holding the FHIR document of the first-line evidence",
                            resource=reference,
                        )
                    ],
                )
            )
    detail += f"\n\nBasis: {step.source}"
    return Card(
        uuid=finding.id,
        summary=finding.summary,
        detail=detail,
        indicator="info",
        source=Source(
            label=f"{step.guideline.label} (fhirsvc step therapy)",
            url=str(step.guideline.url),
            topic=_TOPIC,
        ),
        suggestions=suggestions,
        selectionBehavior="at-most-one" if suggestions else None,
        links=[Link(label=step.guideline.label, url=str(step.guideline.url), type="absolute")],
    )


def step_therapy_cards(
    record: PatientRecord, result: PatientResult, knowledge: Knowledge
) -> list[tuple[Card, Finding]]:
    """One info card per program whose next-line drug a draft order plans; none on partial data or after death (a
    trial cut short by a search page cap would read as "too short")."""
    if result.death is not None or result.incomplete:
        return []
    pairs = []
    for evidence in ordered_next_line(record, result, knowledge):
        document = evidence_document(evidence, knowledge.catalog, f"{result.as_of.isoformat()}T00:00:00Z")
        finding = step_therapy_finding(evidence)
        pairs.append((step_therapy_card(evidence, finding, document), finding))
    return pairs
