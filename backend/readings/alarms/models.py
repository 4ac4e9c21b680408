"""Abnormal-meter tables (异常水表): the rules that decide when a meter is abnormal and
each meter's communication-link status. The alarms they raise live in the alarms
domain's table (``backend.alarms.models``, subject kind ``meter``); its enums are
re-exported here for code written against this module.

``alarm_rules`` holds one threshold per (kind, area, meter model); the most specific
rule applies to a meter (model + area, then model, then area, then global; for areas the
nearest ancestor wins), and a disabled one turns its kind off there (no fallback). Rules
hold meter kinds only (``METER_KINDS``). Evaluation keeps at most one live alarm per
meter and kind, refreshed while the condition holds and closed when it clears.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import BigInteger, Boolean, Column, Date, ForeignKey, Index, Integer, Numeric, String, Text, func
from sqlmodel import Field, SQLModel

from backend.alarms.models import METER_KINDS, AlarmSeverity, AlarmStatus
from backend.alarms.models import AlarmKind as AnyAlarmKind
from backend.db import enum_column, timestamptz

__all__ = [
    "DEFAULT_RULES", "METER_KINDS", "AlarmKind", "AlarmRule", "AlarmSeverity", "AlarmStatus", "MeterLinkStatus",
    "MeterUsageBaseline",
]


class AlarmKind(StrEnum):
    """What is abnormal about a meter: the kinds the abnormal-meter rules evaluate and
    ``alarm_rules`` holds. The same values as those members of the alarms domain's
    ``AlarmKind`` (every subject's kinds, units there), so either compares equal with the
    other."""

    silent = AnyAlarmKind.silent.value
    communication_failure = AnyAlarmKind.communication_failure.value
    reverse_flow = AnyAlarmKind.reverse_flow.value
    zero_use = AnyAlarmKind.zero_use.value
    high_use = AnyAlarmKind.high_use.value
    battery_low = AnyAlarmKind.battery_low.value
    valve_abnormal = AnyAlarmKind.valve_abnormal.value
    rollover = AnyAlarmKind.rollover.value


# What the migration seeds as the global rules: kind -> (threshold, severity).
DEFAULT_RULES: dict[AlarmKind, tuple[Decimal, AlarmSeverity]] = {
    AlarmKind.silent: (Decimal(48), AlarmSeverity.warning),
    AlarmKind.communication_failure: (Decimal(3), AlarmSeverity.warning),
    AlarmKind.reverse_flow: (Decimal(2), AlarmSeverity.warning),
    AlarmKind.zero_use: (Decimal(7), AlarmSeverity.info),
    AlarmKind.high_use: (Decimal(3), AlarmSeverity.warning),
    AlarmKind.battery_low: (Decimal("3.3"), AlarmSeverity.warning),
    AlarmKind.valve_abnormal: (Decimal(0), AlarmSeverity.critical),
    AlarmKind.rollover: (Decimal(2), AlarmSeverity.info),
}


class AlarmRule(SQLModel, table=True):
    """A threshold for one alarm kind, globally (both ids null), for an area subtree, for
    a meter model, or for a model within an area subtree."""

    __tablename__ = "alarm_rules"
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (
        Index("uq_alarm_rules_target", "kind", "area_id", "meter_model_id", unique=True,
              postgresql_nulls_not_distinct=True),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    kind: AlarmKind = Field(sa_column=enum_column(AlarmKind, nullable=False))
    area_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("areas.id"), nullable=True))
    meter_model_id: int | None = Field(
        default=None, sa_column=Column(BigInteger, ForeignKey("meter_models.id"), nullable=True)
    )
    enabled: bool = Field(default=True, sa_column=Column(Boolean, nullable=False, server_default="true"))
    threshold: Decimal = Field(sa_column=Column(Numeric(12, 4), nullable=False))
    severity: AlarmSeverity = Field(
        default=AlarmSeverity.warning,
        sa_column=enum_column(AlarmSeverity, nullable=False, server_default=AlarmSeverity.warning.value),
    )
    updated_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=False, server_default=func.now()))
    updated_by: str = Field(default="system", sa_column=Column(String(100), nullable=False, server_default="system"))


class MeterLinkStatus(SQLModel, table=True):
    """How reading a meter has gone lately: failures since the last success. The
    acquisition worker reports failures; evaluation resets the count once a reading
    newer than the last failure has arrived."""

    __tablename__ = "meter_link_status"

    meter_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    consecutive_failures: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    last_failure_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    last_failure_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    last_success_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))


class MeterUsageBaseline(SQLModel, table=True):
    """A meter's average daily usage over the 30 days before yesterday, as of ``day``
    (null: under a day of readings then): the high-use rule's baseline, recomputed by the
    first evaluation of each day per meter so that per-batch evaluations never read a
    month of usage. Readings that arrive late for those days count from the next day."""

    __tablename__ = "meter_usage_baselines"

    meter_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    day: date = Field(sa_column=Column(Date, nullable=False))
    average_m3: Decimal | None = Field(default=None, sa_column=Column(Numeric(16, 4), nullable=True))
