"""Invariants every evaluation must hold on data nobody here wrote; shared by the Synthea tests and the sweep."""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from fhirsvc.cds.models import Card
from fhirsvc.findings import Finding
from fhirsvc.pipeline import PatientResult, ProgramResult, evaluate_record
from fhirsvc.record.files import index_records
from fhirsvc.record.model import PatientRecord, normalise_reference
from fhirsvc.render.cards import cards_with_findings
from fhirsvc.terminology.knowledge import Knowledge

# An ongoing line whose newest medication evidence (see `last_evidence`) is older than this at the as-of date is
# "open past its evidence": a year of cover (an order that states no supply) plus the grace period for a late
# renewal, and a few days more: no drug here is taken that long without a refill, a new order, an administration
# or an updated statement.
STALE_AFTER_DAYS = 400

# HIV: a switch counts as "after failure" when the newest viral load in this many days before the switch, taken
# at least `min_days_on_line` into the old regimen, is at or above the program's failure threshold.
FAILURE_LOOKBACK_DAYS = 365
HIV_VIRAL_LOAD = "http://loinc.org|20447-9"  # the code Synthea's hiv_viral_load module writes

# Outcomes of the HIV failure rule that name a failing viral load (confirmed, or "repeat to confirm").
HIV_FAILURE_OUTCOMES = frozenset({"confirmed", "unconfirmed"})

Resource = dict[str, Any]


@dataclass(frozen=True)
class Violation:
    """One broken invariant for one patient, with what a developer needs to look it up."""

    invariant: str
    patient: str
    program: str
    detail: str


@dataclass
class PatientOutcome:
    """A record evaluated once as of the pinned date: its result and cards, or the exception it raised."""

    record: PatientRecord
    as_of: date
    result: PatientResult | None = None
    findings: list[tuple[Card, Finding]] = field(default_factory=list)
    error: str | None = None

    @property
    def patient(self) -> str:
        return self.record.reference

    def program(self, program_id: str) -> ProgramResult | None:
        if self.result is None:
            return None
        return next((p for p in self.result.programs if p.program.id == program_id), None)


def evaluate(record: PatientRecord, knowledge: Knowledge, as_of: date) -> PatientOutcome:
    outcome = PatientOutcome(record, as_of)
    try:
        outcome.result = evaluate_record(record, knowledge, as_of)
        outcome.findings = cards_with_findings(outcome.result)
    except Exception:  # the invariant is "no crash": the sweep reports it, the tests fail on it
        outcome.error = traceback.format_exc(limit=-3)
    return outcome


def records(folder: Path) -> Iterator[tuple[PatientRecord, int]]:
    """Each patient of a Synthea output folder with the entries skipped while reading, one patient in memory at
    a time (a bundle per patient, or Bulk Data NDJSON)."""
    bundles = sorted(folder.glob("*.json"))
    if bundles and not any(folder.glob("*.ndjson")):  # a bulk export also holds a parameters.json
        for bundle in bundles:
            loaded = index_records([bundle])
            for record in loaded.records():
                yield record, loaded.skipped + record.skipped
        return
    index = index_records([folder])
    for number, record in enumerate(index.records()):
        yield record, (index.skipped if number == 0 else 0) + record.skipped


# --- dates of raw resources --------------------------------------------------------------------------------------


def _day(value: object) -> date | None:
    if isinstance(value, str) and len(value) >= 10:
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def resource_dates(resource: Resource) -> list[date]:
    """Every clinical date a resource states (not meta.lastUpdated): when it happened, started, ended, was asked."""
    found: list[object] = [
        resource.get(key)
        for key in (
            "effectiveDateTime",
            "effectiveInstant",
            "authoredOn",
            "dateAsserted",
            "onsetDateTime",
            "recordedDate",
            "issued",
            "occurrenceDateTime",
        )
    ]
    for key in ("effectivePeriod", "onsetPeriod"):
        period = resource.get(key)
        if isinstance(period, dict):
            found += [period.get("start"), period.get("end")]
    validity = (resource.get("dispenseRequest") or {}).get("validityPeriod")
    if isinstance(validity, dict):
        found += [validity.get("start"), validity.get("end")]
    return [d for d in (_day(v) for v in found) if d is not None]


def event_date(resource: Resource) -> date | None:
    """When a resource's fact happened (effective/onset/authored), the earliest such date it states."""
    dates = resource_dates(resource)
    return min(dates) if dates else None


def _supply_days(request: Resource) -> int:
    """Days of supply an order covers with its repeats (dispenseRequest), 0 when it says nothing."""
    dispense = request.get("dispenseRequest")
    if not isinstance(dispense, dict):
        return 0
    duration = dispense.get("expectedSupplyDuration")
    if not isinstance(duration, dict) or not isinstance(duration.get("value"), int | float):
        return 0
    per_unit = {"d": 1, "day": 1, "days": 1, "wk": 7, "week": 7, "mo": 30, "month": 30, "a": 365}
    unit = str(duration.get("code") or duration.get("unit") or "d").lower()
    repeats = dispense.get("numberOfRepeatsAllowed")
    fills = 1 + (repeats if isinstance(repeats, int) and repeats > 0 else 0)
    return int(duration["value"] * per_unit.get(unit, 1) * fills)


def last_evidence(resource: Resource, as_of: date) -> date | None:
    """The newest day on or before `as_of` on which a medication record shows the drug in use: its dates, and for
    an order the end of the supply its repeats cover."""
    dates = [d for d in resource_dates(resource) if d <= as_of]
    if resource.get("resourceType") == "MedicationRequest" and dates:
        covered = min(dates) + timedelta(days=_supply_days(resource))
        dates.append(min(covered, as_of))
    return max(dates) if dates else None


def index_by_reference(record: PatientRecord) -> dict[str, Resource]:
    return {
        f"{resource['resourceType']}/{resource['id']}": resource
        for resources in record.resources.values()
        for resource in resources
        if isinstance(resource.get("id"), str)
    }


# --- the invariants ----------------------------------------------------------------------------------------------


def deceased_on(record: PatientRecord) -> date | bool | None:
    """Patient.deceased[x]: the date of death, True when only a boolean says so, None when alive or not stated."""
    for patient in record.of_type("Patient"):
        when = _day(patient.get("deceasedDateTime"))
        if when is not None:
            return when
        if patient.get("deceasedBoolean") is True:
            return True
    return None


def is_dead(record: PatientRecord, as_of: date) -> bool:
    died = deceased_on(record)
    return died is True or (isinstance(died, date) and died <= as_of)


def check_crash(outcome: PatientOutcome) -> list[Violation]:
    if outcome.error is None:
        return []
    return [Violation("crash", outcome.patient, "-", outcome.error.strip().splitlines()[-1])]


def check_dead(outcome: PatientOutcome) -> list[Violation]:
    """No card for a patient dead at the as-of date."""
    if not outcome.findings or not is_dead(outcome.record, outcome.as_of):
        return []
    died = deceased_on(outcome.record)
    return [
        Violation(
            "card-for-dead-patient",
            outcome.patient,
            assessment.program,
            f"died {died}; card '{assessment.rule}' ({assessment.outcome}): {card.summary}",
        )
        for card, assessment in outcome.findings
    ]


def check_stale_lines(outcome: PatientOutcome, stale_after_days: int = STALE_AFTER_DAYS) -> list[Violation]:
    """No ongoing line whose newest medication evidence is more than `stale_after_days` before the as-of date."""
    if outcome.result is None:
        return []
    by_ref = index_by_reference(outcome.record)
    found: list[Violation] = []
    for program in outcome.result.programs:
        line = program.current_line
        if line is None:
            continue
        days = [last_evidence(by_ref[ref], outcome.as_of) for ref in line.refs if ref in by_ref]
        known = [d for d in days if d is not None]
        if not known:
            continue
        newest = max(known)
        age = (outcome.as_of - newest).days
        if age > stale_after_days:
            drugs = ", ".join(sorted(line.drugs))
            died = deceased_on(outcome.record)
            found.append(
                Violation(
                    "stale-line",
                    outcome.patient,
                    program.program.id,
                    f"line {line.number} ({drugs}) started {line.start} is ongoing; newest medication evidence "
                    f"{newest} ({age} days before as-of); " + (f"died {died}" if died else "alive"),
                )
            )
    return found


# The longest labelled dosing interval among the programs' drugs: ocrelizumab every 6 months (OCREVUS label,
# https://www.accessdata.fda.gov/drugsatfda_docs/label/2017/761053lbl.pdf).
LONGEST_DOSING_INTERVAL_DAYS = 183


def _stated_end(resource: Resource) -> bool:
    periods = [resource.get("effectivePeriod"), (resource.get("dispenseRequest") or {}).get("validityPeriod")]
    return any(isinstance(p, dict) and p.get("end") for p in periods)


def check_ended_early(outcome: PatientOutcome) -> list[Violation]:
    """The opposite of a stale line: a living patient's last line has not ended, without a stated end, while its
    newest evidence is within the longest dosing interval of the as-of date (the sweep reports it; no test enforces
    it yet)."""
    if outcome.result is None or is_dead(outcome.record, outcome.as_of):
        return []
    by_ref = index_by_reference(outcome.record)
    found: list[Violation] = []
    for program in outcome.result.programs:
        last = program.lines[-1] if program.lines else None
        if last is None or last.end is None:
            continue
        records = [by_ref[ref] for ref in last.refs if ref in by_ref]
        if any(_stated_end(resource) for resource in records):
            continue  # a stated end (a completed statement's period, an order's validity) is a real stop
        # The line's own end is the day of its last exposure the engine saw (refs may not list every record).
        known = [d for ref in last.refs if ref in by_ref and (d := last_evidence(by_ref[ref], outcome.as_of))]
        known.append(min(last.end, outcome.as_of))
        if (outcome.as_of - max(known)).days <= LONGEST_DOSING_INTERVAL_DAYS:
            found.append(
                Violation(
                    "line-ended-within-dosing-interval",
                    outcome.patient,
                    program.program.id,
                    f"line {last.number} ({', '.join(sorted(last.drugs))}) ended {last.end} ({last.end_reason}); "
                    f"newest medication evidence {max(known)}, {(outcome.as_of - max(known)).days} days before as-of",
                )
            )
    return found


def _window(program: ProgramResult, assessment: Finding, as_of: date) -> tuple[date | None, date, str]:
    """The dates a card's measurements must fall in for its rule kind: (earliest or None, latest, why)."""
    rule = next(r for r in program.program.rules if r.id == assessment.rule)
    line = assessment.line
    start = line.start if line is not None else None

    def param(name: str) -> int:
        return int(getattr(rule.params, name))

    if rule.kind == "confirmed-threshold" and start is not None:
        return start, as_of, "results on the current regimen (on or after the line start)"
    if rule.kind == "latest-above-target" and assessment.outcome == "above" and start is not None:
        # The result drawn the day the line starts is its baseline, not a response to it.
        earliest = max(start + timedelta(days=1), as_of - timedelta(days=param("lookback_days")))
        return earliest, as_of, f"after the line start and within {param('lookback_days')} days"
    if rule.kind == "progression" and assessment.outcome == "progression" and start is not None:
        return start + timedelta(days=1), as_of, "progression after the line start"
    if rule.kind == "disease-activity" and assessment.outcome == "breakthrough" and start is not None:
        # The EDSS baseline may be as old as the line; the activity itself is checked by `_recent_enough`.
        return start, as_of, "on the DMT (on or after the line start)"
    if rule.kind == "monitoring-overdue" and assessment.outcome == "overdue":
        max_days = param("max_days")
        return None, as_of - timedelta(days=max_days + 1), f"last result more than {max_days} days ago"
    return None, as_of, "on or before the as-of date"


def _is_baseline(program: ProgramResult, assessment: Finding, measurement_date: date) -> bool:
    """An HbA1c card may show the line's baseline: the result on or before its first day, within the look-back."""
    rule = next(r for r in program.program.rules if r.id == assessment.rule)
    line = assessment.line
    if rule.kind != "latest-above-target" or line is None:
        return False
    lookback = int(rule.params.lookback_days)
    return line.start - timedelta(days=lookback) <= measurement_date <= line.start


def _recent_enough(program: ProgramResult, assessment: Finding, as_of: date) -> str | None:
    """Disease activity must be recent: the newest result a breakthrough card cites lies within the rule's window."""
    rule = next(r for r in program.program.rules if r.id == assessment.rule)
    if rule.kind != "disease-activity" or assessment.outcome != "breakthrough" or not assessment.measurements:
        return None
    window = int(rule.params.window_days)
    newest = max(m.date for m in assessment.measurements)
    if (as_of - newest).days > window:
        return f"newest result cited {newest}, more than {window} days before as-of"
    return None


def check_evidence(outcome: PatientOutcome) -> list[Violation]:
    """Every card's evidence resolves to a resource of this patient dated on or before as-of, inside its window."""
    if outcome.result is None:
        return []
    by_ref = index_by_reference(outcome.record)
    programs = {p.program.id: p for p in outcome.result.programs}
    found: list[Violation] = []

    def add(kind: str, assessment: Finding, detail: str) -> None:
        found.append(Violation(kind, outcome.patient, assessment.program, f"{assessment.rule}: {detail}"))

    for _card, assessment in outcome.findings:
        refs = [*assessment.evidence, *(m.ref for m in assessment.measurements)]
        if assessment.line is not None:
            refs += assessment.line.refs
        for ref in dict.fromkeys(refs):
            resource = by_ref.get(normalise_reference(ref))
            if resource is None:
                add("evidence-unresolved", assessment, f"{ref} is not a resource of this patient")
                continue
            when = event_date(resource)
            if when is not None and when > outcome.as_of:
                add("evidence-after-as-of", assessment, f"{ref} dated {when}")
        stale_activity = _recent_enough(programs[assessment.program], assessment, outcome.as_of)
        if stale_activity:
            add("evidence-outside-window", assessment, f"{assessment.outcome}: {stale_activity}")
        earliest, latest, why = _window(programs[assessment.program], assessment, outcome.as_of)
        for measurement in assessment.measurements:
            if _is_baseline(programs[assessment.program], assessment, measurement.date):
                continue
            if measurement.date > latest or (earliest is not None and measurement.date < earliest):
                add(
                    "evidence-outside-window",
                    assessment,
                    f"{assessment.outcome}: {measurement.ref} dated {measurement.date} ({measurement.shown}); "
                    f"expected {why} ({earliest or '...'} to {latest})",
                )
    return found


@dataclass(frozen=True)
class ArtSwitch:
    """A change of antiretroviral regimen in the record, with the viral load that preceded it."""

    day: date
    before: frozenset[str]
    after: frozenset[str]
    viral_load: float | None
    viral_load_day: date | None


def _codings(resource: Resource) -> list[dict[str, Any]]:
    codings = (resource.get("code") or {}).get("coding")
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


def art_switches(outcome: PatientOutcome, knowledge: Knowledge) -> list[ArtSwitch]:
    """Regimen changes read from the orders: ART drugs grouped by the day ordered (Synthea stops every ART drug and
    orders the new regimen at one encounter); a day that orders a drug outside the current regimen is a switch."""
    program = next((p for p in knowledge.programs if p.id == "hiv"), None)
    if program is None:
        return []
    art = set(knowledge.program_drugs(program))
    facts_by_day: dict[date, set[str]] = {}
    from fhirsvc.facts import extract_facts  # the product's own reading of the medication codes

    facts = extract_facts(outcome.record, knowledge.catalog, outcome.as_of, knowledge.observation_filter)
    for exposure in facts.exposures:
        drugs = exposure.drugs & art
        if drugs and exposure.start <= outcome.as_of:
            facts_by_day.setdefault(exposure.start, set()).update(drugs)
    loads = sorted(
        (day, value)
        for observation in outcome.record.of_type("Observation")
        if any(f"{c.get('system')}|{c.get('code')}" == HIV_VIRAL_LOAD for c in _codings(observation))
        and (day := event_date(observation)) is not None
        and isinstance(value := (observation.get("valueQuantity") or {}).get("value"), int | float)
    )
    switches: list[ArtSwitch] = []
    previous: frozenset[str] | None = None
    previous_start: date | None = None
    min_days = int(program.parameters.get("min_days_on_line", 168))
    for day in sorted(facts_by_day):
        regimen = frozenset(facts_by_day[day])
        # A re-order of the same drugs, or of some of them, continues the regimen; a new drug is a switch.
        if previous is not None and previous_start is not None and regimen - previous:
            window = [
                (d, v)
                for d, v in loads
                if previous_start + timedelta(days=min_days) <= d < day and (day - d).days <= FAILURE_LOOKBACK_DAYS
            ]
            last = window[-1] if window else None
            switches.append(ArtSwitch(day, previous, regimen, last[1] if last else None, last[0] if last else None))
        if previous is None or regimen - previous:
            previous, previous_start = regimen, day
    return switches


def chart_as_it_stood(record: PatientRecord, day: date) -> PatientRecord:
    """The record as a clinician saw it on `day`: Synthea exports each order's final status, so the newest order of
    each medication on or before `day`, stopped later without an end date, was still active then."""
    newest: dict[str, Resource] = {}
    for order in record.of_type("MedicationRequest"):
        authored = _day(order.get("authoredOn"))
        key = str(order.get("medicationCodeableConcept") or order.get("medicationReference"))
        if authored is None or authored > day:
            continue
        kept = newest.get(key)
        if kept is None or str(kept.get("authoredOn")) < str(order.get("authoredOn")):
            newest[key] = order
    reopened = {
        id(order)
        for order in newest.values()
        if order.get("status") in ("stopped", "completed")
        and not (order.get("dispenseRequest") or {}).get("validityPeriod")
    }
    if not reopened:
        return record
    then = PatientRecord(record.patient_id, skipped=record.skipped, medications=record.medications)
    for resources in record.resources.values():
        for resource in resources:
            then.add({**resource, "status": "active"} if id(resource) in reopened else resource)
    return then


def check_hiv_switches(
    outcome: PatientOutcome, knowledge: Knowledge
) -> tuple[list[tuple[ArtSwitch, str]], list[Violation]]:
    """Where the record switched ART after a failing viral load, our failure finding was there the day before, on
    the chart as it stood that day (`chart_as_it_stood`).

    Returns each such switch with the failure rule's outcome on its eve, and the violations.
    """
    program = next((p for p in knowledge.programs if p.id == "hiv"), None)
    if program is None or outcome.result is None:
        return [], []
    threshold = float(program.parameters.get("failure_threshold", 200))
    checked: list[tuple[ArtSwitch, str]] = []
    found: list[Violation] = []
    for switch in art_switches(outcome, knowledge):
        if switch.viral_load is None or switch.viral_load < threshold:
            continue
        eve = switch.day - timedelta(days=1)
        before = evaluate(chart_as_it_stood(outcome.record, eve), knowledge, eve)
        hiv = before.program("hiv")
        failure = None
        if hiv is not None:
            failure = next((a for a in hiv.findings if a.rule == "hiv-virologic-failure"), None)
        checked.append((switch, failure.outcome if failure else "not-in-program"))
        if failure is None or failure.outcome not in HIV_FAILURE_OUTCOMES:
            found.append(
                Violation(
                    "art-switch-without-failure-finding",
                    outcome.patient,
                    "hiv",
                    f"switched {sorted(switch.before)} -> {sorted(switch.after)} on {switch.day} after viral load "
                    f"{switch.viral_load:g} on {switch.viral_load_day}; as of {eve} the failure rule said "
                    f"{failure.outcome + ': ' + failure.summary if failure else 'nothing (not in the program)'}",
                )
            )
    return checked, found


def check_all(outcome: PatientOutcome) -> list[Violation]:
    """The per-patient invariants (the HIV switch check needs the knowledge and runs apart)."""
    crash = check_crash(outcome)
    if crash:
        return crash
    return [*check_dead(outcome), *check_stale_lines(outcome), *check_evidence(outcome)]


def by_invariant(violations: Iterable[Violation]) -> dict[str, list[Violation]]:
    grouped: dict[str, list[Violation]] = {}
    for violation in violations:
        grouped.setdefault(violation.invariant, []).append(violation)
    return grouped
