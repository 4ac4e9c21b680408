"""The valve policy at work: the handler of account.threshold_crossed closes a prepaid
household's valve meters at its close line as the system (once per event), reopens what
it closed when the balance recovers, and defers a look again at night."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import Meter
from backend.domain import system_principal
from backend.domains import installed
from backend.events.service import Event
from backend.jobs import defer_job
from backend.remote import service
from backend.remote.models import CommandKind, CommandState, IssuerKind
from backend.runtime import Runtime
from backend.settings import Settings
from backend.valves.handlers import apply_valve_policy
from backend.valves.settings import ValveSettings
from tests.billing.factories import at, served_household, tariff
from tests.remote.support import make_world
from tests.valves.test_inputs import crossing, key, sms

SHANGHAI = ZoneInfo("Asia/Shanghai")
TUESDAY_MORNING = datetime(2026, 12, 8, 10, 0, tzinfo=SHANGHAI)
TUESDAY_NIGHT = datetime(2026, 12, 8, 23, 0, tzinfo=SHANGHAI)


def runtime_at(moment: datetime) -> Runtime:
    return Runtime(settings=Settings(), sessions=None, actor=system_principal(installed()),  # type: ignore[arg-type]
                   clock=lambda: moment, services={"settings.valves": ValveSettings(), "defer_job": defer_job})


def threshold_event(event_id: int, account_id: int, household_id: int, to_state: str) -> Event:
    return Event(id=event_id, kind="account.threshold_crossed", key=None,
                 payload={"account_ids": [account_id], "household_ids": [household_id], "to_state": to_state},
                 created_at=datetime.now(UTC))


async def at_close_line_with_a_valve(session: AsyncSession) -> tuple[int, int, int]:
    """A prepaid household whose meter has a valve on a concentrator, its account at the
    close line after two alerts that reached the resident by SMS."""
    world = await make_world(session)
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
    assert served.household.id is not None and served.meter.id is not None
    await session.execute(update(Meter).where(Meter.id == served.meter.id).values(  # type: ignore[arg-type]
        model_id=world.valve_model.id, concentrator_id=world.east_concentrator.id))
    account, household = served.account_id, served.household.id
    await session.execute(text("UPDATE accounts SET alert_state = 'close' WHERE id = :id"), {"id": account})
    alert = await crossing(session, "alert", (account, household))
    await sms(session, household, key("alert", account, alert), "sent")
    close = await crossing(session, "close", (account, household))
    await sms(session, household, key("close", account, close), "sent")
    return account, household, served.meter.id


async def test_the_close_line_closes_the_valve_as_the_system_once_and_a_recharge_reopens_it(
        session: AsyncSession) -> None:
    account, household, meter = await at_close_line_with_a_valve(session)

    closed = await apply_valve_policy(runtime_at(TUESDAY_MORNING), session, threshold_event(501, account, household, "close"))
    again = await apply_valve_policy(runtime_at(TUESDAY_MORNING), session, threshold_event(501, account, household, "close"))

    [command] = await service.commands_by_id(session, closed)
    assert (command.meter_id, command.kind, command.state, command.issued_by_kind) == (
        meter, CommandKind.valve_close, CommandState.queued, IssuerKind.system)
    assert again == []
    # A later close event while the policy's close stands queues nothing more.
    assert await apply_valve_policy(runtime_at(TUESDAY_MORNING), session,
                                    threshold_event(502, account, household, "close")) == []

    # The recharge lifts the balance: the valve the policy closed opens, at any hour.
    await session.execute(text("UPDATE accounts SET alert_state = 'normal' WHERE id = :id"), {"id": account})
    opened = await apply_valve_policy(runtime_at(TUESDAY_NIGHT), session, threshold_event(503, account, household, "normal"))
    [reopen] = await service.commands_by_id(session, opened)
    assert (reopen.meter_id, reopen.kind, reopen.issued_by_kind) == (meter, CommandKind.valve_open, IssuerKind.system)


async def test_at_night_nothing_closes_and_the_policy_looks_again_in_the_morning(session: AsyncSession) -> None:
    account, household, _ = await at_close_line_with_a_valve(session)

    queued = await apply_valve_policy(runtime_at(TUESDAY_NIGHT), session, threshold_event(601, account, household, "close"))

    assert queued == []
    [payload] = (await session.execute(text(
        "SELECT payload FROM pgqueuer WHERE entrypoint = 'job:recheck_valve_policy'"))).scalars().all()
    deferred = json.loads(bytes(payload))
    assert (deferred["account_id"], deferred["household_id"]) == (account, household)
    assert datetime.fromisoformat(deferred["at"]) == datetime(2026, 12, 9, 8, 0, tzinfo=SHANGHAI)


async def test_a_household_without_a_valve_meter_gets_no_command(session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
    assert served.household.id is not None
    await session.execute(text("UPDATE accounts SET alert_state = 'close' WHERE id = :id"), {"id": served.account_id})

    assert await apply_valve_policy(runtime_at(TUESDAY_MORNING), session,
                                    threshold_event(701, served.account_id, served.household.id, "close")) == []
