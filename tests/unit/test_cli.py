"""CLI: the evaluate JSON contract, text output, NDJSON input, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from fhirsvc.cli import app
from fhirsvc.record.model import bundle_resources
from tests.conftest import FIXTURES, load_fixture

runner = CliRunner()


def test_evaluate_json_follows_the_public_contract() -> None:
    result = runner.invoke(app, ["evaluate", str(FIXTURES / "hiv" / "line2-failing.json"), "--as-of", "2026-06-01"])
    assert result.exit_code == 0, result.output
    (item,) = orjson.loads(result.stdout)
    assert item["patient"] == "Patient/hiv-line2-failing"
    (program,) = item["programs"]
    assert program["program"] == "hiv" and program["current_line"] == 2
    assert [set(line) >= {"number", "drugs", "classes", "start", "end", "end_reason"} for line in program["lines"]] == [
        True,
        True,
    ]
    assert program["lines"][0]["end_reason"] == "virologic-failure"
    assert [a["rule"] for a in program["assessments"]] == [
        "hiv-virologic-failure",
        "hiv-viral-load-overdue",
        "intolerance",
        "pregnancy",
        "interaction",
    ]
    assessment = program["assessments"][0]
    assert assessment["status"] == "next-line-evaluation"
    assert {"rule", "status", "summary", "evidence", "recommendations"} <= set(assessment)
    assert all(ref.split("/")[0] in {"Observation", "MedicationStatement"} for ref in assessment["evidence"])
    assert item["cards"][0]["indicator"] == "warning"


def test_evaluate_reads_directories_and_ndjson(tmp_path: Path) -> None:
    lines = [orjson.dumps(r) for _, r in bundle_resources(load_fixture("hiv/fail-basic.json"))]
    (tmp_path / "export.ndjson").write_bytes(b"\n".join([*lines, b"{broken"]))
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--as-of", "2026-06-01"])
    assert result.exit_code == 0
    (item,) = orjson.loads(result.stdout)
    assert item["programs"][0]["assessments"][0]["status"] == "second-line-evaluation"
    assert "1 unreadable" in result.stderr


def test_as_of_moves_every_time_window() -> None:
    early = runner.invoke(app, ["evaluate", str(FIXTURES / "hiv" / "fail-basic.json"), "--as-of", "2026-02-15"])
    (item,) = orjson.loads(early.stdout)
    assert item["programs"][0]["assessments"][0]["status"] == "monitor"  # only the first result existed then


def test_evaluate_text_shows_lines_values_dates_and_guideline() -> None:
    result = runner.invoke(app, ["evaluate", str(FIXTURES / "hiv"), "--as-of", "2026-06-01", "--format", "text"])
    assert result.exit_code == 0
    for text in ("line 1: 2024-01-01 → 2025-01-10", "virologic-failure", "2.5 log10 copies/mL", "guideline: DHHS"):
        assert text in result.stdout, text


def test_missing_path_is_a_clear_error() -> None:
    result = runner.invoke(app, ["evaluate", "no/such/file.json"])
    assert result.exit_code == 2 and "no such file" in result.stderr


def test_demo_summarises_the_bundled_patients() -> None:
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0
    assert "Patient/hiv-fail-basic" in result.stdout and "second-line-evaluation" in result.stdout


def test_demo_serve_runs_without_client_auth_and_serve_logs_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """`demo --serve` is a local demo: CDS client authentication off, explicitly; both commands log JSON."""
    import uvicorn

    import fhirsvc.api.logs

    served: list[tuple[Any, dict[str, Any]]] = []
    configured: list[bool] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append((app, kwargs)))
    monkeypatch.setattr(fhirsvc.api.logs, "configure_logging", lambda: configured.append(True))
    demo = runner.invoke(app, ["demo", "--serve", "--port", "8123"])
    assert demo.exit_code == 0, demo.output
    assert "authentication is OFF" in demo.stdout
    serve = runner.invoke(app, ["serve", "--port", "8124"])
    assert serve.exit_code == 0, serve.output
    (demo_app, demo_kwargs), (serve_app, serve_kwargs) = served
    assert demo_app.state.settings.cds_auth == "off" and demo_kwargs["port"] == 8123
    assert serve_app.state.settings.cds_auth == "on"  # the secure default
    assert serve_kwargs["log_config"] is None and serve_kwargs["access_log"] is False
    assert configured == [True, True]
