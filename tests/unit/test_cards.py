"""Card rendering: what we propose validates as FHIR R4; summaries stay under 140 characters, cut at a word
boundary, values written as clinicians write them; no t2d card contradicts itself or another."""

from __future__ import annotations

import re
from datetime import date

import pytest
import yaml

from fhirsvc.cds.models import Card, compact
from fhirsvc.facts import LabResult, extract_facts
from fhirsvc.fhir.resources import InvalidResource, validate
from fhirsvc.pipeline import PatientResult, evaluate_record
from fhirsvc.record.model import RecordBuilder
from fhirsvc.render.cards import cards_for
from fhirsvc.rules.base import format_number, shorten
from fhirsvc.terminology.knowledge import Knowledge
from tests.conftest import FIXTURES, load_fixture

AS_OF = date(2026, 6, 1)


def _result(name: str, knowledge: Knowledge):  # type: ignore[no-untyped-def]
    builder = RecordBuilder()
    builder.add_bundle(load_fixture(f"hiv/{name}.json"))
    (record,) = builder.build()
    return evaluate_record(record, knowledge, AS_OF)


@pytest.mark.parametrize("name", sorted(p.stem for p in (FIXTURES / "hiv").glob("*.json")))
def test_every_card_obeys_the_rules_and_its_resources_validate(name: str, knowledge: Knowledge) -> None:
    for card in cards_for(_result(name, knowledge)):
        assert len(card.summary) < 140
        assert card.detail and "does not order" in card.detail
        assert card.links and card.source.url
        for suggestion in card.suggestions:
            for action in suggestion.actions:
                assert action.resource is not None
                validate(action.resource)


def test_validate_rejects_invalid_fhir() -> None:
    with pytest.raises(InvalidResource):
        validate({"resourceType": "ServiceRequest", "status": "draft"})  # intent and subject are required
    with pytest.raises(InvalidResource):
        validate({"resourceType": "NotAType"})


def test_line_end_reason_comes_from_the_failure_rule(knowledge: Knowledge) -> None:
    (program,) = _result("already-switched", knowledge).programs
    assert program.lines[0].end_reason == "virologic-failure"


def _scenario_results(knowledge: Knowledge, folder: str | None = None) -> list[tuple[str, PatientResult]]:
    results = []
    for path in sorted((FIXTURES / "scenarios").glob("*.yaml")):
        if folder is not None and path.stem != folder:
            continue
        for entry in yaml.safe_load(path.read_text()):
            builder = RecordBuilder()
            builder.add_bundle(load_fixture(entry["file"]))
            (record,) = builder.build()
            results.append((f"{path.stem}:{entry['name']}", evaluate_record(record, knowledge, entry["as_of"])))
    return results


# The only ways a card may mention an SGLT2 inhibitor or metformin when advising against it.
_SGLT2_REFUSED = "do not start an SGLT2 inhibitor"
_METFORMIN_STOPPED = "metformin is contraindicated"


def advice_contradictions(texts: list[str]) -> list[str]:
    """Pairs of advice that cannot both hold, found in `texts` (the cards of one patient, or one card)."""
    joined = "\n".join(texts)
    found = []
    if _SGLT2_REFUSED in joined and "SGLT2 inhibitor" in joined.replace(_SGLT2_REFUSED, ""):
        found.append("an SGLT2 inhibitor both proposed and not to be started")
    if _METFORMIN_STOPPED in joined and "metformin dose is effective" in joined:
        found.append("metformin both contraindicated and to be dosed")
    return found


def _advice(card: Card) -> str:
    consider = (card.detail or "").split("**Consider**", 1)[-1].split("**Guideline**", 1)[0]
    return f"{card.summary}\n{consider}"


def test_the_contradiction_check_can_fail() -> None:
    assert advice_contradictions(["eGFR 18: do not start an SGLT2 inhibitor", "Add an SGLT2 inhibitor"])
    assert advice_contradictions(["eGFR 25: metformin is contraindicated; check the metformin dose is effective"])
    assert not advice_contradictions(["eGFR 18: do not start an SGLT2 inhibitor; add a GLP-1 RA"])


def test_no_t2d_card_contradicts_itself_or_another(knowledge: Knowledge) -> None:
    checked = 0
    for name, result in _scenario_results(knowledge, "t2d"):
        texts = [_advice(card) for card in cards_for(result)]
        for text in texts:
            assert not advice_contradictions([text]), (name, text)
        assert not advice_contradictions(texts), (name, texts)
        checked += len(texts)
    assert checked > 40  # the check ran on the cards, not on an empty list


def test_no_sglt2_inhibitor_is_proposed_below_the_labelled_egfr(knowledge: Knowledge) -> None:
    """Independent of the wording: a patient whose latest eGFR is below 20 gets no card naming an SGLT2 inhibitor
    other than to refuse it."""
    gated = 0
    for name, result in _scenario_results(knowledge, "t2d"):
        (program,) = [p for p in result.programs if p.program.id == "t2d"]
        keys = program.program.observations["egfr"].keys
        egfr = [lab for lab in _facts_labs(result, knowledge, name) if lab.codes & keys and lab.value is not None]
        latest = max(egfr, key=lambda lab: lab.date).value if egfr else None
        if latest is None or latest >= 20:
            continue
        gated += 1
        for card in cards_for(result):
            assert "SGLT2 inhibitor" not in _advice(card).replace(_SGLT2_REFUSED, ""), (name, card.summary)
    assert gated >= 2


def _facts_labs(result: PatientResult, knowledge: Knowledge, name: str) -> list[LabResult]:
    folder, _, scenario = name.partition(":")
    builder = RecordBuilder()
    builder.add_bundle(load_fixture(f"{folder}/{scenario}.json"))
    (record,) = builder.build()
    return extract_facts(record, knowledge.catalog, result.as_of).labs


_MANY_DECIMALS = re.compile(r"\d\.\d{3,}")


def test_every_scenario_card_reads_as_a_clinician_writes(knowledge: Knowledge) -> None:
    for name, result in _scenario_results(knowledge):
        for card in cards_for(result):
            summary = card.summary
            assert len(summary) < 140, (name, summary)
            shown = summary + (card.detail or "").split("**Guideline**", 1)[0]  # a cited DOI is not a value
            assert not _MANY_DECIMALS.search(shown), (name, shown)
            assert "never" not in summary and "None" not in summary and "?" not in summary, (name, summary)
            if summary.endswith("…"):
                assert summary[-2].isalnum() or summary[-2] in ")%", (name, summary)


def test_summary_cut_at_a_word_boundary() -> None:
    text = "HbA1c 8.0 % on 2026-04-01 " + "because " * 20
    cut = shorten(text)
    assert len(cut) < 140 and cut.endswith("…")
    assert text.startswith(cut[:-1]) and text[len(cut) - 1] == " "  # the word before the ellipsis is whole
    assert shorten("short") == "short"
    assert len(shorten("x" * 300)) == 139  # a single over-long word is the only thing ever cut inside


@pytest.mark.parametrize(
    ("value", "decimals", "written"),
    [(7.12345, 1, "7.1"), (7.0, 1, "7.0"), (45.4, 0, "45"), (2.5432, None, "2.54"), (2.5, None, "2.5"),
     (1_500_000.0, None, "1500000"), (64.0, None, "64"), (-0.01, 1, "0.0")],
)  # fmt: skip
def test_values_as_clinicians_write_them(value: float, decimals: int | None, written: str) -> None:
    assert format_number(value, decimals) == written


def test_no_result_ever_is_a_sentence_not_never(knowledge: Knowledge) -> None:
    bundle = load_fixture("nsclc/imaging-overdue.json")
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] != "Observation"]
    builder = RecordBuilder()
    builder.add_bundle(bundle)
    (record,) = builder.build()
    result = evaluate_record(record, knowledge, AS_OF)
    (finding,) = [a for a in result.findings if a.rule == "nsclc-imaging-overdue"]
    line = finding.line
    assert finding.outcome == "never-recorded" and line is not None
    assert finding.summary.startswith(f"No disease status on record since line {line.number} started on {line.start}")


def test_compact_drops_every_empty_value_at_any_depth_and_keeps_zero_and_false() -> None:
    value = {
        "none": None,
        "blank": "",
        "list": [],
        "object": {},
        "items": [None, "", [], {}, 0, False, [{"only": ""}], {"nested": [None]}, "kept"],
        "zero": 0,
        "false": False,
        "deep": {"inner": {"text": ""}},
        "text": "x",
    }
    assert compact(value) == {"items": [0, False, "kept"], "zero": 0, "false": False, "text": "x"}
    assert compact([]) == [] and compact("") == ""
