"""The CDS services this server offers: one per hook, same prefetch, same evaluation."""

from __future__ import annotations

from dataclasses import dataclass

from fhirsvc.record.model import PATIENT_ID_TOKEN, RECORD_PARTS

# The prefetch templates are the record definition (fhirsvc.record.model.RECORD_PARTS), so a CDS call, the poller
# and file reading all see the same resource types.
PREFETCH: dict[str, str] = {part.key: part.search for part in RECORD_PARTS}
# Data without which no assessment can be trusted → 412 when unobtainable; the others degrade gracefully.
REQUIRED: frozenset[str] = frozenset(part.key for part in RECORD_PARTS if part.required)


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
    return template.replace(PATIENT_ID_TOKEN, patient_id)
