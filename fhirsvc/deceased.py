"""Patient.deceased[x] → whether the patient had died by the evaluation date, and when."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from fhirsvc.facts import parse_date
from fhirsvc.record.model import PatientRecord


@dataclass(frozen=True)
class Death:
    """A recorded death: the date when the record gives one (`deceasedDateTime`), else None (`deceasedBoolean`)."""

    ref: str
    date: date | None


def death_by(record: PatientRecord, as_of: date) -> Death | None:
    """The patient's death if recorded on or before `as_of`; a death dated after `as_of` has not happened yet.

    `deceasedBoolean: true` has no date: it counts whatever the evaluation date, since nothing says when.
    """
    for patient in record.of_type("Patient"):
        if not isinstance(patient, dict) or patient.get("id") != record.patient_id:
            continue
        ref = f"Patient/{record.patient_id}"
        when = parse_date(patient.get("deceasedDateTime"))
        if when is not None:
            return Death(ref, when) if when <= as_of else None
        if patient.get("deceasedBoolean") is True:
            return Death(ref, None)
    return None
