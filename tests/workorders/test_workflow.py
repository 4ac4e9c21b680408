"""The work-order workflow through the service layer: every allowed transition recorded
with one event, refusals typed and writing nothing, scope, SLA overdue, statistics and
the auto-close job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.alarms.models import AlarmKind, AlarmSubjectKind
from backend.alarms.service import AlarmSubject, open_alarms
from backend.archives.service import assign_meter
from backend.errors import DomainError, ErrorCode, NotFound
from backend.workorders import service
from backend.workorders.models import WorkOrderCategory, WorkOrderSource, WorkOrderState, WorkOrderTransition
from backend.workorders.settings import WorkordersSettings
from tests.readings.factories import make_meter
from tests.workorders.support import LATER, NOW, TZ, World, footprint, listed, make_world, report, staff_member

S = WorkOrderState


@pytest.fixture
async def world(session: AsyncSession) -> World:
    return await make_world(session)


async def _states(session: AsyncSession, order_id: int) -> list[tuple[str | None, str, str]]:
    rows = (await session.execute(select(WorkOrderTransition).where(WorkOrderTransition.work_order_id == order_id)  # type: ignore[arg-type]
                                  .order_by(WorkOrderTransition.id))).scalars()  # type: ignore[arg-type]
    return [(r.from_state.value if r.from_state else None, r.to_state.value, r.actor_kind.value) for r in rows]


async def test_the_whole_way_from_report_to_closed_records_every_transition(session: AsyncSession, world: World) -> None:
    order = await report(session, world, appointment_at=NOW + timedelta(hours=3))
    oid = order.id or 0
    staff = world.handler.principal
    assert order.state is S.submitted and order.number == f"GD20261207-{oid:06d}"
    assert (order.contact_name, order.contact_phone) == ("王芳", "13800001111")

    await service.take_work_order(session, principal=staff, order_id=oid, now=NOW + LATER)
    await service.start_travel(session, principal=staff, order_id=oid, now=NOW + 2 * LATER)
    await service.start_work(session, principal=staff, order_id=oid, now=NOW + 3 * LATER)
    await service.resolve_work_order(session, principal=staff, order_id=oid, result="更换三通",
                                     materials=[service.Material("三通", Decimal("2"), "个")], now=NOW + 4 * LATER)
    await service.confirm_work_order(session, principal=world.resident, order_id=oid, rating=5, comment="很及时",
                                     now=NOW + 5 * LATER)
    closed = await service.close_work_order(session, principal=world.supervisor.principal, order_id=oid, note=None,
                                            now=NOW + 6 * LATER)

    assert await _states(session, oid) == [
        (None, "submitted", "resident"), ("submitted", "assigned", "staff"), ("assigned", "on_the_way", "staff"),
        ("on_the_way", "in_progress", "staff"), ("in_progress", "resolved", "staff"), ("resolved", "confirmed", "resident"),
        ("confirmed", "closed", "staff")]
    assert (closed.state, closed.assignee_id, closed.rating, closed.rating_comment) == (
        S.closed, world.handler.user.id, 5, "很及时")
    assert closed.materials == [{"name": "三通", "quantity": "2", "unit": "个"}]
    assert (await footprint(session, oid))[1:] == (7, 7)


async def test_a_supervisor_dispatches_and_the_resident_reopens_back_to_the_assignee(
        session: AsyncSession, world: World) -> None:
    oid = (await report(session, world)).id or 0
    staff = world.other_handler.principal

    await service.dispatch_work_order(session, principal=world.supervisor.principal, order_id=oid,
                                      assignee_id=world.other_handler.user.id or 0, now=NOW + LATER)
    await service.start_work(session, principal=staff, order_id=oid, now=NOW + 2 * LATER)
    await service.resolve_work_order(session, principal=staff, order_id=oid, result="已修好", now=NOW + 3 * LATER)
    reopened = await service.reopen_work_order(session, principal=world.resident, order_id=oid, note="还在漏",
                                               now=NOW + 4 * LATER)

    assert (reopened.state, reopened.assignee_id, reopened.resolved_at) == (S.assigned, world.other_handler.user.id, None)
    assert (await _states(session, oid))[-1] == ("resolved", "assigned", "resident")


async def test_dispatch_only_to_staff_who_can_work_the_order_else_not_found_and_nothing_written(
        session: AsyncSession, world: World) -> None:
    oid = (await report(session, world)).id or 0  # an east order
    no_handle = await staff_member(session, permissions={"workorders:read"}, area=world.tree.east)
    before = await footprint(session, oid)

    refused = []
    for assignee in (world.west_handler, no_handle):  # outside the order's area; cannot handle orders
        with pytest.raises(NotFound) as error:
            await service.dispatch_work_order(session, principal=world.supervisor.principal, order_id=oid,
                                              assignee_id=assignee.user.id or 0, now=NOW + LATER)
        refused.append((error.value.code, error.value.field))

    assert refused == [(ErrorCode.NOT_FOUND, "assigneeId")] * 2
    assert await footprint(session, oid) == before


async def test_cancelling_by_the_resident_before_work_and_by_staff_with_a_reason(session: AsyncSession, world: World) -> None:
    mine = (await report(session, world)).id or 0
    theirs = (await report(session, world)).id or 0
    await service.take_work_order(session, principal=world.handler.principal, order_id=theirs, now=NOW)
    await service.start_work(session, principal=world.handler.principal, order_id=theirs, now=NOW)

    cancelled = await service.cancel_work_order(session, principal=world.resident, order_id=mine, note=None, now=NOW)
    with pytest.raises(DomainError) as late:
        await service.cancel_work_order(session, principal=world.resident, order_id=theirs, note=None, now=NOW)
    with pytest.raises(DomainError) as reasonless:
        await service.cancel_work_order(session, principal=world.handler.principal, order_id=theirs, note=" ", now=NOW)
    by_staff = await service.cancel_work_order(session, principal=world.handler.principal, order_id=theirs,
                                               note="住户联系不上", now=NOW)

    assert cancelled.state is S.cancelled and by_staff.state is S.cancelled
    assert (late.value.code, reasonless.value.code, reasonless.value.field) == (
        ErrorCode.WORKORDER_TRANSITION_NOT_ALLOWED, ErrorCode.REQUIRED, "note")


async def test_refused_transitions_are_typed_and_write_nothing(session: AsyncSession, world: World) -> None:
    oid = (await report(session, world)).id or 0
    staff, other = world.handler.principal, world.other_handler.principal
    before = await footprint(session, oid)

    attempts = [
        (service.start_travel(session, principal=staff, order_id=oid, now=NOW), ErrorCode.WORKORDER_TRANSITION_NOT_ALLOWED),
        (service.resolve_work_order(session, principal=staff, order_id=oid, result="x", now=NOW),
         ErrorCode.WORKORDER_TRANSITION_NOT_ALLOWED),
        (service.confirm_work_order(session, principal=world.resident, order_id=oid, rating=5, comment=None, now=NOW),
         ErrorCode.WORKORDER_TRANSITION_NOT_ALLOWED),
        (service.close_work_order(session, principal=staff, order_id=oid, note=None, now=NOW),
         ErrorCode.WORKORDER_TRANSITION_NOT_ALLOWED),
        (service.reopen_work_order(session, principal=world.resident, order_id=oid, note="x", now=NOW),
         ErrorCode.WORKORDER_TRANSITION_NOT_ALLOWED),
    ]
    for attempt, code in attempts:
        with pytest.raises(DomainError) as refused:
            await attempt
        assert refused.value.code is code
    assert await footprint(session, oid) == before

    await service.take_work_order(session, principal=staff, order_id=oid, now=NOW)
    taken = await footprint(session, oid)
    with pytest.raises(DomainError) as again:
        await service.take_work_order(session, principal=other, order_id=oid, now=NOW)
    with pytest.raises(DomainError) as not_theirs:
        await service.start_work(session, principal=other, order_id=oid, now=NOW)
    assert (again.value.code, not_theirs.value.code) == (ErrorCode.WORKORDER_ALREADY_TAKEN, ErrorCode.WORKORDER_NOT_ASSIGNEE)
    assert await footprint(session, oid) == taken


async def test_rating_is_one_to_five_and_only_once(session: AsyncSession, world: World) -> None:
    oid = (await report(session, world)).id or 0
    staff = world.handler.principal
    await service.take_work_order(session, principal=staff, order_id=oid, now=NOW)
    await service.start_work(session, principal=staff, order_id=oid, now=NOW)
    await service.resolve_work_order(session, principal=staff, order_id=oid, result="ok", now=NOW)
    resolved = await footprint(session, oid)

    with pytest.raises(DomainError) as six:
        await service.confirm_work_order(session, principal=world.resident, order_id=oid, rating=6, comment=None, now=NOW)
    with pytest.raises(DomainError) as by_staff:
        await service.confirm_work_order(session, principal=staff, order_id=oid, rating=5, comment=None, now=NOW)
    assert await footprint(session, oid) == resolved
    await service.confirm_work_order(session, principal=world.resident, order_id=oid, rating=4, comment="好", now=NOW)
    rated = await footprint(session, oid)
    with pytest.raises(DomainError) as twice:
        await service.confirm_work_order(session, principal=world.resident, order_id=oid, rating=1, comment=None, now=NOW)

    assert (six.value.code, by_staff.value.code, twice.value.code) == (
        ErrorCode.WORKORDER_RATING_INVALID, ErrorCode.FORBIDDEN, ErrorCode.WORKORDER_ALREADY_RATED)
    assert await footprint(session, oid) == rated


async def test_another_households_order_and_one_outside_the_scope_are_not_found(session: AsyncSession, world: World) -> None:
    oid = (await report(session, world)).id or 0
    before = await footprint(session, oid)

    refusals = []
    for attempt in (
        service.cancel_work_order(session, principal=world.stranger, order_id=oid, note=None, now=NOW),
        service.take_work_order(session, principal=world.west_handler.principal, order_id=oid, now=NOW),
        service.work_order_view(session, order_id=oid, principal=world.stranger, now=NOW),
        service.create_work_order(session, principal=world.resident, household_id=world.elsewhere.id or 0,
                                  category=WorkOrderCategory.leak, description="x", contact_name=None, contact_phone=None,
                                  appointment_at=None, now=NOW, tz=TZ),
    ):
        with pytest.raises(DomainError) as refused:
            await attempt
        refusals.append(refused.value.code)

    assert refusals == [ErrorCode.NOT_FOUND] * 4
    assert await footprint(session, oid) == before
    assert [row.id for row in await listed(session, world.stranger)] == []
    assert [row.id for row in await listed(session, world.west_handler.principal)] == []
    assert [row.id for row in await listed(session, world.resident)] == [oid]


async def test_bad_report_fields_are_refused_together(session: AsyncSession, world: World) -> None:
    with pytest.raises(DomainError) as refused:
        await report(session, world, description=" ", contact_phone="abc")

    assert sorted((e.field, e.code) for e in refused.value.errors) == [  # type: ignore[attr-defined]
        ("contactPhone", ErrorCode.INVALID), ("description", ErrorCode.REQUIRED)]


async def test_a_contact_phone_fits_its_twenty_characters_plus_sign_included(session: AsyncSession, world: World) -> None:
    longest = await report(session, world, contact_phone="+86" + "1" * 17)  # 20 characters
    with pytest.raises(DomainError) as refused:
        await report(session, world, contact_phone="+86" + "1" * 18)  # 21: refused, not a database error

    assert longest.contact_phone == "+86" + "1" * 17
    assert (refused.value.field, refused.value.code) == ("contactPhone", ErrorCode.INVALID)


async def test_an_order_is_overdue_past_its_response_then_its_resolution_deadline(session: AsyncSession, world: World) -> None:
    leak = (await report(session, world, category=WorkOrderCategory.leak)).id or 0  # 30 min / 4 h
    query = (await report(session, world, category=WorkOrderCategory.billing_query)).id or 0  # 4 h / 48 h
    staff = world.handler.principal

    def overdue_at(now: object) -> list[int]:
        return [row.id for row in rows_at[now]]  # type: ignore[index]

    rows_at = {}
    for offset in (timedelta(minutes=20), timedelta(minutes=40)):
        rows_at[offset] = await listed(session, staff, service.WorkOrderFilter(overdue=True), now=NOW + offset)
    assert overdue_at(timedelta(minutes=20)) == [] and overdue_at(timedelta(minutes=40)) == [leak]

    await service.take_work_order(session, principal=staff, order_id=leak, now=NOW + timedelta(minutes=45))
    after_take = await listed(session, staff, service.WorkOrderFilter(overdue=True), now=NOW + timedelta(hours=1))
    past_resolution = await listed(session, staff, service.WorkOrderFilter(overdue=True), now=NOW + timedelta(hours=5))
    not_overdue = await listed(session, staff, service.WorkOrderFilter(overdue=False), now=NOW + timedelta(hours=5))

    assert [row.id for row in after_take] == []
    assert [(row.id, row.overdue) for row in past_resolution] == [(query, True), (leak, True)]
    assert not_overdue == []


async def test_statistics_count_by_category_assignee_and_average_resolution(session: AsyncSession, world: World) -> None:
    staff = world.handler.principal
    leaks = [(await report(session, world)).id or 0 for _ in range(2)]
    await report(session, world, category=WorkOrderCategory.meter_fault)
    for index, oid in enumerate(leaks):
        await service.take_work_order(session, principal=staff, order_id=oid, now=NOW)
        await service.start_work(session, principal=staff, order_id=oid, now=NOW)
        await service.resolve_work_order(session, principal=staff, order_id=oid, result="ok",
                                         now=NOW + timedelta(minutes=60 * (index + 1)))
    await service.confirm_work_order(session, principal=world.resident, order_id=leaks[0], rating=4, comment=None, now=NOW)

    stats = await service.work_order_statistics(session, principal=world.supervisor.principal, start=NOW - timedelta(days=1),
                                                end=NOW + timedelta(days=1), now=NOW + timedelta(hours=3))

    # The meter fault is still unassigned 3 h on (its response deadline: 2 h).
    assert (stats.total, stats.overdue, stats.average_resolution_s, stats.average_rating) == (3, 1, 5400.0, 4.0)
    assert [(b.key, b.count, b.resolved, b.overdue) for b in stats.by_category] == [
        ("leak", 2, 2, 0), ("meter_fault", 1, 0, 1)]
    assert [(b.label, b.count) for b in stats.by_assignee] == [(world.handler.user.full_name, 2), ("未分派", 1)]
    assert [(b.label, b.count) for b in stats.by_area] == [("城东片区", 3)]
    assert sorted((b.key, b.count) for b in stats.by_state) == [("confirmed", 1), ("resolved", 1), ("submitted", 1)]
    west = await service.work_order_statistics(session, principal=world.west_handler.principal,
                                               start=NOW - timedelta(days=1), end=NOW + timedelta(days=1), now=NOW)
    assert west.total == 0


async def test_resolved_orders_nobody_confirmed_close_after_the_wait(session: AsyncSession, world: World) -> None:
    staff = world.handler.principal
    old, recent = [(await report(session, world)).id or 0 for _ in range(2)]
    for oid, at in ((old, NOW - timedelta(days=8)), (recent, NOW - timedelta(days=1))):
        await service.take_work_order(session, principal=staff, order_id=oid, now=at)
        await service.start_work(session, principal=staff, order_id=oid, now=at)
        await service.resolve_work_order(session, principal=staff, order_id=oid, result="ok", now=at)

    closed = await service.close_unconfirmed(session, now=NOW, after=timedelta(days=7))

    assert old in closed and recent not in closed
    assert (await _states(session, old))[-1] == ("resolved", "closed", "system")
    assert (await footprint(session, old))[0][0] == "closed"


def test_the_sla_settings_override_some_categories_and_refuse_a_resolution_before_the_response(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHUIWU_WORKORDERS_SLA", '{"leak": [20, 180]}')
    policy = WorkordersSettings().policy()

    assert policy.due(WorkOrderCategory.leak, NOW) == (NOW + timedelta(minutes=20), NOW + timedelta(hours=3))
    assert policy.due(WorkOrderCategory.other, NOW) == (NOW + timedelta(hours=4), NOW + timedelta(hours=72))
    monkeypatch.setenv("SHUIWU_WORKORDERS_SLA", '{"leak": [60, 30]}')
    with pytest.raises(ValidationError):
        WorkordersSettings()


async def test_statistics_span_a_year_at_most(session: AsyncSession, world: World) -> None:
    year = await service.work_order_statistics(session, principal=world.supervisor.principal, start=NOW,
                                               end=NOW + timedelta(days=366), now=NOW)
    with pytest.raises(DomainError) as longer:
        await service.work_order_statistics(session, principal=world.supervisor.principal, start=NOW,
                                            end=NOW + timedelta(days=366, seconds=1), now=NOW)

    assert year.total == 0 and (longer.value.code, longer.value.field) == (ErrorCode.RANGE_TOO_LONG, "end")


async def test_staff_make_an_order_from_a_meter_alarm_of_their_scope(session: AsyncSession, world: World) -> None:
    meter = await make_meter(session, area_id=world.tree.east_community.id)
    assert meter.id is not None
    await assign_meter(session, meter_id=meter.id, household_id=world.home.id or 0,
                       valid_from=datetime(2025, 1, 1, tzinfo=UTC), start_reading=Decimal(0), now=NOW)
    opened = await open_alarms(session, subject_kind=AlarmSubjectKind.meter, kind=AlarmKind.high_use, now=NOW,
                               subjects=[AlarmSubject(meter.id, detail="日用水 3.2 吨, 为平均的 8 倍")])
    alarm_id = opened.opened[0]

    order = await service.create_from_alarm(session, principal=world.handler.principal, alarm_id=alarm_id,
                                            description=None, now=NOW, tz=TZ)
    with pytest.raises(DomainError) as outside:
        await service.create_from_alarm(session, principal=world.west_handler.principal, alarm_id=alarm_id,
                                        description=None, now=NOW, tz=TZ)

    assert (order.household_id, order.category, order.source, order.created_by_id) == (
        world.home.id, WorkOrderCategory.leak, WorkOrderSource.system, world.handler.user.id)
    assert order.description == f"由告警生成: 水表 {meter.code} 用水突增, 日用水 3.2 吨, 为平均的 8 倍"
    assert outside.value.code is ErrorCode.NOT_FOUND
