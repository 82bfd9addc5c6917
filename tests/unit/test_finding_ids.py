"""A finding's id: the same on the same evidence whatever the hook and the client's draft-order ids."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fhirsvc.pipeline import evaluate_record
from fhirsvc.record.model import RecordBuilder
from fhirsvc.terminology.knowledge import Knowledge
from tests.conftest import AS_OF, load_fixture

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
DOLUTEGRAVIR = ("1433873", "dolutegravir 50 MG")
BICTEGRAVIR = ("2478813", "bictegravir")
RENEWAL = ("476556", "emtricitabine 200 MG / tenofovir disoproxil fumarate 300 MG")  # the current, failing regimen


def draft(draft_id: str, drug: tuple[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": draft_id,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/hiv-fail-basic"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": drug[0], "display": drug[1]}]},
    }


def finding_ids(knowledge: Knowledge, *drafts: dict[str, Any]) -> dict[str, str]:
    builder = RecordBuilder()
    builder.add_bundle(load_fixture("hiv/fail-basic.json"))
    (record,) = builder.build()
    record.planned.extend(drafts)
    result = evaluate_record(record, knowledge, AS_OF)
    return {f"{f.rule}:{f.outcome}": f.id for program in result.programs for f in program.findings}


def test_a_renewal_of_recorded_therapy_keeps_every_id_of_the_record_alone(knowledge: Knowledge) -> None:
    alone = finding_ids(knowledge)
    renewed = finding_ids(knowledge, draft("request-123", RENEWAL))
    # The order-time safety checks judge the draft itself (without one they say "no-order"); every finding of the
    # record keeps its id.
    of_the_record = [key for key in alone if not key.endswith(":no-order")]
    assert {key: renewed.get(key) for key in of_the_record} == {key: alone[key] for key in of_the_record}


def test_draft_ids_never_change_an_id(knowledge: Knowledge) -> None:
    assert finding_ids(knowledge, draft("A", DOLUTEGRAVIR)) == finding_ids(knowledge, draft("B", DOLUTEGRAVIR))


def test_a_draft_of_another_drug_is_other_evidence(knowledge: Knowledge) -> None:
    planned = finding_ids(knowledge, draft("A", DOLUTEGRAVIR))
    other = finding_ids(knowledge, draft("A", BICTEGRAVIR))
    assert planned.keys() == other.keys() and not set(planned.values()) & set(other.values())


def test_an_id_read_once_is_not_carried_into_a_changed_copy(knowledge: Knowledge) -> None:
    """The id is computed when first read and kept: a finding made from another one (`dataclasses.replace`, as a
    withheld finding is) gets the id of what it holds, not the original's."""
    builder = RecordBuilder()
    builder.add_bundle(load_fixture("hiv/fail-basic.json"))
    (record,) = builder.build()
    (finding, *_) = evaluate_record(record, knowledge, AS_OF).actionable
    first = finding.id
    assert finding.id == first
    assert replace(finding, evidence=finding.evidence[:1]).id != first
    assert replace(finding, summary="reworded").id == first  # the id is what the finding is, not how it is said
