"""Sweep: larger seeded Synthea cohorts through the pipeline; the invariants' violations written up for developers.

python -m tests.synthea.sweep --seed 2026 --population 100 [--cohorts hiv ms=40 general=360] [--output FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from fhirsvc.rules.registry import RULE_KINDS
from fhirsvc.terminology.knowledge import Knowledge, load_knowledge
from tests.synthea import invariants
from tests.synthea.cohort import COHORTS, REFERENCE_DATE, REPO, SYNTHEA_VERSION, generate

AS_OF = date.fromisoformat(REFERENCE_DATE)
DEFAULT_COHORTS = ("hiv", "ms", "general")  # "general" (no keep module) carries t2d, nsclc and crc as they come
EXAMPLES = 5


@dataclass
class CohortReport:
    """What one cohort's evaluation found."""

    name: str
    population: int
    seconds_generating: float
    seconds_evaluating: float = 0.0
    patients: int = 0
    dead: int = 0
    skipped: int = 0
    reached: Counter[str] = field(default_factory=Counter)
    lines: Counter[str] = field(default_factory=Counter)
    ongoing: Counter[str] = field(default_factory=Counter)
    findings: Counter[tuple[str, str, str, bool]] = field(default_factory=Counter)  # program, rule, status, card
    cards: int = 0
    cards_dead: int = 0
    switches: Counter[str] = field(default_factory=Counter)  # failure rule outcome on the eve of each switch
    violations: list[invariants.Violation] = field(default_factory=list)
    resource_types: Counter[str] = field(default_factory=Counter)
    medication_types: Counter[tuple[str, str]] = field(default_factory=Counter)  # (program, "Type status")


def sweep_cohort(name: str, seed: int, population: int, knowledge: Knowledge) -> CohortReport:
    started = time.monotonic()
    folder = generate(name, seed, population)
    report = CohortReport(name, population, time.monotonic() - started)
    started = time.monotonic()
    for record, skipped in invariants.records(folder):
        report.patients += 1
        report.skipped += skipped
        for rtype, resources in record.resources.items():
            report.resource_types[rtype] += len(resources)
        outcome = invariants.evaluate(record, knowledge, AS_OF)
        dead = invariants.is_dead(record, AS_OF)
        report.dead += dead
        report.violations += invariants.check_all(outcome) + invariants.check_ended_early(outcome)
        if outcome.result is None:
            continue
        by_ref = invariants.index_by_reference(record)
        for program in outcome.result.programs:
            pid = program.program.id
            report.reached[pid] += 1
            report.lines[pid] += len(program.lines)
            report.ongoing[pid] += program.current_line is not None
            for line in program.lines:
                for ref in line.refs:
                    resource = by_ref.get(ref, {})
                    kind = f"{resource.get('resourceType', '?')} {resource.get('status', '-')}"
                    report.medication_types[(pid, kind)] += 1
            for assessment in program.findings:
                report.findings[(pid, assessment.rule, assessment.status, assessment.card)] += 1
        report.cards += len(outcome.findings)
        report.cards_dead += len(outcome.findings) if dead else 0
        if outcome.program("hiv") is not None:
            checked, found = invariants.check_hiv_switches(outcome, knowledge)
            report.switches.update(eve for _, eve in checked)
            report.violations += found
    report.seconds_evaluating = time.monotonic() - started
    return report


WHY = {
    "crash": "the pipeline raised on this record.",
    "card-for-dead-patient": (
        "Patient.deceasedDateTime is on or before the as-of date, yet a card is shown: deceased[x] is not read, and "
        "a dead patient's last orders stay 'active' in Synthea (as in many EHRs)."
    ),
    "stale-line": (
        f"the current line's newest medication evidence (dates of its orders, administrations, statements, plus the "
        f"supply an order's repeats cover) is more than {invariants.STALE_AFTER_DAYS} days before the as-of date: an "
        "'active' order without newer evidence keeps the line open for ever."
    ),
    "evidence-unresolved": "a card cites a reference that is not a resource of this patient.",
    "evidence-after-as-of": "a card cites a resource dated after the as-of date.",
    "evidence-outside-window": "a card's result lies outside the window its rule kind allows.",
    "line-ended-within-dosing-interval": (
        "a living patient's last line ended as 'discontinued' although its newest administration or order is within "
        f"{invariants.LONGEST_DOSING_INTERVAL_DAYS} days (the longest labelled dosing interval, ocrelizumab every 6 "
        "months): interval-dosed infusions end lines early. Reported by the sweep only."
    ),
    "art-switch-without-failure-finding": (
        "the record switched ART after a viral load at or above the failure threshold (taken at least 24 weeks into "
        "the old regimen, within a year of the switch), but evaluated the day before the switch the failure rule "
        "gave neither 'confirmed' nor 'unconfirmed'. Synthea renews ART orders months apart and marks each renewed "
        "order 'stopped' with no supply and no end; such an order counts as one day of use, so more than 90 days "
        "(the era gap) after the last renewal the line has ended and the program sees no regimen."
    ),
}


def render(reports: Sequence[CohortReport], seed: int, command: str) -> str:
    out: list[str] = [
        "# Synthea sweep",
        "",
        "Generated by `tests/synthea/sweep.py`: seeded Synthea cohorts evaluated with the product's pipeline "
        f"(`evaluate_record`, `cards_with_findings`) as of {REFERENCE_DATE}, checked against the invariants of "
        "`tests/synthea/invariants.py`. Regenerate after a change to the rules; the numbers are deterministic for a "
        "given seed.",
        "",
        f"- Command: `{command}`",
        f"- Synthea {SYNTHEA_VERSION}, seed {seed} (clinician seed {seed}), reference date {REFERENCE_DATE}, "
        "Massachusetts, whole history exported (`exporter.years_of_history=0`)",
        "- Cohorts: "
        + "; ".join(
            f"`{r.name}` population {r.population} ({_cohort_note(r.name)}): {r.patients} records, "
            f"{r.dead} dead at the as-of date"
            for r in reports
        ),
        f"- Records in all: {sum(r.patients for r in reports)}; generation "
        f"{sum(r.seconds_generating for r in reports):.0f} s (0 when cached), evaluation "
        f"{sum(r.seconds_evaluating for r in reports):.0f} s",
        "",
        "A patient's record is then `tests/.cache/synthea/<cohort>-s<seed>-p<N>-<key>/fhir/*_<patient id>.json`; "
        "evaluate it with `fhirsvc evaluate <file> --as-of " + REFERENCE_DATE + " --format text`.",
        "",
        "## Invariant violations",
        "",
    ]
    violations = [v for r in reports for v in r.violations]
    grouped = invariants.by_invariant(violations)
    # Synthea derives ids from the seed and the person's number: two cohorts with one seed share ids, not people.
    cohort_of = {id(v): r.name for r in reports for v in r.violations}
    eves: Counter[str] = Counter()
    for r in reports:
        eves.update(r.switches)
    out += ["| Invariant | Violations | Patients | By program |", "|---|---|---|---|"]
    for name in WHY:
        found = grouped.get(name, [])
        programs = Counter(v.program for v in found)
        out.append(
            f"| {name} | {len(found)} | {len({v.patient for v in found})} | "
            + (", ".join(f"{p} {n}" for p, n in sorted(programs.items())) or "-")
            + " |"
        )
    out += [
        "",
        f"ART switches after a failing viral load checked: {sum(eves.values())}; the failure rule's outcome on the "
        "day before each: " + (", ".join(f"{k} {n}" for k, n in eves.most_common()) or "-") + ".",
        "",
    ]
    for name, found in grouped.items():
        out += [f"### {name} ({len(found)})", "", f"Why it is wrong: {WHY.get(name, '')}", ""]
        seen: set[tuple[str, str]] = set()
        examples = []
        for v in found:  # one example per patient and program, the first ones in record order
            if (v.patient, v.program) not in seen:
                seen.add((v.patient, v.program))
                examples.append(v)
            if len(examples) == EXAMPLES:
                break
        out += [f"- `{v.patient}` (cohort {cohort_of[id(v)]}) [{v.program}]: {v.detail}" for v in examples]
        out.append("")
    out += ["## Per program", ""]
    program_ids = sorted({p for r in reports for p in r.reached})
    out += [
        "| Program | Patients reached | Lines | Ongoing lines | Medication records of the lines (type, status) |",
        "|---|---|---|---|---|",
    ]
    for program in program_ids:
        types = Counter[str]()
        for r in reports:
            for (p, rtype), n in r.medication_types.items():
                if p == program:
                    types[rtype] += n
        out.append(
            f"| {program} | {sum(r.reached[program] for r in reports)} | {sum(r.lines[program] for r in reports)} | "
            f"{sum(r.ongoing[program] for r in reports)} | "
            + ", ".join(f"{t} {n}" for t, n in types.most_common())
            + " |"
        )
    out += ["", "### Findings by rule and status", ""]
    out += ["| Program | Rule | Status | Card | Count |", "|---|---|---|---|---|"]
    findings: Counter[tuple[str, str, str, bool]] = Counter()
    for r in reports:
        findings.update(r.findings)
    for (program, rule, status, card), n in sorted(findings.items()):
        out.append(f"| {program} | {rule} | {status} | {'yes' if card else 'no'} | {n} |")
    cards = sum(r.cards for r in reports)
    dead_cards = sum(r.cards_dead for r in reports)
    out += [
        "",
        f"Cards in all: {cards}, of which {dead_cards} for patients dead at the as-of date.",
        "",
        "## What Synthea writes (resources read, all cohorts)",
        "",
        ", ".join(f"{t} {n}" for t, n in sorted(sum((r.resource_types for r in reports), Counter()).items())),
        "",
        f"Entries skipped while reading: {sum(r.skipped for r in reports)}.",
        "",
    ]
    return "\n".join(out)


def _cohort_note(name: str) -> str:
    spec = COHORTS[name]
    parts = [f"keep `{spec.keep}`" if spec.keep else "no keep module", f"ages {spec.age}" if spec.age else "all ages"]
    if spec.patches:
        parts.append("incidence patched: " + ", ".join(spec.patches))
    if spec.overrides:
        parts.append("module overrides")
    return ", ".join(parts)


def _cohorts(values: Sequence[str], population: int) -> list[tuple[str, int]]:
    chosen = []
    for value in values:
        name, _, size = value.partition("=")
        if name not in COHORTS:
            raise SystemExit(f"unknown cohort {name!r}; choose from {', '.join(COHORTS)}")
        chosen.append((name, int(size) if size else population))
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.synthea.sweep", description=__doc__)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--population", type=int, default=100, help="people per cohort without its own =N")
    parser.add_argument("--cohorts", "--programs", nargs="+", default=list(DEFAULT_COHORTS), help="NAME or NAME=N")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "synthea-sweep.md")
    args = parser.parse_args(argv)
    knowledge = load_knowledge(rule_kinds=RULE_KINDS)
    reports = []
    for name, size in _cohorts(args.cohorts, args.population):
        report = sweep_cohort(name, args.seed, size, knowledge)
        reports.append(report)
        grouped = invariants.by_invariant(report.violations)
        print(
            f"{name}: {report.patients} records ({report.dead} dead), programs {dict(report.reached)}, "
            f"{report.cards} cards ({report.cards_dead} for the dead), "
            f"switches checked {sum(report.switches.values())}; "
            + (", ".join(f"{k} {len(v)}" for k, v in grouped.items()) or "no violations")
        )
    command = "python -m tests.synthea.sweep " + " ".join(
        [f"--seed {args.seed}", "--cohorts", *(f"{n}={s}" for n, s in _cohorts(args.cohorts, args.population))]
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(reports, args.seed, command))
    print(f"written {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
