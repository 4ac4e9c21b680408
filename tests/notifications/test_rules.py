"""The declared message rules read the subject's state when they run; the arrears job
reminds once per interval; an SMS past the household's daily cap is recorded, not sent."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.archives.service import assign_meter
from backend.auth.sms.senders import sms_sender
from backend.auth.sms.settings import SmsSettings
from backend.billing import service as tariffs
from backend.billing.accounts import AccountTerms, open_account
from backend.billing.models import BillingMode
from backend.clock import utcnow
from backend.domain import declared_gateways, system_principal
from backend.domains import installed
from backend.events.service import Event
from backend.gateways.client import GatewayClient, open_gateway
from backend.jobs import defer_job
from backend.notifications.arrears import remind_arrears
from backend.notifications.delivery import send_sms
from backend.notifications.domain import RULES
from backend.notifications.kinds import MessageKind, Recipient
from backend.notifications.rules import send_rule
from backend.notifications.service import notify_many
from backend.notifications.settings import NotificationsSettings
from backend.payments.counter import Operator, take_payment
from backend.payments.models import PaymentChannel, PaymentPurpose
from backend.runtime import Runtime
from backend.settings import Settings
from tests.billing.bill_rows import make_bill
from tests.billing.factories import tariff
from tests.notifications.factories import make_home
from tests.readings.factories import make_meter

NOW = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
RULE = {rule.name: rule for rule in RULES}


def runtime_at(now: datetime, sessions: Any = None, services: dict[str, Any] | None = None) -> Runtime:
    return Runtime(settings=Settings(), sessions=sessions, actor=system_principal(installed()), clock=lambda: now,
                   services={"defer_job": defer_job, "settings.notifications": NotificationsSettings(sms_daily_cap=2),
                             **(services or {})})


def event(kind: str, payload: dict[str, Any], event_id: int = 1) -> Event:
    return Event(id=event_id, kind=kind, key=None, payload=payload, created_at=NOW)


async def postpaid_home(session: AsyncSession, *, due: date) -> tuple[Any, Any]:
    raw = tariff(valid_from=date(2020, 1, 1))
    await tariffs.save_tariff(session, raw=raw)
    home = await make_home(session, residents=1)
    account = await open_account(session, household_id=home.household_id, mode=BillingMode.postpaid,
                                 terms=AccountTerms(tariff_code=raw["code"]), now=NOW - timedelta(days=90), by="测试")
    area_id = (await session.execute(text("SELECT area_id FROM households WHERE id = :h"),
                                     {"h": home.household_id})).scalar_one()
    meter = await make_meter(session, area_id=area_id, install_date=None)
    bill = await make_bill(session, account_id=account.id, household_id=home.household_id, period=date(2026, 10, 1),
                           meter_id=meter.id, start_m3="0", end_m3="10", lines=[("water", 1, "10", "3.45")],
                           due_date=due, tariff_code=raw["code"])
    return home, bill


async def messages_of(session: AsyncSession, household_id: int) -> list[Any]:
    return list((await session.execute(text(
        "SELECT kind, title, body, data FROM messages WHERE household_id = :h ORDER BY id"), {"h": household_id})).all())


async def test_a_bill_issued_tells_the_household_its_amount_and_due_date_unless_paid_since(session: AsyncSession) -> None:
    home, bill = await postpaid_home(session, due=date(2026, 12, 25))
    paid, paid_bill = await postpaid_home(session, due=date(2026, 12, 25))
    await session.execute(text("UPDATE bills SET status = 'paid' WHERE id = :b"), {"b": paid_bill.id})
    issued = event("bill.issued", {"bill_ids": [bill.id, paid_bill.id], "account_ids": [bill.account_id,
                   paid_bill.account_id], "period": "2026-10-01"})

    await send_rule(runtime_at(NOW), session, issued, RULE["bill_issued"])
    await send_rule(runtime_at(NOW), session, issued, RULE["bill_issued"])  # a replay

    assert [tuple(row) for row in await messages_of(session, home.household_id)] == [
        ("bill_issued", "缴费通知", f"【水务】您的户号 {home.account_no} 2026年10月水费 ¥34.50 已出账, 请于 2026年12月25日 前缴纳, "
         "逾期将产生滞纳金。", {"screen": "bill", "id": bill.id})]
    assert await messages_of(session, paid.household_id) == []


async def test_a_tenants_binding_request_tells_the_owner_and_not_the_other_tenants(session: AsyncSession) -> None:
    home = await make_home(session, residents=2)  # the first is the owner
    newcomer = (await session.execute(text("INSERT INTO residents (phone) VALUES ('13122223333') RETURNING id"))).scalar_one()
    requested = event("household.bound", {"household_id": home.household_id, "resident_id": newcomer, "state": "pending"},
                      event_id=77)

    await send_rule(runtime_at(NOW), session, requested, RULE["binding"])

    rows = (await session.execute(text("SELECT recipient_id, body FROM messages WHERE dedupe_key = 'binding:77'"))).all()
    assert [(row.recipient_id, row.body) for row in rows] == [
        (home.resident_ids[0], f"【水务】手机尾号 3333 的用户对户号 {home.account_no} 申请绑定, 请在\"我的户号\"中审核。"
         "如非本人操作, 请联系客服。")]


@pytest.fixture
def log_sms() -> Iterator[GatewayClient]:
    client = open_gateway(declared_gateways(installed())["sms"], settings=SmsSettings(sender="log"))
    yield client
    client.close()


async def test_arrears_are_reminded_once_per_interval_and_sms_past_the_daily_cap_are_capped(
    committed_sessions: async_sessionmaker[AsyncSession], log_sms: GatewayClient,
) -> None:
    async with committed_sessions() as session, session.begin():
        home, _ = await postpaid_home(session, due=date(2026, 11, 15))
    services = {"gateway.sms": log_sms}

    first = await remind_arrears(runtime_at(NOW, committed_sessions, services), {})
    same_interval = await remind_arrears(runtime_at(NOW + timedelta(days=2), committed_sessions, services), {})
    async with committed_sessions() as session:
        reminders = await messages_of(session, home.household_id)
    assert (first, same_interval) == (1, 0)
    assert [row.body for row in reminders] == [
        f"【水务】您的户号 {home.account_no} 已欠费 ¥34.50, 最早一期账单已于 2026年11月15日 到期, 请尽快缴纳, 以免产生更多滞纳金。"]

    # Two more SMS for the household the same day: the cap (2) lets one of them through.
    async with committed_sessions() as session, session.begin():
        for number in (1, 2):
            await notify_many(session, kind=MessageKind.CLOSE_WARNING, recipients=[Recipient.household(home.household_id)],
                              title="关阀预警", body=f"预警{number}", dedupe_key=f"cap:{number}", now=NOW)
    sent = await send_sms(runtime_at(NOW, committed_sessions, services), {})
    async with committed_sessions() as session:
        states = (await session.execute(text(
            "SELECT kind, state FROM sms_deliveries WHERE household_id = :h ORDER BY id"), {"h": home.household_id})).all()
    assert sent == 2
    assert [tuple(row) for row in states] == [("arrears", "sent"), ("close_warning", "sent"), ("close_warning", "capped")]
    assert [text_ for phone, text_ in sms_sender("log").sent if phone == home.phone][-2:] == [reminders[0].body, "预警1"]


async def test_a_meter_alarm_reaches_the_residents_of_the_household_the_meter_serves(session: AsyncSession) -> None:
    home = await make_home(session, residents=1)
    area_id = (await session.execute(text("SELECT area_id FROM households WHERE id = :h"),
                                     {"h": home.household_id})).scalar_one()
    served = await make_meter(session, area_id=area_id, install_date=None)
    await assign_meter(session, meter_id=served.id, household_id=home.household_id, valid_from=NOW - timedelta(days=30),
                       start_reading=Decimal(0))
    now = utcnow()
    # An abnormal-meter rule opened a low-battery alarm on the served meter.
    alarm_ids = [(await session.execute(text(
        "INSERT INTO alarms (subject_kind, subject_id, kind, status, severity, opened_at, last_seen_at) "
        "VALUES ('meter', :m, 'battery_low', 'open', 'warning', :now, :now) RETURNING id"),
        {"m": served.id, "now": now})).scalar_one()]

    await send_rule(runtime_at(now), session, event("alarm.opened", {"alarm_ids": alarm_ids}), RULE["meter_alarm"])

    assert [row.body for row in await messages_of(session, home.household_id)] == [
        f"【水务】您的户号 {home.account_no} 的水表 {served.code} 出现异常: 电池欠压。如有疑问请联系客服或在线报修。"]


async def test_a_payment_tells_the_household_what_arrived_and_the_balance_after(session: AsyncSession) -> None:
    raw = tariff(valid_from=date(2020, 1, 1))
    await tariffs.save_tariff(session, raw=raw)
    home = await make_home(session, residents=1)
    account = await open_account(session, household_id=home.household_id, mode=BillingMode.prepaid_station,
                                 terms=AccountTerms(tariff_code=raw["code"]), now=NOW, by="测试")
    assert account.id is not None
    payment = await take_payment(session, account_id=account.id, channel=PaymentChannel.cash,
                                 purpose=PaymentPurpose.recharge, amount_fen=5000, confirm_amount_fen=5000,
                                 idempotency_key=f"notify-{home.account_no}", operator=Operator(None, "收费员"), now=NOW)
    succeeded = event("payment.succeeded", {"payment_id": payment.id, "account_id": account.id,
                                            "household_id": home.household_id, "channel": "cash", "amount_fen": 5000,
                                            "balance_after_fen": 5000})

    await send_rule(runtime_at(NOW), session, succeeded, RULE["payment_received"])

    assert [(row.body, row.data) for row in await messages_of(session, home.household_id)] == [
        (f"【水务】您的户号 {home.account_no} 已到账 ¥50.00, 当前余额 ¥50.00。感谢您的缴费。",
         {"screen": "payment", "id": payment.id})]
