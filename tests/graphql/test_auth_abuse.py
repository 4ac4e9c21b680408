"""Anonymous and auth calls are throttled: per address and in all, in-process for
anonymous requests and in PostgreSQL for logins and SMS codes (shared by every API
process); lockouts are per address with an admin unlock; API clients' rates cover every
route they call; binding a household needs proof beyond the bill."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend import db
from backend.app import create_app
from backend.auth.service import claim_login_attempt, create_api_client
from backend.auth.sms.senders import sms_sender
from backend.clock import utcnow
from backend.db import session_factory
from backend.observability import registry
from tests.conftest import clone_database, drop_database
from tests.factories import auth_policy, make_household, make_staff
from tests.graphql.client import GraphQLClient, api_settings, graphql_client
from tests.graphql.conftest import World

LOGIN = "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { errors { code } } }"
SEND_CODE = "mutation($phone: String!) { requestLoginCode(phone: $phone) { expiresAt errors { code } } }"
UNLOCK = "mutation($id: ID!) { unlockStaffUser(id: $id) { staffUser { username } errors { code } } }"
RESIDENT_LOGIN = """mutation($phone: String!, $code: String!) { residentLogin(phone: $phone, code: $code) {
  tokens { accessToken } errors { code } } }"""
BIND = """mutation($no: String!, $name: String!) { bindHousehold(accountNo: $no, name: $name) {
  household { accountNo } binding { id state codeSentTo residentPhone } errors { code } } }"""
CONFIRM = """mutation($id: ID!, $code: String!) { confirmHouseholdBinding(id: $id, code: $code) {
  household { accountNo } binding { state } errors { code field } } }"""
REQUESTS = "{ viewer { bindingRequests { id accountNo residentPhone state } households { accountNo } } }"
DECIDE = "mutation($id: ID!) { decideHouseholdBinding(id: $id, approve: true) { binding { state } errors { code } } }"
COUNTER = "{ householdBindingRequests(first: 10) { totalCount edges { node { id accountNo } } } }"
AT_COUNTER = "mutation($id: ID!) { decideHouseholdBindingAtCounter(id: $id, approve: false) { binding { state } errors { code } } }"
STRANGER = ("203.0.113.9", 4000)
OWNER = ("198.51.100.7", 4000)
MEMO_ADDRESS = ("203.0.113.78", 4000)


async def count(engine: AsyncEngine, sql: str, **params: object) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text(sql), params)).scalar_one())


async def one_minute_ahead(margin_s: float = 5.0) -> None:
    """The limits that must hold across processes count per wall-clock minute (the API
    reads the real clock): a test that needs its attempts inside one minute waits for the
    next one when fewer than ``margin_s`` seconds are left (rarely, and at most that long)."""
    left = 60.0 - time.time() % 60.0
    if left < margin_s:
        await asyncio.sleep(left + 0.05)


def top_level_code(answer: dict[str, object]) -> object:
    return answer["errors"][0]["extensions"]["code"]  # type: ignore[index]


async def test_login_attempts_from_one_address_are_counted_across_api_processes(
    database_url: str, engine_for_module: AsyncEngine, world: World
) -> None:
    await one_minute_ahead()
    async with (
        graphql_client(database_url, client_address=STRANGER, login_attempts_per_ip_per_minute=2) as first_process,
        graphql_client(database_url, client_address=STRANGER, login_attempts_per_ip_per_minute=2) as second_process,
        graphql_client(database_url, client_address=OWNER, login_attempts_per_ip_per_minute=2) as elsewhere,
    ):
        answers = [await api.execute(LOGIN, {"u": f"spray-{n}", "p": "Guess-123"})
                   for n, api in enumerate([first_process, second_process])]
        failures_before = await count(engine_for_module, "SELECT count(*) FROM login_failures")

        refused = await first_process.execute(LOGIN, {"u": "spray-3", "p": "Guess-123"})
        other_address = await elsewhere.execute(LOGIN, {"u": world.admin.username, "p": world.admin.password})

    assert [answer["data"]["login"]["errors"] for answer in answers] == [[{"code": "INVALID_CREDENTIALS"}]] * 2
    assert refused["data"] is None or refused["data"]["login"] is None
    assert top_level_code(refused) == "RATE_LIMITED"
    assert refused["errors"][0]["message"] == "请求过于频繁, 请稍后再试"
    assert refused["errors"][0]["extensions"]["messageEn"] == "Too many requests, try again later"
    assert await count(engine_for_module, "SELECT count(*) FROM login_failures") == failures_before
    assert other_address["data"]["login"]["errors"] == []


async def test_a_login_flood_past_the_address_limit_is_audited_once_a_minute_and_counted_in_the_metrics(
    database_url: str, engine_for_module: AsyncEngine
) -> None:
    flooder = ("203.0.113.77", 4000)
    refusals_before = registry.get_sample_value("shuiwu_throttle_refusals_total", {"throttle": "login:ip"}) or 0.0
    await one_minute_ahead()
    async with graphql_client(database_url, client_address=flooder, login_attempts_per_ip_per_minute=1) as api:
        answers = [await api.execute(LOGIN, {"u": f"flood-{n}", "p": "Guess-123"}) for n in range(6)]

    assert answers[0]["data"]["login"]["errors"] == [{"code": "INVALID_CREDENTIALS"}]
    assert [top_level_code(answer) for answer in answers[1:]] == ["RATE_LIMITED"] * 5
    logged = await count(engine_for_module, "SELECT count(*) FROM audit_log WHERE ip = :ip AND action = 'login' "
                         "AND NOT success AND summary LIKE '%请求过于频繁%'", ip=flooder[0])
    assert logged == 1
    assert registry.get_sample_value("shuiwu_throttle_refusals_total", {"throttle": "login:ip"}) == refusals_before + 5


@pytest.fixture(scope="module")
def other_database_url(server_url: str, template_url: str) -> Iterator[str]:
    url = clone_database(server_url, template_url, "abuse_other")
    yield url
    drop_database(server_url, url)


async def test_an_app_does_not_refuse_from_what_another_apps_database_decided(
    database_url: str, other_database_url: str
) -> None:
    """Tests run many apps over many databases in one process: what one app learnt of its
    database's throttle rows is not taken for another's."""
    await one_minute_ahead()
    async with (
        graphql_client(database_url, client_address=MEMO_ADDRESS, login_attempts_per_ip_per_minute=1) as first,
        graphql_client(other_database_url, client_address=MEMO_ADDRESS, login_attempts_per_ip_per_minute=1) as second,
    ):
        flooded = [await first.execute(LOGIN, {"u": f"memo-{n}", "p": "Guess-123"}) for n in range(3)]
        elsewhere = await second.execute(LOGIN, {"u": "memo-0", "p": "Guess-123"})

    assert top_level_code(flooded[-1]) == "RATE_LIMITED"
    assert elsewhere["data"]["login"]["errors"] == [{"code": "INVALID_CREDENTIALS"}]


async def test_an_administrator_unlocks_a_locked_user_and_it_is_audited(
    database_url: str, engine_for_module: AsyncEngine, world: World
) -> None:
    async with session_factory(engine_for_module)() as session, session.begin():
        victim = await make_staff(session, permissions=())
    for _ in range(5):
        async with session_factory(engine_for_module)() as session, session.begin():
            await claim_login_attempt(session, username=victim.username, now=utcnow(), policy=auth_policy("x" * 32), ip=STRANGER[0])
    async with (
        graphql_client(database_url, client_address=STRANGER) as stranger,
        graphql_client(database_url, client_address=OWNER) as desk,
    ):
        locked = await stranger.execute(LOGIN, {"u": victim.username, "p": victim.password})
        admin = await desk.login(world.admin.username, world.admin.password)
        unlocked = await desk.execute(UNLOCK, {"id": _global_id("StaffUser", victim.user.id)}, token=admin)
        after_unlock = await stranger.execute(LOGIN, {"u": victim.username, "p": victim.password})

    assert locked["data"]["login"]["errors"] == [{"code": "ACCOUNT_LOCKED"}]
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


async def test_an_anonymous_caller_past_its_bucket_is_refused_before_its_request_is_looked_at(database_url: str) -> None:
    async with graphql_client(database_url, client_address=STRANGER, anonymous_per_ip_per_minute=1) as stranger:
        first = await stranger.execute("{ __typename }")
        # Neither the body limit (413) nor the content type (415) is checked for a caller
        # the gate refuses: a flood costs a bucket lookup, not the stack behind it.
        oversized = await stranger.http.post("/graphql", content=b"{}", headers={"Content-Length": str(50 * 1024 * 1024)})
        plain_text = await stranger.http.post("/graphql", content=b"{}", headers={"Content-Type": "text/plain"})

    assert first["_status"] == 200
    assert [oversized.status_code, plain_text.status_code] == [429, 429]
    assert oversized.headers["retry-after"] == "60"
    assert oversized.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"


async def test_an_anonymous_refusal_is_answered_late_without_holding_up_anything_else(database_url: str) -> None:
    async with graphql_client(database_url, client_address=STRANGER, anonymous_per_ip_per_minute=1,
                              anonymous_refusal_delay_s=0.3) as flooder:
        await flooder.execute("{ __typename }")

        async def refused() -> tuple[int, float]:
            started = time.perf_counter()
            answer = await flooder.execute("{ __typename }")
            return answer["_status"], time.perf_counter() - started

        async def health() -> tuple[int, float]:
            started = time.perf_counter()
            response = await flooder.http.get("/healthz")
            return response.status_code, time.perf_counter() - started

        (status, refused_after), (health_status, health_after) = await asyncio.gather(refused(), health())

    # A client looping as fast as it is answered waits out the delay on each refusal; the
    # delay is a timer, so the same server answers everything else meanwhile.
    assert (status, health_status) == (429, 200)
    assert refused_after >= 0.3
    assert health_after < 0.3


async def test_requests_with_a_made_up_token_are_throttled_as_anonymous_and_take_no_connection(
    database_url: str, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked_out: list[object] = []
    real_raw_read = db.raw_read
    monkeypatch.setattr(db, "raw_read", lambda engine: checked_out.append(engine) or real_raw_read(engine))
    junk = ["junk", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"]
    async with graphql_client(database_url, client_address=STRANGER, anonymous_per_ip_per_minute=3) as stranger:
        refused = [await stranger.execute("{ viewer { name } }", token=junk[n % 2]) for n in range(3)]
        not_bearer = await stranger.http.post("/graphql", json={"query": "{ __typename }"},
                                              headers={"Authorization": "Basic bm9ib2R5Om5vdGhpbmc="})
        throttled = await stranger.execute("{ viewer { name } }", token="junk")

    assert [answer["_status"] for answer in refused] == [401, 401, 401]
    assert {top_level_code(answer) for answer in refused} == {"UNAUTHENTICATED"}
    assert not_bearer.status_code == 429
    assert throttled["_status"] == 429
    assert top_level_code(throttled) == "RATE_LIMITED"
    assert checked_out == []


async def test_a_download_with_a_made_up_token_takes_no_connection(
    client: GraphQLClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked_out: list[object] = []
    real_raw_read = db.raw_read
    monkeypatch.setattr(db, "raw_read", lambda engine: checked_out.append(engine) or real_raw_read(engine))

    refused = await client.http.get("/exports/households.xlsx", headers={"Authorization": "Bearer junk"})

    assert refused.status_code == 401
    assert refused.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert checked_out == []


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
    await one_minute_ahead()
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


# --------------------------------------------------------------------------- binding a household
# What the bill prints is not enough (README's resident steps plus the proof).


async def resident_token(client: GraphQLClient, phone: str) -> str:
    assert (await client.execute(SEND_CODE, {"phone": phone}))["data"]["requestLoginCode"]["errors"] == []
    code = next(code for to, code in reversed(sms_sender("log").sent) if to == phone)
    answer = await client.execute(RESIDENT_LOGIN, {"phone": phone, "code": code})
    token: str = answer["data"]["residentLogin"]["tokens"]["accessToken"]
    return token


async def test_a_tenant_binds_with_the_code_from_the_registered_phone_or_the_owners_approval(
    client: GraphQLClient, world: World, engine_for_module: AsyncEngine
) -> None:
    async with session_factory(engine_for_module)() as session, session.begin():
        household = await make_household(session, area=world.tree.east_community, name="王芳", phone="13600000001")
    owner = await resident_token(client, "13600000001")
    tenant = await resident_token(client, "13600000002")
    family = await resident_token(client, "13600000003")
    bill = {"no": household.account_no, "name": "王芳"}

    owned = await client.execute(BIND, bill, token=owner)
    by_code = await client.execute(BIND, bill, token=family)
    code = next(code for to, code in reversed(sms_sender("log").sent) if to == "13600000001")
    confirmed = await client.execute(CONFIRM, {"id": by_code["data"]["bindHousehold"]["binding"]["id"], "code": code}, token=family)
    asked = await client.execute(BIND, bill, token=tenant)
    seen_by_owner = await client.execute(REQUESTS, token=owner)
    tenant_before = await client.execute(REQUESTS, token=tenant)
    approved = await client.execute(DECIDE, {"id": asked["data"]["bindHousehold"]["binding"]["id"]}, token=owner)
    tenant_after = await client.execute(REQUESTS, token=tenant)

    assert owned["data"]["bindHousehold"]["household"] == {"accountNo": household.account_no}
    assert owned["data"]["bindHousehold"]["binding"]["state"] == "active"
    assert by_code["data"]["bindHousehold"]["household"] is None
    assert by_code["data"]["bindHousehold"]["binding"]["state"] == "pending"
    assert by_code["data"]["bindHousehold"]["binding"]["codeSentTo"] == "136****0001"
    assert confirmed["data"]["confirmHouseholdBinding"]["household"] == {"accountNo": household.account_no}
    assert [(r["accountNo"], r["residentPhone"]) for r in seen_by_owner["data"]["viewer"]["bindingRequests"]] == [
        (household.account_no, "136****0002"),
    ]
    assert tenant_before["data"]["viewer"]["households"] == []
    assert approved["data"]["decideHouseholdBinding"] == {"binding": {"state": "active"}, "errors": []}
    assert tenant_after["data"]["viewer"]["households"] == [{"accountNo": household.account_no}]
    async with engine_for_module.connect() as connection:
        states = (await connection.execute(text(
            "SELECT payload->>'state' FROM domain_events WHERE kind = 'household.bound' AND key = :key ORDER BY id"
        ), {"key": f"household:{household.id}"})).scalars().all()
    assert states == ["active", "pending", "active", "pending", "active"]


async def test_the_counter_sees_and_decides_only_requests_in_its_scope(
    client: GraphQLClient, world: World, engine_for_module: AsyncEngine
) -> None:
    async with session_factory(engine_for_module)() as session, session.begin():
        household = await make_household(session, area=world.tree.west_community, name="赵强")
    tenant = await resident_token(client, "13600000004")
    asked = await client.execute(BIND, {"no": household.account_no, "name": "赵强"}, token=tenant)
    binding_id = asked["data"]["bindHousehold"]["binding"]["id"]
    admin = await client.login(world.admin.username, world.admin.password)

    listed = await client.execute(COUNTER, token=admin)
    rejected = await client.execute(AT_COUNTER, {"id": binding_id}, token=admin)
    again = await client.execute(AT_COUNTER, {"id": binding_id}, token=admin)

    assert asked["data"]["bindHousehold"]["binding"]["codeSentTo"] is None
    assert binding_id in [edge["node"]["id"] for edge in listed["data"]["householdBindingRequests"]["edges"]]
    assert rejected["data"]["decideHouseholdBindingAtCounter"] == {"binding": {"state": "rejected"}, "errors": []}
    assert again["data"]["decideHouseholdBindingAtCounter"]["errors"] == [{"code": "NOT_FOUND"}]
    assert (await client.execute(REQUESTS, token=tenant))["data"]["viewer"]["households"] == []


async def test_binding_requests_count_against_the_sms_limits_and_the_code_goes_out_after_the_commit(
    database_url: str, engine_for_module: AsyncEngine, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with session_factory(engine_for_module)() as session, session.begin():
        households = [await make_household(session, area=world.tree.east_community, name="钱多", phone=f"1350000002{n}")
                      for n in range(3)]
    sender = sms_sender("log")
    send = sender.send_binding_code
    bindings_seen_by_others: list[int] = []

    async def send_and_look(phone: str, code: str, account_no: str) -> None:
        # Another connection sees the binding only once its transaction has committed.
        bindings_seen_by_others.append(await count(
            engine_for_module,
            "SELECT count(*) FROM household_bindings b JOIN households h ON h.id = b.household_id WHERE h.account_no = :no",
            no=account_no,
        ))
        await send(phone, code, account_no)

    monkeypatch.setattr(sender, "send_binding_code", send_and_look)
    all_sms = "SELECT coalesce(sum(hits), 0) FROM auth_throttle WHERE key = 'sms:all'"
    await one_minute_ahead()
    async with (
        graphql_client(database_url, client_address=("192.0.2.60", 4000)) as login_desk,
        graphql_client(database_url, client_address=("192.0.2.61", 4000), sms_codes_per_ip_per_minute=2) as pump,
    ):
        token = await resident_token(login_desk, "13500000030")
        all_before = await count(engine_for_module, all_sms)
        answers = [await pump.execute(BIND, {"no": household.account_no, "name": "钱多"}, token=token)
                   for household in households]
        all_after = await count(engine_for_module, all_sms)

    assert [answer["data"]["bindHousehold"]["errors"] for answer in answers[:2]] == [[], []]
    assert top_level_code(answers[2]) == "RATE_LIMITED"
    assert all_after - all_before == 2
    assert bindings_seen_by_others == [1, 1]
    assert await count(engine_for_module, "SELECT count(*) FROM household_bindings WHERE household_id = :id",
                       id=households[2].id) == 0
