"""Tencent Cloud SMS (``SendSms``, API version 2021-01-11) over signed HTTP.

TC3-HMAC-SHA256 (TencentCloud API "Signature v3"), for a JSON POST to ``/``:

1. ``CanonicalRequest = POST \\n / \\n (empty query) \\n content-type:…\\nhost:…\\n \\n
   content-type;host \\n hex(SHA256(payload))``;
2. ``StringToSign = TC3-HMAC-SHA256 \\n timestamp \\n date/sms/tc3_request \\n
   hex(SHA256(CanonicalRequest))``, ``date`` the UTC day of ``timestamp``;
3. the key: ``HMAC(HMAC(HMAC("TC3" + SecretKey, date), "sms"), "tc3_request")``, and
   ``Signature = hex(HMAC-SHA256(key, StringToSign))``;
4. ``Authorization: TC3-HMAC-SHA256 Credential=SecretId/date/sms/tc3_request,
   SignedHeaders=content-type;host, Signature=…``, beside ``X-TC-Action``,
   ``X-TC-Timestamp``, ``X-TC-Version`` and ``X-TC-Region``.

The answer is HTTP 200 with ``{"Response": {…}}``: an ``Error`` (``Code``, ``Message``)
when the request itself was refused, otherwise a ``SendStatusSet`` with one status per
number (``Code`` ``Ok`` when accepted, ``SerialNo``, ``Fee``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from backend.auth.sms.refusals import refusal
from backend.auth.sms.settings import SmsSettings
from backend.gateways.errors import GatewayBadAnswer, GatewayUnavailable

SERVICE = "sms"
VERSION = "2021-01-11"
ACTION = "SendSms"
ALGORITHM = "TC3-HMAC-SHA256"
CONTENT_TYPE = "application/json; charset=utf-8"
SIGNED_HEADERS = "content-type;host"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def utc_date(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")


def canonical_request(*, host: str, payload: str, content_type: str = CONTENT_TYPE) -> str:
    return f"POST\n/\n\ncontent-type:{content_type}\nhost:{host}\n\n{SIGNED_HEADERS}\n{_sha256(payload)}"


def string_to_sign(*, service: str, timestamp: int, request: str) -> str:
    return f"{ALGORITHM}\n{timestamp}\n{utc_date(timestamp)}/{service}/tc3_request\n{_sha256(request)}"


def signature(secret_key: str, *, service: str, host: str, payload: str, timestamp: int,
              content_type: str = CONTENT_TYPE) -> str:
    """The hex TC3-HMAC-SHA256 signature of a JSON POST to ``/`` of ``host``."""
    key = _hmac(_hmac(_hmac(f"TC3{secret_key}".encode(), utc_date(timestamp)), service), "tc3_request")
    to_sign = string_to_sign(service=service, timestamp=timestamp,
                             request=canonical_request(host=host, payload=payload, content_type=content_type))
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def authorization(secret_id: str, secret_key: str, *, service: str, host: str, payload: str, timestamp: int) -> str:
    scope = f"{utc_date(timestamp)}/{service}/tc3_request"
    signed = signature(secret_key, service=service, host=host, payload=payload, timestamp=timestamp)
    return f"{ALGORITHM} Credential={secret_id}/{scope}, SignedHeaders={SIGNED_HEADERS}, Signature={signed}"


def e164(phone: str) -> str:
    """A mainland mobile number as Tencent wants it: +86…"""
    return phone if phone.startswith("+") else f"+86{phone}"


def send_request(settings: SmsSettings, *, phone: str, template: str, params: Sequence[str], now: datetime) -> dict[str, Any]:
    """Exactly what is sent for one SMS: the URL, the signed headers and the JSON body."""
    payload = json.dumps({
        "PhoneNumberSet": [e164(phone)],
        "SmsSdkAppId": settings.sdk_app_id or "",
        "SignName": settings.sign_name or "",
        "TemplateId": template,
        "TemplateParamSet": list(params),
    }, ensure_ascii=False, separators=(",", ":"))
    host = urlsplit(settings.endpoint).netloc
    timestamp = int(now.timestamp())
    return {
        "url": f"{settings.endpoint}/",
        "headers": {
            "Authorization": authorization(settings.access_key_id or "", settings.secret, service=SERVICE, host=host,
                                           payload=payload, timestamp=timestamp),
            "Content-Type": CONTENT_TYPE,
            "Host": host,
            "X-TC-Action": ACTION,
            "X-TC-Timestamp": str(timestamp),
            "X-TC-Version": VERSION,
            "X-TC-Region": settings.region or "",
        },
        "body": payload,
        "phone": e164(phone),
    }


def post(settings: SmsSettings, request: Mapping[str, Any]) -> dict[str, Any]:
    """The blocking call (on the gateway's thread, with requests' own timeout)."""
    response = requests.post(request["url"], data=request["body"].encode(), headers=request["headers"],
                             timeout=settings.timeout_s)
    return read_answer(response.status_code, response.text, phone=request["phone"])


def _unavailable(code: str) -> bool:
    # Trouble on Tencent's side or its API throttle: worth trying later.
    return code == "RequestLimitExceeded" or code.startswith(("InternalError", "ResourceUnavailable"))


def read_answer(status: int, text: str, *, phone: str) -> dict[str, Any]:
    """The number's accepted status (``Code`` Ok, a ``SerialNo``), or the typed failure."""
    if status >= 500:
        raise GatewayUnavailable(answer=text[:2000], detail=f"tencent answered HTTP {status}")
    try:
        answer = json.loads(text)
        response = answer["Response"]
    except (ValueError, KeyError, TypeError):
        raise GatewayBadAnswer(answer=text[:2000], detail=f"tencent answered HTTP {status} without a Response") from None
    if not isinstance(response, dict):
        raise GatewayBadAnswer(answer=answer, detail="tencent's Response is not an object")
    error = response.get("Error")
    if isinstance(error, dict):
        code = str(error.get("Code", ""))
        if _unavailable(code):
            raise GatewayUnavailable(answer=answer, detail=f"tencent {code}: {error.get('Message')}")
        raise refusal("tencent", code, str(error.get("Message", "")), answer)
    statuses = response.get("SendStatusSet")
    if status != 200 or not isinstance(statuses, list) or len(statuses) != 1 or not isinstance(statuses[0], dict):
        raise GatewayBadAnswer(answer=answer, detail="tencent's answer has no status for the number")
    sent = statuses[0]
    if sent.get("PhoneNumber") != phone:
        raise GatewayBadAnswer(answer=answer, detail="tencent's answer is for another number")
    code = str(sent.get("Code", ""))
    if code == "Ok":
        return dict(sent)
    if _unavailable(code):
        raise GatewayUnavailable(answer=answer, detail=f"tencent {code}: {sent.get('Message')}")
    raise refusal("tencent", code, str(sent.get("Message", "")), answer)
