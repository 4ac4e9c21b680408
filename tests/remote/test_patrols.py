"""Patrol tasks (巡测任务设定): saved within scope, due by their cron schedule in the
utility's zone, enqueued once per task and minute with a read per meter, counted as
their commands end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth.system import system_actor
from backend.errors import DomainError, ErrorCode, NotFound, ValidationFailed
from backend.remote import patrols, service
from backend.remote.models import CommandKind, FailureKind, PatrolRunState
from backend.remote.patrols import PatrolTaskFields
from tests.remote.support import make_world
from tests.workorders.support import staff_member

TZ = ZoneInfo("Asia/Shanghai")
SYSTEM = system_actor({"remote:read"})
# 02:00 in Beijing is 18:00 UTC the day before.
TWO_AM = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)
SAVED = TWO_AM - timedelta(hours=1)


def test_due_minutes_are_read_in_the_utilitys_zone() -> None:
    due = patrols.due_minutes("0 2 * * *", after=TWO_AM - timedelta(minutes=5), until=TWO_AM + timedelta(seconds=30),
                              tz=TZ)

    assert due == [TWO_AM]


def test_a_window_without_a_scheduled_minute_is_not_due() -> None:
    assert patrols.due_minutes("0 2 * * *", after=TWO_AM, until=TWO_AM + timedelta(minutes=59), tz=TZ) == []


@pytest.mark.parametrize("schedule", ["", "* * * *", "61 * * * *", "* * * * * *", "every day"])
def test_a_schedule_that_is_not_five_cron_fields_is_refused(schedule: str) -> None:
    with pytest.raises(DomainError) as refused:
        patrols.valid_schedule(schedule)

    assert (refused.value.code, refused.value.field) == (ErrorCode.PATROL_SCHEDULE_INVALID, "schedule")


async def _task(session: AsyncSession, **values: object):  # type: ignore[no-untyped-def]
    world = await make_world(session)
    manager = await staff_member(session, permissions={"patrols:manage", "patrols:read"}, area=world.tree.east)
    fields = PatrolTaskFields(**{"name": "城东每日巡测", "schedule": "0 2 * * *",
                                 "area_ids": (world.tree.east_community.id or 0,), **values})  # type: ignore[arg-type]
    task = await patrols.create_patrol_task(session, principal=manager.principal, fields=fields, now=SAVED)
    return world, manager, task


async def test_a_due_task_becomes_one_run_with_a_read_per_reachable_meter(session: AsyncSession) -> None:
    world, _, task = await _task(session)

    [run] = await patrols.enqueue_due_patrols(session, now=TWO_AM + timedelta(seconds=20), tz=TZ, actor=SYSTEM)

    query = service.command_page_query(principal=SYSTEM, where=service.CommandFilter(patrol_run_id=run.id))
    rows = (await session.execute(query.rows, {**query.params, "_offset": 0, "_limit": 100})).all()
    reachable = [m.id for m in world.east_valve_meters] + [world.east_plain_meter.id, world.nb_iot_meter.id]
    assert sorted(r.meter_id for r in rows) == sorted(reachable)
    assert {r.kind for r in rows} == {CommandKind.read_now.value}
    assert {r.issued_by_name for r in rows} == {"系统"}
    # Each answers within the task's time limit, but may wait behind the others of its bus.
    bus = [r for r in rows if r.link != service.MQTT_LINK]
    assert {(r.time_limit_s, r.deadline) for r in bus} == {(30, TWO_AM + timedelta(seconds=20, hours=1))}
    assert (run.task_id, run.due_at, run.state, run.meters_total) == (task.id, TWO_AM, PatrolRunState.running,
                                                                      len(reachable))


async def test_a_minute_is_enqueued_once_however_often_the_job_runs(session: AsyncSession) -> None:
    await _task(session)

    first = await patrols.enqueue_due_patrols(session, now=TWO_AM + timedelta(seconds=5), tz=TZ, actor=SYSTEM)
    again = await patrols.enqueue_due_patrols(session, now=TWO_AM + timedelta(seconds=50), tz=TZ, actor=SYSTEM)
    late = await patrols.enqueue_due_patrols(session, now=TWO_AM + timedelta(minutes=3), tz=TZ, actor=SYSTEM)

    assert (len(first), again, late) == (1, [], [])


async def test_a_disabled_task_is_not_due(session: AsyncSession) -> None:
    _, manager, task = await _task(session)
    await patrols.set_patrol_task_enabled(session, principal=manager.principal, task_id=task.id or 0, enabled=False,
                                          now=SAVED)

    assert await patrols.enqueue_due_patrols(session, now=TWO_AM, tz=TZ, actor=SYSTEM) == []


async def test_a_run_counts_its_commands_ends_and_finishes_with_its_success_rate(session: AsyncSession) -> None:
    world = await make_world(session)
    manager = await staff_member(session, permissions={"patrols:manage"}, area=world.tree.east)
    meters = tuple(m.id or 0 for m in world.east_valve_meters[:2])
    await patrols.create_patrol_task(session, principal=manager.principal, now=SAVED, fields=PatrolTaskFields(
        name="两块表", schedule="0 2 * * *", meter_ids=meters))
    now = TWO_AM + timedelta(seconds=5)
    [run] = await patrols.enqueue_due_patrols(session, now=now, tz=TZ, actor=SYSTEM)
    await service.take_leases(session, holder="w", links=[world.east_link], ttl=timedelta(minutes=1), now=now)
    claimed = await service.claim_commands(session, holder="w", link_ids=[world.east_link], limit=100, now=now)

    await service.finish_command(session, command_id=claimed[0].id or 0, holder="w", succeeded=True, now=now)
    await service.finish_command(session, command_id=claimed[1].id or 0, holder="w", succeeded=False,
                                 failure_kind=FailureKind.bad_frame, now=now)

    finished = await session.get(type(run), run.id, populate_existing=True)
    assert finished is not None
    assert (finished.meters_total, finished.state, finished.meters_read, finished.meters_failed) == (
        2, PatrolRunState.finished, 1, 1)
    assert patrols.success_rate(finished) == 0.5


async def test_a_run_whose_worker_died_is_interrupted_until_the_next_holder_finishes_it(session: AsyncSession) -> None:
    world = await make_world(session)
    manager = await staff_member(session, permissions={"patrols:manage"}, area=world.tree.east)
    meters = (world.east_valve_meters[0].id or 0,)
    await patrols.create_patrol_task(session, principal=manager.principal, now=SAVED, fields=PatrolTaskFields(
        name="一块表", schedule="0 2 * * *", meter_ids=meters, time_limit_s=600))
    now = TWO_AM + timedelta(seconds=5)
    [run] = await patrols.enqueue_due_patrols(session, now=now, tz=TZ, actor=SYSTEM)
    await service.take_leases(session, holder="killed", links=[world.east_link], ttl=timedelta(seconds=30), now=now)
    await service.claim_commands(session, holder="killed", link_ids=[world.east_link], limit=100, now=now)

    later = now + timedelta(minutes=1)
    await service.take_leases(session, holder="next", links=[world.east_link], ttl=timedelta(seconds=30), now=later)
    interrupted = await session.get(type(run), run.id, populate_existing=True)
    assert interrupted is not None and interrupted.state is PatrolRunState.interrupted

    for command in await service.claim_commands(session, holder="next", link_ids=[world.east_link], limit=100,
                                                now=later):
        await service.finish_command(session, command_id=command.id or 0, holder="next", succeeded=True, now=later)
    resumed = await session.get(type(run), run.id, populate_existing=True)
    assert resumed is not None and (resumed.state, resumed.meters_read) == (PatrolRunState.finished, 1)


async def test_a_task_is_saved_only_with_targets_in_scope(session: AsyncSession) -> None:
    world = await make_world(session)
    manager = await staff_member(session, permissions={"patrols:manage"}, area=world.tree.east)

    with pytest.raises(NotFound) as outside:
        await patrols.create_patrol_task(session, principal=manager.principal, now=SAVED, fields=PatrolTaskFields(
            name="城西", schedule="0 2 * * *", meter_ids=(world.west_valve_meter.id or 0,)))
    with pytest.raises(ValidationFailed) as empty:
        await patrols.create_patrol_task(session, principal=manager.principal, now=SAVED, fields=PatrolTaskFields(
            name="", schedule="bad"))

    assert outside.value.field == "meterIds"
    assert sorted(e.field or "" for e in empty.value.errors) == ["areaIds", "name", "schedule"]


async def test_a_task_of_another_unit_is_not_found(session: AsyncSession) -> None:
    world, _, task = await _task(session)
    west = await staff_member(session, permissions={"patrols:manage"}, area=world.tree.west)

    with pytest.raises(NotFound):
        await patrols.set_patrol_task_enabled(session, principal=west.principal, task_id=task.id or 0, enabled=False,
                                              now=SAVED)
