"""JPush: the local fake answers like /v3/push (401, 400, success), and the push job sends
queued deliveries in calls of at most 1000 registration ids, retrying with backoff."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.domain import declared_gateways, system_principal
from backend.domains import installed
from backend.gateways.client import GatewayClient, open_gateway
from backend.gateways.errors import GatewayRejected
from backend.jobs import defer_job
from backend.notifications.delivery import send_pushes
from backend.notifications.fakes.jpush import pushed
from backend.notifications.jpush import push_payload, send_push
from backend.notifications.kinds import MessageKind, Recipient
from backend.notifications.service import notify_many
from backend.notifications.settings import JPushSettings, NotificationsSettings
from backend.runtime import Runtime
from backend.settings import Settings
from tests.fixtures.gateways import FakeGateway, FakeGateways
from tests.notifications.factories import add_devices, make_residents

NOW = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)


@pytest.fixture
def fake(fake_gateways: FakeGateways) -> FakeGateway:
    return fake_gateways.start("jpush")


@pytest.fixture
def client(fake: FakeGateway) -> Iterator[GatewayClient]:
    gateway = open_gateway(declared_gateways(installed())["jpush"], settings=fake.settings)
    yield gateway
    gateway.close()


def runtime_at(sessions: async_sessionmaker[AsyncSession], client: GatewayClient, now: datetime) -> Runtime:
    return Runtime(settings=Settings(), sessions=sessions, actor=system_principal(installed()), clock=lambda: now,
                   services={"gateway.jpush": client, "defer_job": defer_job,
                             "settings.notifications": NotificationsSettings()})


async def test_the_fake_answers_success_401_and_400_as_jpush_does(fake: FakeGateway, client: GatewayClient) -> None:
    settings: JPushSettings = fake.settings  # type: ignore[assignment]
    good = push_payload(registration_ids=["r1", "r2"], title="缴费通知", body="请缴费", extras={"screen": "bill", "id": 3},
                        apns_production=False)

    answer = await client.call("push", send_push, settings, good)
    with pytest.raises(GatewayRejected) as unauthorized:
        await client.call("push", send_push, settings.model_copy(update={"master_secret": SecretStr("wrong")}), good)
    with pytest.raises(GatewayRejected) as too_many:
        await client.call("push", send_push, settings, {**good, "audience": {"registration_id": [str(n) for n in range(1001)]}})
    with pytest.raises(GatewayRejected) as no_audience:
        await client.call("push", send_push, settings, {**good, "audience": {}})

    assert set(answer) == {"sendno", "msg_id"}
    assert unauthorized.value.answer["status"] == 401
    assert (too_many.value.answer["status"], too_many.value.answer["code"]) == (400, 1003)
    assert (no_audience.value.answer["status"], no_audience.value.answer["code"]) == (400, 1003)
    assert [seen["status"] for seen in fake.requests()] == [200, 401, 400, 400]
    assert pushed(fake.requests()) == [{"registration_ids": ["r1", "r2"], "title": "缴费通知", "alert": "请缴费",
                                        "extras": {"screen": "bill", "id": 3}}]


async def _queue(sessions: async_sessionmaker[AsyncSession], *, residents: int, title: str) -> None:
    async with sessions() as session, session.begin():
        await session.execute(text("UPDATE push_deliveries SET state = 'failed' WHERE state = 'queued'"))
        ids = await make_residents(session, residents)
        await add_devices(session, user_kind="resident", user_ids=ids)
        await notify_many(session, kind=MessageKind.NOTICE, recipients=[Recipient.resident(r) for r in ids], title=title,
                          body="正文", data={"screen": "notice", "id": 1}, dedupe_key=title, now=NOW)


async def _states(sessions: async_sessionmaker[AsyncSession], title: str) -> list[tuple[str, int, str | None]]:
    async with sessions() as session:
        rows = await session.execute(text("SELECT state, attempts, reason FROM push_deliveries WHERE title = :t "
                                          "ORDER BY id"), {"t": title})
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def test_1500_devices_are_two_calls_of_at_most_1000(
    fake: FakeGateway, client: GatewayClient, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    await _queue(committed_sessions, residents=1500, title="大批量")

    sent = await send_pushes(runtime_at(committed_sessions, client, NOW), {})

    assert sent == 2
    assert sorted(len(push["registration_ids"]) for push in pushed(fake.requests())) == [500, 1000]
    assert await _states(committed_sessions, "大批量") == [("sent", 1, None), ("sent", 1, None)]


async def test_a_5xx_is_retried_with_backoff_and_a_401_fails_at_once(
    fake: FakeGateway, client: GatewayClient, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    await _queue(committed_sessions, residents=2, title="重试")
    fake.script("server_error")

    await send_pushes(runtime_at(committed_sessions, client, NOW), {})
    after_failure = await _states(committed_sessions, "重试")
    not_yet = await send_pushes(runtime_at(committed_sessions, client, NOW + timedelta(seconds=29)), {})
    retried = await send_pushes(runtime_at(committed_sessions, client, NOW + timedelta(seconds=30)), {})

    assert after_failure == [("queued", 1, "503 1011 Server busy, please retry later")]
    assert (not_yet, retried) == (0, 1)
    assert await _states(committed_sessions, "重试") == [("sent", 2, None)]

    await _queue(committed_sessions, residents=2, title="拒绝")
    fake.script("unauthorized")
    await send_pushes(runtime_at(committed_sessions, client, NOW), {})
    again = await send_pushes(runtime_at(committed_sessions, client, NOW + timedelta(hours=2)), {})

    assert again == 0
    assert await _states(committed_sessions, "拒绝") == [("failed", 1, "401")]
