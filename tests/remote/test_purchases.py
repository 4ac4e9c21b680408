"""Meter-side prepaid end to end: a counter recharge on a prepaid_meter account becomes a
pending meter write, the handler of payment.succeeded queues a write_purchase with the
meter's next purchase count, a worker run carries it to a simulated meter on a pty (a
fast baud rate), and the handler of command.finished reconciles the meter's count
against the write. Real PostgreSQL with commits; the handlers and the minute job are
called as the job worker calls them, on the events the business transactions wrote."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from acquisition.protocols import cjt188
from acquisition.settings import AcquireSettings
from acquisition.simulator import SimulatorProcess
from acquisition.transport import SerialLink
from acquisition.worker import run_acquire
from backend.archives.models import AreaKind, Concentrator, ConnectionKind, Meter, MeterModel
from backend.archives.service import create_area
from backend.billing import service as tariffs
from backend.billing.accounts import AccountTerms, open_account
from backend.billing.models import BillingMode
from backend.billing.settlement import settle_prepaid
from backend.clock import utcnow
from backend.db import transaction
from backend.domain import system_principal
from backend.domains import installed
from backend.errors import DomainError, ErrorCode, Forbidden
from backend.events.service import Event, load_event
from backend.payments import counter
from backend.payments.errors import ReversalWrittenToDevice
from backend.payments.models import PaymentChannel, PaymentPurpose
from backend.payments.online.pending import take_back_pending_write
from backend.remote import purchases
from backend.remote import service as remote
from backend.remote.models import CommandKind, CommandState, FailureKind, IssuerKind, RemoteCommand
from backend.runtime import Runtime
from backend.settings import Settings
from tests.acquisition.conftest import FAST_LINE, FAST_TIMING
from tests.billing.factories import at, ingest, served_household, tariff
from tests.factories import unique
from tests.remote.support import NOW, World, household_with, make_world

BAUD = FAST_LINE.baudrate
METERS = 4
CONFIG = AcquireSettings(lease_ttl_s=1.0, renew_interval_s=0.25, poll_interval_s=0.1, response_timeout_s=0.1,
                         inter_byte_timeout_s=0.1, exchange_retries=1, reconnect_initial_s=0.1, reconnect_max_s=0.4,
                         listen=False)
CASHIER = counter.Operator(id=None, name="收费员", may_reverse_any=True)
ACTOR = system_principal(installed())
Handler = Callable[[Runtime, AsyncSession, Event], Awaitable[Any]]


@dataclass
class Home:
    account_id: int
    meter_id: int
    address: str


@dataclass
class Field:
    concentrator_id: int
    homes: list[Home]

    @property
    def link(self) -> str:
        return remote.concentrator_link(self.concentrator_id)


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(buses=1, meters=METERS, baud=BAUD, turnaround=0.002) as running:
        yield running


@pytest.fixture(scope="module")
async def field(committed_sessions: async_sessionmaker[AsyncSession], simulator: SimulatorProcess) -> Field:
    """A serial concentrator at the simulated bus; each simulated meter a valve meter
    serving a household of its own whose account keeps its balance in the meter."""
    async with transaction(committed_sessions) as session:
        area = await create_area(session, name=unique("公司"), kind=AreaKind.company)
        model = MeterModel(vendor=unique("厂家"), name=unique("预付费表"), caliber=20, has_valve=True)
        concentrator = Concentrator(name="总线", region_code="3301", terminal_address=int(unique("")) % 60000 + 1,
                                    connection=ConnectionKind.serial, serial_url=simulator.urls[0], baudrate=BAUD,
                                    parity="E", area_id=area.id)
        session.add_all([model, concentrator])
        await session.flush()
        homes = []
        for address in simulator.addresses[0]:
            served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1),
                                            mode=BillingMode.prepaid_meter, area=area)
            await session.execute(update(Meter).where(Meter.id == served.meter.id).values(  # type: ignore[arg-type]
                model_id=model.id, concentrator_id=concentrator.id, address=address))
            homes.append(Home(served.account_id, served.meter.id or 0, address))
    return Field(concentrator.id or 0, homes)


def _runtime(sessions: async_sessionmaker[AsyncSession], *, later: timedelta = timedelta(0)) -> Runtime:
    return Runtime(settings=Settings(), sessions=sessions, actor=system_principal(installed()),
                   clock=lambda: utcnow() + later)


class Events:
    """Hands the events committed since the last look to a handler, as the relay does."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], runtime: Runtime) -> None:
        self.sessions, self.runtime, self.seen = sessions, runtime, 0

    async def start(self) -> Events:
        async with self.sessions() as session:
            self.seen = (await session.execute(text("SELECT coalesce(max(id), 0) FROM domain_events"))).scalar_one()
        return self

    async def handle(self, kind: str, handler: Handler) -> list[int]:
        async with self.sessions() as session:
            ids = (await session.execute(text("SELECT id FROM domain_events WHERE kind = :kind AND id > :seen ORDER BY id"),
                                         {"kind": kind, "seen": self.seen})).scalars().all()
        queued: list[int] = []
        for event_id in ids:
            async with transaction(self.sessions) as session:
                event = await load_event(session, event_id)
                assert event is not None
                queued.extend(await handler(self.runtime, session, event) or [])
        async with self.sessions() as session:
            self.seen = (await session.execute(text("SELECT coalesce(max(id), 0) FROM domain_events"))).scalar_one()
        return queued


async def recharge(sessions: async_sessionmaker[AsyncSession], home: Home, amount_fen: int) -> int:
    async with transaction(sessions) as session:
        payment = await counter.take_payment(
            session, account_id=home.account_id, channel=PaymentChannel.cash, purpose=PaymentPurpose.recharge,
            amount_fen=amount_fen, confirm_amount_fen=amount_fen, idempotency_key=unique("k"), operator=CASHIER,
            now=utcnow())
        return payment.id or 0


async def run_worker(database_url: str, holder: str) -> None:
    await run_acquire(database_url, config=CONFIG, timezone="Asia/Shanghai", once=True, holder=holder)


async def writes(sessions: async_sessionmaker[AsyncSession], account_id: int) -> list[Any]:
    async with sessions() as session:
        return list((await session.execute(text(
            "SELECT amount_fen, state, purchase_count, settled_by, sent_at IS NOT NULL AS sent, held_reason, command_id "
            "FROM pending_writes WHERE account_id = :a ORDER BY id"), {"a": account_id})).all())


async def commands(sessions: async_sessionmaker[AsyncSession], meter_id: int) -> list[RemoteCommand]:
    async with sessions() as session:
        rows = await session.execute(text("SELECT id FROM remote_commands WHERE meter_id = :m ORDER BY id"),
                                     {"m": meter_id})
        return await remote.commands_by_id(session, rows.scalars().all())


def prepaid(simulator: SimulatorProcess, home: Home, *, purchase_count: int = 0) -> None:
    simulator.set_meter(home.address, prepaid=True, balance_fen=0, purchase_count=purchase_count)


async def test_counter_recharges_reach_the_meter_one_purchase_at_a_time_and_settlement_never_debits(
        committed_sessions: async_sessionmaker[AsyncSession], database_url: str, field: Field,
        simulator: SimulatorProcess) -> None:
    home = field.homes[0]
    prepaid(simulator, home)
    events = await Events(committed_sessions, _runtime(committed_sessions)).start()
    await recharge(committed_sessions, home, 5000)
    await recharge(committed_sessions, home, 2000)

    first = await events.handle("payment.succeeded", purchases.send_paid_meter_writes)
    # One at a time: the second write waits for the meter to confirm the first.
    assert len(first) == 1
    await run_worker(database_url, "test:purchase-1")
    second = await events.handle("command.finished", purchases.reconcile_purchases)
    assert len(second) == 1
    await run_worker(database_url, "test:purchase-2")
    assert await events.handle("command.finished", purchases.reconcile_purchases) == []

    sent = await commands(committed_sessions, home.meter_id)
    assert [(c.kind, c.state, c.params, c.issued_by_kind) for c in sent] == [
        (CommandKind.write_purchase, CommandState.succeeded, {"purchase_count": 1, "amount_fen": 5000}, IssuerKind.system),
        (CommandKind.write_purchase, CommandState.succeeded, {"purchase_count": 2, "amount_fen": 2000}, IssuerKind.system)]
    assert [tuple(w)[:5] for w in await writes(committed_sessions, home.account_id)] == [
        (5000, "written", 1, "系统", True), (2000, "written", 2, "系统", True)]
    meter = simulator.meter(home.address)
    assert (meter["purchase_count"], meter["purchased_fen"]) == (2, 7000)
    async with transaction(committed_sessions) as session:
        await ingest(session, home.meter_id, [(utcnow() - timedelta(minutes=1), "12.5")], now=utcnow())
        settled = await settle_prepaid(session, account_ids=[home.account_id], as_of=utcnow())
        charged = (await session.execute(text("SELECT count(*) FROM ledger_entries WHERE account_id = :a "
                                              "AND kind = 'charge'"), {"a": home.account_id})).scalar_one()
    assert (settled.accounts, charged) == (0, 0)


async def test_a_purchase_whose_reply_was_lost_goes_out_again_without_adding_twice(
        committed_sessions: async_sessionmaker[AsyncSession], database_url: str, field: Field,
        simulator: SimulatorProcess) -> None:
    home = field.homes[1]
    prepaid(simulator, home)
    events = await Events(committed_sessions, _runtime(committed_sessions)).start()
    payment_id = await recharge(committed_sessions, home, 3000)
    [command_id] = await events.handle("payment.succeeded", purchases.send_paid_meter_writes)
    # A worker claims it, the purchase reaches the meter, and the reply is lost on the way back.
    async with transaction(committed_sessions) as session:
        now = utcnow()
        await remote.take_leases(session, holder="test:lost", links=[field.link], ttl=timedelta(seconds=5), now=now)
        [claimed] = await remote.claim_commands(session, holder="test:lost", link_ids=[field.link], limit=1, now=now)
    with SerialLink(simulator.urls[0], line=FAST_LINE, timing=FAST_TIMING) as link:
        link.exchange(cjt188.encode_write_purchase(home.address, purchase_count=1, amount_fen=3000))
    async with transaction(committed_sessions) as session:
        await remote.finish_command(session, command_id=claimed.id or 0, holder="test:lost", succeeded=False,
                                    now=utcnow(), failure_kind=FailureKind.timeout, failure_reason="no reply")
        await remote.release_leases(session, holder="test:lost")
    assert await events.handle("command.finished", purchases.reconcile_purchases) == []
    # Sent: the money may be on the meter, so the payment can no longer be reversed.
    with pytest.raises(ReversalWrittenToDevice):
        async with transaction(committed_sessions) as session:
            await counter.reverse_payment(session, payment_id=payment_id, reason="收错", operator=CASHIER, now=utcnow())

    async with transaction(committed_sessions) as session:
        soon = await purchases.retry_meter_purchases(session, actor=_runtime(committed_sessions).actor, now=utcnow())
    async with transaction(committed_sessions) as session:
        _, [retry_id] = await purchases.retry_meter_purchases(
            session, actor=_runtime(committed_sessions).actor, now=utcnow() + purchases.RETRY_AFTER)
    answered = simulator.meter(home.address)["answered"]
    await run_worker(database_url, "test:retry")
    await events.handle("command.finished", purchases.reconcile_purchases)

    assert soon == ([], [])  # not straight after the failure
    [_, retried] = await commands(committed_sessions, home.meter_id)
    assert (claimed.id, retried.id) == (command_id, retry_id)
    assert (retried.state, retried.params) == (CommandState.succeeded, {"purchase_count": 1, "amount_fen": 3000})
    assert retried.reply is not None and retried.reply["already"] is True
    assert simulator.meter(home.address)["answered"] - answered == 1  # read back, not written again
    assert [tuple(w)[:5] for w in await writes(committed_sessions, home.account_id)] == [(3000, "written", 1, "系统", True)]
    assert simulator.meter(home.address)["purchased_fen"] == 3000


async def test_a_reversal_before_sending_cancels_the_queued_purchase(
        committed_sessions: async_sessionmaker[AsyncSession], database_url: str, field: Field,
        simulator: SimulatorProcess) -> None:
    home = field.homes[2]
    prepaid(simulator, home)
    events = await Events(committed_sessions, _runtime(committed_sessions)).start()
    first_id = await recharge(committed_sessions, home, 4000)
    await recharge(committed_sessions, home, 1500)
    [first_command] = await events.handle("payment.succeeded", purchases.send_paid_meter_writes)

    async with transaction(committed_sessions) as session:
        await counter.reverse_payment(session, payment_id=first_id, reason="收错", operator=CASHIER, now=utcnow())
    # A worker claiming it now finds its write taken back: cancelled, never on the wire.
    async with transaction(committed_sessions) as session:
        now = utcnow()
        await remote.take_leases(session, holder="test:cancel", links=[field.link], ttl=timedelta(seconds=5), now=now)
        claimed = await remote.claim_commands(session, holder="test:cancel", link_ids=[field.link], limit=5, now=now)
        await remote.release_leases(session, holder="test:cancel")
    # The next write takes the count the cancelled one never used.
    async with transaction(committed_sessions) as session:
        cancelled, [second_command] = await purchases.retry_meter_purchases(
            session, actor=_runtime(committed_sessions).actor, now=utcnow())
    await run_worker(database_url, "test:after-cancel")
    await events.handle("command.finished", purchases.reconcile_purchases)

    assert (claimed, cancelled) == ([], [])
    sent = {c.id: c for c in await commands(committed_sessions, home.meter_id)}
    assert (sent[first_command].state, sent[first_command].sent_at) == (CommandState.cancelled, None)
    assert sent[second_command].params == {"purchase_count": 1, "amount_fen": 1500}
    assert [tuple(w)[:3] for w in await writes(committed_sessions, home.account_id)] == [
        (4000, "cancelled", 1), (1500, "written", 1)]
    meter = simulator.meter(home.address)
    assert (meter["purchase_count"], meter["purchased_fen"]) == (1, 1500)


async def test_a_reversal_cancels_a_queued_purchase_at_the_next_minute_job(
        committed_sessions: async_sessionmaker[AsyncSession], field: Field, simulator: SimulatorProcess) -> None:
    home = field.homes[2]
    events = await Events(committed_sessions, _runtime(committed_sessions)).start()
    payment_id = await recharge(committed_sessions, home, 800)
    [command_id] = await events.handle("payment.succeeded", purchases.send_paid_meter_writes)
    async with transaction(committed_sessions) as session:
        await counter.reverse_payment(session, payment_id=payment_id, reason="收错", operator=CASHIER, now=utcnow())

    async with transaction(committed_sessions) as session:
        cancelled, queued = await purchases.retry_meter_purchases(session, actor=_runtime(committed_sessions).actor,
                                                                  now=utcnow())

    assert (cancelled, queued) == ([command_id], [])
    [command] = [c for c in await commands(committed_sessions, home.meter_id) if c.id == command_id]
    assert (command.state, command.failure_reason) == (CommandState.cancelled, purchases.CANCELLED_REASON)
    assert command.finished_at is not None


async def test_a_meter_counting_from_elsewhere_is_followed_once_then_an_unexplained_count_is_held_for_staff(
        committed_sessions: async_sessionmaker[AsyncSession], database_url: str, field: Field,
        simulator: SimulatorProcess) -> None:
    home = field.homes[3]
    # Fitted with five purchases on it already: never heard by this system before.
    prepaid(simulator, home, purchase_count=5)
    events = await Events(committed_sessions, _runtime(committed_sessions)).start()
    await recharge(committed_sessions, home, 1000)
    await events.handle("payment.succeeded", purchases.send_paid_meter_writes)
    await run_worker(database_url, "test:adopt-1")
    [renumbered] = await events.handle("command.finished", purchases.reconcile_purchases)
    await run_worker(database_url, "test:adopt-2")
    await events.handle("command.finished", purchases.reconcile_purchases)
    assert [tuple(w)[:3] for w in await writes(committed_sessions, home.account_id)] == [(1000, "written", 6)]
    # Then someone else writes purchases to it: its count is 9, not 6 or 7.
    simulator.set_meter(home.address, purchase_count=9)
    await recharge(committed_sessions, home, 2500)
    await events.handle("payment.succeeded", purchases.send_paid_meter_writes)
    await run_worker(database_url, "test:mismatch")
    await events.handle("command.finished", purchases.reconcile_purchases)
    async with transaction(committed_sessions) as session:
        _, again = await purchases.retry_meter_purchases(session, actor=_runtime(committed_sessions).actor,
                                                         now=utcnow() + purchases.RETRY_AFTER)

    sent = await commands(committed_sessions, home.meter_id)
    assert [(c.params["purchase_count"], c.state) for c in sent] == [
        (1, CommandState.failed), (6, CommandState.succeeded), (7, CommandState.failed)]
    assert renumbered == sent[1].id
    [_, held] = await writes(committed_sessions, home.account_id)
    assert (held.state, held.purchase_count, held.held_reason is not None) == ("pending", 7, True)
    assert again == []  # not retried: it waits for staff
    async with committed_sessions() as session:
        alarms = (await session.execute(text(
            "SELECT kind, status, value, threshold FROM alarms WHERE subject_kind = 'meter' AND subject_id = :m"),
            {"m": home.meter_id})).all()
    assert [tuple(a) for a in alarms] == [("purchase_mismatch", "open", 9, 7)]
    assert simulator.meter(home.address)["purchased_fen"] == 1000

    # Staff read the meter (9): the held write goes out as purchase 10 and the alarm closes.
    async with transaction(committed_sessions) as session:
        [resumed] = await purchases.resume_meter_purchases(session, meter_id=home.meter_id, meter_count=9,
                                                           principal=ACTOR, now=utcnow())
    await run_worker(database_url, "test:resumed")
    await events.handle("command.finished", purchases.reconcile_purchases)

    [_, released] = await writes(committed_sessions, home.account_id)
    assert (released.state, released.purchase_count, released.held_reason) == ("written", 10, None)
    assert resumed == released.command_id
    async with committed_sessions() as session:
        statuses = (await session.execute(text(
            "SELECT status FROM alarms WHERE subject_kind = 'meter' AND subject_id = :m"), {"m": home.meter_id})).all()
    assert [tuple(a) for a in statuses] == [("closed",)]
    assert simulator.meter(home.address)["purchased_fen"] == 3500


# ---------------------------------------------------------------------------- in a rolled-back transaction


async def _meter_account(session: AsyncSession, world: World, *meters: Meter) -> tuple[int, int]:
    """(account, household) of a prepaid_meter household served by ``meters``."""
    household_id = await household_with(session, world, *meters)
    raw = tariff()
    await tariffs.save_tariff(session, raw=raw)
    account = await open_account(session, household_id=household_id, mode=BillingMode.prepaid_meter,
                                 terms=AccountTerms(tariff_code=raw["code"]), now=NOW - timedelta(days=1), by="测试")
    return account.id or 0, household_id


async def _pay(session: AsyncSession, account_id: int, amount_fen: int) -> int:
    payment = await counter.take_payment(
        session, account_id=account_id, channel=PaymentChannel.cash, purpose=PaymentPurpose.recharge,
        amount_fen=amount_fen, confirm_amount_fen=amount_fen, idempotency_key=unique("k"), operator=CASHIER, now=NOW)
    return payment.id or 0


async def _paid_event(session: AsyncSession, account_id: int) -> Event:
    event_id = (await session.execute(text(
        "SELECT max(id) FROM domain_events WHERE kind = 'payment.succeeded' AND key = :key"),
        {"key": f"account:{account_id}"})).scalar_one()
    event = await load_event(session, event_id)
    assert event is not None
    return event


def _fixed_runtime() -> Runtime:
    return Runtime(settings=Settings(), sessions=None, actor=ACTOR, clock=lambda: NOW)  # type: ignore[arg-type]


async def test_the_balance_meter_is_the_households_first_valve_meter_on_a_link_and_one_event_queues_once(
        session: AsyncSession) -> None:
    world = await make_world(session)
    first, second = world.east_valve_meters[:2]
    account_id, _ = await _meter_account(session, world, world.east_plain_meter, second, first)
    without_id, _ = await _meter_account(session, world, world.unlinked_meter)
    await _pay(session, account_id, 5000)
    await _pay(session, without_id, 5000)
    event = await _paid_event(session, account_id)

    queued = await purchases.send_paid_meter_writes(_fixed_runtime(), session, event)
    again = await purchases.send_paid_meter_writes(_fixed_runtime(), session, event)
    without = await purchases.send_paid_meter_writes(_fixed_runtime(), session, await _paid_event(session, without_id))

    [command] = await remote.commands_by_id(session, queued)
    assert (command.meter_id, command.kind, command.params, command.issued_by_name) == (
        min(first.id or 0, second.id or 0), CommandKind.write_purchase, {"purchase_count": 1, "amount_fen": 5000}, "系统")
    assert again == []
    # A household without such a meter keeps its write pending (the minute job looks again).
    assert without == []
    rows = (await session.execute(text("SELECT state, meter_id, command_id FROM pending_writes WHERE account_id = :a"),
                                  {"a": without_id})).all()
    assert [tuple(row) for row in rows] == [("pending", None, None)]


async def test_a_partial_refund_before_sending_sends_the_rest_with_the_same_count(session: AsyncSession) -> None:
    world = await make_world(session)
    account_id, _ = await _meter_account(session, world, world.east_valve_meters[0])
    payment_id = await _pay(session, account_id, 5000)
    [first] = await purchases.send_paid_meter_writes(_fixed_runtime(), session, await _paid_event(session, account_id))

    assert await take_back_pending_write(session, payment_id=payment_id, amount_fen=2000, now=NOW, by="收费员")
    await remote.take_leases(session, holder="test:partial", links=[world.east_link], ttl=timedelta(minutes=1), now=NOW)
    claimed = await remote.claim_commands(session, holder="test:partial", link_ids=[world.east_link], limit=5, now=NOW)
    _, [second] = await purchases.retry_meter_purchases(session, actor=ACTOR, now=NOW)

    assert claimed == []
    first_command, second_command = await remote.commands_by_id(session, [first, second])
    assert first_command.state is CommandState.cancelled
    assert second_command.params == {"purchase_count": 1, "amount_fen": 3000}
    # Cancelled before the wire: the rest can still be taken back.
    assert await take_back_pending_write(session, payment_id=payment_id, amount_fen=3000, now=NOW, by="收费员")


async def test_a_write_whose_meter_left_its_link_waits_and_the_job_carries_on(session: AsyncSession) -> None:
    world = await make_world(session)
    meter = world.east_valve_meters[0]
    account_id, _ = await _meter_account(session, world, meter)
    await _pay(session, account_id, 5000)
    [first] = await purchases.send_paid_meter_writes(_fixed_runtime(), session, await _paid_event(session, account_id))
    # It timed out in the queue; then the meter was taken off its bus.
    await session.execute(text("UPDATE remote_commands SET state = 'timed_out', finished_at = :t WHERE id = :id"),
                          {"t": NOW, "id": first})
    await session.execute(update(Meter).where(Meter.id == meter.id).values(concentrator_id=None))  # type: ignore[arg-type]

    assert await purchases.retry_meter_purchases(session, actor=ACTOR, now=NOW + purchases.RETRY_AFTER) == ([], [])
    rows = (await session.execute(text("SELECT state, meter_id, purchase_count FROM pending_writes WHERE account_id = :a"),
                                  {"a": account_id})).all()
    assert [tuple(row) for row in rows] == [("pending", meter.id, 1)]


async def test_resume_refuses_a_count_off_the_wire_and_a_caller_without_the_permission(session: AsyncSession) -> None:
    world = await make_world(session)
    meter_id = world.east_valve_meters[0].id or 0

    with pytest.raises(DomainError) as off_the_wire:
        await purchases.resume_meter_purchases(session, meter_id=meter_id, meter_count=256, principal=ACTOR, now=NOW)
    with pytest.raises(Forbidden):
        await purchases.resume_meter_purchases(session, meter_id=meter_id, meter_count=3,
                                               principal=world.operator.principal, now=NOW)

    assert (off_the_wire.value.code, off_the_wire.value.field) == (ErrorCode.INVALID, "purchaseCount")
    assert (await session.execute(text("SELECT count(*) FROM meter_purchase_counts WHERE meter_id = :m"),
                                  {"m": meter_id})).scalar_one() == 0
