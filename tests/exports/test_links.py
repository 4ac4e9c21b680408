"""Signed download links: bound to the login they were made in, and single-use."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth.errors import TokenRevoked
from backend.auth.models import PrincipalKind
from backend.exports.links import DownloadGrant, purge_used_download_links, redeem_download_link
from tests.graphql import conftest as graphql_fixtures
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World

world = graphql_fixtures.world
engine_for_module = graphql_fixtures.engine_for_module
client = graphql_fixtures.client

EXPORT_URL = "{ householdExportUrl }"


def _reason(response: object) -> tuple[int, str]:
    error = response.json()["errors"][0]["extensions"]  # type: ignore[attr-defined]
    return response.status_code, error.get("reason", error["code"])  # type: ignore[attr-defined]


async def test_a_download_link_works_once(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    url = (await client.execute(EXPORT_URL, token=token))["data"]["householdExportUrl"]

    first = await client.http.get(url)
    replayed = await client.http.get(url)

    assert first.status_code == 200
    assert _reason(replayed) == (401, "TOKEN_REVOKED")
    assert replayed.json()["errors"][0]["extensions"]["messageEn"] == "The download link was already used; export again"


async def test_logging_out_kills_the_links_made_in_that_login(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    other_login = await client.login(world.admin.username, world.admin.password)
    url = (await client.execute(EXPORT_URL, token=token))["data"]["householdExportUrl"]
    kept = (await client.execute(EXPORT_URL, token=other_login))["data"]["householdExportUrl"]

    logout = await client.execute("mutation { logout { ok } }", token=token)
    after_logout = await client.http.get(url)
    from_the_other_login = await client.http.get(kept)

    assert logout["data"]["logout"]["ok"] is True
    assert _reason(after_logout) == (401, "TOKEN_REVOKED")
    assert from_the_other_login.status_code == 200


async def test_used_links_are_forgotten_once_expired(session: AsyncSession) -> None:
    login = uuid.uuid4()
    now = datetime(2026, 12, 1, tzinfo=UTC)
    await session.execute(text(
        "INSERT INTO auth_sessions (id, principal_kind, principal_id, created_at, expires_at) "
        "VALUES (:id, 'staff', 1, :now, :until)"), {"id": login, "now": now, "until": now + timedelta(days=1)})
    grant = DownloadGrant(PrincipalKind.staff, 1, login, "nonce-under-test", now + timedelta(minutes=5))

    await redeem_download_link(session, grant=grant, now=now)
    with pytest.raises(TokenRevoked):
        await redeem_download_link(session, grant=grant, now=now)
    kept = await purge_used_download_links(session, now=now + timedelta(minutes=4))
    purged = await purge_used_download_links(session, now=now + timedelta(minutes=5))

    assert (kept, purged) == (0, 1)
