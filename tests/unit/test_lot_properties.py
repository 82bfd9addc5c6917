"""Properties of the line-of-therapy engine over any medication timeline (hypothesis).

For every program's line settings (mappings/programs/*.yaml) and any exposures (drugs of the program and strangers,
overlapping, repeated, open-ended or single-day, orders or statements, with stop reasons, planned or not), read as
`evaluate_program` reads them (expected durations, then indication by diagnoses with or without onset and
abatement): no exception; lines numbered 1..n, in order
of start, not overlapping (a line ends on or before the next one starts, and never before it starts itself); only
the last line may be ongoing; and the same exposures in any order give the same lines.

`HYPOTHESIS_PROFILE=deep` explores far more timelines than the default run (which is bounded for CI).
"""

from __future__ import annotations

import itertools
import os
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhirsvc.facts import Diagnosis, MedicationExposure
from fhirsvc.fhir.concepts import Coding
from fhirsvc.lot.engine import STOP_REASON_LABELS, DrugEra, Line, build_lines, drug_eras, regimen_keys
from fhirsvc.lot.exposures import CoverageTable, indicated_eras, program_exposures
from fhirsvc.rules.registry import RULE_KINDS
from fhirsvc.terminology.knowledge import Knowledge, load_knowledge
from fhirsvc.terminology.programs import Program

settings.register_profile(
    "ci", max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("deep", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

KNOWLEDGE: Knowledge = load_knowledge(rule_kinds=RULE_KINDS)
PROGRAMS: dict[str, Program] = {p.id: p for p in sorted(KNOWLEDGE.programs, key=lambda p: p.id)}
EPOCH = date(2020, 1, 1)
AS_OF = date(2026, 6, 1)
REASONS = [Coding("http://snomed.info/sct", code) for code in sorted(STOP_REASON_LABELS)] + [
    Coding("http://snomed.info/sct", "000000"),  # a reason with no label
]


def _interesting_drugs(program: Program, classes: dict[str, str]) -> list[str]:
    """Drugs that reach every branch: substitutions, late additions, gap-exempt and ignored classes, others."""
    lines = program.lines
    special = {d for group in lines.substitutions for d in group}
    special |= {d for rule in lines.late_additions for d in rule.drugs}
    wanted = set(lines.gap_exempt_classes) | set(lines.ignore_classes)
    wanted |= {c for rule in lines.late_additions for c in rule.classes}
    by_class: dict[str, str] = {}
    for drug, cls in sorted(classes.items()):
        by_class.setdefault(cls, drug)  # one drug of every class
        if cls in wanted:
            special.add(drug)
    return sorted((special & set(classes)) | set(by_class.values()))


@st.composite
def timelines(draw: st.DrawFn) -> tuple[str, list[MedicationExposure], date, list[Diagnosis]]:
    program = PROGRAMS[draw(st.sampled_from(sorted(PROGRAMS)))]
    classes = KNOWLEDGE.program_drugs(program)
    pool = _interesting_drugs(program, classes)
    drugs = [*draw(st.lists(st.sampled_from(pool), min_size=1, max_size=6, unique=True)), "not-a-program-drug"]
    exposures = []
    count = draw(st.integers(min_value=0, max_value=12))
    for index in range(count):
        start = EPOCH + timedelta(days=draw(st.integers(min_value=0, max_value=2600)))
        length = draw(st.none() | st.integers(min_value=0, max_value=700))
        kind = draw(st.sampled_from(["MedicationStatement", "MedicationRequest", "MedicationAdministration"]))
        exposures.append(
            MedicationExposure(
                ref=f"{kind}/{index}",
                drugs=frozenset(draw(st.lists(st.sampled_from(drugs), min_size=1, max_size=3))),
                start=start,
                end=None if length is None else start + timedelta(days=length),
                status="active" if length is None else "completed",
                text="",
                stop_reasons=tuple(draw(st.lists(st.sampled_from(REASONS), max_size=2))),
                planned=draw(st.booleans()),
            )
        )
    as_of = draw(st.sampled_from([AS_OF, EPOCH + timedelta(days=1300), EPOCH]))
    day = st.integers(min_value=-400, max_value=2600).map(lambda n: EPOCH + timedelta(days=n))
    diagnoses = [
        Diagnosis(f"Condition/{n}", frozenset(), draw(st.none() | day), "active", draw(st.none() | day))
        for n in range(draw(st.integers(min_value=0, max_value=2)))
    ]
    return program.id, exposures, as_of, diagnoses


def run(
    program_id: str, exposures: list[MedicationExposure], as_of: date, diagnoses: list[Diagnosis] | None = None
) -> tuple[list[DrugEra], list[Line]]:
    """As fhirsvc.pipeline does it: exposures after `as_of` left out, expected durations, indication."""
    program = PROGRAMS[program_id]
    classes = KNOWLEDGE.program_drugs(program)
    coverage = CoverageTable(program.lines.coverage, classes) if program.lines.coverage else None
    started = [e for e in exposures if e.start <= as_of]  # any order: drug_eras sorts
    counted, ends, named = program_exposures(started, program, classes, as_of, coverage)
    eras = drug_eras(counted, set(classes), program.lines.era_gap_days, ends=ends)
    if diagnoses is not None:
        eras = indicated_eras(eras, program, classes, diagnoses, named, as_of)
    return eras, build_lines(eras, regimen_keys(program.lines, classes), program.lines, as_of, classes)


def canonical(lines: list[Line]) -> list[tuple[Any, ...]]:
    return [
        (line.number, line.start, line.end, line.end_reason, sorted(line.drugs), sorted(line.signature),
         line.refs, line.planned)
        for line in lines
    ]  # fmt: skip


@given(timelines())
def test_any_timeline_gives_numbered_ordered_non_overlapping_lines(
    timeline: tuple[str, list[MedicationExposure], date, list[Diagnosis]],
) -> None:
    program, exposures, as_of, diagnoses = timeline
    _, lines = run(program, exposures, as_of, diagnoses)
    assert [line.number for line in lines] == list(range(1, len(lines) + 1))
    for line in lines:
        assert line.start <= as_of
        assert line.end is None or line.start <= line.end, f"line {line.number} ends before it starts"
    for before, after in itertools.pairwise(lines):
        assert before.start < after.start, "lines out of order"
        assert before.end is not None, f"line {before.number} never ends, yet line {after.number} follows"
        assert before.end <= after.start, f"line {before.number} overlaps line {after.number}"


@given(timelines(), st.data())
def test_the_same_exposures_in_any_order_give_the_same_lines(
    timeline: tuple[str, list[MedicationExposure], date, list[Diagnosis]], data: st.DataObject
) -> None:
    program, exposures, as_of, diagnoses = timeline
    shuffled = data.draw(st.permutations(exposures), label="exposures in another order")
    eras, lines = run(program, exposures, as_of, diagnoses)
    again_eras, again = run(program, list(exposures), as_of, diagnoses)
    assert canonical(again) == canonical(lines) and again_eras == eras  # determinism
    shuffled_eras, shuffled_lines = run(program, shuffled, as_of, diagnoses)
    assert shuffled_eras == eras
    assert canonical(shuffled_lines) == canonical(lines)


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_no_exposures_no_lines(program: str) -> None:
    assert run(program, [], AS_OF) == ([], [])
