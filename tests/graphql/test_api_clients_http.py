"""Third parties: client credentials, their scopes and data scope, and the rate limit."""

from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.auth.service import create_api_client
from backend.db import session_factory
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World

CLIENT_TOKEN = """
mutation($id: String!, $secret: String!) {
  issueClientToken(clientId: $id, clientSecret: $secret) { tokens { accessToken refreshToken } viewer { kind permissions } errors { code } }
}
"""
AREAS = "{ areas(first: 10) { edges { node { name } } } }"


async def _client(engine: AsyncEngine, world: World, *, rate_per_minute: int) -> tuple[str, str]:
    async with session_factory(engine)() as session, session.begin():
        issued = await create_api_client(
            session, actor=world.admin.principal, name="营业厅大屏", scopes=["areas:read"],
            area_ids=[world.tree.west.id] if world.tree.west.id else [], rate_per_minute=rate_per_minute,
        )
    return issued.client.client_id, issued.secret


async def test_client_credentials_give_a_read_token_limited_to_the_clients_areas(
    client: GraphQLClient, world: World, engine_for_module: AsyncEngine
) -> None:
    client_id, secret = await _client(engine_for_module, world, rate_per_minute=100)

    issued = await client.execute(CLIENT_TOKEN, {"id": client_id, "secret": secret})
    token = issued["data"]["issueClientToken"]["tokens"]["accessToken"]
    areas = await client.execute(AREAS, token=token)

    assert issued["data"]["issueClientToken"]["tokens"]["refreshToken"] is None
    assert issued["data"]["issueClientToken"]["viewer"] == {"kind": "client", "permissions": ["areas:read"]}
    assert [edge["node"]["name"] for edge in areas["data"]["areas"]["edges"]] == ["城西片区", "西山名苑"]


async def test_oauth_token_endpoint_speaks_the_client_credentials_grant(
    client: GraphQLClient, world: World, engine_for_module: AsyncEngine
) -> None:
    client_id, secret = await _client(engine_for_module, world, rate_per_minute=100)
    http: httpx.AsyncClient = client.http

    good = await http.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret})
    wrong = await http.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": "x"})

    assert good.status_code == 200
    assert good.json()["token_type"] == "Bearer"
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"


async def test_a_client_over_its_rate_limit_is_refused_with_rate_limited(
    client: GraphQLClient, world: World, engine_for_module: AsyncEngine
) -> None:
    client_id, secret = await _client(engine_for_module, world, rate_per_minute=3)
    # Asking for the token takes the first of the three.
    issued = await client.execute(CLIENT_TOKEN, {"id": client_id, "secret": secret})
    token = issued["data"]["issueClientToken"]["tokens"]["accessToken"]

    answers = [await client.execute(AREAS, token=token) for _ in range(3)]

    assert [answer["_status"] for answer in answers] == [200, 200, 429]
    assert answers[2]["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert answers[2]["data"] is None
