"""Fact extraction from FHIR dicts: dates, medication codes and names, units, statuses, malformed input."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from fhirsvc.facts import MalformedResource, exposure_from, extract_facts, lab_from, parse_date
from fhirsvc.record.model import PatientRecord, RecordBuilder
from fhirsvc.terminology.knowledge import Knowledge
from fhirsvc.terminology.units import copies_per_ml, hba1c_percent

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SUBJECT = {"reference": "Patient/p1"}


def statement(**fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "MedicationStatement",
        "id": "ms1",
        "status": "active",
        "subject": SUBJECT,
        "effectivePeriod": {"start": "2025-01-01"},
        **fields,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-04T10:00:00+02:00", date(2025, 3, 4)),
        ("2025-03", date(2025, 3, 1)),
        ("2025", date(2025, 1, 1)),
        ("2025-13-01", None),
        ("2025-02-30T00:00:00Z", None),  # the full-date fast path must refuse what the general one refuses
        ("2025-03-04", date(2025, 3, 4)),
        ("2025-03-4x", None),
        ("yesterday", None),
        (None, None),
        (20250101, None),
    ],
)
def test_parse_date_handles_every_fhir_precision(text: object, expected: date | None) -> None:
    assert parse_date(text) == expected


def test_product_codes_expand_to_ingredients(knowledge: Knowledge) -> None:
    resource = statement(medicationCodeableConcept={"coding": [{"system": RXNORM, "code": "1999667"}]})
    found = exposure_from(resource, PatientRecord("p1"), knowledge.catalog)
    assert found is not None
    assert found.drugs == {"bictegravir", "emtricitabine", "tenofovir alafenamide"}


def test_text_only_and_brand_names_match_by_name(knowledge: Knowledge) -> None:
    for text in ("Biktarvy 50/200/25 mg tablet", "dolutegravir sodium 50 mg + lamivudine"):
        found = exposure_from(
            statement(medicationCodeableConcept={"text": text}), PatientRecord("p1"), knowledge.catalog
        )
        assert found is not None and found.drugs, text
    assert (
        exposure_from(
            statement(medicationCodeableConcept={"text": "Little Pink Pill"}), PatientRecord("p1"), knowledge.catalog
        )
        is None
    )


def test_contained_and_referenced_medications_resolve(knowledge: Knowledge) -> None:
    contained = statement(
        medicationReference={"reference": "#m1"},
        contained=[
            {"resourceType": "Medication", "id": "m1", "code": {"coding": [{"system": RXNORM, "code": "1433873"}]}}
        ],
    )
    found = exposure_from(contained, PatientRecord("p1"), knowledge.catalog)
    assert found is not None and found.drugs == {"dolutegravir"}
    builder = RecordBuilder()
    builder.add_bundle(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"resource": {"resourceType": "Medication", "id": "m2", "code": {"text": "efavirenz 600 mg"}}},
                {"resource": statement(medicationReference={"reference": "Medication/m2"})},
            ],
        }
    )
    (record,) = builder.build()
    facts = extract_facts(record, knowledge.catalog, date(2026, 1, 1))
    assert [e.drugs for e in facts.exposures] == [frozenset({"efavirenz"})]


def test_entered_in_error_and_not_taken_medications_are_ignored(knowledge: Knowledge) -> None:
    code = {"coding": [{"system": RXNORM, "code": "1433873"}]}
    for status in ("entered-in-error", "not-taken", "cancelled"):
        assert (
            exposure_from(
                statement(status=status, medicationCodeableConcept=code), PatientRecord("p1"), knowledge.catalog
            )
            is None
        )


def test_medication_request_end_comes_from_supply_when_completed(knowledge: Knowledge) -> None:
    request = {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "status": "completed",
        "intent": "order",
        "subject": SUBJECT,
        "authoredOn": "2025-01-01",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "1433873"}]},
        "dispenseRequest": {"expectedSupplyDuration": {"value": 30, "code": "d"}, "numberOfRepeatsAllowed": 2},
    }
    found = exposure_from(request, PatientRecord("p1"), knowledge.catalog)
    assert found is not None and found.end == date(2025, 4, 1)
    request["status"] = "active"
    found = exposure_from(request, PatientRecord("p1"), knowledge.catalog)
    assert found is not None and found.end is None


def test_lab_values_comparators_and_coded_results() -> None:
    base = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "subject": SUBJECT,
        "code": {"coding": [{"system": "http://loinc.org", "code": "20447-9"}]},
        "effectiveDateTime": "2025-05-05",
    }
    lab = lab_from({**base, "valueQuantity": {"value": 20, "comparator": "<", "unit": "copies/mL"}})
    assert lab is not None and lab.comparator == "<" and lab.value == 20
    coded = lab_from(
        {**base, "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "260415000"}]}}
    )
    assert coded is not None and coded.not_detected
    text = lab_from({**base, "valueString": "Target Not Detected"})
    assert text is not None and text.not_detected
    for status in ("entered-in-error", "cancelled"):
        assert lab_from({**base, "status": status, "valueQuantity": {"value": 900}}) is None
    with pytest.raises(MalformedResource):
        lab_from({**base, "effectiveDateTime": "soon"})


def test_unit_conversion() -> None:
    assert copies_per_ml(2.5, "log10 copies/mL", log_scale=False) == pytest.approx(316.2, abs=0.1)
    assert copies_per_ml(3.0, "{copies}/mL", log_scale=True) == 1000.0
    assert copies_per_ml(450, "{copies}/mL", log_scale=False) == 450
    assert copies_per_ml(450, "[IU]/mL", log_scale=False) is None
    assert copies_per_ml(450, "log copies/mL", log_scale=True) is None  # implausible log10: refuse, don't guess
    assert hba1c_percent(53, "mmol/mol", False) == pytest.approx(7.0, abs=0.05)
    assert hba1c_percent(7.2, "%", False) == 7.2


def test_malformed_resources_are_skipped_and_counted(knowledge: Knowledge) -> None:
    record = PatientRecord("p1")
    record.add({"resourceType": "Observation", "id": "x", "status": None})
    record.add({"resourceType": "Observation", "status": "final", "effectiveDateTime": "2025-01-01"})  # no id
    record.add(
        {
            "resourceType": "MedicationStatement",
            "id": "m",
            "status": "active",
            "medicationCodeableConcept": {"text": "efavirenz"},
        }
    )  # no date
    record.add({"resourceType": "Condition", "id": "c", "clinicalStatus": "active"})  # wrong type: tolerated
    record.resources["Observation"].append("not an object")  # type: ignore[arg-type]
    facts = extract_facts(record, knowledge.catalog, date(2026, 1, 1))
    assert facts.skipped == 4 and facts.exposures == [] and facts.labs == []


def test_inactive_refuted_and_entered_in_error_conditions_are_ignored(knowledge: Knowledge) -> None:
    record = PatientRecord("p1")
    hiv = {"coding": [{"system": "http://snomed.info/sct", "code": "86406008"}]}
    cs = "http://terminology.hl7.org/CodeSystem/condition-clinical"
    vs = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
    record.add(
        {
            "resourceType": "Condition",
            "id": "a",
            "code": hiv,
            "clinicalStatus": {"coding": [{"system": cs, "code": "resolved"}]},
        }
    )
    record.add(
        {
            "resourceType": "Condition",
            "id": "b",
            "code": hiv,
            "verificationStatus": {"coding": [{"system": vs, "code": "refuted"}]},
        }
    )
    record.add(
        {
            "resourceType": "Condition",
            "id": "c",
            "code": hiv,
            "verificationStatus": {"coding": [{"system": vs, "code": "entered-in-error"}]},
        }
    )
    record.add(
        {
            "resourceType": "Condition",
            "id": "d",
            "code": hiv,
            "clinicalStatus": {"coding": [{"system": cs, "code": "active"}]},
        }
    )
    facts = extract_facts(record, knowledge.catalog, date(2026, 1, 1))
    assert [d.ref for d in facts.diagnoses] == ["Condition/d"]
    # The resolved one is kept apart (no rule reads it; the indication of past drugs does), the void ones are not.
    assert [(d.ref, d.clinical_status) for d in facts.ended_diagnoses] == [("Condition/a", "resolved")]


def test_an_ended_diagnosis_keeps_its_abatement(knowledge: Knowledge) -> None:
    record = PatientRecord("p1")
    cs = "http://terminology.hl7.org/CodeSystem/condition-clinical"
    record.add(
        {
            "resourceType": "Condition",
            "id": "a",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "254637007"}]},
            "clinicalStatus": {"coding": [{"system": cs, "code": "remission"}]},
            "onsetPeriod": {"start": "2019-02-01"},
            "abatementDateTime": "2021-06-30",
        }
    )
    (ended,) = extract_facts(record, knowledge.catalog, date(2026, 1, 1)).ended_diagnoses
    assert (ended.onset, ended.abatement, ended.clinical_status) == (date(2019, 2, 1), date(2021, 6, 30), "remission")


def test_exposures_keep_their_assertion_fills_and_reasons(knowledge: Knowledge) -> None:
    record = PatientRecord("p1")
    prostate = {"coding": [{"system": "http://snomed.info/sct", "code": "399068003"}]}
    record.add({"resourceType": "Condition", "id": "prostate", "code": prostate})
    docetaxel = {"coding": [{"system": RXNORM, "code": "72962"}]}
    record.add(
        statement(
            medicationCodeableConcept=docetaxel,
            dateAsserted="2025-06-01",
            reasonReference=[{"reference": "Condition/prostate"}, {"reference": "Condition/not-in-record"}],
        )
    )
    record.add(
        {
            "resourceType": "MedicationRequest",
            "id": "mr1",
            "status": "active",
            "intent": "order",
            "subject": SUBJECT,
            "authoredOn": "2025-01-01",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "1433873"}]},
            "dispenseRequest": {"numberOfRepeatsAllowed": 3},
            "reasonCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "86406008"}]}],
        }
    )
    facts = extract_facts(record, knowledge.catalog, date(2026, 1, 1))
    by_ref = {e.ref: e for e in facts.exposures}
    stated, ordered = by_ref["MedicationStatement/ms1"], by_ref["MedicationRequest/mr1"]
    assert stated.asserted == date(2025, 6, 1) and stated.last_evidence == date(2025, 6, 1)
    assert stated.reasons == {"http://snomed.info/sct|399068003"}  # the unresolved reference adds nothing
    assert (ordered.fills, ordered.supply_days, ordered.end) == (4, None, None)
    assert ordered.reasons == {"http://snomed.info/sct|86406008"}


def test_prep_without_diagnosis_is_not_in_the_hiv_program(knowledge: Knowledge) -> None:
    from fhirsvc.pipeline import evaluate_record

    record = PatientRecord("p1")
    record.add(statement(medicationCodeableConcept={"coding": [{"system": RXNORM, "code": "476556"}]}))
    assert evaluate_record(record, knowledge, date(2026, 1, 1)).programs == []
    record.add(statement(id="ms2", medicationCodeableConcept={"coding": [{"system": RXNORM, "code": "1433873"}]}))
    assert [p.program.id for p in evaluate_record(record, knowledge, date(2026, 1, 1)).programs] == ["hiv"]


def test_bundle_with_urn_references_groups_by_patient() -> None:
    builder = RecordBuilder()
    builder.add_bundle(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"fullUrl": "urn:uuid:aaa", "resource": {"resourceType": "Patient"}},
                {
                    "fullUrl": "urn:uuid:bbb",
                    "resource": {"resourceType": "Observation", "id": "o", "subject": {"reference": "urn:uuid:aaa"}},
                },
                {
                    "resource": {
                        "resourceType": "Observation",
                        "id": "o2",
                        "subject": {"reference": "https://x.test/fhir/Patient/zzz/_history/3"},
                    }
                },
                {"resource": {"resourceType": "Observation", "id": "o3"}},
            ],
        }
    )
    records = {r.patient_id: r for r in builder.build()}
    assert set(records) == {"aaa", "zzz"}
    assert len(records["aaa"].of_type("Observation")) == 1 and builder.skipped == 1
