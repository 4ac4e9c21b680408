"""Which handler has run for which event (replay for late handlers), and events by age
(the retention purge, replays by date).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "handled_events",
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("handler", sa.String(length=128), nullable=False),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["event_id"], ["domain_events.id"], name=op.f("fk_handled_events_event_id_domain_events"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("event_id", "handler", name=op.f("pk_handled_events")),
    )
    # Concurrently, outside the migration's transaction: a large outbox keeps taking
    # events (every business transaction writes one) while the index builds.
    with op.get_context().autocommit_block():
        op.create_index(op.f("ix_domain_events_created_at"), "domain_events", ["created_at"], postgresql_concurrently=True,
                        if_not_exists=True)


def downgrade() -> None:
    op.drop_index(op.f("ix_domain_events_created_at"), table_name="domain_events")
    op.drop_table("handled_events")
