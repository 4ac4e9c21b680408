"""Units: staff users, roles and operation-log entries belong to an area.

``staff_users.area_id`` and ``roles.area_id`` name the unit that owns the row: only an
administrator whose data scope covers it sees or edits it. ``audit_log.area_id`` is the
entry's unit (the subject's area, else the acting user's). NULL means the company as a
whole, which only a whole-tree scope sees.

Existing users and roles move to the company root when there is exactly one root area
(else they stay NULL, the same "whole company" meaning); existing log entries stay NULL,
so only whole-tree administrators keep reading the history written before units existed.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_ONLY_ROOT = "(SELECT min(id) FROM areas WHERE parent_id IS NULL HAVING count(*) = 1)"


def upgrade() -> None:
    for table in ("staff_users", "roles"):
        op.add_column(table, sa.Column("area_id", sa.BigInteger(), nullable=True))
        op.create_foreign_key(op.f(f"fk_{table}_area_id_areas"), table, "areas", ["area_id"], ["id"])
        op.create_index(op.f(f"ix_{table}_area_id"), table, ["area_id"], unique=False)
        op.execute(f"UPDATE {table} SET area_id = {_ONLY_ROOT}")
    op.add_column("audit_log", sa.Column("area_id", sa.BigInteger(), nullable=True))
    op.create_index("ix_audit_log_area_at", "audit_log", ["area_id", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_audit_log_area_at", table_name="audit_log")
    op.drop_column("audit_log", "area_id")
    for table in ("roles", "staff_users"):
        op.drop_index(op.f(f"ix_{table}_area_id"), table_name=table)
        op.drop_constraint(op.f(f"fk_{table}_area_id_areas"), table, type_="foreignkey")
        op.drop_column(table, "area_id")
