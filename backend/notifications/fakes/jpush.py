"""The local JPush (``shuiwu fake-gateway jpush``): ``POST /v3/push`` answered as JPush's
REST API v3 does, recording what it received (the base's ``/_control/requests``;
:func:`pushed` reads the pushes out of it for tests and the demo).

- Basic auth ``app_key:master_secret`` of its settings (``SHUIWU_JPUSH_*``): anything
  else is ``401 {"error": {"code": 1004, "message": "Authen failed"}}``.
- A body that is not JSON, lacks ``platform``, ``audience`` or a notification/message, or
  names more than 1000 registration ids is ``400 {"error": {"code": 1003, ...}}``.
- Success: ``200 {"sendno": "0", "msg_id": "<n>"}``.

Its own actions (``POST /_control/next``): ``server_error`` (a 503 with code 1011, which
the push job retries) and ``unauthorized`` (a 401 whatever the credentials).
"""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

from backend.gateways.http import Answer, FakeRoute, Received, fake_gateway_app
from backend.notifications.jpush import MAX_REGISTRATION_IDS
from backend.notifications.settings import JPushSettings

ACTIONS = {"server_error": "answer 503 (code 1011, a retryable failure)",
           "unauthorized": "answer 401 whatever the credentials"}


def _error(status: int, code: int, message: str) -> Answer:
    return Answer({"error": {"code": code, "message": message}}, status)


def fake_app(settings: JPushSettings) -> Any:
    """The fake's ASGI app (``fake_gateway_app``'s Starlette: only the gateways' base names it)."""
    expected = "Basic " + base64.b64encode(
        f"{settings.app_key}:{settings.master_secret.get_secret_value()}".encode()).decode()
    numbers = itertools.count(1_000_000_001)

    async def push(received: Received) -> Answer:
        action = received.script.action if received.script is not None else None
        if action == "unauthorized" or received.headers.get("authorization") != expected:
            return _error(401, 1004, "Authen failed")
        if action == "server_error":
            return _error(503, 1011, "Server busy, please retry later")
        try:
            body = received.json()
        except ValueError:
            return _error(400, 1003, "Cannot parse message body as JSON")
        if not isinstance(body, dict) or not body.get("platform"):
            return _error(400, 1003, "Missing platform")
        audience = body.get("audience")
        if not audience:
            return _error(400, 1003, "Missing audience")
        if not body.get("notification") and not body.get("message"):
            return _error(400, 1003, "Notification and message cannot be both empty")
        ids = audience.get("registration_id", []) if isinstance(audience, dict) else []
        if len(ids) > MAX_REGISTRATION_IDS:
            return _error(400, 1003, f"registration_id count exceeds {MAX_REGISTRATION_IDS}")
        return Answer({"sendno": str(body.get("options", {}).get("sendno", 0)), "msg_id": str(next(numbers))})

    return fake_gateway_app("jpush", [FakeRoute("POST", "/v3/push", push)], actions=ACTIONS)


def pushed(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pushes the fake accepted (status 200), oldest first: ``registration_ids``,
    ``title``, ``alert``, ``extras``."""
    found = []
    for seen in requests:
        if seen["path"] != "/v3/push" or seen.get("status") != 200:
            continue
        body = seen["body"] if isinstance(seen["body"], dict) else json.loads(seen["body"])
        android = body["notification"]["android"]
        found.append({"registration_ids": body["audience"]["registration_id"], "title": android["title"],
                      "alert": android["alert"], "extras": android.get("extras", {})})
    return found
