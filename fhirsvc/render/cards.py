"""Findings → CDS Hooks cards: evidence with values and dates, guideline source, suggestions, links."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import orjson

from fhirsvc.cds.models import Action, Card, Coding, Link, Source, Suggestion
from fhirsvc.findings import Finding, derived_id
from fhirsvc.pipeline import PatientResult, ProgramResult
from fhirsvc.record.model import RECORD_PART_BY_KEY
from fhirsvc.render.detail import detail_markdown, proposed_resource

_URGENCY = {"critical": 0, "warning": 1, "info": 2}


def _suggestion(finding: Finding, key: str) -> Suggestion:
    template = finding.suggestions[key]
    return Suggestion(
        label=template.label,
        uuid=derived_id(finding.id, key),
        isRecommended=template.is_recommended or None,
        actions=[Action(type="create", description=template.description, resource=proposed_resource(finding, key))],
    )


# Statuses of the cards that suggest evaluating the next line: these link to the timeline app.
SECOND_LINE_STATUSES = frozenset({"second-line-evaluation", "next-line-evaluation"})


def _app_link(finding: Finding, app_launch_url: str) -> Link:
    """CDS Hooks 2.0 #link: a `smart` link to the app's launch URL; the EHR adds `launch` and `iss`, and hands
    `appContext` to the app in the token response, so the page opens on this finding."""
    context = orjson.dumps({"program": finding.program, "finding": finding.id}).decode()
    return Link(label="Timeline of the lines of therapy", url=app_launch_url, type="smart", appContext=context)


def card_for(program: ProgramResult, finding: Finding, app_launch_url: str | None = None) -> Card:
    """One finding as a card; its uuid is the finding's id, which the CDS door derives per audience (client, server,
    clinician) so that feedback, naming only the uuid, is scoped to whom the card was shown. With `app_launch_url`
    (a SMART app client is configured), a second-line card links to the timeline app."""
    suggestions = [_suggestion(finding, key) for key in finding.suggestions]
    guideline = finding.guideline
    links = [Link(label=guideline.label, url=str(guideline.url), type="absolute")]
    if app_launch_url and finding.status in SECOND_LINE_STATUSES:
        links.append(_app_link(finding, app_launch_url))
    return Card(
        uuid=finding.id,
        summary=finding.summary,
        detail=detail_markdown(finding),
        indicator=finding.indicator,
        source=Source(label=f"{guideline.label} (fhirsvc)", url=str(guideline.url)),
        suggestions=suggestions,
        selectionBehavior="at-most-one" if suggestions else None,
        overrideReasons=[
            Coding(system=r.system, code=r.code, display=r.display) for r in program.program.override_reasons
        ],
        links=links,
    )


def cards_with_findings(result: PatientResult, app_launch_url: str | None = None) -> list[tuple[Card, Finding]]:
    """One card per finding that warrants one, most urgent first, each with the finding behind it."""
    pairs = [
        (card_for(program, finding, app_launch_url), finding)
        for program in result.programs
        for finding in program.findings
        if finding.card
    ]
    return sorted(pairs, key=lambda pair: _URGENCY[pair[0].indicator])


def cards_for(result: PatientResult) -> list[Card]:
    return [card for card, _ in cards_with_findings(result)]


# Card for data that could not be read completely (CDS Hooks 2.0 #providing-fhir-resources-to-a-cds-service): the
# user learns the check could not be completed instead of seeing nothing, or a finding based on data that never
# arrived. One card whatever the cause: a slow, down or failing server, or a search cut short by a page cap.
INCOMPLETE_SUMMARY = "Not all FHIR data could be read; findings may be incomplete"
_FETCH_DOC = "https://cds-hooks.hl7.org/2.0/#providing-fhir-resources-to-a-cds-service"
_INCOMPLETE_NAMESPACE = uuid.UUID("0c4f8d7e-6b1a-4f0e-9a55-3f2d1c9b7e42")


def incomplete_card(patient_id: str, unread: Mapping[str, str]) -> Card:
    """One info card (status data-needed) naming each resource type not read completely and why."""
    rows = "\n".join(f"- **{what}**: {why}" for what, why in sorted(unread.items()))
    return Card(
        uuid=str(uuid.uuid5(_INCOMPLETE_NAMESPACE, f"Patient/{patient_id}|fhir-server-unavailable")),
        summary=INCOMPLETE_SUMMARY,
        detail=(
            "fhirsvc could not read all of this patient's data from the FHIR server (slow, unreachable or failing, "
            f"or a search cut short):\n\n{rows}\n\nFindings that depend on this data are not shown. "
            "Open the patient again later to repeat the check."
        ),
        indicator="info",
        source=Source(
            label="fhirsvc (FHIR data access)",
            url=_FETCH_DOC,
            topic=Coding(system="urn:fhirsvc:status", code="data-needed", display="Data needed"),
        ),
        links=[Link(label="CDS Hooks: how a CDS service reads FHIR data", url=_FETCH_DOC, type="absolute")],
    )


def by_resource_type(keys: Mapping[str, str]) -> dict[str, str]:
    """Prefetch keys with their reasons → the same reasons by resource type (what a clinician can read)."""
    return {
        RECORD_PART_BY_KEY[key].resource_type if key in RECORD_PART_BY_KEY else key: why for key, why in keys.items()
    }
