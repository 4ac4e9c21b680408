"""GraphQL subscriptions over a real WebSocket (graphql-transport-ws) against a live
uvicorn: alarmOpened for an alarm another process commits, scope, resuming with
afterEventId (items in id order, held back while a lower id is uncommitted; a long replay
paced by the socket and capped), revoked and missing tokens, the per-principal cap, the
gate's limits, operation ids reused after complete and a slow consumer
(docs/subscriptions.md)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from backend.alarms.events import AlarmOpened
from backend.app import create_app
from backend.archives.models import Area, Meter
from backend.clock import utcnow
from backend.db import session_factory
from backend.events.service import emit_event
from backend.graphql.relay import encode_id
from backend.graphql.subscriptions import EventFeed
from backend.graphql.transport_ws import MAX_UNINITIALISED_PER_ADDRESS, SubscriptionServer
from backend.readings.alarms.service import evaluate_rules
from tests.factories import AreaTree, Staff, make_area_tree, make_staff
from tests.graphql.client import api_settings
from tests.live import LiveServer, live_server
from tests.readings.factories import make_meter

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = "graphql-transport-ws"
# The server's outbox per connection: small, so a client that stops reading is cut off soon.
QUEUE_SIZE = 4
RECHECK_S = 0.3
INIT_TIMEOUT_S = 1.0
# How long a client out of scope is watched for an item it must not get.
QUIET_S = 0.4
# The most stored events a resume replays (SHUIWU_SUBSCRIPTIONS_REPLAY_MAX_EVENTS).
REPLAY_MAX = 30

ALARM_OPENED = """
subscription($after: ID) { alarmOpened(afterEventId: $after) { eventId alarmCount alarms { id meterCode areaName status } } }
"""
LARGE = "subscription($after: ID) { alarmOpened(afterEventId: $after) { eventId alarms { id detail } } }"
TOO_COSTLY = "subscription { alarmOpened { " + " ".join(
    f"a{n}: alarms {{ id kind status severity value threshold detail openedAt meterCode subjectName areaName }}"
    for n in range(10)) + " } }"
LOGIN = "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { tokens { accessToken } errors { code } } }"
LOGOUT = "mutation { logout { ok } }"

# Another process opens an alarm through the service layer and commits: a meter reports
# a low battery and the rules are evaluated for it.
OPEN_ALARM_ELSEWHERE = """
import asyncio, sys
from datetime import UTC, datetime, timedelta
from sqlalchemy import text
from backend.clock import utcnow
from backend.db import create_engine, session_factory
from backend.readings.alarms.service import evaluate_rules

async def main(url: str, meter_id: int) -> None:
    engine = create_engine(url, pool_size=1, max_overflow=0)
    now = utcnow()
    async with session_factory(engine)() as session, session.begin():
        await session.execute(text(
            "INSERT INTO latest_readings (meter_id, read_at, total_m3, battery, quality, source, received_at)"
            " VALUES (:id, :at, 1, 3.0, 'actual', 'test', :at)"), {"id": meter_id, "at": now - timedelta(hours=1)})
        await evaluate_rules(session, now=now, tz="Asia/Shanghai", meter_ids=[meter_id])
    await engine.dispose()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


@dataclass
class World:
    tree: AreaTree
    east: Staff
    west: Staff
    no_alarms: Staff
    capped: Staff
    demoted: Staff  # loses alarms:read while subscribed
    # Meters with a standing low-battery alarm in 城东: the slow consumer's items.
    east_alarm_ids: list[int]


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    async with session_factory(committed_engine)() as session, session.begin():
        tree = await make_area_tree(session)
        east = await make_staff(session, permissions={"alarms:read"}, areas=[tree.east])
        west = await make_staff(session, permissions={"alarms:read"}, areas=[tree.west])
        no_alarms = await make_staff(session, permissions={"areas:read"}, areas=[tree.company])
        capped = await make_staff(session, permissions={"alarms:read"}, areas=[tree.company])
        demoted = await make_staff(session, permissions={"alarms:read"}, areas=[tree.company])
    ids = await open_alarms(committed_engine, tree.east_community, count=10)
    async with session_factory(committed_engine)() as session, session.begin():
        # Long details make the slow consumer's items large (~600 KB each).
        await session.execute(text("UPDATE alarms SET detail = repeat('电池电压偏低 ', 3000) WHERE id = ANY(:ids)"),
                              {"ids": ids})
    return World(tree, east, west, no_alarms, capped, demoted, ids)


@pytest.fixture(scope="module")
def live(database_url: str) -> Iterator[LiveServer]:
    with live_server(database_url, subscriptions_queue_size=QUEUE_SIZE, subscriptions_auth_recheck_s=RECHECK_S,
                     subscriptions_init_timeout_s=INIT_TIMEOUT_S,
                     subscriptions_replay_max_events=REPLAY_MAX) as server:
        yield server


async def new_meters(engine: AsyncEngine, area: Area, count: int) -> list[Meter]:
    async with session_factory(engine)() as session, session.begin():
        return [await make_meter(session, area_id=area.id) for _ in range(count)]


async def open_alarms(engine: AsyncEngine, area: Area, *, count: int = 1) -> list[int]:
    """Low-battery alarms on ``count`` new meters of ``area``, opened by one evaluation
    (one alarm.opened event) and committed; their ids."""
    meters = await new_meters(engine, area, count)
    ids = [m.id for m in meters if m.id is not None]
    now = utcnow()
    async with session_factory(engine)() as session, session.begin():
        await session.execute(text(
            "INSERT INTO latest_readings (meter_id, read_at, total_m3, battery, quality, source, received_at)"
            " SELECT id, :at, 1, 3.0, 'actual', 'test', :at FROM unnest(CAST(:ids AS bigint[])) AS m(id)"),
            {"ids": ids, "at": now - timedelta(hours=1)})
        await evaluate_rules(session, now=now, tz="Asia/Shanghai", meter_ids=ids)
        opened = (await session.execute(
            text("SELECT array_agg(id ORDER BY id) FROM alarms WHERE subject_kind = 'meter' AND subject_id = ANY(:ids)"),
            {"ids": ids})).scalar_one()
    return list(opened)


async def last_event_id(engine: AsyncEngine) -> str:
    async with session_factory(engine)() as session:
        return str((await session.execute(text("SELECT coalesce(max(id), 0) FROM domain_events"))).scalar_one())


async def emit_opened(engine: AsyncEngine, alarm_ids: list[int], *, count: int) -> int:
    """``count`` alarm.opened events for ``alarm_ids``, committed together; the last id."""
    async with session_factory(engine)() as session, session.begin():
        return max([await emit_event(session, "alarm.opened", AlarmOpened(tuple(alarm_ids))) for _ in range(count)])


async def read_by_server(live: LiveServer, event_id: int) -> None:
    """Wait until the server's listener has read ``event_id``: a subscription opened
    then replays it from the table instead of receiving it live."""
    subscriptions = live.app.state.subscriptions
    await until(lambda: (subscriptions.feed.listener.last_id or 0) >= event_id)


# Logins of this module's staff (usernames are unique per run): a password check costs
# ~0.1 s, and one login session per user serves every test but the one that ends it.
_TOKENS: dict[str, str] = {}


async def login(live: LiveServer, staff: Staff, *, fresh: bool = False) -> str:
    if not fresh and staff.username in _TOKENS:
        return _TOKENS[staff.username]
    async with httpx.AsyncClient(base_url=live.url) as http:
        response = await http.post("/graphql", json={"query": LOGIN, "variables": {"u": staff.username, "p": staff.password}})
    token: str = response.json()["data"]["login"]["tokens"]["accessToken"]
    if not fresh:
        _TOKENS[staff.username] = token
    return token


def ws_url(live: LiveServer) -> str:
    return f"ws://{live.host}:{live.port}/graphql"


async def receive(ws: ClientConnection, within_s: float = 5.0) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), within_s))
    return message


async def initialised(ws: ClientConnection, token: str | None) -> dict[str, Any]:
    payload = {"authorization": f"Bearer {token}"} if token is not None else {}
    await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
    return await receive(ws)


async def subscribe(ws: ClientConnection, query: str, variables: dict[str, Any] | None = None, operation_id: str = "1") -> None:
    await ws.send(json.dumps({"id": operation_id, "type": "subscribe", "payload": {"query": query, "variables": variables or {}}}))


@asynccontextmanager
async def subscriber(live: LiveServer, token: str, *, after: str | None, query: str = ALARM_OPENED,
                     **options: Any) -> AsyncIterator[ClientConnection]:
    """A connection subscribed to alarmOpened after event ``after``."""
    async with connect(ws_url(live), subprotocols=[PROTOCOL], **options) as ws:  # type: ignore[list-item]
        ack = await initialised(ws, token)
        assert ack["type"] == "connection_ack", ack
        await subscribe(ws, query, {"after": after})
        yield ws


async def next_item(ws: ClientConnection, within_s: float = 5.0) -> dict[str, Any]:
    message = await receive(ws, within_s)
    assert message["type"] == "next" and message["id"] == "1", message
    assert "errors" not in message["payload"], message
    item: dict[str, Any] = message["payload"]["data"]["alarmOpened"]
    return item


async def next_items(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    return [await next_item(ws) for _ in range(count)]


async def until(condition: Callable[[], bool]) -> None:
    """Wait (10 s at most) for ``condition`` on the server's state, which lives in the
    server's thread: nothing there can set an event of this loop."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def assert_quiet(ws: ClientConnection) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), QUIET_S)


async def closed_with(ws: ClientConnection, within_s: float = 5.0) -> tuple[int | None, str | None]:
    """Read until the server closes (within ``within_s``); its close code and reason."""
    try:
        async with asyncio.timeout(within_s):
            while True:
                await ws.recv()
    except ConnectionClosed as closed:
        return (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else (None, None)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- delivery


async def test_a_subscriber_receives_an_alarm_committed_by_another_process(
    live: LiveServer, world: World, committed_engine: AsyncEngine, database_url: str
) -> None:
    (meter,) = await new_meters(committed_engine, world.tree.east_community, 1)
    token = await login(live, world.east)
    async with subscriber(live, token, after=await last_event_id(committed_engine)) as ws:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", OPEN_ALARM_ELSEWHERE, database_url, str(meter.id),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert await asyncio.wait_for(process.wait(), 20) == 0

        item = await next_item(ws, within_s=10)

    assert item["alarmCount"] == 1
    assert [(a["meterCode"], a["areaName"], a["status"]) for a in item["alarms"]] == [(meter.code, "翠湖小区", "open")]
    assert int(item["eventId"]) > 0


async def test_a_subscriber_out_of_scope_receives_nothing(live: LiveServer, world: World, committed_engine: AsyncEngine) -> None:
    after = await last_event_id(committed_engine)
    east_token, west_token = await login(live, world.east), await login(live, world.west)
    async with subscriber(live, east_token, after=after) as east, subscriber(live, west_token, after=after) as west:
        east_ids = await open_alarms(committed_engine, world.tree.east_community)
        east_item = await next_item(east)
        await assert_quiet(west)
        west_ids = await open_alarms(committed_engine, world.tree.west_community)
        west_item = await next_item(west)

    assert [a["id"] for a in east_item["alarms"]] == [_alarm_gid(east_ids[0])]
    assert [a["id"] for a in west_item["alarms"]] == [_alarm_gid(west_ids[0])]


async def test_a_client_that_reconnects_with_its_last_event_id_misses_nothing(
    live: LiveServer, world: World, committed_engine: AsyncEngine
) -> None:
    token = await login(live, world.east)
    async with subscriber(live, token, after=await last_event_id(committed_engine)) as ws:
        first = await open_alarms(committed_engine, world.tree.east_community)
        last_seen = await next_item(ws)
    # Disconnected: two evaluations open alarms meanwhile.
    missed = [await open_alarms(committed_engine, world.tree.east_community) for _ in range(2)]

    async with subscriber(live, token, after=last_seen["eventId"]) as ws:
        replayed = [await next_item(ws), await next_item(ws)]
        live_ids = await open_alarms(committed_engine, world.tree.east_community)
        live_item = await next_item(ws)
        await assert_quiet(ws)

    assert [a["id"] for a in last_seen["alarms"]] == [_alarm_gid(first[0])]
    received = [*replayed, live_item]
    assert [item["alarms"][0]["id"] for item in received] == [_alarm_gid(ids[0]) for ids in [*missed, live_ids]]
    event_ids = [int(item["eventId"]) for item in received]
    assert event_ids == sorted(set(event_ids)) and event_ids[0] > int(last_seen["eventId"])


async def test_an_item_waits_while_a_lower_id_is_uncommitted_so_its_event_id_is_a_safe_cursor(
    live: LiveServer, world: World, committed_engine: AsyncEngine
) -> None:
    token = await login(live, world.east)
    after = await last_event_id(committed_engine)
    first_alarm, second_alarm = world.east_alarm_ids[:2]
    async with session_factory(committed_engine)() as slow:
        # Transaction A takes the lower id and commits after B, which takes the higher one.
        lower = await emit_event(slow, "alarm.opened", AlarmOpened((first_alarm,)))
        async with session_factory(committed_engine)() as quick, quick.begin():
            higher = await emit_event(quick, "alarm.opened", AlarmOpened((second_alarm,)))
        await read_by_server(live, higher)
        async with subscriber(live, token, after=after) as ws:
            # B's item is held: had the client got it, it would reconnect past A.
            await assert_quiet(ws)
            await slow.commit()
            received = await next_items(ws, 2)
    # Reconnecting with the greatest eventId received repeats nothing and misses nothing.
    async with subscriber(live, token, after=received[-1]["eventId"]) as ws:
        await assert_quiet(ws)
        following = await emit_opened(committed_engine, [first_alarm], count=1)
        resumed = await next_item(ws)

    assert [int(item["eventId"]) for item in received] == [lower, higher]
    assert [item["alarms"][0]["id"] for item in received] == [_alarm_gid(first_alarm), _alarm_gid(second_alarm)]
    assert int(resumed["eventId"]) == following


async def test_a_resume_with_more_items_than_the_outbox_holds_is_paced_by_the_client(
    live: LiveServer, world: World, committed_engine: AsyncEngine
) -> None:
    after = await last_event_id(committed_engine)
    # Large items (~600 KB) for a client that reads nothing for a while: the server's
    # socket buffer and its outbox of QUEUE_SIZE fill long before the replay ends.
    count = 16
    await read_by_server(live, await emit_opened(committed_engine, world.east_alarm_ids, count=count))
    late_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    late_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    late_socket.connect((live.host, live.port))
    late_socket.setblocking(False)
    async with subscriber(live, await login(live, world.east), after=after, query=LARGE, sock=late_socket,
                          max_queue=1, compression=None) as ws:
        await asyncio.sleep(1.0)
        received = [await next_item(ws, within_s=10) for _ in range(count)]
        await assert_quiet(ws)

    event_ids = [int(item["eventId"]) for item in received]
    assert event_ids == sorted(set(event_ids)) and event_ids[0] > int(after)


async def test_a_resume_past_the_replay_cap_is_told_to_reload(
    live: LiveServer, world: World, committed_engine: AsyncEngine
) -> None:
    after = await last_event_id(committed_engine)
    await read_by_server(live, await emit_opened(committed_engine, world.east_alarm_ids[:1], count=REPLAY_MAX + 1))
    async with subscriber(live, await login(live, world.east), after=after) as ws:
        refused = await receive(ws)
        # The connection stays: a live subscription works on it.
        await subscribe(ws, ALARM_OPENED, operation_id="live")
        await ws.send(json.dumps({"type": "ping"}))
        pong = await receive(ws)

    assert (refused["type"], refused["id"], [e["extensions"]["code"] for e in refused["payload"]]) == (
        "error", "1", ["REPLAY_TOO_LONG"])
    assert pong == {"type": "pong"}


async def test_events_other_subscribers_cannot_see_are_skipped_in_a_replay(
    live: LiveServer, world: World, committed_engine: AsyncEngine
) -> None:
    after = await last_event_id(committed_engine)
    west_ids = await open_alarms(committed_engine, world.tree.west_community)
    east_ids = await open_alarms(committed_engine, world.tree.east_community)

    async with subscriber(live, await login(live, world.east), after=after) as ws:
        item = await next_item(ws)
        await assert_quiet(ws)

    assert [a["id"] for a in item["alarms"]] == [_alarm_gid(east_ids[0])]
    assert _alarm_gid(west_ids[0]) not in str(item)


# --------------------------------------------------------------------------- authentication


async def test_a_revoked_token_is_disconnected(live: LiveServer, world: World, committed_engine: AsyncEngine) -> None:
    token = await login(live, world.east, fresh=True)
    async with subscriber(live, token, after=await last_event_id(committed_engine)) as ws:
        async with httpx.AsyncClient(base_url=live.url) as http:
            response = await http.post("/graphql", json={"query": LOGOUT}, headers={"Authorization": f"Bearer {token}"})
        assert response.json()["data"]["logout"]["ok"] is True

        code, reason = await closed_with(ws, within_s=RECHECK_S * 2 + 2)

    assert (code, reason) == (4401, "Unauthorized: TOKEN_REVOKED")


class QueueSocket:
    """An in-memory socket: the protocol without a network, for a server on the test's loop."""

    def __init__(self, *messages: dict[str, Any]) -> None:
        self.incoming: asyncio.Queue[str | None] = asyncio.Queue()
        for message in messages:
            self.incoming.put_nowait(json.dumps(message))
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    async def receive(self) -> str | bytes | None:
        return await self.incoming.get()

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.incoming.put_nowait(None)


async def test_a_connection_ends_when_its_token_expires(live: LiveServer, world: World, database_url: str) -> None:
    token = await login(live, world.east)
    app = create_app(api_settings(), database_url)
    endpoint = app.state.graphql
    # The server's clock reads 0.3 s before the token's expiry.
    expires = datetime.fromtimestamp(json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["exp"], UTC)
    server = SubscriptionServer(endpoint, EventFeed(database_url), clock=lambda: expires - timedelta(seconds=0.3))
    socket = QueueSocket({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
    try:
        await asyncio.wait_for(server.serve(socket, ip="127.0.0.1", user_agent=None), 5)
    finally:
        await app.state.engine.dispose()
        await app.state.read_engine.dispose()

    assert [message["type"] for message in socket.sent] == ["connection_ack"]
    assert socket.closed == (4401, "Unauthorized: TOKEN_EXPIRED")
    assert server.open_connections == {}


async def test_an_operation_id_completed_and_reused_at_once_stays_tracked(
    live: LiveServer, world: World, database_url: str
) -> None:
    token = await login(live, world.east)
    # One operation per connection: the cap shows whether the server still tracks it.
    app = create_app(api_settings(subscriptions_operations_per_connection=1), database_url)
    # A feed never started: an operation waits for it, running, until the connection ends.
    server = SubscriptionServer(app.state.graphql, EventFeed(database_url))
    socket = QueueSocket({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}},
                         {"id": "1", "type": "subscribe", "payload": {"query": ALARM_OPENED}})
    serving = asyncio.create_task(server.serve(socket, ip="127.0.0.1", user_agent=None))
    try:
        await until(lambda: bool(socket.sent))
        await asyncio.sleep(0.1)  # operation 1 runs
        # The protocol frees an id at complete: the client reuses it at once.
        socket.incoming.put_nowait(json.dumps({"id": "1", "type": "complete"}))
        socket.incoming.put_nowait(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": ALARM_OPENED}}))
        await asyncio.sleep(0.1)  # the first operation 1 has finished
        socket.incoming.put_nowait(json.dumps({"id": "2", "type": "subscribe", "payload": {"query": ALARM_OPENED}}))
        async with asyncio.timeout(3):
            await until(lambda: len(socket.sent) >= 2)
    finally:
        socket.incoming.put_nowait(None)  # the client goes
        await asyncio.wait_for(serving, 5)
        await app.state.engine.dispose()
        await app.state.read_engine.dispose()

    refused = socket.sent[1]
    assert (refused["type"], refused["id"], [e["extensions"]["code"] for e in refused["payload"]]) == (
        "error", "2", ["RATE_LIMITED"])
    assert server.open_connections == {}


async def test_a_permission_taken_away_ends_the_subscription_at_the_next_event(
    live: LiveServer, world: World, committed_engine: AsyncEngine
) -> None:
    async with subscriber(live, await login(live, world.demoted), after=await last_event_id(committed_engine)) as ws:
        await open_alarms(committed_engine, world.tree.east_community)
        before = await next_item(ws)
        async with session_factory(committed_engine)() as session, session.begin():
            await session.execute(text("DELETE FROM role_permissions WHERE role_id IN "
                                       "(SELECT role_id FROM staff_user_roles WHERE user_id = :id)"), {"id": world.demoted.user.id})
        await asyncio.sleep(RECHECK_S)
        await open_alarms(committed_engine, world.tree.east_community)
        ended = await receive(ws)

    assert before["alarmCount"] == 1
    assert (ended["type"], ended["id"], [e["extensions"]["code"] for e in ended["payload"]]) == ("error", "1", ["FORBIDDEN"])


@pytest.mark.parametrize("payload", [None, {}, {"authorization": "Bearer not-a-token"}, {"authorization": "Basic eDp5"}])
async def test_a_connection_without_a_valid_token_is_closed_unauthorized(live: LiveServer, payload: Any) -> None:
    async with connect(ws_url(live), subprotocols=[PROTOCOL]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", **({"payload": payload} if payload is not None else {})}))
        code, _ = await closed_with(ws)

    assert code == 4401


async def test_a_subscribe_before_the_acknowledgement_and_a_missing_subprotocol_are_refused(live: LiveServer) -> None:
    async with connect(ws_url(live), subprotocols=[PROTOCOL]) as ws:  # type: ignore[list-item]
        await subscribe(ws, ALARM_OPENED)
        assert await closed_with(ws) == (4401, "Unauthorized")
    async with connect(ws_url(live)) as ws:
        assert await closed_with(ws) == (4406, "Subprotocol not acceptable")


INIT = "init"  # stands for this connection's connection_init with a valid token


@pytest.mark.parametrize(("messages", "closed"), [
    (["not json"], (4400, "Invalid message received")),
    ([{"type": "subscribe"}], (4401, "Unauthorized")),
    ([INIT, {"type": "launch"}], (4400, "Invalid message type 'launch'")),
    ([INIT, {"type": "subscribe", "id": "1"}], (4400, "Invalid message received")),
    ([INIT, {"type": "connection_init"}], (4429, "Too many initialisation requests")),
    ([INIT, {"id": "1", "type": "subscribe", "payload": {"query": ALARM_OPENED}},
      {"id": "1", "type": "subscribe", "payload": {"query": ALARM_OPENED}}], (4409, "Subscriber for 1 already exists")),
    (["x" * (1024 * 1024 + 1)], (1009, "Message too big")),
    ([], (4408, "Connection initialisation timeout")),
], ids=["bad-json", "subscribe-first", "unknown-type", "no-payload", "second-init", "same-id", "too-big", "silent"])
async def test_protocol_violations_close_the_connection_with_their_code(
    live: LiveServer, world: World, messages: list[Any], closed: tuple[int, str]
) -> None:
    token = await login(live, world.west)
    async with connect(ws_url(live), subprotocols=[PROTOCOL], max_size=None) as ws:  # type: ignore[list-item]
        for message in messages:
            if message == INIT:
                assert (await initialised(ws, token))["type"] == "connection_ack"
            else:
                await ws.send(message if isinstance(message, str) else json.dumps(message))

        assert await closed_with(ws) == closed


async def test_connections_past_the_per_principal_cap_are_refused(live: LiveServer, world: World) -> None:
    token = await login(live, world.capped)
    await until(lambda: ("staff", world.capped.user.id) not in live.app.state.subscriptions.open_connections)
    async with connect(ws_url(live), subprotocols=[PROTOCOL]) as ws:  # type: ignore[list-item]
        sockets = [await connect(ws_url(live), subprotocols=[PROTOCOL]) for _ in range(4)]  # type: ignore[list-item]
        try:
            acks = [await initialised(s, token) for s in [ws, *sockets]]
            async with connect(ws_url(live), subprotocols=[PROTOCOL]) as sixth:  # type: ignore[list-item]
                await sixth.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
                refused = await closed_with(sixth)
        finally:
            for s in sockets:
                await s.close()
        # A closed connection frees its place.
        await until(lambda: live.app.state.subscriptions.open_connections[("staff", world.capped.user.id)] < 5)
        async with connect(ws_url(live), subprotocols=[PROTOCOL]) as again:  # type: ignore[list-item]
            readmitted = await initialised(again, token)

    assert [ack["type"] for ack in acks] == ["connection_ack"] * 5
    assert refused == (4429, "Too many connections")
    assert readmitted["type"] == "connection_ack"


async def test_an_address_may_hold_only_a_few_sockets_before_their_connection_init(live: LiveServer, world: World) -> None:
    token = await login(live, world.east)
    waiting = [await connect(ws_url(live), subprotocols=[PROTOCOL]) for _ in range(MAX_UNINITIALISED_PER_ADDRESS)]  # type: ignore[list-item]
    try:
        await until(lambda: live.app.state.subscriptions.uninitialised["127.0.0.1"] == MAX_UNINITIALISED_PER_ADDRESS)
        async with connect(ws_url(live), subprotocols=[PROTOCOL]) as one_more:  # type: ignore[list-item]
            refused = await closed_with(one_more)
        # An initialised socket no longer counts: the address may open another.
        first_ack = await initialised(waiting[0], token)
        async with connect(ws_url(live), subprotocols=[PROTOCOL]) as next_one:  # type: ignore[list-item]
            admitted = await initialised(next_one, token)
    finally:
        for ws in waiting:
            await ws.close()
    await until(lambda: "127.0.0.1" not in live.app.state.subscriptions.uninitialised)

    assert refused == (4429, "Too many connections")
    assert (first_ack["type"], admitted["type"]) == ("connection_ack", "connection_ack")


# --------------------------------------------------------------------------- the gate


async def test_operations_the_gate_refuses_are_errors_of_their_own(live: LiveServer, world: World) -> None:
    refusals: dict[str, dict[str, Any]] = {}
    east, no_alarms = await login(live, world.east), await login(live, world.no_alarms)
    async with connect(ws_url(live), subprotocols=[PROTOCOL]) as ws:  # type: ignore[list-item]
        assert (await initialised(ws, east))["type"] == "connection_ack"
        await subscribe(ws, "query { viewer { __typename } }", operation_id="query")
        await subscribe(ws, TOO_COSTLY, operation_id="costly")
        await subscribe(ws, ALARM_OPENED, {"after": "12ab"}, operation_id="bad-id")
        await subscribe(ws, "subscription { alarmOpened { nope } }", operation_id="invalid")
        for _ in range(4):
            message = await receive(ws)
            refusals[message["id"]] = message
        await ws.send(json.dumps({"type": "ping"}))
        pong = await receive(ws)
    async with connect(ws_url(live), subprotocols=[PROTOCOL]) as ws:  # type: ignore[list-item]
        assert (await initialised(ws, no_alarms))["type"] == "connection_ack"
        await subscribe(ws, ALARM_OPENED, operation_id="forbidden")
        refusals["forbidden"] = await receive(ws)

    assert {key: (m["type"], [e["extensions"]["code"] for e in m["payload"]]) for key, m in refusals.items()} == {
        "query": ("error", ["BAD_USER_INPUT"]),
        "costly": ("error", ["QUERY_TOO_COMPLEX"]),
        "bad-id": ("error", ["BAD_USER_INPUT"]),
        "invalid": ("error", ["BAD_USER_INPUT"]),
        "forbidden": ("error", ["FORBIDDEN"]),
    }
    assert pong == {"type": "pong"}


async def test_a_subscription_sent_by_post_is_refused(live: LiveServer, world: World) -> None:
    token = await login(live, world.east)
    async with httpx.AsyncClient(base_url=live.url) as http:
        response = await http.post("/graphql", json={"query": ALARM_OPENED}, headers={"Authorization": f"Bearer {token}"})

    body = response.json()
    assert (response.status_code, body["data"], [e["extensions"]["code"] for e in body["errors"]]) == (
        200, None, ["BAD_USER_INPUT"])


async def test_a_slow_consumer_is_cut_off_and_the_others_receive_everything(
    live: LiveServer, world: World, committed_engine: AsyncEngine
) -> None:
    after = await last_event_id(committed_engine)
    # The slow client reads nothing: a small receive buffer, no read-ahead and no
    # compression (the repeated details would shrink to nothing). The server's send
    # buffer grows to 4 MB here: twenty items of ~600 KB overflow it, and then the
    # server's outbox of QUEUE_SIZE messages.
    rounds = 20
    slow_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow_socket.connect((live.host, live.port))
    slow_socket.setblocking(False)
    east = await login(live, world.east)
    async with (subscriber(live, east, after=after, query=LARGE, sock=slow_socket, max_queue=1,
                           compression=None) as slow,
                subscriber(live, await login(live, world.capped), after=after) as steady):
        for _ in range(rounds):
            async with session_factory(committed_engine)() as session, session.begin():
                await emit_event(session, "alarm.opened", AlarmOpened(tuple(world.east_alarm_ids)))
        received = await next_items(steady, rounds)
        # The server lets go of the slow connection while its client still reads nothing.
        await until(lambda: ("staff", world.east.user.id) not in live.app.state.subscriptions.open_connections)
        closed = await closed_with(slow)

    assert closed == (4008, "Slow consumer")
    assert [item["alarmCount"] for item in received] == [len(world.east_alarm_ids)] * rounds


def _alarm_gid(alarm_id: int) -> str:
    return encode_id("Alarm", alarm_id)
