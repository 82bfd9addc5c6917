"""Several pollers on one store: lease rows per (server, patient) or per server; therapy states chained per patient.

`poll_leases` holds who evaluates what: one row per (server, patient) on PostgreSQL, one row per server (patient
"*") on SQLite, claimed with an atomic upsert. `therapy_states.follows` is the id of the state a row follows (0 for
the first), unique per (server, patient, program): two pollers that read the same latest state cannot both append
after it. Repeats that racing pollers already stored (a state equal to the one before it) are dropped first.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "poll_leases",
        sa.Column("server", sa.String(512), primary_key=True),
        sa.Column("patient", sa.String(256), primary_key=True),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column("therapy_states", sa.Column("follows", sa.Integer, nullable=False, server_default="0"))
    op.execute(
        "DELETE FROM therapy_states WHERE id IN (SELECT id FROM (SELECT id, fingerprint, LAG(fingerprint) OVER"
        " (PARTITION BY server, patient, program ORDER BY id) AS before FROM therapy_states) AS chained"
        " WHERE before = fingerprint)"
    )
    op.execute(
        "UPDATE therapy_states SET follows = COALESCE((SELECT MAX(p.id) FROM therapy_states p"
        " WHERE p.server = therapy_states.server AND p.patient = therapy_states.patient"
        " AND p.program = therapy_states.program AND p.id < therapy_states.id), 0)"
    )
    op.create_index(
        "uq_therapy_states_follows", "therapy_states", ["server", "patient", "program", "follows"], unique=True
    )


def downgrade() -> None:
    op.drop_index("uq_therapy_states_follows", "therapy_states")
    op.drop_column("therapy_states", "follows")
    op.drop_table("poll_leases")
