"""`fhirsvc mappings check`: passes on the bundled mappings, catches malformed codes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fhirsvc.cli import app
from fhirsvc.terminology.check import check_mappings, loinc_check_digit, verhoeff_valid
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
    report = check_mappings(copy)
    assert not report.ok
    assert any(message in error for error in report.errors), report.errors


def test_schema_errors_are_reported(tmp_path: Path) -> None:
    copy = tmp_path / "mappings"
    shutil.copytree(data_dir("mappings"), copy)
    hiv = copy / "programs" / "hiv.yaml"
    hiv.write_text(hiv.read_text().replace("kind: confirmed-threshold", "kind: confirmed-threshold\n    colour: red"))
    report = check_mappings(copy)
    assert not report.ok and report.errors[0].startswith("schema:")
