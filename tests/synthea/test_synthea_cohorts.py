"""Small seeded Synthea cohorts, one per program, evaluated as of the reference date against the invariants."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from fhirsvc.terminology.knowledge import Knowledge
from tests.synthea import invariants
from tests.synthea.cohort import REFERENCE_DATE, SyntheaUnavailable, generate
from tests.synthea.invariants import PatientOutcome

pytestmark = pytest.mark.synthea

AS_OF = date.fromisoformat(REFERENCE_DATE)
SEED = 1
# People kept per program (keep modules select them) and how many of them must reach the program at least, so
# that no invariant passes on an empty cohort. Sizes keep first-time generation near 3 minutes on 2 cores.
POPULATION = {"hiv": 8, "t2d": 8, "nsclc": 6, "crc": 6, "ms": 4}
MIN_REACHED = {"hiv": 6, "t2d": 6, "nsclc": 4, "crc": 3, "ms": 3}
PROGRAMS = sorted(POPULATION)


def _folder(name: str, *, bulk: bool = False) -> Path:
    try:
        return generate(name, SEED, POPULATION[name], bulk=bulk)
    except SyntheaUnavailable as exc:
        pytest.skip(f"Synthea cohorts need Java 17+: {exc}")


_OUTCOMES: dict[str, list[PatientOutcome]] = {}


def outcomes(name: str, knowledge: Knowledge) -> list[PatientOutcome]:
    """Every patient of the program's test cohort evaluated once per session."""
    if name not in _OUTCOMES:
        _OUTCOMES[name] = [
            invariants.evaluate(record, knowledge, AS_OF) for record, _ in invariants.records(_folder(name))
        ]
    return _OUTCOMES[name]


def _report(violations: list[invariants.Violation]) -> str:
    return "\n".join(f"{v.invariant} {v.patient} [{v.program}] {v.detail}" for v in violations[:20])


@pytest.mark.parametrize("program", PROGRAMS)
def test_every_patient_is_evaluated_without_a_crash(program: str, knowledge: Knowledge) -> None:
    found = outcomes(program, knowledge)
    assert found, "the cohort is empty"
    crashes = [v for o in found for v in invariants.check_crash(o)]
    assert not crashes, _report(crashes)


@pytest.mark.parametrize("program", PROGRAMS)
def test_enough_patients_reach_the_program(program: str, knowledge: Knowledge) -> None:
    reached = [o for o in outcomes(program, knowledge) if o.program(program) is not None]
    assert len(reached) >= MIN_REACHED[program], f"{len(reached)} patients reached {program}"


def everyone(knowledge: Knowledge) -> list[PatientOutcome]:
    return [o for program in PROGRAMS for o in outcomes(program, knowledge)]


# Invariants over all cohorts together: each first shows it has something to check, then that nothing breaks it.
# Marked: invariants today's code breaks on these cohorts (strict, so the mark must go when the code is fixed).


def test_no_card_for_a_patient_dead_at_the_as_of_date(knowledge: Knowledge) -> None:
    dead = [o for o in everyone(knowledge) if invariants.is_dead(o.record, AS_OF) and o.result and o.result.programs]
    assert dead, "no dead patient in any program: the invariant would hold vacuously"
    violations = [v for o in dead for v in invariants.check_dead(o)]
    assert not violations, _report(violations)


def test_no_line_open_long_past_its_last_evidence(knowledge: Knowledge) -> None:
    found = everyone(knowledge)
    ongoing = [o for o in found if o.result and any(p.current_line for p in o.result.programs)]
    assert ongoing, "no ongoing line in any cohort"
    violations = [v for o in found for v in invariants.check_stale_lines(o)]
    assert not violations, _report(violations)


def test_card_evidence_resolves_and_lies_in_its_window(knowledge: Knowledge) -> None:
    found = everyone(knowledge)
    assert any(o.findings for o in found), "no card in any cohort"
    violations = [v for o in found for v in invariants.check_evidence(o)]
    assert not violations, _report(violations)


def test_hiv_switches_after_failure_follow_our_failure_finding(knowledge: Knowledge) -> None:
    checked = 0
    violations: list[invariants.Violation] = []
    for outcome in outcomes("hiv", knowledge):
        switches, found = invariants.check_hiv_switches(outcome, knowledge)
        checked += len(switches)
        violations += found
    assert not violations, _report(violations)
    assert checked >= 1, "no ART switch after a failing viral load in the cohort: the check ran on nothing"


def test_bulk_ndjson_gives_the_same_findings_as_bundles(knowledge: Knowledge) -> None:
    """The same seeded people exported as Bulk Data NDJSON are read and judged exactly as their bundles."""

    def findings(folder: Path) -> set[tuple[str, str, str, str]]:
        result = set()
        for record, _ in invariants.records(folder):
            outcome = invariants.evaluate(record, knowledge, AS_OF)
            assert outcome.result is not None, outcome.error
            result |= {(outcome.patient, a.rule, a.outcome, a.summary) for a in outcome.result.findings}
        return result

    from_bundles = findings(_folder("hiv"))
    from_ndjson = findings(_folder("hiv", bulk=True))
    assert from_bundles
    assert from_ndjson == from_bundles
