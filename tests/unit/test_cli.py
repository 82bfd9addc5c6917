"""CLI: the evaluate JSON contract, text output, NDJSON input, demo, help, bearer tokens kept off argv."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from typer.testing import CliRunner

from fhirsvc.cli import STATUSES, app
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


def _demo_rows(output: str) -> list[str]:
    """The finding rows of `demo` output: one per finding, after the table's `patient` header."""
    listing = output.split("\npatient ", 1)[1].split("\n\n", 1)[0]
    return [line for line in listing.splitlines()[1:] if line.startswith("Patient/")]


def _demo_counts(output: str) -> dict[str, dict[str, int]]:
    """The summary table: row label (`patients` or a status) → column (program or `total`) → count."""
    header, *rows = output.split("\n\n")[1].splitlines()
    columns = header.split()
    return {label: dict(zip(columns, map(int, counts), strict=True)) for label, *counts in map(str.split, rows)}


def test_demo_summarises_and_lists_only_actionable_findings() -> None:
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first.endswith("example patients, evaluated as of 2026-06-01")
    counts = _demo_counts(result.stdout)
    assert counts["patients"]["total"] == int(first.split()[2])
    assert set(counts) == {"patients", *STATUSES}
    for status in STATUSES:  # each status row's total is the sum over the programs
        assert counts[status]["total"] == sum(n for column, n in counts[status].items() if column != "total")
    rows = _demo_rows(result.stdout)
    actionable = sum(counts[status]["total"] for status in STATUSES if status != "no-action")
    assert f"Actionable findings ({actionable};" in result.stdout and len(rows) == actionable
    assert not any(" no-action: " in row for row in rows)
    assert any(row.startswith("Patient/hiv-fail-basic ") and " second-line-evaluation: " in row for row in rows)


def test_demo_all_lists_every_finding_counted_in_the_summary() -> None:
    result = runner.invoke(app, ["demo", "--all"])
    assert result.exit_code == 0, result.output
    counts = _demo_counts(result.stdout)
    rows = _demo_rows(result.stdout)
    assert len(rows) == sum(counts[status]["total"] for status in STATUSES)
    for status in STATUSES:
        assert sum(f" {status}: " in row for row in rows) == counts[status]["total"], status
    for program, patients in counts["patients"].items():
        if program != "total":
            listed = {row.split()[0] for row in rows if row.split()[1] == program}
            assert len(listed) == patients, program  # every program in scope gives each patient a finding


def test_demo_outside_a_source_checkout_says_what_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    import fhirsvc.cli

    def no_fixtures(name: str) -> Path:
        raise FileNotFoundError(name)

    monkeypatch.setattr(fhirsvc.cli, "data_dir", no_fixtures)
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 2
    assert "not part of this installation" in result.stderr and "source checkout" in result.stderr


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command's name path, groups included (typer builds them on its own copy of click)."""
    found = [path]
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            found += _commands(sub, (*path, name))
    return found


def test_help_has_no_type_placeholders_on_flags() -> None:
    """Every command's --help lists flags bare (`--serve`, `--all`), never as `--serve <bool>`."""
    commands = _commands(typer.main.get_command(app))
    assert ("demo",) in commands and ("mappings", "check") in commands
    for path in commands:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "<bool>" not in result.stdout, path
        assert "Usage: " in result.stdout and "--help" in result.stdout, path
    demo_help = runner.invoke(app, ["demo", "--help"]).stdout
    assert re.search(r"^  --all\s+List every finding", demo_help, flags=re.MULTILINE), demo_help


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
    assert "Evaluating as of 2026-06-01, the date of the table above" in demo.stdout
    assert "--data-binary @" in demo.stdout and "patient-view-hiv-fail-basic.json" in demo.stdout
    serve = runner.invoke(app, ["serve", "--port", "8124"])
    assert serve.exit_code == 0, serve.output
    (demo_app, demo_kwargs), (serve_app, serve_kwargs) = served
    assert demo_app.state.settings.cds_auth == "off" and demo_kwargs["port"] == 8123
    assert demo_app.state.settings.today == date(2026, 6, 1)  # the table's date, not the machine's
    assert serve_app.state.settings.today is None
    assert serve_app.state.settings.cds_auth == "on"  # the secure default
    # CORS: closed unless configured; the demo opens it to the CDS Hooks sandbox, which calls from the browser.
    assert serve_app.state.settings.cors_origins == []
    assert demo_app.state.settings.cors_origins == ["https://sandbox.cds-hooks.org"]
    assert "https://sandbox.cds-hooks.org" in demo.stdout
    assert serve_kwargs["log_config"] is None and serve_kwargs["access_log"] is False
    assert configured == [True, True]


# Bearer tokens: from a file or the environment, never from argv (`ps` shows argv to every user) ---------------------

FHIR_SERVER = "https://fhir.example.test/r4"
TOKEN_COMMANDS = {
    "poll": ["poll", "--fhir-server", FHIR_SERVER, "--once"],
    "sandbox-load": ["sandbox", "load", "--fhir-server", FHIR_SERVER],
    "sandbox-call": [
        "sandbox",
        "call",
        "--service",
        "http://127.0.0.1:9",
        "--fhir-server",
        FHIR_SERVER,
        "--patient",
        "p",
    ],
}


@pytest.fixture
def tokens_used(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str | None]]:
    """The bearer token each command hands to the FHIR server (nothing leaves the process); fresh settings."""
    import fhirsvc.sandbox
    from fhirsvc.config import get_settings
    from fhirsvc.fhir.errors import FhirTransportError
    from fhirsvc.poll.worker import CycleReport, Poller

    used: list[str | None] = []

    async def cycle(self: Poller, server: str, token: str | None = None, **_: Any) -> CycleReport:
        used.append(token)
        raise FhirTransportError("not contacted in this test")

    def load(fhir_server: str, paths: Any, token: str | None = None) -> fhirsvc.sandbox.LoadReport:
        used.append(token)
        return fhirsvc.sandbox.LoadReport()

    def call(service: str, fhir_server: str, patient: str, hook: str, token: str | None) -> tuple[str, dict[str, Any]]:
        used.append(token)
        return "second-line-patient-view", {"cards": []}

    monkeypatch.setattr(Poller, "cycle", cycle)
    monkeypatch.setattr(fhirsvc.sandbox, "load", load)
    monkeypatch.setattr(fhirsvc.sandbox, "call", call)
    monkeypatch.delenv("FHIRSVC_FHIR_TOKEN", raising=False)
    get_settings.cache_clear()
    yield used
    get_settings.cache_clear()


@pytest.mark.parametrize("command", TOKEN_COMMANDS.values(), ids=TOKEN_COMMANDS.keys())
def test_a_token_on_the_command_line_is_refused_with_the_way_to_pass_it(
    command: list[str], tokens_used: list[str | None]
) -> None:
    result = runner.invoke(app, [*command, "--token", "secret-on-argv"])
    assert result.exit_code == 2, result.output
    assert "--token-file" in result.stderr and "FHIRSVC_FHIR_TOKEN" in result.stderr
    assert "secret-on-argv" not in result.output
    assert tokens_used == []  # refused before anything is sent


@pytest.mark.parametrize("command", TOKEN_COMMANDS.values(), ids=TOKEN_COMMANDS.keys())
def test_the_token_comes_from_a_file_or_the_environment(
    command: list[str], tokens_used: list[str | None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fhirsvc.config import get_settings

    token_file = tmp_path / "fhir-token"
    token_file.write_text("from-the-file\n")
    runner.invoke(app, [*command, "--token-file", str(token_file)])
    runner.invoke(app, command)  # no token at all
    monkeypatch.setenv("FHIRSVC_FHIR_TOKEN", "from-the-environment")
    get_settings.cache_clear()
    runner.invoke(app, command)
    runner.invoke(app, [*command, "--token-file", str(token_file)])  # the file wins
    assert tokens_used == ["from-the-file", None, "from-the-environment", "from-the-file"]


def test_an_unusable_token_file_is_a_clear_error(tokens_used: list[str | None], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    two = tmp_path / "two"
    two.write_text("token-one\ntoken-two\n")
    for path, message in ((tmp_path / "missing", "cannot read it"), (empty, "one token"), (two, "one token")):
        result = runner.invoke(app, [*TOKEN_COMMANDS["sandbox-load"], "--token-file", str(path)])
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert "token-one" not in result.output
    assert tokens_used == []
