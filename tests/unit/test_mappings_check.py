"""`fhirsvc mappings check`: passes on the bundled mappings, catches malformed codes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fhirsvc.cli import app
from fhirsvc.rules.registry import RULE_KINDS
from fhirsvc.terminology.check import ICD10CM, check_mappings, code_problem, loinc_check_digit, verhoeff_valid
from fhirsvc.terminology.knowledge import load_knowledge
from fhirsvc.terminology.paths import data_dir


def test_bundled_mappings_pass() -> None:
    result = CliRunner().invoke(app, ["mappings", "check"])
    assert result.exit_code == 0, result.output
    assert " 0 error(s)" in result.stdout


@pytest.mark.parametrize(("code", "digit"), [("20447", 9), ("4548", 4), ("97509", 4), ("69548", 6), ("59261", 8)])
def test_loinc_check_digit(code: str, digit: int) -> None:
    assert loinc_check_digit(code) == digit


@pytest.mark.parametrize(
    ("sctid", "valid"),
    [("44054006", True), ("86406008", True), ("271299001", True), ("44054007", False), ("86406009", False)],
)
def test_snomed_verhoeff(sctid: str, valid: bool) -> None:
    assert verhoeff_valid(sctid) is valid


@pytest.mark.parametrize(
    ("relative", "good", "bad", "message"),
    [
        ("programs/hiv.yaml", "code: 20447-9,", "code: 20447-8,", "check digit"),
        ("valuesets/vsac-hiv.json", '"code": "B20"', '"code": "B99.99"', "ICD-10-CM code table"),
        ("programs/nsclc.yaml", 'code: "254637007"', 'code: "254637008"', "Verhoeff"),
        ("programs/nsclc.yaml", "code: C34.90,", "code: C34-90,", "ICD-10-CM format"),
    ],
)
def test_malformed_codes_are_reported(tmp_path: Path, relative: str, good: str, bad: str, message: str) -> None:
    copy = tmp_path / "mappings"
    shutil.copytree(data_dir("mappings"), copy)
    target = copy / relative
    text = target.read_text()
    assert good in text
    target.write_text(text.replace(good, bad, 1))
    report = check_mappings(copy, rule_kinds=RULE_KINDS)
    assert not report.ok
    assert any(message in error for error in report.errors), report.errors


def test_schema_errors_are_reported(tmp_path: Path) -> None:
    copy = tmp_path / "mappings"
    shutil.copytree(data_dir("mappings"), copy)
    hiv = copy / "programs" / "hiv.yaml"
    hiv.write_text(hiv.read_text().replace("kind: confirmed-threshold", "kind: confirmed-threshold\n    colour: red"))
    report = check_mappings(copy, rule_kinds=RULE_KINDS)
    assert not report.ok and report.errors[0].startswith("schema:")


def test_check_names_the_installed_icd10cm_release() -> None:
    result = CliRunner().invoke(app, ["mappings", "check"])
    assert "ICD-10-CM table: simple-icd-10-cm" in result.stdout
    assert "2026" in check_mappings(rule_kinds=RULE_KINDS).icd10cm_release


@pytest.mark.parametrize("code", ["G35.A", "G35.B0", "G35.B1", "G35.B2", "G35.C0", "G35.C1", "G35.C2", "G35.D"])
def test_ms_program_lists_every_fy2026_ms_leaf(code: str) -> None:
    ms = next(p for p in load_knowledge(rule_kinds=RULE_KINDS).programs if p.id == "ms")
    assert f"{ICD10CM}|{code}" in ms.scope.diagnosis.keys
    assert f"{ICD10CM}|{code}" in ms.conditions["ms"].keys


def _ms_with(tmp_path: Path, old: str, new: str) -> Path:
    copy = tmp_path / "mappings"
    shutil.copytree(data_dir("mappings"), copy)
    ms = copy / "programs" / "ms.yaml"
    text = ms.read_text()
    assert old in text
    ms.write_text(text.replace(old, new, 1))
    return copy


def test_g35_unmarked_is_reported_as_a_heading(tmp_path: Path) -> None:
    marked = "code: G35, display: Multiple sclerosis, heading: true,"
    unmarked = _ms_with(tmp_path, marked, "code: G35, display: Multiple sclerosis,")
    report = check_mappings(unmarked, rule_kinds=RULE_KINDS)
    assert any("G35: an ICD-10-CM heading" in e for e in report.errors), report.errors


def test_another_heading_is_reported_too(tmp_path: Path) -> None:
    report = check_mappings(_ms_with(tmp_path, "code: G35.B0,", "code: G35.B,"), rule_kinds=RULE_KINDS)
    headings = [e for e in report.errors if "heading" in e]
    assert headings and all("|G35.B:" in e for e in headings), report.errors


def test_code_problem_distinguishes_heading_from_leaf() -> None:
    import simple_icd_10_cm as icd

    from fhirsvc.terminology.programs import CodeRef

    def problem(code: str, heading: bool = False) -> str | None:
        return code_problem(CodeRef(system=ICD10CM, code=code, heading=heading), icd.is_valid_item, icd.is_leaf)

    assert problem("G35") is not None and "heading" in str(problem("G35"))
    assert problem("G35", heading=True) is None
    assert problem("G35.A") is None
    assert problem("G35.E") == "not in the installed ICD-10-CM code table"


def test_a_brand_naming_a_drug_outside_the_catalog_is_an_error(tmp_path: Path) -> None:
    copy = tmp_path / "mappings"
    shutil.copytree(data_dir("mappings"), copy)
    with (copy / "drugs" / "brand-names.csv").open("a", encoding="utf-8") as handle:
        handle.write("Notadrug,nosuchinib,,test,true\n")
    report = check_mappings(copy, rule_kinds=RULE_KINDS)
    assert any("Notadrug names drugs not in the catalog" in e for e in report.errors), report.errors


def test_unchecked_brands_are_listed_as_unverified() -> None:
    unverified = check_mappings(rule_kinds=RULE_KINDS).unverified
    assert any(line.startswith("brand Xeloda -> capecitabine") for line in unverified)
    assert not any(line.startswith("brand Lantus ") for line in unverified)  # from RxNorm SBD names in VSAC
