"""Store queries: issued cards, feedback and suppression, therapy-state history, poll cursors, write-backs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, date, datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import Connection, Insert, Table, bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fhirsvc.store.models import Feedback, IssuedCard, PollCursor, TherapyState, WriteBack


def now() -> datetime:
    return datetime.now(UTC)


def record_issued_cards(
    session: Session | Connection, service_id: str, patient: str, cards: Iterable[tuple[str, str, str, str]]
) -> None:
    """Remember (uuid, program, rule, summary) of each card answered, so feedback can be counted per rule.

    One upsert statement for all of a response's cards: this runs on every CDS call, and per-card ORM loads and
    flushes were a fifth of a call's CPU under load (bench/README.md).
    """
    stamp = now()
    rows: dict[str, dict[str, Any]] = {}
    for uuid, program, rule, summary in cards:
        rows.setdefault(
            uuid,
            {
                "uuid": uuid,
                "service_id": service_id,
                "patient": patient,
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
    Feedback.card_uuid, Feedback.outcome_timestamp, Feedback.override_reason, Feedback.user_comment
).where(Feedback.card_uuid.in_(bindparam("uuids", expanding=True)), Feedback.outcome == "overridden")


def suppressed(session: Session | Connection, uuids: Iterable[str], since: datetime) -> set[str]:
    """Cards overridden with a reason (coded or a comment) at or after `since`: not shown again until then."""
    wanted = list(uuids)
    if not wanted:
        return set()
    rows = session.execute(_OVERRIDES, {"uuids": wanted}).all()
    hidden = set()
    for uuid, stamp, reason, comment in rows:
        when = _parse_instant(stamp)
        if (reason or comment) and when is not None and when >= since:
            hidden.add(uuid)
    return hidden


def _parse_instant(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def save_feedback(session: Session, service_id: str, items: list[dict[str, Any]]) -> tuple[int, int]:
    """Store feedback items; the same item sent twice (clients retry) is kept once. Returns (stored, duplicates)."""
    stored = duplicates = 0
    for item in items:
        row = Feedback(
            service_id=service_id,
            card_uuid=item["card"],
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
    return stored, duplicates


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
    """Append a state when it differs from the latest one; True when something changed."""
    latest = latest_state(session, server, patient, program)
    if latest is not None and latest.fingerprint == fingerprint:
        return False
    statuses = [a["status"] for a in report.get("assessments", [])]
    session.add(
        TherapyState(
            server=server,
            patient=patient,
            program=program,
            as_of=as_of,
            current_line=report.get("current_line"),
            status=most_urgent(statuses),
            fingerprint=fingerprint,
            report=report,
            created_at=now(),
        )
    )
    return True


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


def open_writebacks(session: Session, server: str, patient: str) -> list[WriteBack]:
    return list(
        session.scalars(
            select(WriteBack).where(
                WriteBack.server == server, WriteBack.patient == patient, WriteBack.status == "open"
            )
        )
    )
