"""FHIR dicts → small frozen facts (medication exposures, lab results, diagnoses) for the pure pipeline."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TypeVar

from fhirsvc.fhir.concepts import Coding, ConceptMemo, codes, codings, concept_keys, concept_text
from fhirsvc.record.model import PatientRecord, Resource, normalise_reference
from fhirsvc.terminology.catalog import DrugCatalog
from fhirsvc.terminology.observation_filter import ObservationFilter

log = logging.getLogger(__name__)

# Statuses that mean "this never happened / was recorded by mistake" (FHIR R4 value sets).
_VOID_MED = frozenset({"entered-in-error", "not-taken", "cancelled", "not-done", "unknown"})
_VOID_OBS = frozenset({"entered-in-error", "cancelled", "registered"})
_OPEN_MED = frozenset({"active", "intended", "on-hold", "in-progress", "draft"})
_INACTIVE_CONDITION = frozenset({"inactive", "resolved", "remission"})
_VOID_CONDITION = frozenset({"refuted", "entered-in-error"})
# Coded "not detected" results (SNOMED 260415000 Not detected).
_NOT_DETECTED_CODES = frozenset({"260415000"})
_NOT_DETECTED_TEXT = ("not detected", "undetectable", "target not detected", "tnd", "negative")


# A draft order (context.draftOrders) is the client's, not the server's: its id is client-local (`request-123`) and
# may equal a server id, so its ref is marked and never shown or written as a server reference.
DRAFT_REF_PREFIX = "draft:"


class MalformedResource(ValueError):
    """A resource whose fields cannot be read (wrong types, no usable date); it is skipped and counted."""


# The facts below are built once per resource and never changed afterwards, but they are not `frozen`: a frozen
# dataclass sets each field through object.__setattr__, which made building one four times slower (bench/README.md).


@dataclass(slots=True)
class MedicationExposure:
    """A period during which the patient took (or was to take) the named ingredients."""

    ref: str
    drugs: frozenset[str]
    start: date
    end: date | None  # None: ongoing at the evaluation date
    status: str
    text: str
    stop_reasons: tuple[Coding, ...] = ()
    planned: bool = False
    asserted: date | None = None  # the latest date the record vouches for use (dateAsserted), when after `start`
    supply_days: int | None = None  # an order's stated supply over every fill (supply x (1 + repeats))
    fills: int | None = None  # an order's fills (1 + numberOfRepeatsAllowed) when it states them
    reasons: frozenset[str] = frozenset()  # "system|code" of reasonCode and of the Conditions reasonReference names
    reason_refs: tuple[str, ...] = ()  # reasonReference targets, resolved into `reasons` once Conditions are read

    @property
    def last_evidence(self) -> date:
        return self.asserted if self.asserted is not None and self.asserted > self.start else self.start


@dataclass(slots=True, kw_only=True)
class LabResult:
    """One Observation value; `value` is None for results without a number (coded or text). Fourteen fields: built
    by keyword only."""

    ref: str
    codes: frozenset[str]  # "system|code"
    date: date
    value: float | None
    unit: str  # UCUM code when sent (what conversion reads), else the unit text
    comparator: str | None
    not_detected: bool
    status: str
    coded_values: frozenset[str] = frozenset()
    unit_text: str = ""  # as a person reads it ("copies/mL" rather than "{copies}/mL")
    interpretation: frozenset[str] = frozenset()  # v3 ObservationInterpretation codes, e.g. "POS"
    components: frozenset[str] = frozenset()  # "system|code" of component values (e.g. the gene studied)
    text: str = ""  # code.text and displays, for observations only named in text
    value_text: str = ""  # a coded or string value as reported ("Patient's condition worsened")


@dataclass(slots=True)
class Diagnosis:
    ref: str
    codes: frozenset[str]
    onset: date | None
    clinical_status: str = "active"  # "relapse" marks a recorded relapse episode (condition-clinical)
    abatement: date | None = None  # inactive/resolved/remission: when it ended (None: not recorded)


@dataclass(slots=True)
class Allergy:
    """An AllergyIntolerance (or recorded adverse reaction) to ingredients of the catalog."""

    ref: str
    drugs: frozenset[str]
    date: date | None


@dataclass(slots=True)
class GoalTarget:
    """A patient-specific target for a measure (Goal.target), e.g. HbA1c < 8.0 %."""

    ref: str
    measure: frozenset[str]
    value: float
    unit: str


@dataclass
class PatientFacts:
    """Everything the rules read about one patient, extracted once per record."""

    patient: str
    exposures: list[MedicationExposure] = field(default_factory=list)
    labs: list[LabResult] = field(default_factory=list)
    diagnoses: list[Diagnosis] = field(default_factory=list)
    # Inactive, resolved or in remission: no rule reads them, only the indication of past drugs.
    ended_diagnoses: list[Diagnosis] = field(default_factory=list)
    allergies: list[Allergy] = field(default_factory=list)
    goals: list[GoalTarget] = field(default_factory=list)
    drafts: dict[str, frozenset[str]] = field(default_factory=dict)  # a draft order's ref → its ingredients
    skipped: int = 0
    labs_by_code: dict[str, list[LabResult]] = field(default_factory=dict)  # "system|code" → labs
    # Every program asks the same questions of the exposures on the same days: answered once per day.
    _started: dict[date, list[MedicationExposure]] = field(default_factory=dict, repr=False, compare=False)
    _active: dict[date, list[MedicationExposure]] = field(default_factory=dict, repr=False, compare=False)
    _drugs: dict[date, frozenset[str]] = field(default_factory=dict, repr=False, compare=False)

    def started_by(self, day: date) -> list[MedicationExposure]:
        """Exposures that had started on `day` (the record may hold later, planned or future-dated ones), in
        `exposure_order`."""
        found = self._started.get(day)
        if found is None:
            found = self._started[day] = sorted((e for e in self.exposures if e.start <= day), key=exposure_order)
        return found

    def drugs_started_by(self, day: date) -> frozenset[str]:
        """Every ingredient the patient had started on `day`."""
        found = self._drugs.get(day)
        if found is None:
            found = self._drugs[day] = frozenset(d for e in self.started_by(day) for d in e.drugs)
        return found

    def active_on(self, day: date) -> list[MedicationExposure]:
        """Exposures under way on `day`."""
        found = self._active.get(day)
        if found is None:
            found = self._active[day] = [e for e in self.started_by(day) if e.end is None or e.end >= day]
        return found


def exposure_order(e: MedicationExposure) -> tuple[object, ...]:
    """A total order of exposures (start first), so that results never depend on the order resources came in."""
    reasons = tuple((c.system, c.code) for c in e.stop_reasons)
    return (e.start, e.end or date.max, e.ref, sorted(e.drugs), e.planned, reasons, e.status, e.text)


def parse_date(value: object) -> date | None:
    """FHIR date/dateTime (any precision) → date; time zones are ignored at day granularity."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    if len(value) >= 10 and value[4] == "-" and value[7] == "-":
        try:  # the common full date: date.fromisoformat (C) is faster than the general path below
            return date.fromisoformat(value[:10])
        except ValueError:
            pass
    try:
        year = int(value[0:4])
        month = int(value[5:7]) if len(value) >= 7 else 1
        day = int(value[8:10]) if len(value) >= 10 else 1
        return date(year, month, day)
    except ValueError:
        return None


def _ref(resource: Resource) -> str:
    rid = resource.get("id")
    if not isinstance(rid, str):
        raise MalformedResource("resource without id")
    return f"{resource['resourceType']}/{rid}"


def _period(value: object) -> tuple[date | None, date | None]:
    if not isinstance(value, dict):
        return None, None
    return parse_date(value.get("start")), parse_date(value.get("end"))


def _medication_concept(resource: Resource, record: PatientRecord) -> object:
    concept = resource.get("medicationCodeableConcept")
    if concept is not None:
        return concept
    reference = resource.get("medicationReference")
    if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
        target = reference["reference"]
        if target.startswith("#"):  # contained Medication
            for contained in resource.get("contained") or ():
                if isinstance(contained, dict) and contained.get("id") == target[1:]:
                    return contained.get("code")
        medication = record.medication(normalise_reference(target))
        if medication is not None:
            return medication.get("code")
        return {"text": reference.get("display", "")}
    return None


_NUMBER = (int, float)
_DAYS_PER_UNIT = {"wk": 7, "week": 7, "weeks": 7, "mo": 30, "month": 30, "months": 30}


def _dispensed(request: Resource) -> tuple[int | None, int | None]:
    """An order's supply in days over every fill, and its fills (1 + repeats); None when not stated."""
    dispense = request.get("dispenseRequest")
    if not isinstance(dispense, dict):
        return None, None
    repeats = dispense.get("numberOfRepeatsAllowed")
    fills = 1 + repeats if type(repeats) is int and repeats >= 0 else None
    duration = dispense.get("expectedSupplyDuration")
    if isinstance(duration, dict) and isinstance(duration.get("value"), _NUMBER):
        days = float(duration["value"])
        unit = str(duration.get("code") or duration.get("unit") or "d").lower()
        days *= _DAYS_PER_UNIT.get(unit, 1)
        return max(1, round(days * (fills or 1))), fills
    return None, fills


def _reasons(resource: Resource) -> tuple[frozenset[str], tuple[str, ...]]:
    """reasonCode keys, and the references of reasonReference (a Condition, Observation, ...)."""
    coded = resource.get("reasonCode")
    keys = frozenset(k for concept in coded for k in concept_keys(concept)) if isinstance(coded, list) else _EMPTY
    named = resource.get("reasonReference")
    refs: tuple[str, ...] = ()
    if isinstance(named, list):
        refs = tuple(
            normalise_reference(r["reference"])
            for r in named
            if isinstance(r, dict) and isinstance(r.get("reference"), str)
        )
    return keys, refs


def exposure_from(
    resource: Resource, record: PatientRecord, catalog: DrugCatalog, planned_on: date | None = None
) -> MedicationExposure | None:
    """MedicationStatement / MedicationRequest / MedicationAdministration → exposure (None if void/unknown).

    `planned_on` marks a draft order (order-select / order-sign): planned therapy starting that day.
    """
    planned = planned_on is not None
    status = resource.get("status")
    if not isinstance(status, str):
        raise MalformedResource("medication without status")
    if status in _VOID_MED or (status == "draft" and not planned):
        return None
    concept = _medication_concept(resource, record)
    drugs = catalog.ingredients_for_concept(concept)
    if not drugs:
        return None
    rtype = resource["resourceType"]
    start: date | None
    end: date | None
    asserted: date | None = None
    supply: int | None = None
    fills: int | None = None
    if rtype == "MedicationStatement":
        start, end = _period(resource.get("effectivePeriod"))
        asserted = parse_date(resource.get("dateAsserted"))
        start = start or parse_date(resource.get("effectiveDateTime")) or asserted
    elif rtype == "MedicationRequest":
        start, end = _period((resource.get("dispenseRequest") or {}).get("validityPeriod"))
        authored = parse_date(resource.get("authoredOn"))
        start = authored or start
        if end is None:  # with a validity end the order's period is known: no supply needed
            supply, fills = _dispensed(resource)
            if status not in _OPEN_MED and start is not None:
                end = start + timedelta(days=supply) if supply else start
    else:  # MedicationAdministration
        start, end = _period(resource.get("effectivePeriod"))
        start = start or parse_date(resource.get("effectiveDateTime"))
        end = end or start
    if planned_on is not None:
        start, end = max(start or planned_on, planned_on), None
    if start is None:
        raise MalformedResource(f"{rtype} without a usable start date")
    if end is None and status not in _OPEN_MED:
        end = start  # stopped/completed with no end recorded: the only safe date we know
    if end is not None and end < start:
        end = start
    stated = resource.get("statusReason")
    reasons: tuple[Coding, ...] = ()
    if isinstance(stated, dict):  # MedicationRequest.statusReason is 0..1, MedicationStatement's 0..*
        reasons = tuple(codings(stated))
    elif stated:
        reasons = tuple(c for concept_ in stated for c in codings(concept_))
    exposure = MedicationExposure(
        ref=DRAFT_REF_PREFIX + _ref(resource) if planned else _ref(resource),
        drugs=drugs,
        start=start,
        end=end,
        status=status,
        text=concept_text(concept),
        stop_reasons=reasons,
        planned=planned,
    )
    if asserted is not None:
        exposure.asserted = asserted
    if supply is not None:
        exposure.supply_days = supply
    if fills is not None:
        exposure.fills = fills
    if "reasonCode" in resource or "reasonReference" in resource:
        exposure.reasons, exposure.reason_refs = _reasons(resource)
    return exposure


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_EMPTY: frozenset[str] = frozenset()
# An Observation's or Condition's code: "system|code" keys and the text, read once per distinct concept.
_keys_and_text: ConceptMemo[tuple[frozenset[str], str]] = ConceptMemo(lambda c: (concept_keys(c), concept_text(c)))


def lab_from(resource: Resource) -> LabResult | None:
    status = resource.get("status")
    if not isinstance(status, str):
        raise MalformedResource("observation without status")
    if status in _VOID_OBS:
        return None
    when = parse_date(resource.get("effectiveDateTime"))
    if when is None:
        when = _period(resource.get("effectivePeriod"))[0] or parse_date(resource.get("issued"))
    if when is None:
        raise MalformedResource("observation without a date")
    value: float | None = None
    unit = ""
    unit_text = ""
    comparator: str | None = None
    not_detected = False
    coded: frozenset[str] = frozenset()
    value_text = ""
    quantity = resource.get("valueQuantity")
    if isinstance(quantity, dict):
        if _is_number(quantity.get("value")):
            value = float(quantity["value"])
        unit = str(quantity.get("code") or quantity.get("unit") or "")
        unit_text = str(quantity.get("unit") or quantity.get("code") or "")
        if isinstance(quantity.get("comparator"), str):
            comparator = quantity["comparator"]
    elif isinstance(resource.get("valueCodeableConcept"), dict):
        coded = concept_keys(resource["valueCodeableConcept"])
        value_text = concept_text(resource["valueCodeableConcept"])
        text = value_text.lower()
        not_detected = any(k.rpartition("|")[2] in _NOT_DETECTED_CODES for k in coded) or text.startswith(
            _NOT_DETECTED_TEXT
        )
    elif isinstance(resource.get("valueString"), str):
        value_text = resource["valueString"].strip()
        text = value_text.lower()
        not_detected = text.startswith(_NOT_DETECTED_TEXT)
        if text.startswith("<"):
            comparator = "<"
    interpretation = _EMPTY
    if resource.get("interpretation"):
        interpretation = frozenset(c.code for concept in resource["interpretation"] for c in codings(concept))
    components = _EMPTY
    if resource.get("component"):
        components = frozenset(
            key
            for component in resource["component"]
            if isinstance(component, dict)
            for key in concept_keys(component.get("valueCodeableConcept"))
        )
    keys, text = _keys_and_text(resource.get("code"))
    return LabResult(
        ref=_ref(resource),
        codes=keys,
        date=when,
        value=value,
        unit=unit,
        comparator=comparator,
        not_detected=not_detected,
        status=status,
        coded_values=coded,
        unit_text=unit_text,
        interpretation=interpretation,
        components=components,
        text=text,
        value_text=value_text,
    )


def _ended_status(resource: Resource) -> str | None:
    """ "inactive", "resolved" or "remission" for a condition that was real and has ended; else None."""
    if any(v in _VOID_CONDITION for v in codes(resource.get("verificationStatus"))):
        return None
    return next((c for c in codes(resource.get("clinicalStatus")) if c in _INACTIVE_CONDITION), None)


def _clinical_status(resource: Resource) -> str | None:
    """The clinicalStatus code ("active" when absent), or None when inactive, resolved, refuted or in error."""
    clinical = codes(resource.get("clinicalStatus"))
    verification = codes(resource.get("verificationStatus"))
    if any(c in _INACTIVE_CONDITION for c in clinical) or any(v in _VOID_CONDITION for v in verification):
        return None
    return clinical[0] if clinical else "active"


def _onset(resource: Resource) -> date | None:
    return (
        parse_date(resource.get("onsetDateTime"))
        or _period(resource.get("onsetPeriod"))[0]
        or parse_date(resource.get("recordedDate"))
    )


def diagnosis_from(resource: Resource) -> Diagnosis | None:
    status = _clinical_status(resource)
    if status is None:
        return None
    return Diagnosis(_ref(resource), _keys_and_text(resource.get("code"))[0], _onset(resource), status)


def ended_diagnosis_from(resource: Resource) -> Diagnosis | None:
    """An inactive, resolved or remitted Condition with its abatement date (None when not recorded)."""
    status = _ended_status(resource)
    if status is None:
        return None
    abatement = parse_date(resource.get("abatementDateTime")) or _period(resource.get("abatementPeriod"))[0]
    keys = _keys_and_text(resource.get("code"))[0]
    return Diagnosis(_ref(resource), keys, _onset(resource), status, abatement)


def allergy_from(resource: Resource, catalog: DrugCatalog) -> Allergy | None:
    if _clinical_status(resource) is None:
        return None
    drugs = catalog.ingredients_for_concept(resource.get("code"))
    if not drugs:
        return None
    when = parse_date(resource.get("recordedDate")) or parse_date(resource.get("onsetDateTime"))
    return Allergy(ref=_ref(resource), drugs=drugs, date=when)


def goal_from(resource: Resource) -> list[GoalTarget]:
    if resource.get("lifecycleStatus") not in ("active", "accepted", "planned", "proposed", None):
        return []
    targets = []
    for target in resource.get("target") or ():
        if not isinstance(target, dict):
            continue
        measure = concept_keys(target.get("measure"))
        quantity = target.get("detailQuantity")
        if not isinstance(quantity, dict):
            high = (target.get("detailRange") or {}).get("high")
            quantity = high if isinstance(high, dict) else None
        if measure and quantity and _is_number(quantity.get("value")):
            unit = str(quantity.get("code") or quantity.get("unit") or "")
            targets.append(GoalTarget(_ref(resource), measure, float(quantity["value"]), unit))
    return targets


def _resolve_reasons(facts: PatientFacts) -> None:
    """Add the codes of the Conditions an exposure's reasonReference names (unresolved references add nothing)."""
    pending = [e for e in facts.exposures if e.reason_refs]
    if not pending:
        return
    by_ref = {d.ref: d.codes for d in (*facts.diagnoses, *facts.ended_diagnoses)}
    for exposure in pending:
        named = [by_ref[r] for r in exposure.reason_refs if r in by_ref]
        if named:
            exposure.reasons = exposure.reasons.union(*named)


# OverflowError: dates or durations past datetime's range (a daysSupply of 10**9, year 9999 plus a duration).
_BAD_SHAPE = (MalformedResource, TypeError, AttributeError, KeyError, ValueError, OverflowError)
T = TypeVar("T")


def _read_all(
    resources: Iterable[object], reader: Callable[[Resource], T | None], facts: PatientFacts, into: list[T]
) -> None:
    for resource in resources:
        try:
            if not isinstance(resource, dict):
                raise MalformedResource("entry is not a JSON object")
            fact = reader(resource)
        except _BAD_SHAPE as exc:
            facts.skipped += 1
            log.debug("skipped a malformed resource: %s", exc)  # no ids or values: they may identify the patient
            continue
        if fact is not None:
            into.append(fact)


def extract_facts(
    record: PatientRecord, catalog: DrugCatalog, today: date, observations: ObservationFilter | None = None
) -> PatientFacts:
    """Read every resource once; a malformed one is skipped and counted, never fatal.

    With an ObservationFilter, Observations no program reads are left as they are (not facts, not skipped).
    """
    facts = PatientFacts(patient=record.reference, skipped=record.skipped)

    def medication(resource: Resource) -> MedicationExposure | None:
        return exposure_from(resource, record, catalog)

    def planned(resource: Resource) -> MedicationExposure | None:
        exposure = exposure_from(resource, record, catalog, planned_on=today)
        if exposure is not None:
            facts.drafts[exposure.ref] = exposure.drugs
        return exposure

    for rtype in ("MedicationStatement", "MedicationRequest", "MedicationAdministration"):
        _read_all(record.of_type(rtype), medication, facts, facts.exposures)
    _read_all(record.planned, planned, facts, facts.exposures)
    wanted = record.of_type("Observation")
    if observations is not None:
        wanted = [r for r in wanted if not isinstance(r, dict) or observations.wants(r)]
    _read_all(wanted, lab_from, facts, facts.labs)
    for lab in facts.labs:
        for key in lab.codes:
            facts.labs_by_code.setdefault(key, []).append(lab)

    def condition(resource: Resource) -> Diagnosis | None:
        found = diagnosis_from(resource)
        if found is None:
            ended = ended_diagnosis_from(resource)
            if ended is not None:
                facts.ended_diagnoses.append(ended)
        return found

    _read_all(record.of_type("Condition"), condition, facts, facts.diagnoses)
    _resolve_reasons(facts)

    def allergy(resource: Resource) -> Allergy | None:
        return allergy_from(resource, catalog)

    _read_all(record.of_type("AllergyIntolerance"), allergy, facts, facts.allergies)
    goals: list[list[GoalTarget]] = []
    _read_all(record.of_type("Goal"), goal_from, facts, goals)
    facts.goals = [target for targets in goals for target in targets]
    return facts
