"""The blocking-SDK pattern: a gateway's own threads, a timeout per call, typed errors,
kept exchanges and retries, against the echo kind's local fake over real sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests
from pydantic import SecretStr
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from backend.checks import run_checks
from backend.domain import Gateway, declared_gateways, system_principal
from backend.domains import installed
from backend.errors import ErrorCode
from backend.gateways.client import REDACTED, GatewayClient, _translated, open_gateway
from backend.gateways.errors import (
    GatewayBadAnswer,
    GatewayBusy,
    GatewayError,
    GatewayRejected,
    GatewayTimeout,
    GatewayUnavailable,
)
from backend.gateways.models import GatewayExchange
from backend.gateways.retry import RetryPolicy, next_retry
from backend.jobs import defer_job
from backend.runtime import Runtime
from backend.settings import Settings
from tests.fixtures.gateways import FakeGateway, FakeGateways
from tests.fixtures.live import eventually
from tests.sample_domain.echo import DELIVERY_JOB, deliver, send_echo
from tests.sample_domain.settings import EchoSettings

ClientMaker = Callable[..., GatewayClient]

NOW = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
# What a typed failure may take beyond the timeout (a loaded 2-core machine).
MARGIN_S = 0.4


def echo_gateway() -> Gateway:
    return declared_gateways(installed())["echo"]


@pytest.fixture
def fake(fake_gateways: FakeGateways) -> FakeGateway:
    return fake_gateways.start("echo")


@pytest.fixture
def opened(committed_sessions: async_sessionmaker[AsyncSession]) -> Iterator[list[GatewayClient]]:
    clients: list[GatewayClient] = []
    yield clients
    for client in clients:
        client.close()


@pytest.fixture
def client_with(
    fake: FakeGateway, committed_sessions: async_sessionmaker[AsyncSession], opened: list[GatewayClient],
) -> ClientMaker:
    def make(**settings: object) -> GatewayClient:
        client = open_gateway(echo_gateway(), settings=fake.settings.model_copy(update=settings),
                              sessions=committed_sessions)
        opened.append(client)
        return client

    return make


@pytest.fixture
def client(client_with: ClientMaker) -> GatewayClient:
    return client_with()


async def exchanges(sessions: async_sessionmaker[AsyncSession], reference: str) -> list[GatewayExchange]:
    async with sessions() as session:
        rows = await session.execute(select(GatewayExchange).where(col(GatewayExchange.reference) == reference)
                                     .order_by(col(GatewayExchange.id)))
        return list(rows.scalars())


async def test_a_call_returns_the_verified_answer_and_keeps_the_exchange_with_its_secrets_redacted(
    client: GatewayClient, fake: FakeGateway, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    answer = await send_echo(client, "抄表 ok", nonce="n-kept")

    assert answer == {"ok": True, "echo": "抄表 ok", "nonce": "n-kept"}
    assert [seen["path"] for seen in fake.requests()] == ["/echo"]
    [kept] = await exchanges(committed_sessions, "n-kept")
    assert (kept.gateway, kept.operation, kept.status, kept.error) == ("echo", "echo", "ok", None)
    assert kept.request["headers"]["Authorization"] == REDACTED
    assert json.loads(kept.request["body"]) == {"message": "抄表 ok", "nonce": "n-kept"}
    assert kept.response == answer
    secret = EchoSettings().secret.get_secret_value()
    row = json.dumps([kept.request, kept.response, kept.error], ensure_ascii=False)
    assert secret not in row
    assert base64.b64encode(f"notes:{secret}".encode()).decode() not in row
    assert 0 <= kept.duration_ms < 2000


async def test_a_call_past_its_timeout_is_a_typed_error_within_the_timeout(
    client_with: ClientMaker, fake: FakeGateway, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    client = client_with(timeout_s=0.5)
    fake.script("delay", seconds=3)

    began = time.monotonic()
    with pytest.raises(GatewayTimeout) as raised:
        await send_echo(client, "slow", nonce="n-slow")
    elapsed = time.monotonic() - began

    assert 0.5 <= elapsed < 0.5 + MARGIN_S
    assert raised.value.code is ErrorCode.GATEWAY_TIMEOUT
    assert (raised.value.message, raised.value.message_en) == ("外部服务响应超时, 请稍后查询结果",
                                                               "The outside service did not answer in time; check the outcome later")
    [kept] = await exchanges(committed_sessions, "n-slow")
    assert kept.status == "timeout"
    assert kept.error is not None and kept.error.startswith("GATEWAY_TIMEOUT")


async def test_a_thread_given_up_on_stays_taken_until_the_sdk_returns(client_with: ClientMaker) -> None:
    client = client_with(timeout_s=0.2, pool_size=1, queue_size=0)
    gate = threading.Event()

    with pytest.raises(GatewayTimeout):
        await client.call("hang", gate.wait, 10)
    # The SDK is still blocked: its thread is not free, so the next call is refused at once.
    began = time.monotonic()
    with pytest.raises(GatewayBusy):
        await client.call("next", lambda: "never runs")

    assert time.monotonic() - began < 0.1
    assert client.pool.taken == 1
    gate.set()
    await eventually(lambda: client.pool.taken == 0)
    assert await client.call("next", lambda: "runs") == "runs"


async def test_a_full_pool_is_a_typed_error_not_a_hang(
    client_with: ClientMaker, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    client = client_with(timeout_s=0.5, pool_size=1, queue_size=1)
    gate = threading.Event()
    holding = asyncio.create_task(client.call("hold", gate.wait, 10, reference="n-hold"))
    await asyncio.sleep(0.05)
    waiting = asyncio.create_task(client.call("wait", lambda: "late", reference="n-wait"))
    await asyncio.sleep(0.05)

    # The thread is taken and the queue is full: refused at once, the remote never called.
    began = time.monotonic()
    with pytest.raises(GatewayBusy) as refused:
        await client.call("third", lambda: "never", reference="n-third")
    assert time.monotonic() - began < 0.1
    assert refused.value.code is ErrorCode.GATEWAY_BUSY
    assert (refused.value.message, refused.value.message_en) == ("外部服务繁忙, 请稍后再试",
                                                                 "The outside service is busy; try again later")
    # The waiting call gets no thread within its timeout: busy too, after the timeout.
    with pytest.raises(GatewayBusy):
        await asyncio.wait_for(waiting, 0.5 + MARGIN_S)
    with pytest.raises(GatewayTimeout):
        await holding
    gate.set()
    await eventually(lambda: client.pool.taken == 0 and client.pool.waiting == 0)

    assert [kept.status for kept in await exchanges(committed_sessions, "n-third")] == ["busy"]
    assert [kept.status for kept in await exchanges(committed_sessions, "n-wait")] == ["busy"]


async def test_a_waiting_call_gets_the_thread_that_frees_first(client_with: ClientMaker) -> None:
    client = client_with(timeout_s=2.0, pool_size=1, queue_size=2)
    gate = threading.Event()
    holding = asyncio.create_task(client.call("hold", gate.wait, 10))
    await asyncio.sleep(0.05)
    first = asyncio.create_task(client.call("first", lambda: "first"))
    second = asyncio.create_task(client.call("second", lambda: "second"))
    await asyncio.sleep(0.05)

    gate.set()

    assert await holding is True
    assert (await first, await second) == ("first", "second")
    assert client.pool.taken == 0


async def test_a_crowd_of_calls_ends_within_the_timeout_and_leaves_no_thread_taken(client_with: ClientMaker) -> None:
    client = client_with(timeout_s=0.3, pool_size=2, queue_size=3)
    pauses = [0.0, 0.05, 0.5, 0.1, 0.0, 0.4, 0.02, 0.2, 0.6, 0.0, 0.15, 0.01]

    began = time.monotonic()
    outcomes = await asyncio.gather(*(client.call("pause", time.sleep, pause) for pause in pauses), return_exceptions=True)

    assert time.monotonic() - began < 0.3 + MARGIN_S
    assert {type(outcome).__name__ for outcome in outcomes} <= {"NoneType", "GatewayTimeout", "GatewayBusy"}
    # 12 calls at once on 2 threads and 3 places in the queue: some are refused.
    assert any(isinstance(outcome, GatewayBusy) for outcome in outcomes)
    await eventually(lambda: client.pool.taken == 0 and client.pool.waiting == 0)


async def test_a_bad_signature_is_a_typed_error_and_the_answer_is_kept(
    client: GatewayClient, fake: FakeGateway, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    fake.script("bad_signature")

    with pytest.raises(GatewayBadAnswer) as raised:
        await send_echo(client, "forged?", nonce="n-forged")

    assert raised.value.code is ErrorCode.GATEWAY_BAD_ANSWER
    assert not raised.value.retryable
    [kept] = await exchanges(committed_sessions, "n-forged")
    assert kept.status == "bad_answer"
    assert json.loads(kept.response) == {"ok": True, "echo": "forged?", "nonce": "n-forged"}


async def test_a_refusal_a_server_error_and_an_unreachable_remote_are_typed(
    client_with: ClientMaker, fake: FakeGateway, unused_port: int,
) -> None:
    client = client_with()
    fake.script("refuse")
    with pytest.raises(GatewayRejected) as refused:
        await send_echo(client, "no")
    fake.script("error", status=503, body="maintenance")
    with pytest.raises(GatewayUnavailable) as failed:
        await send_echo(client, "later")
    with pytest.raises(GatewayUnavailable) as unreachable:
        await send_echo(client_with(url=f"http://127.0.0.1:{unused_port}"), "anyone?")
    with pytest.raises(GatewayRejected):
        await send_echo(client_with(secret=SecretStr("not-the-shared-secret")), "me")

    assert (refused.value.code, refused.value.retryable) == (ErrorCode.GATEWAY_REJECTED, False)
    assert (failed.value.code, failed.value.retryable, failed.value.answer) == (ErrorCode.GATEWAY_UNAVAILABLE, True,
                                                                                "maintenance")
    assert unreachable.value.code is ErrorCode.GATEWAY_UNAVAILABLE
    assert "ConnectionError" in (unreachable.value.detail or "")


async def test_the_exchange_survives_the_callers_transaction_rolling_back(
    client: GatewayClient, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    class Abandoned(Exception):
        pass

    async def business() -> None:
        async with committed_sessions() as session, session.begin():
            await defer_job(session, job="notes.tally", dedupe_key="rolled-back", now=NOW)
            await send_echo(client, "told before the rollback", nonce="n-rolled-back")
            raise Abandoned

    with pytest.raises(Abandoned):
        await business()

    assert [kept.status for kept in await exchanges(committed_sessions, "n-rolled-back")] == ["ok"]
    async with committed_sessions() as session:
        queued = await session.execute(text("SELECT count(*) FROM pgqueuer WHERE dedupe_key = 'notes.tally:rolled-back'"))
        assert queued.scalar_one() == 0


def test_backoff_doubles_from_the_first_delay_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=6, first_delay=timedelta(seconds=30), max_delay=timedelta(minutes=3))

    assert [policy.delay_after(attempt).total_seconds() for attempt in range(1, 7)] == [30, 60, 120, 180, 180, 180]
    assert policy.delay_after(10_000) == timedelta(minutes=3)
    retry = next_retry(policy, {"nonce": "x", "attempt": 2}, dedupe_key="x", now=NOW)
    assert retry is not None
    assert (retry.attempt, retry.at, retry.dedupe_key, retry.payload) == (3, NOW + timedelta(seconds=60), "x#3",
                                                                           {"nonce": "x", "attempt": 3})
    assert next_retry(policy, {"attempt": 6}, dedupe_key="x", now=NOW) is None
    with pytest.raises(ValueError, match="impossible"):
        RetryPolicy(max_attempts=0)


async def test_a_failing_delivery_is_retried_later_with_backoff_and_stops_after_its_attempts(
    client: GatewayClient, fake: FakeGateway, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    fake.script("error", status=503, times=10)
    runtime = Runtime(settings=Settings(), sessions=committed_sessions, actor=system_principal(installed()),
                      clock=lambda: NOW, services={"gateway.echo": client, "defer_job": defer_job})
    payload: dict[str, object] = {"message": "投递", "nonce": "n-retried"}
    outcomes, waits = [], []
    for _ in range(3):
        outcomes.append(await deliver(runtime, payload))
        async with committed_sessions() as session:
            queued = (await session.execute(text(
                "SELECT payload, execute_after - created AS wait FROM pgqueuer"
                " WHERE entrypoint = :entrypoint ORDER BY id DESC LIMIT 1"), {"entrypoint": f"job:{DELIVERY_JOB}"})).first()
            if outcomes[-1] == "retrying":
                assert queued is not None
                payload = json.loads(queued.payload)
                waits.append(round(queued.wait.total_seconds()))
                await session.execute(text("DELETE FROM pgqueuer WHERE entrypoint = :entrypoint"),
                                      {"entrypoint": f"job:{DELIVERY_JOB}"})
                await session.commit()

    assert outcomes == ["retrying", "retrying", "gave_up"]
    assert waits == [30, 45]  # 30 s, then 60 s capped at 45 s
    assert payload == {"message": "投递", "nonce": "n-retried", "attempt": 3}
    assert len(fake.requests()) == 3
    assert [kept.status for kept in await exchanges(committed_sessions, "n-retried")] == ["unavailable"] * 3


async def test_a_refused_delivery_is_not_retried(
    client: GatewayClient, fake: FakeGateway, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    fake.script("refuse")
    runtime = Runtime(settings=Settings(), sessions=committed_sessions, actor=system_principal(installed()),
                      clock=lambda: NOW, services={"gateway.echo": client, "defer_job": defer_job})

    assert await deliver(runtime, {"message": "no", "nonce": "n-refused"}) == "gave_up"


async def test_the_gateway_is_a_line_of_shuiwu_check(
    database_url: str, fake: FakeGateway, unused_port: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines: list[str] = []
    monkeypatch.setenv("SHUIWU_ECHO_URL", fake.url)
    await run_checks(Settings(), database_url, echo=lines.append)
    monkeypatch.setenv("SHUIWU_ECHO_URL", f"http://127.0.0.1:{unused_port}")
    await run_checks(Settings(), database_url, echo=lines.append)

    port = fake.url.rsplit(":", 1)[1]
    assert f"ok    gateway.echo  http://127.0.0.1:{port} answers (2 threads, timeout 2s)" in lines
    assert f"FAIL  gateway.echo  cannot reach 127.0.0.1:{unused_port} (ConnectionRefusedError)" in lines


def test_every_gateway_error_is_a_domain_error_with_its_own_code() -> None:
    kinds = (GatewayTimeout, GatewayBusy, GatewayUnavailable, GatewayRejected, GatewayBadAnswer)

    assert all(issubclass(kind, GatewayError) for kind in kinds)
    assert {kind.code for kind in kinds} == {ErrorCode.GATEWAY_TIMEOUT, ErrorCode.GATEWAY_BUSY, ErrorCode.GATEWAY_UNAVAILABLE,
                                             ErrorCode.GATEWAY_REJECTED, ErrorCode.GATEWAY_BAD_ANSWER}


def test_a_connection_lost_after_the_request_went_out_may_have_been_acted_on(unused_port: int) -> None:
    """A reset once the request was sent (the vendor may have sent the SMS) is told apart
    from a connection that was never made (nothing went out)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def read_then_reset() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)  # the whole request arrived
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()  # RST, no answer

    server = threading.Thread(target=read_then_reset)
    server.start()
    try:
        with pytest.raises(GatewayUnavailable) as lost:
            _translated(requests.post, f"http://127.0.0.1:{port}/send", b"{}", None)
    finally:
        server.join(timeout=5)
        listener.close()
    with pytest.raises(GatewayUnavailable) as refused:
        _translated(requests.post, f"http://127.0.0.1:{unused_port}/send", b"{}", None)

    assert lost.value.maybe_done is True
    assert refused.value.maybe_done is False
    # No answer in time once sent: maybe done; a busy pool never called the remote.
    assert GatewayTimeout().maybe_done is True
    assert GatewayBusy().maybe_done is False
