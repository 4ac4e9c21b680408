"""The acceptance story over a live app (issue 19): a resident reports a leak with a photo,
staff take it from the pool, set out, work, resolve it with a HEIC photo and materials,
and the resident rates it; a second rating is refused, the resident's photo reaches
staff without its GPS, another resident sees nothing. At each step the message reaches
the inbox (``myMessages``) and the phone: a job worker (the relay, ``workorders.notify``,
``notifications.push``) sends it to the local JPush fake, which receives a push to the
device registered over GraphQL. Also: two concurrent takes of one order, one wins.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from backend.auth import service as auth
from backend.auth.principal import Principal
from backend.clock import utcnow
from backend.db import transaction
from backend.errors import DomainError, ErrorCode
from backend.graphql.relay import decode_id, encode_id
from backend.notifications.fakes.jpush import pushed
from backend.workorders import service
from tests.auth.support import FakeSms
from tests.factories import Staff, auth_policy, bind_at_counter, make_area_tree, make_household, make_staff, unique
from tests.fixtures.gateways import FakeGateway, FakeGateways
from tests.fixtures.live import RunningWorker, eventually, running_worker
from tests.graphql.client import TEST_SECRET
from tests.live import LiveServer, live_server
from tests.workorders.photos_support import GPS_IFD, photo
from tests.workorders.support import HANDLE, TZ

POLICY = auth_policy(TEST_SECRET)
LOGIN = "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { tokens { accessToken } } }"
FIELDS = """id number state category description contactPhone overdue assigneeName result rating ratingComment
            materials { name quantity unit } photos { stage url thumbnailUrl }
            transitions { fromState toState actorKind }"""
CREATE = f"""mutation($input: CreateWorkOrderInput!) {{
  createWorkOrder(input: $input) {{ workOrder {{ {FIELDS} }} errors {{ field code message messageEn }} }} }}"""
POOL = "{ workOrderPool(first: 20) { totalCount edges { node { id number } } } }"
TAKE = "mutation($id: ID!) { takeWorkOrder(id: $id) { workOrder { state assigneeName } errors { code } } }"
TRAVEL = "mutation($id: ID!) { startTravel(id: $id) { workOrder { state } errors { code } } }"
WORK = "mutation($id: ID!) { startWork(id: $id) { workOrder { state } errors { code } } }"
RESOLVE = f"""mutation($id: ID!, $photos: [ID!], $materials: [WorkOrderMaterialInput!]) {{
  resolveWorkOrder(id: $id, result: "更换阀门, 试水正常", photoIds: $photos, materials: $materials) {{
    workOrder {{ {FIELDS} }} errors {{ field code }} }} }}"""
CONFIRM = """mutation($id: ID!, $rating: Int!) {
  confirmWorkOrder(id: $id, rating: $rating, comment: "师傅很专业") { workOrder { state rating } errors { code message } } }"""
MINE = f"{{ myWorkOrders(first: 10) {{ totalCount edges {{ node {{ {FIELDS} }} }} }} }}"
ONE = "query($id: ID!) { workOrder(id: $id) { number state } }"
REGISTER = """mutation($r: String!) { registerDevice(registrationId: $r, platform: android) {
  registered errors { code } } }"""
INBOX = "{ myMessages(first: 20, kind: WORKORDER_UPDATE) { edges { node { title body data } } } }"


@pytest.fixture(scope="module")
def jpush(fake_gateways: FakeGateways) -> Iterator[FakeGateway]:
    """The local JPush, and SHUIWU_JPUSH_URL pointing the app and the worker at it."""
    with fake_gateways.pointed_at("jpush", "SHUIWU_JPUSH_URL") as fake:
        yield fake


@pytest.fixture(scope="module")
def live(database_url: str, jpush: FakeGateway) -> Iterator[LiveServer]:
    with live_server(database_url) as server:
        yield server


@pytest.fixture(scope="module")
def worker(database_url: str, jpush: FakeGateway) -> Iterator[RunningWorker]:
    """``shuiwu jobs``: relays workorder.changed to workorders.notify, then sends the pushes."""
    with running_worker(database_url, dequeue_timeout=timedelta(seconds=0.2), relay_sweep_interval=1.0) as running:
        yield running


@dataclass
class Cast:
    resident_token: str
    stranger_token: str
    staff: Staff
    other: Staff
    household_id: int
    resident: Principal


async def _resident(session: AsyncSession, phone: str) -> tuple[str, Principal]:
    sms = FakeSms()
    await auth.request_login_code(session, phone=phone, now=utcnow(), policy=POLICY, sender=sms)
    pair = await auth.login_resident(session, phone=phone, code=sms.last_code, now=utcnow(), policy=POLICY)
    return pair.access_token, pair.principal


@pytest.fixture(scope="module")
async def cast(committed_sessions: async_sessionmaker[AsyncSession]) -> Cast:
    async with transaction(committed_sessions) as session:
        tree = await make_area_tree(session)
        home = await make_household(session, area=tree.east_community, name="王芳", phone="13811112222")
        elsewhere = await make_household(session, area=tree.east_community, name="赵六", phone="13833334444")
        token, principal = await _resident(session, "13811112222")
        stranger_token, stranger = await _resident(session, "13833334444")
        await bind_at_counter(session, resident=principal, household=home)
        await bind_at_counter(session, resident=stranger, household=elsewhere)
        staff = await make_staff(session, permissions=HANDLE, areas=[tree.east])
        other = await make_staff(session, permissions=HANDLE, areas=[tree.east])
    assert home.id is not None
    return Cast(token, stranger_token, staff, other, home.id,
                Principal(kind=principal.kind, id=principal.id, name=principal.name, household_ids=(home.id,)))


async def _gql(http: httpx.AsyncClient, token: str, query: str, **variables: Any) -> dict[str, Any]:
    response = await http.post("/graphql", json={"query": query, "variables": variables},
                               headers={"Authorization": f"Bearer {token}"})
    body = response.json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


async def _staff_token(http: httpx.AsyncClient, staff: Staff) -> str:
    login = await http.post("/graphql", json={"query": LOGIN, "variables": {"u": staff.username, "p": staff.password}})
    token: str = login.json()["data"]["login"]["tokens"]["accessToken"]
    return token


async def _upload(http: httpx.AsyncClient, token: str, content: bytes, content_type: str) -> str:
    response = await http.post("/files/photos", content=content,
                               headers={"Authorization": f"Bearer {token}", "Content-Type": content_type})
    assert response.status_code == 201, response.text
    key: str = response.json()["photoId"]
    return key


async def _inbox(http: httpx.AsyncClient, token: str, number: str) -> list[dict[str, Any]]:
    """The caller's work-order messages about the order ``number``, oldest first."""
    edges = (await _gql(http, token, INBOX))["myMessages"]["edges"]
    return [edge["node"] for edge in reversed(edges) if edge["node"]["data"].get("number") == number]


class Follower:
    """One phone following the order: waits (bounded) for the step's message in the inbox
    and for the fake JPush to have received its push to the phone's registration id."""

    def __init__(self, http: httpx.AsyncClient, jpush: FakeGateway, token: str, registration_id: str) -> None:
        self.http, self.jpush, self.token, self.registration_id = http, jpush, token, registration_id
        self.number = ""

    def pushes(self) -> list[dict[str, Any]]:
        return [push for push in pushed(self.jpush.requests()) if self.registration_id in push["registration_ids"]
                and push["extras"].get("number") == self.number]

    async def told(self, state: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The inbox message and the push of the order's change to ``state``."""
        async def arrived() -> bool:
            return any(m["data"]["state"] == state for m in await _inbox(self.http, self.token, self.number)) and any(
                p["extras"]["state"] == state for p in self.pushes())
        await eventually(arrived, timeout_s=10)
        message = next(m for m in await _inbox(self.http, self.token, self.number) if m["data"]["state"] == state)
        push = next(p for p in self.pushes() if p["extras"]["state"] == state)
        return message, push


async def test_a_resident_reports_with_a_photo_staff_take_and_resolve_and_the_resident_rates(
        live: LiveServer, cast: Cast, jpush: FakeGateway, worker: RunningWorker) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        # The resident's phone and the staff member's phone register for pushes.
        resident_phone, staff_phone = unique("story-resident-"), unique("story-staff-")
        staff_token = await _staff_token(http, cast.staff)
        for token, registration_id in ((cast.resident_token, resident_phone), (staff_token, staff_phone)):
            registered = (await _gql(http, token, REGISTER, r=registration_id))["registerDevice"]
            assert registered == {"registered": True, "errors": []}
        resident = Follower(http, jpush, cast.resident_token, resident_phone)
        assignee = Follower(http, jpush, staff_token, staff_phone)

        photo_id = await _upload(http, cast.resident_token, photo(), "image/jpeg")
        created = (await _gql(http, cast.resident_token, CREATE, input={
            "householdId": encode_id("Household", cast.household_id), "category": "leak",
            "description": "厨房水管漏水", "photoIds": [photo_id]}))["createWorkOrder"]
        order = created["workOrder"]
        assert created["errors"] == [] and order["state"] == "submitted" and order["contactPhone"] == "13811112222"
        assert [p["stage"] for p in order["photos"]] == ["report"]
        resident.number = assignee.number = order["number"]
        told: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

        pool = (await _gql(http, staff_token, POOL))["workOrderPool"]
        assert order["number"] in [edge["node"]["number"] for edge in pool["edges"]]
        # The resident's photo, as staff download it: no GPS.
        shown = await http.get(order["photos"][0]["url"])
        assert shown.status_code == 200
        assert Image.open(io.BytesIO(shown.content)).getexif().get_ifd(GPS_IFD) == {}
        # Another resident does not reach it.
        foreign = await http.post("/graphql", json={"query": ONE, "variables": {"id": order["id"]}},
                                  headers={"Authorization": f"Bearer {cast.stranger_token}"})
        assert foreign.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"

        taken = (await _gql(http, staff_token, TAKE, id=order["id"]))["takeWorkOrder"]
        assert (taken["errors"], taken["workOrder"]["state"]) == ([], "assigned")
        told["assigned"] = await resident.told("assigned")
        assert (await _gql(http, staff_token, TRAVEL, id=order["id"]))["startTravel"]["workOrder"]["state"] == "on_the_way"
        told["on_the_way"] = await resident.told("on_the_way")
        assert (await _gql(http, staff_token, WORK, id=order["id"]))["startWork"]["workOrder"]["state"] == "in_progress"
        told["in_progress"] = await resident.told("in_progress")
        heic = await _upload(http, staff_token, photo("HEIF", (640, 480)), "image/heic")
        resolved = (await _gql(http, staff_token, RESOLVE, id=order["id"], photos=[heic],
                               materials=[{"name": "阀门", "quantity": "1", "unit": "只"}]))["resolveWorkOrder"]
        assert resolved["errors"] == []
        told["resolved"] = await resident.told("resolved")
        assert [p["stage"] for p in resolved["workOrder"]["photos"]] == ["report", "result"]
        assert resolved["workOrder"]["materials"] == [{"name": "阀门", "quantity": "1", "unit": "只"}]
        thumb = await http.get(resolved["workOrder"]["photos"][1]["thumbnailUrl"])
        assert Image.open(io.BytesIO(thumb.content)).format == "JPEG"

        mine = (await _gql(http, cast.resident_token, MINE))["myWorkOrders"]
        assert mine["totalCount"] == 1 and mine["edges"][0]["node"]["state"] == "resolved"
        rated = (await _gql(http, cast.resident_token, CONFIRM, id=order["id"], rating=5))["confirmWorkOrder"]
        again = (await _gql(http, cast.resident_token, CONFIRM, id=order["id"], rating=1))["confirmWorkOrder"]
        rating_message, rating_push = await assignee.told("confirmed")
        resident_inbox, resident_pushes = await _inbox(http, cast.resident_token, order["number"]), resident.pushes()
        assignee_inbox = await _inbox(http, staff_token, order["number"])

    assert (rated["errors"], rated["workOrder"]) == ([], {"state": "confirmed", "rating": 5})
    assert [error["code"] for error in again["errors"]] == ["WORKORDER_ALREADY_RATED"] and again["workOrder"] is None
    final = mine["edges"][0]["node"]
    assert [(t["fromState"], t["toState"]) for t in final["transitions"]] == [
        (None, "submitted"), ("submitted", "assigned"), ("assigned", "on_the_way"), ("on_the_way", "in_progress"),
        ("in_progress", "resolved")]

    # Each staff step reached the resident's inbox and phone, with the deep link to the order.
    order_pk, number = decode_id(order["id"], "WorkOrder"), order["number"]
    words = {"assigned": "已有工作人员受理您的报修", "on_the_way": "维修人员已出发", "in_progress": "维修人员正在处理",
             "resolved": "报修已处理完成, 请确认并评价"}
    for state, (message, push) in told.items():
        link = {"screen": "workorder", "workOrderId": order_pk, "number": number, "state": state}
        assert message == {"title": f"报修进度: {number}", "body": f"漏水工单 {number}: {words[state]}", "data": link}
        assert push == {"registration_ids": [resident_phone], "title": message["title"], "alert": message["body"],
                        "extras": link}
    # One message and one push per step, none for the creation (the resident made it) or
    # the rating (the resident's own move: it tells the assignee).
    assert [m["data"]["state"] for m in resident_inbox] == list(words)
    assert [p["extras"]["state"] for p in resident_pushes] == list(words)
    # The rating reached the assignee, in their inbox and on their phone; only that.
    assert rating_message["body"] == f"漏水工单 {number}: 住户已确认并评价 (5 星)"
    assert rating_push["registration_ids"] == [staff_phone] and rating_push["alert"] == rating_message["body"]
    assert [m["data"]["state"] for m in assignee_inbox] == ["confirmed"]


async def _until_a_take_waits_on_a_lock(sessions: async_sessionmaker[AsyncSession]) -> None:
    for _ in range(200):
        async with sessions() as session:
            waiting = (await session.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ))).scalar_one()
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the second take never waited on the row lock")


async def test_two_concurrent_takes_of_one_order_one_wins(
        committed_sessions: async_sessionmaker[AsyncSession], cast: Cast) -> None:
    async with transaction(committed_sessions) as session:
        order = await service.create_work_order(
            session, principal=cast.resident, household_id=cast.household_id, category=service.WorkOrderCategory.leak,
            description="水管爆裂", contact_name=None, contact_phone=None, appointment_at=None, now=utcnow(), tz=TZ)
    assert order.id is not None

    first_holds = asyncio.Event()

    async def take(staff: Staff, *, first: bool) -> str:
        if not first:
            await first_holds.wait()
        try:
            async with transaction(committed_sessions) as session:
                await service.take_work_order(session, principal=staff.principal, order_id=order.id or 0, now=utcnow())
                if first:  # hold the row lock until the other take waits on it
                    first_holds.set()
                    await _until_a_take_waits_on_a_lock(committed_sessions)
            return "taken"
        except DomainError as error:
            return error.code.value

    outcomes = await asyncio.gather(take(cast.staff, first=True), take(cast.other, first=False))

    assert sorted(outcomes) == sorted(["taken", ErrorCode.WORKORDER_ALREADY_TAKEN.value])
    async with committed_sessions() as session:
        transitions = await service.transitions_of(session, order_ids=[order.id])
    assert [t.to_state.value for t in transitions[order.id]] == ["submitted", "assigned"]


POOL_CHANGED = """subscription($after: ID) { workOrderPoolChanged(afterEventId: $after) {
  eventId inPool workOrder { number state } } }"""
RESIDENT_CHANGED = """subscription($after: ID) { residentWorkOrderChanged(afterEventId: $after) {
  eventId by workOrder { number state } } }"""


async def _next(ws: Any, field: str) -> dict[str, Any]:
    message = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert message["type"] == "next" and "errors" not in message["payload"], message
    item: dict[str, Any] = message["payload"]["data"][field]
    return item


async def _subscribed(stack: AsyncExitStack, live: LiveServer, token: str, query: str, after: str) -> Any:
    ws = await stack.enter_async_context(connect(f"ws://{live.host}:{live.port}/graphql",
                                                 subprotocols=[Subprotocol("graphql-transport-ws")]))
    await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connection_ack"
    await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": {"after": after}}}))
    return ws


async def test_staff_see_an_order_enter_and_leave_their_pool_and_the_resident_follows_it(
        live: LiveServer, cast: Cast, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    async with committed_sessions() as session:
        after = str((await session.execute(text("SELECT coalesce(max(id), 0) FROM domain_events"))).scalar_one())
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        staff_token = await _staff_token(http, cast.staff)
    async with AsyncExitStack() as stack:
        pool = await _subscribed(stack, live, staff_token, POOL_CHANGED, after)
        followed = await _subscribed(stack, live, cast.resident_token, RESIDENT_CHANGED, after)
        async with transaction(committed_sessions) as session:
            order = await service.create_work_order(
                session, principal=cast.resident, household_id=cast.household_id,
                category=service.WorkOrderCategory.no_water, description="停水了", contact_name=None,
                contact_phone=None, appointment_at=None, now=utcnow(), tz=TZ)
        async with transaction(committed_sessions) as session:
            await service.take_work_order(session, principal=cast.staff.principal, order_id=order.id or 0, now=utcnow())

        entered, left = await _next(pool, "workOrderPoolChanged"), await _next(pool, "workOrderPoolChanged")
        made, taken = await _next(followed, "residentWorkOrderChanged"), await _next(followed, "residentWorkOrderChanged")

    # Each item shows the order as it is when the item is made (taken by then, or not yet).
    assert (entered["inPool"], entered["workOrder"]["number"]) == (True, order.number)
    assert left["inPool"] is False and int(left["eventId"]) > int(entered["eventId"])
    assert (made["by"], taken["by"]) == (f"resident:{cast.resident.id}", f"staff:{cast.staff.user.id}")
    assert taken["workOrder"]["state"] == "assigned"
