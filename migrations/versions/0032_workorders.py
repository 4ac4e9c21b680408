"""Work orders (issue 19, 报修工单): ``work_orders``, ``work_order_transitions`` and
``work_order_photos`` (``backend.workorders.models``).

Revision ID: 0032
Revises: 0030 (the merger re-chains it after notifications' 0031)
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0032"
down_revision = "0031"
branch_labels = None
depends_on = None

# Copied from backend.workorders.models, as a migration must not change when the code does.
_CATEGORIES = ("leak", "meter_fault", "no_water", "water_quality", "billing_query", "other")
_STATES = ("submitted", "assigned", "on_the_way", "in_progress", "resolved", "confirmed", "closed", "cancelled")
_SOURCES = ("resident", "staff", "system")
_ACTORS = ("resident", "staff", "system")
_STAGES = ("report", "result")


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def _tz() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "work_orders",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("number", sa.String(32), nullable=False),
        sa.Column("household_id", sa.BigInteger(), nullable=False),
        sa.Column("area_path", sa.String(400), nullable=False),
        sa.Column("category", _enum("workordercategory", *_CATEGORIES), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("contact_name", sa.String(100), nullable=False),
        sa.Column("contact_phone", sa.String(20), nullable=False),
        sa.Column("appointment_at", _tz(), nullable=True),
        sa.Column("source", _enum("workordersource", *_SOURCES), nullable=False),
        sa.Column("created_by_kind", _enum("actorkind", *_ACTORS), nullable=False),
        sa.Column("created_by_id", sa.BigInteger(), nullable=True),
        sa.Column("state", _enum("workorderstate", *_STATES), nullable=False),
        sa.Column("assignee_id", sa.BigInteger(), nullable=True),
        sa.Column("response_due_at", _tz(), nullable=False),
        sa.Column("resolve_due_at", _tz(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("materials", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"),
                  nullable=False),
        sa.Column("rating", sa.SmallInteger(), nullable=True),
        sa.Column("rating_comment", sa.Text(), nullable=True),
        sa.Column("created_at", _tz(), nullable=False),
        sa.Column("assigned_at", _tz(), nullable=True),
        sa.Column("started_at", _tz(), nullable=True),
        sa.Column("resolved_at", _tz(), nullable=True),
        sa.Column("confirmed_at", _tz(), nullable=True),
        sa.Column("closed_at", _tz(), nullable=True),
        sa.Column("cancelled_at", _tz(), nullable=True),
        sa.Column("updated_at", _tz(), nullable=False),
        sa.CheckConstraint("rating IS NULL OR rating BETWEEN 1 AND 5", name=op.f("ck_work_orders_rating_range")),
        sa.ForeignKeyConstraint(["household_id"], ["households.id"], name=op.f("fk_work_orders_household_id_households")),
        sa.ForeignKeyConstraint(["assignee_id"], ["staff_users.id"], name=op.f("fk_work_orders_assignee_id_staff_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_work_orders")),
        sa.UniqueConstraint("number", name=op.f("uq_work_orders_number")),
    )
    op.create_index("ix_work_orders_area_path", "work_orders", ["area_path"],
                    postgresql_ops={"area_path": "text_pattern_ops"})
    op.create_index("ix_work_orders_state", "work_orders", ["state"])
    op.create_index("ix_work_orders_assignee_id", "work_orders", ["assignee_id"])
    op.create_index("ix_work_orders_household_id", "work_orders", ["household_id"])
    op.create_index("ix_work_orders_created_at", "work_orders", ["created_at"])
    op.create_table(
        "work_order_transitions",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("work_order_id", sa.BigInteger(), nullable=False),
        sa.Column("from_state", _enum("fromstate", *_STATES), nullable=True),
        sa.Column("to_state", _enum("workorderstate", *_STATES), nullable=False),
        sa.Column("actor_kind", _enum("actorkind", *_ACTORS), nullable=False),
        sa.Column("actor_id", sa.BigInteger(), nullable=True),
        sa.Column("actor_name", sa.String(100), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("at", _tz(), nullable=False),
        sa.ForeignKeyConstraint(["work_order_id"], ["work_orders.id"], ondelete="CASCADE",
                                name=op.f("fk_work_order_transitions_work_order_id_work_orders")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_work_order_transitions")),
    )
    op.create_index("ix_work_order_transitions_work_order_id", "work_order_transitions", ["work_order_id", "id"])
    op.create_table(
        "work_order_photos",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("work_order_id", sa.BigInteger(), nullable=False),
        sa.Column("stage", _enum("photostage", *_STAGES), nullable=False),
        sa.Column("file_key", sa.String(255), nullable=False),
        sa.Column("thumbnail_key", sa.String(255), nullable=False),
        sa.Column("uploaded_by_kind", _enum("actorkind", *_ACTORS), nullable=False),
        sa.Column("uploaded_by_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", _tz(), nullable=False),
        sa.ForeignKeyConstraint(["work_order_id"], ["work_orders.id"], ondelete="CASCADE",
                                name=op.f("fk_work_order_photos_work_order_id_work_orders")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_work_order_photos")),
    )
    op.create_index("ix_work_order_photos_work_order_id", "work_order_photos", ["work_order_id"])


def downgrade() -> None:
    op.drop_table("work_order_photos")
    op.drop_table("work_order_transitions")
    op.drop_table("work_orders")
