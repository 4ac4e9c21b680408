"""Work orders (报修工单): a repair request for one household, its transitions and photos.

- ``work_orders``: one request, from its report (category, description, contact,
  appointment) to its result (result text, materials, rating). ``area_path`` is the
  household's area path when the order was made: data scope is a prefix match on it
  (DESIGN.md "Data scope"), with no join on the area tree. ``number`` is the readable
  order number ``GD<yyyymmdd>-<id, 6 digits>`` (the utility's day; the id makes it unique
  without a counter to lock).
- ``work_order_transitions``: every change of state, who (resident, staff, system + id
  and the name shown then), when, from, to and a note. Append-only.
- ``work_order_photos``: the photos of the report and of the result, each a stored file
  (``backend.files``) and its thumbnail; the stored copy of a resident's photo is a
  re-encoded one without GPS (``backend.workorders.photos``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Column, Enum, ForeignKey, Index, SmallInteger, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from backend.db import enum_column, timestamptz


class WorkOrderCategory(StrEnum):
    leak = "leak"  # 漏水
    meter_fault = "meter_fault"  # 水表故障
    no_water = "no_water"  # 停水 / 无水
    water_quality = "water_quality"  # 水质
    billing_query = "billing_query"  # 账单疑问
    other = "other"  # 其他


class WorkOrderState(StrEnum):
    submitted = "submitted"  # 待受理 (in the pool when unassigned)
    assigned = "assigned"  # 已派单 / 已接单
    on_the_way = "on_the_way"  # 出发中
    in_progress = "in_progress"  # 处理中
    resolved = "resolved"  # 已处理, awaiting the resident's confirmation
    confirmed = "confirmed"  # 已评价
    closed = "closed"  # 已关闭
    cancelled = "cancelled"  # 已取消


class WorkOrderSource(StrEnum):
    resident = "resident"
    staff = "staff"
    system = "system"


class ActorKind(StrEnum):
    resident = "resident"
    staff = "staff"
    system = "system"


class PhotoStage(StrEnum):
    report = "report"  # with the request
    result = "result"  # with the resolution


CATEGORY_LABELS = {
    WorkOrderCategory.leak: "漏水", WorkOrderCategory.meter_fault: "水表故障", WorkOrderCategory.no_water: "停水",
    WorkOrderCategory.water_quality: "水质问题", WorkOrderCategory.billing_query: "账单疑问", WorkOrderCategory.other: "其他",
}
STATE_LABELS = {
    WorkOrderState.submitted: "待受理", WorkOrderState.assigned: "已派单", WorkOrderState.on_the_way: "出发中",
    WorkOrderState.in_progress: "处理中", WorkOrderState.resolved: "已处理", WorkOrderState.confirmed: "已评价",
    WorkOrderState.closed: "已关闭", WorkOrderState.cancelled: "已取消",
}


class WorkOrder(SQLModel, table=True):
    """One repair request (see the module docstring)."""

    __tablename__ = "work_orders"
    __table_args__ = (
        CheckConstraint("rating IS NULL OR rating BETWEEN 1 AND 5", name="rating_range"),
        Index("ix_work_orders_area_path", "area_path", postgresql_ops={"area_path": "text_pattern_ops"}),
        Index("ix_work_orders_state", "state"),
        Index("ix_work_orders_assignee_id", "assignee_id"),
        Index("ix_work_orders_household_id", "household_id"),
        Index("ix_work_orders_created_at", "created_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    number: str = Field(sa_column=Column(String(32), nullable=False, unique=True))
    household_id: int = Field(sa_column=Column(BigInteger, ForeignKey("households.id"), nullable=False))
    area_path: str = Field(sa_column=Column(String(400), nullable=False))
    category: WorkOrderCategory = Field(sa_column=enum_column(WorkOrderCategory, nullable=False))
    description: str = Field(sa_column=Column(Text, nullable=False))
    contact_name: str = Field(sa_column=Column(String(100), nullable=False))
    contact_phone: str = Field(sa_column=Column(String(20), nullable=False))
    appointment_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    source: WorkOrderSource = Field(sa_column=enum_column(WorkOrderSource, nullable=False))
    # Who made it: a resident's or staff user's id (null for the system).
    created_by_kind: ActorKind = Field(sa_column=enum_column(ActorKind, nullable=False))
    created_by_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    state: WorkOrderState = Field(sa_column=enum_column(WorkOrderState, nullable=False))
    assignee_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("staff_users.id"),
                                                                   nullable=True))
    response_due_at: datetime = Field(sa_column=timestamptz(nullable=False))
    resolve_due_at: datetime = Field(sa_column=timestamptz(nullable=False))
    result: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # [{"name": "水表", "quantity": "1", "unit": "只"}]: quantities as decimal strings.
    materials: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb")))
    rating: int | None = Field(default=None, sa_column=Column(SmallInteger, nullable=True))
    rating_comment: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(sa_column=timestamptz(nullable=False))
    assigned_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    started_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    resolved_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    confirmed_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    closed_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    cancelled_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    updated_at: datetime = Field(sa_column=timestamptz(nullable=False))


class WorkOrderTransition(SQLModel, table=True):
    """One change of an order's state (``from_state`` null: its creation)."""

    __tablename__ = "work_order_transitions"
    __table_args__ = (Index("ix_work_order_transitions_work_order_id", "work_order_id", "id"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    work_order_id: int = Field(sa_column=Column(BigInteger, ForeignKey("work_orders.id", ondelete="CASCADE"),
                                                nullable=False))
    # Its own CHECK constraint's name: two columns of one enum in one table.
    from_state: WorkOrderState | None = Field(default=None, sa_column=Column(Enum(
        WorkOrderState, native_enum=False, create_constraint=True, length=32, name="fromstate",
        values_callable=lambda members: [member.value for member in members]), nullable=True))
    to_state: WorkOrderState = Field(sa_column=enum_column(WorkOrderState, nullable=False))
    actor_kind: ActorKind = Field(sa_column=enum_column(ActorKind, nullable=False))
    actor_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    actor_name: str = Field(sa_column=Column(String(100), nullable=False))
    note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    at: datetime = Field(sa_column=timestamptz(nullable=False))


class WorkOrderPhoto(SQLModel, table=True):
    """A photo of an order: the stored file and its thumbnail (both kept until deleted)."""

    __tablename__ = "work_order_photos"
    __table_args__ = (Index("ix_work_order_photos_work_order_id", "work_order_id"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    work_order_id: int = Field(sa_column=Column(BigInteger, ForeignKey("work_orders.id", ondelete="CASCADE"),
                                                nullable=False))
    stage: PhotoStage = Field(sa_column=enum_column(PhotoStage, nullable=False))
    file_key: str = Field(sa_column=Column(String(255), nullable=False))
    thumbnail_key: str = Field(sa_column=Column(String(255), nullable=False))
    uploaded_by_kind: ActorKind = Field(sa_column=enum_column(ActorKind, nullable=False))
    uploaded_by_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    created_at: datetime = Field(sa_column=timestamptz(nullable=False))
