"""Webhook endpoints through GraphQL: an API client registers its own (the secret shown
once), a refused URL is a typed payload error with nothing written, staff manage a
client's endpoints in scope and rotate its secret; every change is in the operation log."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.auth.service import create_api_client
from backend.db import session_factory
from backend.graphql.relay import encode_id
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
