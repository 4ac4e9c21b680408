"""Remote control and patrol reads (issue 20, 远程控制 / 巡测): ``remote_commands`` (the
field-command queue), ``link_leases``, ``patrol_tasks``, ``patrol_runs`` and
``execution_passwords`` (``backend.remote.models``).

Revision ID: 0037
Revises: 0036
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0037"
down_revision = "0036"
branch_labels = None
depends_on = None

# Copied from backend.remote.models, as a migration must not change when the code does.
_KINDS = ("read_now", "valve_open", "valve_close", "read_params", "set_params", "backfill", "remote_switch",
          "sync_clock", "download_meter_list", "write_purchase")
_STATES = ("queued", "pending_delivery", "sent", "succeeded", "failed", "timed_out")
_FAILURES = ("timeout", "bad_frame", "device_error", "link_down")
_ISSUERS = ("staff", "system")
_RUN_STATES = ("running", "finished", "interrupted")
_READINGS = ("current", "history")


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def _tz() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "patrol_tasks",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("unit_id", sa.BigInteger(), nullable=True),
        sa.Column("area_ids", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"),
                  nullable=False),
        sa.Column("concentrator_ids", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"),
                  nullable=False),
        sa.Column("meter_ids", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"),
                  nullable=False),
        sa.Column("schedule", sa.String(100), nullable=False),
        sa.Column("reading", _enum("patrolreading", *_READINGS), nullable=False),
        sa.Column("time_limit_s", sa.Integer(), server_default="30", nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default="true", nullable=False),
        sa.Column("created_by_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", _tz(), nullable=False),
        sa.Column("updated_at", _tz(), nullable=False),
        sa.ForeignKeyConstraint(["unit_id"], ["areas.id"], name=op.f("fk_patrol_tasks_unit_id_areas")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patrol_tasks")),
    )
    op.create_index("ix_patrol_tasks_enabled", "patrol_tasks", ["id"], postgresql_where=sa.text("enabled"))
    op.create_table(
        "patrol_runs",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=False),
        sa.Column("due_at", _tz(), nullable=False),
        sa.Column("state", _enum("patrolrunstate", *_RUN_STATES), nullable=False),
        sa.Column("meters_total", sa.Integer(), server_default="0", nullable=False),
        sa.Column("meters_read", sa.Integer(), server_default="0", nullable=False),
        sa.Column("meters_failed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("started_at", _tz(), nullable=False),
        sa.Column("finished_at", _tz(), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["patrol_tasks.id"], ondelete="CASCADE",
                                name=op.f("fk_patrol_runs_task_id_patrol_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patrol_runs")),
    )
    op.create_index("uq_patrol_runs_task_minute", "patrol_runs", ["task_id", "due_at"], unique=True)
    op.create_index("ix_patrol_runs_running", "patrol_runs", ["id"], postgresql_where=sa.text("state = 'running'"))
    op.create_table(
        "remote_commands",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.UUID(), nullable=False),
        sa.Column("meter_id", sa.BigInteger(), nullable=False),
        sa.Column("concentrator_id", sa.BigInteger(), nullable=True),
        sa.Column("link", sa.String(64), nullable=False),
        sa.Column("area_path", sa.String(400), nullable=False),
        sa.Column("kind", _enum("commandkind", *_KINDS), nullable=False),
        sa.Column("params", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"),
                  nullable=False),
        sa.Column("state", _enum("commandstate", *_STATES), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default="3", nullable=False),
        sa.Column("time_limit_s", sa.Integer(), server_default="30", nullable=False),
        sa.Column("deadline", _tz(), nullable=False),
        sa.Column("issued_by_kind", _enum("issuerkind", *_ISSUERS), nullable=False),
        sa.Column("issued_by_id", sa.BigInteger(), nullable=True),
        sa.Column("issued_by_name", sa.String(100), nullable=False),
        sa.Column("claimed_by", sa.String(100), nullable=True),
        sa.Column("reply", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("failure_kind", _enum("failurekind", *_FAILURES), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("follows_id", sa.BigInteger(), nullable=True),
        sa.Column("patrol_run_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", _tz(), nullable=False),
        sa.Column("sent_at", _tz(), nullable=True),
        sa.Column("finished_at", _tz(), nullable=True),
        sa.Column("updated_at", _tz(), nullable=False),
        sa.CheckConstraint("attempts >= 0 AND max_attempts >= 1", name=op.f("ck_remote_commands_attempts_range")),
        sa.CheckConstraint("time_limit_s BETWEEN 1 AND 604800", name=op.f("ck_remote_commands_time_limit_range")),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name=op.f("fk_remote_commands_meter_id_meters")),
        sa.ForeignKeyConstraint(["concentrator_id"], ["concentrators.id"],
                                name=op.f("fk_remote_commands_concentrator_id_concentrators")),
        sa.ForeignKeyConstraint(["follows_id"], ["remote_commands.id"],
                                name=op.f("fk_remote_commands_follows_id_remote_commands")),
        sa.ForeignKeyConstraint(["patrol_run_id"], ["patrol_runs.id"], ondelete="SET NULL",
                                name=op.f("fk_remote_commands_patrol_run_id_patrol_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_remote_commands")),
    )
    op.create_index("ix_remote_commands_queued", "remote_commands", ["link", "id"],
                    postgresql_where=sa.text("state = 'queued'"))
    op.create_index("ix_remote_commands_open_deadline", "remote_commands", ["deadline"],
                    postgresql_where=sa.text("state IN ('queued', 'pending_delivery', 'sent')"))
    op.create_index("ix_remote_commands_batch_id", "remote_commands", ["batch_id"])
    op.create_index("ix_remote_commands_meter_id", "remote_commands", ["meter_id", "id"])
    op.create_index("ix_remote_commands_patrol_run_id", "remote_commands", ["patrol_run_id"])
    op.create_index("ix_remote_commands_area_path", "remote_commands", ["area_path"],
                    postgresql_ops={"area_path": "text_pattern_ops"})
    op.create_table(
        "link_leases",
        sa.Column("link", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(100), nullable=False),
        sa.Column("expires_at", _tz(), nullable=False),
        sa.Column("taken_at", _tz(), nullable=False),
        sa.Column("renewed_at", _tz(), nullable=False),
        sa.PrimaryKeyConstraint("link", name=op.f("pk_link_leases")),
    )
    op.create_table(
        "execution_passwords",
        sa.Column("staff_user_id", sa.BigInteger(), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("failed_attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("locked_at", _tz(), nullable=True),
        sa.Column("set_at", _tz(), nullable=False),
        sa.Column("updated_at", _tz(), nullable=False),
        sa.ForeignKeyConstraint(["staff_user_id"], ["staff_users.id"], ondelete="CASCADE",
                                name=op.f("fk_execution_passwords_staff_user_id_staff_users")),
        sa.PrimaryKeyConstraint("staff_user_id", name=op.f("pk_execution_passwords")),
    )


def downgrade() -> None:
    op.drop_table("execution_passwords")
    op.drop_table("link_leases")
    op.drop_table("remote_commands")
    op.drop_table("patrol_runs")
    op.drop_table("patrol_tasks")
