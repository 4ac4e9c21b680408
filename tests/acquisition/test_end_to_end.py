"""Issue 20's acceptance, end to end with the real parts: a simulated meter on a pty, the
acquisition worker, the job worker (relay, settlement, message rules, pushes, the valve
policy) and the local JPush gateway, on a database of the module's own with real commits.

A prepaid household's meter is read on its bus; settlement debits the account past its
alert line and then its close line; each balance alert reaches the resident's phone at
the local JPush; with two alerts delivered the policy closes the valve as 系统 (on a
working Tuesday at 10:00 in Shanghai); the worker closes the simulated valve and the
water stops; a counter recharge brings the account back to normal, the policy reopens
the valve and the water flows again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from acquisition.settings import AcquireSettings
from acquisition.simulator import SimulatorProcess
from acquisition.worker import AcquisitionWorker
from backend.archives.models import Concentrator, ConnectionKind, Meter, MeterModel
from backend.auth.system import system_actor
from backend.billing.accounts import AccountTerms
from backend.calendar.service import seed_from_package
from backend.db import transaction
from backend.notifications.fakes.jpush import pushed
from backend.payments.counter import Operator, take_payment
from backend.payments.models import PaymentChannel, PaymentPurpose
from backend.remote import service as remote
from backend.remote.models import CommandKind, CommandState, IssuerKind
from tests.billing.factories import served_household, tariff
from tests.factories import make_area_tree, unique
from tests.fixtures.gateways import FakeGateway, FakeGateways
from tests.fixtures.live import RunningWorker, eventually, running_worker
from tests.notifications.factories import add_devices

SHANGHAI = ZoneInfo("Asia/Shanghai")
# A working Tuesday morning of a year the holiday calendar covers: no quiet hours, no day off.
TUESDAY_10AM = datetime(2026, 12, 8, 10, 0, tzinfo=SHANGHAI)
BAUD = 115200
START_M3 = Decimal("100")
PRICE = "5.0000"  # yuan per m³
OPERATOR = system_actor({"remote:read"})
CONFIG = AcquireSettings(lease_ttl_s=5.0, renew_interval_s=1.0, poll_interval_s=0.05, response_timeout_s=0.1,
                         inter_byte_timeout_s=0.1, exchange_retries=1, listen=False)


class SteadyClock:
    """Time that starts at :data:`TUESDAY_10AM` and runs at the wall clock's pace, shared
    by both workers (readings need distinct times; the policy needs a working morning)."""

    def __init__(self, start: datetime) -> None:
        self.start, self.origin = start, time.monotonic()

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=time.monotonic() - self.origin)


CLOCK = SteadyClock(TUESDAY_10AM)


@dataclass
class Home:
    account_id: int
    household_id: int
    meter_id: int
    address: str
    registration_id: str


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorProcess]:
    # Still water until the test draws it; once drawn, a day a second at 50 m³ a day.
    with SimulatorProcess(meters=2, baud=BAUD, turnaround=0.002, speed=86400, daily_m3=0) as running:
        yield running


@pytest.fixture(scope="module")
def jpush(fake_gateways: FakeGateways) -> Iterator[FakeGateway]:
    """The local JPush, with SHUIWU_JPUSH_URL pointing the job worker at it."""
    with fake_gateways.pointed_at("jpush", "SHUIWU_JPUSH_URL") as fake:
        yield fake


@pytest.fixture(scope="module")
async def home(committed_sessions: async_sessionmaker[AsyncSession], simulator: SimulatorProcess) -> Home:
    """A prepaid household (¥5.00 a m³, alert at ¥20, close at ¥0) with ¥30 paid at the
    counter, its valve meter on the simulated bus, and a resident with the app."""
    address = simulator.addresses[0][0]
    simulator.set_meter(address, total_m3=float(START_M3), valve_open=True)
    async with transaction(committed_sessions) as session:
        await seed_from_package(session)
        tree = await make_area_tree(session)
        raw = tariff(prices=[PRICE])
        served = await served_household(
            session, raw_tariff=raw, opened_at=TUESDAY_10AM - timedelta(days=7), area=tree.east_community,
            start_reading=str(START_M3),
            terms=AccountTerms(tariff_code=raw["code"], alert_threshold_fen=2000, close_threshold_fen=0, grace_fen=0))
        model = MeterModel(vendor=unique("厂家"), name=unique("阀控表"), caliber=20, has_valve=True)
        concentrator = Concentrator(name="模拟总线", region_code="3301", terminal_address=60_001,
                                    connection=ConnectionKind.serial, serial_url=simulator.urls[0], baudrate=BAUD,
                                    parity="E", area_id=tree.east_community.id or 0)
        session.add_all([model, concentrator])
        await session.flush()
        assert served.meter.id is not None and served.household.id is not None
        await session.execute(update(Meter).where(Meter.id == served.meter.id).values(  # type: ignore[arg-type]
            address=address, model_id=model.id, concentrator_id=concentrator.id))
        resident_id = (await session.execute(text("INSERT INTO residents (phone) VALUES ('13900000020') RETURNING id"))
                       ).scalar_one()
        await session.execute(text("INSERT INTO resident_households (resident_id, household_id, is_owner) "
                                   "VALUES (:r, :h, true)"), {"r": resident_id, "h": served.household.id})
        [registration_id] = await add_devices(session, user_kind="resident", user_ids=[resident_id])
        await _recharge(session, served.account_id, 3000, "opening")
    return Home(served.account_id, served.household.id, served.meter.id, address, registration_id)


async def _recharge(session: AsyncSession, account_id: int, amount_fen: int, key: str) -> None:
    await take_payment(session, account_id=account_id, channel=PaymentChannel.cash, purpose=PaymentPurpose.recharge,
                       amount_fen=amount_fen, confirm_amount_fen=amount_fen, idempotency_key=unique(key),
                       operator=Operator(None, "柜台"), now=CLOCK(), tz="Asia/Shanghai")


@pytest.fixture(scope="module")
def jobs(database_url: str, jpush: FakeGateway, home: Home) -> Iterator[RunningWorker]:
    """``shuiwu jobs`` on the module's database, on the test's clock."""
    with running_worker(database_url, clock=CLOCK, dequeue_timeout=timedelta(seconds=0.2),
                        relay_sweep_interval=1.0) as running:
        yield running


@pytest.fixture(scope="module")
async def acquisition(committed_sessions: async_sessionmaker[AsyncSession], home: Home) -> AsyncIterator[None]:
    """``shuiwu acquire`` in this loop, on the test's clock."""
    worker = AcquisitionWorker(sessions=committed_sessions, config=CONFIG, timezone="Asia/Shanghai",
                               holder="test:e2e", clock=CLOCK)
    task = asyncio.create_task(worker.run())
    await eventually(lambda: bool(worker.held_links))
    yield
    worker.stop()
    await asyncio.wait_for(task, timeout=10)


async def one(sessions: async_sessionmaker[AsyncSession], statement: str, **params: Any) -> Any:
    async with sessions() as session:
        return (await session.execute(text(statement), params)).one_or_none()


async def read_now(sessions: async_sessionmaker[AsyncSession], home: Home) -> Decimal:
    """Queue a read of the household's meter, wait for it; the reading it stored. A
    reading is kept per meter and second (a second one in the same second is the same
    reading), so the read waits for the clock's next second first."""
    await asyncio.sleep(1.01 - CLOCK().microsecond / 1_000_000)
    async with transaction(sessions) as session:
        command = await remote.queue_command(session, target=home.meter_id, kind=CommandKind.read_now, params={},
                                             issued_by=OPERATOR, now=CLOCK())
    async def done() -> bool:
        row = await one(sessions, "SELECT state FROM remote_commands WHERE id = :id", id=command.id)
        return row is not None and row.state == "succeeded"
    await eventually(done)
    row = await one(sessions, "SELECT r.total_m3 FROM readings r JOIN remote_commands c ON c.meter_id = r.meter_id "
                              "WHERE c.id = :id ORDER BY r.read_at DESC LIMIT 1", id=command.id)
    return Decimal(row.total_m3)


async def alert_state(sessions: async_sessionmaker[AsyncSession], home: Home) -> tuple[str, int]:
    row = await one(sessions, "SELECT alert_state, balance_fen FROM accounts WHERE id = :id", id=home.account_id)
    return row.alert_state, row.balance_fen


def pushes_to(jpush: FakeGateway, home: Home, title: str) -> list[dict[str, Any]]:
    return [push for push in pushed(jpush.requests())
            if home.registration_id in push["registration_ids"] and push["title"] == title]


async def valve_commands(sessions: async_sessionmaker[AsyncSession], home: Home) -> list[Any]:
    async with sessions() as session:
        return list((await session.execute(text(
            "SELECT id, kind, state, issued_by_kind, issued_by_name FROM remote_commands "
            "WHERE meter_id = :meter AND kind IN ('valve_open', 'valve_close') ORDER BY id"),
            {"meter": home.meter_id})).all())


async def look_again_now(sessions: async_sessionmaker[AsyncSession]) -> None:
    """The policy's deferred look again comes due now instead of in an hour (the hour
    passing is all it waits for; the account's state decides)."""
    async with transaction(sessions) as session:
        # Only a run not yet due: moving a due one forward again and again would starve it.
        await session.execute(text("UPDATE pgqueuer SET execute_after = now() - interval '1 second' "
                                   "WHERE entrypoint = 'job:recheck_valve_policy' AND status = 'queued' "
                                   "AND execute_after > now()"))


async def flows(simulator: SimulatorProcess, address: str) -> bool:
    """Whether water runs through the meter: its register moves within a tenth of a second."""
    before = simulator.meter(address)["total_m3"]
    await asyncio.sleep(0.1)
    return bool(simulator.meter(address)["total_m3"] != before)


async def test_readings_settle_alerts_reach_the_phone_the_policy_closes_the_valve_and_a_recharge_reopens_it(
        committed_sessions: async_sessionmaker[AsyncSession], simulator: SimulatorProcess, jpush: FakeGateway,
        home: Home, jobs: RunningWorker, acquisition: None) -> None:
    sessions = committed_sessions
    assert await alert_state(sessions, home) == ("normal", 3000)

    # 2.5 m³ drawn, read and settled at ¥5.00: ¥17.50 left, under the ¥20 alert line.
    simulator.set_meter(home.address, total_m3=float(START_M3 + Decimal("2.5")))
    assert await read_now(sessions, home) == START_M3 + Decimal("2.5")
    await eventually(lambda: _state_is(sessions, home, "alert"))
    assert await alert_state(sessions, home) == ("alert", 1750)
    await eventually(lambda: bool(pushes_to(jpush, home, "余额不足提醒")), timeout_s=10)
    [alert_push] = pushes_to(jpush, home, "余额不足提醒")
    assert "余额 ¥17.50" in alert_push["alert"] and alert_push["extras"] == {"screen": "account", "id": home.household_id}
    assert await valve_commands(sessions, home) == []  # an alert closes nothing

    # 4.5 m³ more: ¥22.50 more, the balance at −¥5.00, past the ¥0 close line.
    simulator.set_meter(home.address, total_m3=float(START_M3 + Decimal("7")))
    assert await read_now(sessions, home) == START_M3 + Decimal("7")
    await eventually(lambda: _state_is(sessions, home, "close"))
    assert await alert_state(sessions, home) == ("close", -500)
    await eventually(lambda: bool(pushes_to(jpush, home, "关阀预警")), timeout_s=10)
    delivered = await one(sessions, "SELECT count(*) AS n FROM push_deliveries WHERE state = 'sent' AND :rid = ANY(registration_ids) "
                                    "AND kind IN ('balance_alert', 'close_warning')", rid=home.registration_id)
    assert delivered.n == 2

    # Both alerts reached the phone: the policy closes now, or (when it looked before the
    # second push was out) at its look again.
    async def closing() -> bool:
        if not await valve_commands(sessions, home):
            await look_again_now(sessions)
            return False
        return True
    await eventually(closing, timeout_s=10)
    async def closed() -> bool:
        return [c.state for c in await valve_commands(sessions, home)] == ["succeeded"]
    await eventually(closed, timeout_s=10)
    [close] = await valve_commands(sessions, home)
    assert (close.kind, close.issued_by_kind, close.issued_by_name) == ("valve_close", IssuerKind.system.value, "系统")
    assert simulator.meter(home.address)["valve_open"] is False
    simulator.set_meter(home.address, daily_m3=50)  # the household opens a tap: nothing runs
    assert not await flows(simulator, home.address)

    # The counter takes ¥50.00: back to normal, the valve the policy closed opens.
    async with transaction(sessions) as session:
        await _recharge(session, home.account_id, 5000, "topup")
    assert await alert_state(sessions, home) == ("normal", 4500)
    async def reopened() -> bool:
        commands = await valve_commands(sessions, home)
        return len(commands) == 2 and commands[1].state == CommandState.succeeded.value
    await eventually(reopened, timeout_s=10)
    reopen = (await valve_commands(sessions, home))[1]
    assert (reopen.kind, reopen.issued_by_kind) == (CommandKind.valve_open.value, IssuerKind.system.value)
    assert simulator.meter(home.address)["valve_open"] is True
    assert await flows(simulator, home.address)


async def _state_is(sessions: async_sessionmaker[AsyncSession], home: Home, state: str) -> bool:
    return (await alert_state(sessions, home))[0] == state

