"""The local SMS service (``shuiwu fake-gateway sms``): Aliyun's dysmsapi and Tencent's
SMS API on one port, answering as they do.

``POST /`` with ``X-TC-Action`` is Tencent's ``SendSms`` (TC3-HMAC-SHA256 checked from
the received headers and body), any other ``POST /`` Aliyun's RPC call (the form's
``Signature`` checked). Each refuses a wrong key, a bad signature, a stale timestamp (and
Aliyun a reused nonce), an unknown signature name or template, and a malformed number,
with the vendor's own codes and bodies. What it received is under
``/_control/requests`` (the code is in the body: Aliyun's ``TemplateParam``, Tencent's
``TemplateParamSet``).

It checks the credentials, signature name, templates and SdkAppId of its settings
(``SHUIWU_SMS_*``, as the client reads them); those not set are taken as
:data:`FAKE_ACCESS_KEY_ID` / :data:`FAKE_ACCESS_KEY_SECRET` and "any", so the fake
serves a client configured for it with no other setting. Scripted actions (``POST
/_control/next``) answer a vendor refusal in that vendor's form.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from backend.auth.sms import aliyun, tencent
from backend.auth.sms.settings import SmsSettings
from backend.gateways.http import Answer, FakeRoute, Received, fake_gateway_app

FAKE_ACCESS_KEY_ID = "fake-sms-access-key-id"
FAKE_ACCESS_KEY_SECRET = "fake-sms-access-key-secret"  # the fake's published test key

# The vendors' own answers to the scripted refusals: (Aliyun Code, Message), (Tencent Code, Message).
REFUSALS: Mapping[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "insufficient_balance": (("isv.AMOUNT_NOT_ENOUGH", "账户余额不足"),
                             ("FailedOperation.InsufficientBalanceInSmsPackage", "insufficient balance in SMS package")),
    "template_invalid": (("isv.SMS_TEMPLATE_ILLEGAL", "该账号下找不到对应模板"),
                         ("FailedOperation.TemplateIncorrectOrUnapproved", "template is not approved or not exist")),
    "phone_limit": (("isv.BUSINESS_LIMIT_CONTROL", "触发号码天级流控Permits:10"),
                    ("LimitExceeded.PhoneNumberDailyLimit", "the number of SMS messages sent from a single mobile number "
                                                            "every day exceeds the upper limit")),
    "invalid_phone": (("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号"),
                      ("InvalidParameterValue.IncorrectPhoneNumber", "incorrect number format")),
}
# Codes Tencent answers per number (in SendStatusSet) rather than for the whole request.
_TENCENT_PER_NUMBER = frozenset({"LimitExceeded.PhoneNumberDailyLimit", "InvalidParameterValue.IncorrectPhoneNumber"})
ALIYUN_MAX_SKEW_S = 15 * 60
TENCENT_MAX_SKEW_S = 5 * 60
_MOBILE = re.compile(r"^1[3-9]\d{9}$")
_AUTHORIZATION = re.compile(
    r"^TC3-HMAC-SHA256 Credential=(?P<id>[^/]+)/(?P<date>\d{4}-\d{2}-\d{2})/(?P<service>[a-z]+)/tc3_request, "
    r"SignedHeaders=(?P<headers>[a-z;-]+), Signature=(?P<signature>[0-9a-f]{64})$")


def fake_app(settings: SmsSettings) -> Any:
    """The fake's ASGI app (``fake_gateway_app``'s Starlette: only the gateways' base names it)."""
    key_id = settings.access_key_id or FAKE_ACCESS_KEY_ID
    secret = settings.secret or FAKE_ACCESS_KEY_SECRET
    templates = {template for template in (settings.login_template, settings.binding_template) if template}
    nonces: deque[str] = deque(maxlen=10_000)

    def aliyun_answer(body: Mapping[str, Any], status: int = 200) -> Answer:
        return Answer({"RequestId": str(uuid.uuid4()).upper(), **body}, status)

    def aliyun_error(code: str, message: str, status: int) -> Answer:
        return aliyun_answer({"HostId": "dysmsapi.aliyuncs.com", "Code": code, "Message": message,
                              "Recommend": "https://api.aliyun.com/troubleshoot"}, status)

    def aliyun_send(received: Received) -> Answer:
        form = dict(parse_qsl(received.text(), keep_blank_values=True))
        if form.get("Action") != aliyun.ACTION or form.get("Version") != aliyun.VERSION:
            return aliyun_error("InvalidAction.NotFound", "Specified api is not found, please check your url and method.",
                                404)
        if form.get("AccessKeyId") != key_id:
            return aliyun_error("InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404)
        if not hmac.compare_digest(form.get("Signature", ""), aliyun.signature(secret, received.method, form)):
            unsigned = {name: value for name, value in form.items() if name != "Signature"}
            return aliyun_error("SignatureDoesNotMatch", "Specified signature is not matched with our calculation. "
                                f"server string to sign is:{aliyun.string_to_sign(received.method, unsigned)}", 400)
        try:
            sent_at = datetime.strptime(form.get("Timestamp", ""), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            return aliyun_error("InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted.", 400)
        if abs(time.time() - sent_at.timestamp()) > ALIYUN_MAX_SKEW_S:
            return aliyun_error("InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.", 400)
        nonce = form.get("SignatureNonce", "")
        if nonce in nonces:
            return aliyun_error("SignatureNonceUsed", "Specified signature nonce was used already.", 400)
        nonces.append(nonce)
        if settings.sign_name and form.get("SignName") != settings.sign_name:
            return aliyun_answer({"Code": "isv.SMS_SIGNATURE_ILLEGAL", "Message": "该账号下找不到对应签名"})
        if templates and form.get("TemplateCode") not in templates:
            return aliyun_answer({"Code": "isv.SMS_TEMPLATE_ILLEGAL", "Message": "该账号下找不到对应模板"})
        try:
            params = json.loads(form.get("TemplateParam", "{}"))
        except ValueError:
            params = None
        if not isinstance(params, dict) or not all(isinstance(value, str) for value in params.values()):
            return aliyun_answer({"Code": "isv.INVALID_JSON_PARAM", "Message": "JSON参数不合法，只接受字符串值"})
        if not _MOBILE.match(form.get("PhoneNumbers", "")):
            return aliyun_answer({"Code": "isv.MOBILE_NUMBER_ILLEGAL", "Message": "非法手机号"})
        if received.script is not None:
            code, message = REFUSALS[received.script.action][0]
            return aliyun_answer({"Code": code, "Message": message})
        return aliyun_answer({"Message": "OK", "BizId": f"{secrets.randbelow(10**15):015d}^0", "Code": "OK"})

    def tencent_answer(response: Mapping[str, Any]) -> Answer:
        return Answer({"Response": {**response, "RequestId": str(uuid.uuid4())}})

    def tencent_error(code: str, message: str) -> Answer:
        return tencent_answer({"Error": {"Code": code, "Message": message}})

    def tencent_send(received: Received) -> Answer:
        headers = received.headers
        if headers.get("x-tc-action") != tencent.ACTION or headers.get("x-tc-version") != tencent.VERSION:
            return tencent_error("InvalidAction", "The action requested is invalid for this version.")
        signed = _AUTHORIZATION.match(headers.get("authorization", ""))
        if signed is None or signed["headers"] != tencent.SIGNED_HEADERS:
            return tencent_error("AuthFailure.InvalidAuthorization", "Authorization is invalid.")
        if signed["id"] != key_id:
            return tencent_error("AuthFailure.SecretIdNotFound",
                                 "The SecretId is not found, please ensure that your SecretId is correct.")
        try:
            timestamp = int(headers.get("x-tc-timestamp", ""))
        except ValueError:
            return tencent_error("InvalidParameter", "X-TC-Timestamp is not a number.")
        expected = tencent.signature(secret, service=signed["service"], host=headers.get("host", ""),
                                     payload=received.text(), timestamp=timestamp,
                                     content_type=headers.get("content-type", ""))
        if signed["date"] != tencent.utc_date(timestamp) or not hmac.compare_digest(signed["signature"], expected):
            return tencent_error("AuthFailure.SignatureFailure",
                                 "The provided credentials could not be validated. Please check your signature is correct.")
        if abs(time.time() - timestamp) > TENCENT_MAX_SKEW_S:
            return tencent_error("AuthFailure.SignatureExpire", "Signature expired. Timestamp and server time cannot "
                                 "differ by more than five minutes.")
        if signed["service"] != tencent.SERVICE or not headers.get("x-tc-region"):
            return tencent_error("InvalidParameter", "The service or the region is missing or wrong.")
        try:
            body = received.json()
            numbers = body["PhoneNumberSet"]
            params = body.get("TemplateParamSet", [])
        except (ValueError, KeyError, TypeError):
            return tencent_error("FailedOperation.FailResolvePacket", "request package parsing failed")
        if not isinstance(numbers, list) or len(numbers) != 1 or not isinstance(params, list):
            return tencent_error("FailedOperation.FailResolvePacket", "request package parsing failed")
        if settings.sdk_app_id and body.get("SmsSdkAppId") != settings.sdk_app_id:
            return tencent_error("InvalidParameterValue.SdkAppIdNotExist", "SdkAppId does not exist.")
        if settings.sign_name and body.get("SignName") != settings.sign_name:
            return tencent_error("FailedOperation.SignatureIncorrectOrUnapproved", "signature format is incorrect or "
                                 "signature is not approved")
        if templates and body.get("TemplateId") not in templates:
            return tencent_error("FailedOperation.TemplateIncorrectOrUnapproved", "template is not approved or not exist")
        number = str(numbers[0])
        code, message = "Ok", "send success"
        if not (number.startswith("+86") and _MOBILE.match(number[3:])):
            code, message = REFUSALS["invalid_phone"][1]
        elif received.script is not None:
            code, message = REFUSALS[received.script.action][1]
            if code not in _TENCENT_PER_NUMBER:
                return tencent_error(code, message)
        return tencent_answer({"SendStatusSet": [{
            "SerialNo": f"2019:{secrets.randbelow(10**19)}", "PhoneNumber": number, "Fee": 1 if code == "Ok" else 0,
            "SessionContext": "", "Code": code, "Message": message, "IsoCode": "CN"}]})

    async def send(received: Received) -> Answer:
        if "x-tc-action" in received.headers:
            return tencent_send(received)
        return aliyun_send(received)

    return fake_gateway_app("sms", [FakeRoute("POST", "/", send)], actions={
        name: f"refuse the next message as the vendor does ({codes[0][0]} / {codes[1][0]})"
        for name, codes in REFUSALS.items()
    })


def sent_codes(requests: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any] | list[Any]]]:
    """(phone, template parameters) of each SendSms request a fake received, oldest first:
    what a test or a person trying the demo reads a code from."""
    found: list[tuple[str, dict[str, Any] | list[Any]]] = []
    for seen in requests:
        if seen["path"] != "/" or seen["method"] != "POST":
            continue
        if "x-tc-action" in seen["headers"]:
            body = json.loads(seen["body"])
            found.append((body["PhoneNumberSet"][0].removeprefix("+86"), body["TemplateParamSet"]))
        else:
            form = dict(parse_qsl(seen["body"], keep_blank_values=True))
            found.append((form["PhoneNumbers"], json.loads(form["TemplateParam"])))
    return found
