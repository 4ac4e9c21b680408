"""The 操作日志 screen page (docs/screens/oplog.md): each of its queries, run against the
page's world, answers exactly the output the page shows.

The world is made through the real API (logins, a refused login, a role created and
given permissions, the role assigned to a user), in a database of this module's own.
The log's clock is the test's: the audit entries' time comes from
``backend.graphql.mutations.utcnow``, which answers 09:00, 09:01 … on 2026-12-01
(Asia/Shanghai), one minute per audited request, so the page's times are exact.
"""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.archives.models import AreaKind
from backend.archives.service import create_area
from backend.auth import service as auth
from backend.auth.catalog import all_permissions
from backend.auth.models import RoleKind
from backend.clock import utcnow
from backend.db import session_factory
from backend.graphql import mutations
from backend.graphql.relay import encode_id
from tests.doc_examples import examples
from tests.factories import PASSWORD, ROOT
from tests.graphql.client import graphql_client

PAGE = "docs/screens/oplog.md"
MORNING = datetime(2026, 12, 1, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))

CREATE_ROLE = """mutation($areaIds: [ID!]!) {
  createRole(input: {name: "抄表员", kind: operator, permissions: [], areaIds: $areaIds}) { role { id } errors { code } } }"""
UPDATE_ROLE = """mutation($id: ID!) {
  updateRole(id: $id, input: {permissions: ["readings:read"]}) { errors { code } } }"""
ASSIGN_ROLE = """mutation($id: ID!, $roleId: ID!) {
  updateStaffUser(id: $id, input: {roleIds: [$roleId]}) { errors { code } } }"""
WRONG_LOGIN = """mutation { login(username: "zhangsan", password: "Wr0ngPassword") { errors { code } } }"""


async def test_the_oplog_page_shows_what_the_api_answers(
    committed_engine: AsyncEngine, database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with session_factory(committed_engine)() as session, session.begin():
        company = await create_area(session, name="示范水务", kind=AreaKind.company)
        assert company.id is not None
        admins = await auth.create_role(session, actor=ROOT, name="系统管理员", kind=RoleKind.operator,
                                        permissions=all_permissions(), area_ids=[company.id], unit_id=company.id)
        assert admins.id is not None
        await auth.create_staff_user(session, actor=ROOT, username="admin", full_name="王建国", password=PASSWORD,
                                     role_ids=[admins.id], now=utcnow(), unit_id=company.id)
        clerk = await auth.create_staff_user(session, actor=ROOT, username="zhangsan", full_name="张三",
                                             password=PASSWORD, now=utcnow(), unit_id=company.id)
        assert clerk.id is not None
    minutes = itertools.count()
    monkeypatch.setattr(mutations, "utcnow", lambda: MORNING + timedelta(minutes=next(minutes)))

    async with graphql_client(database_url) as client:
        token = await client.login("admin", PASSWORD)  # 09:00
        refused = await client.execute(WRONG_LOGIN)  # 09:01
        created = await client.execute(CREATE_ROLE, {"areaIds": [encode_id("Area", company.id)]}, token=token)  # 09:02
        role_id = created["data"]["createRole"]["role"]["id"]
        granted = await client.execute(UPDATE_ROLE, {"id": role_id}, token=token)  # 09:03
        assigned = await client.execute(ASSIGN_ROLE, {"id": encode_id("StaffUser", clerk.id), "roleId": role_id},
                                        token=token)  # 09:04
        await client.login("zhangsan", PASSWORD)  # 09:05
        assert [refused["data"]["login"]["errors"], created["data"]["createRole"]["errors"],
                granted["data"]["updateRole"]["errors"], assigned["data"]["updateStaffUser"]["errors"]] == [
            [{"code": "INVALID_CREDENTIALS"}], [], [], []]

        pairs = examples(PAGE)
        assert len(pairs) == 2
        for example in pairs:
            answer = await client.execute(example.query, token=token)
            answer.pop("_status")
            assert answer == example.output, json.dumps(answer, ensure_ascii=False, indent=2)
