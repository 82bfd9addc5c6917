"""Tables of the store; the schema is created and changed only by the Alembic migrations beside this file."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Date, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class PollCursor(Base):
    """How far the poller has read one resource type on one server (`_lastUpdated`, server time)."""

    __tablename__ = "poll_cursors"
    server: Mapped[str] = mapped_column(String(512), primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    cursor: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TherapyState(Base):
    """One evaluation of one patient in one program; the latest row per (server, patient, program) is current.

    `follows` is the id of the state this one follows (0 for the first), unique per (server, patient, program): of
    two pollers that read the same latest state, only one appends after it."""

    __tablename__ = "therapy_states"
    __table_args__ = (
        Index("ix_therapy_states_patient", "server", "patient", "program", "id"),
        Index("uq_therapy_states_follows", "server", "patient", "program", "follows", unique=True),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    server: Mapped[str] = mapped_column(String(512))
    patient: Mapped[str] = mapped_column(String(256))
    program: Mapped[str] = mapped_column(String(64))
    as_of: Mapped[date] = mapped_column(Date)
    current_line: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(32))
    fingerprint: Mapped[str] = mapped_column(String(64))
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    follows: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class PollLease(Base):
    """Who evaluates what: a patient of a server (PostgreSQL) or a whole server (SQLite, patient "*").

    Held by `owner` until `expires_at`; `done_at` marks a finished evaluation, so a poller whose cycle began before
    `claimed_at` knows the patient was read after its own change search and does not evaluate it again."""

    __tablename__ = "poll_leases"
    server: Mapped[str] = mapped_column(String(512), primary_key=True)
    patient: Mapped[str] = mapped_column(String(256), primary_key=True)
    owner: Mapped[str] = mapped_column(String(256))
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class IssuedCard(Base):
    """A card we answered with, and to whom: feedback names only the card uuid, so this row scopes it (client,
    server, patient, clinician), names the finding behind it and keeps its rule for metrics. A card uuid is derived
    from the finding and its audience, so one row per uuid is one audience."""

    __tablename__ = "issued_cards"
    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    finding_id: Mapped[str] = mapped_column(String(36), index=True)
    client: Mapped[str] = mapped_column(String(512))  # the JWT `iss` it was issued to
    server: Mapped[str] = mapped_column(String(512))  # the FHIR server identity
    user_id: Mapped[str] = mapped_column(String(256))  # context.userId of the request
    service_id: Mapped[str] = mapped_column(String(128))
    patient: Mapped[str] = mapped_column(String(256))
    program: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(128))
    summary: Mapped[str] = mapped_column(String(200))
    first_issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    times_issued: Mapped[int] = mapped_column(Integer, default=1)


class Feedback(Base):
    """CDS Hooks feedback on a card (accepted / overridden), scoped like the card it names; duplicates of the same
    item from the same client are stored once."""

    __tablename__ = "feedback"
    __table_args__ = (
        Index("uq_feedback_item", "client", "card_uuid", "outcome", "outcome_timestamp", unique=True),
        Index("ix_feedback_scope", "client", "server", "patient", "finding_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service_id: Mapped[str] = mapped_column(String(128))
    card_uuid: Mapped[str] = mapped_column(String(64), index=True)
    finding_id: Mapped[str] = mapped_column(String(36))
    client: Mapped[str] = mapped_column(String(512))
    server: Mapped[str] = mapped_column(String(512))
    patient: Mapped[str] = mapped_column(String(256))
    user_id: Mapped[str] = mapped_column(String(256))
    outcome: Mapped[str] = mapped_column(String(16))
    outcome_timestamp: Mapped[str] = mapped_column(String(40))
    accepted_suggestions: Mapped[list[Any]] = mapped_column(JSON, default=list)
    override_reason: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    user_comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WriteBack(Base):
    """Resources written to a FHIR server for one finding; `identifier` is derived from the finding itself."""

    __tablename__ = "writebacks"
    identifier: Mapped[str] = mapped_column(String(128), primary_key=True)
    server: Mapped[str] = mapped_column(String(512), index=True)
    patient: Mapped[str] = mapped_column(String(256), index=True)
    program: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # open | closed
    resources: Mapped[dict[str, str]] = mapped_column(JSON)  # resource type → server reference
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    close_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)


class SeenJti(Base):
    """JWT ids already used by CDS clients, kept until the token expires (replay protection). A jti is unique only
    per issuer (RFC 7519 §4.1.7), so the key is the pair."""

    __tablename__ = "seen_jti"
    issuer: Mapped[str] = mapped_column(String(512), primary_key=True)
    jti: Mapped[str] = mapped_column(String(256), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
