"""Tables of the store; the schema is created and changed only by the Alembic migrations beside this file."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Date, DateTime, Index, Integer, String, Text, UniqueConstraint
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
    """One evaluation of one patient in one program; the latest row per (server, patient, program) is current."""

    __tablename__ = "therapy_states"
    __table_args__ = (Index("ix_therapy_states_patient", "server", "patient", "program", "id"),)
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


class IssuedCard(Base):
    """A card we answered with; feedback names only the card uuid, so this keeps its rule for metrics."""

    __tablename__ = "issued_cards"
    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(128))
    patient: Mapped[str] = mapped_column(String(256))
    program: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(128))
    summary: Mapped[str] = mapped_column(String(200))
    first_issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    times_issued: Mapped[int] = mapped_column(Integer, default=1)


class Feedback(Base):
    """CDS Hooks feedback on a card (accepted / overridden); duplicates of the same item are stored once."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("card_uuid", "outcome", "outcome_timestamp", name="uq_feedback_item"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service_id: Mapped[str] = mapped_column(String(128))
    card_uuid: Mapped[str] = mapped_column(String(64), index=True)
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
    """JWT ids already used by CDS clients, kept until the token expires (replay protection)."""

    __tablename__ = "seen_jti"
    jti: Mapped[str] = mapped_column(String(256), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(512))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
