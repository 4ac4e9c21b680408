"""The holiday calendar (issue 20, item 6): ``calendar_days`` (``backend.calendar.models``).

The table only: its rows are seeded by ``shuiwu holidays seed`` (the demo's step does the
same) from the ``chinese-calendar`` package, and loaded from an official file with
``shuiwu holidays load``, so this migration imports no application code.

Revision ID: 0038
Revises: 0037
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0038"
down_revision = "0037"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calendar_days",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("kind", sa.Enum("holiday", "workday", name="daykind", native_enum=False, create_constraint=True,
                                  length=32), nullable=False),
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("source", sa.Enum("package", "file", name="daysource", native_enum=False, create_constraint=True,
                                    length=32), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_calendar_days")),
    )


def downgrade() -> None:
    op.drop_table("calendar_days")
