"""`fhirsvc evidence`: the step-therapy document of one patient's files."""

from __future__ import annotations

from pathlib import Path

import orjson
from typer.testing import CliRunner

from fhirsvc.cli import app
from fhirsvc.fhir.resources import validate
from tests.conftest import FIXTURES

runner = CliRunner()
T2D = str(FIXTURES / "t2d" / "a1c-above.json")


def test_writes_the_document_of_the_metformin_trial(tmp_path: Path) -> None:
    out = tmp_path / "evidence.json"
    args = ["evidence", T2D, "--program", "t2d", "--drug", "Ozempic", "--as-of", "2026-06-01", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    document = orjson.loads(out.read_bytes())
    validate(document)
    composition = document["entry"][0]["resource"]
    assert composition["subject"] == {"reference": "Patient/t2d-a1c-above"}
    assert "semaglutide" in composition["text"]["div"] and "HbA1c 7.8 % on 2026-04-01" in composition["text"]["div"]


def test_writes_the_html_of_the_same_content(tmp_path: Path) -> None:
    out = tmp_path / "evidence.html"
    result = runner.invoke(app, ["evidence", T2D, "--program", "t2d", "--as-of", "2026-06-01", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "metformin 2025-06 to now, HbA1c 7.8 % on 2026-04-01" in out.read_text(encoding="utf-8")


def test_refuses_a_program_without_step_therapy_and_a_drug_that_is_no_next_step(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    hiv = runner.invoke(app, ["evidence", T2D, "--program", "hiv", "--out", str(out)])
    assert hiv.exit_code == 2 and "describes no step therapy" in hiv.output
    glipizide = runner.invoke(app, ["evidence", T2D, "--program", "t2d", "--drug", "glipizide", "--out", str(out)])
    assert glipizide.exit_code == 2 and "not a next-line drug of t2d" in glipizide.output
    assert not out.exists()
