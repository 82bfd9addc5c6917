"""The Spark engine (being built): the same worklist as the embedded engine, evaluated inside Spark executors."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

from fhirsvc.config import Settings
from fhirsvc.population.worklist import PopulationSummary


def run_spark(
    source: str,
    out: Path,
    settings: Settings,
    as_of: date,
    server: str,
    master: str,
    progress: Callable[[str], None],
) -> PopulationSummary:
    raise NotImplementedError("the Spark engine is not built yet")
