"""The handler of ``workorder.changed`` (``workorders.notify``): whom each change tells,
and that it sends through ``notify_many`` once per event (a replay sends nothing)."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.events.service import Event
from backend.notifications import service as notifications
from backend.notifications.kinds import Recipient
from backend.workorders import service
from backend.workorders.models import WorkOrderState
from backend.workorders.notify import message_of, notify_changed
from tests.factories import bind_at_counter
from tests.workorders.support import NOW, make_world, report

S = WorkOrderState


async def test_staff_moves_tell_the_household_and_the_residents_moves_tell_the_assignee(session: AsyncSession) -> None:
    world = await make_world(session)
    order = await report(session, world)
    assert message_of(order, S.submitted, "resident:1") is None  # its creator knows

    await service.take_work_order(session, principal=world.handler.principal, order_id=order.id or 0, now=NOW)
    assigned = message_of(order, S.assigned, f"staff:{world.handler.user.id}")
    await service.start_work(session, principal=world.handler.principal, order_id=order.id or 0, now=NOW)
    await service.resolve_work_order(session, principal=world.handler.principal, order_id=order.id or 0, result="ok",
                                     now=NOW)
    await service.confirm_work_order(session, principal=world.resident, order_id=order.id or 0, rating=4, comment=None,
                                     now=NOW)
    confirmed = message_of(order, S.confirmed, f"resident:{world.resident.id}")

    assert assigned is not None and assigned[2] == Recipient.household(world.home.id or 0)
    assert assigned[1] == f"漏水工单 {order.number}: 已有工作人员受理您的报修"
    assert confirmed is not None and confirmed[2] == Recipient.staff(world.handler.user.id or 0)
    assert confirmed[1].endswith("住户已确认并评价 (4 星)")


async def _events(session: AsyncSession, order_id: int) -> list[Event]:
    rows = (await session.execute(text(
        "SELECT id, kind, key, payload, created_at FROM domain_events WHERE kind = 'workorder.changed' "
        "AND (payload->>'workorder_id')::bigint = :id ORDER BY id"), {"id": order_id})).all()
    return [Event(id=row.id, kind=row.kind, key=row.key, payload=row.payload, created_at=row.created_at) for row in rows]


async def test_each_change_is_sent_once_and_a_replay_sends_nothing(
        session: AsyncSession, monkeypatch: pytest.MonkeyPatch) -> None:
    world = await make_world(session)
    from backend.auth.models import PrincipalKind
    from backend.auth.models import Resident as ResidentRow

    resident_row = ResidentRow(phone="13800001111")
    session.add(resident_row)
    await session.flush()
    from backend.auth.principal import Principal

    await bind_at_counter(session, resident=Principal(kind=PrincipalKind.resident, id=resident_row.id or 0, name="住户"),
                          household=world.home)
    order = await report(session, world)
    staff = world.handler.principal
    await service.take_work_order(session, principal=staff, order_id=order.id or 0, now=NOW)
    await service.start_travel(session, principal=staff, order_id=order.id or 0, now=NOW)
    sent: list[int] = []
    real = notifications.notify_many

    async def counting(*args: Any, **kwargs: Any) -> int:
        count: int = await real(*args, **kwargs)
        sent.append(count)
        return count

    monkeypatch.setattr(notifications, "notify_many", counting)
    runtime = SimpleNamespace(now=lambda: NOW + timedelta(minutes=1))
    events = await _events(session, order.id or 0)

    for event in events:
        await notify_changed(runtime, session, event)  # type: ignore[arg-type]
    for event in events:  # replayed
        await notify_changed(runtime, session, event)  # type: ignore[arg-type]

    # submitted tells nobody; assigned and on_the_way one message each to the bound resident; the replay none.
    assert sent == [1, 1, 0, 0]
