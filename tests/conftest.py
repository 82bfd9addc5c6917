"""Shared fixtures: the knowledge base loaded once, fixture bundles by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from fhirsvc.rules.registry import RULE_KINDS
from fhirsvc.terminology.knowledge import Knowledge, load_knowledge

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@pytest.fixture(autouse=True)
def _store_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every app a test builds gets its own SQLite store, never a file in the working directory."""
    path = tmp_path_factory.mktemp("store") / "fhirsvc.db"
    monkeypatch.setenv("FHIRSVC_STORE_URL", f"sqlite:///{path}")


@pytest.fixture(scope="session")
def knowledge() -> Knowledge:
    return load_knowledge(rule_kinds=RULE_KINDS)


def load_fixture(relative: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((FIXTURES / relative).read_bytes())
    return data
