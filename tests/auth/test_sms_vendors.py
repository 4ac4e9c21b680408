"""The SMS vendors' protocols: each signature against its vendor's published example,
the settings a real sender needs (one line naming the missing one), and the senders
against the local fake, which verifies as the vendor does and refuses in its words."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.auth.errors import SmsInvalidPhone, SmsPhoneLimited, SmsRejected
from backend.auth.sms import aliyun, tencent
from backend.auth.sms.fake import FAKE_ACCESS_KEY_ID, FAKE_ACCESS_KEY_SECRET, sent_codes
from backend.auth.sms.senders import GatewaySmsSender
from backend.auth.sms.settings import SmsSettings
from backend.domain import declared_gateways, read_settings
from backend.domains import installed
from backend.errors import ErrorCode
from backend.gateways.client import GatewayClient, open_gateway
from backend.gateways.errors import GatewayBadAnswer, GatewayUnavailable
from backend.settings import SettingsError
from tests.fixtures.gateways import FakeGateways

# ---------------------------------------------------------------- published examples

# Aliyun's "RPC signature mechanism" page: DescribeRegions, AccessKey testid / testsecret.
ALIYUN_EXAMPLE = {
    "AccessKeyId": "testid", "Action": "DescribeRegions", "Format": "XML", "SignatureMethod": "HMAC-SHA1",
    "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf", "SignatureVersion": "1.0",
    "TimeStamp": "2016-02-23T12:46:24Z", "Version": "2014-05-26",
}
# TencentCloud API "Signature v3": CVM DescribeInstances at 1551113065 (the keys as published, masked).
TENCENT_PAYLOAD = '{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'


def test_aliyun_rpc_signature_matches_the_published_example() -> None:
    assert aliyun.string_to_sign("GET", ALIYUN_EXAMPLE) == (
        "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26SignatureMethod%3DHMAC-SHA1"
        "%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0"
        "%26TimeStamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26")
    assert aliyun.signature("testsecret", "GET", ALIYUN_EXAMPLE) == "CT9X0VtwR86fNWSnsc6v8YGOjuE="
    # The Signature parameter itself is never signed.
    assert aliyun.signature("testsecret", "GET", {**ALIYUN_EXAMPLE, "Signature": "x"}) == "CT9X0VtwR86fNWSnsc6v8YGOjuE="


def test_aliyun_percent_encoding_is_rfc_3986() -> None:
    assert aliyun.percent_encode("a b*c~d/e+f") == "a%20b%2Ac~d%2Fe%2Bf"
    assert aliyun.percent_encode('{"code":"1"}') == "%7B%22code%22%3A%221%22%7D"
    assert aliyun.percent_encode("水务") == "%E6%B0%B4%E5%8A%A1"


def test_tencent_tc3_signature_matches_the_published_example() -> None:
    request = tencent.canonical_request(host="cvm.tencentcloudapi.com", payload=TENCENT_PAYLOAD)
    assert request == ("POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:cvm.tencentcloudapi.com\n\n"
                       "content-type;host\n35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064")
    assert tencent.string_to_sign(service="cvm", timestamp=1551113065, request=request) == (
        "TC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\n"
        "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031")
    assert tencent.authorization("AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******", "Gu5t9xGARNpq86cd98joQYCN3*******",
                                 service="cvm", host="cvm.tencentcloudapi.com", payload=TENCENT_PAYLOAD,
                                 timestamp=1551113065) == (
        "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******/2019-02-25/cvm/tc3_request, "
        "SignedHeaders=content-type;host, Signature=2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c")


# ---------------------------------------------------------------- settings

ALIYUN_ENV = {"SHUIWU_SMS_SENDER": "aliyun", "SHUIWU_SMS_ACCESS_KEY_ID": "LTAI-id", "SHUIWU_SMS_ACCESS_KEY_SECRET": "s3cret",
              "SHUIWU_SMS_SIGN_NAME": "水务", "SHUIWU_SMS_LOGIN_TEMPLATE": "SMS_1", "SHUIWU_SMS_BINDING_TEMPLATE": "SMS_2"}
TENCENT_ENV = {**ALIYUN_ENV, "SHUIWU_SMS_SENDER": "tencent", "SHUIWU_SMS_SDK_APP_ID": "1400000000",
               "SHUIWU_SMS_REGION": "ap-guangzhou"}


def sms_settings_from(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> SmsSettings:
    for name in {*ALIYUN_ENV, *TENCENT_ENV, "SHUIWU_SMS_URL"}:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings: SmsSettings = read_settings(declared_gateways(installed())["sms"].settings)
    return settings


@pytest.mark.parametrize(("env", "missing"), [
    *((ALIYUN_ENV, name) for name in ALIYUN_ENV if name != "SHUIWU_SMS_SENDER"),
    (TENCENT_ENV, "SHUIWU_SMS_SDK_APP_ID"),
    (TENCENT_ENV, "SHUIWU_SMS_REGION"),
])
def test_a_real_sender_without_a_setting_stops_with_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], missing: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        sms_settings_from(monkeypatch, {name: value for name, value in env.items() if name != missing})
    assert str(refused.value).startswith(f"bad setting {missing}: ")
    assert f"SHUIWU_SMS_SENDER={env['SHUIWU_SMS_SENDER']}" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_sender_is_one_of_log_aliyun_tencent(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match=r"^bad setting SHUIWU_SMS_SENDER: .*'log', 'aliyun' or 'tencent'"):
        sms_settings_from(monkeypatch, {"SHUIWU_SMS_SENDER": "sms77"})


def test_log_needs_nothing_and_a_vendor_defaults_to_its_public_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    assert sms_settings_from(monkeypatch, {}).sender == "log"
    assert sms_settings_from(monkeypatch, ALIYUN_ENV).endpoint == "https://dysmsapi.aliyuncs.com"
    assert sms_settings_from(monkeypatch, TENCENT_ENV).endpoint == "https://sms.tencentcloudapi.com"
    pointed = sms_settings_from(monkeypatch, {**TENCENT_ENV, "SHUIWU_SMS_URL": "http://127.0.0.1:18930"})
    assert pointed.endpoint == "http://127.0.0.1:18930"


# ---------------------------------------------------------------- against the fake

PHONE = "13912345678"


def vendor_settings(sender: str, url: str, **overrides: Any) -> SmsSettings:
    values: dict[str, Any] = {
        "sender": sender, "url": url, "access_key_id": FAKE_ACCESS_KEY_ID, "access_key_secret": FAKE_ACCESS_KEY_SECRET,
        "sign_name": "水务", "login_template": "SMS_1", "binding_template": "SMS_2", "binding_params": "code,account",
        "timeout_s": 3.0,
        **({"sdk_app_id": "1400000000", "region": "ap-guangzhou"} if sender == "tencent" else {}),
    }
    return SmsSettings(**{**values, **overrides})


@pytest.fixture(params=["aliyun", "tencent"])
def vendor(request: pytest.FixtureRequest, fake_gateways: FakeGateways) -> Iterator[tuple[str, Any, GatewayClient]]:
    fake = fake_gateways.start("sms")
    client = open_gateway(declared_gateways(installed())["sms"], settings=vendor_settings(request.param, fake.url))
    yield request.param, fake, client
    client.close()


async def test_a_login_code_reaches_the_fake_signed_as_the_vendor_wants(vendor: tuple[str, Any, GatewayClient]) -> None:
    sender, fake, client = vendor
    await GatewaySmsSender(client).send_login_code(PHONE, "402817")
    await GatewaySmsSender(client).send_binding_code(PHONE, "551020", "0100023")

    assert [seen["status"] for seen in fake.requests()] == [200, 200]
    login, binding = sent_codes(fake.requests())
    if sender == "aliyun":
        assert login == (PHONE, {"code": "402817"})
        assert binding == (PHONE, {"code": "551020", "account": "0100023"})
    else:
        assert login == (PHONE, ["402817"])
        assert binding == (PHONE, ["551020", "0100023"])


@pytest.mark.parametrize(("action", "refusal", "code"), [
    ("insufficient_balance", SmsRejected, ErrorCode.SMS_NOT_SENT),
    ("template_invalid", SmsRejected, ErrorCode.SMS_NOT_SENT),
    ("phone_limit", SmsPhoneLimited, ErrorCode.SMS_PHONE_LIMITED),
    ("invalid_phone", SmsInvalidPhone, ErrorCode.INVALID_PHONE),
])
async def test_a_vendor_refusal_is_a_typed_error_in_chinese_and_english(
    vendor: tuple[str, Any, GatewayClient], action: str, refusal: type[SmsRejected], code: ErrorCode
) -> None:
    sender, fake, client = vendor
    fake.script(action)
    with pytest.raises(refusal) as refused:
        await GatewaySmsSender(client).send_login_code(PHONE, "402817")
    assert type(refused.value) is refusal
    assert refused.value.code == code
    assert refused.value.message and refused.value.message_en and refused.value.message != refused.value.message_en
    assert refused.value.detail is not None and refused.value.detail.startswith(f"{sender} refused: ")
    assert not refused.value.retryable


async def test_a_wrong_secret_is_refused_by_the_fake_as_by_the_vendor(fake_gateways: FakeGateways) -> None:
    fake = fake_gateways.start("sms")
    gateway = declared_gateways(installed())["sms"]
    for sender, vendor_code in (("aliyun", "SignatureDoesNotMatch"), ("tencent", "AuthFailure.SignatureFailure")):
        client = open_gateway(gateway, settings=vendor_settings(sender, fake.url, access_key_secret="not-the-secret"))
        try:
            with pytest.raises(SmsRejected) as refused:
                await GatewaySmsSender(client).send_login_code(PHONE, "402817")
        finally:
            client.close()
        assert vendor_code in (refused.value.detail or "")
    # Aliyun refuses a bad signature with HTTP 400, Tencent with 200 and a Response.Error.
    assert [seen["status"] for seen in fake.requests()] == [400, 200]


async def test_a_vendor_outage_is_unavailable_and_worth_retrying(vendor: tuple[str, Any, GatewayClient]) -> None:
    _, fake, client = vendor
    fake.script("error", status=503, body={"message": "down"})
    with pytest.raises(GatewayUnavailable) as refused:
        await GatewaySmsSender(client).send_login_code(PHONE, "402817")
    assert refused.value.retryable


def test_an_answer_for_another_number_or_without_its_id_is_not_believed() -> None:
    with pytest.raises(GatewayBadAnswer) as no_id:
        aliyun.read_answer(200, '{"Code": "OK", "Message": "OK", "RequestId": "r"}')
    assert "BizId" in (no_id.value.detail or "")
    answer = {"Response": {"SendStatusSet": [{"PhoneNumber": "+8613900000000", "Code": "Ok"}], "RequestId": "r"}}
    with pytest.raises(GatewayBadAnswer) as elsewhere:
        tencent.read_answer(200, json.dumps(answer), phone="+8613912345678")
    assert "another number" in (elsewhere.value.detail or "")


def test_the_fake_refuses_a_stale_aliyun_timestamp(fake_gateways: FakeGateways) -> None:
    fake = fake_gateways.start("sms")
    request = aliyun.send_request(vendor_settings("aliyun", fake.url), phone=PHONE, template="SMS_1", params={"code": "1"},
                                  nonce="n-1", now=datetime(2020, 1, 1).astimezone())
    answer = httpx.post(request["url"], content=request["body"].encode(), headers=request["headers"])
    assert answer.status_code == 400 and answer.json()["Code"] == "InvalidTimeStamp.Expired"


# ---------------------------------------------------------------- shuiwu check


async def test_the_check_line_names_the_sender_and_reaches_the_vendor(fake_gateways: FakeGateways, unused_port: int) -> None:
    from types import SimpleNamespace

    from backend.auth.checks import sms_reachable

    fake = fake_gateways.start("sms")
    gateway = declared_gateways(installed())["sms"]

    async def line(settings: SmsSettings) -> tuple[bool, str]:
        client = open_gateway(gateway, settings=settings)
        try:
            result = await sms_reachable(SimpleNamespace(service=lambda name: client))  # type: ignore[arg-type]
        finally:
            client.close()
        return result.ok, result.detail

    port = fake.url.rsplit(":", 1)[1]
    assert await line(SmsSettings(sender="log")) == (
        False, "SHUIWU_SMS_SENDER=log: no SMS is sent (codes go to the log), so residents cannot sign in or bind "
               "by code; log is for development and the demo only")
    assert await line(vendor_settings("aliyun", fake.url)) == (
        True, f"aliyun: http://127.0.0.1:{port} answers (4 threads, timeout 3s)")
    ok, detail = await line(vendor_settings("tencent", f"http://127.0.0.1:{unused_port}"))
    assert (ok, detail) == (False, f"tencent: cannot reach 127.0.0.1:{unused_port} (ConnectionRefusedError)")


def test_serve_with_a_real_sender_missing_a_setting_stops_at_start_in_one_line(tmp_path: Path) -> None:
    # `jobs` and `demo run` read the gateways' settings the same way (backend.cli._gateway_settings).
    env = {**os.environ, **ALIYUN_ENV, "SHUIWU_DATA_DIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).parents[2])}
    del env["SHUIWU_SMS_LOGIN_TEMPLATE"]
    env.pop("SHUIWU_DATABASE_URL", None)

    stopped = subprocess.run([sys.executable, "-m", "backend.cli", "serve"], env=env, capture_output=True, text=True,
                             timeout=60, check=False)

    assert stopped.returncode == 2
    assert stopped.stdout == ""
    assert stopped.stderr == "bad setting SHUIWU_SMS_LOGIN_TEMPLATE: must be set when SHUIWU_SMS_SENDER=aliyun\n"
    assert not (tmp_path / "pgdata").exists()  # stopped before any database was started
