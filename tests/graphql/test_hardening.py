"""Attacks and edge cases found in review: each pinned so it stays fixed."""

from __future__ import annotations

import asyncio
import base64
import io

import openpyxl
from openpyxl import Workbook
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.auth.service import request_login_code
from backend.clock import utcnow
from backend.db import session_factory
from backend.exports.sheets import as_text
from tests.factories import auth_policy, make_staff
from tests.graphql.client import TEST_SECRET, GraphQLClient, graphql_client
from tests.graphql.conftest import World

LOGIN = "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { errors { code } } }"
RESIDENT_LOGIN = "mutation($phone: String!, $code: String!) { residentLogin(phone: $phone, code: $code) { errors { code } } }"


def b64(text_value: str) -> str:
    return base64.b64encode(text_value.encode()).decode()


async def test_a_password_in_a_variable_of_any_name_never_reaches_the_operation_log(
    client: GraphQLClient, world: World, engine_for_module: AsyncEngine
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    secret = "Leaked-Secret-0123"

    await client.execute(
        "mutation($p: String!) { changeMyPassword(currentPassword: $p, newPassword: $p) { ok } }", {"p": secret}, token=token
    )

    async with engine_for_module.connect() as connection:
        logged = (await connection.execute(text("SELECT payload::text FROM audit_log WHERE action = 'changeMyPassword'"))).scalars().all()
    assert logged
    assert all(secret not in payload for payload in logged)
    assert all('"currentPassword": "***"' in payload for payload in logged)


async def test_parallel_password_guesses_cannot_outrun_the_lockout_and_lock_only_their_address(
    client: GraphQLClient, database_url: str, engine_for_module: AsyncEngine
) -> None:
    async with session_factory(engine_for_module)() as session, session.begin():
        victim = await make_staff(session, permissions=())

    guesses = await asyncio.gather(*[client.execute(LOGIN, {"u": victim.username, "p": f"Guess-{n}x"}) for n in range(12)])
    async with graphql_client(database_url, client_address=("198.51.100.7", 4000)) as owner:
        elsewhere = await owner.execute(LOGIN, {"u": victim.username, "p": victim.password})
    still_locked_here = await client.execute(LOGIN, {"u": victim.username, "p": victim.password})

    codes = sorted(answer["data"]["login"]["errors"][0]["code"] for answer in guesses)
    assert codes.count("INVALID_CREDENTIALS") == 5
    assert codes.count("ACCOUNT_LOCKED") == 7
    # The lock is per username and source: the owner's right password from elsewhere works.
    assert elsewhere["data"]["login"]["errors"] == []
    assert still_locked_here["data"]["login"]["errors"] == [{"code": "ACCOUNT_LOCKED"}]


async def test_parallel_code_guesses_get_five_tries_in_all(client: GraphQLClient, engine_for_module: AsyncEngine) -> None:
    phone = "13700000077"

    class Catcher:
        code = ""

        async def send_login_code(self, to: str, code: str) -> None:
            self.code = code

    catcher = Catcher()
    async with session_factory(engine_for_module)() as session, session.begin():
        await request_login_code(session, phone=phone, now=utcnow(), policy=auth_policy(TEST_SECRET), sender=catcher)
    wrong = [f"{(int(catcher.code) + n) % 1_000_000:06d}" for n in range(1, 21)]

    guesses = await asyncio.gather(*[client.execute(RESIDENT_LOGIN, {"phone": phone, "code": c}) for c in wrong])
    right = await client.execute(RESIDENT_LOGIN, {"phone": phone, "code": catcher.code})

    assert all(answer["data"]["residentLogin"]["errors"] == [{"code": "INVALID_CODE"}] for answer in guesses)
    # Twenty parallel guesses used up the code's five attempts: the right code is dead too.
    assert right["data"]["residentLogin"]["errors"] == [{"code": "INVALID_CODE"}]
    async with engine_for_module.connect() as connection:
        attempts = (await connection.execute(text("SELECT attempts FROM one_time_codes WHERE phone = :p"), {"p": phone})).scalar_one()
    assert attempts == 5


async def test_ids_and_cursors_out_of_any_range_are_typed_errors_not_internal(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    huge = b64("Role:99999999999999999999")

    node = await client.execute("query($id: ID!) { node(id: $id) { id } }", {"id": huge}, token=token)
    delete = await client.execute("mutation($id: ID!) { deleteRole(id: $id) { errors { code field } } }", {"id": huge}, token=token)
    paged = "query($c: String) { areas(after: $c) { totalCount } }"
    cursor = await client.execute(paged, {"c": b64("cursor:99999999999999999999")}, token=token)
    digits = await client.execute(paged, {"c": b64("cursor:²")}, token=token)

    assert node["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert delete["data"]["deleteRole"]["errors"] == [{"code": "NOT_FOUND", "field": "id"}]
    assert cursor["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert digits["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_a_merged_fragment_field_is_completed_with_its_own_selection(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    query = "fragment F on Viewer { menus { code } } query { viewer { ...F menus { name } } v2: viewer { ...F } }"

    result = await client.execute(query, token=token)

    assert set(result["data"]["viewer"]["menus"][0]) == {"code", "name"}
    assert set(result["data"]["v2"]["menus"][0]) == {"code"}


async def test_a_variables_default_counts_in_the_cost(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    fields = " ".join(f"a{i}: areas(first: $n) {{ edges {{ node {{ id name }} }} }}" for i in range(30))
    many = "query Many($n: Int = 1000) { " + fields + " }"

    result = await client.execute(many, token=token)

    assert result["errors"][0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"


async def test_oauth_token_refuses_nul_bytes_instead_of_crashing(client: GraphQLClient) -> None:
    answer = await client.http.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "a\x00b", "client_secret": "x"})

    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid_request"}


def test_text_that_looks_like_a_formula_is_written_as_text() -> None:
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet()
    sheet.append(as_text(sheet, ['=HYPERLINK("http://evil.example","x")', "张伟"]))
    saved = io.BytesIO()
    workbook.save(saved)
    saved.seek(0)

    cell = openpyxl.load_workbook(saved).active["A1"]

    assert cell.data_type == "s"


REFRESH = "mutation($t: String!) { refreshToken(refreshToken: $t) { tokens { refreshToken } errors { code } } }"


async def test_a_reused_refresh_token_ends_the_login_for_every_holder(client: GraphQLClient, world: World) -> None:
    login = await client.execute(
        "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { tokens { refreshToken } } }",
        {"u": world.admin.username, "p": world.admin.password},
    )
    first = login["data"]["login"]["tokens"]["refreshToken"]
    second = (await client.execute(REFRESH, {"t": first}))["data"]["refreshToken"]["tokens"]["refreshToken"]

    replayed = await client.execute(REFRESH, {"t": first})
    after = await client.execute(REFRESH, {"t": second})

    assert replayed["data"]["refreshToken"]["errors"] == [{"code": "TOKEN_INVALID"}]
    assert after["data"]["refreshToken"]["errors"] == [{"code": "TOKEN_INVALID"}]


def test_audit_payloads_hide_secrets_and_mask_identity_numbers_but_keep_codes() -> None:
    from backend.audit.service import redact

    logged = redact({"input": {"idNumber": "330102199001011234", "terminalPassword": "pw", "code": "W001", "regionCode": "3301"}})

    assert logged == {"input": {"idNumber": "3301**********1234", "terminalPassword": "***", "code": "W001", "regionCode": "3301"}}


async def test_times_outside_1900_to_2200_are_bad_input(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)

    result = await client.execute(
        "query($since: DateTime) { auditLogs(filter: {since: $since}) { totalCount } }",
        {"since": "9999-12-31T23:00:00-10:00"}, token=token,
    )

    assert result["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
