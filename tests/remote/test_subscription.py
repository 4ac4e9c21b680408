"""remoteCommandChanged over a live server: staff follow the progress of commands in
their scope (queued, sent, succeeded) and never see another district's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.client import connect

from backend.auth.models import PrincipalKind
from backend.auth.service.policy import AuthPolicy
from backend.auth.service.sessions import _open_session
from backend.auth.system import system_actor
from backend.clock import utcnow
from backend.db import session_factory
from backend.graphql.relay import encode_id
from backend.remote import service
from backend.remote.models import CommandKind
from tests.graphql.client import api_settings
from tests.graphql.test_subscriptions import PROTOCOL, assert_quiet, initialised, last_event_id, receive, ws_url
from tests.live import LiveServer, live_server
from tests.remote.support import REMOTE, World, make_world
from tests.workorders.support import staff_member

CHANGED = """subscription($after: ID) { remoteCommandChanged(afterEventId: $after) {
  eventId state finished count commands { id meterCode state } } }"""
SYSTEM = system_actor({"remote:read"})


@dataclass
class Setup:
    world: World
    token: str  # remote permissions over the east


@pytest.fixture(scope="module")
def live(database_url: str) -> Iterator[LiveServer]:
    with live_server(database_url) as server:
        yield server


@pytest.fixture(scope="module")
async def setup(committed_engine: AsyncEngine) -> Setup:
    async with session_factory(committed_engine)() as session, session.begin():
        world = await make_world(session)
        staff = await staff_member(session, permissions=REMOTE, area=world.tree.east)
        # A session opened directly: no argon2 login for a subscriber.
        pair = await _open_session(session, kind=PrincipalKind.staff, principal_id=staff.principal.id, now=utcnow(),
                                   policy=AuthPolicy.from_settings(api_settings()), with_refresh=False, ip=None,
                                   user_agent=None)
    return Setup(world, pair.access_token)


async def _item(ws: Any) -> dict[str, Any]:
    message = await receive(ws)
    assert message["type"] == "next" and "errors" not in message["payload"], message
    found: dict[str, Any] = message["payload"]["data"]["remoteCommandChanged"]
    return found


async def test_staff_follow_their_commands_from_queued_to_succeeded_and_not_another_districts(
        live: LiveServer, setup: Setup, committed_engine: AsyncEngine) -> None:
    world, sessions, now = setup.world, session_factory(committed_engine), utcnow()
    after = await last_event_id(committed_engine)
    async with connect(ws_url(live), subprotocols=[PROTOCOL]) as ws:  # type: ignore[list-item]
        assert (await initialised(ws, setup.token))["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": CHANGED,
                                                                             "variables": {"after": after}}}))
        async with sessions() as session, session.begin():
            await service.queue_command(session, target=world.west_valve_meter.id or 0, kind=CommandKind.read_now,
                                        params={}, issued_by=SYSTEM, now=now)
            east = await service.queue_command(session, target=world.east_valve_meters[0].id or 0,
                                               kind=CommandKind.read_now, params={}, issued_by=SYSTEM, now=now)
        queued = await _item(ws)
        async with sessions() as session, session.begin():
            await service.take_leases(session, holder="w", links=[world.east_link], ttl=timedelta(minutes=1), now=now)
            await service.claim_commands(session, holder="w", link_ids=[world.east_link], limit=10, now=now)
        async with sessions() as session, session.begin():
            await service.finish_command(session, command_id=east.id or 0, holder="w", succeeded=True,
                                         reply={"total_m3": "12.50"}, now=now)
        sent, done = await _item(ws), await _item(ws)
        await assert_quiet(ws)

    command_id = encode_id("RemoteCommand", east.id or 0)
    assert [(i["state"], i["finished"], i["count"], [c["id"] for c in i["commands"]]) for i in (queued, sent, done)] == [
        ("queued", False, 1, [command_id]), ("sent", False, 1, [command_id]), ("succeeded", True, 1, [command_id])]
