"""Numbers lines of therapy from drug patterns (Merck/Meng 2019, Hess 2021 parameters; DHHS class change)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import date, timedelta

from fhirsvc.facts import MedicationExposure, exposure_order
from fhirsvc.fhir.concepts import Coding
from fhirsvc.terminology.programs import LineSettings

_DAY = timedelta(days=1)

# mCODE TreatmentTerminationReasonVS (SNOMED) → end reason label; HL7/fhir-mCODE-ig VS_Other.fsh.
STOP_REASON_LABELS = {
    "407563006": "not-tolerated",
    "266721009": "no-response",
    "160932005": "financial",
    "105480006": "patient-refused",
    "184081006": "moved-away",
    "309846006": "not-available",
    "399307001": "lost-to-follow-up",
    "419620001": "death",
    "7058009": "noncompliance",
    "443729008": "trial-completed",
    "77386006": "pregnancy",
}


@dataclass
class DrugEra:
    """Continuous use of one ingredient (refills merged while gaps stay within `era_gap_days`)."""

    drug: str
    start: date
    end: date | None  # None: ongoing
    refs: list[str] = field(default_factory=list)
    stop_reasons: list[Coding] = field(default_factory=list)
    planned: bool = False

    def active_on(self, day: date) -> bool:
        return self.start <= day and (self.end is None or day <= self.end)


@dataclass
class Line:
    """One line of therapy; `drugs` holds every ingredient used during it, `classes` its defining set."""

    number: int
    start: date
    end: date | None = None
    end_reason: str | None = None
    drugs: set[str] = field(default_factory=set)
    signature: frozenset[str] = frozenset()
    refs: list[str] = field(default_factory=list)
    planned: bool = False

    @property
    def ongoing(self) -> bool:
        return self.end is None


def drug_eras(
    exposures: Iterable[MedicationExposure],
    drugs_in_program: AbstractSet[str],
    era_gap_days: int,
    ends: Mapping[str, date | None] | None = None,
) -> list[DrugEra]:
    """Merge each ingredient's exposures into eras; exposures starting after `as_of` must be filtered out first.

    `ends`: by exposure ref, the end to use instead of the recorded one (a record's expected duration).
    """
    # A total order: exposures arrive in whatever order the server paged them, and ties on dates must not decide
    # which refs (evidence) and stop reasons an era carries. Sorted once, before they are split by drug.
    relevant = sorted((e for e in exposures if not e.drugs.isdisjoint(drugs_in_program)), key=exposure_order)
    by_drug: defaultdict[str, list[MedicationExposure]] = defaultdict(list)
    for exposure in relevant:
        for drug in exposure.drugs & drugs_in_program:
            by_drug[drug].append(exposure)
    eras: list[DrugEra] = []
    gap = timedelta(days=era_gap_days)
    for drug, items in by_drug.items():
        current: DrugEra | None = None
        for exposure in items:
            end = ends.get(exposure.ref, exposure.end) if ends else exposure.end
            # Compared as a difference: an end date of 9999-12-31 ("no end" in some EHRs) plus a gap overflows.
            if current is not None and (current.end is None or exposure.start - current.end <= gap):
                if current.end is not None:
                    current.end = None if end is None else max(current.end, end)
                current.refs.append(exposure.ref)
                current.stop_reasons = list(exposure.stop_reasons) or current.stop_reasons
                current.planned = current.planned and exposure.planned
                continue
            current = DrugEra(drug, exposure.start, end, [exposure.ref], list(exposure.stop_reasons))
            current.planned = exposure.planned
            eras.append(current)
    eras.sort(key=lambda e: (e.start, e.drug))
    return eras


def _signature(active: list[DrugEra], classify: dict[str, str], ignore: frozenset[str]) -> frozenset[str]:
    return frozenset(c for c in (classify.get(e.drug, e.drug) for e in active) if c not in ignore)


def _end_reason(line_eras: list[DrugEra], line_end: date, window: timedelta) -> str | None:
    """The stop reason recorded on the eras that closed the line (ended within `window` around its end), as a label.

    A drug dropped long before (cisplatin stopped as not tolerated while gefitinib went on) did not end the line.
    """
    for era in line_eras:
        if era.end is None or not -window <= era.end - line_end < window:
            continue
        for reason in era.stop_reasons:
            label = STOP_REASON_LABELS.get(reason.code)
            if label:
                return label
    return None


def regimen_keys(settings: LineSettings, classes: dict[str, str]) -> dict[str, str]:
    """What identifies a drug's place in a regimen: its class, or its substitution group's first drug."""
    if settings.new_line_on == "class-change":
        return dict(classes)
    keys = {drug: drug for drug in classes}
    for group in settings.substitutions:
        for drug in group:
            keys[drug] = group[0]
    return keys


def _joins_late(
    added: frozenset[str], days_in: int, settings: LineSettings, classes: dict[str, str], members: dict[str, set[str]]
) -> bool:
    """Late additions that do not advance the line (e.g. bevacizumab added within 180 days in CRC)."""
    if not settings.late_additions:
        return False
    for key in added:
        drugs = members.get(key, {key})
        if not any(
            days_in <= rule.joins_within_days and all(d in rule.drugs or classes.get(d) in rule.classes for d in drugs)
            for rule in settings.late_additions
        ):
            return False
    return True


def build_lines(
    eras: list[DrugEra],
    classify: dict[str, str],
    settings: LineSettings,
    as_of: date,
    classes: dict[str, str] | None = None,
) -> list[Line]:
    """Walk the timeline of era starts and ends and number the lines.

    `classify` maps a drug to what defines a regimen (see `regimen_keys`): its class (HIV: a new line when the
    class set changes) or a substitution group (oncology: cisplatin and carboplatin count as one drug).
    `classes` (drug → class) serves gap exemptions and late additions.
    """
    classes = classes or {}
    members: dict[str, set[str]] = defaultdict(set)
    for era in eras:
        members[classify.get(era.drug, era.drug)].add(era.drug)
    exempt = frozenset(settings.gap_exempt_classes)
    ignore = frozenset(settings.ignore_classes)
    window = timedelta(days=settings.regimen_window_days)
    points = sorted({e.start for e in eras} | {e.end + _DAY for e in eras if e.end is not None and e.end < as_of})
    lines: list[Line] = []
    current: Line | None = None
    gap_start: date | None = None  # first day with nothing active since the current line's drugs stopped
    for day in points:
        if day > as_of:
            break
        active = [e for e in eras if e.active_on(day)]
        signature = _signature(active, classify, ignore)
        if not signature:
            if current is not None and gap_start is None:
                gap_start = day
            continue
        if current is not None and gap_start is not None:
            gap_days = (day - gap_start).days + 1  # days since the last day a drug was active
            gap_exempt = any(classes.get(d) in exempt for d in current.drugs)
            limit = settings.discontinuation_gap_days
            if limit is not None and gap_days > limit and not gap_exempt:
                current.end = gap_start - _DAY
                current.end_reason = _end_reason(_eras_of(current, eras), current.end, window) or "discontinued"
                current = None
        if current is None:
            current = _open_line(lines, day, active, signature)
        elif day - current.start <= window:
            # Still assembling the regimen: every drug started in the window belongs to it (Merck/Meng 2019).
            current.signature = signature if settings.new_line_on_drop else current.signature | signature
        else:
            added = signature - current.signature
            dropped = current.signature - signature
            if added and _joins_late(added, (day - current.start).days, settings, classes, members):
                current.signature = current.signature | signature
            elif added or (dropped and settings.new_line_on_drop):
                still_on = any(e.active_on(day - _DAY) for e in _eras_of(current, eras))
                current.end = day if still_on or gap_start is None else gap_start - _DAY
                current.end_reason = _end_reason(_eras_of(current, eras), current.end, window) or "new-line"
                current = _open_line(lines, day, active, signature)
            else:
                # A drop that does not end the line (maintenance, an incomplete regimen) keeps the dropped drug
                # in the line's regimen, so taking it up again is no new line.
                current.signature = signature if settings.new_line_on_drop else current.signature | signature
        current.drugs.update(e.drug for e in active)
        gap_start = None
    if current is not None and not any(e.active_on(as_of) for e in eras):
        ended = [e for e in _eras_of(current, eras) if e.end is not None]
        last_day = max(e.end for e in ended if e.end is not None) if ended else as_of
        limit = settings.discontinuation_gap_days
        # With a gap rule (oncology cycles recorded as single-day administrations) the line is still current
        # until the gap has passed; without one, stopping every drug ends it.
        if limit is None or (as_of - last_day).days > limit:
            current.end = last_day
            current.end_reason = _end_reason(ended, last_day, window) or "discontinued"
    for line in lines:
        _assign_drugs(line, eras, as_of)
    return lines


# A drug carried over from the previous line belongs to the new one only if it overlaps it by more than this:
# in a switch, the old drug's last day often equals the new line's first day.
_CARRY_OVER = timedelta(days=7)


def _eras_of(line: Line, eras: list[DrugEra]) -> list[DrugEra]:
    return [e for e in eras if e.drug in line.drugs and (e.end is None or e.end >= line.start)]


def _assign_drugs(line: Line, eras: list[DrugEra], as_of: date) -> None:
    """Final membership: drugs started during the line, or carried over from before for more than a week."""
    line.drugs = set()
    line_end = line.end or as_of
    seen = set(line.refs)
    for era in eras:
        era_end = era.end or as_of
        if era.start >= line.start:
            belongs = era.start < line_end or (line.end is None and era.start <= as_of)
        else:
            belongs = era_end >= line.start and (
                min(era_end, line_end) - line.start > _CARRY_OVER or (line.end is None and era.end is None)
            )
        if belongs:
            line.drugs.add(era.drug)
            for ref in era.refs:
                if ref not in seen:
                    seen.add(ref)
                    line.refs.append(ref)


def _open_line(lines: list[Line], day: date, active: list[DrugEra], signature: frozenset[str]) -> Line:
    line = Line(number=len(lines) + 1, start=day, signature=signature)
    line.planned = all(e.planned for e in active if e.start == day)
    lines.append(line)
    return line
