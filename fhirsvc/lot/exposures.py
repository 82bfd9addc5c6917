"""A program's view of the exposures: the ones its diagnosis indicates, each ending when its expected supply does."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

from fhirsvc.facts import Diagnosis, MedicationExposure
from fhirsvc.lot.engine import DrugEra
from fhirsvc.terminology.programs import Coverage, Program

_ALWAYS = (date.min, date.max)
_LAST_DAY = date.max.toordinal()


class CoverageTable:
    """One program's expected durations, resolved per drug once (the program's drug classes are fixed at load)."""

    __slots__ = ("_fill", "_grace", "_order", "_statement", "coverage", "intervals", "renewal_days")

    def __init__(self, coverage: Coverage, classes: dict[str, str]) -> None:
        self.coverage = coverage
        self.intervals = coverage.interval_days(classes)
        # Read on the hot path (every single-day or open record of every program): plain attributes.
        self._fill, self._order = coverage.fill_days, coverage.order_days
        self._statement, self._grace = coverage.statement_days, coverage.grace_days
        self.renewal_days = coverage.renewal_days

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
        days: int | None
        if end is None:
            statement = exposure.ref.startswith("MedicationStatement/")
            days = self._statement if statement else self._order_days(exposure)
            if days is None:
                return None  # current until the record is ended
            start = exposure.last_evidence
        elif interval is not None:
            days, start = interval[0], end
        elif exposure.supply_days is None and exposure.ref.startswith("MedicationRequest/"):
            # A completed order that states no supply: dispensed, so at least one fill.
            days, start = (self._fill if exposure.fills is None else self._fill * exposure.fills), end
        else:
            return end
        # Day numbers rather than timedelta sums: cheaper, and a date near 9999-12-31 ("no end" in some EHRs)
        # cannot overflow.
        last = start.toordinal() + days - 1
        if last > _LAST_DAY:
            return end
        # The next fill or dose is due the day after `last`; until `grace` days past that it is on time.
        late = as_of.toordinal() - last - 1
        if late < 0:
            return date.fromordinal(last)
        grace = interval[1] if interval else self._grace
        return None if late <= grace else date.fromordinal(last)

    def _order_days(self, order: MedicationExposure) -> int | None:
        """Its stated supply; else one default fill per fill it states; else the default for an order."""
        if order.supply_days is not None:
            return order.supply_days
        if order.fills is not None:
            return self._fill * order.fills
        return self._order

    def _interval(self, drugs: frozenset[str]) -> tuple[int, int] | None:
        if len(drugs) == 1:
            for drug in drugs:
                return self.intervals.get(drug)
        found = [self.intervals[d] for d in drugs if d in self.intervals]
        return max(found) if found else None


def program_diagnoses(program: Program, active: list[Diagnosis], ended: list[Diagnosis]) -> list[Diagnosis]:
    codes = program.scope.diagnosis.keys
    found = [d for d in active if not d.codes.isdisjoint(codes)]
    return found + [d for d in ended if not d.codes.isdisjoint(codes)] if ended else found


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
    keep = kept.append
    ends: dict[str, date | None] = {}
    named: set[str] = set()
    covered_end = coverage.covered_end if coverage is not None else None
    administrations = program.lines.administrations
    # A dict view tests against the exposure's one or two drugs; frozenset.isdisjoint(dict) walks the whole dict.
    names = classes.keys()
    for exposure in exposures:
        if names.isdisjoint(exposure.drugs):
            continue
        if not administrations and exposure.ref.startswith("MedicationAdministration/"):
            continue
        if exposure.reasons:
            if exposure.reasons.isdisjoint(codes):
                continue
            named.add(exposure.ref)
        recorded = exposure.end
        if covered_end is not None and (recorded is None or recorded == exposure.start):
            end = covered_end(exposure, as_of)  # only open or single-day records can change
            if end != recorded:
                ends[exposure.ref] = end
        keep(exposure)
    if coverage is not None and coverage.renewal_days is not None:
        _bridge_renewals(kept, ends, coverage.renewal_days)
    return kept, ends, frozenset(named)


_ENDED = frozenset({"stopped", "completed"})


def _bridge_renewals(kept: list[MedicationExposure], ends: dict[str, date | None], renewal_days: int) -> None:
    """A renewed order is often marked stopped or completed without an end date (Synthea does so for every chronic
    renewal): such a record, with no stop reason and no stated supply, covers the time until the next record of the
    same drug, or else of any drug of the program (a switch), when that comes within `renewal_days`. Read as one
    day, the months between renewals would be gaps and the regimen would seem to have stopped before every switch.
    """
    if not any(e.status in _ENDED and e.end == e.start for e in kept):
        return  # nothing marked ended without an end date: the usual case, decided in one pass
    next_of_drug: dict[str, date] = {}
    next_any: date | None = None
    # `kept` is in start order: walk it backwards, one start date at a time, so "next" is always strictly later.
    index = len(kept)
    while index > 0:
        day = kept[index - 1].start
        group_start = index - 1
        while group_start > 0 and kept[group_start - 1].start == day:
            group_start -= 1
        for exposure in kept[group_start:index]:
            if (
                exposure.status in _ENDED
                and exposure.end == day
                and not exposure.stop_reasons
                and exposure.supply_days is None
                and not exposure.planned
            ):
                same = [next_of_drug[d] for d in exposure.drugs if d in next_of_drug]
                following = min(same) if same and (min(same) - day).days <= renewal_days else next_any
                if following is not None and (following - day).days <= renewal_days:
                    bridged = following - timedelta(days=1)
                    covered = ends.get(exposure.ref, exposure.end)
                    if covered is not None and bridged > covered:
                        ends[exposure.ref] = bridged
        for exposure in kept[group_start:index]:
            for drug in exposure.drugs:
                next_of_drug[drug] = day
        next_any = day
        index = group_start


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
    if not eras:
        return eras
    windows = _windows(diagnoses, program.indication.margin_days)
    if _ALWAYS in windows and not named:
        return eras
    if windows and not named and all(hi == date.max for _, hi in windows):
        # The common chronic case (no abatement): an era counts when it lasts into the earliest window.
        earliest = min(lo for lo, _ in windows)
        return [era for era in eras if (era.end or as_of) >= earliest]
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
