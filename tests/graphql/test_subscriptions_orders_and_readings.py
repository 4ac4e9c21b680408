"""Issue 19's subscriptions over a live server (docs/subscriptions.md): a resident
follows the result of their own payment orders (``paymentOrderChanged``) and never sees
another resident's; staff follow the latest readings of chosen meters in their scope
(``meterReadings``), at most one update per meter per second, the newest winning."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.client import ClientConnection, connect

from backend.auth.models import PrincipalKind, Resident, ResidentHousehold
from backend.auth.service.policy import AuthPolicy
from backend.auth.service.sessions import _open_session
from backend.clock import utcnow
from backend.db import session_factory
from backend.events.service import emit_event
from backend.graphql.relay import encode_id
from backend.graphql.subscriptions import at_most_one_per_key
from backend.payments.events import PaymentOrderChanged
from backend.payments.models import PaymentChannel
from backend.payments.online.models import GatewayApi
from backend.readings.events import ReadingsIngested
from tests.billing.factories import served_household, tariff
from tests.factories import AreaTree, make_area_tree, make_staff, unique
from tests.graphql.client import api_settings
from tests.graphql.test_subscriptions import PROTOCOL, assert_quiet, initialised, last_event_id, receive, ws_url
from tests.live import LiveServer, live_server
from tests.payments.online.refund_helpers import _order
from tests.readings.factories import make_meter

ORDER_CHANGED = """
subscription($order: ID, $after: ID) { paymentOrderChanged(orderId: $order, afterEventId: $after) {
  eventId order { id state } } }
"""
METER_READINGS = """
subscription($meters: [ID!]!, $after: ID) { meterReadings(meterIds: $meters, afterEventId: $after) {
  eventId readings { meterId meterCode readAt value quality } } }
"""


@dataclass
class World:
    tree: AreaTree
    tokens: dict[str, str]  # "a", "b" (residents), "staff" (readings:read in 城东)
    orders: dict[str, int]  # "a", "a2" (resident a's), "b"
    east_meters: list[int]
    west_meter: int


@pytest.fixture(scope="module")
def live(database_url: str) -> Iterator[LiveServer]:
    with live_server(database_url) as server:
        yield server


async def _token(session: Any, kind: PrincipalKind, principal_id: int) -> str:
    pair = await _open_session(session, kind=kind, principal_id=principal_id, now=utcnow(),
                               policy=AuthPolicy.from_settings(api_settings()), with_refresh=False, ip=None,
                               user_agent=None)
    return pair.access_token


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    now = utcnow()
    async with session_factory(committed_engine)() as session, session.begin():
        tree = await make_area_tree(session)
        raw = tariff()
        served = {name: await served_household(session, raw_tariff=raw, opened_at=now - timedelta(days=30),
                                               area=tree.east_community) for name in ("a", "b")}
        tokens, orders = {}, {}
        for name, household in served.items():
            resident = Resident(phone=unique("139")[:11])
            session.add(resident)
            await session.flush()
            assert resident.id is not None and household.household.id is not None
            session.add(ResidentHousehold(resident_id=resident.id, household_id=household.household.id))
            await session.flush()
            tokens[name] = await _token(session, PrincipalKind.resident, resident.id)
            order = await _order(session, account_id=household.account_id, household_id=household.household.id,
                                 channel=PaymentChannel.alipay, fen=5000, at=now, merchant="demo", api=GatewayApi.alipay)
            assert order.id is not None
            orders[name] = order.id
        assert served["a"].household.id is not None
        second = await _order(session, account_id=served["a"].account_id, household_id=served["a"].household.id,
                              channel=PaymentChannel.alipay, fen=100, at=now, merchant="demo", api=GatewayApi.alipay)
        assert second.id is not None
        orders["a2"] = second.id
        staff = await make_staff(session, permissions={"readings:read"}, areas=[tree.east])
        assert staff.user.id is not None
        tokens["staff"] = await _token(session, PrincipalKind.staff, staff.user.id)
        east = [await make_meter(session, area_id=tree.east_community.id) for _ in range(2)]
        west = await make_meter(session, area_id=tree.west_community.id)
    return World(tree, tokens, orders, [m.id for m in east if m.id is not None], west.id or 0)


@asynccontextmanager
async def following(live: LiveServer, token: str, query: str, variables: dict[str, Any]) -> AsyncIterator[ClientConnection]:
    async with connect(ws_url(live), subprotocols=[PROTOCOL]) as ws:  # type: ignore[list-item]
        ack = await initialised(ws, token)
        assert ack["type"] == "connection_ack", ack
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}}))
        yield ws


async def item(ws: ClientConnection, field: str, within_s: float = 5.0) -> dict[str, Any]:
    message = await receive(ws, within_s)
    assert message["type"] == "next" and "errors" not in message["payload"], message
    found: dict[str, Any] = message["payload"]["data"][field]
    return found


async def order_changed(engine: AsyncEngine, order_id: int, state: str) -> int:
    async with session_factory(engine)() as session, session.begin():
        return await emit_event(session, "payment_order.changed", PaymentOrderChanged(order_id=order_id, state=state))


async def test_a_resident_follows_their_own_orders_and_never_sees_another_residents(
    live: LiveServer, world: World, committed_engine: AsyncEngine
) -> None:
    after = await last_event_id(committed_engine)
    async with (following(live, world.tokens["a"], ORDER_CHANGED, {"after": after}) as a,
                following(live, world.tokens["b"], ORDER_CHANGED, {"after": after}) as b,
                following(live, world.tokens["a"], ORDER_CHANGED,
                          {"after": after, "order": encode_id("PaymentOrder", world.orders["a2"])}) as only_a2):
        others = await order_changed(committed_engine, world.orders["b"], "paid")
        mine = await order_changed(committed_engine, world.orders["a"], "paid")
        a_item, b_item = await item(a, "paymentOrderChanged"), await item(b, "paymentOrderChanged")
        await assert_quiet(a)
        await assert_quiet(only_a2)
        second = await order_changed(committed_engine, world.orders["a2"], "closed")
        a2_item = await item(only_a2, "paymentOrderChanged")

    assert (a_item["eventId"], a_item["order"]["id"]) == (str(mine), encode_id("PaymentOrder", world.orders["a"]))
    assert (b_item["eventId"], b_item["order"]["id"]) == (str(others), encode_id("PaymentOrder", world.orders["b"]))
    assert (a2_item["eventId"], a2_item["order"]["id"]) == (str(second), encode_id("PaymentOrder", world.orders["a2"]))


async def test_staff_cannot_follow_residents_orders_nor_a_resident_meter_readings(live: LiveServer, world: World) -> None:
    codes = []
    for token, query, variables in [(world.tokens["staff"], ORDER_CHANGED, {}),
                                    (world.tokens["a"], METER_READINGS, {"meters": [encode_id("Meter", 1)]})]:
        async with following(live, token, query, variables) as ws:
            message = await receive(ws)
            codes.append((message["type"], [e["extensions"]["code"] for e in message["payload"]]))
    assert codes == [("error", ["FORBIDDEN"]), ("error", ["FORBIDDEN"])]


async def written(engine: AsyncEngine, values: dict[int, str]) -> int:
    """Latest readings ``values`` (meter → total) written now and their readings.ingested."""
    now = utcnow()
    async with session_factory(engine)() as session, session.begin():
        for meter, value in values.items():
            await session.execute(text(
                "INSERT INTO latest_readings (meter_id, read_at, total_m3, quality, source, received_at)"
                " VALUES (:m, :at, :v, 'actual', 'test', :at) ON CONFLICT (meter_id) DO UPDATE"
                " SET read_at = :at, total_m3 = :v"), {"m": meter, "at": now, "v": Decimal(value)})
        return await emit_event(session, "readings.ingested", ReadingsIngested(
            batch_id=unique("b"), meter_ids=tuple(values), first_read_at=now, last_read_at=now))


async def test_meter_readings_go_out_at_most_once_a_second_per_meter_the_newest_winning(
    live: LiveServer, world: World, committed_engine: AsyncEngine
) -> None:
    first_meter, second_meter = world.east_meters
    chosen = [encode_id("Meter", m) for m in (first_meter, second_meter, world.west_meter)]
    async with following(live, world.tokens["staff"], METER_READINGS,
                         {"meters": chosen, "after": await last_event_id(committed_engine)}) as ws:
        await written(committed_engine, {first_meter: "1", world.west_meter: "9"})
        first = await item(ws, "meterReadings")
        started = time.monotonic()
        # Within the second: three more readings of the first meter, one of the second.
        for value in ("2", "3"):
            await written(committed_engine, {first_meter: value})
        last = await written(committed_engine, {first_meter: "4", second_meter: "7"})
        second_item = await item(ws, "meterReadings")  # the second meter: not sent yet this second
        coalesced = await item(ws, "meterReadings", within_s=3)
        waited = time.monotonic() - started
        await assert_quiet(ws)

    assert [(r["meterId"], r["value"]) for r in first["readings"]] == [(encode_id("Meter", first_meter), "1.0000")]
    assert [(r["meterId"], r["value"]) for r in second_item["readings"]] == [(encode_id("Meter", second_meter), "7.0000")]
    assert [(r["meterId"], r["value"]) for r in coalesced["readings"]] == [(encode_id("Meter", first_meter), "4.0000")]
    assert 0.8 <= waited <= 2.5
    assert int(coalesced["eventId"]) == last and int(first["eventId"]) < int(coalesced["eventId"])


@pytest.mark.parametrize("count", [0, 201])
async def test_meter_readings_follows_1_to_200_meters(live: LiveServer, world: World, count: int) -> None:
    async with following(live, world.tokens["staff"], METER_READINGS,
                         {"meters": [encode_id("Meter", n + 1) for n in range(count)]}) as ws:
        message = await receive(ws)
    assert (message["type"], [e["extensions"]["code"] for e in message["payload"]]) == ("error", ["BAD_USER_INPUT"])


async def test_at_most_one_per_key_coalesces_within_the_interval() -> None:
    queue: asyncio.Queue[tuple[int, list[tuple[str, int]]] | None] = asyncio.Queue()

    async def updates() -> AsyncGenerator[tuple[int, list[tuple[str, int]]], None]:
        while (update := await queue.get()) is not None:
            yield update

    batches = at_most_one_per_key(updates(), interval_s=0.2, clock=time.monotonic)
    for update in [(1, [("m1", 1)]), (2, [("m1", 2), ("m2", 20)]), (3, [("m1", 3)])]:
        queue.put_nowait(update)
    received = [await anext(batches), await anext(batches), await anext(batches)]
    queue.put_nowait(None)
    with pytest.raises(StopAsyncIteration):
        await anext(batches)

    assert received == [(1, [1]), (2, [20]), (3, [3])]
