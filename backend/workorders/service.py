"""The work-order workflow (报修工单): the one writer of ``work_orders``, its transitions and
photos, and the only emitter of ``workorder.changed``.

**States** (``WorkOrderState``)::

    submitted ─dispatch/take─▶ assigned ─startTravel─▶ on_the_way ─startWork─▶ in_progress
        ▲                        │  ▲                                  (startWork also from assigned)
        │                        │  └──────────── reopen (resident) ◀──┐        │ resolve
        │                        ▼                                    resolved ◀─┘
    cancel: resident while submitted / assigned / on_the_way;        │ confirm (resident, rating 1–5)
            staff until in_progress                                  ▼
                                                                   confirmed ─close (staff)─▶ closed
    resolved ─(the job close_unconfirmed_work_orders, N days)─▶ closed

- **dispatch** (``workorders:dispatch``): a supervisor assigns (or re-assigns) a submitted
  or assigned order to an active staff user holding ``workorders:handle`` whose data
  scope covers the order's area (anyone else: NOT_FOUND on ``assigneeId``). **take**
  (``workorders:handle``): a staff
  member takes an unassigned order of their scope from the pool; the row is locked
  (``FOR UPDATE``), so of two concurrent takes one wins and the other gets
  WORKORDER_ALREADY_TAKEN.
- on the way / in progress / resolved: only the assignee (WORKORDER_NOT_ASSIGNEE).
- **reopen** (the resident, from resolved, when not satisfied) goes back to **assigned**,
  to the same assignee: they know the site, and the order stays accountable to them; a
  supervisor may re-dispatch it. Its SLA deadlines are not moved: a reopened order that
  is late is late.
- **confirm** (the resident, from resolved): rating 1–5 and a comment; a second rating
  is WORKORDER_ALREADY_RATED. **close**: staff close a confirmed order; a resolved order
  nobody confirmed is closed by the daily job after ``auto_close_days``.
- A transition not allowed from the current state is WORKORDER_TRANSITION_NOT_ALLOWED;
  every refusal happens before anything is written. Every transition is a row of
  ``work_order_transitions`` and one ``workorder.changed`` event.

**Scope**: staff reach orders whose ``area_path`` lies in their data scope, a resident
the orders of their bound households; anything else is NOT_FOUND (its existence does
not leak).

**SLA** (``backend.workorders.sla``; overridden by ``SHUIWU_WORKORDERS_SLA``): a
response deadline (to be assigned) and a resolution
deadline per category, set when the order is made; an order is **overdue** while it is
still open past one of them: not yet assigned past ``response_due_at``, or not yet
resolved past ``resolve_due_at`` (computed from ``now`` in every query: no job marks it).

Plain async functions over a session, keyword arguments after it; the caller commits.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ARRAY,
    BigInteger,
    DateTime,
    Select,
    Text,
    and_,
    any_,
    bindparam,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.archives.models import Area, Household
from backend.auth.models import PrincipalKind, StaffUser
from backend.auth.principal import Principal
from backend.auth.scope import path_in_scope
from backend.auth.service import load_principal
from backend.errors import DomainError, ErrorCode, NotFound
from backend.events.service import emit_event
from backend.pagination import PagedQuery
from backend.workorders.errors import AlreadyRated, AlreadyTaken, NotAssignee, RatingInvalid, TransitionNotAllowed
from backend.workorders.events import WorkOrderChanged
from backend.workorders.models import (
    ActorKind,
    PhotoStage,
    WorkOrder,
    WorkOrderCategory,
    WorkOrderPhoto,
    WorkOrderSource,
    WorkOrderState,
    WorkOrderTransition,
)
from backend.workorders.photos import StoredPhoto
from backend.workorders.sla import DEFAULT_SLA, SlaPolicy

DESCRIPTION_MAX = 2000
RESULT_MAX = 2000
NOTE_MAX = 500
COMMENT_MAX = 500
# What an assignee must hold (the permission of taking from the pool and working an order).
HANDLE = "workorders:handle"
MAX_MATERIALS = 50
# At most 20 characters in all, "+" included (the column's width): 5–20 digits or dashes
# after an optional "+", starting with a digit.
PHONE_MAX = 20
_PHONE = re.compile(rf"^(?=.{{1,{PHONE_MAX}}}$)\+?[0-9][0-9-]{{4,{PHONE_MAX - 1}}}$")

S = WorkOrderState
# States in which an order is still being worked on (open).
OPEN_STATES = (S.submitted, S.assigned, S.on_the_way, S.in_progress)
RESIDENT_CANCELLABLE = (S.submitted, S.assigned, S.on_the_way)
STAFF_CANCELLABLE = OPEN_STATES


@dataclass(frozen=True, slots=True)
class Material:
    name: str
    quantity: Decimal
    unit: str


@dataclass(frozen=True, slots=True)
class Actor:
    """Who moves an order: a resident, a staff user or the system, and the name shown."""

    kind: ActorKind
    id: int | None
    name: str

    @property
    def tag(self) -> str:
        """``resident:<id>``, ``staff:<id>`` or ``system``: the event's ``by``."""
        return self.kind.value if self.id is None else f"{self.kind.value}:{self.id}"


def actor_of(principal: Principal) -> Actor:
    if principal.is_resident:
        return Actor(ActorKind.resident, principal.id, "住户")
    if principal.is_staff:
        return Actor(ActorKind.staff, principal.id, principal.name[:100])
    return Actor(ActorKind.system, None, "系统")


def _text(value: str | None, *, field: str, maximum: int, required: bool) -> str | None:
    cleaned = (value or "").strip()
    if not cleaned:
        if required:
            raise DomainError("此项必填", "This field is required", field=field, code=ErrorCode.REQUIRED)
        return None
    if len(cleaned) > maximum:
        raise DomainError(f"最多 {maximum} 个字", f"At most {maximum} characters", field=field, code=ErrorCode.TOO_LONG)
    return cleaned


# --------------------------------------------------------------------------- create


async def household_in_reach(session: AsyncSession, household_id: int, principal: Principal) -> tuple[Household, str]:
    """The household and its area path when the principal may report for it (a resident:
    a bound household; anyone else: one in its area scope, the whole tree for the system
    actor); NOT_FOUND otherwise."""
    row = (await session.execute(
        select(Household, col(Area.path)).join(Area, col(Area.id) == col(Household.area_id))
        .where(col(Household.id) == household_id)
    )).first()
    if row is None:
        raise NotFound(field="householdId")
    household, path = row
    if principal.is_resident:
        if household_id not in principal.household_ids:
            raise NotFound(field="householdId")
    elif not path_in_scope(path, principal.scope_patterns()):
        raise NotFound(field="householdId")
    return household, path


async def create_work_order(
    session: AsyncSession, *, principal: Principal, household_id: int, category: WorkOrderCategory, description: str,
    contact_name: str | None, contact_phone: str | None, appointment_at: datetime | None,
    photos: Sequence[StoredPhoto] = (), now: datetime, tz: ZoneInfo, sla: SlaPolicy = DEFAULT_SLA,
    source: WorkOrderSource | None = None,
) -> WorkOrder:
    """A new order in ``submitted`` for a household the principal reaches (a resident:
    their bound household; staff: any in scope; the system: any). Contact defaults to the
    household's registered name and phone. ``photos`` (already stored, see
    ``backend.workorders.photos``) become its report photos."""
    household, path = await household_in_reach(session, household_id, principal)
    errors: list[DomainError] = []
    try:
        text_ = _text(description, field="description", maximum=DESCRIPTION_MAX, required=True)
    except DomainError as error:
        errors.append(error)
    name = (contact_name or "").strip() or household.name
    phone = (contact_phone or "").strip() or (household.phone or "")
    if len(name) > 100:
        errors.append(DomainError("最多 100 个字", "At most 100 characters", field="contactName", code=ErrorCode.TOO_LONG))
    if not _PHONE.match(phone):
        errors.append(DomainError("请填写有效的联系电话", "Give a valid contact phone", field="contactPhone",
                                  code=ErrorCode.INVALID))
    if appointment_at is not None and (appointment_at.tzinfo is None or appointment_at < now - timedelta(minutes=5)):
        errors.append(DomainError("预约时间须为将来的时间", "The appointment must be in the future", field="appointmentAt",
                                  code=ErrorCode.INVALID))
    if errors:
        from backend.errors import ValidationFailed

        raise errors[0] if len(errors) == 1 else ValidationFailed(errors)
    actor = actor_of(principal)
    source = source or {ActorKind.resident: WorkOrderSource.resident, ActorKind.staff: WorkOrderSource.staff,
                        ActorKind.system: WorkOrderSource.system}[actor.kind]
    order_id = int((await session.execute(text("SELECT nextval(pg_get_serial_sequence('work_orders', 'id'))"))).scalar_one())
    response_due, resolve_due = sla.due(category, now)
    order = WorkOrder(
        id=order_id, number=f"GD{now.astimezone(tz):%Y%m%d}-{order_id:06d}", household_id=household_id, area_path=path,
        category=category, description=text_ or "", contact_name=name, contact_phone=phone,
        appointment_at=appointment_at, source=source, created_by_kind=actor.kind, created_by_id=actor.id,
        state=S.submitted, response_due_at=response_due, resolve_due_at=resolve_due, materials=[], created_at=now,
        updated_at=now,
    )
    session.add(order)
    await session.flush()
    await _record(session, order_id, None, S.submitted, actor, None, now)
    await _add_photos(session, order_id, PhotoStage.report, photos, actor, now)
    return order


# What a meter alarm suggests: excess use or backflow looks like a leak, the rest a faulty meter.
ALARM_CATEGORIES = {"high_use": WorkOrderCategory.leak, "reverse_flow": WorkOrderCategory.leak}


async def create_from_alarm(
    session: AsyncSession, *, principal: Principal, alarm_id: int, description: str | None, now: datetime,
    tz: ZoneInfo, sla: SlaPolicy = DEFAULT_SLA,
) -> WorkOrder:
    """由告警生成工单: an order (source ``system``, made by the staff member) for the household
    the alarmed meter serves, category from the alarm's kind, the description the alarm's
    own words unless given. NOT_FOUND for an alarm outside the scope; INVALID for one that
    is no meter's or whose meter serves no household in the scope."""
    from backend.alarms.models import KIND_LABELS, AlarmKind
    from backend.alarms.service import alarm_view

    row = await alarm_view(session, alarm_id=alarm_id, scope_patterns=principal.scope_patterns())
    if row.subject_kind != "meter" or row.household_id is None:
        raise DomainError("该告警的水表没有关联住户, 不能生成报修工单",
                          "The alarm's meter serves no household: no work order can be made from it",
                          field="alarmId", code=ErrorCode.INVALID)
    kind = AlarmKind(row.kind)
    words = (description or "").strip() or f"由告警生成: 水表 {row.meter_code} {KIND_LABELS.get(kind, kind.value)}" + (
        f", {row.detail}" if row.detail else "")
    return await create_work_order(
        session, principal=principal, household_id=row.household_id,
        category=ALARM_CATEGORIES.get(kind.value, WorkOrderCategory.meter_fault), description=words[:DESCRIPTION_MAX],
        contact_name=None, contact_phone=None, appointment_at=None, now=now, tz=tz, sla=sla,
        source=WorkOrderSource.system)


async def _add_photos(session: AsyncSession, order_id: int, stage: PhotoStage, photos: Sequence[StoredPhoto],
                      actor: Actor, now: datetime) -> None:
    if photos:
        await session.execute(insert(WorkOrderPhoto), [
            {"work_order_id": order_id, "stage": stage, "file_key": photo.file_key, "thumbnail_key": photo.thumbnail_key,
             "uploaded_by_kind": actor.kind, "uploaded_by_id": actor.id, "created_at": now} for photo in photos
        ])


async def _record(session: AsyncSession, order_id: int, from_state: WorkOrderState | None, to_state: WorkOrderState,
                  actor: Actor, note: str | None, now: datetime) -> None:
    session.add(WorkOrderTransition(work_order_id=order_id, from_state=from_state, to_state=to_state,
                                    actor_kind=actor.kind, actor_id=actor.id, actor_name=actor.name, note=note, at=now))
    await session.flush()
    await emit_event(session, "workorder.changed", WorkOrderChanged(order_id, to_state.value, actor.tag))


# --------------------------------------------------------------------------- transitions


async def locked_order(session: AsyncSession, *, order_id: int, principal: Principal) -> WorkOrder:
    """The order, row-locked, when the principal reaches it; NOT_FOUND otherwise."""
    order = (await session.execute(
        select(WorkOrder).where(WorkOrder.id == order_id).with_for_update()  # type: ignore[arg-type]
    )).scalar_one_or_none()
    if order is None or not reaches(principal, order):
        raise NotFound(field="id")
    return order


def reaches(principal: Principal, order: WorkOrder) -> bool:
    """A resident reaches their bound households' orders; anyone else (staff, an API
    client, the system actor, whose scope is the whole tree) the orders of its area scope."""
    if principal.is_resident:
        return order.household_id in principal.household_ids
    return path_in_scope(order.area_path, principal.scope_patterns())


async def _move(session: AsyncSession, order: WorkOrder, to_state: WorkOrderState, actor: Actor, note: str | None,
                now: datetime, **values: Any) -> WorkOrder:
    from_state = order.state
    order.state = to_state
    order.updated_at = now
    for name, value in values.items():
        setattr(order, name, value)
    await session.flush()
    await _record(session, order.id or 0, from_state, to_state, actor, note, now)
    return order


def _require(order: WorkOrder, allowed: Sequence[WorkOrderState], action: str) -> None:
    if order.state not in allowed:
        raise TransitionNotAllowed(order.state, action)


def _require_assignee(order: WorkOrder, principal: Principal) -> None:
    if not principal.is_staff or order.assignee_id != principal.id:
        raise NotAssignee()


def _require_staff(principal: Principal) -> None:
    if principal.is_resident:
        raise NotFound(field="id")


def _require_resident(principal: Principal, action: str) -> None:
    if not principal.is_resident:
        raise DomainError(f"只有住户本人可以{action}", f"Only the resident may {action}", code=ErrorCode.FORBIDDEN)


async def dispatch_work_order(session: AsyncSession, *, principal: Principal, order_id: int, assignee_id: int,
                              note: str | None = None, now: datetime) -> WorkOrder:
    """派单: assign (or re-assign) a submitted or assigned order to an active staff user who
    can work it: holding ``workorders:handle`` with the order's area in their data scope
    (else they could not even see it). Anyone else is NOT_FOUND on ``assigneeId``."""
    _require_staff(principal)
    order = await locked_order(session, order_id=order_id, principal=principal)
    _require(order, (S.submitted, S.assigned), "派单")
    assignee = await load_principal(session, kind=PrincipalKind.staff, principal_id=assignee_id)
    if assignee is None or not assignee.has(HANDLE) or not reaches(assignee, order):
        raise NotFound(field="assigneeId")
    return await _move(session, order, S.assigned, actor_of(principal),
                       _text(note, field="note", maximum=NOTE_MAX, required=False) or f"派给 {assignee.name}", now,
                       assignee_id=assignee_id, assigned_at=now)


async def take_work_order(session: AsyncSession, *, principal: Principal, order_id: int, now: datetime) -> WorkOrder:
    """接单: take an unassigned submitted order of one's scope; one of concurrent takes wins."""
    _require_staff(principal)
    order = await locked_order(session, order_id=order_id, principal=principal)
    if order.assignee_id is not None and order.state in OPEN_STATES:
        raise AlreadyTaken()
    _require(order, (S.submitted,), "接单")
    return await _move(session, order, S.assigned, actor_of(principal), None, now, assignee_id=principal.id,
                       assigned_at=now)


async def start_travel(session: AsyncSession, *, principal: Principal, order_id: int, now: datetime) -> WorkOrder:
    """出发: the assignee sets out."""
    _require_staff(principal)
    order = await locked_order(session, order_id=order_id, principal=principal)
    _require(order, (S.assigned,), "出发")
    _require_assignee(order, principal)
    return await _move(session, order, S.on_the_way, actor_of(principal), None, now)


async def start_work(session: AsyncSession, *, principal: Principal, order_id: int, now: datetime) -> WorkOrder:
    """开始处理: the assignee is on site."""
    _require_staff(principal)
    order = await locked_order(session, order_id=order_id, principal=principal)
    _require(order, (S.assigned, S.on_the_way), "开始处理")
    _require_assignee(order, principal)
    return await _move(session, order, S.in_progress, actor_of(principal), None, now, started_at=order.started_at or now)


def checked_materials(materials: Sequence[Material]) -> list[dict[str, str]]:
    if len(materials) > MAX_MATERIALS:
        raise DomainError(f"最多 {MAX_MATERIALS} 项材料", f"At most {MAX_MATERIALS} materials", field="materials",
                          code=ErrorCode.INVALID)
    checked = []
    for material in materials:
        name = _text(material.name, field="materials", maximum=100, required=True)
        unit = _text(material.unit, field="materials", maximum=20, required=True)
        try:
            quantity = Decimal(material.quantity)
        except (InvalidOperation, TypeError):
            quantity = Decimal(-1)
        if not quantity.is_finite() or quantity <= 0 or quantity > 100000:
            raise DomainError("材料数量须为正数", "A material's quantity must be positive", field="materials",
                              code=ErrorCode.INVALID)
        checked.append({"name": name or "", "quantity": str(quantity.normalize()), "unit": unit or ""})
    return checked


async def resolve_work_order(
    session: AsyncSession, *, principal: Principal, order_id: int, result: str, materials: Sequence[Material] = (),
    photos: Sequence[StoredPhoto] = (), now: datetime,
) -> WorkOrder:
    """处理完成: the assignee reports the result (text, materials, photos)."""
    _require_staff(principal)
    order = await locked_order(session, order_id=order_id, principal=principal)
    _require(order, (S.in_progress,), "完成处理")
    _require_assignee(order, principal)
    text_ = _text(result, field="result", maximum=RESULT_MAX, required=True)
    checked = checked_materials(materials)
    actor = actor_of(principal)
    await _add_photos(session, order_id, PhotoStage.result, photos, actor, now)
    return await _move(session, order, S.resolved, actor, None, now, result=text_, materials=checked, resolved_at=now)


async def confirm_work_order(session: AsyncSession, *, principal: Principal, order_id: int, rating: int,
                             comment: str | None, now: datetime) -> WorkOrder:
    """确认并评价: the resident confirms the resolution with a rating of 1–5."""
    order = await locked_order(session, order_id=order_id, principal=principal)
    _require_resident(principal, "评价")
    if order.rating is not None:
        raise AlreadyRated()
    _require(order, (S.resolved,), "评价")
    if not 1 <= rating <= 5:
        raise RatingInvalid(field="rating")
    text_ = _text(comment, field="comment", maximum=COMMENT_MAX, required=False)
    return await _move(session, order, S.confirmed, actor_of(principal), None, now, rating=rating, rating_comment=text_,
                       confirmed_at=now)


async def reopen_work_order(session: AsyncSession, *, principal: Principal, order_id: int, note: str | None,
                            now: datetime) -> WorkOrder:
    """重新处理: the resident is not satisfied; back to the same assignee (module docstring)."""
    order = await locked_order(session, order_id=order_id, principal=principal)
    _require_resident(principal, "要求重新处理")
    _require(order, (S.resolved,), "要求重新处理")
    reason = _text(note, field="note", maximum=NOTE_MAX, required=True)
    return await _move(session, order, S.assigned, actor_of(principal), reason, now, resolved_at=None)


async def cancel_work_order(session: AsyncSession, *, principal: Principal, order_id: int, note: str | None,
                            now: datetime) -> WorkOrder:
    """取消: the resident before work starts, staff until it is resolved."""
    order = await locked_order(session, order_id=order_id, principal=principal)
    allowed = RESIDENT_CANCELLABLE if principal.is_resident else STAFF_CANCELLABLE
    _require(order, allowed, "取消")
    reason = _text(note, field="note", maximum=NOTE_MAX, required=not principal.is_resident)
    return await _move(session, order, S.cancelled, actor_of(principal), reason, now, cancelled_at=now)


async def close_work_order(session: AsyncSession, *, principal: Principal, order_id: int, note: str | None,
                           now: datetime) -> WorkOrder:
    """关闭: staff close a confirmed order."""
    _require_staff(principal)
    order = await locked_order(session, order_id=order_id, principal=principal)
    _require(order, (S.confirmed,), "关闭")
    return await _move(session, order, S.closed, actor_of(principal),
                       _text(note, field="note", maximum=NOTE_MAX, required=False), now, closed_at=now)


_AUTO_CLOSE = text("""
WITH due AS (
    SELECT id FROM work_orders WHERE state = 'resolved' AND resolved_at <= :before ORDER BY id LIMIT :batch
    FOR UPDATE SKIP LOCKED
), closed AS (
    UPDATE work_orders w SET state = 'closed', closed_at = :now, updated_at = :now FROM due
    WHERE w.id = due.id RETURNING w.id
), recorded AS (
    INSERT INTO work_order_transitions (work_order_id, from_state, to_state, actor_kind, actor_id, actor_name, note, at)
    SELECT id, 'resolved', 'closed', 'system', NULL, '系统', :note, :now FROM closed
)
SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM closed
""")


async def close_unconfirmed(session: AsyncSession, *, now: datetime, after: timedelta, batch: int = 500) -> list[int]:
    """Close (as the system) resolved orders nobody confirmed within ``after``, set-based,
    up to ``batch``; one ``workorder.changed`` each. Returns their ids."""
    ids = list((await session.execute(_AUTO_CLOSE, {
        "before": now - after, "now": now, "batch": batch, "note": f"{after.days} 天内未确认, 自动关闭",
    })).scalar_one())
    for order_id in ids:
        await emit_event(session, "workorder.changed", WorkOrderChanged(order_id, S.closed.value, "system"))
    return ids


# --------------------------------------------------------------------------- lists

_wo = WorkOrder.__table__  # type: ignore[attr-defined]
_hh = Household.__table__  # type: ignore[attr-defined]
_staff = StaffUser.__table__  # type: ignore[attr-defined]


def overdue_condition(now: Any) -> Any:
    """SQL: the order is open past its response deadline (unassigned) or resolution deadline."""
    # Enum values as literals (no user text): a long-lived page statement takes no list binds.
    return or_(
        and_(_wo.c.state == literal_column(f"'{S.submitted.value}'"), _wo.c.response_due_at < now),
        and_(_wo.c.state.in_([literal_column(f"'{s.value}'") for s in OPEN_STATES]), _wo.c.resolve_due_at < now),
    )


@dataclass(frozen=True, slots=True)
class WorkOrderFilter:
    states: Sequence[WorkOrderState] | None = None
    categories: Sequence[WorkOrderCategory] | None = None
    area_path: str | None = None  # an area's path: its subtree
    overdue: bool | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    assignee_id: int | None = None
    unassigned: bool = False


def _columns(now: Any) -> list[Any]:
    return [*_wo.c, _hh.c.account_no, _hh.c.name.label("household_name"),
            _staff.c.full_name.label("assignee_name"), overdue_condition(now).label("overdue")]


def _joined() -> Any:
    return _wo.join(_hh, _hh.c.id == _wo.c.household_id).outerjoin(_staff, _staff.c.id == _wo.c.assignee_id)


@functools.cache
def _page_query(resident: bool, by_state: bool, by_category: bool, by_area: bool, overdue: bool | None, by_from: bool,
                by_to: bool, by_assignee: bool, unassigned: bool) -> tuple[Select[Any], Select[Any]]:
    now = bindparam("now", type_=DateTime(timezone=True))
    if resident:
        conditions: list[Any] = [_wo.c.household_id == any_(bindparam("household_ids", type_=ARRAY(BigInteger)))]
    else:
        conditions = [_wo.c.area_path.like(any_(bindparam("patterns", type_=ARRAY(Text))))]
    if by_state:
        conditions.append(_wo.c.state == any_(bindparam("states", type_=ARRAY(Text))))
    if by_category:
        conditions.append(_wo.c.category == any_(bindparam("categories", type_=ARRAY(Text))))
    if by_area:
        conditions.append(_wo.c.area_path.like(bindparam("area_pattern", type_=Text)))
    if overdue is not None:
        conditions.append(overdue_condition(now) if overdue else ~overdue_condition(now))
    if by_from:
        conditions.append(_wo.c.created_at >= bindparam("created_from", type_=DateTime(timezone=True)))
    if by_to:
        conditions.append(_wo.c.created_at < bindparam("created_to", type_=DateTime(timezone=True)))
    if by_assignee:
        conditions.append(_wo.c.assignee_id == bindparam("assignee_id", type_=BigInteger))
    if unassigned:
        conditions.append(_wo.c.assignee_id.is_(None))
    rows = (select(*_columns(now)).select_from(_joined()).where(*conditions)
            .order_by(_wo.c.id.desc()).offset(bindparam("_offset")).limit(bindparam("_limit")))
    count = select(func.count()).select_from(_wo).where(*conditions)
    return rows, count


def work_order_page_query(*, principal: Principal, where: WorkOrderFilter = WorkOrderFilter(), now: datetime) -> PagedQuery:
    """The orders the principal reaches (a resident: their households'; staff: their
    scope's), newest first, narrowed by ``where``. Each row: the order's columns,
    ``account_no``, ``household_name``, ``assignee_name`` and ``overdue``."""
    rows, count = _page_query(
        principal.is_resident, bool(where.states), bool(where.categories), where.area_path is not None, where.overdue,
        where.created_from is not None, where.created_to is not None, where.assignee_id is not None, where.unassigned)
    params: dict[str, Any] = {"now": now}
    if principal.is_resident:
        params["household_ids"] = list(principal.household_ids)
    else:
        params["patterns"] = principal.scope_patterns()
    if where.states:
        params["states"] = [WorkOrderState(s).value for s in where.states]
    if where.categories:
        params["categories"] = [WorkOrderCategory(c).value for c in where.categories]
    if where.area_path is not None:
        params["area_pattern"] = where.area_path + "%"
    for name in ("created_from", "created_to", "assignee_id"):
        value = getattr(where, name)
        if value is not None:
            params[name] = value
    return PagedQuery(rows=rows, count=count, params=params)


async def work_order_view(session: AsyncSession, *, order_id: int, principal: Principal, now: datetime) -> Any:
    """One order as the lists show it, when the principal reaches it; NOT_FOUND otherwise."""
    row = (await session.execute(select(*_columns(literal(now, DateTime(timezone=True)))).select_from(_joined())
                                 .where(_wo.c.id == order_id))).first()
    if row is None:
        raise NotFound(field="id")
    order = WorkOrder(**{key: row._mapping[key] for key in ("id", "household_id", "area_path")})
    if not reaches(principal, order):
        raise NotFound(field="id")
    return row


async def transitions_of(session: AsyncSession, *, order_ids: Sequence[int]) -> dict[int, list[WorkOrderTransition]]:
    rows = (await session.execute(select(WorkOrderTransition).where(
        col(WorkOrderTransition.work_order_id).in_(order_ids)).order_by(col(WorkOrderTransition.id)))).scalars()
    found: dict[int, list[WorkOrderTransition]] = {order_id: [] for order_id in order_ids}
    for row in rows:
        found[row.work_order_id].append(row)
    return found


async def photos_of(session: AsyncSession, *, order_ids: Sequence[int]) -> dict[int, list[WorkOrderPhoto]]:
    rows = (await session.execute(select(WorkOrderPhoto).where(
        col(WorkOrderPhoto.work_order_id).in_(order_ids)).order_by(col(WorkOrderPhoto.id)))).scalars()
    found: dict[int, list[WorkOrderPhoto]] = {order_id: [] for order_id in order_ids}
    for row in rows:
        found[row.work_order_id].append(row)
    return found


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    label: str
    count: int
    resolved: int
    overdue: int
    average_resolution_s: float | None


@dataclass(frozen=True, slots=True)
class WorkOrderStatistics:
    total: int
    overdue: int
    average_resolution_s: float | None
    average_rating: float | None
    by_state: list[Bucket] = field(default_factory=list)
    by_category: list[Bucket] = field(default_factory=list)
    by_area: list[Bucket] = field(default_factory=list)
    by_assignee: list[Bucket] = field(default_factory=list)


_STATS = text("""
WITH o AS (
    SELECT w.*, (w.state = 'submitted' AND w.response_due_at < :now)
                OR (w.state IN ('submitted', 'assigned', 'on_the_way', 'in_progress') AND w.resolve_due_at < :now) AS late,
           extract(epoch FROM (w.resolved_at - w.created_at)) AS took,
           split_part(w.area_path, '/', :depth + 1) AS area_key
    FROM work_orders w
    WHERE w.area_path LIKE ANY(:patterns) AND w.created_at >= :start AND w.created_at < :end
)
SELECT 'state' AS dim, state AS key, count(*) AS n, count(resolved_at) AS resolved, count(*) FILTER (WHERE late) AS late,
       avg(took) AS took FROM o GROUP BY state
UNION ALL
SELECT 'category', category, count(*), count(resolved_at), count(*) FILTER (WHERE late), avg(took) FROM o GROUP BY category
UNION ALL
SELECT 'area', area_key, count(*), count(resolved_at), count(*) FILTER (WHERE late), avg(took) FROM o GROUP BY area_key
UNION ALL
SELECT 'assignee', coalesce(assignee_id::text, ''), count(*), count(resolved_at), count(*) FILTER (WHERE late), avg(took)
FROM o GROUP BY assignee_id
UNION ALL
SELECT 'total', '', count(*), count(resolved_at), count(*) FILTER (WHERE late), avg(took) FROM o
UNION ALL
SELECT 'rating', '', count(rating), 0, 0, avg(rating) FROM o
""").bindparams(bindparam("patterns", type_=ARRAY(Text)))


async def work_order_statistics(session: AsyncSession, *, principal: Principal, start: datetime, end: datetime,
                                now: datetime, area_depth: int = 2) -> WorkOrderStatistics:
    """Orders made in ``[start, end)`` in the principal's scope: counts by state, category,
    area (the ``area_depth``-th level of the tree: 2 = districts under the company) and
    assignee, each with resolved / overdue counts and the average resolution time
    (created → resolved), plus the total, overdue count and average rating. One statement."""
    if end <= start or end - start > timedelta(days=366):
        raise DomainError("统计区间须为 1 天至 1 年", "The range is from one day to one year", field="end",
                          code=ErrorCode.RANGE_TOO_LONG)
    rows = (await session.execute(_STATS, {"patterns": principal.scope_patterns() if not principal.is_resident else [],
                                           "start": start, "end": end, "now": now, "depth": area_depth})).all()
    buckets: dict[str, list[Bucket]] = {"state": [], "category": [], "area": [], "assignee": []}
    total = overdue = 0
    took: float | None = None
    rating: float | None = None
    area_ids = [int(r.key) for r in rows if r.dim == "area" and r.key.isdigit()]
    staff_ids = [int(r.key) for r in rows if r.dim == "assignee" and r.key.isdigit()]
    _area = Area.__table__  # type: ignore[attr-defined]
    area_names: dict[int, str] = {row.id: row.name for row in (await session.execute(
        select(_area.c.id, _area.c.name).where(_area.c.id.in_(area_ids)))).all()}
    staff_names: dict[int, str] = {row.id: row.full_name for row in (await session.execute(
        select(_staff.c.id, _staff.c.full_name).where(_staff.c.id.in_(staff_ids)))).all()}
    for row in rows:
        average = float(row.took) if row.took is not None else None
        if row.dim == "total":
            total, overdue, took = int(row.n), int(row.late), average
            continue
        if row.dim == "rating":
            rating = average
            continue
        label = row.key
        if row.dim == "area":
            label = area_names.get(int(row.key), row.key) if row.key.isdigit() else ""
        elif row.dim == "assignee":
            label = staff_names.get(int(row.key), "") if row.key else "未分派"
        buckets[row.dim].append(Bucket(row.key, label, int(row.n), int(row.resolved), int(row.late), average))
    for values in buckets.values():
        values.sort(key=lambda bucket: (-bucket.count, bucket.key))
    return WorkOrderStatistics(total=total, overdue=overdue, average_resolution_s=took, average_rating=rating,
                               by_state=buckets["state"], by_category=buckets["category"], by_area=buckets["area"],
                               by_assignee=buckets["assignee"])

