"""Webhook endpoints through GraphQL: an API client registers its own (the secret shown
once), a refused URL is a typed payload error with nothing written, staff manage a
client's endpoints in scope and rotate its secret; every change is in the operation log."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.auth.service import create_api_client
from backend.db import session_factory
from backend.graphql.relay import decode_id, encode_id
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World

CLIENT_TOKEN = """
mutation($id: String!, $secret: String!) { issueClientToken(clientId: $id, clientSecret: $secret) { tokens { accessToken } } }
"""
CREATE = """
mutation($url: String!, $types: [String!]!, $client: ID) {
  createWebhookEndpoint(input: {url: $url, eventTypes: $types, clientId: $client}) {
    endpoint { id clientId url eventTypes isActive } secret errors { field code message messageEn }
  }
}
"""
ROTATE = "mutation($id: ID!) { rotateWebhookSecret(id: $id) { endpoint { id } secret errors { code } } }"
ENDPOINTS = "{ webhookEndpoints(first: 10) { totalCount edges { node { id url eventTypes } } } }"

# A public literal address: no resolver is asked (nothing is sent in these tests).
PUBLIC_URL = "https://8.8.8.8/shuiwu"


async def _client(engine: AsyncEngine, world: World, name: str) -> tuple[int, str, str]:
    async with session_factory(engine)() as session, session.begin():
        issued = await create_api_client(session, actor=world.admin.principal, name=name,
                                         scopes=["readings:read", "webhooks:read"],
                                         area_ids=[world.tree.east.id] if world.tree.east.id else [])
    assert issued.client.id is not None
    return issued.client.id, issued.client.client_id, issued.secret


async def _count(engine: AsyncEngine, table: str) -> int:
    async with session_factory(engine)() as session:
        return int((await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def test_a_client_registers_its_own_endpoint_and_sees_the_secret_once(
    client: GraphQLClient, world: World, engine_for_module: AsyncEngine
) -> None:
    pk, client_id, secret = await _client(engine_for_module, world, "抄表平台")
    other_pk, _, _ = await _client(engine_for_module, world, "另一家")
    token = (await client.execute(CLIENT_TOKEN, {"id": client_id, "secret": secret}))["data"]["issueClientToken"]["tokens"]["accessToken"]

    created = (await client.execute(CREATE, {"url": PUBLIC_URL, "types": ["readings.ingested"]},
                                    token=token))["data"]["createWebhookEndpoint"]
    listed = (await client.execute(ENDPOINTS, token=token))["data"]["webhookEndpoints"]
    not_its_own = (await client.execute(CREATE, {"url": PUBLIC_URL, "types": ["readings.ingested"],
                                                 "client": encode_id("ApiClient", other_pk)}, token=token))["data"]["createWebhookEndpoint"]

    assert created["errors"] == [] and created["secret"].startswith("whsec_")
    assert created["endpoint"]["clientId"] == encode_id("ApiClient", pk)
    assert (created["endpoint"]["eventTypes"], created["endpoint"]["isActive"]) == (["readings.ingested"], True)
    assert listed["totalCount"] == 1 and listed["edges"][0]["node"]["id"] == created["endpoint"]["id"]
    assert [(e["field"], e["code"]) for e in not_its_own["errors"]] == [("clientId", "NOT_FOUND")]


async def test_a_refused_url_or_kind_is_a_typed_error_and_writes_no_endpoint(
    client: GraphQLClient, world: World, engine_for_module: AsyncEngine
) -> None:
    pk, _, _ = await _client(engine_for_module, world, "被拒的")
    world_token = await client.login(world.admin.username, world.admin.password)
    before = await _count(engine_for_module, "webhook_endpoints")
    results = [(await client.execute(CREATE, {"url": url, "types": types, "client": encode_id("ApiClient", pk)},
                                     token=world_token))["data"]["createWebhookEndpoint"]
               for url, types in [("http://169.254.169.254/latest", ["readings.ingested"]),
                                  ("ftp://8.8.8.8/", ["readings.ingested"]),
                                  (PUBLIC_URL, ["bill.issued"])]]

    assert [[(e["field"], e["code"]) for e in r["errors"]] for r in results] == [
        [("url", "WEBHOOK_ADDRESS_REFUSED")], [("url", "WEBHOOK_URL_INVALID")], [("eventTypes", "WEBHOOK_EVENT_TYPE_INVALID")]]
    assert results[0]["errors"][0]["messageEn"] == "The webhook URL points at a metadata address, which deliveries may not go to"
    assert all(r["endpoint"] is None and r["secret"] is None for r in results)
    assert await _count(engine_for_module, "webhook_endpoints") == before


async def test_staff_manage_a_clients_endpoint_and_rotate_its_secret_in_the_operation_log(
    client: GraphQLClient, world: World, engine_for_module: AsyncEngine
) -> None:
    pk, _, _ = await _client(engine_for_module, world, "营收系统")
    token = await client.login(world.admin.username, world.admin.password)
    created = (await client.execute(CREATE, {"url": PUBLIC_URL, "types": ["readings.ingested"],
                                             "client": encode_id("ApiClient", pk)}, token=token))["data"]["createWebhookEndpoint"]
    rotated = (await client.execute(ROTATE, {"id": created["endpoint"]["id"]}, token=token))["data"]["rotateWebhookSecret"]
    operator = await client.login(world.east_operator.username, world.east_operator.password)
    refused = await client.execute(ROTATE, {"id": created["endpoint"]["id"]}, token=operator)

    assert rotated["errors"] == [] and rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    assert [e["extensions"]["code"] for e in refused["errors"]] == ["FORBIDDEN"]
    async with session_factory(engine_for_module)() as session:
        actions = (await session.execute(text(
            "SELECT action FROM audit_log WHERE action IN ('createWebhookEndpoint', 'rotateWebhookSecret')"
            " AND actor_kind = 'staff' AND actor_id = :u AND success ORDER BY id"), {"u": world.admin.user.id})).scalars().all()
    assert actions[-2:] == ["createWebhookEndpoint", "rotateWebhookSecret"]


DELIVERIES = """
query($endpoint: ID) { webhookDeliveries(endpointId: $endpoint, first: 10) {
  totalCount edges { node { id eventId eventType status attempts replays body } } } }
"""
ATTEMPTS = "query($id: ID!) { webhookDeliveryAttempts(deliveryId: $id) { statusCode durationMs error responseExcerpt } }"
REPLAY = "mutation($id: ID!) { replayWebhookDelivery(id: $id) { delivery { status replays attempts } errors { code } } }"


async def test_a_client_lists_and_replays_its_deliveries_and_another_client_sees_none(
    client: GraphQLClient, world: World, engine_for_module: AsyncEngine
) -> None:
    _, client_id, secret = await _client(engine_for_module, world, "投递方")
    _, other_id, other_secret = await _client(engine_for_module, world, "旁观者")
    tokens = [(await client.execute(CLIENT_TOKEN, {"id": i, "secret": s}))["data"]["issueClientToken"]["tokens"]
              ["accessToken"] for i, s in [(client_id, secret), (other_id, other_secret)]]
    created = (await client.execute(CREATE, {"url": PUBLIC_URL, "types": ["readings.ingested"]},
                                    token=tokens[0]))["data"]["createWebhookEndpoint"]
    endpoint_pk = decode_id(created["endpoint"]["id"], "WebhookEndpoint")
    async with session_factory(engine_for_module)() as session, session.begin():
        delivery_pk = (await session.execute(text(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, body, status, attempts, created_at,"
            " finished_at) VALUES (:e, 42, 'readings.ingested', CAST(:b AS jsonb), 'failed', 1, now(), now()) RETURNING id"),
            {"e": endpoint_pk, "b": '{"id": "42", "type": "readings.ingested", "data": {}}'})).scalar_one()
        await session.execute(text(
            "INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, duration_ms, error, response_excerpt)"
            " VALUES (:d, now(), 503, 12, 'HTTP 503', 'busy')"), {"d": delivery_pk})
    delivery_id = encode_id("WebhookDelivery", delivery_pk)

    mine = (await client.execute(DELIVERIES, {"endpoint": created["endpoint"]["id"]},
                                 token=tokens[0]))["data"]["webhookDeliveries"]
    attempts = (await client.execute(ATTEMPTS, {"id": delivery_id}, token=tokens[0]))["data"]["webhookDeliveryAttempts"]
    theirs = (await client.execute(DELIVERIES, {}, token=tokens[1]))["data"]["webhookDeliveries"]
    peeking = await client.execute(ATTEMPTS, {"id": delivery_id}, token=tokens[1])
    replayed = (await client.execute(REPLAY, {"id": delivery_id}, token=tokens[0]))["data"]["replayWebhookDelivery"]
    again = (await client.execute(REPLAY, {"id": delivery_id}, token=tokens[0]))["data"]["replayWebhookDelivery"]
    async with session_factory(engine_for_module)() as session:
        queued = (await session.execute(text("SELECT count(*) FROM pgqueuer WHERE entrypoint = 'job:webhooks.deliver'"
                                             " AND payload = CAST(:p AS bytea)"),
                                        {"p": f'{{"delivery_id": {delivery_pk}}}'.encode()})).scalar_one()

    assert mine["totalCount"] == 1
    assert {k: mine["edges"][0]["node"][k] for k in ("eventId", "status", "attempts")} == {
        "eventId": "42", "status": "failed", "attempts": 1}
    assert attempts == [{"statusCode": 503, "durationMs": 12, "error": "HTTP 503", "responseExcerpt": "busy"}]
    assert theirs["totalCount"] == 0
    assert [e["extensions"]["code"] for e in peeking["errors"]] == ["NOT_FOUND"]
    assert (replayed["errors"], replayed["delivery"]) == ([], {"status": "pending", "replays": 1, "attempts": 0})
    assert [e["code"] for e in again["errors"]] == ["WEBHOOK_DELIVERY_PENDING"]
    assert queued == 1
