"""Assessment and the context a rule kind reads; the registry of rule kinds."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from fhirsvc.facts import Diagnosis, LabResult, PatientFacts
from fhirsvc.lot.engine import DrugEra, Line
from fhirsvc.terminology.programs import FlagCriterion, Guideline, Indicator, Program, Rule, Status, When
from fhirsvc.terminology.safety import SafetyTables
from fhirsvc.terminology.units import CONVERTERS

_ORDINALS = {2: "second-line", 3: "third-line", 4: "fourth-line", 5: "fifth-line"}


def next_line_label(current: int) -> str:
    return _ORDINALS.get(current + 1, f"line-{current + 1}")


@dataclass(slots=True)  # built per result: not frozen, for speed (see fhirsvc/facts.py)
class Measurement:
    """A lab result in the measure's canonical unit; `value` None for coded or "<" results without a number."""

    ref: str
    date: date
    value: float | None
    unit: str
    comparator: str | None
    not_detected: bool
    shown: str  # as reported, e.g. "2.5 log10 copies/mL" or "<20 copies/mL"


@dataclass
class Assessment:
    """A rule's finding for one patient and program, with everything a card or report must show."""

    program: str
    rule: str
    outcome: str
    status: Status
    indicator: Indicator
    summary: str
    card: bool
    guideline: Guideline
    evidence: list[str] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    line: Line | None = None
    regimen: list[str] = field(default_factory=list)


@dataclass
class ProgramContext:
    """What a rule kind may read: the program, the patient's facts, lines and the evaluation date."""

    program: Program
    facts: PatientFacts
    as_of: date
    lines: list[Line]
    eras: list[DrugEra]
    classes: dict[str, str] = field(default_factory=dict)
    safety: SafetyTables = field(default_factory=lambda: SafetyTables({}, ()))
    assessments: dict[str, Assessment] = field(default_factory=dict)  # earlier rules' findings, by rule id
    _flags: dict[str, list[str]] | None = None
    _results: dict[str, list[LabResult]] = field(default_factory=dict)  # per observation name, for this as_of
    _measurements: dict[str, list[Measurement]] = field(default_factory=dict)

    @property
    def current_line(self) -> Line | None:
        return self.lines[-1] if self.lines and self.lines[-1].ongoing else None

    @property
    def last_line(self) -> Line | None:
        return self.lines[-1] if self.lines else None

    def active_drugs(self, day: date | None = None) -> list[str]:
        when = day or self.as_of
        return sorted({e.drug for e in self.eras if e.active_on(when)})

    def line_classes(self, line: Line) -> set[str]:
        return {self.classes.get(d, "") for d in line.drugs}

    def results(self, observation: str) -> list[LabResult]:
        """Valid results of a named observation (by code, or by a phrase in code.text) up to `as_of`, by date."""
        cached = self._results.get(observation)
        if cached is not None:
            return cached
        spec = self.program.observations[observation]
        by_code = self.facts.labs_by_code
        found = {id(lab): lab for key in spec.keys for lab in by_code.get(key, ())}
        if spec.text_patterns:
            for lab in self.facts.labs:
                text = lab.text.lower()
                if any(p in text for p in spec.text_patterns):
                    found[id(lab)] = lab
        results = sorted((lab for lab in found.values() if lab.date <= self.as_of), key=lambda lab: lab.date)
        self._results[observation] = results
        return results

    def as_measurement(self, lab: LabResult) -> Measurement:
        """Any result as evidence, including coded ones ("Patient's condition worsened")."""
        shown = lab.value_text or (
            f"{lab.comparator or ''}{lab.value:g} {lab.unit_text or lab.unit}" if lab.value is not None else ""
        )
        return Measurement(lab.ref, lab.date, lab.value, lab.unit, lab.comparator, lab.not_detected, shown.strip())

    def program_drugs_active(self, day: date | None = None) -> list[str]:
        return [d for d in self.active_drugs(day) if d in self.classes]

    def has_value(self, lab: LabResult, observation: str, value_set: str) -> bool:
        return bool(lab.coded_values & self.program.observations[observation].values[value_set].keys)

    def diagnoses(self, condition_set: str, status: str | None = None) -> list[Diagnosis]:
        codes = self.program.conditions[condition_set].keys
        return [
            d
            for d in self.facts.diagnoses
            if d.codes & codes
            and (d.onset is None or d.onset <= self.as_of)
            and (status is None or d.clinical_status == status)
        ]

    def flags(self) -> dict[str, list[str]]:
        """Program flags that hold (e.g. heart_failure, ckd), each with the references that make it hold."""
        if self._flags is None:
            self._flags = {}
            for name, flag in self.program.flags.items():
                refs: list[str] = []
                for criterion in flag.any_of:
                    refs += self._criterion_refs(criterion)
                if refs:
                    self._flags[name] = refs
        return self._flags

    def _criterion_refs(self, criterion: FlagCriterion) -> list[str]:
        if criterion.condition:
            return [d.ref for d in self.diagnoses(criterion.condition) if d.clinical_status == "active"]
        if criterion.observation:
            measured = self.measurements(criterion.observation)
            if not measured:
                return []
            latest = measured[-1]
            if criterion.within_days and (self.as_of - latest.date).days > criterion.within_days:
                return []
            value = latest.value
            if value is None:
                return []
            if criterion.below is not None and value < criterion.below:
                return [latest.ref]
            if criterion.at_least is not None and value >= criterion.at_least:
                return [latest.ref]
        return []

    def holds(self, when: When | None, line: Line | None) -> bool:
        """Whether a recommendation's `when` applies to this patient and line."""
        if when is None:
            return True
        drugs = line.drugs if line else set()
        classes = self.line_classes(line) if line else set()
        flags = self.flags()
        checks = [
            not when.line_classes_any or bool(classes & set(when.line_classes_any)),
            not (classes & set(when.line_classes_none)),
            not when.line_drugs_any or bool(drugs & set(when.line_drugs_any)),
            not (drugs & set(when.line_drugs_none)),
            not when.flags_any or any(f in flags for f in when.flags_any),
            not any(f in flags for f in when.flags_none),
            when.observation_present is None or bool(self.results(when.observation_present)),
            when.observation_absent is None or not self.results(when.observation_absent),
            not when.genes_wild_type or self._wild_type(when.genes_wild_type),
        ]
        return all(checks)

    def _wild_type(self, genes: list[str]) -> bool:
        """Every gene has a variant assessment answered "absent" (program observation `genetic_variant`)."""
        if "genetic_variant" not in self.program.observations:
            return False
        absent = self.program.observations["genetic_variant"].values.get("absent")
        if absent is None:
            return False
        results = self.results("genetic_variant")
        return all(
            any(
                lab.coded_values & absent.keys and any(c.rpartition("|")[2] == gene for c in lab.components)
                for lab in results
            )
            for gene in genes
        )

    def measurements(self, observation: str) -> list[Measurement]:
        """Results of one named observation up to `as_of`, converted, one per day (the highest), by date."""
        cached = self._measurements.get(observation)
        if cached is not None:
            return cached
        spec = self.program.observations[observation]
        convert = CONVERTERS[spec.unit]
        log_keys = spec.log10_keys
        by_day: dict[date, Measurement] = {}
        for lab in self.results(observation):
            measurement = _measure(lab, spec.unit, bool(lab.codes & log_keys), convert)
            if measurement is None:
                continue
            kept = by_day.get(lab.date)
            if kept is None or (measurement.value or 0.0) > (kept.value or 0.0):
                by_day[lab.date] = measurement
        measured = [by_day[d] for d in sorted(by_day)]
        self._measurements[observation] = measured
        return measured


def _measure(lab: LabResult, unit: str, log_scale: bool, convert: Any) -> Measurement | None:
    shown_unit = lab.unit_text or lab.unit or unit
    prefix = lab.comparator or ""
    if lab.value is None:
        if not (lab.not_detected or lab.comparator):
            return None
        return Measurement(lab.ref, lab.date, None, unit, lab.comparator, lab.not_detected, "not detected")
    value = convert(lab.value, lab.unit, log_scale)
    if value is None:
        return None  # a unit we cannot convert (e.g. IU/mL): not evidence either way
    shown = f"{prefix}{lab.value:g} {shown_unit}"
    return Measurement(lab.ref, lab.date, value, unit, lab.comparator, lab.not_detected, shown)


RuleKind = Callable[[Rule, ProgramContext], Assessment]
RULE_KINDS: dict[str, RuleKind] = {}


def rule_kind(name: str) -> Callable[[RuleKind], RuleKind]:
    def register(func: RuleKind) -> RuleKind:
        RULE_KINDS[name] = func
        return func

    return register


def make_assessment(
    rule: Rule,
    ctx: ProgramContext,
    outcome: str,
    values: Mapping[str, object],
    measurements: list[Measurement] | None = None,
    line: Line | None = None,
    extra_evidence: Iterable[str] = (),
) -> Assessment:
    """Fill the outcome's templates; a finding on line ≥ 2 becomes next-line-evaluation."""
    spec = rule.outcomes[outcome]
    status: Status = spec.status
    if status == "second-line-evaluation" and line is not None and line.number >= 2:
        status = "next-line-evaluation"
    if line is not None:
        values = {
            "line": line.number,
            "next_line": next_line_label(line.number),
            "start": line.start.isoformat(),
            **values,
        }
    summary = spec.summary.format(**values)
    if len(summary) >= 140:
        summary = summary[:138] + "…"
    used = measurements or []
    evidence = list(dict.fromkeys([m.ref for m in used] + list(extra_evidence) + (line.refs if line else [])))
    shown = [ctx.assessments[r] for r in rule.suppressed_by if r in ctx.assessments and ctx.assessments[r].card]
    if shown and status != "no-action":
        # Another rule's card already says this (e.g. the HbA1c card names the preferred class).
        status = "no-action"
        summary = f"Covered by {shown[0].rule}: {summary}"[:139]
    regimen = sorted({e.drug for e in ctx.eras if e.active_on(min(ctx.as_of, line.end or ctx.as_of))}) if line else []
    return Assessment(
        program=ctx.program.id,
        rule=rule.id,
        outcome=outcome,
        status=status,
        indicator=spec.indicator,
        summary=summary,
        card=spec.card and status != "no-action",
        guideline=rule.guideline,
        evidence=evidence,
        measurements=used,
        recommendations=[r.text.format(**values) for r in spec.recommendations if ctx.holds(r.when, line)],
        suggestions=list(spec.suggestions),
        line=line,
        regimen=regimen or (sorted(line.drugs) if line else []),
    )


def number(value: float | None) -> str:
    """Values as clinicians read them: 450, 316, 7.4."""
    if value is None:
        return "?"
    return f"{value:.0f}" if value >= 100 or value == int(value) else f"{value:.1f}"
