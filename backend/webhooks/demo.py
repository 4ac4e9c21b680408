"""What ``shuiwu demo run`` sets for webhooks: the demo's receivers run on this machine,
so deliveries to private and loopback addresses are allowed (docs/webhooks.md)."""

from __future__ import annotations

import os
from typing import Any


def environment(settings: Any, api_url: str) -> dict[str, str]:
    # An operator's explicit value stands.
    return {"SHUIWU_WEBHOOK_ALLOW_PRIVATE": os.environ.get("SHUIWU_WEBHOOK_ALLOW_PRIVATE", "true")}
