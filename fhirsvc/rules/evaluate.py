"""Program evaluation: facts → lines of therapy → assessments, for every program a patient belongs to."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date

from fhirsvc.facts import PatientFacts, extract_facts
from fhirsvc.fhir.record import PatientRecord
from fhirsvc.lot.engine import Line, build_lines, drug_eras, regimen_keys
from fhirsvc.lot.exposures import CoverageTable, indicated_eras, program_diagnoses, program_exposures
from fhirsvc.rules import activity, confirmed_threshold, progression, targets, triggers  # noqa: F401 (registers kinds)
from fhirsvc.rules.base import RULE_KINDS, Assessment, ProgramContext
from fhirsvc.terminology.knowledge import Knowledge
from fhirsvc.terminology.programs import Program, Rule


@dataclass
class ProgramResult:
    program: Program
    lines: list[Line]
    classes: dict[str, str]
    assessments: list[Assessment] = field(default_factory=list)

    @property
    def current_line(self) -> Line | None:
        return self.lines[-1] if self.lines and self.lines[-1].ongoing else None


@dataclass
class PatientResult:
    patient: str
    as_of: date
    programs: list[ProgramResult]
    skipped: int = 0

    @property
    def assessments(self) -> list[Assessment]:
        return [a for p in self.programs for a in p.assessments]


def _in_scope(program: Program, facts: PatientFacts, classes: dict[str, str], as_of: date) -> bool:
    codes = program.scope.diagnosis.keys
    if any(d.codes & codes for d in facts.diagnoses if d.onset is None or d.onset <= as_of):
        return True
    anchors = set(program.scope.treatment_classes)
    return any(classes.get(drug) in anchors for drug in facts.drugs_started_by(as_of))


# Per program (kept alive here, so an id is never reused): its coverage resolved over its drug classes.
_COVERAGE: dict[int, tuple[Program, dict[str, str], CoverageTable | None]] = {}


def _coverage(program: Program, classes: dict[str, str]) -> CoverageTable | None:
    cached = _COVERAGE.get(id(program))
    if cached is not None and cached[0] is program and cached[1] is classes:
        return cached[2]
    coverage = program.lines.coverage
    table = CoverageTable(coverage, classes) if coverage is not None else None
    if len(_COVERAGE) >= 64:  # knowledge reloaded many times (tests): forget the programs of earlier loads
        _COVERAGE.clear()
    _COVERAGE[id(program)] = (program, classes, table)
    return table


def evaluate_program(program: Program, facts: PatientFacts, knowledge: Knowledge, as_of: date) -> ProgramResult | None:
    classes = knowledge.program_drugs(program)
    if not _in_scope(program, facts, classes, as_of):
        return None
    coverage = _coverage(program, classes)
    counted, ends, named = program_exposures(facts.started_by(as_of), program, classes, as_of, coverage)
    eras = drug_eras(counted, classes.keys(), program.lines.era_gap_days, in_order=True, ends=ends)
    diagnoses = program_diagnoses(program, facts.diagnoses, facts.ended_diagnoses)
    eras = indicated_eras(eras, program, classes, diagnoses, named, as_of)
    lines = build_lines(eras, regimen_keys(program.lines, classes), program.lines, as_of, classes)
    ctx = ProgramContext(program, facts, as_of, lines, eras, classes, knowledge.safety)
    result = ProgramResult(program, lines, classes)
    for rule in program.rules:
        assessment = RULE_KINDS[rule.kind](rule, ctx)
        ctx.assessments[rule.id] = assessment
        result.assessments.append(assessment)
        if rule.line_end_label:
            _label_line_ends(rule, ctx)
    return result


def _label_line_ends(rule: Rule, ctx: ProgramContext) -> None:
    """Explain why earlier lines ended: re-run the rule as of each line's end, with that line still current."""
    for index, line in enumerate(ctx.lines):
        if line.end is None or line.end_reason not in ("new-line", "discontinued"):
            continue
        past = replace(
            ctx,
            as_of=line.end,
            lines=[*ctx.lines[:index], replace(line, end=None)],
            assessments={},
            _flags=None,
            _results={},
            _measurements={},
        )
        finding = RULE_KINDS[rule.kind](rule, past)
        if finding.status in ("second-line-evaluation", "next-line-evaluation"):
            line.end_reason = rule.line_end_label


def evaluate_record(record: PatientRecord, knowledge: Knowledge, as_of: date) -> PatientResult:
    facts = extract_facts(record, knowledge.catalog, as_of, knowledge.observation_filter)
    programs = []
    for program in knowledge.programs:
        outcome = evaluate_program(program, facts, knowledge, as_of)
        if outcome is not None:
            programs.append(outcome)
    return PatientResult(record.reference, as_of, programs, facts.skipped)
