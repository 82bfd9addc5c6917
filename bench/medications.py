"""A Bulk Data export shaped like Synthea's US Core one: one Medication per MedicationRequest, for memory figures.

Synthea's bulk export names every drug of a MedicationRequest through a Medication of its own (90 to 650 per
patient in the seeded cohorts), where the bench population names drugs inline. This writes the bench population
with every MedicationRequest's drug moved into a Medication line, plus past orders of everyday drugs (stopped
years ago, so no finding changes) until the export holds `medications` Medication lines in all.

    python -m bench.medications --patients 2000 --medications 500000 --out export/
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from bench.generate import _OTHER_DRUGS, AS_OF, SEED, Resource, population, write_ndjson

_PAST = (AS_OF.replace(year=AS_OF.year - 12)).isoformat()  # long before every program's window


def _medication(medication_id: str, concept: object) -> Resource:
    return {"resourceType": "Medication", "id": medication_id, "status": "active", "code": concept}


def _past_order(patient_id: str, number: int) -> tuple[Resource, Resource]:
    drug = _OTHER_DRUGS[number % len(_OTHER_DRUGS)]
    medication_id = f"{patient_id}-past-{number}"
    concept = {"coding": [{"system": drug.system, "code": drug.code, "display": drug.display}]}
    order = {
        "resourceType": "MedicationRequest",
        "id": f"{patient_id}-past-order-{number}",
        "status": "stopped",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": _PAST,
        "medicationReference": {"reference": f"Medication/{medication_id}"},
    }
    return order, _medication(medication_id, concept)


def with_medications(patients: int, medications: int, seed: int = SEED) -> Iterator[list[Resource]]:
    """The bench population, each MedicationRequest's drug a Medication of its own, `medications` of them in all."""
    per_patient, extra = divmod(medications, patients)
    for index, resources in enumerate(population(patients, seed)):
        patient_id = resources[0]["id"]
        wanted = per_patient + (index < extra)
        written: list[Resource] = []
        made = 0
        for resource in resources:
            concept = resource.get("medicationCodeableConcept")
            if resource["resourceType"] == "MedicationRequest" and concept is not None and made < wanted:
                medication_id = f"{resource['id']}-medication"
                resource = {k: v for k, v in resource.items() if k != "medicationCodeableConcept"}
                resource["medicationReference"] = {"reference": f"Medication/{medication_id}"}
                written.append(_medication(medication_id, concept))
                made += 1
            written.append(resource)
        for number in range(wanted - made):
            written.extend(_past_order(patient_id, number))
        yield written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.medications", description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2_000)
    parser.add_argument("--medications", type=int, default=500_000)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, required=True, help="a directory: one <Type>.ndjson per resource type")
    args = parser.parse_args(argv)
    counts = write_ndjson(args.out, with_medications(args.patients, args.medications, args.seed))
    print(", ".join(f"{count:,} {rtype}" for rtype, count in sorted(counts.items())))


if __name__ == "__main__":
    main()
