"""The service image as the Dockerfile and .dockerignore describe it (no Docker engine is needed to check this)."""

from __future__ import annotations

import json
import re

from tests.conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
IGNORE = [
    line.strip()
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    if line.strip() and not line.startswith("#")
]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match plus `**`): `*` and `?` stay within one path segment."""
    parts = re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/"))
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts))


def excluded(path: str) -> bool:
    """Whether the build context leaves `path` out: a pattern matches it or a folder above it; `!` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for pattern in IGNORE:
        regex = pattern_regex(pattern.removeprefix("!"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not pattern.startswith("!")
    return result


def runtime_stage() -> list[tuple[str, str]]:
    steps = instructions(DOCKERFILE)
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_the_runtime_image_checks_its_health_on_livez() -> None:
    (healthcheck,) = [args for keyword, args in runtime_stage() if keyword == "HEALTHCHECK"]
    command = json.loads(healthcheck.partition("CMD ")[2])  # the exec form: no shell in the way
    assert command[:2] == ["python", "-c"]
    (exposed,) = [args for keyword, args in runtime_stage() if keyword == "EXPOSE"]
    assert f"http://127.0.0.1:{exposed}/livez" in command[2]
    assert "--timeout=" in healthcheck and "--start-period=" in healthcheck


def test_the_build_context_leaves_out_local_state() -> None:
    for path in (
        ".venv/bin/python",
        ".git",
        "tests/hapi/target/hapi-testserver.jar",
        "tests/.cache/synthea/hiv/fhir/a.json",
        "fhirsvc.db",
        "bench/latest.json",
        "out.json",  # `python -m bench --json out.json`
        "fhirsvc/__pycache__/cli.cpython-311.pyc",
    ):
        assert excluded(path), path
    assert not excluded("mappings/valuesets/hiv.json")  # `*.json` is the top folder's only


def test_the_image_gets_its_sources_but_no_example_patients() -> None:
    copied = [args.split()[:-1] for keyword, args in instructions(DOCKERFILE) if keyword == "COPY"]
    sources = [source for sources in copied for source in sources if not source.startswith("--from=")]
    assert {"requirements.lock", "pyproject.toml", "fhirsvc", "mappings"} <= set(sources)
    for source in sources:
        assert not excluded(source), f"{source} is copied but left out of the build context"
    assert "fixtures" not in sources and excluded("fixtures/hiv/fail-basic.json")
