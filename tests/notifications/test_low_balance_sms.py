"""Acceptance (issue 19): a low-balance event reaches a household whose residents have no
app by SMS at the local SMS gateway exactly once, and a replayed event sends nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.auth.sms.fake import sent_codes
from backend.auth.sms.settings import SmsSettings
from backend.billing import service as tariffs
from backend.billing.accounts import open_account
from backend.billing.ledger import post_entry
from backend.billing.models import BillingMode, EntryKind
from backend.domain import declared_gateways, system_principal
from backend.domains import installed
from backend.events.replay import replay_events
from backend.events.running import HandlerOutcome, run_handler
from backend.gateways.client import GatewayClient, open_gateway
from backend.jobs import declared_handlers, defer_job
from backend.notifications.delivery import send_sms
from backend.notifications.settings import NotificationsSettings
from backend.runtime import Runtime
from backend.settings import Settings
from tests.billing.factories import tariff
from tests.events.factories import raw_connection
from tests.fixtures.gateways import FakeGateway, FakeGateways
from tests.notifications.factories import make_home

NOTICE_TEMPLATE = "SMS_900001"


@pytest.fixture
def sms_fake(fake_gateways: FakeGateways) -> FakeGateway:
    return fake_gateways.start("sms")


@pytest.fixture
def sms_client(sms_fake: FakeGateway) -> Iterator[GatewayClient]:
    settings = SmsSettings(sender="aliyun", url=sms_fake.url, access_key_id="fake-sms-access-key-id",
                           access_key_secret="fake-sms-access-key-secret", sign_name="演示水务",  # type: ignore[arg-type]
                           login_template="SMS_1", binding_template="SMS_2")
    client = open_gateway(declared_gateways(installed())["sms"], settings=settings)
    yield client
    client.close()


async def test_a_low_balance_reaches_a_household_without_the_app_by_sms_once_and_a_replay_sends_nothing(
    sms_fake: FakeGateway, sms_client: GatewayClient, committed_sessions: async_sessionmaker[AsyncSession],
    database_url: str,
) -> None:
    now = datetime.now(UTC)  # the handler's horizon is measured from the event's real creation time
    runtime = Runtime(settings=Settings(), sessions=committed_sessions, actor=system_principal(installed()),
                      clock=lambda: now, services={"gateway.sms": sms_client, "defer_job": defer_job,
                                                   "settings.notifications": NotificationsSettings(
                                                       sms_template=NOTICE_TEMPLATE)})
    raw = tariff(valid_from=date(2020, 1, 1))
    async with committed_sessions() as session, session.begin():
        await tariffs.save_tariff(session, raw=raw)
        home = await make_home(session, residents=2)  # bound, but neither has the app
        account = await open_account(session, household_id=home.household_id, mode=BillingMode.prepaid_station,
                                     now=now, by="测试")
        assert account.id is not None
        await post_entry(session, account_id=account.id, kind=EntryKind.recharge, amount_fen=5000, ref="r1",
                         idempotency_key="low-balance-r1")
        # Given: the account falls to ¥12.34, below its ¥20.00 alert threshold.
        await post_entry(session, account_id=account.id, kind=EntryKind.charge, amount_fen=-3766, ref="c1",
                         idempotency_key="low-balance-c1")
    async with committed_sessions() as session:
        event_id = (await session.execute(text(
            "SELECT id FROM domain_events WHERE kind = 'account.threshold_crossed' AND payload->>'to_state' = 'alert' "
            "AND payload->'account_ids' @> to_jsonb(CAST(:a AS bigint)) ORDER BY id DESC LIMIT 1"), {"a": account.id})).scalar_one()
    handler = declared_handlers(installed()).named("account.threshold_crossed:messages.balance_alert")

    # When: the handler runs, then the SMS job.
    assert await run_handler(runtime, handler, event_id) is HandlerOutcome.handled
    assert await send_sms(runtime, {}) == 1

    # Then: one SMS to the household's phone, with the balance; both residents' inboxes have it.
    expected_text = (f"【水务】您的户号 {home.account_no} 余额 ¥12.34, 已低于提醒金额 ¥20.00, 请及时充值。")
    assert sent_codes(sms_fake.requests()) == [(home.phone, {"content": expected_text})]
    async with committed_sessions() as session:
        inboxes = (await session.execute(text(
            "SELECT recipient_id FROM messages WHERE household_id = :h AND kind = 'balance_alert' ORDER BY 1"),
            {"h": home.household_id})).scalars().all()
        deliveries = (await session.execute(text(
            "SELECT state, phone FROM sms_deliveries WHERE household_id = :h"), {"h": home.household_id})).all()
    assert list(inboxes) == sorted(home.resident_ids)
    assert [tuple(row) for row in deliveries] == [("sent", home.phone)]

    # A replay finds the event handled; and even when its handling record is gone (a
    # restored backup, a replay under a new name), the dedupe keys write and send nothing.
    async with raw_connection(database_url) as connection:
        replayed = await replay_events(connection, handler=handler, now=now, from_id=event_id)
        assert (replayed.enqueued, replayed.already_handled) == (0, 1)
        await connection.execute("DELETE FROM handled_events WHERE event_id = $1", event_id)
        await connection.execute("DELETE FROM pgqueuer WHERE entrypoint = $1", handler.entrypoint)
    assert await run_handler(runtime, handler, event_id) is HandlerOutcome.handled
    assert await send_sms(runtime, {}) == 0
    assert len(sms_fake.requests()) == 1
    async with committed_sessions() as session:
        count = (await session.execute(text("SELECT count(*) FROM messages WHERE household_id = :h"),
                                       {"h": home.household_id})).scalar_one()
    assert count == 2
