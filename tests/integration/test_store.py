"""The store on both databases: SQLite (default) and PostgreSQL (Debian's server, started by the test)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest

from fhirsvc.store.db import Store
from fhirsvc.store.models import IssuedCard, WriteBack
from fhirsvc.store.repository import (
    feedback_counts,
    get_cursor,
    latest_state,
    now,
    open_writebacks,
    record_issued_cards,
    save_feedback,
    save_state,
    set_cursor,
    suppressed,
    therapy_history,
)
from tests import postgres


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if not postgres.available():
        if os.environ.get("CI"):
            pytest.fail("CI must run the PostgreSQL store tests: install Debian's postgresql package")
        pytest.skip("PostgreSQL (initdb, pg_ctl) is not installed; `apt-get install postgresql` to run these")
    with postgres.postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    sqlite = f"sqlite:///{tmp_path / 'store.db'}"
    url = sqlite if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    store = Store(url)
    store.upgrade()
    store.upgrade()  # idempotent
    yield store
    if request.param == "postgresql":
        with store.engine.begin() as connection:
            for table in ("seen_jti", "writebacks", "feedback", "issued_cards", "therapy_states", "poll_cursors"):
                connection.exec_driver_sql(f"DELETE FROM {table}")
    store.close()


def report(status: str, line: int = 1) -> dict[str, object]:
    return {"program": "hiv", "current_line": line, "lines": [], "assessments": [{"rule": "r", "status": status}]}


def test_states_are_appended_only_when_they_change(store: Store) -> None:
    with store.session() as session:
        assert save_state(session, "s", "Patient/1", "hiv", date(2026, 1, 1), report("monitor"), "a")
        assert not save_state(session, "s", "Patient/1", "hiv", date(2026, 2, 1), report("monitor"), "a")
        assert save_state(session, "s", "Patient/1", "hiv", date(2026, 3, 1), report("second-line-evaluation"), "b")
    with store.session() as session:
        latest = latest_state(session, "s", "Patient/1", "hiv")
        assert latest is not None and latest.status == "second-line-evaluation" and latest.as_of == date(2026, 3, 1)
        assert [row.fingerprint for row in therapy_history(session, "Patient/1")] == ["a", "b"]


def test_cursors(store: Store) -> None:
    with store.session() as session:
        assert get_cursor(session, "s", "Observation") is None
        set_cursor(session, "s", "Observation", "2026-01-01T00:00:00.000Z")
    with store.session() as session:
        set_cursor(session, "s", "Observation", "2026-01-02T00:00:00.000Z")
    with store.session() as session:
        assert get_cursor(session, "s", "Observation") == "2026-01-02T00:00:00.000Z"


def test_feedback_duplicates_suppression_and_counts(store: Store) -> None:
    stamp = now().strftime("%Y-%m-%dT%H:%M:%SZ")
    old = (now() - timedelta(days=40)).strftime("%Y-%m-%dT%H:%M:%SZ")
    overridden = {
        "card": "c1",
        "outcome": "overridden",
        "outcomeTimestamp": stamp,
        "overrideReason": {"reason": {"system": "x", "code": "y", "display": "z"}},
    }
    with store.session() as session:
        record_issued_cards(session, "svc", "Patient/1", [("c1", "hiv", "hiv-virologic-failure", "summary")])
        record_issued_cards(session, "svc", "Patient/1", [("c1", "hiv", "hiv-virologic-failure", "summary")])
        card = session.get(IssuedCard, "c1")
        assert card is not None and card.times_issued == 2 and card.last_issued_at >= card.first_issued_at
        assert save_feedback(session, "svc", [overridden, overridden]) == (1, 1)
        assert save_feedback(session, "svc", [{**overridden, "card": "c2", "outcomeTimestamp": old}]) == (1, 0)
    with store.session() as session:
        assert suppressed(session, ["c1", "c2", "c3"], now() - timedelta(days=30)) == {"c1"}
        assert feedback_counts(session)[("hiv-virologic-failure", "overridden")] == 1
        assert feedback_counts(session)[("unknown", "overridden")] == 1


def test_writebacks(store: Store) -> None:
    with store.session() as session:
        session.add(
            WriteBack(
                identifier="f1",
                server="s",
                patient="Patient/1",
                program="hiv",
                rule="r",
                status="open",
                resources={"Task": "Task/9"},
                created_at=now(),
            )
        )
    with store.session() as session:
        (row,) = open_writebacks(session, "s", "Patient/1")
        assert row.resources == {"Task": "Task/9"}
        row.status = "closed"
    with store.session() as session:
        assert open_writebacks(session, "s", "Patient/1") == []
        assert store.ping()
