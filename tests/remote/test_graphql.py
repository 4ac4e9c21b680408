"""Remote control over GraphQL: commands for a selection behind the permission and the
execution password (a wrong one refused, counted and finally locking it), progress by
batch, the catalog, and patrol tasks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.auth.models import PrincipalKind
from backend.auth.service.policy import AuthPolicy
from backend.auth.service.sessions import _open_session
from backend.clock import utcnow
from backend.graphql.relay import encode_id
from backend.remote import passwords
from tests.factories import ROOT, Staff, make_staff
from tests.graphql.client import GraphQLClient, api_settings, graphql_client
from tests.remote.support import REMOTE, World, make_world
from tests.workorders.support import staff_member

EXECUTION = "Exec-2468"

CLOSE = """mutation($selection: RemoteSelectionInput!, $password: String!) {
  closeValves(selection: $selection, executionPassword: $password, timeLimitS: 45) {
    batchId commands { id kind state timeLimitS meterCode issuedByName } skipped { code reason }
    errors { field code message } } }"""
PROGRESS = """query($batch: String!) { remoteCommands(filter: {batchId: $batch}) { totalCount
  edges { node { kind state meterCode } } } }"""
CATALOG = """{ commandCatalog { targetKind title commands { code name needsValve
  params { name title type unit description minimum maximum required } } } }"""
UNLOCK = """mutation($user: ID!) { unlockExecutionPassword(userId: $user) { status { locked failedAttempts }
  errors { code } } }"""
CREATE_TASK = """mutation($input: PatrolTaskInput!) { createPatrolTask(input: $input) {
  patrolTask { id name schedule enabled meterIds } errors { field code } } }"""
DISABLE_TASK = """mutation($id: ID!) { disablePatrolTask(id: $id) { patrolTask { enabled } errors { code } } }"""
TASKS = """{ patrolTasks { totalCount edges { node { name enabled } } } }"""
RUNS = """query($task: ID) { patrolRuns(taskId: $task) { totalCount edges { node { state successRate } } } }"""
SET_PASSWORD = """mutation($login: String!, $new: String!) { setExecutionPassword(loginPassword: $login, newPassword: $new) {
  status { locked } errors { field code } } }"""


@dataclass
class Setup:
    world: World
    operator: Staff  # remote permissions over the east, with an execution password
    guesser: Staff  # the same, to be locked out
    reader: Staff  # remote:read only; the one with a login password
    admin: Staff  # users:manage and patrols over the company
    tokens: dict[str, str]  # by role above


async def _token(session: AsyncSession, staff: Staff) -> str:
    # A session opened directly: an argon2 login costs ~0.15 s of a shared CPU each.
    pair = await _open_session(session, kind=PrincipalKind.staff, principal_id=staff.principal.id, now=utcnow(),
                               policy=AuthPolicy.from_settings(api_settings()), with_refresh=False, ip=None,
                               user_agent=None)
    return pair.access_token


@pytest.fixture(scope="module")
async def setup(committed_sessions: async_sessionmaker[AsyncSession]) -> Setup:
    async with committed_sessions() as session, session.begin():
        world = await make_world(session)
        east = world.tree.east
        operator = await staff_member(session, permissions=REMOTE, area=east)
        guesser = await staff_member(session, permissions=REMOTE, area=east)
        reader = await make_staff(session, permissions={"remote:read"}, areas=[east])
        admin = await staff_member(session, permissions={"users:manage", "patrols:manage", "patrols:read", *REMOTE},
                                   area=world.tree.company)
        for staff in (operator, guesser):
            await passwords.reset_execution_password(session, actor=ROOT, staff_user_id=staff.principal.id,
                                                     new_password=EXECUTION, now=utcnow())
        people = {"operator": operator, "guesser": guesser, "reader": reader, "admin": admin}
        tokens = {name: await _token(session, staff) for name, staff in people.items()}
    return Setup(world, operator, guesser, reader, admin, tokens)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(database_url) as api:
        yield api


def _meters(*ids: int | None) -> dict[str, Any]:
    return {"meterIds": [encode_id("Meter", i or 0) for i in ids]}


async def _count(sessions: async_sessionmaker[AsyncSession], sql: str) -> int:
    async with sessions() as session:
        return int((await session.execute(text(sql))).scalar_one())


async def test_close_valves_queues_a_batch_whose_progress_is_a_query(client: GraphQLClient, setup: Setup) -> None:
    token = setup.tokens["operator"]
    meters = setup.world.east_valve_meters

    result = await client.execute(CLOSE, {"selection": _meters(meters[0].id, meters[1].id), "password": EXECUTION},
                                  token=token)

    payload = result["data"]["closeValves"]
    assert payload["errors"] == []
    assert [(c["kind"], c["state"], c["timeLimitS"], c["issuedByName"]) for c in payload["commands"]] == [
        ("valve_close", "queued", 45, setup.operator.user.full_name)] * 2
    progress = await client.execute(PROGRESS, {"batch": payload["batchId"]}, token=token)
    assert progress["data"]["remoteCommands"]["totalCount"] == 2


async def test_a_wrong_execution_password_is_refused_counted_and_the_fifth_locks_it_until_unlocked(
        client: GraphQLClient, setup: Setup, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    token = setup.tokens["guesser"]
    selection = _meters(setup.world.east_valve_meters[2].id)
    commands_before = await _count(committed_sessions, "SELECT count(*) FROM remote_commands")

    wrong = [await client.execute(CLOSE, {"selection": selection, "password": "guess-123"}, token=token)
             for _ in range(5)]
    locked = await client.execute(CLOSE, {"selection": selection, "password": EXECUTION}, token=token)

    assert [r["data"]["closeValves"]["errors"][0]["code"] for r in wrong] == ["EXECUTION_PASSWORD_WRONG"] * 5
    assert wrong[0]["data"]["closeValves"]["errors"][0]["field"] == "executionPassword"
    assert "4" in wrong[0]["data"]["closeValves"]["errors"][0]["message"]
    assert locked["data"]["closeValves"]["errors"][0]["code"] == "EXECUTION_PASSWORD_LOCKED"
    assert await _count(committed_sessions, "SELECT count(*) FROM remote_commands") == commands_before
    refused = await _count(committed_sessions, "SELECT count(*) FROM audit_log WHERE action = 'closeValves' "
                                               f"AND NOT success AND actor_id = {setup.guesser.user.id}")
    assert refused == 6
    assert await _count(committed_sessions, "SELECT count(*) FROM audit_log WHERE action = 'lockExecutionPassword' "
                                            f"AND actor_id = {setup.guesser.user.id}") == 1

    admin = setup.tokens["admin"]
    unlocked = await client.execute(UNLOCK, {"user": encode_id("StaffUser", setup.guesser.user.id or 0)}, token=admin)
    again = await client.execute(CLOSE, {"selection": selection, "password": EXECUTION}, token=token)

    assert unlocked["data"]["unlockExecutionPassword"] == {"status": {"locked": False, "failedAttempts": 0},
                                                           "errors": []}
    assert again["data"]["closeValves"]["errors"] == []


async def test_a_checked_meter_without_a_valve_is_refused_and_the_range_mode_skips_it(
        client: GraphQLClient, setup: Setup) -> None:
    token = setup.tokens["operator"]
    world = setup.world

    checked = await client.execute(CLOSE, {"selection": _meters(world.east_plain_meter.id), "password": EXECUTION},
                                   token=token)
    ranged = await client.execute(CLOSE, {"selection": {"concentratorIds": [
        encode_id("Concentrator", world.east_concentrator.id or 0)]}, "password": EXECUTION}, token=token)

    assert [(e["field"], e["code"]) for e in checked["data"]["closeValves"]["errors"]] == [
        ("meterIds", "REMOTE_METER_HAS_NO_VALVE")]
    assert len(ranged["data"]["closeValves"]["commands"]) == 3
    assert [s["code"] for s in ranged["data"]["closeValves"]["skipped"]] == [world.east_plain_meter.code]


async def test_a_user_without_the_permission_is_refused_before_the_password_is_asked(
        client: GraphQLClient, setup: Setup) -> None:
    token = setup.tokens["reader"]

    result = await client.execute(CLOSE, {"selection": _meters(setup.world.east_valve_meters[0].id),
                                          "password": EXECUTION}, token=token)

    assert [e["extensions"]["code"] for e in result["errors"]] == ["FORBIDDEN"]


async def test_the_catalog_gives_each_commands_parameters_with_unit_and_range(client: GraphQLClient,
                                                                             setup: Setup) -> None:
    token = setup.tokens["reader"]

    result = await client.execute(CATALOG, token=token)

    assert "errors" not in result, result
    targets = {t["targetKind"]: t for t in result["data"]["commandCatalog"]}
    set_params = next(c for c in targets["meter"]["commands"] if c["code"] == "set_params")
    assert set_params["name"] == "设置参数"
    assert set_params["params"][0] == {"name": "settlement_day", "title": "结算日", "type": "integer", "unit": "日",
                                       "description": "1-28", "minimum": "1", "maximum": "28", "required": False}
    switch = next(c for c in targets["concentrator"]["commands"] if c["code"] == "remote_switch")
    assert [p["title"] for p in switch["params"]] == ["遥控点端口号", "遥控状态"]


async def test_set_execution_password_needs_the_login_password(client: GraphQLClient, setup: Setup) -> None:
    token = setup.tokens["reader"]

    wrong = await client.execute(SET_PASSWORD, {"login": "not-my-login-1", "new": "Fresh-2026"}, token=token)
    right = await client.execute(SET_PASSWORD, {"login": setup.reader.password, "new": "Fresh-2026"}, token=token)

    assert wrong["data"]["setExecutionPassword"]["errors"] == [{"field": "loginPassword", "code": "INVALID_CREDENTIALS"}]
    assert right["data"]["setExecutionPassword"] == {"status": {"locked": False}, "errors": []}


async def test_a_patrol_task_is_created_listed_and_disabled(client: GraphQLClient, setup: Setup) -> None:
    token = setup.tokens["admin"]
    task_input = {"name": "城东每日巡测", "schedule": "0 2 * * *", **_meters(setup.world.east_valve_meters[0].id)}

    created = await client.execute(CREATE_TASK, {"input": task_input}, token=token)
    bad = await client.execute(CREATE_TASK, {"input": {**task_input, "schedule": "daily"}}, token=token)
    task = created["data"]["createPatrolTask"]["patrolTask"]
    disabled = await client.execute(DISABLE_TASK, {"id": task["id"]}, token=token)
    listed = await client.execute(TASKS, token=token)
    runs = await client.execute(RUNS, {"task": task["id"]}, token=token)

    assert (task["name"], task["enabled"]) == ("城东每日巡测", True)
    assert bad["data"]["createPatrolTask"]["errors"] == [{"field": "schedule", "code": "PATROL_SCHEDULE_INVALID"}]
    assert disabled["data"]["disablePatrolTask"] == {"patrolTask": {"enabled": False}, "errors": []}
    assert {"name": "城东每日巡测", "enabled": False} in [e["node"] for e in listed["data"]["patrolTasks"]["edges"]]
    assert runs["data"]["patrolRuns"] == {"totalCount": 0, "edges": []}
