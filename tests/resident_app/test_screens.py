"""The resident app's first screens in-process against the real API: sign-in with the
SMS code (wrong code, lockout, offline), binding in two steps, Home's states (loading,
figures, failure and retry, no household) and 我的 (households, language, text size,
sign out), and the silent token rotation and the expired sign-in."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import httpx

from resident_app.api import OFFLINE, SESSION_EXPIRED, Tokens
from tests.fixtures.gateways import FakeGateway
from tests.live import LiveServer
from tests.resident_app.conftest import CODE_ATTEMPTS_PER_DAY, DemoHousehold, last_code
from tests.resident_app.session import AppSession


async def sign_in(app: AppSession, sms: FakeGateway, phone: str) -> None:
    await app.fill("phone", phone)
    await app.click("send-code")
    await app.fill("code", last_code(sms, phone))
    await app.click("sign-in")


def yuan(fen: int) -> str:
    return f"¥{Decimal(fen) / 100:,.2f}"


async def test_sign_in_then_bind_with_the_holders_code_then_home_shows_the_households_figures(
    resident_app: AppSession, sms: FakeGateway, households: list[DemoHousehold], api: LiveServer
) -> None:
    app, household = resident_app, next(item for item in households if item.mode.startswith("prepaid"))
    await sign_in(app, sms, "13900000101")

    # Nothing bound yet: binding, step one.
    assert app.app.route == "bind"
    await app.fill("account-no", household.account_no)
    await app.fill("holder-name", household.name)
    await app.click("bind-submit")
    # Step two: the code went to the household's registered phone.
    masked = household.phone[:3] + "****" + household.phone[-4:]
    assert masked in app.text("bind-code-sent")
    await app.fill("binding-code", last_code(sms, household.phone))
    await app.click("bind-confirm")

    assert app.app.route == "home"
    await app.wait_for("home-reading")
    if household.balance_fen < 0:
        assert app.text("home-amount-due") == yuan(-household.balance_fen)
    else:
        assert app.text("home-balance") == yuan(household.balance_fen)
    assert household.account_no in app.text("home-household")
    assert app.find("home-read-at") is not None
    assert app.find("home-month-usage") is not None
    assert {key for key in app.keys() if key.startswith("home-state-")}


async def test_a_wrong_code_says_what_to_do_and_too_many_lock_sign_in(
    resident_app: AppSession, sms: FakeGateway
) -> None:
    app, phone = resident_app, "13900000102"
    await app.fill("phone", phone)
    await app.click("send-code")
    right = last_code(sms, phone)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    await app.fill("code", wrong)
    await app.click("sign-in")

    assert app.text("sign-in-message") == "验证码错误或已过期"
    assert "重新发送" in app.text("sign-in-hint")
    assert app.app.route == "sign-in"
    for _ in range(CODE_ATTEMPTS_PER_DAY - 1):
        await app.click("sign-in")
    await app.click("sign-in")

    assert app.text("sign-in-message") == "该手机号今日验证码尝试次数已达上限, 请 24 小时后再试"
    assert app.text("sign-in-hint") == "暂时无法登录: 可稍后再试, 或到营业厅办理"
    assert app.get("sign-in").disabled
    assert app.app.api.tokens is None


async def test_sign_in_with_the_server_unreachable_says_to_check_the_network(unused_port: int) -> None:
    app = AppSession(f"http://127.0.0.1:{unused_port}")
    try:
        await app.fill("phone", "13900000103")
        await app.click("send-code")

        assert app.text("sign-in-message") == "连不上服务器, 请检查网络后点重试"
        assert not app.get("send-code").disabled
    finally:
        await app.close()


async def test_binding_a_household_that_does_not_match_keeps_the_form_with_the_apis_message(
    resident_app: AppSession, sms: FakeGateway, households: list[DemoHousehold]
) -> None:
    app = resident_app
    await sign_in(app, sms, "13900000104")
    await app.fill("account-no", households[0].account_no)
    await app.fill("holder-name", "不是户主")
    await app.click("bind-submit")

    assert app.app.route == "bind"
    assert app.get("bind-message").value
    assert app.get("account-no").value == households[0].account_no
    assert not app.get("bind-submit").disabled


async def test_home_without_a_household_offers_binding_and_me_says_none_is_bound(
    resident_app: AppSession, sms: FakeGateway
) -> None:
    app = resident_app
    await sign_in(app, sms, "13900000105")
    app.app.show("home")

    assert app.find("home-empty") is not None
    assert app.find("home-loading") is None
    await app.click("home-empty-action")
    assert app.app.route == "bind"
    assert app.find("account-no") is not None
    app.app.show("me")
    assert app.find("me-loading") is not None
    assert app.text("me-empty") if await app.wait_for("me-empty") else False
    assert app.text("me-empty") == "还没有绑定户号"


async def test_home_shows_loading_then_offline_with_retry_then_the_figures(
    resident_app: AppSession, sms: FakeGateway, households: list[DemoHousehold], api: LiveServer, unused_port: int
) -> None:
    app, household = resident_app, households[1]
    await sign_in(app, sms, household.phone)  # the registered phone: bound at once
    assert app.app.route == "bind"
    await app.fill("account-no", household.account_no)
    await app.fill("holder-name", household.name)
    await app.click("bind-submit")
    assert app.app.route == "home"
    assert app.find("home-loading") is not None
    await app.wait_for("home-reading")

    await app.app.api.close()
    app.app.api.base_url = f"http://127.0.0.1:{unused_port}"
    await app.click("home-refresh")
    await app.wait_for("home-error")
    assert app.text("home-error-message") == "连不上服务器, 请检查网络后点重试"

    await app.app.api.close()
    app.app.api.base_url = api.url
    await app.click("home-error-retry")
    await app.wait_for("home-reading")
    assert app.find("home-error") is None
