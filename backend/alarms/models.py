"""The alarms table (告警): one abnormal condition of one subject of any kind (a meter, a
concentrator, a terminal, a payment, a gateway, a zone), from when its owner first saw
it until it was closed, by the owner's evaluation when the condition cleared or by a
person. At most one alarm per (subject, kind) is live (not closed); closed ones stay as
history.

A subject is named by ``subject_kind`` and ``subject_id`` (no foreign key: subjects live
in different tables). Meter alarms are scoped through the meter's area (as the
abnormal-meter screen always was) and leave ``area_id`` null; every other subject
carries the ``area_id`` its owner gave, and a null one is the company as a whole,
visible only to whole-tree scope (``backend.auth.scope.unit_visible``).

Migration 0014 turned ``meter_alarms`` into this table (ids kept) and left a view of the
same name over its meter rows, for reports and SQL written against the old table.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import BigInteger, Column, Index, Numeric, String, Text, text
from sqlmodel import Field, SQLModel

from backend.db import enum_column, timestamptz


class AlarmSubjectKind(StrEnum):
    """What an alarm is about; the owner of that kind of subject opens and clears it."""

    meter = "meter"  # readings' abnormal-meter rules
    concentrator = "concentrator"
    terminal = "terminal"
    payment = "payment"
    gateway = "gateway"  # a gateway's deliveries, opened by the domain that owns the gateway
    zone = "zone"


class AlarmKind(StrEnum):
    """What is abnormal; ``value`` and ``threshold`` are in the kind's own unit."""

    # Meters (readings' rules, alarm_rules.threshold):
    silent = "silent"  # threshold: hours without a reading
    communication_failure = "communication_failure"  # threshold: consecutive failed reads
    reverse_flow = "reverse_flow"  # threshold: days looked back (including today)
    zero_use = "zero_use"  # threshold: days of zero usage
    high_use = "high_use"  # threshold: K, times the meter's average daily usage
    battery_low = "battery_low"  # threshold: volts
    valve_abnormal = "valve_abnormal"  # threshold: unused
    rollover = "rollover"  # threshold: days looked back (including today)
    # Other subjects (their owners measure and open them):
    offline = "offline"  # concentrator, terminal; threshold: minutes since it was last heard from
    verification_failed = "verification_failed"  # payment; threshold: failed verifications of its notify
    delivery_failing = "delivery_failing"  # gateway; threshold: consecutive failed deliveries
    loss_high = "loss_high"  # zone; threshold: percent of the system input lost (non-revenue water)
    refund_failed = "refund_failed"  # payment; the gateway refused its refund (value: the fen not refunded)
    # meter; its purchase count is not the one this system sent or the one before it (value:
    # the count the meter holds, threshold: the count sent). Opened by remote's purchases.
    purchase_mismatch = "purchase_mismatch"


# The kinds readings' abnormal-meter rules evaluate (and alarm_rules may hold).
METER_KINDS: tuple[AlarmKind, ...] = (
    AlarmKind.silent, AlarmKind.communication_failure, AlarmKind.reverse_flow, AlarmKind.zero_use,
    AlarmKind.high_use, AlarmKind.battery_low, AlarmKind.valve_abnormal, AlarmKind.rollover,
)


class AlarmStatus(StrEnum):
    open = "open"
    acknowledged = "acknowledged"
    closed = "closed"


class AlarmSeverity(StrEnum):
    info = "info"
    warning = "warning"
    critical = "critical"


# Chinese labels (the exports and the staff app's lists).
SUBJECT_KIND_LABELS = {
    AlarmSubjectKind.meter: "水表", AlarmSubjectKind.concentrator: "集中器", AlarmSubjectKind.terminal: "终端",
    AlarmSubjectKind.payment: "支付", AlarmSubjectKind.gateway: "接口", AlarmSubjectKind.zone: "分区",
}
KIND_LABELS = {
    AlarmKind.silent: "无读数", AlarmKind.communication_failure: "通讯失败", AlarmKind.reverse_flow: "倒流",
    AlarmKind.zero_use: "零用水", AlarmKind.high_use: "用水突增", AlarmKind.battery_low: "电池欠压",
    AlarmKind.valve_abnormal: "阀门异常", AlarmKind.rollover: "表码翻转", AlarmKind.offline: "离线",
    AlarmKind.verification_failed: "验签失败", AlarmKind.delivery_failing: "发送失败", AlarmKind.loss_high: "漏损偏高",
}
STATUS_LABELS = {AlarmStatus.open: "未处理", AlarmStatus.acknowledged: "已确认", AlarmStatus.closed: "已关闭"}
SEVERITY_LABELS = {AlarmSeverity.info: "提示", AlarmSeverity.warning: "警告", AlarmSeverity.critical: "严重"}


class Alarm(SQLModel, table=True):
    """One abnormal condition of one subject (see the module docstring)."""

    __tablename__ = "alarms"
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (
        # One live alarm per subject and kind: open-or-refresh upserts on this index.
        Index("uq_alarms_live", "subject_kind", "subject_id", "kind", unique=True,
              postgresql_where=text("status <> 'closed'")),
        Index("ix_alarms_subject", "subject_kind", "subject_id"),
        Index("ix_alarms_opened_at", "opened_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    subject_kind: AlarmSubjectKind = Field(sa_column=enum_column(AlarmSubjectKind, nullable=False))
    subject_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    # Scope of a subject that is not a meter (null: whole-tree callers only); null for meters.
    area_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    # How the owner names the subject (a concentrator's code…); meters are named by their row.
    subject_name: str = Field(default="", sa_column=Column(String(200), nullable=False, server_default=""))
    kind: AlarmKind = Field(sa_column=enum_column(AlarmKind, nullable=False))
    status: AlarmStatus = Field(
        default=AlarmStatus.open, sa_column=enum_column(AlarmStatus, nullable=False, server_default=AlarmStatus.open.value)
    )
    severity: AlarmSeverity = Field(
        default=AlarmSeverity.warning,
        sa_column=enum_column(AlarmSeverity, nullable=False, server_default=AlarmSeverity.warning.value),
    )
    opened_at: datetime = Field(sa_column=timestamptz(nullable=False))
    last_seen_at: datetime = Field(sa_column=timestamptz(nullable=False))
    value: Decimal | None = Field(default=None, sa_column=Column(Numeric(16, 4), nullable=True))
    threshold: Decimal | None = Field(default=None, sa_column=Column(Numeric(16, 4), nullable=True))
    detail: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    acknowledged_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    acknowledged_by: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))
    acknowledge_note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    closed_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    closed_by: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))
    close_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
