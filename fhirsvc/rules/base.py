"""The context a rule kind reads (facts, lines, measurements, flags) and how a rule's outcome becomes a Finding."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from itertools import chain
from typing import Any

from fhirsvc.facts import Diagnosis, LabResult, PatientFacts
from fhirsvc.findings import Finding, Measurement
from fhirsvc.lot.engine import DrugEra, Line
from fhirsvc.terminology.programs import FlagCriterion, Program, Rule, Status, When
from fhirsvc.terminology.safety import SafetyTables
from fhirsvc.terminology.units import CONVERTERS

_ORDINALS = {2: "second-line", 3: "third-line", 4: "fourth-line", 5: "fifth-line"}


def next_line_label(current: int) -> str:
    return _ORDINALS.get(current + 1, f"line-{current + 1}")


@dataclass(slots=True)
class FlagHit:
    """Why a flag holds: the records behind it, the trigger worded for a card, and since when it holds."""

    refs: list[str]
    cite: str
    since: date | None
    measurements: list[Measurement] = field(default_factory=list)


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
    findings: dict[str, Finding] = field(default_factory=dict)  # earlier rules' findings, by rule id
    # Answers for this context's `as_of`, computed on first use; never passed in, so a context for another date
    # (`at_end_of`) starts without them.
    _flags: dict[str, FlagHit] | None = field(default=None, init=False, repr=False, compare=False)
    _results: dict[str, list[LabResult]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _measurements: dict[str, list[Measurement]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _diagnoses_read: dict[str, tuple[str, Diagnosis]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _active: dict[date, tuple[str, ...]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def at_end_of(self, line: Line) -> ProgramContext:
        """The context as it stood on the last day of an ended `line`, with that line still current and no later
        line begun: for asking a rule what it would have said then. Findings and cached answers start empty."""
        if line.end is None:
            raise ValueError(f"line {line.number} has not ended")
        index = next(i for i, known in enumerate(self.lines) if known is line)
        earlier = [*self.lines[:index], replace(line, end=None)]
        return ProgramContext(self.program, self.facts, line.end, earlier, self.eras, self.classes, self.safety)

    @property
    def current_line(self) -> Line | None:
        return self.lines[-1] if self.lines and self.lines[-1].ongoing else None

    @property
    def last_line(self) -> Line | None:
        return self.lines[-1] if self.lines else None

    def active_drugs(self, day: date | None = None) -> list[str]:
        """The drugs of an era active on `day` (default `as_of`), sorted: every finding on a line asks (its
        regimen), so they are kept per day."""
        when = day or self.as_of
        active = self._active.get(when)
        if active is None:
            active = self._active[when] = tuple(sorted({e.drug for e in self.eras if e.active_on(when)}))
        return list(active)

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
            f"{lab.comparator or ''}{format_number(lab.value)} {lab.unit_text or lab.unit}"
            if lab.value is not None
            else ""
        )
        shown = shown.strip() or "reported without a value"
        return Measurement(lab.ref, lab.date, lab.value, lab.unit, lab.comparator, lab.not_detected, shown)

    def program_drugs_active(self, day: date | None = None) -> list[str]:
        return [d for d in self.active_drugs(day) if d in self.classes]

    def has_value(self, lab: LabResult, observation: str, value_set: str) -> bool:
        return bool(lab.coded_values & self.program.observations[observation].values[value_set].keys)

    def diagnoses(self, condition_set: str, status: str | None = None, ended: bool = False) -> list[Diagnosis]:
        """Diagnoses of a named code set with onset by `as_of`; `ended` adds resolved and inactive ones (episodes)."""
        codes = self.program.conditions[condition_set].keys
        pool = [*self.facts.diagnoses, *self.facts.ended_diagnoses] if ended else self.facts.diagnoses
        found = [
            d
            for d in pool
            if d.codes & codes
            and (d.onset is None or d.onset <= self.as_of)
            and (status is None or d.clinical_status == status)
        ]
        for d in found:
            self._diagnoses_read.setdefault(d.ref, (condition_set, d))
        return found

    def flags(self) -> dict[str, list[str]]:
        """Program flags that hold (e.g. heart_failure, ckd), each with the references that make it hold."""
        return {name: hit.refs for name, hit in self.flag_hits().items()}

    def flag_hits(self) -> dict[str, FlagHit]:
        """Program flags that hold, each with its evidence and the first criterion's wording of the trigger."""
        if self._flags is None:
            self._flags = {}
            for name, flag in self.program.flags.items():
                hits = [hit for criterion in flag.any_of if (hit := self._criterion_hit(criterion)) is not None]
                if hits:
                    refs = list(dict.fromkeys(ref for hit in hits for ref in hit.refs))
                    used = [m for hit in hits for m in hit.measurements]
                    self._flags[name] = FlagHit(refs, hits[0].cite, hits[0].since, used)
        return self._flags

    def _criterion_hit(self, criterion: FlagCriterion) -> FlagHit | None:
        if criterion.condition:
            return self._condition_hit(criterion, criterion.condition)
        if criterion.observation:
            return self._observation_hit(criterion, criterion.observation)
        return None

    def _condition_hit(self, criterion: FlagCriterion, condition_set: str) -> FlagHit | None:
        if criterion.history:
            found = self.diagnoses(condition_set, ended=True)
        else:
            found = [d for d in self.diagnoses(condition_set) if d.clinical_status == "active"]
        if not found:
            return None
        backing = [hit for c in criterion.backed_by if (hit := self._criterion_hit(c)) is not None]
        if criterion.backed_by and not backing:
            return None
        if any(self._criterion_hit(c) is not None for c in criterion.contradicted_by):
            return None
        found.sort(key=lambda d: (d.onset or date.max, d.ref))
        first = found[0]
        template = criterion.cite or ("{ref}, since {since}" if first.onset else "{ref}")
        cite = template.format(ref=first.ref, since=first.onset.isoformat() if first.onset else "")
        refs = [d.ref for d in found] + [ref for hit in backing for ref in hit.refs]
        return FlagHit(refs, cite, first.onset, [m for hit in backing for m in hit.measurements])

    def _observation_hit(self, criterion: FlagCriterion, observation: str) -> FlagHit | None:
        measured = [m for m in self.measurements(observation) if m.value is not None]
        if not measured:
            return None
        latest = measured[-1]
        if criterion.within_days and (self.as_of - latest.date).days > criterion.within_days:
            return None
        if not _out_of_bounds(latest, criterion):
            return None
        used = [latest]
        if criterion.persisting_days:
            # Chronic, not acute: every result back to the first of the run is out of bounds (none normal between).
            first = latest
            for earlier in reversed(measured[:-1]):
                if not _out_of_bounds(earlier, criterion):
                    break
                first = earlier
            if (latest.date - first.date).days < criterion.persisting_days:
                return None
            used = [first, latest]
        spec = self.program.observations[observation]
        template = criterion.cite or "{display} {value} on {date}"
        cite = template.format(
            display=spec.display,
            value=format_number(latest.value, spec.decimals) if latest.value is not None else latest.shown,
            date=latest.date.isoformat(),
            since=used[0].date.isoformat(),
        )
        return FlagHit([m.ref for m in used], cite, used[0].date, used)

    def holds(self, when: When | None, line: Line | None) -> bool:
        """Whether a recommendation's `when` applies to this patient and line (cheap tests first, each only when
        the `when` names it: this runs for every recommendation of every finding)."""
        if when is None:
            return True
        drugs = line.drugs if line else set()
        if when.line_drugs_any and not drugs & set(when.line_drugs_any):
            return False
        if when.line_drugs_none and drugs & set(when.line_drugs_none):
            return False
        if when.line_classes_any or when.line_classes_none:
            classes = self.line_classes(line) if line else set()
            if when.line_classes_any and not classes & set(when.line_classes_any):
                return False
            if classes & set(when.line_classes_none):
                return False
        if when.flags_any or when.flags_all or when.flags_none:
            flags = self.flag_hits()
            if when.flags_any and not any(f in flags for f in when.flags_any):
                return False
            if not all(f in flags for f in when.flags_all) or any(f in flags for f in when.flags_none):
                return False
        if when.cards_any and not any(self._card_shown(r) for r in when.cards_any):
            return False
        if any(self._card_shown(r) for r in when.cards_none):
            return False
        if when.observation_present is not None and not self.results(when.observation_present):
            return False
        if when.observation_absent is not None and self.results(when.observation_absent):
            return False
        return not when.genes_wild_type or self._wild_type(when.genes_wild_type)

    def _card_shown(self, rule_id: str) -> bool:
        found = self.findings.get(rule_id)
        return found is not None and found.card

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

    @property
    def measured(self) -> dict[str, list[Measurement]]:
        """The observations the rules have read for this `as_of`, by name: numeric ones converted, coded ones (disease
        status) as reported."""
        coded = {
            name: [self.as_measurement(lab) for lab in results]
            for name, results in self._results.items()
            if (spec := self.program.observations.get(name)) is not None and spec.unit == "coded"
        }
        return coded | self._measurements

    @property
    def diagnoses_read(self) -> list[tuple[str, Diagnosis]]:
        """(condition set, diagnosis) for every diagnosis the rules have read for this `as_of`."""
        return list(self._diagnoses_read.values())

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
            measurement = _measure(lab, spec.unit, bool(lab.codes & log_keys), convert, spec.decimals)
            if measurement is None:
                continue
            kept = by_day.get(lab.date)
            if kept is None or (measurement.value or 0.0) > (kept.value or 0.0):
                by_day[lab.date] = measurement
        measured = [by_day[d] for d in sorted(by_day)]
        self._measurements[observation] = measured
        return measured


def _out_of_bounds(m: Measurement, criterion: FlagCriterion) -> bool:
    """Below `below` or at least `at_least`; a ">90" eGFR is not below 60, a "<3" albumin ratio not above 30."""
    if m.value is None:
        return False
    if criterion.below is not None and m.value < criterion.below and m.comparator not in (">", ">="):
        return True
    return criterion.at_least is not None and m.value >= criterion.at_least and m.comparator not in ("<", "<=")


def _measure(lab: LabResult, unit: str, log_scale: bool, convert: Any, decimals: int | None) -> Measurement | None:
    shown_unit = lab.unit_text or lab.unit or unit
    prefix = lab.comparator or ""
    if lab.value is None:
        if not (lab.not_detected or lab.comparator):
            return None
        return Measurement(lab.ref, lab.date, None, unit, lab.comparator, lab.not_detected, "not detected")
    value = convert(lab.value, lab.unit, log_scale)
    if value is None:
        return None  # a unit we cannot convert (e.g. IU/mL): not evidence either way
    if value == lab.value:  # reported in the canonical unit: written with the measure's decimals
        shown = f"{prefix}{format_number(lab.value, decimals)} {shown_unit}"
        return Measurement(lab.ref, lab.date, value, unit, lab.comparator, lab.not_detected, shown)
    shown = f"{prefix}{format_number(lab.value)} {shown_unit}"
    converted = f"{prefix}{format_number(value, decimals)} {unit}"
    return Measurement(lab.ref, lab.date, value, unit, lab.comparator, lab.not_detected, shown, converted)


def make_finding(
    rule: Rule,
    ctx: ProgramContext,
    outcome: str,
    values: Mapping[str, object],
    measurements: list[Measurement] | None = None,
    line: Line | None = None,
    extra_evidence: Iterable[str] = (),
) -> Finding:
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
    summary = shorten(spec.summary.format(**values))
    used = measurements or []
    evidence = list(dict.fromkeys(chain((m.ref for m in used), extra_evidence, line.refs if line else ())))
    shown = [ctx.findings[r] for r in rule.suppressed_by if r in ctx.findings and ctx.findings[r].card]
    if shown and status != "no-action":
        # Another rule's card already says this (e.g. the HbA1c card names the preferred class).
        status = "no-action"
        summary = shorten(f"Covered by {shown[0].rule}: {summary}")
    regimen = ctx.active_drugs(min(ctx.as_of, line.end or ctx.as_of)) if line else []
    drafts, planned_drugs = _drafts_in(ctx.facts, evidence)
    return Finding(
        patient=ctx.facts.patient,
        as_of=ctx.as_of,
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
        suggestions={key: ctx.program.suggestions[key] for key in spec.suggestions},
        line=line,
        regimen=regimen or (sorted(line.drugs) if line else []),
        classes=ctx.classes,
        drafts=drafts,
        planned_drugs=planned_drugs,
    )


def _drafts_in(facts: PatientFacts, evidence: list[str]) -> tuple[dict[str, list[str]], frozenset[str]]:
    """The draft orders among the evidence (→ their drugs), and the drugs they plan that no recorded evidence has."""
    if not facts.drafts:
        return {}, frozenset()
    drafts = {ref: sorted(facts.drafts[ref]) for ref in evidence if ref in facts.drafts}
    if not drafts:
        return {}, frozenset()
    cited = set(evidence) - drafts.keys()
    on_record = frozenset(drug for e in facts.exposures if e.ref in cited for drug in e.drugs)
    return drafts, frozenset(drug for drugs in drafts.values() for drug in drugs) - on_record


def number(value: float | None) -> str:
    """Values as clinicians read them: 450, 316, 7.4."""
    if value is None:
        return "?"
    return f"{value:.0f}" if value >= 100 or value == int(value) else f"{value:.1f}"


def format_number(value: float, decimals: int | None = None) -> str:
    """A value as a clinician writes it: the measure's fixed decimals (HbA1c 8.0, eGFR 45), else at most two
    (2.54 log10 copies/mL), trailing zeros dropped; never an exponent (1500000, not 1.5e+06)."""
    text = f"{value:.{decimals}f}" if decimals is not None else f"{value:.2f}".rstrip("0").rstrip(".")
    return text[1:] if text.startswith("-") and text.strip("-0.") == "" else text


SUMMARY_LIMIT = 140  # CDS Hooks: a card summary SHALL be under 140 characters


def shorten(text: str, limit: int = SUMMARY_LIMIT) -> str:
    """Text under `limit` characters, cut at a word boundary with an ellipsis, never mid-word."""
    if len(text) < limit:
        return text
    cut = text[: limit - 2]  # room for the ellipsis
    if not text[limit - 2].isspace():
        cut = cut.rpartition(" ")[0] or cut  # a single over-long word is the only thing cut
    return cut.rstrip(" ,;:-(") + "…"
