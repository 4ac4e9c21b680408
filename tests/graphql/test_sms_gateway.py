"""Residents' codes through a real SMS vendor's API (the local fake of each, verifying
signatures as the vendor does): a login end to end with the code read from what the
vendor was asked to send, a vendor's refusal as the resident's typed error with no code
kept, and the installation's daily SMS cap shared by two API processes."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.auth.errors import SmsDailyCapReached
from backend.auth.service import claim_sms, throttles
from backend.auth.sms.fake import FAKE_ACCESS_KEY_ID, FAKE_ACCESS_KEY_SECRET, sent_codes
from backend.auth.sms.senders import sms_sender
from backend.db import session_factory
from tests.factories import auth_policy, make_household
from tests.fixtures.gateways import FakeGateway, FakeGateways
from tests.graphql.client import TEST_SECRET, graphql_client
from tests.graphql.conftest import World

SEND_CODE = "mutation($phone: String!) { requestLoginCode(phone: $phone) { expiresAt errors { code field message messageEn } } }"
RESIDENT_LOGIN = """mutation($phone: String!, $code: String!) { residentLogin(phone: $phone, code: $code) {
  tokens { accessToken } errors { code } } }"""
BIND = """mutation($no: String!, $name: String!) { bindHousehold(accountNo: $no, name: $name) {
  binding { state codeSentTo } errors { code message messageEn } } }"""

# Today's claims in the utility's zone (the API's default, Asia/Shanghai).
TODAY_CLAIMED = "SELECT coalesce(sum(claimed), 0) FROM sms_sends WHERE day = (now() AT TIME ZONE 'Asia/Shanghai')::date"


@pytest.fixture(params=["aliyun", "tencent"])
def vendor(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
           fake_gateways: FakeGateways) -> tuple[str, FakeGateway]:
    """The API processes made in the test send through this vendor's fake."""
    fake = fake_gateways.start("sms")
    env = {"SENDER": request.param, "URL": fake.url, "ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
           "ACCESS_KEY_SECRET": FAKE_ACCESS_KEY_SECRET, "SIGN_NAME": "某某水务", "LOGIN_TEMPLATE": "SMS_480001",
           "BINDING_TEMPLATE": "SMS_480002", "SDK_APP_ID": "1400000000", "REGION": "ap-guangzhou"}
    for name, value in env.items():
        monkeypatch.setenv(f"SHUIWU_SMS_{name}", value)
    return request.param, fake


def code_sent_to(fake: FakeGateway, phone: str) -> str:
    params = next(params for to, params in reversed(sent_codes(fake.requests())) if to == phone)
    return str(params["code"] if isinstance(params, dict) else params[0])


async def codes_kept(engine: AsyncEngine, phone: str) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT count(*) FROM one_time_codes WHERE phone = :phone"),
                                             {"phone": phone})).scalar_one())


async def test_a_resident_logs_in_with_the_code_the_vendor_was_asked_to_send(
    database_url: str, vendor: tuple[str, FakeGateway]
) -> None:
    sender, fake = vendor
    phone = "13711110001" if sender == "aliyun" else "13711110002"
    async with graphql_client(database_url) as api:
        requested = await api.execute(SEND_CODE, {"phone": phone})
        code = code_sent_to(fake, phone)
        logged_in = await api.execute(RESIDENT_LOGIN, {"phone": phone, "code": code})

    assert requested["data"]["requestLoginCode"]["errors"] == []
    assert [seen["status"] for seen in fake.requests()] == [200]
    assert (sender == "tencent") == ("x-tc-action" in fake.requests()[0]["headers"])
    assert logged_in["data"]["residentLogin"]["errors"] == []
    assert logged_in["data"]["residentLogin"]["tokens"]["accessToken"]


async def test_a_vendor_refusal_is_the_residents_typed_error_and_keeps_no_code(
    database_url: str, engine_for_module: AsyncEngine, vendor: tuple[str, FakeGateway]
) -> None:
    sender, fake = vendor
    phone = "13711120001" if sender == "aliyun" else "13711120002"
    fake.script("insufficient_balance")
    async with graphql_client(database_url) as api:
        refused = await api.execute(SEND_CODE, {"phone": phone})
        kept = await codes_kept(engine_for_module, phone)
        # Nothing was kept as sent, so the resend minute is not taken: asking again works.
        again = await api.execute(SEND_CODE, {"phone": phone})

    assert "errors" not in refused
    [error] = refused["data"]["requestLoginCode"]["errors"]
    assert error["code"] == "SMS_NOT_SENT"
    assert error["message"] == "短信发送失败, 请稍后再试, 或到营业厅办理"
    assert error["messageEn"] == "The SMS could not be sent; try again later or visit the service counter"
    assert kept == 0
    assert again["data"]["requestLoginCode"]["errors"] == []
    assert await codes_kept(engine_for_module, phone) == 1


async def test_a_binding_code_the_vendor_refused_is_withdrawn_and_the_binding_waits(
    database_url: str, engine_for_module: AsyncEngine, world: World, vendor: tuple[str, FakeGateway]
) -> None:
    sender, fake = vendor
    owner_phone, tenant_phone = ("13711130001", "13711130003") if sender == "aliyun" else ("13711130002", "13711130004")
    async with session_factory(engine_for_module)() as session, session.begin():
        household = await make_household(session, area=world.tree.east_community, name="赵敏", phone=owner_phone)
    async with graphql_client(database_url) as api:
        await api.execute(SEND_CODE, {"phone": tenant_phone})
        tenant = await api.execute(RESIDENT_LOGIN, {"phone": tenant_phone, "code": code_sent_to(fake, tenant_phone)})
        api.token = tenant["data"]["residentLogin"]["tokens"]["accessToken"]
        fake.script("phone_limit")
        asked = await api.execute(BIND, {"no": household.account_no, "name": "赵敏"})
    async with engine_for_module.connect() as connection:
        codes = (await connection.execute(text("SELECT count(code_hash) FROM household_bindings WHERE household_id = :id"),
                                          {"id": household.id})).scalar_one()

    async with engine_for_module.connect() as connection:
        logged = (await connection.execute(
            text("SELECT summary, success FROM audit_log WHERE action = 'bindHousehold' AND summary LIKE :no ORDER BY id"),
            {"no": f"%{household.account_no}%"})).all()

    assert asked["data"]["bindHousehold"]["binding"] == {"state": "pending", "codeSentTo": None}
    assert [error["code"] for error in asked["data"]["bindHousehold"]["errors"]] == ["SMS_PHONE_LIMITED"]
    assert codes == 0
    # The log says the binding was made, then that its code never went out and was withdrawn.
    assert [(summary, success) for summary, success in logged] == [
        (f"住户绑定缴费号 {household.account_no}: 成功", True),
        (f"住户绑定缴费号 {household.account_no}: 短信未发出 (该手机号接收短信过于频繁, 请稍后再试), 验证码已撤回, "
         "待户主或柜台审核", False),
    ]


async def test_a_login_code_the_gateway_timed_out_on_is_kept_for_the_vendor_may_have_sent_it(
    database_url: str, engine_for_module: AsyncEngine, vendor: tuple[str, FakeGateway], monkeypatch: pytest.MonkeyPatch,
) -> None:
    sender, fake = vendor
    phone = "13711150001" if sender == "aliyun" else "13711150002"
    monkeypatch.setenv("SHUIWU_SMS_TIMEOUT_S", "0.5")
    fake.script("delay", seconds=1.5)  # the vendor got the request and answers too late
    async with graphql_client(database_url) as api:
        requested = await api.execute(SEND_CODE, {"phone": phone})
        logged_in = await api.execute(RESIDENT_LOGIN, {"phone": phone, "code": code_sent_to(fake, phone)})

    assert requested["data"]["requestLoginCode"]["errors"] == []
    assert requested["data"]["requestLoginCode"]["expiresAt"]
    assert logged_in["data"]["residentLogin"]["errors"] == []


async def test_a_double_tap_on_send_code_sends_one_sms_and_the_code_it_sent_works(
    database_url: str, vendor: tuple[str, FakeGateway],
) -> None:
    sender, fake = vendor
    phone = "13711160001" if sender == "aliyun" else "13711160002"
    fake.script("delay", seconds=1)  # the first send is still on its way when the second tap arrives
    async with graphql_client(database_url) as api:
        first = asyncio.create_task(api.execute(SEND_CODE, {"phone": phone}))
        await asyncio.sleep(0.5)
        second = await api.execute(SEND_CODE, {"phone": phone})
        answers = [await first, second]
        logged_in = await api.execute(RESIDENT_LOGIN, {"phone": phone, "code": code_sent_to(fake, phone)})

    assert answers[0]["data"]["requestLoginCode"]["errors"] == []
    assert [error["code"] for error in answers[1]["data"]["requestLoginCode"]["errors"]] == ["CODE_RATE_LIMITED"]
    assert len(sent_codes(fake.requests())) == 1
    assert logged_in["data"]["residentLogin"]["errors"] == []


async def test_the_daily_sms_cap_holds_across_two_api_processes_and_raises_an_alert(
    database_url: str, engine_for_module: AsyncEngine, world: World, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(throttles, "_cap_alerted", set())  # this process has raised no alert today
    async with session_factory(engine_for_module)() as session, session.begin():
        household = await make_household(session, area=world.tree.east_community, name="钱进", phone="13711140009")
    async with engine_for_module.connect() as connection:
        claimed = int((await connection.execute(text(TODAY_CLAIMED))).scalar_one())
    cap = claimed + 2
    sent = sms_sender("log").sent
    async with (
        graphql_client(database_url, sms_daily_cap=cap) as first_process,
        graphql_client(database_url, sms_daily_cap=cap) as second_process,
    ):
        answers = [await first_process.execute(SEND_CODE, {"phone": "13711140001"}),
                   await second_process.execute(SEND_CODE, {"phone": "13711140002"})]
        code = next(code for to, code in reversed(sent) if to == "13711140001")
        tenant = await first_process.execute(RESIDENT_LOGIN, {"phone": "13711140001", "code": code})
        sent_before = len(sent)
        with caplog.at_level(logging.ERROR, logger="shuiwu.sms"):
            over = [await second_process.execute(SEND_CODE, {"phone": "13711140003"}),
                    await first_process.execute(SEND_CODE, {"phone": "13711140004"})]
        second_process.token = tenant["data"]["residentLogin"]["tokens"]["accessToken"]
        asked = await second_process.execute(BIND, {"no": household.account_no, "name": "钱进"})

    assert [answer["data"]["requestLoginCode"]["errors"] for answer in answers] == [[], []]
    for refused in over:
        [error] = refused["data"]["requestLoginCode"]["errors"]
        assert (error["code"], error["message"]) == ("SMS_DAILY_CAP", "今日短信发送量已达上限, 请明天再试, 或到营业厅办理")
        assert error["messageEn"].startswith("Today's SMS allowance")
    # A binding still waits for the owner or the counter, with no code sent.
    assert asked["data"]["bindHousehold"] == {"binding": {"state": "pending", "codeSentTo": None}, "errors": []}
    assert len(sent) == sent_before
    assert await codes_kept(engine_for_module, "13711140003") == 0
    assert any("ALERT: the daily SMS cap" in record.getMessage() for record in caplog.records)
    async with engine_for_module.connect() as connection:
        assert (await connection.execute(text(TODAY_CLAIMED))).scalar_one() == cap


async def test_two_sessions_claiming_the_last_sms_of_the_day_at_once_get_one(engine_for_module: AsyncEngine) -> None:
    day = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # a day of its own in this database
    policy = auth_policy(TEST_SECRET, sms_daily_cap=1)
    sessions = session_factory(engine_for_module)
    async with sessions() as first, sessions() as second:
        async with first.begin():
            claimed = await claim_sms(first, now=day, policy=policy)
            # The second waits on the day's row until the first commits, then sees it spent.
            waiting = asyncio.create_task(claim_sms(second, now=day, policy=policy))
            await asyncio.sleep(0.2)
            assert not waiting.done()
        with pytest.raises(SmsDailyCapReached):
            await waiting
        await second.rollback()

    assert claimed == 1
    async with engine_for_module.connect() as connection:
        assert (await connection.execute(text("SELECT claimed FROM sms_sends WHERE day = '2026-03-01'"))).scalar_one() == 1
