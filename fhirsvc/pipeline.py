"""Program evaluation: facts → lines of therapy → assessments, for every program a patient belongs to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date

from fhirsvc.deceased import Death, death_by
from fhirsvc.facts import Diagnosis, PatientFacts, extract_facts
from fhirsvc.findings import Finding, Measurement
from fhirsvc.lot.engine import DrugEra, Line, build_lines, drug_eras, regimen_keys
from fhirsvc.lot.exposures import CoverageTable, indicated_eras, program_diagnoses, program_exposures
from fhirsvc.record.model import MEDICATION_TYPES, PatientRecord
from fhirsvc.rules.base import ProgramContext
from fhirsvc.rules.registry import RULE_KINDS
from fhirsvc.terminology.knowledge import Knowledge
from fhirsvc.terminology.programs import Program, Rule

_URGENCY = {"critical": 0, "warning": 1, "info": 2}


_URGENCY = {"critical": 0, "warning": 1, "info": 2}


@dataclass
class ProgramResult:
    program: Program
    lines: list[Line]
    classes: dict[str, str]
    findings: list[Finding] = field(default_factory=list)
    # Every result of each observation the rules read (by observation name, in date order): a rendering plots them
    # with the findings' evidence among them.
    series: dict[str, list[Measurement]] = field(default_factory=dict)
    conditions: list[tuple[str, Diagnosis]] = field(default_factory=list)  # (condition set, diagnosis) the rules read

    @property
    def current_line(self) -> Line | None:
        return self.lines[-1] if self.lines and self.lines[-1].ongoing else None


@dataclass
class PatientResult:
    patient: str
    as_of: date
    programs: list[ProgramResult]
    skipped: int = 0
    death: Death | None = None  # dead by as_of: lines end at death and no rule runs (no cards, no write-back)
    incomplete: dict[str, str] = field(default_factory=dict)  # resource type → why it was not read completely

    @property
    def findings(self) -> list[Finding]:
        return [f for p in self.programs for f in p.findings]

    @property
    def actionable(self) -> list[Finding]:
        """The findings that warrant a card and a write-back, most urgent first."""
        return sorted((f for f in self.findings if f.card), key=lambda f: _URGENCY[f.indicator])


def _in_scope(program: Program, facts: PatientFacts, classes: dict[str, str], as_of: date) -> bool:
    """Asked of every program for every patient, most of whom are in none but one: no set is built."""
    codes = program.scope.diagnosis.keys
    if any(not d.codes.isdisjoint(codes) for d in facts.diagnoses if d.onset is None or d.onset <= as_of):
        return True
    anchors = program.scope.treatment_classes
    return bool(anchors) and any(classes.get(drug) in anchors for drug in facts.drugs_started_by(as_of))


def evaluate_program(
    program: Program,
    facts: PatientFacts,
    knowledge: Knowledge,
    as_of: date,
    incomplete: Mapping[str, str] | None = None,
    death: Death | None = None,
) -> ProgramResult | None:
    """Lines and rule results of one program; `incomplete` withholds the rules that read what is missing, and a
    `death` ends the lines there and runs no rule."""
    classes = knowledge.program_drugs(program)
    if death is not None and death.date is not None:
        as_of = min(as_of, death.date)
    if not _in_scope(program, facts, classes, as_of):
        return None
    coverage = CoverageTable(program.lines.coverage, classes) if program.lines.coverage else None
    counted, ends, named = program_exposures(facts.started_by(as_of), program, classes, as_of, coverage)
    eras = drug_eras(counted, classes.keys(), program.lines.era_gap_days, ends=ends)
    diagnoses = program_diagnoses(program, facts.diagnoses, facts.ended_diagnoses)
    eras = indicated_eras(eras, program, classes, diagnoses, named, as_of)
    lines = build_lines(eras, regimen_keys(program.lines, classes), program.lines, as_of, classes)
    result = ProgramResult(program, lines, classes)
    if death is not None:
        _end_lines_at_death(lines, eras, as_of if death.date is not None else None)
        return result
    ctx = ProgramContext(program, facts, as_of, lines, eras, classes, knowledge.safety)
    drafts = any(exposure.planned for exposure in facts.exposures)
    for rule in program.rules:
        kind = RULE_KINDS[rule.kind]
        if kind.order_time and not drafts:
            continue  # patient-view, the poller and files have no draft orders: nothing for these rules to judge
        assessment = kind(rule, ctx)
        if incomplete:
            missing = sorted(rule_inputs(rule) & incomplete.keys())
            if missing:
                assessment = withheld(assessment, missing)
        ctx.findings[rule.id] = assessment  # later rules see what is shown, a withheld card included
        result.findings.append(assessment)
        if rule.line_end_label:
            _label_line_ends(rule, ctx)
    result.series, result.conditions = ctx.measured, ctx.diagnoses_read
    return result


# What every rule reads: the patient, the diagnoses that put them in the program, and the lines built from every
# medication type. Each rule kind adds what else it reads (results, allergies, goals: `RuleKind.reads`).
_LINE_INPUTS = frozenset({"Patient", "Condition", "Medication", *MEDICATION_TYPES})


def rule_inputs(rule: Rule) -> frozenset[str]:
    """The resource types a rule's finding depends on."""
    return _LINE_INPUTS | RULE_KINDS[rule.kind].reads


def withheld(assessment: Finding, missing: list[str]) -> Finding:
    """A finding not decided because data it reads was not read completely: no card of its own (the caller shows
    the one "findings may be incomplete" card), and never an answer built on the partial data."""
    summary = f"Not decided: {', '.join(missing)} could not be read completely"
    return replace(
        assessment,
        status="data-needed",
        indicator="info",
        summary=summary[:139],
        card=False,
        evidence=[],
        measurements=[],
        recommendations=[],
        suggestions={},
    )


def _end_lines_at_death(lines: list[Line], eras: list[DrugEra], death_day: date | None) -> None:
    """No line outlives the patient: an ongoing line ends on the death date, or (date unknown) on the last day the
    record shows one of its drugs."""
    for line in lines:
        if line.end is None:
            last_seen = max([line.start, *(e.end or e.start for e in eras if e.drug in line.drugs)])
            line.end, line.end_reason = death_day or last_seen, "death"


def _label_line_ends(rule: Rule, ctx: ProgramContext) -> None:
    """Explain why earlier lines ended: re-run the rule as of each line's end, with that line still current."""
    for line in ctx.lines:
        if line.end is None or line.end_reason not in ("new-line", "discontinued"):
            continue
        finding = RULE_KINDS[rule.kind](rule, ctx.at_end_of(line))
        if finding.status in ("second-line-evaluation", "next-line-evaluation"):
            line.end_reason = rule.line_end_label


def evaluate_record(record: PatientRecord, knowledge: Knowledge, as_of: date) -> PatientResult:
    facts = extract_facts(record, knowledge.catalog, as_of, knowledge.observation_filter)
    death = death_by(record, as_of)
    programs = []
    for program in knowledge.programs:
        outcome = evaluate_program(program, facts, knowledge, as_of, record.incomplete, death)
        if outcome is not None:
            programs.append(outcome)
    return PatientResult(record.reference, as_of, programs, facts.skipped, death, dict(record.incomplete))
