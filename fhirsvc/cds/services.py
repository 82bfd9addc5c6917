"""The CDS services this server offers: one per hook, same prefetch, same evaluation."""

from __future__ import annotations

from dataclasses import dataclass

# Only {{context.patientId}}: the one token every 2.0 client fills (cds-hooks.md pitfalls 3-4). Dates are
# filtered service-side. _count is in the 2.0 query subset and saves round trips on servers that page at 20.
PREFETCH: dict[str, str] = {
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}",
    "medicationStatements": "MedicationStatement?patient={{context.patientId}}",
    "medicationRequests": "MedicationRequest?patient={{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}&_count=200",
    "allergies": "AllergyIntolerance?patient={{context.patientId}}",
    "goals": "Goal?patient={{context.patientId}}",
}

# Data without which no assessment can be trusted → 412 when unobtainable. The others degrade gracefully:
# demographics are not needed by the rules, US Core / Cerner expose no MedicationStatement, and allergies
# and goals refine findings (intolerance, a patient-specific target) without being needed for them.
REQUIRED: frozenset[str] = frozenset({"conditions", "medicationRequests", "observations"})


@dataclass(frozen=True)
class Service:
    id: str
    hook: str
    title: str
    description: str
    plans_from_draft_orders: bool


SERVICES: dict[str, Service] = {
    s.id: s
    for s in (
        Service(
            "second-line-patient-view",
            "patient-view",
            "Second-line treatment evaluation",
            "Derives line-of-therapy state (HIV and further programs) from conditions, medications and results, "
            "and suggests evaluation for second-line treatment when first-line therapy is failing.",
            plans_from_draft_orders=False,
        ),
        Service(
            "second-line-order-select",
            "order-select",
            "Second-line treatment evaluation (order select)",
            "As the patient-view service; draft medication orders count as planned therapy.",
            plans_from_draft_orders=True,
        ),
        Service(
            "second-line-order-sign",
            "order-sign",
            "Second-line treatment evaluation (order sign)",
            "As the patient-view service; draft medication orders count as planned therapy.",
            plans_from_draft_orders=True,
        ),
    )
}


def render(template: str, patient_id: str) -> str:
    return template.replace("{{context.patientId}}", patient_id)
