"""Initial schema: poll cursors, therapy states, issued cards, feedback, write-backs, seen JWT ids."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "poll_cursors",
        sa.Column("server", sa.String(512), primary_key=True),
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("cursor", sa.String(40), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "therapy_states",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("server", sa.String(512), nullable=False),
        sa.Column("patient", sa.String(256), nullable=False),
        sa.Column("program", sa.String(64), nullable=False),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("current_line", sa.Integer, nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("report", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_therapy_states_patient", "therapy_states", ["server", "patient", "program", "id"])
    op.create_table(
        "issued_cards",
        sa.Column("uuid", sa.String(36), primary_key=True),
        sa.Column("service_id", sa.String(128), nullable=False),
        sa.Column("patient", sa.String(256), nullable=False),
        sa.Column("program", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("summary", sa.String(200), nullable=False),
        sa.Column("first_issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("times_issued", sa.Integer, nullable=False),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("service_id", sa.String(128), nullable=False),
        sa.Column("card_uuid", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("outcome_timestamp", sa.String(40), nullable=False),
        sa.Column("accepted_suggestions", sa.JSON, nullable=False),
        sa.Column("override_reason", sa.JSON, nullable=True),
        sa.Column("user_comment", sa.Text, nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("card_uuid", "outcome", "outcome_timestamp", name="uq_feedback_item"),
    )
    op.create_index("ix_feedback_card_uuid", "feedback", ["card_uuid"])
    op.create_table(
        "writebacks",
        sa.Column("identifier", sa.String(128), primary_key=True),
        sa.Column("server", sa.String(512), nullable=False),
        sa.Column("patient", sa.String(256), nullable=False),
        sa.Column("program", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("resources", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("close_reason", sa.String(200), nullable=True),
    )
    op.create_index("ix_writebacks_server", "writebacks", ["server"])
    op.create_index("ix_writebacks_patient", "writebacks", ["patient"])
    op.create_table(
        "seen_jti",
        sa.Column("jti", sa.String(256), primary_key=True),
        sa.Column("issuer", sa.String(512), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_seen_jti_expires_at", "seen_jti", ["expires_at"])


def downgrade() -> None:
    for table in ("seen_jti", "writebacks", "feedback", "issued_cards", "therapy_states", "poll_cursors"):
        op.drop_table(table)
