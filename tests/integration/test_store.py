"""The store on both databases: SQLite (default) and PostgreSQL (Debian's server, started by the test)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, select, text

from fhirsvc.api.replay import remember_jti
from fhirsvc.store import repository
from fhirsvc.store.db import MIGRATIONS, Store
from fhirsvc.store.models import Feedback, IssuedCard, TherapyState, WriteBack
from fhirsvc.store.repository import (
    UNKNOWN,
    CardScope,
    FeedbackSaved,
    claim_lease,
    feedback_counts,
    get_cursor,
    latest_state,
    now,
    open_writebacks,
    record_issued_cards,
    release_lease,
    save_feedback,
    save_state,
    set_cursor,
    suppressed,
    therapy_history,
    upsert_writeback,
)


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
            for table in (
                "seen_jti",
                "writebacks",
                "feedback",
                "issued_cards",
                "therapy_states",
                "poll_cursors",
                "poll_leases",
            ):
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


A = CardScope(
    client="https://ehr-a.example", server="https://fhir.example/r4", patient="Patient/1", user="Practitioner/a"
)


def overridden(card: str, stamp: str) -> dict[str, object]:
    return {
        "card": card,
        "outcome": "overridden",
        "outcomeTimestamp": stamp,
        "overrideReason": {"reason": {"system": "x", "code": "y", "display": "z"}},
    }


def test_feedback_duplicates_suppression_and_counts(store: Store) -> None:
    stamp = now().strftime("%Y-%m-%dT%H:%M:%SZ")
    old = (now() - timedelta(days=40)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with store.session() as session:
        record_issued_cards(session, "svc", A, [("c1", "f1", "hiv", "hiv-virologic-failure", "summary")])
        record_issued_cards(session, "svc", A, [("c1", "f1", "hiv", "hiv-virologic-failure", "summary")])
        record_issued_cards(session, "svc", A, [("c2", "f2", "hiv", "hiv-viral-load-overdue", "summary")])
        card = session.get(IssuedCard, "c1")
        assert card is not None and card.times_issued == 2 and card.last_issued_at >= card.first_issued_at
        assert card.client == A.client and card.server == A.server and card.user_id == A.user
        assert save_feedback(session, "svc", A.client, [overridden("c1", stamp)] * 2) == FeedbackSaved(1, 1, 0)
        assert save_feedback(session, "svc", A.client, [overridden("c2", old)]) == FeedbackSaved(1, 0, 0)
        # A uuid never issued to this client: ignored, whoever it was issued to.
        assert save_feedback(session, "svc", "https://ehr-b.example", [overridden("c1", stamp)]) == FeedbackSaved(
            0, 0, 1
        )
    since = now() - timedelta(days=30)
    with store.session() as session:
        assert suppressed(session, A, ["f1", "f2", "f3"], since, every_clinician=False) == {"f1"}
        assert feedback_counts(session)[("hiv-virologic-failure", "overridden")] == 1
        assert feedback_counts(session)[("hiv-viral-load-overdue", "overridden")] == 1


def test_suppression_is_scoped_to_clinician_client_server_and_patient(store: Store) -> None:
    stamp = now().strftime("%Y-%m-%dT%H:%M:%SZ")
    with store.session() as session:
        record_issued_cards(session, "svc", A, [("c1", "f1", "hiv", "r", "summary")])
        save_feedback(session, "svc", A.client, [overridden("c1", stamp)])
    since = now() - timedelta(days=30)
    colleague = replace(A, user="Practitioner/b")
    with store.session() as session:
        assert suppressed(session, A, ["f1"], since, every_clinician=False) == {"f1"}
        assert suppressed(session, colleague, ["f1"], since, every_clinician=False) == set()
        assert suppressed(session, colleague, ["f1"], since, every_clinician=True) == {"f1"}
        for other in (
            replace(A, client="https://ehr-b.example"),
            replace(A, server="https://other-fhir.example/r4"),
            replace(A, patient="Patient/2"),
        ):
            assert suppressed(session, other, ["f1"], since, every_clinician=True) == set()


def test_a_jti_is_unique_per_issuer(store: Store) -> None:
    later = now() + timedelta(minutes=5)
    assert remember_jti(store, "https://ehr-a.example", "jti-1", later, purge=False)
    assert remember_jti(store, "https://ehr-b.example", "jti-1", later, purge=False)
    assert not remember_jti(store, "https://ehr-a.example", "jti-1", later, purge=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all (a PostgreSQL database of its own, dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    server: str = request.getfixturevalue("postgres_url")
    admin = create_engine(server.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql("CREATE DATABASE migration_test")
    try:
        yield server.rsplit("/", 1)[0] + "/migration_test"
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql("DROP DATABASE migration_test WITH (FORCE)")
        admin.dispose()


def test_the_scoping_migration_carries_rows_over(empty_store_url: str) -> None:
    """A store at the first revision with cards, feedback and jtis: upgraded, every row is kept and marked."""
    old = Store(empty_store_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    stamp = now()
    with old.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(
            text(
                "INSERT INTO issued_cards (uuid, service_id, patient, program, rule, summary, first_issued_at,"
                " last_issued_at, times_issued) VALUES ('c1', 'svc', 'Patient/1', 'hiv', 'r', 's', :t, :t, 3)"
            ),
            {"t": stamp},
        )
        connection.execute(
            text(
                "INSERT INTO feedback (service_id, card_uuid, outcome, outcome_timestamp, accepted_suggestions,"
                " received_at) VALUES ('svc', 'c1', 'overridden', '2026-01-01T00:00:00Z', '[]', :t)"
            ),
            {"t": stamp},
        )
        connection.execute(
            text("INSERT INTO seen_jti (jti, issuer, expires_at) VALUES ('j1', 'https://ehr-a.example', :t)"),
            {"t": stamp + timedelta(minutes=5)},
        )
    old.upgrade()
    try:
        with old.session() as session:
            card = session.get(IssuedCard, "c1")
            assert card is not None and card.finding_id == "c1" and card.times_issued == 3
            assert (card.client, card.server, card.user_id) == (UNKNOWN, UNKNOWN, UNKNOWN)
            (item,) = session.scalars(select(Feedback)).all()
            assert (item.finding_id, item.patient, item.client, item.user_id) == ("c1", "Patient/1", UNKNOWN, UNKNOWN)
            # An old, global override hides nothing from a real audience any more.
            scope = CardScope(
                client="https://ehr-a.example", server="https://fhir.example", patient="Patient/1", user="u"
            )
            assert suppressed(session, scope, ["c1"], stamp - timedelta(days=400), every_clinician=True) == set()
            # New feedback rows get ids after the copied ones (PostgreSQL's sequence follows the copy).
            record_issued_cards(session, "svc", scope, [("c2", "f2", "hiv", "r", "s")])
            assert save_feedback(session, "svc", scope.client, [overridden("c2", "2026-01-02T00:00:00Z")]).stored == 1
        assert not remember_jti(old, "https://ehr-a.example", "j1", stamp + timedelta(minutes=5), purge=False)
        assert remember_jti(old, "https://ehr-b.example", "j1", stamp + timedelta(minutes=5), purge=False)
    finally:
        old.close()


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


def test_a_state_saved_after_a_stale_read_is_dropped_not_duplicated(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pollers read the same latest state and both append the same new one: the second append is dropped."""
    with store.session() as session:
        save_state(session, "s", "Patient/1", "hiv", date(2026, 1, 1), report("monitor"), "a")
    with store.session() as session:
        first = latest_state(session, "s", "Patient/1", "hiv")
        assert save_state(session, "s", "Patient/1", "hiv", date(2026, 2, 1), report("second-line-evaluation"), "b")
    monkeypatch.setattr(repository, "latest_state", lambda *_: first)  # the other poller read before that commit
    with store.session() as session:
        assert not save_state(session, "s", "Patient/1", "hiv", date(2026, 2, 1), report("second-line-evaluation"), "b")
    monkeypatch.undo()
    with store.session() as session:
        assert [row.fingerprint for row in therapy_history(session, "Patient/1")] == ["a", "b"]
        # A state may come back later (results out of range again): it follows the one before it.
        assert save_state(session, "s", "Patient/1", "hiv", date(2026, 3, 1), report("monitor"), "a")
    with store.session() as session:
        assert [row.fingerprint for row in therapy_history(session, "Patient/1")] == ["a", "b", "a"]


def test_a_writeback_recorded_twice_is_one_row(store: Store) -> None:
    for resources in ({"Task": "Task/1"}, {"Task": "Task/1", "GuidanceResponse": "GuidanceResponse/2"}):
        with store.session() as session:
            upsert_writeback(session, "f1", "s", "Patient/1", "hiv", "r", resources)
    with store.session() as session:
        (row,) = open_writebacks(session, "s", "Patient/1")
        assert row.resources == {"Task": "Task/1", "GuidanceResponse": "GuidanceResponse/2"}
        row.status = "closed"
    with store.session() as session:  # the finding holds again: reopened
        upsert_writeback(session, "f1", "s", "Patient/1", "hiv", "r", {"Task": "Task/1"})
    with store.session() as session:
        assert [row.identifier for row in open_writebacks(session, "s", "Patient/1")] == ["f1"]


def test_a_patient_lease_has_one_holder_and_a_finished_one_is_not_taken_again_in_the_same_round(store: Store) -> None:
    before = now() - timedelta(seconds=1)
    with store.session() as session:
        assert claim_lease(session, "s", "p1", "a", before, 300)
        assert not claim_lease(session, "s", "p1", "b", before, 300)  # held
        assert claim_lease(session, "s", "p1", "a", before, 300)  # renewed by its holder
        release_lease(session, "s", "p1", "a", done=True)
        # b's cycle began before a claimed it: a read the patient after b's change search; nothing to do.
        assert not claim_lease(session, "s", "p1", "b", before, 300)
        assert claim_lease(session, "s", "p1", "b", now(), 300)  # a later cycle of b evaluates it again
        # A holder that stopped without finishing (crashed) loses the lease once it expires.
        assert claim_lease(session, "s", "p2", "a", before, 0)
        assert claim_lease(session, "s", "p2", "b", before, 300)


def test_the_lease_migration_drops_repeated_states_and_chains_the_rest(empty_store_url: str) -> None:
    """States that racing pollers stored twice in a row are dropped; the rest follow one another."""
    old = Store(empty_store_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with old.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
        for fingerprint in ("a", "a", "b", "a"):
            connection.execute(
                text(
                    "INSERT INTO therapy_states (server, patient, program, as_of, current_line, status, fingerprint,"
                    " report, created_at) VALUES ('s', 'Patient/1', 'hiv', :d, 1, 'monitor', :f, '{}', :t)"
                ),
                {"d": date(2026, 1, 1), "f": fingerprint, "t": now()},
            )
    old.upgrade()
    try:
        with old.session() as session:
            rows = session.scalars(select(TherapyState).order_by(TherapyState.id)).all()
            assert [row.fingerprint for row in rows] == ["a", "b", "a"]
            assert [row.follows for row in rows] == [0, rows[0].id, rows[1].id]
    finally:
        old.close()
