"""What `make test` needs from the system, checked before anything is built: what is missing and how to install it.

    python3 -m tests.prerequisites            exit 0 when all is there; else list what is missing with the exact
                                              install command (Debian/Ubuntu) and exit 2
    python3 -m tests.prerequisites --install  install what is missing with apt-get (as root; what .ci/run does)

Standard library only, and runs on Python 3.7+: the system's Python runs it, before .venv exists.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from tests import postgres

MIN_PYTHON = (3, 11)
MIN_JAVA = 17


@dataclass(frozen=True)
class Missing:
    what: str  # what is missing and what for
    package: str | None  # the Debian/Ubuntu package that brings it; None when no package can


def java_major() -> int | None:
    """The major version of `java` ($JAVA_HOME/bin/java first, as tests/hapi/run and tests/synthea/run pick it)."""
    home_java = os.path.join(os.environ.get("JAVA_HOME", ""), "bin", "java")
    java = home_java if os.environ.get("JAVA_HOME") and os.access(home_java, os.X_OK) else shutil.which("java")
    if java is None:
        return None
    banner = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    found = re.search(r'version "(\d+)', banner)
    return int(found.group(1)) if found else None


# Debian's package installs /usr/bin/chromium; other distributions name it chromium-browser.
CHROMIUM_NAMES = ("chromium", "chromium-browser")


def chromium_path() -> str | None:
    """The system Chromium that the browser tests drive (Playwright with `executable_path`, never its own download)."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def missing() -> list[Missing]:
    gaps: list[Missing] = []
    if sys.version_info < MIN_PYTHON:
        version = ".".join(map(str, sys.version_info[:3]))
        gaps.append(Missing(f"Python 3.11 or newer (this is {version}): run make with PYTHON=python3.11", None))
    elif importlib.util.find_spec("ensurepip") is None:
        gaps.append(Missing("Python's venv with ensurepip, to create .venv", "python3-venv"))
    major = java_major()
    if major is None or major < MIN_JAVA:
        found = "none found" if major is None else f"found Java {major}"
        gaps.append(
            Missing(f"Java {MIN_JAVA}+ ({found}), for the HAPI FHIR test server and Synthea", "openjdk-17-jdk-headless")
        )
    if shutil.which("mvn") is None:
        gaps.append(Missing("Maven (mvn), to build the HAPI FHIR test server and resolve Synthea", "maven"))
    if not postgres.available():
        gaps.append(Missing("PostgreSQL's server (initdb, pg_ctl), for the store tests on PostgreSQL", "postgresql"))
    if chromium_path() is None:
        gaps.append(Missing("Chromium, for the timeline page tests in a real browser (tests/browser)", "chromium"))
    return gaps


def _sudo() -> str:
    return "" if os.geteuid() == 0 else "sudo "


def report(gaps: Sequence[Missing]) -> str:
    lines = ["make test needs what is missing here:"]
    lines += [f"  - {gap.what}" for gap in gaps]
    packages = [gap.package for gap in gaps if gap.package]
    if packages:
        lines += [
            "Install it on Debian or Ubuntu with:",
            f"  {_sudo()}apt-get install -y {' '.join(packages)}",
            f"(or `{_sudo()}python3 -m tests.prerequisites --install`, as .ci/run does), then run `make test` again.",
        ]
    return "\n".join(lines)


def install(gaps: Sequence[Missing]) -> bool:
    """apt-get install the packages of `gaps`; False (nothing tried) when that cannot work here."""
    packages = sorted({gap.package for gap in gaps if gap.package})
    if not packages or len(packages) < len(gaps) or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=environment)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *packages], check=True, env=environment, stdout=subprocess.DEVNULL
    )
    return True


def main(argv: Sequence[str]) -> int:
    gaps = missing()
    if gaps and "--install" in argv and install(gaps):
        gaps = missing()
    if not gaps:
        return 0
    print(report(gaps), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
