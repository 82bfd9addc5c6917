"""Step therapy: the first-line trials on file when a next-line drug is requested (pure; runs after evaluation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Literal

from fhirsvc.facts import DRAFT_REF_PREFIX, Allergy, allergy_from, exposure_from
from fhirsvc.findings import Measurement
from fhirsvc.lot.engine import Line
from fhirsvc.pipeline import PatientResult, ProgramResult
from fhirsvc.record.model import PatientRecord
from fhirsvc.terminology.knowledge import Knowledge
from fhirsvc.terminology.programs import StepTherapy

# Line end reasons that document intolerance (mCODE TreatmentTerminationReasonVS 407563006 "Not tolerated", see
# fhirsvc/lot/engine.py STOP_REASON_LABELS).
_INTOLERANCE_ENDS = frozenset({"not-tolerated"})
_DAYS_PER_MONTH = 30.4375

Standing = Literal["on-file", "too-short", "missing"]


@dataclass
class Trial:
    """One earlier or current line holding first-line therapy: how long, what it measured, how it ended."""

    line: Line
    drugs: list[str]  # the line's first-line drugs
    start: date
    end: date | None  # None: still taken on the evaluation date
    days: int
    results: list[tuple[str, Measurement]] = field(default_factory=list)  # (observation display, latest in the line)
    intolerances: list[Allergy] = field(default_factory=list)  # recorded intolerance of one of its drugs

    @property
    def ended_by_intolerance(self) -> bool:
        return self.line.end_reason in _INTOLERANCE_ENDS or bool(self.intolerances)


@dataclass
class StepEvidence:
    """What a step-therapy request for `requested` can show, per the program's `step_therapy` description."""

    patient: str
    as_of: date
    program: ProgramResult
    step: StepTherapy
    requested: list[str]  # next-line drugs ordered (or asked about)
    orders: list[str]  # the draft orders requesting them ("MedicationRequest/<id>")
    trials: list[Trial]
    diagnoses: list[str]  # Conditions that put the patient in the program
    diagnosis_names: dict[str, str] = field(default_factory=dict)  # Condition → its code's text or display

    @property
    def standing(self) -> Standing:
        if not self.trials:
            return "missing"
        long_enough = any(t.days >= self.step.min_trial_days for t in self.trials)
        tolerated = self.step.intolerance_counts and any(t.ended_by_intolerance for t in self.trials)
        return "on-file" if long_enough or tolerated else "too-short"

    @property
    def sources(self) -> list[str]:
        """Every resource the evidence rests on, each once, in order of appearance."""
        refs = [*self.diagnoses]
        for trial in self.trials:
            refs += trial.line.refs + [m.ref for _, m in trial.results] + [a.ref for a in trial.intolerances]
        return list(dict.fromkeys(r for r in refs if not r.startswith(DRAFT_REF_PREFIX)))


def _months(start: date, day: date) -> int:
    return int((day - start).days // _DAYS_PER_MONTH)


def trial_summary(trial: Trial) -> str:
    """ "metformin 2019-03 to 2026-02, HbA1c 8.4 % on 2026-01-10 after 11 months" """
    until = trial.end.strftime("%Y-%m") if trial.end else "now"
    text = f"{', '.join(trial.drugs)} {trial.start.strftime('%Y-%m')} to {until}"
    if trial.results:
        name, latest = trial.results[0]
        text += (
            f", {name} {latest.reading} on {latest.date.isoformat()} after {_months(trial.start, latest.date)} months"
        )
    if trial.ended_by_intolerance:
        text += ", stopped: not tolerated"
    return text


def _trials(
    program: ProgramResult, step: StepTherapy, as_of: date, allergies: list[Allergy], before: int | None
) -> list[Trial]:
    trials = []
    for line in program.lines:
        if line.planned or (before is not None and line.number >= before):
            continue
        drugs = sorted(d for d in line.drugs if step.first_line(d, program.classes))
        if not drugs:
            continue
        last = line.end or as_of
        results = []
        for name, series in program.series.items():
            within = [m for m in series if line.start <= m.date <= last]
            if within:
                spec = program.program.observations.get(name)
                results.append((spec.display if spec else name, within[-1]))
        intolerant = [a for a in allergies if a.drugs & set(drugs)]
        trials.append(Trial(line, drugs, line.start, line.end, (last - line.start).days, results, intolerant))
    return trials


def _diagnoses(record: PatientRecord, program: ProgramResult) -> dict[str, str]:
    """Condition reference → its name, for the Conditions coded with the program's diagnosis codes."""
    keys = program.program.scope.diagnosis.keys
    found = {}
    for condition in record.of_type("Condition"):
        code = condition.get("code")
        if not isinstance(code, dict):
            continue
        codings = [c for c in code.get("coding") or [] if isinstance(c, dict)]
        matching = [c for c in codings if f"{c.get('system')}|{c.get('code')}" in keys]
        if matching:
            named = code.get("text") or matching[0].get("display") or matching[0].get("code")
            found[f"Condition/{condition.get('id')}"] = str(named)
    return found


def evidence_for(
    record: PatientRecord,
    result: PatientResult,
    knowledge: Knowledge,
    program_id: str,
    requested: list[str],
    orders: list[str] | None = None,
) -> StepEvidence | None:
    """The first-line evidence of `program_id` for `requested` drugs (empty: the program's next step in general);
    None when the patient is not in the program or the program has no step therapy."""
    program = next((p for p in result.programs if p.program.id == program_id), None)
    if program is None or program.program.step_therapy is None or not program.program.step_therapy.applies:
        return None
    step = program.program.step_therapy
    allergies = [a for r in record.of_type("AllergyIntolerance") if (a := allergy_from(r, knowledge.catalog))]
    planned = next((line.number for line in program.lines if line.planned), None)
    trials = _trials(program, step, result.as_of, allergies, planned)
    named = _diagnoses(record, program)
    return StepEvidence(
        result.patient, result.as_of, program, step, requested, orders or [], trials, list(named), named
    )


def ordered_next_line(record: PatientRecord, result: PatientResult, knowledge: Knowledge) -> list[StepEvidence]:
    """For the draft orders (order-select, order-sign): per program, the evidence for the next-line drugs a draft
    starts. A renewal of a next-line drug already taken is no step (a payer's re-authorization asks for the
    response to that drug, not for the first-line trial)."""
    found = []
    for program in result.programs:
        step = program.program.step_therapy
        if step is None or not step.applies:
            continue
        taken = {drug for line in program.lines if not line.planned for drug in line.drugs}
        requested: dict[str, None] = {}
        orders: dict[str, None] = {}
        for draft in record.planned:
            exposure = exposure_from(draft, record, knowledge.catalog, planned_on=result.as_of)
            if exposure is None:
                continue
            hits = [d for d in sorted(exposure.drugs - taken) if step.next_line(d, program.classes)]
            if hits:
                requested.update(dict.fromkeys(hits))
                orders[exposure.ref.removeprefix(DRAFT_REF_PREFIX)] = None
        if requested:
            evidence = evidence_for(record, result, knowledge, program.program.id, list(requested), list(orders))
            if evidence is not None:
                found.append(evidence)
    return found
