"""The card for a patient whose evaluation did not finish within the CDS call's time budget."""

from __future__ import annotations

import uuid

from fhirsvc.cds.models import Card, Coding, Link, Source

# The user learns that the check was not done, instead of seeing no card and reading it as "all clear"
# (CDS Hooks 2.0 #cds-service-response: an empty card array means no guidance, not "nothing found").
NOT_EVALUATED_SUMMARY = "The second-line check did not finish in time; open the patient again to repeat it"
_RESPONSE_DOC = "https://cds-hooks.hl7.org/2.0/#cds-service-response"
_NOT_EVALUATED_NAMESPACE = uuid.UUID("5d0f3c8a-2e7b-4b6f-9c1d-8a4e6f2b7c31")


def not_evaluated_card(patient_id: str) -> Card:
    """One info card (status data-needed): no finding was made, because the evaluation ran out of time."""
    return Card(
        uuid=str(uuid.uuid5(_NOT_EVALUATED_NAMESPACE, f"Patient/{patient_id}|evaluation-timed-out")),
        summary=NOT_EVALUATED_SUMMARY,
        detail=(
            "fhirsvc read this patient's data but could not evaluate it within the time this EHR call allows "
            "(a very large record, or a busy service). No finding is shown, and none is withheld as 'all clear'. "
            "Open the patient again later to repeat the check."
        ),
        indicator="info",
        source=Source(
            label="fhirsvc (time budget)",
            url=_RESPONSE_DOC,
            topic=Coding(system="urn:fhirsvc:status", code="data-needed", display="Data needed"),
        ),
        links=[Link(label="CDS Hooks: the CDS service response", url=_RESPONSE_DOC, type="absolute")],
    )
