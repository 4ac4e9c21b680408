"""The open day moves onto ``latest_readings``; ``daily_usage`` becomes a view.

Ingest rewrote two rows per meter and batch: the meter's ``latest_readings`` row and its
newest ``daily_usage`` day. The newest day now lives on the ``latest_readings`` row
(one row update per meter and batch), ``daily_usage`` is renamed ``daily_usage_closed``
and holds the days before it, and the view ``daily_usage`` is both, so every reader
keeps reading one rollup. ``latest_readings.estimated`` marks meters that may have
estimated readings, so ingest looks for estimates to supersede only there.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_DAY_COLUMNS = (
    "meter_id, day, first_at, first_total, last_at, last_total, effective_total, opening_effective, usage_m3,"
    " reading_count, register_wraps, rollover, reverse_flow"
)

VIEW = f"""
CREATE VIEW daily_usage AS
SELECT {_DAY_COLUMNS} FROM daily_usage_closed
UNION ALL
SELECT meter_id, day, first_at, first_total, read_at AS last_at, total_m3 AS last_total, effective_total,
       opening_effective, usage_m3, reading_count, register_wraps, rollover, reverse_flow
FROM latest_readings WHERE day IS NOT NULL
"""


def upgrade() -> None:
    op.execute("ALTER TABLE daily_usage RENAME TO daily_usage_closed")
    op.execute("ALTER TABLE daily_usage_closed RENAME CONSTRAINT pk_daily_usage TO pk_daily_usage_closed")
    op.execute("ALTER INDEX ix_daily_usage_day RENAME TO ix_daily_usage_closed_day")
    op.add_column("latest_readings", sa.Column("day", sa.Date(), nullable=True))
    op.add_column("latest_readings", sa.Column("first_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("latest_readings", sa.Column("first_total", sa.Numeric(16, 4), nullable=True))
    op.add_column("latest_readings", sa.Column("effective_total", sa.Numeric(20, 4), nullable=True))
    op.add_column("latest_readings", sa.Column("opening_effective", sa.Numeric(20, 4), nullable=True))
    op.add_column("latest_readings", sa.Column("usage_m3", sa.Numeric(16, 4), nullable=True))
    op.add_column("latest_readings", sa.Column("reading_count", sa.Integer(), nullable=True))
    op.add_column("latest_readings", sa.Column("register_wraps", sa.Integer(), server_default="0", nullable=False))
    op.add_column("latest_readings", sa.Column("rollover", sa.Boolean(), server_default="false", nullable=False))
    op.add_column("latest_readings", sa.Column("reverse_flow", sa.Boolean(), server_default="false", nullable=False))
    op.add_column("latest_readings", sa.Column("estimated", sa.Boolean(), server_default="false", nullable=False))
    # Each meter's newest day moves onto its latest reading's row.
    op.execute("""
        WITH newest AS (
            DELETE FROM daily_usage_closed c
            USING (SELECT meter_id, max(day) AS day FROM daily_usage_closed d
                   WHERE EXISTS (SELECT FROM latest_readings l WHERE l.meter_id = d.meter_id)
                   GROUP BY meter_id) n
            WHERE c.meter_id = n.meter_id AND c.day = n.day
            RETURNING c.*
        )
        UPDATE latest_readings l SET day = n.day, first_at = n.first_at, first_total = n.first_total,
            effective_total = n.effective_total, opening_effective = n.opening_effective, usage_m3 = n.usage_m3,
            reading_count = n.reading_count, register_wraps = n.register_wraps, rollover = n.rollover,
            reverse_flow = n.reverse_flow
        FROM newest n WHERE l.meter_id = n.meter_id
    """)
    op.execute("""
        UPDATE latest_readings l SET estimated = true
        WHERE EXISTS (SELECT FROM readings r WHERE r.meter_id = l.meter_id AND r.quality = 'estimated')
    """)
    op.execute(VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW daily_usage")
    op.execute(f"""
        INSERT INTO daily_usage_closed ({_DAY_COLUMNS})
        SELECT meter_id, day, first_at, first_total, read_at, total_m3, effective_total, opening_effective, usage_m3,
               reading_count, register_wraps, rollover, reverse_flow
        FROM latest_readings WHERE day IS NOT NULL
    """)
    for column in ("estimated", "reverse_flow", "rollover", "register_wraps", "reading_count", "usage_m3",
                   "opening_effective", "effective_total", "first_total", "first_at", "day"):
        op.drop_column("latest_readings", column)
    op.execute("ALTER INDEX ix_daily_usage_closed_day RENAME TO ix_daily_usage_day")
    op.execute("ALTER TABLE daily_usage_closed RENAME CONSTRAINT pk_daily_usage_closed TO pk_daily_usage")
    op.execute("ALTER TABLE daily_usage_closed RENAME TO daily_usage")
