"""Browser fixtures: the system Chromium driven by Playwright, the offline pages, a screenshot kept per failure."""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest
from typer.testing import CliRunner

from fhirsvc.cli import app
from fhirsvc.pipeline import evaluate_record
from fhirsvc.record.files import index_records
from fhirsvc.render.timeline import timeline_page
from fhirsvc.terminology.knowledge import Knowledge
from tests.conftest import AS_OF, FIXTURES, ROOT
from tests.prerequisites import chromium_path

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

# Failure screenshots land here (tests/.cache is ignored by git), one per failed test, overwritten on the next run.
ARTIFACTS = ROOT / "tests" / ".cache" / "browser"
PAGE_FIXTURES = [
    "hiv/fail-basic.json",
    "t2d/ckd-egfr-45.json",
    "nsclc/progression-on-chemo-io.json",
    "ms/relapse-on-interferon.json",
]
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _unavailable(reason: str) -> NoReturn:
    """Skip where the browser cannot run; in CI (CI=true) that is a failure, never a silent skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, where the browser tests must run (.ci/run installs Chromium)")
    pytest.skip(reason)


# Module scope: Playwright's sync API runs its own asyncio loop while it is open, and the async tests that run after
# this directory need none running.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (pip install -r requirements-dev.lock)")
    executable = chromium_path()
    if executable is None:
        _unavailable("Chromium is absent (apt-get install chromium, or python3 -m tests.prerequisites --install)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    opened = context.new_page()
    yield opened
    reports = request.node.stash.get(_REPORTS, {})
    if any(r.failed for r in reports.values()):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
        opened.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
    context.close()


@pytest.fixture(scope="session")
def pages(tmp_path_factory: pytest.TempPathFactory, knowledge: Knowledge) -> Path:
    """The offline pages `fhirsvc evaluate --format html --out DIR` writes for bundled example patients, plus one
    page of an incomplete record (files never make one: it comes from a FHIR search cut short)."""
    out = tmp_path_factory.mktemp("pages")
    paths = [str(FIXTURES / fixture) for fixture in PAGE_FIXTURES]
    written = CliRunner().invoke(
        app, ["evaluate", *paths, "--as-of", AS_OF.isoformat(), "--format", "html", "--out", str(out)]
    )
    assert written.exit_code == 0, written.output
    (record,) = index_records([FIXTURES / "hiv" / "fail-basic.json"]).records()
    result = evaluate_record(record, knowledge, AS_OF)
    incomplete = replace(result, incomplete={"Observation": "the server's page cap was reached"})
    (out / "incomplete.html").write_text(timeline_page(incomplete), encoding="utf-8")
    return out
