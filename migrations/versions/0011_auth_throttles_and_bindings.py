"""Auth hardening: login failures per username and source, the shared throttle table,
and household bindings that need proof.

- ``login_failures`` is keyed by (username, source): a stranger's guesses lock only the
  stranger's address. Existing counts are dropped (they are minutes-long bookkeeping).
- ``auth_throttle``: one row per throttle key and minute, upserted by every API process.
- ``resident_households.is_owner``: the resident proved they hold the household's
  registered phone. Existing bindings count as the owner's only where the resident's
  login phone is that phone; the others stay bound but cannot approve tenants.
- ``household_bindings``: requests waiting for a code, an owner or the counter.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM login_failures")
    op.add_column("login_failures", sa.Column("source", sa.String(length=64), server_default="", nullable=False))
    op.drop_constraint("pk_login_failures", "login_failures", type_="primary")
    op.create_primary_key("pk_login_failures", "login_failures", ["username", "source"])
    op.create_index(op.f("ix_login_failures_last_failed_at"), "login_failures", ["last_failed_at"], unique=False)

    op.create_table(
        "auth_throttle",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", "minute", name=op.f("pk_auth_throttle")),
    )
    op.create_index(op.f("ix_auth_throttle_minute"), "auth_throttle", ["minute"], unique=False)

    op.add_column("resident_households", sa.Column("is_owner", sa.Boolean(), server_default="false", nullable=False))
    op.execute(
        "UPDATE resident_households rh SET is_owner = true FROM residents r, households h "
        "WHERE r.id = rh.resident_id AND h.id = rh.household_id AND h.phone = r.phone"
    )

    op.create_table(
        "household_bindings",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("resident_id", sa.BigInteger(), nullable=False),
        sa.Column("household_id", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Enum("pending", "active", "rejected", "unbound", name="bindingstate", native_enum=False,
                                   create_constraint=True, length=32), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=True),
        sa.Column("code_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("code_attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(["household_id"], ["households.id"], name=op.f("fk_household_bindings_household_id_households")),
        sa.ForeignKeyConstraint(["resident_id"], ["residents.id"], name=op.f("fk_household_bindings_resident_id_residents"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_household_bindings")),
    )
    op.create_index(op.f("ix_household_bindings_household_id"), "household_bindings", ["household_id"], unique=False)
    op.create_index("uq_household_bindings_pending", "household_bindings", ["resident_id", "household_id"], unique=True,
                    postgresql_where=sa.text("state = 'pending'"))


def downgrade() -> None:
    op.drop_index("uq_household_bindings_pending", table_name="household_bindings", postgresql_where=sa.text("state = 'pending'"))
    op.drop_index(op.f("ix_household_bindings_household_id"), table_name="household_bindings")
    op.drop_table("household_bindings")
    op.drop_column("resident_households", "is_owner")
    op.drop_index(op.f("ix_auth_throttle_minute"), table_name="auth_throttle")
    op.drop_table("auth_throttle")
    op.drop_index(op.f("ix_login_failures_last_failed_at"), table_name="login_failures")
    op.execute("DELETE FROM login_failures")
    op.drop_constraint("pk_login_failures", "login_failures", type_="primary")
    op.drop_column("login_failures", "source")
    op.create_primary_key("pk_login_failures", "login_failures", ["username"])
