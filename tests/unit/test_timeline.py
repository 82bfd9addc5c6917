"""The timeline page without a browser: the SVG's structure for known fixtures, thresholds from the YAML, escaping."""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fhirsvc.cli import app
from fhirsvc.pipeline import PatientResult, evaluate_record
from fhirsvc.record.model import RecordBuilder
from fhirsvc.render.timeline import page_file_name, timeline_page
from fhirsvc.rules.registry import RULE_KINDS
from fhirsvc.terminology.knowledge import Knowledge, load_knowledge
from tests.conftest import AS_OF, FIXTURES, load_fixture

SVG = "{http://www.w3.org/2000/svg}"


def result_of(knowledge: Knowledge, bundle: dict[str, Any], as_of: date = AS_OF) -> PatientResult:
    builder = RecordBuilder()
    builder.add_bundle(bundle)
    (record,) = builder.build()
    return evaluate_record(record, knowledge, as_of)


def svgs(page: str) -> dict[str, ET.Element]:
    """Each program's SVG, parsed as XML (which also proves it well-formed), by program id."""
    found = {}
    for chunk in re.findall(r"<svg .*?</svg>", page, flags=re.DOTALL):
        element = ET.fromstring(chunk)  # noqa: S314 - our own rendering, no entities or DTD to expand
        found[element.attrib["data-program"]] = element
    return found


def by_class(svg: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in svg.iter() if name in e.attrib.get("class", "").split()]


def test_hiv_failure_one_bar_the_threshold_on_a_log_scale_and_the_evidence(knowledge: Knowledge) -> None:
    result = result_of(knowledge, load_fixture("hiv/fail-basic.json"))
    page = timeline_page(result)
    svg = svgs(page)["hiv"]
    (bar,) = by_class(svg, "line-bar")
    assert (bar.attrib["data-line"], bar.attrib["data-start"], bar.attrib["data-end"]) == ("1", "2025-06-01", "ongoing")
    (panel,) = by_class(svg, "panel")
    assert (panel.attrib["data-observation"], panel.attrib["data-scale"]) == ("viral_load", "log")
    thresholds = {t.attrib["data-param"]: t for t in by_class(panel, "threshold")}
    assert thresholds["threshold"].attrib["data-value"] == "200"
    assert thresholds["threshold"].attrib["aria-label"] == "threshold 200 copies/mL"
    (finding,) = [f for f in result.findings if f.status == "second-line-evaluation"]
    evidence = by_class(panel, "evidence")
    assert sorted(e.attrib["data-ref"] for e in evidence) == [
        "Observation/hiv-fail-basic-vl-1",
        "Observation/hiv-fail-basic-vl-2",
    ]
    assert all(finding.id in e.attrib["data-finding"].split() for e in evidence)
    assert f'id="finding-{finding.id}"' in page
    assert 'href="https://clinicalinfo.hiv.gov/en/guidelines/' in page


def test_thresholds_come_from_the_program_parameters_with_their_overrides() -> None:
    who = load_knowledge(overrides={"hiv.failure_threshold": 1000}, rule_kinds=RULE_KINDS)
    page = timeline_page(result_of(who, load_fixture("hiv/fail-basic.json")))
    (threshold,) = [t for t in by_class(svgs(page)["hiv"], "threshold") if t.attrib["data-param"] == "threshold"]
    assert threshold.attrib["data-value"] == "1000"


def test_t2d_hba1c_target_band_and_egfr_gates(knowledge: Knowledge) -> None:
    svg = svgs(timeline_page(result_of(knowledge, load_fixture("t2d/ckd-egfr-45.json"))))["t2d"]
    panels = {p.attrib["data-observation"]: p for p in by_class(svg, "panel")}
    (band,) = by_class(panels["hba1c"], "target-band")
    assert band.attrib["aria-label"] == "target band: below 7 %"
    gates = {t.attrib["data-value"] for t in by_class(panels["egfr"], "threshold")}
    assert gates == {"20", "30", "45", "60"}  # metformin floor and start gate; the CKD and eGFR < 20 flags
    assert {e.attrib["data-ref"] for e in by_class(panels["egfr"], "evidence")} == {
        "Observation/t2d-ckd-egfr-45-egfr-1",
        "Observation/t2d-ckd-egfr-45-egfr-2",
    }


def test_disease_status_and_relapses_are_marks_with_the_evidence_among_them(knowledge: Knowledge) -> None:
    nsclc = svgs(timeline_page(result_of(knowledge, load_fixture("nsclc/progression-on-chemo-io.json"))))["nsclc"]
    (lane,) = [lane for lane in by_class(nsclc, "events") if lane.attrib["data-lane"] == "disease_status"]
    marks = by_class(lane, "event")
    assert len(marks) == 3
    assert [m.attrib["data-ref"] for m in marks if m.attrib["data-evidence"] == "true"] == [
        "Observation/nsclc-progression-on-chemo-io-status-3"
    ]
    ms = svgs(timeline_page(result_of(knowledge, load_fixture("ms/relapse-on-interferon.json"))))["ms"]
    (relapse,) = [m for m in by_class(ms, "event") if m.attrib["data-evidence"] == "true"]
    assert (relapse.attrib["data-ref"], relapse.attrib["data-date"]) == (
        "Condition/ms-relapse-on-interferon-relapse-1",
        "2026-02-01",
    )


def test_a_dead_patient_has_no_findings_and_lines_end_at_death(knowledge: Knowledge) -> None:
    bundle = copy.deepcopy(load_fixture("hiv/fail-basic.json"))
    (patient,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    patient["deceasedDateTime"] = "2026-04-10"
    page = timeline_page(result_of(knowledge, bundle))
    svg = svgs(page)["hiv"]
    (bar,) = by_class(svg, "line-bar")
    assert (bar.attrib["data-end"], bar.attrib["data-end-reason"]) == ("2026-04-10", "death")
    assert len(by_class(svg, "death")) == 1 and 'class="finding' not in page
    assert "Deceased (2026-04-10)" in page


def test_incomplete_data_shows_the_banner(knowledge: Knowledge) -> None:
    result = result_of(knowledge, load_fixture("hiv/fail-basic.json"))
    assert "Data may be incomplete" not in timeline_page(result)
    page = timeline_page(replace(result, incomplete={"Observation": "the page cap was reached"}))
    assert '<p class="banner incomplete" role="alert">Data may be incomplete' in page


def test_every_svg_is_labelled_and_the_page_runs_no_script(knowledge: Knowledge) -> None:
    for fixture in ("hiv/fail-basic.json", "t2d/ckd-egfr-45.json", "ms/two-new-lesions.json"):
        page = timeline_page(result_of(knowledge, load_fixture(fixture)))
        assert "<script" not in page.lower()
        for svg in svgs(page).values():
            assert svg.attrib["role"] == "group"  # its parts stay reachable (an img's children are presentational)
            title, desc = svg.find(f"{SVG}title"), svg.find(f"{SVG}desc")
            assert title is not None and title.text and desc is not None and desc.text
            assert all(e.attrib.get("aria-label") for e in svg.iter() if e.attrib.get("role") == "img")


def test_hostile_text_in_drug_names_results_and_summaries_is_escaped(knowledge: Knowledge) -> None:
    hostile = '<script>alert("x")</script>'
    bundle = copy.deepcopy(load_fixture("nsclc/progression-on-chemo-io.json"))
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Observation" and "valueCodeableConcept" in resource:
            resource["valueCodeableConcept"]["text"] = hostile  # the coded result's text, shown as reported
    result = result_of(knowledge, bundle)
    (program,) = result.programs
    program.lines[0].drugs.add(hostile)
    program.findings[0] = replace(program.findings[0], summary=hostile, status="monitor")
    page = timeline_page(result)
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    svgs(page)  # still well-formed XML


def test_page_file_names_are_safe_and_distinct() -> None:
    assert page_file_name("Patient/hiv-fail-basic") == "hiv-fail-basic.html"
    hostile = page_file_name("Patient/../../etc/passwd")
    assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\.html", hostile) and "/" not in hostile
    assert page_file_name("Patient/a b") != page_file_name("Patient/a_b")


def test_evaluate_writes_one_page_per_patient_and_an_index(tmp_path: Path) -> None:
    out = tmp_path / "pages"
    args = ["evaluate", str(FIXTURES / "hiv" / "fail-basic.json"), str(FIXTURES / "t2d" / "ckd-egfr-45.json")]
    result = CliRunner().invoke(app, [*args, "--as-of", "2026-06-01", "--format", "html", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["hiv-fail-basic.html", "index.html", "t2d-ckd-egfr-45.html"]
    index = (out / "index.html").read_text(encoding="utf-8")
    assert 'href="hiv-fail-basic.html"' in index and 'href="t2d-ckd-egfr-45.html"' in index
    assert 'data-program="hiv"' in (out / "hiv-fail-basic.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("args", [["--format", "html"], ["--out", "somewhere"]])
def test_html_and_out_go_together(args: list[str]) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(FIXTURES / "hiv" / "fail-basic.json"), *args])
    assert result.exit_code == 2 and "--format html and --out DIR go together" in result.output
