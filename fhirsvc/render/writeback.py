"""Findings written back as FHIR resources, idempotently: identifiers derived from the finding, If-None-Exist.

Target "guidance": a GuidanceResponse (evidence in reasonReference, the card detail as note) whose result is a
RequestGroup of the suggested actions, each suggestion a ServiceRequest proposal, plus a Task "evaluate for
second-line treatment" focused on the GuidanceResponse so the finding lands in a worklist. Target "detectedissue":
one DetectedIssue implicating the evidence. Every resource is validated with fhir.resources (R4B) before sending.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any, Literal

from fhirsvc.fhir.resources import validate
from fhirsvc.findings import Finding
from fhirsvc.render.detail import detail_markdown, proposed_resource

FINDING_SYSTEM = "urn:fhirsvc:finding"
TASK_CODE = {
    "coding": [
        {"system": "urn:fhirsvc:task", "code": "evaluate-second-line", "display": "Evaluate for second-line treatment"}
    ],
    "text": "Evaluate for second-line treatment",
}
# An agent added for another reason than failure of the line (organ protection in diabetes) is not a second line.
ADD_ON_TASK_CODE = {
    "coding": [{"system": "urn:fhirsvc:task", "code": "evaluate-add-on", "display": "Evaluate adding an agent"}],
    "text": "Evaluate adding an agent (the current line has not failed)",
}
Target = Literal["guidance", "detectedissue"]
_SEVERITY = {"critical": "high", "warning": "moderate", "info": "low"}
_ID_LENGTH = len("00000000-0000-0000-0000-000000000000")
_REASON_TARGETS = frozenset({"Condition", "Observation", "DiagnosticReport", "DocumentReference"})


def _entry(resource: dict[str, Any], identifier: str) -> dict[str, Any]:
    validate(resource)
    return {
        "fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{FINDING_SYSTEM}|{identifier}')}",
        "resource": resource,
        "request": {
            "method": "POST",
            "url": resource["resourceType"],
            "ifNoneExist": f"identifier={FINDING_SYSTEM}|{identifier}",
        },
    }


def _note(finding: Finding) -> str:
    """The card's text, so the worklist reads like the card the clinician would have seen."""
    return f"{finding.summary}\n\n{detail_markdown(finding)}"


def _identifier(value: str) -> list[dict[str, str]]:
    return [{"system": FINDING_SYSTEM, "value": value}]


def guidance_entries(finding: Finding, evidence: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The GuidanceResponse, its RequestGroup and proposals, and the worklist Task; with `evidence` (a
    DocumentReference carrying the first-line evidence document) that too, named as the Task's input."""
    a, fid = finding, finding.id
    subject = {"reference": finding.patient}
    as_of = finding.as_of.isoformat()
    entries: list[dict[str, Any]] = []
    actions = []
    for index, (key, suggestion) in enumerate(finding.suggestions.items()):
        proposal = proposed_resource(finding, key)
        proposal["identifier"] = _identifier(f"{fid}-s{index}")
        entry = _entry(proposal, f"{fid}-s{index}")
        entries.append(entry)
        actions.append(
            {
                "title": suggestion.label,
                "description": suggestion.description,
                "resource": {"reference": entry["fullUrl"]},
            }
        )
    for recommendation in a.recommendations:
        actions.append({"title": recommendation[:250], "description": recommendation})
    request_group: dict[str, Any] = {
        "resourceType": "RequestGroup",
        "identifier": _identifier(f"{fid}-rg"),
        "status": "active",
        "intent": "proposal",
        "subject": subject,
        "authoredOn": as_of,
        "action": actions or [{"title": a.summary}],
    }
    rg_entry = _entry(request_group, f"{fid}-rg")
    guidance: dict[str, Any] = {
        "resourceType": "GuidanceResponse",
        "identifier": _identifier(fid),
        "moduleUri": str(a.guideline.url),
        "status": "data-required" if a.status == "data-needed" else "success",
        "subject": subject,
        "occurrenceDateTime": as_of,
        "reasonCode": [{"text": f"{a.program}/{a.rule}: {a.status}"}],
        # R4 allows only these targets here (HAPI rejects others, HAPI-0931); the medication evidence is cited
        # by the Task's input and in the note.
        "reasonReference": [{"reference": ref} for ref in a.evidence if ref.split("/")[0] in _REASON_TARGETS],
        "note": [{"text": _note(finding)}],
        "result": {"reference": rg_entry["fullUrl"]},
    }
    gr_entry = _entry(guidance, fid)
    task: dict[str, Any] = {
        "resourceType": "Task",
        "identifier": _identifier(f"{fid}-task"),
        "status": "requested",
        "intent": "proposal",
        "priority": "urgent" if a.indicator == "critical" else "routine",
        "code": ADD_ON_TASK_CODE if a.status == "add-on-evaluation" else TASK_CODE,
        "description": a.summary,
        "for": subject,
        "focus": {"reference": gr_entry["fullUrl"]},
        "authoredOn": as_of,
        "input": [{"type": {"text": "evidence"}, "valueReference": {"reference": ref}} for ref in a.evidence],
    }
    if evidence is not None:
        document = {**evidence, "identifier": _identifier(f"{fid}-doc")}
        doc_entry = _entry(document, f"{fid}-doc")
        entries.append(doc_entry)
        task["input"].append(
            {"type": {"text": "step-therapy evidence"}, "valueReference": {"reference": doc_entry["fullUrl"]}}
        )
    if not task["input"]:
        del task["input"]
    return [*entries, rg_entry, gr_entry, _entry(task, f"{fid}-task")]


def detected_issue_entries(finding: Finding) -> list[dict[str, Any]]:
    a = finding
    issue = {
        "resourceType": "DetectedIssue",
        "identifier": _identifier(finding.id),
        "status": "final",
        "code": {"text": f"{a.program}/{a.rule}: {a.status}"},
        "severity": _SEVERITY[a.indicator],
        "patient": {"reference": finding.patient},
        "identifiedDateTime": a.as_of.isoformat(),
        "implicated": [{"reference": ref} for ref in a.evidence],
        "detail": _note(finding),
        "reference": str(a.guideline.url),
    }
    return [_entry(issue, finding.id)]


def transaction(
    findings: list[Finding], target: Target, evidence: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """One transaction for the findings; `evidence` (finding id → DocumentReference) is attached to their Tasks."""
    attached = evidence or {}
    entries = [
        e
        for f in findings
        for e in (guidance_entries(f, attached.get(f.id)) if target == "guidance" else detected_issue_entries(f))
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def created_references(bundle: dict[str, Any], answer: dict[str, Any]) -> dict[str, dict[str, str]]:
    """finding id → {resource type: server reference} from a transaction-response."""
    out: dict[str, dict[str, str]] = {}
    for sent, got in zip(bundle["entry"], answer.get("entry") or [], strict=False):
        fid = finding_of(sent["resource"])
        location = str((got.get("response") or {}).get("location", ""))
        reference = "/".join(location.split("/_history")[0].split("/")[-2:]) if location else ""
        out.setdefault(fid, {})[sent["resource"]["resourceType"]] = reference
    return out


def closed_task(task: dict[str, Any], completed: bool, reason: str) -> dict[str, Any]:
    """The open Task of a finding that no longer holds: completed (switched) or cancelled (back in range)."""
    closed = copy.deepcopy(task)
    closed["status"] = "completed" if completed else "cancelled"
    closed["statusReason"] = {"text": reason[:500]}
    closed.pop("meta", None)
    validate(closed)
    return closed


# Where each write-back resource names its patient (R4: Task.for, DetectedIssue.patient, the others subject).
PATIENT_FIELD = {"Task": "for", "DetectedIssue": "patient"}
# The identifier suffix of each part of a finding's write-back ("" is the finding id itself).
PART_SUFFIX = {"GuidanceResponse": "", "DetectedIssue": "", "RequestGroup": "-rg", "Task": "-task"}


def finding_of(resource: dict[str, Any]) -> str:
    """The finding id a written resource belongs to: a finding id is a UUID, and its parts' identifiers append
    "-rg", "-task", "-s<n>" or "-doc"."""
    return str(resource["identifier"][0]["value"])[:_ID_LENGTH]


def part_identifier(finding_id: str, resource_type: str) -> str:
    """The identifier value of one part of a finding's write-back (ServiceRequests are numbered: not here)."""
    return f"{finding_id}{PART_SUFFIX[resource_type]}"


def is_part_of(resource: dict[str, Any], resource_type: str, identifier: str, patient: str) -> bool:
    """True when `resource` is our write-back `identifier` for `patient` ("Patient/<id>"): its type, our system and
    value among its identifiers, and its patient reference. A stored reference may point at another patient's
    resource after a server restore reused the id; only this check makes an update safe."""
    if resource.get("resourceType") != resource_type:
        return False
    identifiers = resource.get("identifier")
    ours = any(
        isinstance(i, dict) and i.get("system") == FINDING_SYSTEM and i.get("value") == identifier
        for i in (identifiers if isinstance(identifiers, list) else ())
    )
    named = resource.get(PATIENT_FIELD.get(resource_type, "subject"))
    reference = named.get("reference") if isinstance(named, dict) else None
    # An absolute reference on the same server names the same patient: compare its last two segments.
    return ours and isinstance(reference, str) and "/".join(reference.split("/")[-2:]) == patient
