"""A program's view of the exposures: the ones its diagnosis indicates, each ending when its expected supply does."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import date, timedelta

from fhirsvc.facts import Diagnosis, MedicationExposure, exposure_order
from fhirsvc.terminology.programs import Coverage, Program

_DAY = timedelta(days=1)
_ALWAYS = (date.min, date.max)


class CoverageTable:
    """One program's expected durations, resolved per drug once (the program's drug classes are fixed at load)."""

    __slots__ = ("coverage", "intervals")

    def __init__(self, coverage: Coverage, classes: dict[str, str]) -> None:
        self.coverage = coverage
        self.intervals = coverage.interval_days(classes)

    def covered_end(self, exposure: MedicationExposure, as_of: date) -> date | None:
        """The exposure's end for line building: None while it (or its grace period) still covers `as_of`.

        An open order covers its stated supply, else the program's `order_days` per fill; an open statement
        covers `statement_days` after its last assertion (None: until ended); a single-day record of an interval
        drug (an infusion, a chemotherapy day, a course) covers the interval to the next dose, and a single-day
        order of another drug (completed, no supply stated) one default fill per fill. Past its cover plus the
        grace period the record ends on its last covered day. Stopped records and planned therapy keep their dates.
        """
        if exposure.planned or exposure.status == "stopped":
            return exposure.end
        interval = self._interval(exposure.drugs)
        coverage = self.coverage
        grace = interval[1] if interval else coverage.grace_days
        if exposure.end is None:
            if exposure.ref.startswith("MedicationStatement/"):
                if coverage.statement_days is None:
                    return None
                days = coverage.statement_days
            elif exposure.supply_days is not None:
                days = exposure.supply_days
            else:
                days = coverage.order_days * exposure.fills
            start = exposure.last_evidence
        elif exposure.end == exposure.start:
            if interval is not None:
                days = interval[0]
            elif exposure.ref.startswith("MedicationRequest/") and exposure.supply_days is None:
                days = coverage.order_days * exposure.fills  # a completed order that states no supply
            else:
                return exposure.end
            start = exposure.start
        else:
            return exposure.end
        # Compared as differences: a start near date.max plus a duration overflows.
        if (as_of - start).days < days:
            return start + timedelta(days=days - 1)
        last = start + timedelta(days=days - 1)
        return None if (as_of - last).days <= grace else last

    def _interval(self, drugs: frozenset[str]) -> tuple[int, int] | None:
        found = [self.intervals[d] for d in drugs if d in self.intervals]
        return max(found) if found else None


def program_diagnoses(program: Program, active: Iterable[Diagnosis], ended: Iterable[Diagnosis]) -> list[Diagnosis]:
    codes = program.scope.diagnosis.keys
    return [d for d in (*active, *ended) if d.codes & codes]


def _windows(diagnoses: Sequence[Diagnosis], margin_days: int) -> list[tuple[date, date]]:
    """Periods during which treatment counts: onset - margin to abatement + margin (open ends: always)."""
    margin = timedelta(days=margin_days)
    windows = []
    for d in diagnoses:
        low = date.min if d.onset is None or d.onset - date.min < margin else d.onset - margin
        high = date.max if d.abatement is None or date.max - d.abatement < margin else d.abatement + margin
        windows.append((low, high))
    return windows


def program_exposures(
    exposures: Sequence[MedicationExposure],
    program: Program,
    classes: dict[str, str],
    diagnoses: Sequence[Diagnosis],
    as_of: date,
    coverage: CoverageTable | None,
) -> list[MedicationExposure]:
    """The exposures of program drugs that count for the program, ends set by coverage, in `exposure_order`.

    A coded reason decides alone: naming the program's diagnosis it counts, naming anything else it does not.
    Otherwise a drug counts when a diagnosis of the program is active around it (onset to abatement, widened by
    the program's margin), anchor classes included (post-exposure prophylaxis years before an HIV diagnosis is no
    line); with no diagnosis on record (the anchor classes put the patient in scope), a drug of an anchor class
    counts, and the other drugs only beside one (emtricitabine/tenofovir alone is PrEP).
    """
    codes = program.scope.diagnosis.keys
    windows = _windows(diagnoses, program.indication.margin_days)
    always = _ALWAYS in windows
    anchors = frozenset(program.scope.treatment_classes)
    kept: list[MedicationExposure] = []
    waiting: list[MedicationExposure] = []  # no diagnosis on record: non-anchor drugs wait for an anchor beside them
    changed = False
    for exposure in exposures:
        if exposure.drugs.isdisjoint(classes):
            continue
        if coverage is not None:
            end = coverage.covered_end(exposure, as_of)
            if end != exposure.end:
                exposure = replace(exposure, end=end)
                changed = True
        if exposure.reasons:
            if exposure.reasons & codes:
                kept.append(exposure)
            continue
        if always:
            kept.append(exposure)
            continue
        last = exposure.end or as_of
        if any(low <= last and exposure.start <= high for low, high in windows):
            kept.append(exposure)
        elif anchors and not windows:
            if any(classes.get(d) in anchors for d in exposure.drugs):
                kept.append(exposure)
            else:
                waiting.append(exposure)
    if waiting:
        anchored = [e for e in kept if any(classes.get(d) in anchors for d in e.drugs)]
        kept += [e for e in waiting if any(_overlap(e, a, as_of) for a in anchored)]
        changed = True
    if changed:  # a new end can move an exposure among those starting the same day
        kept.sort(key=exposure_order)
    return kept


def _overlap(one: MedicationExposure, other: MedicationExposure, as_of: date) -> bool:
    return one.start <= (other.end or as_of) and other.start <= (one.end or as_of)
