"""Anonymous and auth calls are throttled: per address and in all, in-process for
anonymous requests and in PostgreSQL for logins and SMS codes (shared by every API
process); lockouts are per address; API clients' rates cover every route they call."""

from __future__ import annotations

import asyncio
import base64

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.app import create_app
from backend.auth.service import create_api_client
from backend.auth.sms import sms_sender
from backend.db import session_factory
from tests.factories import make_staff
from tests.graphql.client import GraphQLClient, api_settings, graphql_client
from tests.graphql.conftest import World

LOGIN = "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { errors { code } } }"
SEND_CODE = "mutation($phone: String!) { requestLoginCode(phone: $phone) { expiresAt errors { code } } }"
UNLOCK = "mutation($id: ID!) { unlockStaffUser(id: $id) { staffUser { username } errors { code } } }"
STRANGER = ("203.0.113.9", 4000)
OWNER = ("198.51.100.7", 4000)


async def count(engine: AsyncEngine, sql: str, **params: object) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text(sql), params)).scalar_one())


def top_level_code(answer: dict[str, object]) -> object:
    return answer["errors"][0]["extensions"]["code"]  # type: ignore[index]


async def test_login_attempts_from_one_address_are_counted_across_api_processes(
    database_url: str, engine_for_module: AsyncEngine, world: World
) -> None:
    async with (
        graphql_client(database_url, client_address=STRANGER, login_attempts_per_ip_per_minute=3) as first_process,
        graphql_client(database_url, client_address=STRANGER, login_attempts_per_ip_per_minute=3) as second_process,
        graphql_client(database_url, client_address=OWNER, login_attempts_per_ip_per_minute=3) as elsewhere,
    ):
        answers = [await api.execute(LOGIN, {"u": f"spray-{n}", "p": "Guess-123"})
                   for n, api in enumerate([first_process, second_process, first_process])]
        failures_before = await count(engine_for_module, "SELECT count(*) FROM login_failures")

        refused = await second_process.execute(LOGIN, {"u": "spray-4", "p": "Guess-123"})
        other_address = await elsewhere.execute(LOGIN, {"u": world.admin.username, "p": world.admin.password})

    assert [answer["data"]["login"]["errors"] for answer in answers] == [[{"code": "INVALID_CREDENTIALS"}]] * 3
    assert refused["data"] is None or refused["data"]["login"] is None
    assert top_level_code(refused) == "RATE_LIMITED"
    assert refused["errors"][0]["message"] == "请求过于频繁, 请稍后再试"
    assert refused["errors"][0]["extensions"]["messageEn"] == "Too many requests, try again later"
    assert await count(engine_for_module, "SELECT count(*) FROM login_failures") == failures_before
    assert other_address["data"]["login"]["errors"] == []


async def test_parallel_guesses_lock_only_their_address_and_the_owner_still_logs_in(
    database_url: str, engine_for_module: AsyncEngine, world: World
) -> None:
    async with session_factory(engine_for_module)() as session, session.begin():
        victim = await make_staff(session, permissions=())
    async with (
        graphql_client(database_url, client_address=STRANGER) as stranger,
        graphql_client(database_url, client_address=OWNER) as owner,
    ):
        guesses = await asyncio.gather(*[stranger.execute(LOGIN, {"u": victim.username, "p": f"Guess-{n}x"}) for n in range(12)])
        owner_login = await owner.execute(LOGIN, {"u": victim.username, "p": victim.password})
        stranger_right = await stranger.execute(LOGIN, {"u": victim.username, "p": victim.password})
        admin = await owner.login(world.admin.username, world.admin.password)
        unlocked = await owner.execute(UNLOCK, {"id": _global_id("StaffUser", victim.user.id)}, token=admin)
        after_unlock = await stranger.execute(LOGIN, {"u": victim.username, "p": victim.password})

    codes = sorted(answer["data"]["login"]["errors"][0]["code"] for answer in guesses)
    assert codes.count("INVALID_CREDENTIALS") == 5
    assert codes.count("ACCOUNT_LOCKED") == 7
    assert owner_login["data"]["login"]["errors"] == []
    assert stranger_right["data"]["login"]["errors"] == [{"code": "ACCOUNT_LOCKED"}]
    assert unlocked["data"]["unlockStaffUser"] == {"staffUser": {"username": victim.username}, "errors": []}
    assert after_unlock["data"]["login"]["errors"] == []
    logged = await count(engine_for_module, "SELECT count(*) FROM audit_log WHERE action = 'unlockStaffUser' AND success")
    assert logged == 1


def _global_id(type_name: str, pk: int | None) -> str:
    return base64.b64encode(f"{type_name}:{pk}".encode()).decode()


async def test_anonymous_requests_past_the_address_bucket_get_429_before_any_work(database_url: str, world: World) -> None:
    async with (
        graphql_client(database_url, client_address=STRANGER, anonymous_per_ip_per_minute=3) as stranger,
        graphql_client(database_url, client_address=OWNER, anonymous_per_ip_per_minute=3) as owner,
    ):
        admitted = [await stranger.execute("{ __typename }") for _ in range(3)]
        refused = await stranger.execute("{ __typename }")
        token_refused = await stranger.http.post("/oauth/token", data={"grant_type": "client_credentials"})
        other_address = await owner.execute("{ __typename }")
        signed_in = await owner.login(world.admin.username, world.admin.password)
        with_token = await stranger.execute("{ viewer { name } }", token=signed_in)

    assert [answer["_status"] for answer in admitted] == [200, 200, 200]
    assert refused["_status"] == 429
    assert top_level_code(refused) == "RATE_LIMITED"
    assert token_refused.status_code == 429
    assert token_refused.json()["error"] == "rate_limited"
    assert other_address["_status"] == 200
    assert with_token["_status"] == 200


async def test_anonymous_requests_from_everyone_share_one_global_bucket(database_url: str) -> None:
    app = create_app(api_settings(anonymous_per_minute=3), database_url)
    statuses = []
    for n in range(1, 5):
        transport = httpx.ASGITransport(app=app, client=(f"192.0.2.{n}", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            statuses.append((await http.post("/graphql", json={"query": "{ __typename }"})).status_code)
    await app.state.engine.dispose()

    assert statuses == [200, 200, 200, 429]


async def test_sms_codes_are_limited_per_address_and_in_all_and_a_refusal_sends_nothing(
    database_url: str, engine_for_module: AsyncEngine
) -> None:
    sent = sms_sender("log").sent
    async with (
        graphql_client(database_url, client_address=STRANGER, sms_codes_per_ip_per_minute=2, sms_codes_per_minute=3) as stranger,
        graphql_client(database_url, client_address=OWNER, sms_codes_per_ip_per_minute=2, sms_codes_per_minute=3) as owner,
    ):
        pumped = [await stranger.execute(SEND_CODE, {"phone": f"1380000010{n}"}) for n in range(3)]
        first_elsewhere = await owner.execute(SEND_CODE, {"phone": "13800000110"})
        sent_before = len(sent)
        codes_before = await count(engine_for_module, "SELECT count(*) FROM one_time_codes")
        global_refusal = await owner.execute(SEND_CODE, {"phone": "13800000111"})

    assert [answer["data"]["requestLoginCode"]["errors"] for answer in pumped[:2]] == [[], []]
    assert top_level_code(pumped[2]) == "RATE_LIMITED"
    assert first_elsewhere["data"]["requestLoginCode"]["errors"] == []
    assert top_level_code(global_refusal) == "RATE_LIMITED"
    assert len(sent) == sent_before
    assert await count(engine_for_module, "SELECT count(*) FROM one_time_codes") == codes_before
    assert await count(engine_for_module, "SELECT count(*) FROM one_time_codes WHERE phone = '13800000111'") == 0


async def _api_client(engine: AsyncEngine, world: World, *, scopes: list[str], rate_per_minute: int) -> tuple[str, str]:
    async with session_factory(engine)() as session, session.begin():
        issued = await create_api_client(
            session, actor=world.admin.principal, name="营业厅大屏", scopes=scopes,
            area_ids=[world.tree.company.id] if world.tree.company.id else [], rate_per_minute=rate_per_minute,
        )
    return issued.client.client_id, issued.secret


async def test_oauth_token_and_issue_client_token_take_from_the_clients_rate_and_a_refusal_opens_no_session(
    client: GraphQLClient, world: World, engine_for_module: AsyncEngine
) -> None:
    client_id, secret = await _api_client(engine_for_module, world, scopes=["areas:read"], rate_per_minute=2)
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}

    answers = [await client.http.post("/oauth/token", data=form) for _ in range(2)]
    sessions_before = await count(engine_for_module, "SELECT count(*) FROM auth_sessions WHERE principal_kind = 'client'")
    refused = await client.http.post("/oauth/token", data=form)
    refused_mutation = await client.execute(
        "mutation($id: String!, $s: String!) { issueClientToken(clientId: $id, clientSecret: $s) { errors { code } } }",
        {"id": client_id, "s": secret},
    )

    assert [answer.status_code for answer in answers] == [200, 200]
    assert refused.status_code == 429
    assert refused.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert top_level_code(refused_mutation) == "RATE_LIMITED"
    assert await count(engine_for_module, "SELECT count(*) FROM auth_sessions WHERE principal_kind = 'client'") == sessions_before


async def test_a_clients_rate_covers_exports_templates_and_the_audit_log_download(
    client: GraphQLClient, world: World, engine_for_module: AsyncEngine
) -> None:
    client_id, secret = await _api_client(engine_for_module, world, scopes=["archives:read"], rate_per_minute=3)
    issued = await client.http.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id,
                                                          "client_secret": secret})
    bearer = {"Authorization": f"Bearer {issued.json()['access_token']}"}

    export = await client.http.get("/exports/households.xlsx", headers=bearer)
    template = await client.http.get("/templates/meters.xlsx", headers=bearer)
    refused = await client.http.get("/exports/households.xlsx", headers=bearer)
    refused_log = await client.http.get("/exports/audit-log.xlsx", headers=bearer)

    assert (export.status_code, template.status_code) == (200, 200)
    assert refused.status_code == 429
    assert refused.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert refused_log.status_code == 429
