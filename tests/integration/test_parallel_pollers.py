"""Two pollers at once on one PostgreSQL store against the HAPI server: each changed patient evaluated once, nothing
stored or written twice."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from fhirsvc.config import Settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.poll.worker import CycleReport, Poller
from fhirsvc.render.writeback import FINDING_SYSTEM
from fhirsvc.store.db import Store
from fhirsvc.store.models import TherapyState, WriteBack
from fhirsvc.terminology.knowledge import Knowledge
from tests.integration import hapi
from tests.integration.test_poller_hapi import FAILING, QUIET, load_own

pytestmark = [pytest.mark.hapi, pytest.mark.anyio]
AS_OF = date(2026, 6, 1)


@pytest.fixture
def postgres_store(postgres_url: str) -> Iterator[Store]:
    """A PostgreSQL database of its own, dropped afterwards."""
    admin = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql("CREATE DATABASE parallel_pollers")
    store = Store(postgres_url.rsplit("/", 1)[0] + "/parallel_pollers")
    store.upgrade()
    try:
        yield store
    finally:
        store.close()
        with admin.connect() as connection:
            connection.exec_driver_sql("DROP DATABASE parallel_pollers WITH (FORCE)")
        admin.dispose()


async def test_two_pollers_on_postgresql_evaluate_each_patient_once_and_write_nothing_twice(
    hapi_base_url: str, knowledge: Knowledge, postgres_store: Store, tmp_path: Path
) -> None:
    loaded = load_own(hapi_base_url, FAILING + QUIET, tmp_path)
    pools = [FhirClientPool(Settings()), FhirClientPool(Settings())]
    pollers = [
        Poller(Settings(), knowledge, postgres_store, pool, owner=f"host-{name}:1")
        for name, pool in zip("ab", pools, strict=True)
    ]
    try:
        reports: list[CycleReport] = list(
            await asyncio.gather(*(p.cycle(hapi_base_url, as_of=AS_OF, out=io.StringIO()) for p in pollers))
        )
    finally:
        for pool in pools:
            await pool.aclose()
    first, second = reports
    assert not first.failed and not second.failed
    assert first.evaluated and second.evaluated, "both pollers took part"
    assert not set(first.evaluated) & set(second.evaluated), "a patient evaluated by both"
    changed = set(first.evaluated) | set(first.elsewhere)
    assert set(first.evaluated) | set(second.evaluated) == changed, "a changed patient evaluated by neither"
    assert set(loaded.values()) <= changed

    with postgres_store.session() as session:
        repeated = session.execute(
            select(TherapyState.patient, TherapyState.program, func.count())
            .group_by(TherapyState.patient, TherapyState.program)
            .having(func.count() > 1)
        ).all()
        assert repeated == []  # one cycle: at most one state per patient and program
        stored = {w.patient for w in session.scalars(select(WriteBack))}
    assert {f"Patient/{loaded[name]}" for name in FAILING} <= stored
    for name in FAILING:
        guidance = hapi.search_all(f"{hapi_base_url}/GuidanceResponse?subject=Patient/{loaded[name]}")
        identifiers = Counter(
            i["value"] for e in guidance for i in e["resource"].get("identifier", []) if i["system"] == FINDING_SYSTEM
        )
        assert identifiers and all(count == 1 for count in identifiers.values()), identifiers
