"""`make test`'s system check (tests/prerequisites.py): what is missing, how to install it, and .ci/run's install."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests import postgres, prerequisites
from tests.conftest import ROOT


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A machine whose tools the test chooses: all present to begin with; apt-get calls recorded, not run."""
    state: dict[str, Any] = {"java": 17, "mvn": True, "postgres": True, "chromium": True, "root": False, "apt": []}
    monkeypatch.setattr(prerequisites, "java_major", lambda: state["java"])
    monkeypatch.setattr(postgres, "available", lambda: state["postgres"])
    monkeypatch.setattr(prerequisites.os, "geteuid", lambda: 0 if state["root"] else 1000)
    tools = {"mvn": lambda: state["mvn"], "chromium": lambda: state["chromium"], "apt-get": lambda: True}
    tools["chromium-browser"] = tools["chromium"]
    monkeypatch.setattr(prerequisites.shutil, "which", lambda name: f"/usr/bin/{name}" if tools[name]() else None)

    def apt_get(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        state["apt"].append(command)
        if command[:2] == ["apt-get", "install"]:
            state.update(postgres=True, mvn=True, java=17, chromium=True)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(prerequisites.subprocess, "run", apt_get)
    return state


def test_a_complete_machine_passes_silently(machine: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert prerequisites.main([]) == 0
    assert capsys.readouterr().err == ""


def test_missing_postgresql_stops_with_the_install_command(
    machine: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    machine["postgres"] = False
    assert prerequisites.main([]) == 2
    err = capsys.readouterr().err
    assert "PostgreSQL's server (initdb, pg_ctl)" in err
    assert "  sudo apt-get install -y postgresql\n" in err
    assert machine["apt"] == []  # a check installs nothing


def test_every_missing_tool_is_in_one_command(machine: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    machine.update(postgres=False, mvn=False, java=11)
    assert prerequisites.main([]) == 2
    err = capsys.readouterr().err
    assert "Java 17+ (found Java 11)" in err and "Maven (mvn)" in err
    assert "apt-get install -y openjdk-17-jdk-headless maven postgresql\n" in err


def test_missing_chromium_is_installed_from_debian_like_the_rest(machine: dict[str, Any]) -> None:
    machine.update(chromium=False, root=True)
    assert prerequisites.missing()[0].package == "chromium"
    assert prerequisites.main(["--install"]) == 0
    assert machine["apt"] == [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]]


def test_install_as_root_installs_what_is_missing(machine: dict[str, Any]) -> None:
    machine.update(postgres=False, root=True)
    assert prerequisites.main(["--install"]) == 0
    assert machine["apt"] == [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]]


def test_install_with_nothing_missing_touches_nothing(machine: dict[str, Any]) -> None:
    machine["root"] = True
    assert prerequisites.main(["--install"]) == 0
    assert machine["apt"] == []  # CI with everything present: no apt-get update, no time lost


def test_install_without_root_says_what_to_run(machine: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    machine["postgres"] = False
    assert prerequisites.main(["--install"]) == 2
    assert machine["apt"] == []
    assert "sudo python3 -m tests.prerequisites --install" in capsys.readouterr().err


def test_make_test_checks_first_and_ci_installs_then_runs_make_test() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    test_target = next(line for line in makefile.splitlines() if line.startswith("test:"))
    assert test_target.split()[1] == "prerequisites"
    assert "\t$(PYTHON) -m tests.prerequisites\n" in makefile
    ci = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    assert ci[-2:] == ["python3 -m tests.prerequisites --install", "make test"]
