"""A committed database with a small utility in it, shared by a module's GraphQL tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.archives.models import Household
from backend.auth.service import login_resident, request_login_code
from backend.clock import utcnow
from backend.db import session_factory
from tests.factories import AreaTree, Staff, auth_policy, bind_at_counter, make_area_tree, make_household, make_staff
from tests.graphql.client import TEST_SECRET, GraphQLClient, graphql_client


@dataclass
class World:
    tree: AreaTree
    admin: Staff
    east_operator: Staff
    nobody: Staff
    east_household: Household
    west_household: Household
    resident_token: str


class _CodeCatcher:
    def __init__(self) -> None:
        self.code = ""

    async def send_login_code(self, phone: str, code: str) -> None:
        self.code = code


@pytest.fixture(scope="module")
def engine_for_module(committed_engine: AsyncEngine) -> AsyncEngine:
    return committed_engine


@pytest.fixture(scope="module")
async def world(engine_for_module: AsyncEngine) -> World:
    """Admin over everything, an operator over 城东, a user with no permissions, two
    households (east and west) and a resident who bound the east one."""
    async with session_factory(engine_for_module)() as session, session.begin():
        tree = await make_area_tree(session)
        admin = await make_staff(session, areas=[tree.company])
        east_operator = await make_staff(
            session, permissions={"areas:read", "archives:read", "users:read"}, areas=[tree.east]
        )
        nobody = await make_staff(session, permissions=(), areas=())
        east_household = await make_household(session, area=tree.east_community, name="张伟")
        west_household = await make_household(session, area=tree.west_community, name="李娜")
        policy = auth_policy(TEST_SECRET)
        catcher = _CodeCatcher()
        phone = "13900000000"
        await request_login_code(session, phone=phone, now=utcnow(), policy=policy, sender=catcher)
        pair = await login_resident(session, phone=phone, code=catcher.code, now=utcnow(), policy=policy)
        await bind_at_counter(session, resident=pair.principal, household=east_household)
    return World(tree, admin, east_operator, nobody, east_household, west_household, pair.access_token)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(database_url) as api:
        yield api
