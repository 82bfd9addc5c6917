"""Assessment and the context a rule kind reads; the registry of rule kinds."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from fhirsvc.facts import LabResult, PatientFacts
from fhirsvc.lot.engine import DrugEra, Line
from fhirsvc.terminology.programs import Guideline, Indicator, Program, Rule, Status
from fhirsvc.terminology.units import CONVERTERS

_ORDINALS = {2: "second-line", 3: "third-line", 4: "fourth-line", 5: "fifth-line"}


def next_line_label(current: int) -> str:
    return _ORDINALS.get(current + 1, f"line-{current + 1}")


@dataclass(frozen=True, slots=True)
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

    @property
    def current_line(self) -> Line | None:
        return self.lines[-1] if self.lines and self.lines[-1].ongoing else None

    def measurements(self, observation: str) -> list[Measurement]:
        """Results of one named observation up to `as_of`, converted, one per day (the highest), by date."""
        spec = self.program.observations[observation]
        convert = CONVERTERS[spec.unit]
        keys, log_keys = spec.keys, spec.log10_keys
        by_day: dict[date, Measurement] = {}
        for lab in self.facts.labs:
            if lab.date > self.as_of or not (lab.codes & keys):
                continue
            measurement = _measure(lab, spec.unit, bool(lab.codes & log_keys), convert)
            if measurement is None:
                continue
            kept = by_day.get(lab.date)
            if kept is None or (measurement.value or 0.0) > (kept.value or 0.0):
                by_day[lab.date] = measurement
        return [by_day[d] for d in sorted(by_day)]


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
    evidence = [m.ref for m in used] + (line.refs if line is not None else [])
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
        recommendations=list(spec.recommendations),
        suggestions=list(spec.suggestions),
        line=line,
        regimen=regimen or (sorted(line.drugs) if line else []),
    )


def number(value: float | None) -> str:
    """Values as clinicians read them: 450, 316, 7.4."""
    if value is None:
        return "?"
    return f"{value:.0f}" if value >= 100 or value == int(value) else f"{value:.1f}"
