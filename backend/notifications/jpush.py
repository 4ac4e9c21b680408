"""Calling JPush's ``POST /v3/push`` through the jpush SDK 3.4 on the ``jpush`` gateway's
threads (docs/gateways.md, docs/notifications.md).

The SDK reads its base URL from ``jpush.common.ZONES`` on each call: each configured URL
gets a zone of its own (``SHUIWU_<hash>``), so the fake and the real API are the same
code path. The SDK swallows transport errors into its own exceptions; they are
translated here: a 401 or another 4xx is ``GatewayRejected`` (never retried), a 5xx or
a lost connection ``GatewayUnavailable``, a connect timeout ``GatewayTimeout``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import jpush
from jpush import common

from backend.gateways.errors import GatewayRejected, GatewayTimeout, GatewayUnavailable
from backend.notifications.settings import JPushSettings

# JPush's limit of registration ids in one audience.
MAX_REGISTRATION_IDS = 1000


def zone_of(settings: JPushSettings) -> str:
    base = settings.url.rstrip("/") + "/v3/"
    zone = "SHUIWU_" + hashlib.sha1(base.encode()).hexdigest()[:10].upper()
    if zone not in common.ZONES:
        common.ZONES[zone] = dict.fromkeys(("PUSH", "REPORT", "DEVICE", "ALIAS", "TAG", "SCHEDULE", "ADMIN"), base)
    return zone


def push_payload(*, registration_ids: Sequence[str], title: str, body: str, extras: Mapping[str, Any],
                 apns_production: bool) -> dict[str, Any]:
    """The /v3/push body: a notification to Android and iOS with the deep link in extras."""
    extras = dict(extras)
    return {
        "platform": ["android", "ios"],
        "audience": {"registration_id": list(registration_ids)},
        "notification": {
            "alert": body,
            "android": {"alert": body, "title": title, "extras": extras},
            "ios": {"alert": {"title": title, "body": body}, "sound": "default", "extras": extras},
        },
        "options": {"apns_production": apns_production, "time_to_live": 86400},
    }


def send_push(settings: JPushSettings, payload: dict[str, Any]) -> dict[str, Any]:
    """POST the payload (runs on a gateway thread); the answer's JSON (``sendno``, ``msg_id``)."""
    client = jpush.JPush(settings.app_key, settings.master_secret.get_secret_value(), timeout=settings.timeout_s,
                         zone=zone_of(settings))
    push = client.create_push()
    push.platform = payload["platform"]
    push.audience = payload["audience"]
    push.notification = payload["notification"]
    push.options = payload["options"]  # a plain dict (jpush.options() would nest it)
    try:
        response = push.send()
    except common.Unauthorized as error:
        raise GatewayRejected(answer={"status": 401}, detail="401: bad app key or master secret") from error
    except common.JPushFailure as error:
        status = error.response.status_code if error.response is not None else None
        answer = {"status": status, "code": error.error_code, "message": error.details}
        if status is not None and 400 <= status < 500:
            raise GatewayRejected(answer=answer, detail=f"{status} {error.error_code}: {error.details}") from error
        raise GatewayUnavailable(answer=answer, detail=f"{status}: {error.details}") from error
    except common.APIConnectionException as error:
        raise GatewayTimeout(detail=str(error), maybe_done=False) from error
    except common.APIRequestException as error:
        raise GatewayUnavailable(detail=str(error)) from error
    result: dict[str, Any] = response.payload
    return result
