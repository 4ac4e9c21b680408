"""The test kind of gateway, ``echo``: the notes domain sends a message to an outside
"echo service" that signs like a payment gateway, through the blocking-SDK pattern.

The protocol (what the fake checks and the client checks back):

- ``POST /echo`` with a JSON body ``{"message", "nonce"}``, HTTP basic auth
  ``app:secret`` (as JPush), and ``X-Echo-Signature``: the hex HMAC-SHA256 of the exact
  body bytes under the shared secret (as Alipay's and WeChat's signatures cover the
  exact string);
- the answer is ``{"ok": true, "echo": message, "nonce": nonce}`` or ``{"ok": false,
  "code": …}``, signed the same way; a wrong secret is a 401, unsigned.

The fake's own actions: ``refuse`` (a signed refusal) and ``bad_signature`` (the usual
answer with a signature that does not match).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import requests
from starlette.applications import Starlette

from backend.db import transaction
from backend.gateways.client import GatewayClient, service_name
from backend.gateways.errors import GatewayBadAnswer, GatewayError, GatewayRejected, GatewayUnavailable
from backend.gateways.http import Answer, FakeRoute, Received, fake_gateway_app
from backend.gateways.retry import RetryPolicy, next_retry
from backend.runtime import Runtime
from tests.sample_domain.settings import EchoSettings

SIGNATURE = "X-Echo-Signature"
DELIVERY_JOB = "notes.echo_delivery"
DELIVERY_RETRY = RetryPolicy(max_attempts=3, first_delay=timedelta(seconds=30), max_delay=timedelta(seconds=45))


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed_by(secret: str, body: bytes, signature: str | None) -> bool:
    return signature is not None and hmac.compare_digest(sign(secret, body), signature)


# --------------------------------------------------------------------------- the client


def echo_request(settings: EchoSettings, message: str, nonce: str) -> dict[str, Any]:
    """Exactly what is sent: the URL, the headers and the body text."""
    body = json.dumps({"message": message, "nonce": nonce}, ensure_ascii=False)
    secret = settings.secret.get_secret_value()
    basic = base64.b64encode(f"{settings.app}:{secret}".encode()).decode()
    return {
        "url": f"{settings.url}/echo",
        "headers": {"Authorization": f"Basic {basic}", "Content-Type": "application/json",
                    SIGNATURE: sign(secret, body.encode())},
        "body": body,
    }


def post_echo(settings: EchoSettings, request: Mapping[str, Any], nonce: str) -> dict[str, Any]:
    """The blocking "SDK" call: runs on the gateway's thread, with requests' own timeout."""
    response = requests.post(request["url"], data=request["body"].encode(), headers=request["headers"],
                             timeout=settings.timeout_s)
    if response.status_code >= 500:
        raise GatewayUnavailable(answer=response.text, detail=f"HTTP {response.status_code}")
    if response.status_code in (401, 403):
        raise GatewayRejected(answer=response.text, detail=f"credentials refused (HTTP {response.status_code})")
    if not signed_by(settings.secret.get_secret_value(), response.content, response.headers.get(SIGNATURE)):
        raise GatewayBadAnswer(answer=response.text, detail="the answer's signature does not match")
    try:
        answer = response.json()
    except ValueError:
        raise GatewayBadAnswer(answer=response.text, detail="the answer is not JSON") from None
    if not isinstance(answer, dict) or answer.get("nonce") != nonce:
        raise GatewayBadAnswer(answer=answer, detail="the answer is not for this request")
    if answer.get("ok") is not True:
        raise GatewayRejected(answer=answer, detail=str(answer.get("code")))
    return answer


async def send_echo(client: GatewayClient, message: str, *, nonce: str | None = None) -> dict[str, Any]:
    """Send ``message`` to the echo service and return its verified answer."""
    settings = client.settings
    assert isinstance(settings, EchoSettings)
    nonce = nonce or secrets.token_hex(8)
    request = echo_request(settings, message, nonce)
    return await client.call("echo", post_echo, settings, request, nonce, request=request, reference=nonce)


async def deliver(runtime: Runtime, payload: Mapping[str, Any]) -> str:
    """The deferred job ``notes.echo_delivery``: send the payload's message; on a failure
    worth retrying, defer the next attempt with backoff until the attempts are spent."""
    client = runtime.service(service_name("echo"))
    try:
        await send_echo(client, payload["message"], nonce=payload["nonce"])
    except GatewayError as failure:
        retry = next_retry(DELIVERY_RETRY, payload, dedupe_key=payload["nonce"], now=runtime.now()) if failure.retryable else None
        if retry is None:
            return "gave_up"
        async with transaction(runtime.sessions) as session:
            await runtime.defer(session, job=DELIVERY_JOB, **retry.deferral)
        return "retrying"
    return "delivered"


# --------------------------------------------------------------------------- the fake


def fake_app(settings: EchoSettings) -> Starlette:
    """The local echo service (``shuiwu fake-gateway echo``)."""
    secret = settings.secret.get_secret_value()
    credentials = "Basic " + base64.b64encode(f"{settings.app}:{secret}".encode()).decode()

    async def echo(received: Received) -> Answer:
        if not hmac.compare_digest(received.headers.get("authorization", ""), credentials):
            return Answer({"ok": False, "code": "UNAUTHORIZED"}, 401)
        if not signed_by(secret, received.body, received.headers.get(SIGNATURE.lower())):
            return signed({"ok": False, "code": "BAD_SIGNATURE", "nonce": _nonce(received)}, 400)
        request = received.json()
        if received.script is not None and received.script.action == "refuse":
            return signed({"ok": False, "code": "REFUSED", "nonce": request.get("nonce")})
        answer = signed({"ok": True, "echo": request.get("message"), "nonce": request.get("nonce")})
        if received.script is not None and received.script.action == "bad_signature":
            return Answer(answer.body, answer.status, {SIGNATURE: "0" * 64}, "application/json")
        return answer

    def signed(body: Mapping[str, Any], status: int = 200) -> Answer:
        encoded = json.dumps(body, ensure_ascii=False).encode()
        return Answer(encoded, status, {SIGNATURE: sign(secret, encoded)}, "application/json")

    return fake_gateway_app("echo", [FakeRoute("POST", "/echo", echo)], actions={
        "refuse": "answer a signed refusal ({ok: false, code: REFUSED})",
        "bad_signature": "answer as usual with a signature that does not match",
    })


def _nonce(received: Received) -> Any:
    try:
        return received.json().get("nonce")
    except (ValueError, AttributeError):
        return None
