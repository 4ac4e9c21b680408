"""The handler of account.closed: the closed household's valve meters get a valve_close,
issued by the system actor, once per event; nothing when it has an open account again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import Meter
from backend.domain import system_principal
from backend.domains import installed
from backend.events.service import Event
from backend.remote import service
from backend.remote.handlers import close_valves_of_closed_account
from backend.remote.models import CommandKind, CommandState, IssuerKind
from backend.runtime import Runtime
from backend.settings import Settings
from tests.billing.factories import at, served_household, tariff
from tests.remote.support import NOW, household_with, make_world


def _runtime() -> Runtime:
    return Runtime(settings=Settings(), sessions=None, actor=system_principal(installed()), clock=lambda: NOW)  # type: ignore[arg-type]


def _closed(household_id: int, event_id: int = 41) -> Event:
    return Event(id=event_id, kind="account.closed", key=None, payload={"account_id": 1, "household_id": household_id},
                 created_at=datetime.now(UTC))


async def test_a_closed_accounts_valve_meters_are_closed_by_the_system(session: AsyncSession) -> None:
    world = await make_world(session)
    household_id = await household_with(session, world, world.east_valve_meters[0], world.east_plain_meter,
                                        world.nb_iot_meter)

    ids = await close_valves_of_closed_account(_runtime(), session, _closed(household_id))

    commands = await service.commands_by_id(session, ids)
    assert {c.meter_id for c in commands} == {world.east_valve_meters[0].id, world.nb_iot_meter.id}
    assert len(commands) == 2
    assert {(c.kind, c.state, c.issued_by_kind, c.issued_by_name) for c in commands} == {
        (CommandKind.valve_close, CommandState.queued, IssuerKind.system, "系统")}
    # It may wait an hour for a worker (a restart at that moment does not lose it).
    bus = next(c for c in commands if c.meter_id == world.east_valve_meters[0].id)
    assert (bus.time_limit_s, bus.deadline) == (30, NOW + timedelta(hours=1))


async def test_the_same_event_handled_twice_queues_once(session: AsyncSession) -> None:
    world = await make_world(session)
    household_id = await household_with(session, world, world.east_valve_meters[0])

    first = await close_valves_of_closed_account(_runtime(), session, _closed(household_id, 77))
    again = await close_valves_of_closed_account(_runtime(), session, _closed(household_id, 77))

    assert (len(first), again) == (1, [])


async def test_a_household_with_an_open_account_again_keeps_its_valves(session: AsyncSession) -> None:
    world = await make_world(session)
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 1, 1))
    await session.execute(update(Meter).where(Meter.id == served.meter.id).values(  # type: ignore[arg-type]
        model_id=world.valve_model.id, concentrator_id=world.east_concentrator.id))

    assert await close_valves_of_closed_account(_runtime(), session, _closed(served.household.id or 0)) == []
