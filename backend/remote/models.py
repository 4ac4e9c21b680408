"""Remote control (远程控制) and patrol reads (巡测): the field-command queue and what feeds it.

- ``remote_commands``: one command for one meter (DESIGN.md "Contracts": ``queue_command``),
  a row users look at (progress, reply, failure), so a domain table rather than a job.
  ``link`` names the link that carries it: ``concentrator:<id>`` for a meter on a
  concentrator's bus (serial, DTU or a terminal that dials in), ``mqtt`` for an NB-IoT
  meter reached through the broker. A worker claims the queued commands of the links it
  holds a lease on (``FOR UPDATE SKIP LOCKED``). ``area_path`` is the meter's area path
  when the command was queued: data scope is a prefix match on it, with no join.
  ``batch_id`` groups the commands of one user action over many meters.
- ``link_leases``: who holds a link (a worker's holder name) until when; renewed by its
  holder, taken over by anyone once expired.
- ``patrol_tasks`` (巡测任务设定) and ``patrol_runs``: scheduled reads, as data; a run is
  one firing of a task's cron schedule and its read_now commands.
- ``execution_passwords`` (执行密码): each staff user's second password for remote
  control, argon2, with its failed-try counter and lock.
- ``meter_purchase_counts``: the purchase count a meter that keeps its own balance
  (智能水表直接预付费) holds, as far as this system knows (``backend.remote.purchases``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Column, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlmodel import Field, SQLModel

from backend.db import enum_column, timestamptz


class CommandKind(StrEnum):
    """DESIGN.md "Contracts": the kinds of field command."""

    read_now = "read_now"  # 实时抄表 / 手动召测
    valve_open = "valve_open"  # 开阀
    valve_close = "valve_close"  # 关阀
    read_params = "read_params"  # 读参数
    set_params = "set_params"  # 设参数
    backfill = "backfill"  # 补抄 (历史数据采集)
    remote_switch = "remote_switch"  # 远程遥控 (a concentrator's switch outputs)
    sync_clock = "sync_clock"  # 校时
    download_meter_list = "download_meter_list"  # 下载表档案 (to a concentrator)
    write_purchase = "write_purchase"  # 写购水 (meter-side prepaid)


class CommandState(StrEnum):
    """queued → sent → succeeded | failed | timed_out; an NB-IoT meter's command waits in
    pending_delivery (claimed by the broker's holder) until the device's next uplink. A
    write_purchase whose payment went back before it was sent ends ``cancelled``
    (``backend.remote.purchases``)."""

    queued = "queued"
    pending_delivery = "pending_delivery"
    sent = "sent"
    succeeded = "succeeded"
    failed = "failed"
    timed_out = "timed_out"
    cancelled = "cancelled"


FINISHED_STATES = (CommandState.succeeded, CommandState.failed, CommandState.timed_out, CommandState.cancelled)


class FailureKind(StrEnum):
    """The few kinds the worker translates every failure into (issue 20, item 3)."""

    timeout = "timeout"  # no answer within the time limit
    bad_frame = "bad_frame"  # corrupt, truncated, mis-addressed
    device_error = "device_error"  # the meter answered with an error status
    link_down = "link_down"  # the port or gateway is gone


class IssuerKind(StrEnum):
    staff = "staff"
    system = "system"


class PatrolRunState(StrEnum):
    running = "running"
    finished = "finished"
    interrupted = "interrupted"  # its worker died; running again at the next claim of its commands


class PatrolReading(StrEnum):
    """What a patrol reads: the current data (当前数据, read_now) or the last month's
    history the meters keep (历史数据, backfill)."""

    current = "current"
    history = "history"


class RemoteCommand(SQLModel, table=True):
    """One field command for one meter (module docstring)."""

    __tablename__ = "remote_commands"
    __table_args__ = (
        CheckConstraint("attempts >= 0 AND max_attempts >= 1", name="attempts_range"),
        CheckConstraint("time_limit_s BETWEEN 1 AND 604800", name="time_limit_range"),
        # What a worker's claim scans: the queued commands of the links it holds, oldest first.
        Index("ix_remote_commands_queued", "link", "id", postgresql_where=text("state = 'queued'")),
        # What the sweep scans: every unfinished command, by deadline.
        Index("ix_remote_commands_open_deadline", "deadline",
              postgresql_where=text("state IN ('queued', 'pending_delivery', 'sent')")),
        Index("ix_remote_commands_batch_id", "batch_id"),
        Index("ix_remote_commands_meter_id", "meter_id", "id"),
        Index("ix_remote_commands_patrol_run_id", "patrol_run_id"),
        Index("ix_remote_commands_area_path", "area_path", postgresql_ops={"area_path": "text_pattern_ops"}),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    batch_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), nullable=False))
    meter_id: int = Field(sa_column=Column(BigInteger, ForeignKey("meters.id"), nullable=False))
    concentrator_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("concentrators.id"),
                                                                       nullable=True))
    link: str = Field(sa_column=Column(String(64), nullable=False))
    area_path: str = Field(sa_column=Column(String(400), nullable=False))
    kind: CommandKind = Field(sa_column=enum_column(CommandKind, nullable=False))
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")))
    state: CommandState = Field(sa_column=enum_column(CommandState, nullable=False))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    max_attempts: int = Field(default=3, sa_column=Column(Integer, nullable=False, server_default="3"))
    # 命令时限: how long the device may take to answer. The deadline is when the command
    # times out in all: created + the time limit for a desk's command, later for patrols'
    # and automatic ones, which may wait in the queue behind others.
    time_limit_s: int = Field(default=30, sa_column=Column(Integer, nullable=False, server_default="30"))
    deadline: datetime = Field(sa_column=timestamptz(nullable=False))
    issued_by_kind: IssuerKind = Field(sa_column=enum_column(IssuerKind, nullable=False))
    issued_by_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    issued_by_name: str = Field(sa_column=Column(String(100), nullable=False))
    # The worker (its lease holder name) that claimed it last.
    claimed_by: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))
    # The decoded reply (values as JSON strings and numbers; see acquisition/protocols).
    reply: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))
    failure_kind: FailureKind | None = Field(default=None, sa_column=enum_column(FailureKind, nullable=True))
    failure_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # A command that checks another names it (kept for such follow-ups; a set_params is
    # read back within its own claim, so none issues one today).
    follows_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("remote_commands.id"),
                                                                  nullable=True))
    patrol_run_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("patrol_runs.id",
                                                                                        ondelete="SET NULL"), nullable=True))
    created_at: datetime = Field(sa_column=timestamptz(nullable=False))
    sent_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    finished_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    updated_at: datetime = Field(sa_column=timestamptz(nullable=False))


class LinkLease(SQLModel, table=True):
    """Who holds a link until when (module docstring)."""

    __tablename__ = "link_leases"

    link: str = Field(sa_column=Column(String(64), primary_key=True))
    holder: str = Field(sa_column=Column(String(100), nullable=False))
    expires_at: datetime = Field(sa_column=timestamptz(nullable=False))
    taken_at: datetime = Field(sa_column=timestamptz(nullable=False))
    renewed_at: datetime = Field(sa_column=timestamptz(nullable=False))


class PatrolTask(SQLModel, table=True):
    """A patrol task (巡测任务): whom to read (areas, concentrators, meters: their union),
    when (a 5-field cron schedule in the utility's zone) and what."""

    __tablename__ = "patrol_tasks"
    __table_args__ = (Index("ix_patrol_tasks_enabled", "id", postgresql_where=text("enabled")),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    name: str = Field(sa_column=Column(String(100), nullable=False))
    # Its unit (the area of the staff user who made it; null: the company as a whole): who
    # sees the task is decided on it, as for staff users and roles (backend.auth.scope).
    unit_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("areas.id"), nullable=True))
    area_ids: list[int] = Field(default_factory=list, sa_column=Column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb")))
    concentrator_ids: list[int] = Field(default_factory=list, sa_column=Column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb")))
    meter_ids: list[int] = Field(default_factory=list, sa_column=Column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb")))
    schedule: str = Field(sa_column=Column(String(100), nullable=False))
    reading: PatrolReading = Field(sa_column=enum_column(PatrolReading, nullable=False))
    time_limit_s: int = Field(default=30, sa_column=Column(Integer, nullable=False, server_default="30"))
    enabled: bool = Field(default=True, sa_column=Column(Boolean, nullable=False, server_default="true"))
    created_by_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    created_at: datetime = Field(sa_column=timestamptz(nullable=False))
    updated_at: datetime = Field(sa_column=timestamptz(nullable=False))


class PatrolRun(SQLModel, table=True):
    """One firing of a task: ``due_at`` is the minute its schedule named (the dedupe key
    with the task), the counts are kept by ``finish_command``."""

    __tablename__ = "patrol_runs"
    __table_args__ = (
        Index("uq_patrol_runs_task_minute", "task_id", "due_at", unique=True),
        Index("ix_patrol_runs_running", "id", postgresql_where=text("state = 'running'")),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    task_id: int = Field(sa_column=Column(BigInteger, ForeignKey("patrol_tasks.id", ondelete="CASCADE"), nullable=False))
    due_at: datetime = Field(sa_column=timestamptz(nullable=False))
    state: PatrolRunState = Field(sa_column=enum_column(PatrolRunState, nullable=False))
    meters_total: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    meters_read: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    meters_failed: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    started_at: datetime = Field(sa_column=timestamptz(nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    # How often its worker died under it, the last time, and when a worker last took it
    # up again (``backend.remote.patrols``: interrupted → running on the next claim).
    interruptions: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    interrupted_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    resumed_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))


class ExecutionPassword(SQLModel, table=True):
    """A staff user's execution password (执行密码): argon2, never the login password."""

    __tablename__ = "execution_passwords"

    staff_user_id: int = Field(sa_column=Column(BigInteger, ForeignKey("staff_users.id", ondelete="CASCADE"),
                                                primary_key=True))
    password_hash: str = Field(sa_column=Column(String(255), nullable=False))
    failed_attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    locked_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    set_at: datetime = Field(sa_column=timestamptz(nullable=False))
    updated_at: datetime = Field(sa_column=timestamptz(nullable=False))


class MeterPurchaseCount(SQLModel, table=True):
    """The purchase count (购水次数) a meter keeping its own balance holds: raised by each
    purchase the meter confirmed, or taken from the meter when it was first heard
    (``heard_at`` null: nothing heard from it yet, the count is the factory's 0). The row
    is also the lock that sends one purchase at a time to its meter."""

    __tablename__ = "meter_purchase_counts"
    __table_args__ = (CheckConstraint("confirmed_count >= 0", name="count_not_negative"),)

    meter_id: int = Field(sa_column=Column(BigInteger, ForeignKey("meters.id"), primary_key=True))
    confirmed_count: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    heard_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    updated_at: datetime = Field(sa_column=timestamptz(nullable=False))
