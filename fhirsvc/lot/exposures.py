"""A program's view of the exposures: the ones its diagnosis indicates, each ending when its expected supply does."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, timedelta

from fhirsvc.facts import Diagnosis, MedicationExposure
from fhirsvc.lot.engine import DrugEra
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

        An open order covers its stated supply, else `fill_days` per fill it states, else `order_days` (None:
        until ended); an open statement covers `statement_days` after its last assertion (None: until ended); a
        single-day record of an interval drug (an infusion, a chemotherapy day, a course) covers the interval to
        the next dose, and a completed single-day order of another drug at least one fill. Past its cover plus the
        grace period the record ends on its last covered day. Stopped records and planned therapy keep their dates.
        """
        end = exposure.end
        if (end is not None and end != exposure.start) or exposure.planned or exposure.status == "stopped":
            return end  # a recorded period, planned therapy, or a stop: their own dates
        interval = self._interval(exposure.drugs) if self.intervals else None
        coverage = self.coverage
        if end is None:
            if exposure.ref.startswith("MedicationStatement/"):
                if coverage.statement_days is None:
                    return None
                days = coverage.statement_days
            else:
                order_days = self._order_days(exposure)
                if order_days is None:
                    return None
                days = order_days
            start = exposure.last_evidence
        elif interval is not None:
            days, start = interval[0], end
        elif exposure.ref.startswith("MedicationRequest/") and exposure.supply_days is None:
            # A completed order that states no supply: dispensed, so at least one fill.
            days, start = self._order_days(exposure) or self.coverage.fill_days, end
        else:
            return end
        if (date.max - start).days < days:
            return end  # a date near 9999-12-31 ("no end" in some EHRs): nothing to add
        # The next fill or dose is due `days` after the record; until `grace` days past that it is on time.
        last = start + timedelta(days=days - 1)
        late = (as_of - last).days - 1
        if late < 0:
            return last
        grace = interval[1] if interval else coverage.grace_days
        return None if late <= grace else last

    def _order_days(self, order: MedicationExposure) -> int | None:
        """Its stated supply; else one default fill per fill it states; else the default for an order."""
        if order.supply_days is not None:
            return order.supply_days
        if order.fills is not None:
            return self.coverage.fill_days * order.fills
        return self.coverage.order_days

    def _interval(self, drugs: frozenset[str]) -> tuple[int, int] | None:
        if len(drugs) == 1:
            for drug in drugs:
                return self.intervals.get(drug)
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
    as_of: date,
    coverage: CoverageTable | None,
) -> tuple[list[MedicationExposure], dict[str, date | None], frozenset[str]]:
    """The exposures of program drugs, in the order given, without those whose coded reason names another
    condition; the ends coverage gives them, by ref, where they differ from the recorded ones (for `drug_eras`:
    no copy of an exposure is made); and the refs of the exposures whose reason names the program's diagnosis.
    """
    codes = program.scope.diagnosis.keys
    kept: list[MedicationExposure] = []
    ends: dict[str, date | None] = {}
    named: set[str] = set()
    for exposure in exposures:
        if exposure.drugs.isdisjoint(classes):
            continue
        if exposure.reasons:
            if exposure.reasons.isdisjoint(codes):
                continue
            named.add(exposure.ref)
        recorded = exposure.end
        if coverage is not None and (recorded is None or recorded == exposure.start):
            end = coverage.covered_end(exposure, as_of)  # only open or single-day records can change
            if end != recorded:
                ends[exposure.ref] = end
        kept.append(exposure)
    return kept, ends, frozenset(named)


def indicated_eras(
    eras: list[DrugEra],
    program: Program,
    classes: dict[str, str],
    diagnoses: Sequence[Diagnosis],
    named: frozenset[str],
    as_of: date,
) -> list[DrugEra]:
    """The eras that count for the program: continuous use of a drug is judged as a whole (a course whose last
    cycles fall in the margin counts from its first).

    An era counts when a record of it names the program's diagnosis as its reason, or when a diagnosis of the
    program is active around it (onset to abatement, widened by the program's margin), anchor classes included
    (post-exposure prophylaxis years before an HIV diagnosis is no line). With no diagnosis on record (the anchor
    classes put the patient in scope) an era of an anchor class counts, and other drugs only beside one
    (emtricitabine/tenofovir alone is PrEP).
    """
    windows = _windows(diagnoses, program.indication.margin_days)
    if _ALWAYS in windows and not named:
        return eras
    anchors = frozenset(program.scope.treatment_classes)
    kept: list[DrugEra] = []
    waiting: list[DrugEra] = []
    for era in eras:
        last = era.end or as_of
        if (named and not named.isdisjoint(era.refs)) or any(lo <= last and era.start <= hi for lo, hi in windows):
            kept.append(era)
        elif anchors and not windows:
            (kept if classes.get(era.drug) in anchors else waiting).append(era)
    if waiting:
        anchored = [e for e in kept if classes.get(e.drug) in anchors]
        chosen = {id(e) for e in kept} | {id(e) for e in waiting if any(_overlap(e, a, as_of) for a in anchored)}
        kept = [e for e in eras if id(e) in chosen]
    return kept


def _overlap(one: DrugEra, other: DrugEra, as_of: date) -> bool:
    return one.start <= (other.end or as_of) and other.start <= (one.end or as_of)
