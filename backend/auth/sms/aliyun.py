"""Aliyun SMS (dysmsapi ``SendSms``, API version 2017-05-25) over signed HTTP.

The RPC signature (Aliyun's "RPC signature mechanism", SignatureVersion 1.0):

1. every parameter, common ones included and ``Signature`` excluded, percent-encoded as
   RFC 3986 with UTF-8 (unreserved ``A–Z a–z 0–9 - _ . ~`` kept, a space as ``%20``,
   ``*`` as ``%2A``), sorted by name, joined as ``name=value`` with ``&``: the
   canonicalized query string;
2. ``StringToSign = METHOD & percentEncode("/") & percentEncode(canonicalized query)``;
3. ``Signature = Base64(HMAC-SHA1(AccessKeySecret + "&", StringToSign))``.

The request is a form-encoded POST to the endpoint's ``/``. The answer is JSON: ``Code``
``OK`` with a ``BizId`` when the message was accepted, otherwise ``Code`` and
``Message`` (business refusals with HTTP 200; authentication failures with 4xx).
The fake (``backend.auth.sms.fake``) runs the same functions from the other side.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import requests

from backend.auth.sms.refusals import refusal
from backend.auth.sms.settings import ALIYUN_DEFAULT_REGION, SmsSettings
from backend.gateways.errors import GatewayBadAnswer, GatewayUnavailable

VERSION = "2017-05-25"
ACTION = "SendSms"


def percent_encode(value: str) -> str:
    """RFC 3986 percent-encoding of the UTF-8 bytes: only ``A–Z a–z 0–9 - _ . ~`` stay."""
    return quote(value, safe="-_.~")


def canonical_query(parameters: Mapping[str, str]) -> str:
    """The parameters sorted by name, each ``encoded name=encoded value``, joined by ``&``."""
    return "&".join(f"{percent_encode(name)}={percent_encode(parameters[name])}" for name in sorted(parameters))


def string_to_sign(method: str, parameters: Mapping[str, str]) -> str:
    return f"{method}&{percent_encode('/')}&{percent_encode(canonical_query(parameters))}"


def signature(secret: str, method: str, parameters: Mapping[str, str]) -> str:
    """Base64 of the HMAC-SHA1 of the string to sign under ``secret&`` (``Signature`` itself left out)."""
    unsigned = {name: value for name, value in parameters.items() if name != "Signature"}
    digest = hmac.new(f"{secret}&".encode(), string_to_sign(method, unsigned).encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC, as Aliyun wants it: ``2026-12-07T06:30:00Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def send_request(settings: SmsSettings, *, phone: str, template: str, params: Mapping[str, str], nonce: str,
                 now: datetime) -> dict[str, Any]:
    """Exactly what is sent for one SMS: the URL, the headers and the signed form body."""
    parameters = {
        "AccessKeyId": settings.access_key_id or "",
        "Action": ACTION,
        "Format": "JSON",
        "PhoneNumbers": phone,
        "RegionId": settings.region or ALIYUN_DEFAULT_REGION,
        "SignName": settings.sign_name or "",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": nonce,
        "SignatureVersion": "1.0",
        "TemplateCode": template,
        "TemplateParam": json.dumps(dict(params), ensure_ascii=False, separators=(",", ":")),
        "Timestamp": timestamp(now),
        "Version": VERSION,
    }
    parameters["Signature"] = signature(settings.secret, "POST", parameters)
    return {
        "url": f"{settings.endpoint}/",
        "headers": {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "Accept": "application/json"},
        "body": canonical_query(parameters),
    }


def post(settings: SmsSettings, request: Mapping[str, Any]) -> dict[str, Any]:
    """The blocking call (on the gateway's thread, with requests' own timeout)."""
    response = requests.post(request["url"], data=request["body"].encode(), headers=request["headers"],
                             timeout=settings.timeout_s)
    return read_answer(response.status_code, response.text)


# Aliyun's codes for trouble on its side or a momentary throttle: worth trying later.
_UNAVAILABLE = frozenset({"isp.SYSTEM_ERROR", "Throttling", "Throttling.User", "Throttling.Api", "ServiceUnavailable",
                          "InternalError", "isv.SYSTEM_ERROR"})


def read_answer(status: int, text: str) -> dict[str, Any]:
    """The accepted answer (``Code`` OK, a ``BizId``), or the typed failure it says."""
    if status >= 500:
        raise GatewayUnavailable(answer=text[:2000], detail=f"aliyun answered HTTP {status}")
    try:
        answer = json.loads(text)
    except ValueError:
        raise GatewayBadAnswer(answer=text[:2000], detail=f"aliyun answered HTTP {status} with no JSON") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("Code"), str):
        raise GatewayBadAnswer(answer=answer, detail="aliyun's answer has no Code")
    code = answer["Code"]
    if code == "OK" and status == 200:
        if not answer.get("BizId"):
            raise GatewayBadAnswer(answer=answer, detail="aliyun accepted the message without a BizId")
        return answer
    if code in _UNAVAILABLE:
        raise GatewayUnavailable(answer=answer, detail=f"aliyun {code}: {answer.get('Message')}")
    raise refusal("aliyun", code, str(answer.get("Message", "")), answer)
