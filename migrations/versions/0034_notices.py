"""Notices (issue 19, 公告 / 物业通知): the notices, their audience (areas, households) and
residents' read receipts (``backend.notifications.notices_models``).

Revision ID: 0034_notices
Revises: 0030
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0034"
down_revision = "0033"
branch_labels = None
depends_on = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def upgrade() -> None:
    op.create_table(
        "notices",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("title", sa.String(length=100), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("image_key", sa.String(length=200), nullable=True),
        sa.Column("audience", _enum("noticeaudience", "all", "areas", "households"), nullable=False),
        sa.Column("state", _enum("noticestate", "draft", "scheduled", "published", "withdrawn"), nullable=False),
        sa.Column("publish_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("published_by", sa.String(length=100), nullable=True),
        sa.Column("withdrawn_by", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notices")),
    )
    op.create_index("ix_notices_published", "notices", ["published_at"], unique=False,
                    postgresql_where=sa.text("state = 'published'"))
    op.create_index("ix_notices_scheduled", "notices", ["publish_at"], unique=False,
                    postgresql_where=sa.text("state = 'scheduled'"))
    op.create_table(
        "notice_areas",
        sa.Column("notice_id", sa.BigInteger(), nullable=False),
        sa.Column("area_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["notice_id"], ["notices.id"], name=op.f("fk_notice_areas_notice_id_notices"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["area_id"], ["areas.id"], name=op.f("fk_notice_areas_area_id_areas")),
        sa.PrimaryKeyConstraint("notice_id", "area_id", name=op.f("pk_notice_areas")),
    )
    op.create_index(op.f("ix_notice_areas_area_id"), "notice_areas", ["area_id"], unique=False)
    op.create_table(
        "notice_households",
        sa.Column("notice_id", sa.BigInteger(), nullable=False),
        sa.Column("household_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["notice_id"], ["notices.id"], name=op.f("fk_notice_households_notice_id_notices"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["household_id"], ["households.id"],
                                name=op.f("fk_notice_households_household_id_households")),
        sa.PrimaryKeyConstraint("notice_id", "household_id", name=op.f("pk_notice_households")),
    )
    op.create_index(op.f("ix_notice_households_household_id"), "notice_households", ["household_id"], unique=False)
    op.create_table(
        "notice_reads",
        sa.Column("notice_id", sa.BigInteger(), nullable=False),
        sa.Column("resident_id", sa.BigInteger(), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["notice_id"], ["notices.id"], name=op.f("fk_notice_reads_notice_id_notices"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["resident_id"], ["residents.id"], name=op.f("fk_notice_reads_resident_id_residents"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("notice_id", "resident_id", name=op.f("pk_notice_reads")),
    )
    op.create_index(op.f("ix_notice_reads_resident_id"), "notice_reads", ["resident_id"], unique=False)


def downgrade() -> None:
    op.drop_table("notice_reads")
    op.drop_table("notice_households")
    op.drop_table("notice_areas")
    op.drop_index("ix_notices_scheduled", table_name="notices")
    op.drop_index("ix_notices_published", table_name="notices")
    op.drop_table("notices")
