"""The field-command queue: queueing against the catalog and scope, claiming only the
links a worker leases, results, retries, read-backs and the time-limit sweep."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth.system import system_actor
from backend.errors import DomainError, ErrorCode, Forbidden, NotFound
from backend.remote import service
from backend.remote.models import CommandKind, CommandState, FailureKind, RemoteCommand
from backend.remote.service import Selection
from tests.remote.support import LATER, NOW, command_count, events, make_world, states

TTL = timedelta(seconds=30)


async def test_a_read_now_is_queued_on_the_meters_link_with_the_default_time_limit(session: AsyncSession) -> None:
    world = await make_world(session)
    meter = world.east_valve_meters[0]

    command = await service.queue_command(session, target=meter.id or 0, kind=CommandKind.read_now, params={},
                                          issued_by=world.operator.principal, time_limit_s=None, now=NOW)

    assert (command.state, command.link, command.attempts, command.time_limit_s) == (
        CommandState.queued, world.east_link, 0, 30)
    assert command.deadline == NOW + timedelta(seconds=30)
    assert (command.issued_by_id, command.issued_by_name) == (world.operator.user.id, world.operator.user.full_name)
    assert {"command_ids": [command.id], "state": "queued", "links": [command.link]} in await events(
        session, "command.changed")


async def test_an_nb_iot_meter_waits_a_day_for_its_uplink(session: AsyncSession) -> None:
    world = await make_world(session)

    command = await service.queue_command(session, target=world.nb_iot_meter.id or 0, kind=CommandKind.valve_close,
                                          params={}, issued_by=world.operator.principal, time_limit_s=30, now=NOW)

    assert (command.link, command.time_limit_s) == (service.MQTT_LINK, 24 * 3600)


@pytest.mark.parametrize("kind", [CommandKind.valve_open, CommandKind.valve_close])
async def test_a_valve_command_for_a_meter_without_a_valve_is_refused_and_writes_nothing(
        session: AsyncSession, kind: CommandKind) -> None:
    world = await make_world(session)
    before = await command_count(session)

    with pytest.raises(DomainError) as refused:
        await service.queue_command(session, target=world.east_plain_meter.id or 0, kind=kind, params={},
                                    issued_by=world.operator.principal, time_limit_s=None, now=NOW)

    assert (refused.value.code, refused.value.field) == (ErrorCode.REMOTE_METER_HAS_NO_VALVE, "meterIds")
    assert await command_count(session) == before


async def test_a_meter_on_no_link_is_refused(session: AsyncSession) -> None:
    world = await make_world(session)

    with pytest.raises(DomainError) as refused:
        await service.queue_command(session, target=world.unlinked_meter.id or 0, kind=CommandKind.read_now, params={},
                                    issued_by=world.operator.principal, time_limit_s=None, now=NOW)

    assert refused.value.code is ErrorCode.REMOTE_METER_UNREACHABLE


@pytest.mark.parametrize(("params", "field"), [
    ({"settlement_day": 29}, "params.settlement_day"),
    ({"settlement_day": "x"}, "params.settlement_day"),
    ({"settlement_day": 1.5}, "params.settlement_day"),
    ({"colour": "red"}, "params.colour"),
    ({}, "params"),
])
async def test_parameters_outside_the_catalog_are_refused(session: AsyncSession, params: dict[str, object],
                                                          field: str) -> None:
    world = await make_world(session)

    with pytest.raises(DomainError) as refused:
        await service.queue_command(session, target=world.east_valve_meters[0].id or 0, kind=CommandKind.set_params,
                                    params=params, issued_by=world.operator.principal, time_limit_s=None, now=NOW)

    assert (refused.value.code, refused.value.field) == (ErrorCode.REMOTE_PARAMS_INVALID, field)


async def test_parameters_in_range_are_stored_as_the_catalog_types_them(session: AsyncSession) -> None:
    world = await make_world(session)

    command = await service.queue_command(
        session, target=world.east_valve_meters[0].id or 0, kind=CommandKind.set_params,
        params={"settlement_day": "15", "price_1_fen": 280, "step_1_m3": "180", "price_2_fen": 390, "step_2_m3": 260,
                "price_3_fen": 840, "prices_from_day": 1}, issued_by=world.operator.principal, now=NOW)

    assert command.params == {"settlement_day": 15, "price_1_fen": 280, "step_1_m3": 180, "price_2_fen": 390,
                              "step_2_m3": 260, "price_3_fen": 840, "prices_from_day": 1}


async def test_read_params_of_an_unknown_name_is_refused_and_nothing_is_queued(session: AsyncSession) -> None:
    world = await make_world(session)
    before = await command_count(session)

    with pytest.raises(DomainError) as refused:
        await service.queue_command(session, target=world.east_valve_meters[0].id or 0, kind=CommandKind.read_params,
                                    params={"names": ["valve"]}, issued_by=world.operator.principal, now=NOW)

    assert (refused.value.code, refused.value.field) == (ErrorCode.REMOTE_PARAMS_INVALID, "params.names")
    assert await command_count(session) == before


async def test_a_concentrator_command_is_not_for_a_meter(session: AsyncSession) -> None:
    world = await make_world(session)

    with pytest.raises(DomainError) as refused:
        await service.queue_command(session, target=world.east_valve_meters[0].id or 0,
                                    kind=CommandKind.remote_switch, params={"port": 1, "state": "on"},
                                    issued_by=world.operator.principal, now=NOW)

    assert refused.value.code is ErrorCode.REMOTE_COMMAND_NOT_FOR_TARGET


async def test_a_command_needs_its_permission(session: AsyncSession) -> None:
    world = await make_world(session)
    reader = system_actor({"remote:read"})

    with pytest.raises(Forbidden):
        await service.queue_command(session, target=world.east_valve_meters[0].id or 0, kind=CommandKind.valve_close,
                                    params={}, issued_by=reader, now=NOW)


async def test_the_range_mode_queues_every_installed_meter_under_the_areas_in_scope_and_skips_valveless_ones(
        session: AsyncSession) -> None:
    world = await make_world(session)

    batch = await service.queue_commands(
        session, selection=Selection(area_ids=(world.tree.east.id or 0,)), kind=CommandKind.valve_close, params={},
        issued_by=world.operator.principal, time_limit_s=None, now=NOW)

    queued = await service.commands_by_id(session, batch.command_ids)
    assert len(queued) == 4
    assert {c.meter_id for c in queued} == {m.id for m in [*world.east_valve_meters, world.nb_iot_meter]}
    assert {c.batch_id for c in queued} == {batch.batch_id}
    assert {s.meter_id for s in batch.skipped} == {world.east_plain_meter.id, world.unlinked_meter.id}


async def test_the_range_mode_refuses_an_area_outside_the_callers_scope(session: AsyncSession) -> None:
    world = await make_world(session)

    with pytest.raises(NotFound) as refused:
        await service.queue_commands(session, selection=Selection(area_ids=(world.tree.west.id or 0,)),
                                     kind=CommandKind.read_now, params={}, issued_by=world.operator.principal,
                                     time_limit_s=None, now=NOW)

    assert refused.value.field == "areaIds"


async def test_the_range_mode_by_concentrator_takes_its_meters(session: AsyncSession) -> None:
    world = await make_world(session)

    batch = await service.queue_commands(
        session, selection=Selection(concentrator_ids=(world.east_concentrator.id or 0,)), kind=CommandKind.read_now,
        params={}, issued_by=world.operator.principal, time_limit_s=None, now=NOW)

    queued = await service.commands_by_id(session, batch.command_ids)
    assert {c.meter_id for c in queued} == {m.id for m in [*world.east_valve_meters, world.east_plain_meter]}


async def test_the_checked_mode_refuses_a_meter_outside_the_callers_scope(session: AsyncSession) -> None:
    world = await make_world(session)
    before = await command_count(session)

    with pytest.raises(NotFound) as refused:
        await service.queue_commands(
            session, selection=Selection(meter_ids=(world.east_valve_meters[0].id or 0, world.west_valve_meter.id or 0)),
            kind=CommandKind.read_now, params={}, issued_by=world.operator.principal, time_limit_s=None, now=NOW)

    assert refused.value.field == "meterIds"
    assert await command_count(session) == before


async def test_a_time_limit_outside_its_range_is_refused(session: AsyncSession) -> None:
    world = await make_world(session)

    with pytest.raises(DomainError) as refused:
        await service.queue_command(session, target=world.east_valve_meters[0].id or 0, kind=CommandKind.read_now,
                                    params={}, issued_by=world.operator.principal, time_limit_s=0, now=NOW)

    assert (refused.value.code, refused.value.field) == (ErrorCode.REMOTE_TIME_LIMIT_INVALID, "timeLimitS")


# --------------------------------------------------------------------------- leases and claims


async def _queue_on_both_links(session: AsyncSession) -> tuple[object, list[int], list[int]]:
    world = await make_world(session)
    root = system_actor({"remote:read"})
    east = await service.queue_commands(
        session, selection=Selection(meter_ids=tuple(m.id or 0 for m in world.east_valve_meters)),
        kind=CommandKind.read_now, params={}, issued_by=root, time_limit_s=60, now=NOW)
    west = await service.queue_commands(
        session, selection=Selection(meter_ids=(world.west_valve_meter.id or 0,)), kind=CommandKind.read_now,
        params={}, issued_by=root, time_limit_s=60, now=NOW)
    return world, east.command_ids, west.command_ids


async def test_a_command_of_a_link_not_leased_is_never_claimed(session: AsyncSession) -> None:
    world, east_ids, west_ids = await _queue_on_both_links(session)
    await service.take_leases(session, holder="worker-a", links=[world.east_link], ttl=TTL, now=NOW)  # type: ignore[attr-defined]

    claimed = await service.claim_commands(session, holder="worker-a", link_ids=[world.east_link, world.west_link],  # type: ignore[attr-defined]
                                           limit=100, now=NOW)

    assert [c.id for c in claimed] == east_ids
    assert {c.state for c in claimed} == {CommandState.sent}
    assert {c.attempts for c in claimed} == {1}
    assert await states(session, west_ids) == ["queued"]


async def test_two_holders_never_claim_the_same_command(session: AsyncSession) -> None:
    world, east_ids, west_ids = await _queue_on_both_links(session)
    links = [world.east_link, world.west_link]  # type: ignore[attr-defined]
    assert await service.take_leases(session, holder="worker-a", links=links, ttl=TTL, now=NOW) == sorted(links)

    # The second worker finds both links held: it takes none and claims nothing.
    assert await service.take_leases(session, holder="worker-b", links=links, ttl=TTL, now=NOW) == []
    first = await service.claim_commands(session, holder="worker-a", link_ids=links, limit=2, now=NOW)
    second = await service.claim_commands(session, holder="worker-b", link_ids=links, limit=100, now=NOW)
    rest = await service.claim_commands(session, holder="worker-a", link_ids=links, limit=100, now=NOW)

    assert second == []
    assert [c.id for c in first] + [c.id for c in rest] == sorted(east_ids + west_ids)
    assert not {c.id for c in first} & {c.id for c in rest}


async def test_an_expired_lease_is_taken_over_and_its_claimed_commands_go_back_to_the_queue(
        session: AsyncSession) -> None:
    world, east_ids, _ = await _queue_on_both_links(session)
    link = world.east_link  # type: ignore[attr-defined]
    await service.take_leases(session, holder="worker-a", links=[link], ttl=TTL, now=NOW)
    claimed = await service.claim_commands(session, holder="worker-a", link_ids=[link], limit=1, now=NOW)

    # worker-a is killed: its lease runs out and worker-b takes the link.
    later = NOW + TTL + timedelta(seconds=1)
    taken = await service.take_leases(session, holder="worker-b", links=[link], ttl=TTL, now=later)
    reclaimed = await service.claim_commands(session, holder="worker-b", link_ids=[link], limit=100, now=later)

    assert taken == [link]
    assert [c.id for c in reclaimed] == east_ids
    retried = next(c for c in reclaimed if c.id == claimed[0].id)
    assert (retried.attempts, retried.claimed_by) == (2, "worker-b")
    with pytest.raises(DomainError) as late:
        await service.finish_command(session, command_id=claimed[0].id or 0, holder="worker-a", succeeded=True,
                                     now=later)
    assert late.value.code is ErrorCode.REMOTE_COMMAND_NOT_HELD


async def test_a_lease_is_renewed_by_its_holder_only_and_released_at_shutdown(session: AsyncSession) -> None:
    links = [f"concentrator:{uuid.uuid4().int % 10**9}"]
    await service.take_leases(session, holder="worker-a", links=links, ttl=TTL, now=NOW)

    assert await service.renew_leases(session, holder="worker-b", links=links, ttl=TTL, now=LATER) == []
    assert await service.renew_leases(session, holder="worker-a", links=links, ttl=TTL, now=LATER) == links
    assert await service.release_leases(session, holder="worker-a") == links
    assert await service.take_leases(session, holder="worker-b", links=links, ttl=TTL, now=LATER) == links


async def test_an_nb_iot_command_waits_in_pending_delivery_until_its_uplink(session: AsyncSession) -> None:
    world = await make_world(session)
    command = await service.queue_command(session, target=world.nb_iot_meter.id or 0, kind=CommandKind.valve_close,
                                          params={}, issued_by=world.operator.principal, now=NOW)
    await service.take_leases(session, holder="broker-worker", links=[service.MQTT_LINK], ttl=TTL, now=NOW)

    claimed = await service.claim_commands(session, holder="broker-worker", link_ids=[service.MQTT_LINK], limit=10,
                                           now=NOW)
    assert [(c.id, c.state, c.sent_at) for c in claimed] == [(command.id, CommandState.pending_delivery, None)]

    sent = await service.mark_sent(session, command_id=command.id or 0, holder="broker-worker", now=LATER)
    assert (sent.state, sent.sent_at) == (CommandState.sent, LATER)


# --------------------------------------------------------------------------- results


async def _claimed_one(session: AsyncSession, kind: CommandKind = CommandKind.read_now,
                       params: dict[str, object] | None = None, time_limit_s: int = 30) -> RemoteCommand:
    world = await make_world(session)
    command = await service.queue_command(session, target=world.east_valve_meters[0].id or 0, kind=kind,
                                          params=params or {}, issued_by=world.operator.principal,
                                          time_limit_s=time_limit_s, now=NOW)
    await service.take_leases(session, holder="worker-a", links=[world.east_link], ttl=TTL, now=NOW)
    [claimed] = await service.claim_commands(session, holder="worker-a", link_ids=[world.east_link], limit=10, now=NOW)
    assert claimed.id == command.id
    return claimed


async def test_a_result_is_recorded_with_its_decoded_reply_and_announced(session: AsyncSession) -> None:
    claimed = await _claimed_one(session)

    done = await service.finish_command(session, command_id=claimed.id or 0, holder="worker-a", succeeded=True,
                                        reply={"total_m3": "1234.50", "valve": "open"}, now=LATER)

    assert (done.state, done.reply, done.finished_at) == (CommandState.succeeded, {"total_m3": "1234.50", "valve": "open"},
                                                          LATER)
    assert {"command_ids": [claimed.id], "state": "succeeded"} in await events(session, "command.finished")


async def test_a_failure_to_retry_goes_back_to_the_queue_until_its_attempts_run_out(session: AsyncSession) -> None:
    claimed = await _claimed_one(session)
    link, holder = claimed.link, "worker-a"

    for attempt in range(1, 4):
        failed = await service.finish_command(session, command_id=claimed.id or 0, holder=holder, succeeded=False,
                                              failure_kind=FailureKind.timeout, failure_reason="no answer",
                                              retry=True, now=LATER)
        if attempt < 3:
            assert failed.state is CommandState.queued
            await service.claim_commands(session, holder=holder, link_ids=[link], limit=10, now=LATER)

    assert (failed.state, failed.attempts, failed.failure_kind) == (CommandState.failed, 3, FailureKind.timeout)


async def test_a_succeeded_set_params_queues_nothing_more_since_the_worker_read_it_back_in_its_claim(
        session: AsyncSession) -> None:
    claimed = await _claimed_one(session, CommandKind.set_params, {"settlement_day": 20})

    await service.finish_command(session, command_id=claimed.id or 0, holder="worker-a", succeeded=True, now=LATER)

    assert [c for c in await service.commands_by_id(session, [claimed.id + 1]) if c.follows_id == claimed.id] == []  # type: ignore[operator]


async def test_the_sweep_times_out_commands_past_their_limit_and_leaves_the_rest(session: AsyncSession) -> None:
    world = await make_world(session)
    quick = await service.queue_command(session, target=world.east_valve_meters[0].id or 0, kind=CommandKind.read_now,
                                        params={}, issued_by=world.operator.principal, time_limit_s=10, now=NOW)
    slow = await service.queue_command(session, target=world.east_valve_meters[1].id or 0, kind=CommandKind.read_now,
                                       params={}, issued_by=world.operator.principal, time_limit_s=60, now=NOW)

    swept = await service.sweep_commands(session, now=NOW + timedelta(seconds=10))

    assert quick.id in swept.timed_out and slow.id not in swept.timed_out
    assert await states(session, [quick.id or 0, slow.id or 0]) == ["timed_out", "queued"]
    timed_out = await service.command(session, command_id=quick.id or 0)
    assert (timed_out.failure_kind, timed_out.finished_at) == (FailureKind.timeout, NOW + timedelta(seconds=10))
    # A timed-out command is no longer the worker's to finish.
    await service.take_leases(session, holder="worker-a", links=[world.east_link], ttl=TTL, now=NOW)
    assert [c.id for c in await service.claim_commands(session, holder="worker-a", link_ids=[world.east_link],
                                                       limit=10, now=NOW + timedelta(seconds=10))] == [slow.id]


async def test_the_sweep_puts_a_dead_workers_commands_back_in_the_queue(session: AsyncSession) -> None:
    claimed = await _claimed_one(session, time_limit_s=300)

    swept = await service.sweep_commands(session, now=NOW + TTL + timedelta(seconds=1))

    assert claimed.id in swept.requeued
    assert await states(session, [claimed.id or 0]) == ["queued"]
