"""The inbox over the real API: a resident's messageCreated subscription receives a
message committed by another connection (the test's, not the server's), and the
queries and mutations of the inbox, devices and preferences."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.client import connect

from backend.auth.sms.senders import sms_sender
from backend.db import session_factory
from backend.notifications.kinds import MessageKind, Recipient
from backend.notifications.service import notify, notify_many
from tests.factories import make_staff
from tests.live import LiveServer, live_server
from tests.notifications.factories import make_home

SEND_CODE = "mutation($phone: String!) { requestLoginCode(phone: $phone) { expiresAt errors { code } } }"
RESIDENT_LOGIN = """mutation($phone: String!, $code: String!) { residentLogin(phone: $phone, code: $code) {
  tokens { accessToken } errors { code } } }"""
MESSAGE_CREATED = """subscription($after: ID) { messageCreated(afterEventId: $after) {
  eventId messages { id kind title body data readAt } } }"""
MY_MESSAGES = """query($unread: Boolean!) { unreadMessageCount myMessages(first: 10, unreadOnly: $unread) {
  totalCount edges { node { id kind title } } } }"""
MARK_ALL = "mutation { markMessagesRead { marked unreadCount errors { code } } }"
REGISTER = """mutation($r: String!) { registerDevice(registrationId: $r, platform: android) { registered errors { code field } } }"""
SET_PREFERENCES = """mutation($p: NotificationPreferencesInput!) { setNotificationPreferences(preferences: $p) {
  preferences { mutedKinds quietStart quietEnd } errors { code field } } }"""


@pytest.fixture(scope="module")
def live(database_url: str) -> Iterator[LiveServer]:
    with live_server(database_url) as server:
        yield server


async def graphql(live: LiveServer, query: str, variables: dict[str, Any] | None = None, *, token: str) -> Any:
    async with httpx.AsyncClient(base_url=live.url) as http:
        response = await http.post("/graphql", json={"query": query, "variables": variables or {}},
                                   headers={"Authorization": f"Bearer {token}"})
    return response.json()


async def resident_token(live: LiveServer, phone: str) -> str:
    async with httpx.AsyncClient(base_url=live.url) as http:
        sent = await http.post("/graphql", json={"query": SEND_CODE, "variables": {"phone": phone}})
        assert sent.json()["data"]["requestLoginCode"]["errors"] == [], sent.text
        code = next(code for to, code in reversed(sms_sender("log").sent) if to == phone)
        answer = await http.post("/graphql", json={"query": RESIDENT_LOGIN, "variables": {"phone": phone, "code": code}})
    token: str = answer.json()["data"]["residentLogin"]["tokens"]["accessToken"]
    return token


async def test_a_resident_receives_a_message_committed_by_another_connection(
    live: LiveServer, committed_engine: AsyncEngine,
) -> None:
    async with session_factory(committed_engine)() as session, session.begin():
        home = await make_home(session, residents=1)
        stranger = await make_home(session, residents=1)
        after = str((await session.execute(text("SELECT coalesce(max(id), 0) FROM domain_events"))).scalar_one())
    token = await resident_token(live, home.phone)

    async with connect(f"ws://{live.host}:{live.port}/graphql", subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe",
                                  "payload": {"query": MESSAGE_CREATED, "variables": {"after": after}}}))
        # Another connection commits: first a message for someone else, then one for this resident.
        async with session_factory(committed_engine)() as session, session.begin():
            await notify(session, kind=MessageKind.NOTICE, recipient=Recipient.household(stranger.household_id),
                         title="他人的消息", body="x", dedupe_key="sub:other", now=datetime.now(UTC))
        async with session_factory(committed_engine)() as session, session.begin():
            await notify_many(session, kind=MessageKind.BILL_ISSUED, recipients=[Recipient.household(home.household_id)],
                              title="缴费通知", body="您的水费已出账", data={"screen": "bill", "id": 7},
                              dedupe_key="sub:bill:7", now=datetime.now(UTC))
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))

    assert message["type"] == "next", message
    item = message["payload"]["data"]["messageCreated"]
    assert [(m["kind"], m["title"], m["body"], m["data"], m["readAt"]) for m in item["messages"]] == [
        ("BILL_ISSUED", "缴费通知", "您的水费已出账", {"screen": "bill", "id": 7}, None)]

    # The inbox over HTTP: counted, listed, marked read; a device and preferences.
    inbox = await graphql(live, MY_MESSAGES, {"unread": True}, token=token)
    marked = await graphql(live, MARK_ALL, token=token)
    after_marking = await graphql(live, MY_MESSAGES, {"unread": True}, token=token)
    registered = await graphql(live, REGISTER, {"r": "rid-api-1"}, token=token)
    refused = await graphql(live, SET_PREFERENCES, {"p": {"quietStart": "22:00:00"}}, token=token)
    saved = await graphql(live, SET_PREFERENCES, {"p": {"mutedKinds": ["NOTICE"], "quietStart": "22:00:00",
                                                        "quietEnd": "07:00:00"}}, token=token)

    assert inbox["data"]["unreadMessageCount"] == 1
    assert [edge["node"]["title"] for edge in inbox["data"]["myMessages"]["edges"]] == ["缴费通知"]
    assert marked["data"]["markMessagesRead"] == {"marked": 1, "unreadCount": 0, "errors": []}
    assert after_marking["data"]["myMessages"]["totalCount"] == 0
    assert registered.get("errors") is None, registered
    assert registered["data"]["registerDevice"] == {"registered": True, "errors": []}
    assert refused["data"]["setNotificationPreferences"]["errors"] == [{"code": "BAD_USER_INPUT", "field": "quietEnd"}]
    assert saved["data"]["setNotificationPreferences"] == {
        "preferences": {"mutedKinds": ["NOTICE"], "quietStart": "22:00:00", "quietEnd": "07:00:00"}, "errors": []}


LOGIN = "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { tokens { accessToken } errors { code } } }"


async def test_a_staff_user_receives_their_own_messages_too(live: LiveServer, committed_engine: AsyncEngine) -> None:
    async with session_factory(committed_engine)() as session, session.begin():
        staff = await make_staff(session, permissions={"areas:read"})
        after = str((await session.execute(text("SELECT coalesce(max(id), 0) FROM domain_events"))).scalar_one())
    async with httpx.AsyncClient(base_url=live.url) as http:
        answer = await http.post("/graphql", json={"query": LOGIN, "variables": {"u": staff.username, "p": staff.password}})
    token = answer.json()["data"]["login"]["tokens"]["accessToken"]

    async with connect(f"ws://{live.host}:{live.port}/graphql", subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe",
                                  "payload": {"query": MESSAGE_CREATED, "variables": {"after": after}}}))
        async with session_factory(committed_engine)() as session, session.begin():
            assert staff.user.id is not None
            await notify(session, kind=MessageKind.WORKORDER_UPDATE, recipient=Recipient.staff(staff.user.id),
                         title="新工单", body="您有一张新的报修工单", dedupe_key="sub:staff:1", now=datetime.now(UTC))
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))

    assert [m["title"] for m in message["payload"]["data"]["messageCreated"]["messages"]] == ["新工单"]
