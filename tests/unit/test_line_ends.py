"""Lines that end by themselves (expected duration, dosing intervals) and indication, on synthetic exposures."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from fhirsvc.facts import Diagnosis, MedicationExposure
from fhirsvc.fhir.concepts import Coding
from fhirsvc.lot.engine import DrugEra, build_lines, drug_eras, regimen_keys
from fhirsvc.lot.exposures import CoverageTable, indicated_eras, program_exposures
from fhirsvc.pipeline import evaluate_record
from fhirsvc.record.model import PatientRecord
from fhirsvc.terminology.knowledge import Knowledge
from fhirsvc.terminology.programs import Coverage, DosingInterval, LineSettings, Program

AS_OF = date(2026, 6, 1)
SCT = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CLASSES = {"metformin": "biguanide", "natalizumab": "anti-integrin", "ocrelizumab": "anti-CD20", "x": "other"}
COVERAGE = Coverage(
    source="test",
    fill_days=90,
    order_days=90,
    statement_days=200,
    grace_days=30,
    intervals=[
        DosingInterval(classes=["anti-integrin"], days=28, grace_days=14, source="test"),
        DosingInterval(drugs=["ocrelizumab"], days=183, source="test"),
        DosingInterval(classes=["anti-CD20"], days=7, source="a drug entry wins over its class"),
    ],
)
TABLE = CoverageTable(COVERAGE, CLASSES)
NOT_TOLERATED = Coding("http://snomed.info/sct", "407563006", "Treatment not tolerated")


def exposure(
    kind: str,
    drug: str,
    start: date,
    end: date | None = None,
    *,
    status: str = "active",
    supply: int | None = None,
    fills: int | None = None,
    asserted: date | None = None,
) -> MedicationExposure:
    found = MedicationExposure(f"{kind}/{drug}-{start}", frozenset({drug}), start, end, status, drug)
    found.supply_days, found.fills, found.asserted = supply, fills, asserted
    return found


def days_before(n: int) -> date:
    return AS_OF - timedelta(days=n)


def test_interval_of_a_drug_wins_over_its_class() -> None:
    assert TABLE.intervals == {"natalizumab": (28, 14), "ocrelizumab": (183, 30)}


@pytest.mark.parametrize(
    ("authored_days_ago", "expected_end"),
    [
        (89, days_before(89) + timedelta(days=89)),  # covered through as_of: ends later, active today
        (120, None),  # the refill due 30 days ago: on time within the grace period
        (121, days_before(121) + timedelta(days=89)),  # 31 days late: ended on the last covered day
    ],
)
def test_an_open_order_without_supply_covers_the_program_default(
    authored_days_ago: int, expected_end: date | None
) -> None:
    order = exposure("MedicationRequest", "metformin", days_before(authored_days_ago))
    assert TABLE.covered_end(order, AS_OF) == expected_end


def test_an_open_order_covers_its_supply_or_one_default_per_fill() -> None:
    authored = days_before(400)
    on_time = exposure("MedicationRequest", "metformin", authored, supply=370)  # refill due 30 days ago
    assert TABLE.covered_end(on_time, AS_OF) is None
    late = exposure("MedicationRequest", "metformin", authored, supply=369)
    assert TABLE.covered_end(late, AS_OF) == authored + timedelta(days=368)
    refills = exposure("MedicationRequest", "metformin", authored, fills=4)  # no supply: 4 x 90 days
    assert TABLE.covered_end(refills, AS_OF) == authored + timedelta(days=359)
    one_year = CoverageTable(COVERAGE.model_copy(update={"order_days": 365}), CLASSES)
    unstated = exposure("MedicationRequest", "metformin", authored)  # neither supply nor refills: one year
    assert one_year.covered_end(unstated, AS_OF) == authored + timedelta(days=364)  # 35 days late
    assert one_year.covered_end(unstated, AS_OF + timedelta(days=-5)) is None  # 30 days late: on time
    assert one_year.covered_end(refills, AS_OF) == authored + timedelta(days=359)  # stated fills win
    until_ended = CoverageTable(COVERAGE.model_copy(update={"order_days": None}), CLASSES)
    assert until_ended.covered_end(unstated, AS_OF) is None
    assert until_ended.covered_end(refills, AS_OF) == authored + timedelta(days=359)
    dispensed = exposure("MedicationRequest", "metformin", authored, authored, status="completed")
    assert until_ended.covered_end(dispensed, AS_OF) == authored + timedelta(days=89)  # completed: one fill


def test_an_open_statement_counts_from_its_last_assertion() -> None:
    old = exposure("MedicationStatement", "metformin", days_before(500))
    assert TABLE.covered_end(old, AS_OF) == days_before(500) + timedelta(days=199)
    reasserted = exposure("MedicationStatement", "metformin", days_before(500), asserted=days_before(10))
    assert TABLE.covered_end(reasserted, AS_OF) == days_before(10) + timedelta(days=199)
    forever = CoverageTable(COVERAGE.model_copy(update={"statement_days": None}), CLASSES)
    assert forever.covered_end(old, AS_OF) is None


@pytest.mark.parametrize(
    ("last_infusion_days_ago", "current"),
    [(13, True), (28, True), (42, True), (43, False)],
)
def test_an_infusion_covers_its_interval_and_grace(last_infusion_days_ago: int, current: bool) -> None:
    day = days_before(last_infusion_days_ago)
    infusion = exposure("MedicationAdministration", "natalizumab", day, day, status="completed")
    end = TABLE.covered_end(infusion, AS_OF)
    if current:
        assert end is None or end >= AS_OF
    else:
        assert end == day + timedelta(days=27)


def test_stopped_planned_and_ranged_records_keep_their_own_dates() -> None:
    day = days_before(100)
    stopped = exposure("MedicationAdministration", "natalizumab", day, day, status="stopped")
    assert TABLE.covered_end(stopped, AS_OF) == day
    ranged = exposure("MedicationStatement", "metformin", day, day + timedelta(days=5), status="completed")
    assert TABLE.covered_end(ranged, AS_OF) == day + timedelta(days=5)
    planned = exposure("MedicationRequest", "metformin", days_before(400))
    planned.planned = True
    assert TABLE.covered_end(planned, AS_OF) is None
    other = exposure("MedicationAdministration", "metformin", day, day, status="completed")
    assert TABLE.covered_end(other, AS_OF) == day  # no interval: a single day stays a single day
    dispensed = days_before(121)  # a completed order that states no supply: one default fill, 31 days late now
    completed_order = exposure("MedicationRequest", "metformin", dispensed, dispensed, status="completed")
    assert TABLE.covered_end(completed_order, AS_OF) == dispensed + timedelta(days=89)


def test_a_stale_order_ends_the_line_on_its_last_covered_day() -> None:
    settings = LineSettings(new_line_on="class-change", coverage=COVERAGE)
    order = exposure("MedicationRequest", "metformin", date(2020, 1, 1))
    order.end = TABLE.covered_end(order, AS_OF)
    (line,) = build_lines(drug_eras([order], CLASSES.keys(), 90), regimen_keys(settings, CLASSES), settings, AS_OF)
    assert line.end == date(2020, 3, 30) and line.end_reason == "discontinued"


# -- indication ------------------------------------------------------------------------------------------------


def _program(knowledge: Knowledge, program_id: str) -> Program:
    (program,) = [p for p in knowledge.programs if p.id == program_id]
    return program


def _era(drug: str, start: date, end: date | None, ref: str = "") -> DrugEra:
    return DrugEra(drug, start, end, [ref or f"MedicationAdministration/{drug}-{start}"])


def _diagnosis(onset: date | None, abatement: date | None = None) -> Diagnosis:
    return Diagnosis("Condition/c1", frozenset(), onset, "active" if abatement is None else "resolved", abatement)


@pytest.mark.parametrize(
    ("era_end_days_before_onset", "counts"),
    [(61, False), (60, True), (0, True)],
)
def test_a_drug_counts_from_the_margin_before_onset(
    knowledge: Knowledge, era_end_days_before_onset: int, counts: bool
) -> None:
    nsclc = _program(knowledge, "nsclc")  # margin 60 days
    onset = date(2025, 9, 1)
    end = onset - timedelta(days=era_end_days_before_onset)
    eras = [_era("docetaxel", end - timedelta(days=63), end)]
    kept = indicated_eras(eras, nsclc, knowledge.program_drugs(nsclc), [_diagnosis(onset)], frozenset(), AS_OF)
    assert (kept == eras) is counts


def test_an_abated_diagnosis_counts_until_abatement_plus_margin(knowledge: Knowledge) -> None:
    crc = _program(knowledge, "crc")
    ended = _diagnosis(date(2018, 1, 1), date(2019, 3, 1))
    inside = _era("capecitabine", date(2019, 4, 30), date(2019, 8, 1))  # starts 60 days after abatement
    after = _era("oxaliplatin", date(2019, 5, 1), date(2019, 8, 1))  # 61 days after
    kept = indicated_eras([inside, after], crc, knowledge.program_drugs(crc), [ended], frozenset(), AS_OF)
    assert kept == [inside]


def test_a_diagnosis_without_onset_is_always_active(knowledge: Knowledge) -> None:
    nsclc = _program(knowledge, "nsclc")
    eras = [_era("docetaxel", date(1975, 1, 1), date(1975, 3, 1))]
    assert indicated_eras(eras, nsclc, knowledge.program_drugs(nsclc), [_diagnosis(None)], frozenset(), AS_OF) == eras


def test_a_reason_naming_the_diagnosis_counts_outside_the_window(knowledge: Knowledge) -> None:
    nsclc = _program(knowledge, "nsclc")
    old = _era("docetaxel", date(2020, 1, 1), date(2020, 3, 1), "MedicationAdministration/named")
    named = frozenset({"MedicationAdministration/named"})
    kept = indicated_eras([old], nsclc, knowledge.program_drugs(nsclc), [_diagnosis(date(2025, 1, 1))], named, AS_OF)
    assert kept == [old]


def test_a_coded_reason_decides_alone(knowledge: Knowledge) -> None:
    nsclc = _program(knowledge, "nsclc")
    classes = knowledge.program_drugs(nsclc)
    other = exposure("MedicationAdministration", "docetaxel", date(2026, 1, 5), date(2026, 1, 5), status="completed")
    other.reasons = frozenset({"http://snomed.info/sct|399068003"})  # prostate cancer
    mine = exposure("MedicationAdministration", "docetaxel", date(2026, 2, 5), date(2026, 2, 5), status="completed")
    mine.reasons = frozenset({"http://snomed.info/sct|254637007", "http://snomed.info/sct|399068003"})
    plain = exposure("MedicationAdministration", "docetaxel", date(2026, 3, 5), date(2026, 3, 5), status="completed")
    kept, _, named = program_exposures([other, mine, plain], nsclc, classes, AS_OF, None)
    assert [e.ref for e in kept] == [mine.ref, plain.ref] and named == {mine.ref}


def test_without_a_diagnosis_prep_alone_is_no_hiv_line(knowledge: Knowledge) -> None:
    hiv = _program(knowledge, "hiv")
    classes = knowledge.program_drugs(hiv)
    prep = _era("emtricitabine", date(2019, 1, 1), date(2021, 12, 31))
    nrti = _era("emtricitabine", date(2024, 3, 5), None)
    anchor = _era("bictegravir", date(2024, 3, 5), None)
    assert indicated_eras([prep, anchor, nrti], hiv, classes, [], frozenset(), AS_OF) == [anchor, nrti]


def test_with_a_diagnosis_an_anchor_long_before_it_does_not_count(knowledge: Knowledge) -> None:
    hiv = _program(knowledge, "hiv")
    pep = _era("dolutegravir", date(2018, 5, 1), date(2018, 5, 28))  # post-exposure prophylaxis
    current = _era("dolutegravir", date(2024, 3, 5), None)
    kept = indicated_eras(
        [pep, current], hiv, knowledge.program_drugs(hiv), [_diagnosis(date(2024, 3, 1))], frozenset(), AS_OF
    )
    assert kept == [current]


# -- a drug stopped inside a line ------------------------------------------------------------------------------


def test_a_drug_dropped_long_before_the_line_ends_does_not_name_its_end(knowledge: Knowledge) -> None:
    nsclc = _program(knowledge, "nsclc")
    classes = knowledge.program_drugs(nsclc)
    cisplatin = MedicationExposure(
        "MedicationStatement/cis", frozenset({"cisplatin"}), date(2025, 1, 6), date(2025, 2, 17), "stopped", "",
        (NOT_TOLERATED,),
    )  # fmt: skip
    gefitinib = MedicationExposure(
        "MedicationStatement/gef", frozenset({"gefitinib"}), date(2025, 1, 6), date(2025, 9, 1), "completed", ""
    )
    eras = drug_eras([cisplatin, gefitinib], classes.keys(), nsclc.lines.era_gap_days)
    (line,) = build_lines(eras, regimen_keys(nsclc.lines, classes), nsclc.lines, AS_OF, classes)
    assert line.end == date(2025, 9, 1) and line.end_reason == "discontinued"
    cisplatin.end = date(2025, 8, 20)  # stopped as not tolerated within the window of the line's end: it names it
    eras = drug_eras([cisplatin, gefitinib], classes.keys(), nsclc.lines.era_gap_days)
    (line,) = build_lines(eras, regimen_keys(nsclc.lines, classes), nsclc.lines, AS_OF, classes)
    assert line.end_reason == "not-tolerated"


def _hiv_record(stopped: str, continuing: tuple[str, ...]) -> PatientRecord:
    """HIV since 2024; every product since 2024-01-08; ``stopped`` ended 2026-04-01 as not tolerated."""
    record = PatientRecord("p1")
    record.add({"resourceType": "Condition", "id": "hiv", "code": {"coding": [{"system": SCT, "code": "86406008"}]}})
    goes_on = [(f"goes-on-{n}", code, None) for n, code in enumerate(continuing)]
    for rid, code, end in [("stopped", stopped, "2026-04-01"), *goes_on]:
        period = {"start": "2024-01-08", **({"end": end} if end else {})}
        resource = {
            "resourceType": "MedicationStatement",
            "id": rid,
            "status": "stopped" if end else "active",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}]},
            "subject": {"reference": "Patient/p1"},
            "effectivePeriod": period,
        }
        if end:
            resource["statusReason"] = [{"coding": [{"system": SCT, "code": "407563006"}]}]
        record.add(resource)
    return record


@pytest.mark.parametrize(
    ("stopped", "continuing", "outcome"),
    [
        ("1433873", ("1747691",), "not-tolerated"),  # dolutegravir stopped, FTC/TAF left: no anchor
        ("1747691", ("1433873",), "not-tolerated"),  # FTC/TAF stopped, dolutegravir alone: monotherapy
        ("476556", ("1433873", "68244"), "continues"),  # FTC/TDF stopped, dolutegravir + lamivudine go on
    ],
)
def test_a_drop_inside_an_hiv_line_needs_a_whole_regimen_left(
    knowledge: Knowledge, stopped: str, continuing: tuple[str, ...], outcome: str
) -> None:
    result = evaluate_record(_hiv_record(stopped, continuing), knowledge, AS_OF)
    (hiv,) = result.programs
    (finding,) = [a for a in hiv.findings if a.rule == "intolerance"]
    assert finding.outcome == outcome and hiv.current_line is not None
