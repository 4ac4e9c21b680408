"""Webhook deliveries end to end: events emitted before any worker runs are delivered
once it starts, signed as docs/webhooks.md says; a 500 is retried until a 2xx; a
finished delivery is replayed; data is narrowed to the client's scope; the SSRF guard
refuses each address class at registration and again at delivery (docs/webhooks.md); an
unexpected error in an attempt is a recorded failed attempt; ``workorder.changed`` (fanned
out by the workorders domain's declaration) reaches a client over the order's area and no
other."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.archives.models import Area
from backend.auth.models import ApiClient, ApiClientArea, PrincipalKind
from backend.auth.principal import Principal
from backend.auth.system import system_actor
from backend.db import session_factory
from backend.errors import ErrorCode
from backend.events.service import emit_event
from backend.jobs import defer_job
from backend.readings.events import ReadingsIngested
from backend.runtime import Runtime
from backend.settings import Settings
from backend.webhooks import errors, service, signing, ssrf
from backend.webhooks.settings import WebhookSettings
from backend.workorders import service as workorders
from backend.workorders.models import WorkOrderCategory
from tests.factories import make_household, unique
from tests.fixtures.live import eventually
from tests.webhooks.conftest import Receiver, World
from tests.workorders.support import HANDLE, TZ, staff_member

SETTINGS = Settings()


async def register(engine: AsyncEngine, actor: Principal, url: str, kinds: tuple[str, ...] = ("readings.ingested",),
                   *, allow_private: bool = True) -> service.IssuedEndpoint:
    async with session_factory(engine)() as session, session.begin():
        return await service.register_endpoint(
            session, actor=actor, client_pk=None, url=url, event_types=kinds, allow_private=allow_private,
            station_secret=SETTINGS.secret(), now=datetime.now(UTC))


async def ingested(engine: AsyncEngine, *meter_ids: int) -> int:
    async with session_factory(engine)() as session, session.begin():
        now = datetime.now(UTC)
        return await emit_event(session, "readings.ingested", ReadingsIngested(
            batch_id=f"batch-{now.timestamp()}", meter_ids=tuple(meter_ids), first_read_at=now, last_read_at=now))


async def deliveries(engine: AsyncEngine, endpoint_id: int | None) -> list[Any]:
    async with session_factory(engine)() as session:
        return list((await session.execute(text(
            "SELECT d.id, d.event_id, d.status, d.attempts, d.replays, d.body,"
            " ARRAY(SELECT coalesce(t.status_code, 0) FROM webhook_attempts t WHERE t.delivery_id = d.id ORDER BY t.id)"
            " AS codes FROM webhook_deliveries d WHERE d.endpoint_id = :e ORDER BY d.id"), {"e": endpoint_id})).all())


def assert_signed(request: Any, secret: str) -> None:
    timestamp = request.headers["X-Shuiwu-Timestamp"]
    assert signing.verify(secret, timestamp, request.body, request.headers["X-Shuiwu-Signature"])
    assert not signing.verify(secret + "x", timestamp, request.body, request.headers["X-Shuiwu-Signature"])
    assert abs(int(timestamp) - datetime.now(UTC).timestamp()) < 30


async def test_events_emitted_while_no_worker_runs_are_delivered_signed_once_it_starts(
    committed_engine: AsyncEngine, world: World, receiver: Receiver, request: pytest.FixtureRequest
) -> None:
    issued = await register(committed_engine, world.principal, receiver.url("/ok"))
    first = await ingested(committed_engine, world.east_meter)
    second = await ingested(committed_engine, world.east_meter)

    request.getfixturevalue("worker")  # the worker starts only now
    await eventually(lambda: len(receiver.at("/ok")) == 2, timeout_s=10)
    await eventually(lambda: _all_finished(committed_engine, issued.endpoint.id))

    got = sorted(receiver.at("/ok"), key=lambda r: int(r.json["id"]))  # type: ignore[call-overload]
    assert [r.json["id"] for r in got] == [str(first), str(second)]
    for r in got:
        assert_signed(r, issued.secret)
        assert r.headers["X-Shuiwu-Event"] == "readings.ingested"
        assert r.headers["Content-Type"] == "application/json"
        assert set(r.json) == {"id", "type", "created_at", "data"}
        assert r.json["data"]["meter_ids"] == [world.east_meter]  # type: ignore[index]
    rows = await deliveries(committed_engine, issued.endpoint.id)
    assert [(row.status, row.attempts, row.codes) for row in rows] == [("succeeded", 1, [200])] * 2
    assert {r.headers["X-Shuiwu-Delivery"] for r in got} == {str(row.id) for row in rows}


async def _all_finished(engine: AsyncEngine, endpoint_id: int | None) -> bool:
    rows = await deliveries(engine, endpoint_id)
    return bool(rows) and all(row.status != "pending" for row in rows)


async def test_a_delivery_answered_500_is_retried_and_then_succeeds(
    committed_engine: AsyncEngine, world: World, receiver: Receiver, worker: Any
) -> None:
    issued = await register(committed_engine, world.principal, receiver.url("/fail-once/a"))
    await ingested(committed_engine, world.east_meter)

    await eventually(lambda: _all_finished(committed_engine, issued.endpoint.id), timeout_s=10)

    (row,) = await deliveries(committed_engine, issued.endpoint.id)
    assert (row.status, row.attempts, row.codes) == ("succeeded", 2, [500, 200])
    first, second = receiver.at("/fail-once/a")
    assert first.body == second.body and first.headers["X-Shuiwu-Delivery"] == second.headers["X-Shuiwu-Delivery"]
    assert_signed(second, issued.secret)


async def test_a_delivery_failing_every_time_is_failed_after_max_attempts_and_replayed(
    committed_engine: AsyncEngine, world: World, receiver: Receiver, worker: Any
) -> None:
    issued = await register(committed_engine, world.principal, receiver.url("/always-500"))
    await ingested(committed_engine, world.east_meter)
    await eventually(lambda: _all_finished(committed_engine, issued.endpoint.id), timeout_s=10)
    (failed,) = await deliveries(committed_engine, issued.endpoint.id)

    async with session_factory(committed_engine)() as session, session.begin():
        replayed = await service.replay_delivery(session, actor=world.principal, delivery_pk=failed.id,
                                                 now=datetime.now(UTC))
        await service.defer_delivery(defer_job, session, delivery=replayed, now=datetime.now(UTC))
    await eventually(lambda: len(receiver.at("/always-500")) == 6, timeout_s=10)
    await eventually(lambda: _all_finished(committed_engine, issued.endpoint.id), timeout_s=10)

    (again,) = await deliveries(committed_engine, issued.endpoint.id)
    assert (failed.status, failed.attempts, failed.codes) == ("failed", 3, [500] * 3)
    assert (again.status, again.attempts, again.replays, again.codes) == ("failed", 3, 1, [500] * 6)


async def test_a_pending_delivery_cannot_be_replayed(committed_engine: AsyncEngine, world: World) -> None:
    async with session_factory(committed_engine)() as session, session.begin():
        endpoint = (await register(committed_engine, world.principal, "http://127.0.0.1:9/x")).endpoint
        delivery_id = (await session.execute(text(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, body, status, created_at)"
            " VALUES (:e, 0, 'readings.ingested', '{}', 'pending', now()) RETURNING id"), {"e": endpoint.id})).scalar_one()
    async with session_factory(committed_engine)() as session, session.begin():
        with pytest.raises(errors.WebhookDeliveryPending):
            await service.replay_delivery(session, actor=world.principal, delivery_pk=delivery_id, now=datetime.now(UTC))


async def test_data_is_narrowed_to_the_clients_scope_and_an_event_outside_it_is_not_delivered(
    committed_engine: AsyncEngine, world: World, receiver: Receiver, worker: Any
) -> None:
    issued = await register(committed_engine, world.principal, receiver.url("/ok?scope"))
    outside = await ingested(committed_engine, world.west_meter)
    both = await ingested(committed_engine, world.east_meter, world.west_meter)

    await eventually(lambda: _all_finished(committed_engine, issued.endpoint.id), timeout_s=10)
    await eventually(lambda: _handled(committed_engine, outside))

    rows = await deliveries(committed_engine, issued.endpoint.id)
    assert [(row.event_id, row.body["data"]["meter_ids"]) for row in rows] == [(both, [world.east_meter])]
    assert [r.json["id"] for r in receiver.at("/ok?scope")] == [str(both)]


async def _handled(engine: AsyncEngine, event_id: int) -> bool:
    async with session_factory(engine)() as session:
        return (await session.execute(text("SELECT count(*) FROM handled_events WHERE event_id = :id"
                                            " AND handler = 'webhooks.fanout'"), {"id": event_id})).scalar_one() == 1


REFUSED = [
    ("http://127.0.0.1/hook", "loopback"), ("http://[::1]/hook", "loopback"), ("http://localhost:8080/", "loopback"),
    ("http://10.1.2.3/", "private"), ("http://172.16.0.1/", "private"), ("http://192.168.1.1/", "private"),
    ("http://[fc00::1]/", "private"), ("http://[fd12:3456::1]/", "private"),
    ("http://169.254.1.1/", "link-local"), ("http://[fe80::1]/", "link-local"),
    ("http://224.0.0.1/", "multicast"), ("http://[ff02::1]/", "multicast"),
    ("http://0.0.0.0/", "unspecified"), ("http://[::]/", "unspecified"),
    ("http://169.254.169.254/latest/meta-data", "metadata"), ("http://[fd00:ec2::254]/", "metadata"),
    ("http://100.100.100.200/", "metadata"), ("http://100.64.0.1/", "cgnat"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    # IPv6 forms carrying an IPv4 address are judged by it: 6to4, NAT64's well-known prefix.
    ("http://[2002:7f00:1::]/", "loopback"), ("http://[2002:a9fe:a9fe::]/", "metadata"),
    ("http://[64:ff9b::a00:1]/", "private"),
    ("http://[fec0::1]/", "private"), ("http://192.0.0.8/", "private"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED, ids=[url for url, _ in REFUSED])
async def test_registration_refuses_each_address_class(
    committed_engine: AsyncEngine, world: World, url: str, reason: str
) -> None:
    before = await _endpoint_count(committed_engine)
    with pytest.raises(errors.WebhookAddressRefused) as refused:
        await register(committed_engine, world.principal, url, allow_private=False)

    assert (refused.value.code, refused.value.reason, refused.value.field) == (
        ErrorCode.WEBHOOK_ADDRESS_REFUSED, reason, "url")
    assert await _endpoint_count(committed_engine) == before


@pytest.mark.parametrize("url", ["ftp://example.com/", "javascript:alert(1)", "http://user:pw@example.com/",
                                 "/relative", "http://", "http://exa mple.com/"])
async def test_registration_refuses_what_is_not_an_http_url(committed_engine: AsyncEngine, world: World, url: str) -> None:
    before = await _endpoint_count(committed_engine)
    with pytest.raises(errors.WebhookUrlInvalid):
        await register(committed_engine, world.principal, url, allow_private=False)
    assert await _endpoint_count(committed_engine) == before


async def test_registration_refuses_kinds_unknown_or_outside_the_clients_scopes(
    committed_engine: AsyncEngine, world: World
) -> None:
    before = await _endpoint_count(committed_engine)
    for kinds in [("readings.ingested", "nope.kind"), ("payment.succeeded",), ()]:
        with pytest.raises(errors.WebhookEventTypeInvalid):
            await register(committed_engine, world.principal, "http://127.0.0.1/x", kinds)
    assert await _endpoint_count(committed_engine) == before


async def _endpoint_count(engine: AsyncEngine) -> int:
    async with session_factory(engine)() as session:
        return int((await session.execute(text("SELECT count(*) FROM webhook_endpoints"))).scalar_one())


async def test_delivery_checks_the_resolved_address_again_and_fails_a_refused_one_without_sending(
    committed_engine: AsyncEngine, world: World, receiver: Receiver
) -> None:
    # Registered while private addresses were allowed; the delivery runs without.
    issued = await register(committed_engine, world.principal, receiver.url("/ok?refused", host="localhost"))
    async with session_factory(committed_engine)() as session, session.begin():
        delivery_id = (await session.execute(text(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, body, status, created_at)"
            " VALUES (:e, 0, 'readings.ingested', '{}', 'pending', now()) RETURNING id"),
            {"e": issued.endpoint.id})).scalar_one()
    strict = Runtime(settings=SETTINGS, sessions=session_factory(committed_engine), actor=system_actor(frozenset()),
                     services={"settings.webhooks": WebhookSettings(allow_private=False), "defer_job": defer_job})

    result = await service.deliver(strict, {"delivery_id": delivery_id})

    assert result is not None and (result.refused, result.error) == (True, "refused: loopback address")
    rows = await deliveries(committed_engine, issued.endpoint.id)
    assert [(row.status, row.codes) for row in rows] == [("failed", [0])]
    assert receiver.at("/ok?refused") == []
    # With private addresses allowed the same URL is delivered (the guard, not the URL, refused it).
    allowed = await service.post_once(receiver.url("/ok?refused", host="localhost"), body=b"{}", headers={},
                                      settings=WebhookSettings(allow_private=True))
    assert allowed.status_code == 200 and len(receiver.at("/ok?refused")) == 1
    # It connected to the checked address and kept the URL's host in the Host header.
    assert receiver.at("/ok?refused")[0].headers["Host"] == f"localhost:{receiver.port}"


def test_backoff_doubles_up_to_its_cap() -> None:
    settings = WebhookSettings(backoff_base_s=30, backoff_max_s=200)
    assert [service.backoff_delay(settings, n).total_seconds() for n in range(1, 6)] == [30, 60, 120, 200, 200]


async def test_an_endpoint_disabled_after_its_delivery_was_made_sends_nothing_and_fails_it(
    committed_engine: AsyncEngine, world: World, receiver: Receiver
) -> None:
    issued = await register(committed_engine, world.principal, receiver.url("/ok?disabled"))
    async with session_factory(committed_engine)() as session, session.begin():
        delivery_id = (await session.execute(text(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, body, status, created_at)"
            " VALUES (:e, 0, 'readings.ingested', '{}', 'pending', now()) RETURNING id"),
            {"e": issued.endpoint.id})).scalar_one()
        await service.update_endpoint(session, actor=world.principal, endpoint_pk=issued.endpoint.id or 0, url=None,
                                      event_types=None, active=False, allow_private=True)
    runtime = Runtime(settings=SETTINGS, sessions=session_factory(committed_engine), actor=system_actor(frozenset()),
                      services={"settings.webhooks": WebhookSettings(allow_private=True), "defer_job": defer_job})

    result = await service.deliver(runtime, {"delivery_id": delivery_id})

    assert result is not None and result.error == "endpoint or client disabled"
    assert [(row.status, row.codes) for row in await deliveries(committed_engine, issued.endpoint.id)] == [("failed", [0])]
    assert receiver.at("/ok?disabled") == []


WORKORDER_SCOPES = ["workorders:read", "webhooks:read"]



async def _client(engine: AsyncEngine, area: Area) -> Principal:
    """An API client reading work orders over ``area``, as the API sees it."""
    async with session_factory(engine)() as session, session.begin():
        client = ApiClient(client_id=unique("swc_wo_"), name=unique("第三方工单"), secret_hash="x" * 64, scopes=WORKORDER_SCOPES)
        session.add(client)
        await session.flush()
        assert client.id is not None
        session.add(ApiClientArea(api_client_id=client.id, area_id=area.id))
    return Principal(kind=PrincipalKind.client, id=client.id, name=client.name, permissions=frozenset(WORKORDER_SCOPES),
                     scope_paths=(area.path,))


async def _fanned_out(engine: AsyncEngine, event_ids: list[int]) -> bool:
    async with session_factory(engine)() as session:
        handled = (await session.execute(text(
            "SELECT count(*) FROM handled_events WHERE handler = 'webhooks.fanout' AND event_id = ANY(:ids)"),
            {"ids": event_ids})).scalar_one()
    return int(handled) == len(event_ids)


async def test_a_work_order_change_reaches_the_client_over_its_area_signed_and_no_other(
    committed_engine: AsyncEngine, world: World, receiver: Receiver, worker: Any
) -> None:
    east = await _client(committed_engine, world.tree.east)
    west = await _client(committed_engine, world.tree.west)
    inside = await register(committed_engine, east, receiver.url("/ok?workorders-east"), ("workorder.changed",))
    outside = await register(committed_engine, west, receiver.url("/ok?workorders-west"), ("workorder.changed",))

    now = datetime.now(UTC)
    async with session_factory(committed_engine)() as session, session.begin():
        home = await make_household(session, area=world.tree.east_community, name="王芳", phone="13811110000")
        handler = await staff_member(session, permissions=HANDLE, area=world.tree.east)
        order = await workorders.create_work_order(
            session, principal=handler.principal, household_id=home.id or 0, category=WorkOrderCategory.leak,
            description="楼道水管漏水", contact_name=None, contact_phone=None, appointment_at=None, now=now, tz=TZ)
        await workorders.take_work_order(session, principal=handler.principal, order_id=order.id or 0, now=now)
        events = [row[0] for row in await session.execute(text(
            "SELECT id FROM domain_events WHERE kind = 'workorder.changed' AND (payload->>'workorder_id')::bigint = :id"
            " ORDER BY id"), {"id": order.id})]

    await eventually(lambda: len(receiver.at("/ok?workorders-east")) == 2, timeout_s=10)
    await eventually(lambda: _fanned_out(committed_engine, events), timeout_s=10)

    got = sorted(receiver.at("/ok?workorders-east"), key=lambda r: int(r.json["id"]))  # type: ignore[call-overload]
    by = f"staff:{handler.user.id}"
    assert [r.json["data"] for r in got] == [{"workorder_id": order.id, "state": "submitted", "by": by},
                                             {"workorder_id": order.id, "state": "assigned", "by": by}]
    assert [r.json["id"] for r in got] == [str(event) for event in events]
    for r in got:
        assert_signed(r, inside.secret)
        assert (r.headers["X-Shuiwu-Event"], r.json["type"]) == ("workorder.changed", "workorder.changed")
    # The west's client saw the same events fanned out and got nothing: not a row, not a request.
    assert await deliveries(committed_engine, outside.endpoint.id) == []
    assert receiver.at("/ok?workorders-west") == []


async def test_an_unexpected_error_is_a_recorded_failed_attempt(
        committed_engine: AsyncEngine, world: World, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    issued = await register(committed_engine, world.principal, receiver.url("/ok?unexpected"))
    async with session_factory(committed_engine)() as session, session.begin():
        delivery_id = (await session.execute(text(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, body, status, created_at)"
            " VALUES (:e, 0, 'readings.ingested', '{}', 'pending', now()) RETURNING id"),
            {"e": issued.endpoint.id})).scalar_one()
    runtime = Runtime(settings=SETTINGS, sessions=session_factory(committed_engine), actor=system_actor(frozenset()),
                      services={"settings.webhooks": WebhookSettings(allow_private=True), "defer_job": defer_job})

    async def broken(url: str, *, allow_private: bool) -> ssrf.Target:
        raise RuntimeError("resolver broke")

    # Whatever fails inside an attempt is its recorded failure: the job never crashes on it,
    # which would leave the delivery pending with no attempt.
    monkeypatch.setattr(service, "resolve_target", broken)
    result = await service.deliver(runtime, {"delivery_id": delivery_id})

    assert result is not None and result.error == "RuntimeError: resolver broke"
    assert [(row.attempts, row.codes) for row in await deliveries(committed_engine, issued.endpoint.id)] == [(1, [0])]
