"""The resident app's first screens in-process against the real API: sign-in with the
SMS code (wrong code, lockout, offline), binding in two steps, Home's states (loading,
figures, failure and retry, no household) and 我的 (households, language, text size,
sign out), and the silent token rotation and the expired sign-in."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import flet as ft
import httpx
import pytest

from resident_app.api import OFFLINE, SESSION_EXPIRED, ApiError, ResidentApi, Tokens
from resident_app.shell import CONTENT_MAX_WIDTH
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
    assert len([key for key in app.control_keys() if key.startswith("home-state-")]) == 1


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
    await app.wait_for("me-empty")
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


async def bound(app: AppSession, sms: FakeGateway, household: DemoHousehold) -> None:
    """Sign in with the household's registered phone and bind it (bound at once)."""
    await sign_in(app, sms, household.phone)
    await app.fill("account-no", household.account_no)
    await app.fill("holder-name", household.name)
    await app.click("bind-submit")
    assert app.app.route == "home"


async def test_me_lists_the_households_switches_language_and_text_size_and_signs_out(
    resident_app: AppSession, sms: FakeGateway, households: list[DemoHousehold], api: LiveServer
) -> None:
    app, household = resident_app, households[2]
    await bound(app, sms, household)
    await app.navigate(1)
    assert app.app.route == "me"
    await app.wait_for(f"me-household-{household.account_no}")
    assert "当前" in app.texts()

    await app.select("me-language", "en")
    assert app.app.preferences.language == "en"
    assert "Sign out" in [control.content for control in app.controls() if control.key == "me-sign-out"]
    await app.wait_for(f"me-household-{household.account_no}")
    before = app.get("me-name").size
    await app.select("me-text-size", "larger")
    assert app.get("me-name").size == round(before * 1.3, 1)

    token = app.app.api.tokens.access_token if app.app.api.tokens else ""
    await app.click("me-sign-out")
    assert app.app.route == "sign-in"
    assert app.find("send-code").content == "Get code"
    async with httpx.AsyncClient(base_url=api.url) as http:
        after = (await http.post("/graphql", json={"query": "{ viewer { name } }"},
                                 headers={"Authorization": f"Bearer {token}"})).json()
    assert after["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_an_old_access_token_is_rotated_silently_and_a_dead_sign_in_returns_to_sign_in_remembering_the_screen(
    resident_app: AppSession, sms: FakeGateway, households: list[DemoHousehold]
) -> None:
    app, household = resident_app, households[3]
    await bound(app, sms, household)
    await app.wait_for("home-reading")
    api = app.app.api
    assert api.tokens is not None
    old = api.tokens
    api.tokens = Tokens(old.access_token, api.clock() - timedelta(seconds=1), old.refresh_token)

    viewer = await api.viewer()

    assert viewer.households[0].account_no == household.account_no
    assert api.tokens.refresh_token != old.refresh_token
    assert api.tokens.access_expires_at > api.clock()

    # The refresh token is then refused (a reused one ends the login): back to sign-in.
    api.tokens = Tokens("not-a-token", api.clock() + timedelta(minutes=5), old.refresh_token)
    await app.click("home-refresh")
    await app.wait_for("sign-in-notice")
    assert app.text("sign-in-notice") == "登录已过期, 请重新登录"
    assert app.app.return_to == "home"
    assert api.tokens is None
    # Signing in again goes back to Home (another phone: the API sends one code a minute).
    await sign_in(app, sms, "13900000107")
    assert app.app.route == "home"
    assert app.find("home-empty") is not None


async def test_the_client_maps_an_unreachable_server_and_keeps_the_apis_codes(unused_port: int, api: LiveServer) -> None:
    offline = ResidentApi(f"http://127.0.0.1:{unused_port}")
    online = ResidentApi(api.url)
    try:
        with pytest.raises(ApiError) as unreachable:
            await offline.request_login_code("13900000106")
        with pytest.raises(ApiError) as malformed:
            await online.request_login_code("1390000")
        with pytest.raises(ApiError) as signed_out:
            await online.viewer()
    finally:
        await offline.close()
        await online.close()

    assert unreachable.value.code == OFFLINE
    assert unreachable.value.text("en") == "Cannot reach the server: check your connection, then tap Retry"
    assert (malformed.value.code, malformed.value.field) == ("INVALID", "phone")
    assert malformed.value.text("zh") == malformed.value.message
    assert malformed.value.text("en") == malformed.value.message_en
    assert signed_out.value.code == SESSION_EXPIRED


async def test_at_desk_width_the_navigation_is_a_rail_beside_a_phone_wide_column(
    api: LiveServer, sms: FakeGateway, households: list[DemoHousehold]
) -> None:
    app = AppSession(api.url, width=1280, height=800)
    try:
        await bound(app, sms, households[4])
        await app.wait_for("home-reading")

        assert isinstance(app.get("navigation"), ft.NavigationRail)
        assert app.page.navigation_bar is None
        assert app.app.root.content.width == CONTENT_MAX_WIDTH
    finally:
        await app.close()
