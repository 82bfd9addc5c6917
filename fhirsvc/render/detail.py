"""What every rendering of a finding shows beyond its summary: the detail text and the proposed resources."""

from __future__ import annotations

import copy
from typing import Any

from fhirsvc.findings import Finding

_SAFETY_NOTE = "_This card suggests an evaluation. It does not order, stop or change any therapy._"


def detail_markdown(finding: Finding) -> str:
    """Evidence with values and dates, the current regimen, what to consider, the guideline and the safety note."""
    parts: list[str] = []
    if finding.measurements:
        rows = "\n".join(
            f"| {m.date.isoformat()} | {m.shown}" + (f" (= {m.converted})" if m.converted else "") + f" | {m.ref} |"
            for m in finding.measurements
        )
        parts.append(f"**Evidence**\n\n| Date | Result | Record |\n|---|---|---|\n{rows}")
    line = finding.line
    if line is not None:
        drugs = ", ".join(f"{d} ({finding.classes.get(d, '?')})" for d in finding.regimen)
        parts.append(
            f"**Current regimen** (line {line.number}, since {line.start.isoformat()}): {drugs}\n\n"
            f"Medication records: {', '.join(shown_reference(finding, ref) for ref in line.refs)}"
        )
    if finding.recommendations:
        parts.append("**Consider**\n\n" + "\n".join(f"- {r}" for r in finding.recommendations))
    parts.append(f"**Guideline**: {finding.guideline.citation}")
    parts.append(_SAFETY_NOTE)
    return "\n\n".join(parts)


def shown_reference(finding: Finding, ref: str) -> str:
    """A record as the card names it: a server reference, or a draft order in the clinician's own words (its id is
    the client's, not a resource on the FHIR server)."""
    drugs = finding.drafts.get(ref)
    if drugs is None:
        return ref
    return "this order" if len(finding.drafts) == 1 else f"the draft order for {', '.join(drugs)}"


def proposed_resource(finding: Finding, key: str) -> dict[str, Any]:
    """The resource a suggestion proposes (e.g. a ServiceRequest for a resistance test), for this patient, dated
    the evaluation date and citing the measured evidence."""
    resource: dict[str, Any] = copy.deepcopy(finding.suggestions[key].resource)
    resource["subject"] = {"reference": finding.patient}
    resource["authoredOn"] = finding.as_of.isoformat()
    reasons = [{"reference": m.ref} for m in finding.measurements]
    if reasons:
        resource["reasonReference"] = reasons
    return resource
