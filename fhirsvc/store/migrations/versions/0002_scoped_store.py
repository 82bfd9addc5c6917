"""Scoped store: issued cards and feedback carry client, FHIR server, patient and clinician; jti unique per issuer.

Until now a card's uuid was its finding's id; old rows keep theirs, as both uuid and finding id.
Rows written before this revision carry no client, server or clinician: they get the marker `urn:fhirsvc:unknown`,
which no request ever has, so old overrides (global by card uuid) no longer hide a card from anyone. Each table is
copied into its new shape (SQLite cannot change a primary key in place; one path for both databases).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UNKNOWN = "urn:fhirsvc:unknown"  # a literal, not imported: a migration stays as it was written


def upgrade() -> None:
    _issued_cards()
    _feedback()
    _seen_jti()


def _issued_cards() -> None:
    op.create_table(
        "issued_cards_v2",
        sa.Column("uuid", sa.String(36), primary_key=True),
        sa.Column("finding_id", sa.String(36), nullable=False),
        sa.Column("client", sa.String(512), nullable=False),
        sa.Column("server", sa.String(512), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("service_id", sa.String(128), nullable=False),
        sa.Column("patient", sa.String(256), nullable=False),
        sa.Column("program", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("summary", sa.String(200), nullable=False),
        sa.Column("first_issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("times_issued", sa.Integer, nullable=False),
    )
    op.execute(
        sa.text(
            "INSERT INTO issued_cards_v2 (uuid, finding_id, client, server, user_id, service_id, patient, program,"
            " rule, summary, first_issued_at, last_issued_at, times_issued)"
            " SELECT uuid, uuid, :unknown, :unknown, :unknown, service_id, patient, program, rule, summary,"
            " first_issued_at, last_issued_at, times_issued FROM issued_cards"
        ).bindparams(unknown=UNKNOWN)
    )
    op.drop_table("issued_cards")
    op.rename_table("issued_cards_v2", "issued_cards")
    op.create_index("ix_issued_cards_finding_id", "issued_cards", ["finding_id"])


def _feedback() -> None:
    op.create_table(
        "feedback_v2",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("service_id", sa.String(128), nullable=False),
        sa.Column("card_uuid", sa.String(64), nullable=False),
        sa.Column("finding_id", sa.String(36), nullable=False),
        sa.Column("client", sa.String(512), nullable=False),
        sa.Column("server", sa.String(512), nullable=False),
        sa.Column("patient", sa.String(256), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("outcome_timestamp", sa.String(40), nullable=False),
        sa.Column("accepted_suggestions", sa.JSON, nullable=False),
        sa.Column("override_reason", sa.JSON, nullable=True),
        sa.Column("user_comment", sa.Text, nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    # The patient is known from the card's old row (one per uuid); everything else is the marker.
    op.execute(
        sa.text(
            "INSERT INTO feedback_v2 (id, service_id, card_uuid, finding_id, client, server, patient, user_id,"
            " outcome, outcome_timestamp, accepted_suggestions, override_reason, user_comment, received_at)"
            " SELECT f.id, f.service_id, f.card_uuid, f.card_uuid, :unknown, :unknown,"
            " COALESCE((SELECT c.patient FROM issued_cards c WHERE c.uuid = f.card_uuid LIMIT 1), :unknown),"
            " :unknown, f.outcome, f.outcome_timestamp, f.accepted_suggestions, f.override_reason, f.user_comment,"
            " f.received_at FROM feedback f"
        ).bindparams(unknown=UNKNOWN)
    )
    op.drop_table("feedback")
    op.rename_table("feedback_v2", "feedback")
    if op.get_bind().dialect.name == "postgresql":
        # The copied ids keep their values; the renamed table's sequence must continue after them.
        op.execute(
            "SELECT setval(pg_get_serial_sequence('feedback', 'id'), COALESCE((SELECT MAX(id) FROM feedback), 0) + 1,"
            " false)"
        )
    op.create_index("ix_feedback_card_uuid", "feedback", ["card_uuid"])
    op.create_index("ix_feedback_scope", "feedback", ["client", "server", "patient", "finding_id"])
    op.create_index(
        "uq_feedback_item", "feedback", ["client", "card_uuid", "outcome", "outcome_timestamp"], unique=True
    )


def _seen_jti() -> None:
    op.create_table(
        "seen_jti_v2",
        sa.Column("issuer", sa.String(512), primary_key=True),
        sa.Column("jti", sa.String(256), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute("INSERT INTO seen_jti_v2 (issuer, jti, expires_at) SELECT issuer, jti, expires_at FROM seen_jti")
    op.drop_table("seen_jti")
    op.rename_table("seen_jti_v2", "seen_jti")
    op.create_index("ix_seen_jti_expires_at", "seen_jti", ["expires_at"])


def downgrade() -> None:
    raise NotImplementedError("0002 is not reversible: scoped rows cannot be merged back into global ones")
