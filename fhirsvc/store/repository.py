"""Store queries: issued cards, feedback and suppression, therapy-state history, poll cursors, leases, write-backs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import Connection, Insert, Table, and_, bindparam, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fhirsvc.store.models import Feedback, IssuedCard, PollCursor, PollLease, TherapyState, WriteBack


def now() -> datetime:
    return datetime.now(UTC)


# Marks what a row or request does not say: rows from before the store was scoped, a request without userId. No
# request ever carries it as a client, server or clinician, so it never matches one.
UNKNOWN = "urn:fhirsvc:unknown"


@dataclass(frozen=True, slots=True)
class CardScope:
    """To whom a card was shown: the CDS client (JWT `iss`), the FHIR server identity, the patient, the clinician."""

    client: str
    server: str
    patient: str
    user: str


def record_issued_cards(
    session: Session | Connection, service_id: str, scope: CardScope, cards: Iterable[tuple[str, str, str, str, str]]
) -> None:
    """Remember (uuid, finding id, program, rule, summary) of each card answered and to whom, so feedback naming
    only the uuid can be scoped, joined to its finding and counted per rule.

    One upsert statement for all of a response's cards: this runs on every CDS call, and per-card ORM loads and
    flushes were a fifth of a call's CPU under load (bench/README.md).
    """
    stamp = now()
    rows: dict[str, dict[str, Any]] = {}
    for uuid, finding_id, program, rule, summary in cards:
        rows.setdefault(
            uuid,
            {
                "uuid": uuid,
                "finding_id": finding_id,
                "client": scope.client,
                "server": scope.server,
                "user_id": scope.user,
                "service_id": service_id,
                "patient": scope.patient,
                "program": program,
                "rule": rule,
                "summary": summary[:200],
                "first_issued_at": stamp,
                "last_issued_at": stamp,
                "times_issued": 1,
            },
        )
    if not rows:
        return
    dialect = session.dialect if isinstance(session, Connection) else session.get_bind().dialect
    session.execute(_issued_card_upsert(dialect.name), list(rows.values()))


def _insert(session: Session | Connection, table: Table) -> sqlite.Insert | postgresql.Insert:
    """INSERT with the dialect's ON CONFLICT clauses (SQLite and PostgreSQL spell them alike)."""
    dialect = session.dialect if isinstance(session, Connection) else session.get_bind().dialect
    return sqlite_insert(table) if dialect.name == "sqlite" else postgresql_insert(table)


@cache
def _issued_card_upsert(dialect: str) -> Insert:
    """INSERT … ON CONFLICT (uuid) DO UPDATE for SQLite or PostgreSQL, built once: executed with many rows, its
    compiled form is cached (a multi-row VALUES statement would be compiled again on every call)."""
    table = cast(Table, IssuedCard.__table__)
    insert = sqlite_insert(table) if dialect == "sqlite" else postgresql_insert(table)
    return insert.on_conflict_do_update(
        index_elements=[table.c.uuid],
        set_={"last_issued_at": insert.excluded.last_issued_at, "times_issued": table.c.times_issued + 1},
    )


# Built once: this runs on every CDS call, and building the statement cost more than running it.
_OVERRIDES = select(
    Feedback.finding_id, Feedback.user_id, Feedback.outcome_timestamp, Feedback.override_reason, Feedback.user_comment
).where(
    Feedback.finding_id.in_(bindparam("findings", expanding=True)),
    Feedback.client == bindparam("client"),
    Feedback.server == bindparam("server"),
    Feedback.patient == bindparam("patient"),
    Feedback.outcome == "overridden",
)


def suppressed(
    session: Session | Connection, scope: CardScope, finding_ids: Iterable[str], since: datetime, every_clinician: bool
) -> set[str]:
    """Findings whose card was overridden with a reason (coded or a comment) at or after `since` by this clinician
    (or, with `every_clinician`, by any clinician of this client) for this server's patient: not shown again.

    A finding's id is derived from its evidence, so new evidence is a new id and ends the suppression."""
    wanted = list(finding_ids)
    if not wanted:
        return set()
    rows = session.execute(
        _OVERRIDES, {"findings": wanted, "client": scope.client, "server": scope.server, "patient": scope.patient}
    ).all()
    hidden = set()
    for finding_id, user, stamp, reason, comment in rows:
        when = _parse_instant(stamp)
        mine = every_clinician or user == scope.user
        if mine and (reason or comment) and when is not None and when >= since:
            hidden.add(finding_id)
    return hidden


def _parse_instant(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class FeedbackSaved:
    """What became of one feedback request's items."""

    stored: int
    duplicates: int
    ignored: int  # naming a card never issued to this client


_ISSUED_TO = select(IssuedCard.finding_id, IssuedCard.server, IssuedCard.patient, IssuedCard.user_id).where(
    IssuedCard.uuid == bindparam("uuid"), IssuedCard.client == bindparam("client")
)


def save_feedback(session: Session, service_id: str, client: str, items: list[dict[str, Any]]) -> FeedbackSaved:
    """Store feedback items, each scoped like the card it names as issued to `client` (feedback names no user: the
    card uuid, derived per audience, says whose it was). Items on a card never issued to this client are ignored,
    so no client can hide or count another's cards. The same item sent twice (clients retry) is kept once."""
    stored = duplicates = ignored = 0
    for item in items:
        issued = session.execute(_ISSUED_TO, {"uuid": item["card"], "client": client}).first()
        if issued is None:
            ignored += 1
            continue
        finding_id, server, patient, user = issued
        row = Feedback(
            service_id=service_id,
            card_uuid=item["card"],
            finding_id=finding_id,
            client=client,
            server=server,
            patient=patient,
            user_id=user,
            outcome=item["outcome"],
            outcome_timestamp=item["outcomeTimestamp"],
            accepted_suggestions=item.get("acceptedSuggestions") or [],
            override_reason=(item.get("overrideReason") or {}).get("reason"),
            user_comment=(item.get("overrideReason") or {}).get("userComment"),
            received_at=now(),
        )
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
            stored += 1
        except IntegrityError:
            duplicates += 1
    return FeedbackSaved(stored, duplicates, ignored)


def feedback_counts(session: Session) -> Counter[tuple[str, str]]:
    """(rule, outcome) → number of feedback items, for the acceptance and override metrics."""
    rows = session.execute(
        select(func.coalesce(IssuedCard.rule, "unknown"), Feedback.outcome, func.count())
        .select_from(Feedback)
        .outerjoin(IssuedCard, IssuedCard.uuid == Feedback.card_uuid)
        .group_by(IssuedCard.rule, Feedback.outcome)
    ).all()
    return Counter({(str(rule), str(outcome)): int(count) for rule, outcome, count in rows})


def latest_state(session: Session, server: str, patient: str, program: str) -> TherapyState | None:
    return session.scalars(
        select(TherapyState)
        .where(TherapyState.server == server, TherapyState.patient == patient, TherapyState.program == program)
        .order_by(TherapyState.id.desc())
        .limit(1)
    ).first()


def save_state(
    session: Session, server: str, patient: str, program: str, as_of: date, report: dict[str, Any], fingerprint: str
) -> bool:
    """Append a state when it differs from the latest one; True when something changed.

    The row names the state it follows, unique per patient and program: when another poller appended after the
    same latest state first, this one is dropped (its evaluation is the same or older), never stored twice."""
    latest = latest_state(session, server, patient, program)
    if latest is not None and latest.fingerprint == fingerprint:
        return False
    statuses = [a["status"] for a in report.get("assessments", [])]
    row = {
        "server": server,
        "patient": patient,
        "program": program,
        "as_of": as_of,
        "current_line": report.get("current_line"),
        "status": most_urgent(statuses),
        "fingerprint": fingerprint,
        "report": report,
        "created_at": now(),
        "follows": latest.id if latest is not None else 0,
    }
    table = cast(Table, TherapyState.__table__)
    statement = _insert(session, table).values(row).on_conflict_do_nothing().returning(table.c.id)
    return session.execute(statement).first() is not None


_URGENCY = [
    "next-line-evaluation",
    "second-line-evaluation",
    "add-on-evaluation",
    "monitor",
    "data-needed",
    "no-action",
]


def most_urgent(statuses: Iterable[str]) -> str:
    ranked = sorted(statuses, key=lambda s: _URGENCY.index(s) if s in _URGENCY else len(_URGENCY))
    return ranked[0] if ranked else "no-action"


def therapy_history(session: Session, patient: str) -> list[TherapyState]:
    """Every stored state of `patient` ("Patient/<id>") on every server, oldest first: the caller keeps one server's
    (the same id on another server is another person)."""
    return list(session.scalars(select(TherapyState).where(TherapyState.patient == patient).order_by(TherapyState.id)))


def get_cursor(session: Session, server: str, resource_type: str) -> str | None:
    row = session.get(PollCursor, (server, resource_type))
    return row.cursor if row else None


def set_cursor(session: Session, server: str, resource_type: str, cursor: str) -> None:
    row = session.get(PollCursor, (server, resource_type))
    if row is None:
        session.add(PollCursor(server=server, resource_type=resource_type, cursor=cursor, updated_at=now()))
    else:
        row.cursor, row.updated_at = cursor, now()


def upsert_writeback(
    session: Session,
    identifier: str,
    server: str,
    patient: str,
    program: str,
    rule: str,
    resources: dict[str, str],
) -> None:
    """Record a finding's write-back as open; a row already there (another poller, an earlier run) is reopened with
    these references, its creation and closing history kept. One statement: no read-then-insert race."""
    table = cast(Table, WriteBack.__table__)
    insert = _insert(session, table)
    values = {"server": server, "patient": patient, "program": program, "rule": rule, "status": "open"}
    statement = insert.values(identifier=identifier, resources=resources, created_at=now(), **values)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[table.c.identifier], set_={**values, "resources": insert.excluded.resources}
        )
    )


# Leases -----------------------------------------------------------------------------------------------------------


def claim_lease(session: Session, server: str, patient: str, owner: str, cycle_start: datetime, seconds: float) -> bool:
    """Take or renew the lease on (server, patient) for `seconds`; False when another owner holds it, or finished
    evaluating it after `cycle_start` (the patient was read after our change search: evaluating it again is
    wasted). One atomic upsert: of two pollers claiming at once, exactly one wins."""
    table = cast(Table, PollLease.__table__)
    stamp = now()
    insert = _insert(session, table)
    claimed = {"owner": owner, "claimed_at": stamp, "expires_at": stamp + timedelta(seconds=seconds), "done_at": None}
    statement = insert.values(server=server, patient=patient, **claimed).on_conflict_do_update(
        index_elements=[table.c.server, table.c.patient],
        set_=claimed,
        where=or_(
            table.c.owner == owner,
            and_(table.c.expires_at <= stamp, or_(table.c.done_at.is_(None), table.c.claimed_at < cycle_start)),
        ),
    )
    # RETURNING, not rowcount: psycopg reports no row count for an upsert through the ORM session.
    return session.execute(statement.returning(table.c.patient)).first() is not None


def take_over_lease(session: Session, server: str, patient: str, dead_owner: str, owner: str, seconds: float) -> bool:
    """Take a lease from an owner known to be gone (a crashed process of this host), if it still holds it."""
    stamp = now()
    result = session.execute(
        update(PollLease)
        .where(PollLease.server == server, PollLease.patient == patient, PollLease.owner == dead_owner)
        .values(owner=owner, claimed_at=stamp, expires_at=stamp + timedelta(seconds=seconds), done_at=None)
        .returning(PollLease.patient)
    )
    return result.first() is not None


def release_lease(session: Session, server: str, patient: str, owner: str, done: bool) -> None:
    """Give a lease up now; `done` marks the patient evaluated (see `claim_lease`)."""
    stamp = now()
    session.execute(
        update(PollLease)
        .where(PollLease.server == server, PollLease.patient == patient, PollLease.owner == owner)
        .values(expires_at=stamp, done_at=stamp if done else None)
    )


def lease_of(session: Session, server: str, patient: str) -> PollLease | None:
    return session.get(PollLease, (server, patient), populate_existing=True)


def open_writebacks(session: Session, server: str, patient: str) -> list[WriteBack]:
    return list(
        session.scalars(
            select(WriteBack).where(
                WriteBack.server == server, WriteBack.patient == patient, WriteBack.status == "open"
            )
        )
    )


def open_writeback_identifiers(session: Session, server: str, identifiers: Iterable[str]) -> set[str]:
    """Of these finding ids, those the store records as written and open on `server` (one query per batch)."""
    wanted = list(identifiers)
    if not wanted:
        return set()
    return set(
        session.scalars(
            select(WriteBack.identifier).where(
                WriteBack.identifier.in_(wanted), WriteBack.server == server, WriteBack.status == "open"
            )
        )
    )


# A write-back the store wrote but the server no longer holds (a restore, a reset, a lost commit): not open, so the
# next evaluation of its patient writes it again; not closed, since its finding was never resolved.
MISSING = "missing"


def unclosed_writebacks(session: Session, server: str, patient: str) -> list[WriteBack]:
    """The patient's write-backs still open, or missing from the server (closing those needs no server update)."""
    return list(
        session.scalars(
            select(WriteBack).where(
                WriteBack.server == server, WriteBack.patient == patient, WriteBack.status.in_(("open", MISSING))
            )
        )
    )


def server_open_writebacks(session: Session, server: str) -> list[WriteBack]:
    """Every write-back the store believes open on `server`, oldest first (what reconciliation checks)."""
    return list(
        session.scalars(
            select(WriteBack)
            .where(WriteBack.server == server, WriteBack.status == "open")
            .order_by(WriteBack.created_at, WriteBack.identifier)
        )
    )
