"""Exports and imports take the slots /graphql's expensive operations take: a caller
already running one expensive request (here: a held slot, the admission wait 0) is
refused with RATE_LIMITED on every download and upload route, and nothing is written."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.app import create_app
from backend.audit.models import AuditEntry
from backend.db import create_engine, session_factory
from backend.graphql.limits import admission_key
from tests.factories import Staff, make_area_tree, make_staff
from tests.graphql.client import GraphQLClient, api_settings

ROUTES = [
    ("GET", "/exports/readings/realtime.xlsx"),
    ("GET", "/exports/audit-log.xlsx"),
    ("GET", "/exports/households.xlsx"),
    ("GET", "/exports/meters.xlsx"),
    ("POST", "/imports/households"),
    ("POST", "/imports/readings"),
]


@dataclass
class Setup:
    engine: AsyncEngine
    admin: Staff


@pytest.fixture(scope="module")
async def setup(database_url: str) -> AsyncIterator[Setup]:
    engine = create_engine(database_url, pool_size=1, max_overflow=1)
    async with session_factory(engine)() as session, session.begin():
        tree = await make_area_tree(session)
        admin = await make_staff(session, areas=[tree.company])
    yield Setup(engine, admin)
    await engine.dispose()


@pytest.fixture
async def app_client(database_url: str) -> AsyncIterator[tuple[GraphQLClient, object]]:
    app = create_app(api_settings(graphql_expensive_per_principal=1, graphql_admission_wait_s=0), database_url)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        yield GraphQLClient(http), app
    await app.state.engine.dispose()
    await app.state.read_engine.dispose()


async def _audit_rows(engine: AsyncEngine) -> int:
    async with session_factory(engine)() as session:
        return int((await session.execute(select(func.count()).select_from(AuditEntry))).scalar_one())


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_an_export_or_import_waits_for_its_callers_running_expensive_request(
    setup: Setup, app_client: tuple[GraphQLClient, object], method: str, path: str,
) -> None:
    client, app = app_client
    token = await client.login(setup.admin.username, setup.admin.password)
    headers = {"Authorization": f"Bearer {token}"}
    files = {"file": ("a.xlsx", b"not read")} if method == "POST" else None
    before = await _audit_rows(setup.engine)

    admission = app.state.admission  # type: ignore[attr-defined]
    async with admission.admit(admission_key(setup.admin.principal, None)):
        refused = await client.http.request(method, path, headers=headers, files=files)

    assert refused.status_code == 429, refused.text
    assert refused.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert admission.principals == 0
    assert await _audit_rows(setup.engine) == before  # nothing ran, nothing is on record
    if method == "GET":
        admitted = await client.http.request(method, path, headers=headers)
        assert admitted.status_code == 200, admitted.text
