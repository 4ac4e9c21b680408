"""A bill whose span crosses an annual tier cycle's start (issue 17's known limit, removed):
``bills.cycle_volume_m3`` (the part of the volume in the bill's own ``cycle_start``
cycle), ``bills.earlier_cycles`` (a split bill's earlier segments, NULL for a bill that
was not split) and ``bill_lines.cycle_start`` (which cycle's tiers a line is in).
``backend.billing.bills``' module docstring says how a span is split.

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("bills", sa.Column("cycle_volume_m3", sa.Numeric(precision=16, scale=4), nullable=True))
    op.add_column("bills", sa.Column("earlier_cycles", postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.execute("UPDATE bills SET cycle_volume_m3 = volume_m3")
    op.alter_column("bills", "cycle_volume_m3", nullable=False)
    op.create_check_constraint(op.f("ck_bills_cycle_volume_within_volume"), "bills", "cycle_volume_m3 BETWEEN 0 AND volume_m3")
    op.create_check_constraint(op.f("ck_bills_earlier_cycles_when_split"), "bills",
                               "earlier_cycles IS NOT NULL OR cycle_volume_m3 = volume_m3")
    op.add_column("bill_lines", sa.Column("cycle_start", sa.Date(), nullable=True))
    op.execute("UPDATE bill_lines l SET cycle_start = b.cycle_start FROM bills b WHERE b.id = l.bill_id")
    op.alter_column("bill_lines", "cycle_start", nullable=False)


def downgrade() -> None:
    op.drop_column("bill_lines", "cycle_start")
    op.drop_constraint(op.f("ck_bills_earlier_cycles_when_split"), "bills", type_="check")
    op.drop_constraint(op.f("ck_bills_cycle_volume_within_volume"), "bills", type_="check")
    op.drop_column("bills", "earlier_cycles")
    op.drop_column("bills", "cycle_volume_m3")
